"""The GPU session's first step (benchmarks/gpu_session.sh), a few seconds: can anything else
work? Versions, the GPU's name, memory and clocks, CuPy compiling and launching one of the
project's kernels (checked against NumPy), `from mpi4py import MPI` and what it raised, NCCL,
tensorboardX. Prints one line per fact and writes them to $STEP_DIR/figures.json.

    python benchmarks/gpu_smoke.py             on the GPU
    python benchmarks/gpu_smoke.py --dry-run   the same on the sim device (no CuPy needed)
"""
import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np


def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def outcome(fn):
    """What fn() gives, or the exception it raised, as one short line."""
    try:
        return fn()
    except BaseException as e:            # SystemExit from a broken import counts too
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


def mpi():
    from mpi4py import MPI
    return f"ok, {MPI.Get_library_version().splitlines()[0].strip()}"


def nccl():
    from cupy.cuda import nccl as n
    if not getattr(n, "available", False):
        return "not available (CuPy could not load NCCL)"
    return f"ok, NCCL {n.get_version()}"


def gpu_facts():
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    facts = {"gpu": name, "gpu count": cupy.cuda.runtime.getDeviceCount(),
             "compute capability": cupy.cuda.Device(0).compute_capability,
             "SMs": props["multiProcessorCount"],
             "memory GiB": round(props["totalGlobalMem"] / 2**30, 1),
             "cuda runtime": cupy.cuda.runtime.runtimeGetVersion(),
             "cuda driver": cupy.cuda.runtime.driverGetVersion()}
    query = "clocks.sm,clocks.max.sm,clocks.mem,power.limit,driver_version,temperature.gpu"
    smi = outcome(lambda: subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
        text=True, timeout=10).stdout.strip().splitlines()[0])
    facts["nvidia-smi " + query] = smi
    return facts


def launch(device):
    """Compile and launch relu_forward through cupycnn; seconds to compile+launch, checked."""
    import cupycnn
    from cupycnn.ops import elementwise
    cupycnn.use(device)
    x = np.random.default_rng(0).standard_normal(1 << 16).astype(np.float32)
    start = time.perf_counter()
    y = cupycnn.asnumpy(elementwise.relu_forward(cupycnn.asarray(x)))
    seconds = time.perf_counter() - start
    if not np.array_equal(y, np.maximum(x, 0)):
        raise RuntimeError("relu_forward gave wrong values")
    return round(seconds, 3)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the sim device, no CuPy")
    args = p.parse_args()
    facts = {"dry run": args.dry_run, "python": platform.python_version(),
             "numpy": np.__version__, "cupy": version("cupy-cuda13x") if version(
                 "cupy-cuda13x") != "not installed" else version("cupy-cuda12x"),
             "torch": version("torch"), "mpi4py": version("mpi4py"),
             "from mpi4py import MPI": outcome(mpi),
             "tensorboardX": version("tensorboardX")}   # found, not imported (slow)
    if args.dry_run:
        facts["kernel compile+launch s (sim)"] = outcome(lambda: launch("sim"))
    else:
        found = outcome(gpu_facts)
        facts.update(found if isinstance(found, dict) else {"gpu": found})
        facts["nccl"] = outcome(nccl)
        facts["kernel compile+launch s"] = outcome(lambda: launch("cuda"))
    for key, value in facts.items():
        print(f"{key}: {value}")
    folder = os.environ.get("STEP_DIR")
    if folder:
        with open(os.path.join(folder, "figures.json"), "w") as f:
            json.dump(facts, f, indent=1)
    launched = facts.get("kernel compile+launch s", facts.get("kernel compile+launch s (sim)"))
    sys.exit(0 if isinstance(launched, float) else 1)


if __name__ == "__main__":
    main()
