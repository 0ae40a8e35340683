"""Compile kernel sources with NVRTC on a machine without a GPU.

CuPy's RawModule needs a GPU to compile; NVRTC itself does not. This module calls the NVRTC
library of the `nvidia-cuda-nvrtc-cu12` wheel (the `dev` extra) through ctypes, so that every
kernel file can be proven to compile for real GPU architectures wherever the tests run:

    result = compile_source(kernel_source("gemm"), "gemm.cu", arch="sm_90")
    result.entries      # kernel entry points found in the PTX
"""
import ctypes
import glob
import os
import re
from dataclasses import dataclass, field

from .runtime import NVRTC_OPTIONS

# What CuPy's RawModule(code=..., options=NVRTC_OPTIONS) hands NVRTC, read from CuPy's source
# (cupy/_core/core.pyx assemble_cupy_compiler_options, cupy/cuda/compiler.py
# _compile_with_cache_cuda and compile_using_nvrtc), less its -I include folders (CCCL, CuPy's
# headers, the CUDA headers: these kernels include none of them). The architecture option comes
# after, as `-arch=sm_XX` (CuPy compiles straight to a cubin where NVRTC knows the GPU).
#   -ftz=true           always: single-precision denormals flushed to zero
#   --device-as-default-execution-space   NVRTC 12 and later
# Neither sets --fmad, whose default (true) lets NVRTC contract a * b + c into one FMA.
# CuPy 14.2 adds --pch only when CUPY_NVRTC_USE_PCH=1 (a compile-time cache: same code).
CUPY_OPTIONS = {
    "13.6": NVRTC_OPTIONS + ("-ftz=true", "--device-as-default-execution-space"),
    "14.2": NVRTC_OPTIONS + ("-ftz=true", "--device-as-default-execution-space"),
}

_ENTRY_RE = re.compile(r"\.entry\s+(\w+)\s*\(")


class NVRTCNotFound(RuntimeError):
    """No NVRTC library could be loaded."""


class NVRTCCompileError(RuntimeError):
    """NVRTC rejected a source; the message holds its log."""


@dataclass
class CompileResult:
    arch: str
    ptx: str
    cubin_bytes: int
    log: str
    entries: list = field(default_factory=list)


_lib = None


def library_path():
    """The NVRTC shared library: $CUPYCNN_NVRTC, else the one in the nvidia-cuda-nvrtc wheel."""
    env = os.environ.get("CUPYCNN_NVRTC")
    if env:
        return env
    try:
        import nvidia.cuda_nvrtc as wheel
    except ImportError:
        raise NVRTCNotFound("NVRTC not found: install the dev extra (pip install -e '.[dev]'), "
                            "which brings the nvidia-cuda-nvrtc-cu12 wheel, or point "
                            "CUPYCNN_NVRTC at a libnvrtc.so") from None
    folder = os.path.join(list(wheel.__path__)[0], "lib")
    found = sorted(glob.glob(os.path.join(folder, "libnvrtc.so*")))
    if not found:
        raise NVRTCNotFound(f"no libnvrtc.so in {folder}")
    return found[0]


def _load():
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL(library_path())
    return _lib


def version():
    lib = _load()
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def _check(lib, rc, what):
    if rc != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise NVRTCCompileError(f"{what}: {lib.nvrtcGetErrorString(rc).decode()}")


def _compile(lib, source, name, options):
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0,
                                       None, None), "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in options]
        argv = (ctypes.c_char_p * len(opts))(*opts)
        rc = lib.nvrtcCompileProgram(prog, len(opts), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        log = log.value.decode(errors="replace")
        if rc != 0:
            raise NVRTCCompileError(f"NVRTC could not compile {name} with "
                                    f"{' '.join(options)}:\n{log}")
        return prog, log
    except BaseException:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        raise


def compile_source(source, name, arch="sm_90", options=CUPY_OPTIONS["14.2"]):
    """Compile to PTX for compute_XX and to a cubin for sm_XX (as CuPy does: -arch=sm_XX) with
    CuPy's option set by default; raise NVRTCCompileError with the compiler's log on failure."""
    if not re.fullmatch(r"sm_\d+a?", arch):
        raise ValueError(f"arch must look like sm_90, got {arch!r}")
    lib = _load()
    virtual = "compute_" + arch[3:]
    prog, log = _compile(lib, source, name, [f"--gpu-architecture={virtual}", *options])
    try:
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
        ptx = buf.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    prog, log2 = _compile(lib, source, name, [*options, f"-arch={arch}"])
    try:
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin_bytes = size.value
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return CompileResult(arch=arch, ptx=ptx, cubin_bytes=cubin_bytes, log=(log + log2).strip(),
                         entries=_ENTRY_RE.findall(ptx))
