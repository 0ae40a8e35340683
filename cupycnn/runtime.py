"""From a kernel source to a launchable kernel, one way on `cuda` and `sim` alike.

    kernel = get_kernel("elementwise", "relu_forward")    # kernels/elementwise.cu
    kernel(grid, block, (x, y, np.int32(n)), shared_mem=0)

On `cuda` the source is compiled by NVRTC through `cupy.RawModule` (CuPy caches the binary on
disk); on `sim` it is built by g++ under the emulator (`cupycnn.sim`), cached likewise. Local
`#include "..."` lines are expanded here first, so that both compilers see one self-contained
source and both caches change when a header does.

Arguments are device arrays (CuPy on `cuda`, NumPy on `sim`) and NumPy scalars of the exact
parameter type; `None` is a null pointer on both. CuPy itself is not to be trusted with `None`:
CuPy 14 passes it as a null pointer (`CIntptr(0)` in cupy/cuda/function.pyx), but CuPy 13 hands
the driver a null *address* for the argument (`CPointer()`), which the launch then reads from;
so `Kernel` passes an explicit `np.uintp(0)`.
`load_module` gives the same for a learner's own kernel source.
"""
import contextlib
import functools
import re
from pathlib import Path

import numpy as np

from . import devices as _device
from .limits import INT32_MAX

NVRTC_OPTIONS = ("--std=c++17",)
_INCLUDE_RE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)


def kernel_dir():
    """The folder holding the shipped `*.cu` sources (`kernels/` in the source tree)."""
    try:
        from importlib.resources import files
        return Path(str(files("cupycnn.kernels")))
    except ModuleNotFoundError:      # running from a source tree that is not installed
        return Path(__file__).resolve().parent.parent / "kernels"


def kernel_files():
    """Names of all shipped kernel files, without `.cu`."""
    return sorted(p.stem for p in kernel_dir().glob("*.cu"))


def expand_includes(text, name, search_dirs, _seen=None):
    """`text` with every local `#include "file"` replaced by that file (once each, found in the
    first of `search_dirs` that has it), with `#line` marks so that compiler messages name the
    original file and line."""
    seen = set() if _seen is None else _seen
    out, last = [], 0
    for match in _INCLUDE_RE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        out.append(text[last:match.start()])
        found = [Path(d) / match.group(1) for d in search_dirs if (Path(d) / match.group(1)).exists()]
        if not found:
            raise FileNotFoundError(f"{name}:{line}: #include \"{match.group(1)}\" not found in "
                                    f"{', '.join(str(d) for d in search_dirs)}")
        header = found[0]
        if header.name not in seen:
            seen.add(header.name)
            included = header.read_text(encoding="utf-8")
            body = expand_includes(included, header.name, search_dirs, seen)
            out.append(f'#line 1 "{header.name}"\n{body}\n#line {line + 1} "{name}"')
        last = match.end()
    out.append(text[last:])
    return "".join(out)


@functools.lru_cache(maxsize=None)
def kernel_source(file):
    """The self-contained source of `kernels/<file>.cu`."""
    path = kernel_dir() / f"{file}.cu"
    if not path.exists():
        raise FileNotFoundError(f"no kernel file {path.name} in {kernel_dir()} "
                                f"(kernel files: {', '.join(kernel_files())})")
    text = path.read_text(encoding="utf-8")
    return f'#line 1 "{path.name}"\n' + expand_includes(text, path.name, [path.parent])


_launch_log = None


def record_launches(log):
    """Add (source, kernel, device) to the set `log` at every launch from now on (the test
    suite's record of which kernels it checked, and how); None stops recording."""
    global _launch_log
    _launch_log = log


class Kernel:
    """A launchable kernel: `kernel(grid, block, args, shared_mem=0)` on either device."""

    def __init__(self, raw, name, on_cuda, source_name):
        self._raw, self.name, self._on_cuda = raw, name, on_cuda
        self.source_name = source_name

    def __call__(self, grid, block, args, shared_mem=0):
        for a in args:        # every kernel here indexes its arrays with 32-bit ints
            if getattr(a, "size", 0) > INT32_MAX and not isinstance(a, np.generic):
                raise ValueError(f"{self.source_name}: {self.name}: an array of {a.size} "
                                 f"elements is over the kernels' 32-bit indexing (at most "
                                 f"{INT32_MAX}); split it")
        if self._on_cuda:
            args = tuple(np.uintp(0) if a is None else a for a in args)  # see the module doc
            self._raw(tuple(grid) if not isinstance(grid, int) else (grid,),
                      tuple(block) if not isinstance(block, int) else (block,),
                      args, shared_mem=shared_mem)
        else:
            self._raw(grid, block, args, shared_mem=shared_mem)
        if _launch_log is not None:      # only launches that went through
            if self._on_cuda:
                where = "cuda"
            else:
                from .sim import module as sim
                where = "sim:" + sim.get_thread_order()[0]
            _launch_log.add((self.source_name, self.name, where))

    @property
    def max_dynamic_shared_size_bytes(self):
        """Dynamic shared memory a launch may ask for: 48 KB unless raised here (CuPy's
        RawKernel attribute, cudaFuncAttributeMaxDynamicSharedMemorySize; the emulator
        enforces it as a GPU does)."""
        return self._raw.max_dynamic_shared_size_bytes

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        self._raw.max_dynamic_shared_size_bytes = int(value)

    @property
    def raw(self):
        """The underlying `cupy.RawKernel` or `cupycnn.sim.Kernel`."""
        return self._raw


class Module:
    """A compiled source for the current kernel device, as `cupy.RawModule`."""

    def __init__(self, code, name="<code>", name_expressions=(), options=()):
        dev = _device.device()
        if dev == "numpy":
            raise RuntimeError("the numpy device runs no kernels: select cuda or sim with "
                               "cupycnn.use() to launch a kernel")
        self.device, self.name = dev, name
        if dev == "cuda":
            import cupy
            self._raw = cupy.RawModule(code=code, options=NVRTC_OPTIONS + tuple(options),
                                       name_expressions=tuple(name_expressions) or None)
        else:
            from .sim import module as sim
            self._raw = sim.Module(code, name=name, name_expressions=name_expressions,
                                   options=options)
        self._kernels = {}

    def get_function(self, name):
        kernel = self._kernels.get(name)
        if kernel is None:
            kernel = Kernel(self._raw.get_function(name), name, self.device == "cuda", self.name)
            self._kernels[name] = kernel
        return kernel


def load_module(code=None, path=None, name_expressions=(), options=()):
    """Compile a learner's own CUDA C source (text or a file) for the current device.

    Local `#include "..."` lines are searched beside `path`, then in the shipped kernels
    (so `#include "common.cuh"` works)."""
    if (code is None) == (path is None):
        raise ValueError("load_module takes either code= or path=")
    search = [kernel_dir()]
    name = "<code>"
    if path is not None:
        path = Path(path)
        code, name = path.read_text(encoding="utf-8"), path.name
        search.insert(0, path.parent)
    code = expand_includes(code, name, search)
    return Module(code, name=name, name_expressions=name_expressions, options=options)


_modules = {}


def define_options(defines):
    """-D options from ((name, value), ...), in that order (the same on NVRTC and g++)."""
    return tuple(f"-D{name}={value}" for name, value in defines)


_builder = None    # (label, make) while kernel_builds() runs


@contextlib.contextmanager
def kernel_builds(label, make):
    """Inside the block, get_kernel builds each (file, defines) it is asked for with
    `make(file, defines)` (a Module) and caches it apart, under `label`: a benchmark comparing
    builds of the same kernels (benchmarks/sim_speed.py) swaps them here, where every op
    finds its kernels."""
    global _builder
    previous, _builder = _builder, (label, make)
    try:
        yield
    finally:
        _builder = previous


def get_kernel(file, name, defines=()):
    """Kernel `name` from `kernels/<file>.cu`, compiled for the current device with the given
    ((NAME, value), ...) preprocessor defines (a tile configuration, a precision), cached per
    (device, file, defines) (and per label inside kernel_builds)."""
    dev = _device.device()
    defines = tuple((str(k), int(v) if isinstance(v, bool) else v) for k, v in defines)
    key = (dev, file, defines) if _builder is None else (_builder[0], dev, file, defines)
    module = _modules.get(key)
    if module is None:
        module = _modules[key] = Module(kernel_source(file), name=f"{file}.cu",
                                        options=define_options(defines)) \
            if _builder is None else _builder[1](file, defines)
    return module.get_function(name)


def ceil_div(a, b):
    return -(-int(a) // int(b))


# A grid-stride elementwise launch: blocks of THREADS threads, at most MAX_BLOCKS blocks
# (enough to fill any current GPU several times over; each thread loops over the rest).
ELEMENTWISE_THREADS = 256
ELEMENTWISE_MAX_BLOCKS = 4096


def elementwise_grid(n):
    """(grid, block) for a grid-stride loop over n elements."""
    return (max(1, min(ceil_div(n, ELEMENTWISE_THREADS), ELEMENTWISE_MAX_BLOCKS)),), \
        (ELEMENTWISE_THREADS,)
