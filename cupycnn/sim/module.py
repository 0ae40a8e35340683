"""The `sim` device: CUDA C kernels compiled by g++ and run on the CPU.

`Module` looks like `cupy.RawModule`: give it CUDA C source, ask it for a kernel by name and
launch the kernel with `kernel(grid, block, args, shared_mem=0)`, where `args` holds NumPy
arrays (passed as device pointers) and NumPy scalars (passed by value), exactly as CuPy takes
CuPy arrays and NumPy scalars. The source is included, unchanged, into a C++ wrapper that
first includes `include/simt.h` (the emulation header) and then exports one launcher per
kernel; g++ builds it into a shared library, which is cached on disk by content hash and loaded
with ctypes.

Every launch checks its arguments against the kernel's parameter list, more strictly than a
GPU can: the count; arrays only for pointers, C-contiguous, of a dtype that matches the
pointee (a float64 array for a `float*` is garbage on a GPU); scalars only of the parameter's
exact type and size (a Python int would be passed by CuPy as 64 bits); a read-only array for a
non-const pointer. `None` is a null pointer. With the memory check on (`set_memory_check`), a
kernel that writes next to an array it was given raises SimMemoryError instead of corrupting the
host heap.

Thread order (see `set_thread_order`) decides in which order the emulated threads of a block
start and leave barriers, and in which order blocks run: "natural", "reversed" or "random"
(seeded, and different for every launch). A kernel that depends on an order CUDA does not
promise (a missing `__syncthreads()`) gives different results under different orders.

Two ways to run (`set_threads`): blocks on every usable core (the default, for training and
benchmarks: the library is built with OpenMP and blocks are handed to the cores as they free
up), or on one OS thread (`set_threads(1)`, CUPYCNN_SIM_THREADS=1: blocks in the chosen order,
static shared memory poisoned too; what the kernel tests run). Each way is its own build.
Builds are optimised (-O3 and, where g++ takes it, -march=native: the host's vector
extensions; -ffp-contract=fast: multiply-adds fused as nvcc fuses them, __fmul_rn and __fadd_rn
never); CUPYCNN_SIM_OPT replaces those flags (without it contraction is off) (CUPYCNN_SIM_OPT="-O0 -g" for gdb). The flags
are read when a module is built, CUPYCNN_SIM_THREADS when first needed and by set_threads(None).
The cache key holds the source, the header, every flag, the compiler and, for -march=native, the
CPU features it resolves to, so a cache shared between machines never hands one a library
built for another's instructions.
"""
import contextlib
import ctypes
import fcntl
import hashlib
import itertools
import os
import platform
import re
import subprocess
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..limits import (DEFAULT_DYNAMIC_SHARED_BYTES, GRID_X_MAX, GRID_YZ_MAX,
                      MAX_DYNAMIC_SHARED_BYTES, MAX_THREADS_PER_BLOCK)

INCLUDE_DIR = Path(__file__).resolve().parent / "include"

ORDERS = ("natural", "reversed", "random")


class SimError(RuntimeError):
    """A kernel failed under the emulator: a deadlock, a bad launch configuration."""


class SimLaunchError(SimError):
    """A launch a GPU would refuse: over a block, grid or shared-memory limit."""


class SimMemoryError(SimError):
    """A kernel wrote outside the arrays it was given (see set_memory_check)."""


class SimBuildError(RuntimeError):
    """g++ could not build a kernel source under the emulator."""


# ------------------------------------------------------------------------------ configuration

class _Config:
    def __init__(self):
        order = os.environ.get("CUPYCNN_SIM_ORDER", "natural")
        if order not in ORDERS:
            raise ValueError(f"CUPYCNN_SIM_ORDER={order!r}: expected one of {', '.join(ORDERS)}")
        self.order = order
        self.seed = int(os.environ.get("CUPYCNN_SIM_SEED", "0"))
        self.poison_shared = True
        self.bank_check = False
        self.memory_check = os.environ.get("CUPYCNN_SIM_MEMCHECK", "") not in ("", "0")
        self.threads = None   # set_threads(n); None: CUPYCNN_SIM_THREADS, else every core
        self.version = 0      # bumped on every change; modules re-apply when it moves
        self.launches = 0     # random order: every launch gets its own seed


_config = _Config()
_lock = threading.Lock()


def set_thread_order(order, seed=None):
    """Choose the emulated thread and block order: "natural", "reversed" or "random".

    With "random", `seed` (default: the current one) makes the sequence of orders repeatable;
    each launch still gets a different permutation.
    """
    if order not in ORDERS:
        raise ValueError(f"thread order {order!r}: expected one of {', '.join(ORDERS)}")
    with _lock:
        _config.order = order
        if seed is not None:
            _config.seed = int(seed)
        _config.launches = 0
        _config.version += 1


def get_thread_order():
    """The current thread order and seed, as a tuple."""
    return _config.order, _config.seed


@contextlib.contextmanager
def thread_order(order, seed=None):
    """Run a block of code under another thread order: `with thread_order("random", 3): ...`."""
    previous = get_thread_order()
    set_thread_order(order, seed)
    try:
        yield
    finally:
        set_thread_order(*previous)


def set_shared_memory_poison(enabled):
    """Fill shared memory with 0xFF bytes (a NaN for floats) at every block's start (on by
    default; static shared memory only when blocks run on one OS thread)."""
    with _lock:
        _config.poison_shared = bool(enabled)
        _config.version += 1


def set_memory_check(enabled):
    """Check every launch for writes outside its array arguments, as compute-sanitizer's memcheck
    does on a GPU (off by default; CUPYCNN_SIM_MEMCHECK=1 sets it; the kernel tests and the sim
    fuzz run with it). The kernel runs on copies of its arrays, each (or each set of overlapping
    ones: in-place arguments stay aliased) in its own buffer with a guard zone on either side,
    as long as the array (at least 4 KiB, at most 1 MiB) and filled with a canary; a guard zone
    that changed raises SimMemoryError naming the argument, then the copies are written back.
    What it does not see: a write that lands further away, or that writes the canary's own
    bytes; reads (a float read from a guard zone is a NaN: it shows up in a result)."""
    with _lock:
        _config.memory_check = bool(enabled)
        _config.version += 1


@contextlib.contextmanager
def memory_check(enabled=True):
    """`with memory_check(): ...` checks the launches of the block (see set_memory_check)."""
    previous = _config.memory_check
    set_memory_check(enabled)
    try:
        yield
    finally:
        set_memory_check(previous)


@dataclass
class BankCount:
    """Shared-memory traffic of one kind of access (see bank_conflicts)."""
    instructions: int = 0     # warp instructions
    wavefronts: int = 0       # what they take on a GPU
    ideal: int = 0            # the fewest they could take (one per 128-byte phase)
    worst: int = 0            # the most wavefronts of any one phase: its n-way bank conflict

    @property
    def conflict_free(self):
        return self.wavefronts == self.ideal


@dataclass
class BankCounts:
    ldmatrix: BankCount = field(default_factory=BankCount)
    cp_async: BankCount = field(default_factory=BankCount)
    copies: dict = field(default_factory=lambda: {4: 0, 8: 0, 16: 0})  # one lane's, by bytes


_builds = weakref.WeakSet()       # every library loaded: bank_conflicts reads their counters


@contextlib.contextmanager
def bank_conflicts():
    """Count the shared-memory bank conflicts of the tensor-core instructions the block of code
    runs: `with bank_conflicts() as counts: ...`, then counts.ldmatrix and counts.cp_async (the
    copies' shared-memory side) are BankCounts (instructions, wavefronts, ideal, worst), and
    counts.copies the number of single-lane cp.async copies of 4, 8 and 16 bytes. Every
    ldmatrix, and every cp.async a warp's lanes issue as one instruction, is split into its
    128-byte phases as a GPU serves them; a phase whose addresses put distinct words in one bank
    takes one wavefront per such word (simt.h's "bank check")."""
    counts = BankCounts()
    with _lock:
        _config.bank_check = True
        _config.version += 1
    for build in list(_builds):      # forget what came before
        build.lib.simt_bank_counts(1, (ctypes.c_ulonglong * 11)())
    try:
        yield counts
    finally:
        with _lock:
            _config.bank_check = False
            _config.version += 1
        for build in list(_builds):
            raw = (ctypes.c_ulonglong * 11)()
            build.lib.simt_bank_counts(0, raw)
            for kind, count in ((0, counts.ldmatrix), (1, counts.cp_async)):
                n, waves, ideal, worst = raw[4 * kind: 4 * kind + 4]
                count.instructions += n
                count.wavefronts += waves
                count.ideal += ideal
                count.worst = max(count.worst, worst)
            for i, size in enumerate((4, 8, 16)):
                counts.copies[size] += raw[8 + i]


def cache_dir():
    """Where built kernels are kept: $CUPYCNN_CACHE_DIR, else $XDG_CACHE_HOME/cupycnn, else
    ~/.cache/cupycnn (each with a `sim` subfolder)."""
    root = os.environ.get("CUPYCNN_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "cupycnn")
    return Path(root) / "sim"


def set_threads(n):
    """Run blocks on `n` OS threads from the next launch on (None: the default, which is
    CUPYCNN_SIM_THREADS if set, else every usable core; the variable is read again here). 1: one
    thread, blocks in the chosen order and all shared memory poisoned, as the kernel tests run."""
    global _default_threads
    if n is not None and int(n) < 1:
        raise ValueError(f"cupycnn.sim.set_threads: n must be at least 1, got {n}")
    with _lock:
        _config.threads = None if n is None else int(n)
        if n is None:
            _default_threads = None
        _config.version += 1


_default_threads = None


def get_threads():
    """How many OS threads the next launch runs blocks on."""
    global _default_threads
    if _config.threads is not None:
        return _config.threads
    if _default_threads is None:
        env = os.environ.get("CUPYCNN_SIM_THREADS", "").strip()
        if env:
            try:
                _default_threads = max(1, int(env))
            except ValueError:
                raise ValueError(f"CUPYCNN_SIM_THREADS={env!r}: expected a positive integer") \
                    from None
        else:
            _default_threads = len(os.sched_getaffinity(0)) \
                if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return _default_threads


@contextlib.contextmanager
def threads(n):
    """`with threads(1): ...` runs the block of code with blocks on n OS threads."""
    previous = _config.threads
    set_threads(n)
    try:
        yield
    finally:
        set_threads(previous)


_native = None


def _native_flags():
    """(flags, the features they stand for): -march=native and what g++ resolves it to on this
    CPU (its cc1plus options), or nothing where g++ does not take it."""
    global _native
    if _native is None:
        _native = ((), "")
        try:
            out = subprocess.run(["g++", "-march=native", "-E", "-v", "-x", "c++", os.devnull],
                                 capture_output=True, text=True, timeout=60,
                                 env=dict(os.environ, LC_ALL="C"))
            if out.returncode == 0:
                cc1 = [line for line in out.stderr.splitlines() if "cc1plus" in line]
                features = re.sub(r"\S*/dev/null\S*|-quiet|-E|-o \S+", "", cc1[0]) if cc1 \
                    else out.stderr
                _native = (("-march=native",), " ".join(features.split()[1:]))
        except (OSError, subprocess.SubprocessError):
            pass
    return _native


def optimization_flags():
    """CUPYCNN_SIM_OPT's flags if set, else -O3, -march=native (where g++ takes it) and
    -ffp-contract=fast: a * b + c fused into one FMA where the host has it, as nvcc does by
    default (--fmad=true); __fmul_rn, __fadd_rn keep their single roundings (simt.h)."""
    env = os.environ.get("CUPYCNN_SIM_OPT", "").strip()
    if env:
        return tuple(env.split())
    return ("-O3",) + _native_flags()[0] + ("-ffp-contract=fast",)


def _use_ucontext():
    """The portable fiber switch (ucontext) where the x86-64 assembly one cannot run."""
    return platform.machine() not in ("x86_64", "AMD64") or os.environ.get("CUPYCNN_SIM_UCONTEXT") == "1"


_compiler_version = None


def _compiler_id():
    global _compiler_version
    if _compiler_version is None:
        try:
            out = subprocess.run(["g++", "--version"], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise SimBuildError("the sim device needs g++ (the GNU C++ compiler) on the PATH: "
                                f"{e}") from None
        _compiler_version = out.stdout.splitlines()[0]
    return _compiler_version


# ---------------------------------------------------------------------------- source scanning

_BOUNDS = r'__launch_bounds__\s*\(((?:[^()]|\([^()]*\))*)\)\s*'
_KERNEL_RE = re.compile(
    r'extern\s+"C"\s+__global__\s+(?:' + _BOUNDS + r')?void\s+(?:' + _BOUNDS + r')?(\w+)\s*\(')
_DYN_SMEM_RE = re.compile(
    r'extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?([A-Za-z_][\w:]*(?:\s+[A-Za-z_]\w*)*)'
    r'\s+(?:__align__\s*\(\s*\d+\s*\)\s*)?(\w+)\s*\[\s*\]')
_COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
# A static shared array declared on one line: `__shared__ [__align__(n)] T name[dims];`.
_STATIC_SMEM_RE = re.compile(r"\b__shared__\b[^;{}]*?\b([A-Za-z_]\w*)\s*(?:\[[^\];]*\]\s*)*;")


def register_static_shared(code):
    """`code` with every one-line `__shared__ ... name[...];` (one variable per declaration,
    outside // comments) followed by SIMT_SHARED_REGISTER(name): g++ ignores the section that
    gathers static shared memory for statics in templates, so simt.h records each array
    where its declaration runs, and poisons it at every block's start (see simt.h). Inside a
    function (within braces) the variable is declared as SIMT_SHARED_NAME(name) and bound to
    `name` by SIMT_SHARED_ALIAS(name): under OpenMP, where shared memory is thread_local, that
    is one TLS lookup per thread instead of one per access."""
    lines, depth = code.split("\n"), 0
    for i, line in enumerate(lines):
        head, mark, comment = line.partition("//")
        if "__shared__" in head:
            def declare(m, head=head, depth=depth):
                inside = depth + head.count("{", 0, m.start()) - head.count("}", 0, m.start())
                name = m.group(1)
                if inside <= 0:
                    return f"{m.group(0)} SIMT_SHARED_REGISTER({name})"
                at = m.start(1) - m.start(0)
                decl = m.group(0)
                return (f"{decl[:at]}SIMT_SHARED_NAME({name}){decl[at + len(name):]} "
                        f"SIMT_SHARED_ALIAS({name}) SIMT_SHARED_REGISTER({name})")
            lines[i] = _STATIC_SMEM_RE.sub(declare, head) + mark + comment
        depth += head.count("{") - head.count("}")
    return "\n".join(lines)


def entry_points(code):
    """(name, bounds) for each `extern "C" __global__` function of a CUDA C source, in order,
    comments ignored: the kernels a module exports. bounds: the text between the parentheses of
    its __launch_bounds__ ("" without one)."""
    found = _KERNEL_RE.findall(_COMMENT_RE.sub("", code))
    return [(k, before or after) for before, after, k in found]


def _c_identifier(expression):
    """A C name for a name expression such as `axpy<float>`."""
    return re.sub(r"\W", "_", expression) + "_" + hashlib.md5(expression.encode()).hexdigest()[:6]


class _ParamInfo(ctypes.Structure):
    # Mirrors simt::ParamInfo. kind: 1 float, 2 signed int, 3 unsigned int, 4 other.
    _fields_ = [("size", ctypes.c_uint64), ("is_pointer", ctypes.c_int32),
                ("kind", ctypes.c_int32), ("elem", ctypes.c_int32), ("writable", ctypes.c_int32)]


_KIND_NAMES = {1: "floating point", 2: "signed integer", 3: "unsigned integer", 4: "other"}
_DTYPE_KIND = {"f": 1, "i": 2, "u": 3, "b": 3}


# ---------------------------------------------------------------------------------- the module

class Module:
    """A CUDA C source built for the emulator; the counterpart of `cupy.RawModule(code=...)`.

    `name` labels the source in compiler messages and in the cache; `name_expressions` lists
    template instantiations to export (as CuPy's argument of that name); `options` are extra
    g++ flags (for instance `-DTILE=32`).
    """

    def __init__(self, code, name="<code>", name_expressions=(), options=(), opt=None,
                 threads=None):
        self.name = name
        clean = _COMMENT_RE.sub("", code)
        entries = entry_points(code)
        self._c_names = {k: k for k, _ in entries}
        # __launch_bounds__(max threads[, ...]): its first argument, evaluated by the compiler
        # in the wrapper (it may be a macro or a constant of the source).
        bounds = {k: b for k, b in entries if b}
        for expression in name_expressions:
            self._c_names[expression] = _c_identifier(expression)
        dynamic_shared = {}
        for type_name, var in _DYN_SMEM_RE.findall(clean):
            if dynamic_shared.setdefault(var, type_name) != type_name:
                raise SimBuildError(f"{name}: extern __shared__ {var} is declared with two types, "
                                    f"{type_name} and {dynamic_shared[var]}")
        # opt: the optimisation flags (None: optimization_flags() now); threads: this module's
        # own OS threads (a benchmark comparing builds; None: the process-wide setting).
        self._opt = optimization_flags() if opt is None else tuple(opt)
        self._threads = None if threads is None else max(1, int(threads))
        self._current_build = (None, None)        # (config version, build): the launch path
        self._options = tuple(options)
        label = name.replace("\\", "/")
        wrapper = ['#include "simt.h"']
        wrapper += [f"SIMT_DYN_SMEM({t}, {v})" for v, t in dynamic_shared.items()]
        # Dynamic shared memory is defined by the wrapper (above); see simt.h.
        code = re.sub(r"\bextern(\s+)__shared__\b", r"extern\1SIMT_DYNAMIC_SHARED", code)
        code = register_static_shared(code)
        wrapper += [f'#line 1 "{label}"', code, "SIMT_CONFIG_EXPORT"]
        wrapper += [f"SIMT_EXPORT({c}, {e})" for e, c in self._c_names.items()]
        wrapper += [f'extern "C" __attribute__((visibility("default"))) long simt_bounds_{k}() '
                    f'{{ return (long)(simt_first_argument({b})); }}' for k, b in bounds.items()]
        if bounds:
            wrapper.insert(1, "template <class T, class... R> constexpr long "
                              "simt_first_argument(T t, R...) { return (long)t; }")
        self._bounds = set(bounds)
        self._wrapper = "\n".join(wrapper) + "\n"
        self._stem = re.sub(r"[^\w.-]", "_", Path(label).name)[:40] or "code"
        self._builds = {}
        self._kernels = {}
        self._current()          # build now: a compile error shows up here, not at a launch

    def threads(self):
        """OS threads the next launch of this module runs blocks on."""
        return self._threads if self._threads is not None else get_threads()

    def _current(self):
        """The build for the current setting (one OS thread, or OpenMP), made on first use; at a
        launch, one comparison unless a setting changed."""
        version, build = self._current_build
        if version == _config.version:
            return build
        openmp = self.threads() > 1
        build = self._builds.get(openmp)
        if build is None:
            build = self._builds[openmp] = _Build(self, openmp, self._opt)
        self._current_build = (_config.version, build)
        return build

    @property
    def build_flags(self):
        return self._current().flags

    @property
    def library_path(self):
        return self._current().library_path

    def builds(self):
        """The libraries built from this module so far (one per thread mode), as _Build objects
        (flags, library_path, openmp, launches)."""
        return list(self._builds.values())

    def get_function(self, name):
        """The kernel `name` (an `extern "C" __global__` function or a name expression)."""
        kernel = self._kernels.get(name)
        if kernel is None:
            if name not in self._c_names:
                known = ", ".join(sorted(self._c_names)) or "none"
                raise AttributeError(f"{self.name}: no kernel named {name!r} (kernels: {known})")
            kernel = self._kernels[name] = Kernel(self, name, self._c_names[name])
        return kernel


class _Build:
    """One library built from a Module's source: for one OS thread or for OpenMP."""

    def __init__(self, module, openmp, opt):
        # -ffp-contract=off unless opt says otherwise (the default does: see
        # optimization_flags); __fmul_rn / __fadd_rn keep their own roundings either way.
        flags = ["-std=c++17", "-ffp-contract=off", *opt, "-fPIC", "-shared",
                 "-fvisibility=hidden", "-fno-strict-aliasing", "-Wno-unknown-pragmas", "-I",
                 str(INCLUDE_DIR), *module._options]
        if openmp:        # TLS descriptors: faster thread_local from a dlopen'ed .so
            flags += ["-fopenmp", "-mtls-dialect=gnu2"]
        if _use_ucontext():
            flags.append("-DSIMT_UCONTEXT")
        features = _native_flags()[1] if "-march=native" in flags else ""
        header = (INCLUDE_DIR / "simt.h").read_text(encoding="utf-8")
        key = hashlib.sha256("\0".join([module._wrapper, header, " ".join(flags), _compiler_id(),
                                         features]).encode()).hexdigest()[:20]
        self.module, self.openmp, self.flags = module, openmp, flags
        self.library_path = _build(module.name, module._wrapper, flags,
                                   cache_dir() / f"{module._stem}-{key}.so")
        self.lib = ctypes.CDLL(str(self.library_path))
        self.lib.simt_set_config.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint,
                                             ctypes.c_int, ctypes.c_int]
        self.lib.simt_last_error.restype = ctypes.c_char_p
        self.lib.simt_bank_counts.argtypes = [ctypes.c_int, ctypes.c_void_p]
        _builds.add(self)
        self._applied = None
        self._launchers = {}
        self.launches = 0         # launches run (a benchmark checks which build it timed)

    def launcher(self, c_name):
        launch = self._launchers.get(c_name)
        if launch is None:
            launch = self._launchers[c_name] = getattr(self.lib, "simt_launch_" + c_name)
            launch.restype = ctypes.c_int
            launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                               ctypes.c_void_p]
        return launch

    def apply_config(self):
        # Random order: every launch its own permutation, the sequence fixed by the seed.
        if _config.order == "random":
            with _lock:
                _config.launches += 1
                seed = (_config.seed * 1000003 + _config.launches) & 0xFFFFFFFF
        elif self._applied == _config.version:
            return
        else:
            seed = _config.seed & 0xFFFFFFFF
        threads = self.module.threads() if self.openmp else 1
        self.lib.simt_set_config(ORDERS.index(_config.order), 1, seed, threads,
                                 int(_config.poison_shared))
        self.lib.simt_bank_counts(int(_config.bank_check), None)
        self._applied = _config.version


def _build(name, wrapper, flags, library):
    """Build once per content hash, safely when several processes (MPI ranks) ask at once:
    one builds under an exclusive lock, the others wait and find the library there; the
    library appears under its final name only when complete (written aside, then renamed)."""
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with open(str(library) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if library.exists():
            return library
        source = library.with_suffix(".cpp")
        _write_atomically(source, wrapper)
        fd, partial = tempfile.mkstemp(dir=library.parent, prefix=library.name, suffix=".part")
        os.close(fd)
        try:
            result = subprocess.run(["g++", *flags, str(source), "-o", partial],
                                    capture_output=True, encoding="utf-8", errors="replace",
                                    env=dict(os.environ, LC_ALL="C"))
            if result.returncode != 0:
                raise SimBuildError(f"g++ could not build {name} for the sim device:\n"
                                    + result.stderr[-6000:])
            os.replace(partial, library)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return library


def _write_atomically(path, text):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _as_triple(dims, what, kernel):
    if isinstance(dims, (int, np.integer)):
        dims = (int(dims),)
    dims = tuple(int(d) for d in dims)
    if not 1 <= len(dims) <= 3 or min(dims) < 1:
        raise ValueError(f"{kernel}: {what} must be 1 to 3 positive sizes, got {dims}")
    return dims + (1,) * (3 - len(dims))


class Kernel:
    """One kernel of a `Module`: `kernel(grid, block, args, shared_mem=0)`."""

    def __init__(self, module, name, c_name):
        self.module, self.name, self._c_name = module, name, c_name
        lib = module._current().lib
        self.max_threads_per_block = MAX_THREADS_PER_BLOCK
        if c_name in module._bounds:
            bound = getattr(lib, "simt_bounds_" + c_name)
            bound.restype = ctypes.c_long
            self.max_threads_per_block = int(bound())
        self.launch_bounds = c_name in module._bounds
        # cudaFuncAttributeMaxDynamicSharedMemorySize, CuPy's
        # RawKernel.max_dynamic_shared_size_bytes: 48 KB unless the program opts in.
        self.max_dynamic_shared_size_bytes = DEFAULT_DYNAMIC_SHARED_BYTES
        info = getattr(lib, "simt_params_" + c_name)
        info.argtypes = [ctypes.POINTER(_ParamInfo)]
        params = (_ParamInfo * 64)()
        count = info(params)
        self.params = [params[i] for i in range(count)]

    def _marshal(self, i, arg, p):
        where = f"{self.name}: argument {i}"
        if p.is_pointer:
            if arg is None:
                return np.array([0], dtype=np.uintp)
            if not isinstance(arg, np.ndarray):
                raise TypeError(f"{where} is a {type(arg).__name__}, but the parameter is a "
                                f"pointer: pass a NumPy array (or None for a null pointer)")
            if not arg.flags.c_contiguous:
                raise TypeError(f"{where}: the array is not C-contiguous; a kernel sees only "
                                f"a pointer")
            kind = _DTYPE_KIND.get(arg.dtype.kind, 4)
            if p.kind != 4 and (kind != p.kind or arg.dtype.itemsize != p.elem):
                raise TypeError(f"{where} is a {arg.dtype} array, but the parameter points to a "
                                f"{p.elem}-byte {_KIND_NAMES[p.kind]} type")
            if p.writable and not arg.flags.writeable:
                raise TypeError(f"{where} is a read-only array, but the kernel may write to it")
            return np.array([arg.ctypes.data], dtype=np.uintp)
        if not isinstance(arg, np.generic):
            raise TypeError(f"{where} is a Python {type(arg).__name__}; pass a NumPy scalar of "
                            f"the parameter's type (np.int32, np.float32, ...): CuPy would pass a "
                            f"Python int or float as 64 bits")
        kind = _DTYPE_KIND.get(arg.dtype.kind, 4)
        if arg.itemsize != p.size or (p.kind != 4 and kind != p.kind):
            raise TypeError(f"{where} is {arg.dtype} ({arg.itemsize} bytes), but the parameter is "
                            f"a {p.size}-byte {_KIND_NAMES[p.kind]} type")
        return np.array([arg])

    def __setattr__(self, name, value):
        if name == "max_dynamic_shared_size_bytes" and not 0 <= int(value) <= \
                MAX_DYNAMIC_SHARED_BYTES:
            raise SimLaunchError(f"{self.module.name}: {self.name}: "
                                 f"CUDA_ERROR_INVALID_VALUE: invalid argument "
                                 f"(max_dynamic_shared_size_bytes={value}: the GPU allows at "
                                 f"most {MAX_DYNAMIC_SHARED_BYTES} bytes, sm_90's 227 KB)")
        object.__setattr__(self, name, value)

    def _check_limits(self, grid, block, shared_mem):
        """What a GPU refuses at launch (CUDA_ERROR_INVALID_VALUE), said as CUDA would, with why."""
        threads = block[0] * block[1] * block[2]
        why = None
        if block[0] > 1024 or block[1] > 1024 or block[2] > 64 or threads > 1024:
            why = (f"block {block} of {threads} threads: CUDA allows at most 1024 threads per "
                   f"block, x and y up to 1024, z up to 64")
        elif threads > self.max_threads_per_block:
            why = (f"block of {threads} threads, more than the kernel's "
                   f"__launch_bounds__({self.max_threads_per_block})")
        elif grid[0] > GRID_X_MAX or grid[1] > GRID_YZ_MAX or grid[2] > GRID_YZ_MAX:
            why = (f"grid {grid}: CUDA allows x up to {GRID_X_MAX}, y and z up to {GRID_YZ_MAX}")
        elif int(shared_mem) > self.max_dynamic_shared_size_bytes:
            why = (f"{int(shared_mem)} bytes of dynamic shared memory, over the "
                   f"{self.max_dynamic_shared_size_bytes} allowed"
                   + (" without an opt-in: set the kernel's max_dynamic_shared_size_bytes "
                      "(cudaFuncAttributeMaxDynamicSharedMemorySize) first"
                      if self.max_dynamic_shared_size_bytes == DEFAULT_DYNAMIC_SHARED_BYTES
                      else ""))
        if why:
            raise SimLaunchError(f"{self.name}: CUDA_ERROR_INVALID_VALUE: invalid argument "
                                 f"({why})")

    def __call__(self, grid, block, args, shared_mem=0):
        launch = self.prepare(grid, block, args, shared_mem)
        launch()
        if _recording is not None:
            _recording.append(launch)

    def prepare(self, grid, block, args, shared_mem=0):
        """The launch, checked and with its arguments marshalled, ready to run (and to run
        again: a recorded launch list replays these)."""
        grid = _as_triple(grid, "grid", self.name)
        block = _as_triple(block, "block", self.name)
        self._check_limits(grid, block, shared_mem)
        args = tuple(args)
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: takes {len(self.params)} arguments, got {len(args)}")
        boxes = [self._marshal(i, a, p) for i, (a, p) in enumerate(zip(args, self.params))]
        extents = tuple((i, a.ctypes.data, a.nbytes) for i, (a, p) in
                        enumerate(zip(args, self.params)) if p.is_pointer and a is not None)
        return Launch(self, grid, block, int(shared_mem), boxes, extents)


class Launch:
    """One prepared launch: the kernel, its configuration and its marshalled arguments (the
    pointers of the arrays it was given, which must stay alive). Calling it runs the kernel;
    nothing is allocated or checked again, unless the memory check is on (set_memory_check):
    then each run copies the arrays into guarded buffers and back."""

    __slots__ = ("kernel", "grid", "block", "shared_mem", "_boxes", "_argv", "_grid", "_block",
                 "_build", "_function", "_extents")

    def __init__(self, kernel, grid, block, shared_mem, boxes, extents=()):
        self.kernel, self.grid, self.block, self.shared_mem = kernel, grid, block, shared_mem
        self._boxes = boxes
        self._extents = extents      # (argument, address, bytes) of each array: memory_check
        self._argv = (ctypes.c_void_p * max(1, len(boxes)))(*[b.ctypes.data for b in boxes])
        self._grid, self._block = (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block)
        self._build = self._function = None

    def __call__(self):
        if _dry_run:
            return
        kernel = self.kernel
        build = kernel.module._current()       # the build of the current setting, at each run
        if build is not self._build:
            self._build, self._function = build, build.launcher(kernel._c_name)
        build.apply_config()
        build.launches += 1
        if _config.memory_check and self._extents:
            guarded = _Guarded(self._extents, self._boxes)
            try:
                failed = self._function(self._grid, self._block, self.shared_mem, guarded.argv)
                wrote = guarded.writes_outside()
            finally:
                guarded.write_back()
            if wrote:
                raise SimMemoryError(f"{kernel.name} (grid {self.grid}, block {self.block}) "
                                     f"wrote outside its arguments: {wrote}")
        else:
            failed = self._function(self._grid, self._block, self.shared_mem, self._argv)
        if failed:
            message = build.lib.simt_last_error().decode(errors="replace")
            raise SimError(f"{kernel.name} (grid {self.grid}, block {self.block}): "
                           f"{message or 'failed'}")

    def __repr__(self):
        return f"Launch({self.kernel.name}, grid={self.grid}, block={self.block})"


_GUARD_MIN, _GUARD_MAX, _ALIGN = 4096, 1 << 20, 256


def _canary_words():
    # float32 quiet NaNs of random payloads and signs: a float read from a guard zone is a NaN,
    # and what a kernel writes there (a NaN it computed, bytes it copied from another zone) is
    # not what that place held, because every zone starts at another place in the pattern.
    rng = np.random.default_rng(0x5EED)
    n = _GUARD_MAX // 4 + 4096
    words = rng.integers(0, 1 << 22, n, dtype=np.uint32) | np.uint32(0x7FC00000) \
        | (rng.integers(0, 2, n, dtype=np.uint32) << np.uint32(31))
    return words.view(np.uint8)


_canary = None                 # made at the first checked launch
_zones = itertools.count()     # each guard zone its own start in the pattern


def _naming(members):
    return " and ".join(f"argument {i} (an array of {n} bytes)" for i, _, n in members)


class _Guarded:
    """The arrays of one launch copied into guarded buffers (see set_memory_check): `argv` points
    the kernel at the copies; writes_outside() says which guard zones changed; write_back()
    copies the arrays back."""

    def __init__(self, extents, boxes):
        global _canary
        if _canary is None:
            _canary = _canary_words()
        groups = []              # [start, end, [(argument, address, bytes)]]: overlapping ones
        for i, address, size in sorted(extents, key=lambda e: (e[1], -e[2])):
            if groups and (address < groups[-1][1] or address == groups[-1][0]):
                groups[-1][1] = max(groups[-1][1], address + size)
                groups[-1][2].append((i, address, size))
            else:
                groups.append([address, address + size, [(i, address, size)]])
        self._groups, pointers = [], {}
        for start, end, members in groups:
            size = end - start
            guard = min(max(size, _GUARD_MIN), _GUARD_MAX)
            buffer = np.empty(2 * guard + size + _ALIGN, np.uint8)
            base = buffer.ctypes.data
            offset = guard + (start - base - guard) % _ALIGN    # the original's alignment
            zones = []
            for zone in (buffer[:offset], buffer[offset + size:]):
                first = 4 * (next(_zones) % 1021) + zone.ctypes.data % 4     # word-aligned NaNs
                expected = _canary[first:first + zone.size]
                zone[:] = expected
                zones.append((zone, expected))
            ctypes.memmove(base + offset, start, size)
            self._groups.append((start, size, offset, buffer, zones, members))
            for i, address, _ in members:
                pointers[i] = base + offset + (address - start)
        self._boxes = [np.array([pointers[i]], dtype=np.uintp) if i in pointers else box
                       for i, box in enumerate(boxes)]
        self.argv = (ctypes.c_void_p * max(1, len(boxes)))(*[b.ctypes.data for b in self._boxes])

    def writes_outside(self):
        """'' when every guard zone is intact, else where the writes were, per argument."""
        found = []
        for _, _, offset, _, ((before, was_before), (after, was_after)), members in self._groups:
            hit = np.flatnonzero(before != was_before)
            if hit.size:
                found.append(f"{hit.size} bytes changed 1 to {offset - hit[0]} bytes before "
                             + _naming(m for m in members if m[1] == members[0][1]))
            hit = np.flatnonzero(after != was_after)
            if hit.size:
                end = max(a + n for _, a, n in members)
                found.append(f"{hit.size} bytes changed {hit[0] + 1} to {hit[-1] + 1} bytes past "
                             f"the end of " + _naming(m for m in members if m[1] + m[2] == end))
        return "; ".join(found)

    def write_back(self):
        for start, size, offset, buffer, _, _ in self._groups:
            ctypes.memmove(start, buffer.ctypes.data + offset, size)


class Fill:
    """A device memset emulated on the host (CuPy's fill on the GPU), as a launch-list entry."""

    __slots__ = ("array", "value")

    def __init__(self, array, value):
        self.array, self.value = array, value

    def __call__(self):
        self.array.fill(self.value)

    def __repr__(self):
        return f"Fill({self.array.dtype}{tuple(self.array.shape)}, {self.value!r})"


# ------------------------------------------------------------------ recorded launch lists
_recording = None
_dry_run = False


@contextlib.contextmanager
def dry_run():
    """Inside the block, launches are checked (arguments against parameters, as always) but
    not run: what a step allocates and launches, and in what order, at any size, in no time
    (cupycnn.plan traces ResNet-18 at batch 256 this way). The arrays' contents are garbage."""
    global _dry_run
    previous, _dry_run = _dry_run, True
    try:
        yield
    finally:
        _dry_run = previous


@contextlib.contextmanager
def record():
    """Record every launch made inside the block (they run as usual) into the list it yields;
    calling each entry again replays them. What a replay needs is the caller's business: the
    arrays the launches were given must stay alive and hold what the next replay should read
    (cupycnn.plan keeps them in one arena)."""
    global _recording
    if _recording is not None:
        raise SimError("a launch-list recording is already running")
    _recording = launches = []
    try:
        yield launches
    finally:
        _recording = None


def record_fill(array, value):
    """Fill `array` (a device array of the sim device) with `value`, recorded as a launch-list
    entry when a recording runs."""
    fill = Fill(array, value)
    fill()
    if _recording is not None:
        _recording.append(fill)


def recording():
    """True while record() runs."""
    return _recording is not None
