"""What the compiler makes of each kernel, read without a GPU: ptxas's resource report (registers,
shared memory, stack frame, spills) and the instruction mix of the SASS, for sm_80 and sm_90.

    from cupycnn import machine_code
    for k in machine_code.inspect("conv2d_tc", "sm_90", tiles.LARGE.defines("bf16")):
        k.kernel, k.registers, k.spill_stores, k.count("HMMA"), k.hmma_kinds

Each kernel file is compiled as CuPy compiles it (the source runtime.kernel_source gives, its
includes expanded; nvrtc.CUPY_OPTIONS, CuPy's own option set; -arch=sm_XX straight to a cubin),
by nvcc `-cubin -Xptxas -v`, and disassembled by `cuobjdump -sass` (the nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm wheels of the dev extra). Counts are static: instructions in the code, not
instructions executed; they prove what the compiler emitted. Used by benchmarks/kernel_report.py
(the table) and tests/test_kernel_spills.py and tests/test_kernel_report.py (the assertions).

Compiles take seconds each, so their output (ptxas's log, the cubin and, once asked for, its
SASS) is cached on disk,
keyed by a hash of everything that determines it: the expanded source, the options and defines,
the architecture, and the nvcc and cuobjdump versions. The cache is
$CUPYCNN_MACHINE_CODE_CACHE, else ~/.cache/cupycnn/machine-code ($XDG_CACHE_HOME); a lock per key
lets concurrent processes (pytest-xdist workers) compile each file once.
"""
import base64
import fcntl
import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import runtime
from .sim import module as sim_module
from .nvrtc import CUPY_OPTIONS

ARCHS = ("sm_80", "sm_90")
# The instructions the report counts: tensor-core mma (mma.sync), FP32 fused multiply-add,
# ldmatrix, cp.async; and local-memory loads and stores (what a spill or a stack array costs).
COUNTED = ("HMMA", "FFMA", "LDSM", "LDGSTS", "LDL", "STL")
# CuPy's options for NVRTC that nvcc does not take: NVRTC compiles every function without an
# execution space as __device__ (nvcc would compile it for the host, and a kernel calling it
# fails to build: the compile error says so).
_NVRTC_ONLY = ("--device-as-default-execution-space",)
# The newest CuPy's set (the GPU image's).
NVCC_OPTIONS = tuple(o for o in CUPY_OPTIONS[max(CUPY_OPTIONS, key=lambda v: tuple(
    int(p) for p in v.split(".")))] if o not in _NVRTC_ONLY)

_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\w+)'")
_PTXAS_PROPERTIES = re.compile(r"Function properties for (\w+)")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                          r"loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")
_SASS_FUNCTION = re.compile(r"^\s*Function : (\w+)\s*$", re.M)
# "/*0070*/   @!P0 BRA 0x170 ;": an address, an optional predicate, the opcode with its modifiers.
_SASS_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P(?:T|\d+)\s+)?"
                               r"([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)")


class ToolNotFound(RuntimeError):
    """nvcc, cuobjdump or nvdisasm is missing."""


class CompileError(RuntimeError):
    """nvcc rejected a kernel file; the message holds its log."""


@dataclass(frozen=True)
class KernelCode:
    """One kernel as compiled for one architecture (and one set of defines, `variant`)."""
    file: str
    variant: str
    arch: str
    kernel: str
    registers: int = 0              # per thread
    shared: int = 0                 # static shared memory per block, bytes
    stack: int = 0                  # stack frame per thread, bytes
    spill_stores: int = 0           # bytes
    spill_loads: int = 0            # bytes
    opcodes: Counter = None         # "HMMA.16816.F32.BF16" -> count; None: not disassembled
    threads: int = 0                # per block, where the defines fix it (tensor-core tiles)

    def count(self, op):
        """Instructions whose opcode is `op` ("HMMA"), whatever their modifiers."""
        if self.opcodes is None:
            raise ValueError(f"{self.kernel}: inspected without its SASS (sass=False)")
        return sum(n for name, n in self.opcodes.items() if name.split(".")[0] == op)

    @property
    def hmma_kinds(self):
        """The distinct tensor-core mma instructions, e.g. ("HMMA.1688.F32.TF32",)."""
        return tuple(sorted(name for name in self.opcodes or () if name.split(".")[0] == "HMMA"))

    @property
    def spills(self):
        return self.spill_stores + self.spill_loads

    @property
    def blocks_per_sm(self):
        """Resident blocks per SM (occupancy(); None where the block size is not known)."""
        return occupancy(self.registers, self.shared, self.threads, self.arch) \
            if self.threads else None


# Per SM on sm_80 (A100) and sm_90 (H100, H200): registers, shared memory at the largest
# carveout, threads, blocks; registers are allocated per warp in units of 256, and each block
# reserves 1 KiB of shared memory (CUDA C++ Programming Guide, compute capabilities table).
SM_LIMITS = {"sm_80": {"registers": 65536, "shared": 164 * 1024, "threads": 2048, "blocks": 32},
             "sm_90": {"registers": 65536, "shared": 228 * 1024, "threads": 2048, "blocks": 32}}


def occupancy(registers, shared, threads, arch):
    """Blocks of `threads` threads using `registers` per thread and `shared` bytes of shared
    memory that one SM of `arch` holds at once (what cudaOccupancyMaxActiveBlocksPerMultiprocessor
    would say, from the limits above)."""
    limits = SM_LIMITS[arch]
    warps = -(-threads // 32)
    warp_registers = -(-registers * 32 // 256) * 256
    by_registers = ((limits["registers"] // warp_registers) // warps if registers
                    else limits["blocks"])
    return min(limits["blocks"], limits["threads"] // threads, by_registers,
               limits["shared"] // (shared + 1024))


def variants(file):
    """(label, defines) for every way kernels/<file>.cu is compiled: one per tile configuration
    and precision of ops/tiles.py for the tensor-core files, once with no defines otherwise."""
    from .ops import tiles
    labels = {tile.defines(p): f"{tile.name} {p}" for tile in tiles.TILES
              for p in ("tf32", "bf16")}
    return [(labels.get(tuple(d)) or " ".join(f"{k}={v}" for k, v in d) or "-", tuple(d))
            for d in tiles.variants(file)]


# ------------------------------------------------------------------------------------- tools
def nvcc():
    """The nvcc executable: on the PATH, else under $CUDA_HOME or /usr/local/cuda*."""
    found = shutil.which("nvcc")
    for root in filter(None, (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"))):
        found = found or shutil.which("nvcc", path=os.path.join(root, "bin"))
    found = found or next(iter(sorted(glob.glob("/usr/local/cuda*/bin/nvcc"))), None)
    if not found:
        raise ToolNotFound("nvcc not found: install the CUDA toolkit and put its bin folder on "
                           "the PATH (or set CUDA_HOME)")
    return found


def _wheel_tool(name):
    """`name` from an nvidia-* pip wheel (nvidia/<package>/bin/<name>), else from the PATH."""
    try:
        import nvidia
        roots = list(nvidia.__path__)
    except ImportError:
        roots = []
    for root in roots:
        for hit in sorted(glob.glob(os.path.join(root, "*", "bin", name))):
            if os.access(hit, os.X_OK):
                return hit
    return shutil.which(name)


def disassembler():
    """(cuobjdump, the PATH it needs to find nvdisasm, which does the disassembling)."""
    cuobjdump, nvdisasm = _wheel_tool("cuobjdump"), _wheel_tool("nvdisasm")
    if not cuobjdump or not nvdisasm:
        raise ToolNotFound("cuobjdump or nvdisasm not found: pip install the dev extra "
                           "(pip install -e '.[dev]': the nvidia-cuda-cuobjdump and "
                           "nvidia-cuda-nvdisasm wheels)")
    folders = dict.fromkeys([os.path.dirname(nvdisasm), os.path.dirname(cuobjdump)])
    return cuobjdump, os.pathsep.join([*folders, os.environ.get("PATH", "")])


def missing_tools():
    """None when nvcc, cuobjdump and nvdisasm are all there, else what is missing (one line)."""
    try:
        nvcc()
        disassembler()
    except ToolNotFound as e:
        return str(e)
    return None


@lru_cache(maxsize=None)
def tool_versions():
    """The version lines of nvcc and cuobjdump (part of the cache key)."""
    cuobjdump, path = disassembler()
    lines = []
    for cmd, env in (([nvcc(), "--version"], None), ([cuobjdump, "--version"], dict(
            os.environ, PATH=path))):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env).stdout
        lines.append(next((l for l in out.splitlines() if "release" in l), out.strip()))
    return tuple(lines)


# ----------------------------------------------------------------------------------- parsing
def entry_points(file):
    """The kernels kernels/<file>.cu defines (its extern "C" __global__ functions), sorted."""
    return sorted({name for name, _ in sim_module.entry_points(runtime.kernel_source(file))})


def parse_ptxas(log):
    """{kernel: {"registers", "shared", "stack", "spill_stores", "spill_loads"}} from the
    stderr of nvcc -Xptxas -v (one architecture)."""
    found, entry, properties = {}, None, None
    for line in log.splitlines():
        m = _PTXAS_ENTRY.search(line)
        if m:
            entry = found.setdefault(m.group(1), dict.fromkeys(
                ("registers", "shared", "stack", "spill_stores", "spill_loads"), 0))
            continue
        m = _PTXAS_PROPERTIES.search(line)
        if m:
            properties = found.get(m.group(1))
            continue
        m = _PTXAS_FRAME.search(line)
        if m and properties is not None:
            properties["stack"], properties["spill_stores"], properties["spill_loads"] = map(
                int, m.groups())
            continue
        m = _PTXAS_USED.search(line)
        if m and entry is not None:
            entry["registers"] = int(m.group(1))
            smem = _PTXAS_SMEM.search(line)
            entry["shared"] = int(smem.group(1)) if smem else 0
    return found


def parse_sass(text):
    """{kernel: Counter of opcodes with their modifiers} from `cuobjdump -sass` of one cubin."""
    parts = _SASS_FUNCTION.split(text)
    return {name: Counter(_SASS_INSTRUCTION.findall(body))
            for name, body in zip(parts[1::2], parts[2::2])}


# --------------------------------------------------------------------------------- compiling
def cache_dir():
    root = os.environ.get("CUPYCNN_MACHINE_CODE_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cupycnn" / "machine-code"


def _nvcc_cubin(source, arch, defines, label):
    """(ptxas log, cubin bytes) of `source` compiled for `arch`."""
    with tempfile.TemporaryDirectory(prefix="cupycnn-sass-") as tmp:
        src, cubin = Path(tmp) / "kernel.cu", Path(tmp) / "kernel.cubin"
        src.write_text(source, encoding="utf-8")
        cmd = [nvcc(), "-cubin", f"-arch={arch}", *NVCC_OPTIONS, "-Xptxas", "-v",
               *runtime.define_options(defines), str(src), "-o", str(cubin)]
        built = subprocess.run(cmd, capture_output=True, text=True)
        if built.returncode != 0:
            raise CompileError(f"nvcc could not compile {label} for {arch}:\n"
                               + built.stderr[-6000:])
        return built.stderr, cubin.read_bytes()


def _disassemble(cubin_bytes, label):
    cuobjdump, path = disassembler()
    with tempfile.TemporaryDirectory(prefix="cupycnn-sass-") as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(cubin_bytes)
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True,
                              env=dict(os.environ, PATH=path))
    if sass.returncode != 0:
        raise CompileError(f"cuobjdump -sass failed on {label}: {sass.stderr[-2000:]}")
    return sass.stdout


_memo = {}      # key -> {"ptxas": log, "cubin": bytes, "sass": text (once disassembled)}


def compiled(file, arch, defines=(), cache=True, sass=True):
    """{"ptxas": log, "cubin": bytes, "sass": text} of kernels/<file>.cu built with `defines`
    for `arch` (without "sass" unless `sass`: disassembling costs about as much as ptxas), from
    the cache when it has them."""
    source = runtime.kernel_source(file)
    defines = tuple((str(k), int(v) if isinstance(v, bool) else v) for k, v in defines)
    key = hashlib.sha256(json.dumps([source, NVCC_OPTIONS, arch, defines, tool_versions()])
                         .encode()).hexdigest()[:32]
    label = f"{file}.cu" + (f" ({' '.join(f'{k}={v}' for k, v in defines)})" if defines else "")
    entry = _memo.get(key)
    if entry is not None and ("sass" in entry or not sass):
        return entry
    folder = cache_dir()
    if cache:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            cache = False
    if not cache:
        entry = entry or dict(zip(("ptxas", "cubin"), _nvcc_cubin(source, arch, defines, label)))
        if sass:
            entry["sass"] = _disassemble(entry["cubin"], f"{label} ({arch})")
        _memo[key] = entry
        return entry
    path = folder / f"{file}-{arch}-{key}.json.gz"
    with open(folder / f"{file}-{arch}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # one compile per key across processes
        stored = None
        if path.exists():
            stored = json.loads(gzip.decompress(path.read_bytes()))
            entry = {**stored, "cubin": base64.b64decode(stored["cubin"])}
        if entry is None:
            entry = dict(zip(("ptxas", "cubin"), _nvcc_cubin(source, arch, defines, label)))
        if sass and "sass" not in entry:
            entry["sass"] = _disassemble(entry["cubin"], f"{label} ({arch})")
        if stored is None or set(stored) != set(entry) | {"meta"}:
            partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            partial.write_bytes(gzip.compress(json.dumps(
                {**entry, "cubin": base64.b64encode(entry["cubin"]).decode(),
                 "meta": {"file": file, "arch": arch, "defines": defines,
                          "tools": tool_versions()}}).encode()))
            os.replace(partial, path)
    entry.pop("meta", None)
    _memo[key] = entry
    return entry


def inspect(file, arch, defines=(), variant=None, cache=True, sass=True):
    """[KernelCode] for every kernel of kernels/<file>.cu built with `defines` for `arch`,
    sorted by kernel name; with sass=False, only ptxas's figures (opcodes None)."""
    entry = compiled(file, arch, defines, cache, sass)
    resources = parse_ptxas(entry["ptxas"])
    opcodes = parse_sass(entry["sass"]) if sass else {}
    variant = variant or (" ".join(f"{k}={v}" for k, v in defines) or "-")
    names = sorted(set(resources) | set(opcodes))
    d = dict(defines)
    threads = 32 * int(d["TC_WARPS_M"]) * int(d["TC_WARPS_N"]) if "TC_WARPS_M" in d else 0
    return [KernelCode(file, variant, arch, name, **resources.get(name, {}),
                       opcodes=opcodes.get(name, Counter()) if sass else None, threads=threads)
            for name in names]


def inspect_all(files=None, archs=ARCHS, jobs=2, cache=True):
    """[KernelCode] of every kernel of `files` (default: every kernel file), in each of its
    variants, for each architecture, compiled `jobs` at a time."""
    work = [(f, a, d, label) for f in (files or runtime.kernel_files())
            for label, d in variants(f) for a in archs]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        results = list(pool.map(lambda w: inspect(*w, cache=cache), work))
    return [k for kernels in results for k in kernels]
