"""What this machine offers cupycnn, as `cupycnn info` prints it: each device and why it is
unusable when it is, the GPUs, NCCL, MPI, the compilers and the package versions.

Every probe runs in a try: a missing or broken piece is a line that says what was found and
what to do, never an exception. `report()` returns the lines.
"""
import os
import platform
import shutil
import subprocess
import sys

# Distributions whose versions are reported, read from their metadata (nothing is imported:
# a broken binary package cannot take the report down with it).
PACKAGES = ("numpy", "h5py", "Pillow", "scikit-learn", "matplotlib", "tensorboardX",
            "threadpoolctl", "cupy-cuda12x", "cupy-cuda13x", "mpi4py", "mpich",
            "nvidia-cuda-nvrtc-cu12", "torch")


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def package_versions():
    """'name version' for each of PACKAGES installed, and the names of those that are not."""
    from importlib import metadata
    found, missing = [], []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
    return found, missing


def sim_status():
    """('', g++'s version line) when the emulator can build kernels, else (reason, '')."""
    compiler = shutil.which("g++")
    if compiler is None:
        return ("no g++ on the PATH: the emulator builds each kernel with the GNU C++ compiler "
                "(apt install g++)", "")
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        return f"g++ at {compiler} does not run: {_first_line(e)}", ""
    return "", out.stdout.splitlines()[0]


def gpu_lines():
    """One line per GPU (name, memory, compute capability), plus the driver and runtime."""
    import cupy
    runtime = cupy.cuda.runtime
    lines = [f"CUDA driver {_cuda_version(runtime.driverGetVersion())}, runtime "
             f"{_cuda_version(runtime.runtimeGetVersion())}"]
    for i in range(runtime.getDeviceCount()):
        props = runtime.getDeviceProperties(i)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        lines.append(f"GPU {i}: {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB, compute "
                     f"capability {props['major']}.{props['minor']}, "
                     f"{props['multiProcessorCount']} SMs")
    return lines


def _cuda_version(number):
    return f"{number // 1000}.{number % 1000 // 10}"


def nccl_status(cuda_reason):
    """(reason, description): NCCL as CuPy sees it."""
    if cuda_reason:
        return "needs a usable GPU (see cuda above)", ""
    try:
        from cupy.cuda import nccl
        version = nccl.get_version()
    except Exception as e:
        return (f"CuPy finds no NCCL ({_first_line(e)}): install the NCCL wheel "
                f"(pip install nvidia-nccl-cu12 or -cu13); data parallelism on GPUs then "
                f"falls back to MPI over host copies", "")
    return "", f"NCCL {version // 10000}.{version // 100 % 100}.{version % 100}"


def mpi_status():
    """(reason, description): mpi4py and the MPI library under it."""
    try:
        import mpi4py
    except ImportError:
        return ("mpi4py is not installed: pip install -e \".[mpi]\" (mpi4py and the mpich "
                "wheel); one process needs none", "")
    try:
        from mpi4py import MPI
        library = " ".join(_first_line(MPI.Get_library_version()).split())
        world = MPI.COMM_WORLD.Get_size()
    except Exception as e:                           # mpi4py without an MPI library
        return (f"mpi4py {mpi4py.__version__} is installed but cannot load an MPI library "
                f"({_first_line(e)}): install one (pip install mpich) or use one process", "")
    launcher = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or \
        shutil.which("mpiexec")
    return "", (f"mpi4py {mpi4py.__version__}, {library}; this process is 1 of {world}; "
                f"mpiexec: {launcher or 'not found on the PATH'}")


def nvrtc_status():
    """The NVRTC wheel the kernel compile tests use without a GPU."""
    try:
        from . import nvrtc
        return "", f"found ({nvrtc.__name__}: {_nvrtc_version(nvrtc)})"
    except Exception as e:
        return (f"not usable ({_first_line(e)}): the compile checks for sm_80/sm_90 need the "
                f"nvidia-cuda-nvrtc-cu12 wheel (the dev extra)", "")


def _nvrtc_version(nvrtc):
    for name in ("version", "nvrtc_version"):
        if hasattr(nvrtc, name):
            try:
                value = getattr(nvrtc, name)()
                return ".".join(map(str, value)) if isinstance(value, tuple) else str(value)
            except Exception as e:
                return f"cannot load: {_first_line(e)}"
    return "present"


def blas_lines():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["BLAS: threadpoolctl is not installed, so the BLAS and its threads are unknown"]
    return [f"BLAS: {pool.get('internal_api')} {pool.get('version')}, {pool.get('num_threads')} "
            f"thread(s) ({os.path.basename(pool.get('filepath', ''))})"
            for pool in threadpool_info() if pool.get("user_api") == "blas"] or \
        ["BLAS: none found loaded"]


def report():
    from .version import __version__
    from . import devices as _device
    lines = [f"cupycnn {__version__} ({os.path.dirname(os.path.abspath(__file__))})",
             f"Python {platform.python_version()} ({sys.executable}), {platform.system()} "
             f"{platform.machine()}, {os.cpu_count()} CPU(s)"]
    found, missing = package_versions()
    lines.append("packages: " + ", ".join(found))
    if missing:
        lines.append("not installed: " + ", ".join(missing))
    lines += blas_lines()

    cuda_reason = _device._probe_cuda()
    sim_reason, compiler = sim_status()
    lines.append("devices:")
    lines.append("  numpy  usable: the NumPy reference path (float32 or float64)")
    lines.append(f"  sim    {'usable: ' + compiler if not sim_reason else 'unusable: ' + sim_reason}")
    lines.append(f"  cuda   {'usable' if not cuda_reason else 'unusable: ' + cuda_reason}")
    chosen = os.environ.get("CUPYCNN_DEVICE")
    default = chosen if chosen else ("cuda" if not cuda_reason else "numpy")
    lines.append(f"  default: {default}" + (" (CUPYCNN_DEVICE)" if chosen else
                                            " (cuda where a GPU is usable, else numpy)"))
    if not cuda_reason:
        try:
            lines += ["GPU: " + line for line in gpu_lines()]
        except Exception as e:
            lines.append(f"GPU: CuPy reached the driver but not the properties: "
                         f"{_first_line(e)}")
    else:
        lines.append("GPU: none usable (see cuda above)")
    for name, (why, what) in (("NCCL", nccl_status(cuda_reason)), ("MPI", mpi_status()),
                              ("NVRTC", nvrtc_status())):
        lines.append(f"{name}: {what}" if not why else f"{name}: unusable: {why}")
    return lines
