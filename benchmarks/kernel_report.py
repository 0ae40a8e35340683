"""Per-kernel resources and instruction mix from the machine code, without a GPU.

    python benchmarks/kernel_report.py                  # every kernel, sm_80 and sm_90
    python benchmarks/kernel_report.py --arch sm_90 --files conv2d_tc gemm_tc --markdown

Each kernel file is compiled by nvcc to a cubin, once per set of defines it is built with
(ops/tiles.py: each tensor-core tile and precision), with CuPy's option set (what
cupy.RawModule gives NVRTC: the project's --std=c++17, CuPy's -ftz=true, -arch=sm_XX), plus
-Xptxas -v for ptxas's resource lines; `cuobjdump -sass` (the nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm wheels of the dev extra) disassembles it. Per kernel it prints registers
per thread, static shared memory, stack frame, spill stores and loads (bytes), and the count of
HMMA (tensor-core mma, with its shape and types), FFMA (FP32 fused multiply-add), LDSM
(ldmatrix), LDGSTS (cp.async) instructions in the SASS. Counts are static (instructions in the
code, not executed ones): they prove what the compiler emitted, not how often it runs.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree

from cupycnn import runtime  # noqa: E402
from cupycnn.ops import tiles  # noqa: E402

CUPY_OPTIONS = runtime.NVRTC_OPTIONS + ("-ftz=true",)   # CuPy adds -ftz=true to every compile
ARCHS = ("sm_80", "sm_90")
COUNTED = ("HMMA", "FFMA", "LDSM", "LDGSTS")

_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\w+)'")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                          r"loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")
_SASS_FUNCTION = re.compile(r"^\s*Function : (\w+)", re.M)
_SASS_OP = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)")


class ToolNotFound(RuntimeError):
    """nvcc or cuobjdump / nvdisasm is missing."""


@dataclass
class KernelRow:
    file: str
    variant: str
    arch: str
    kernel: str
    registers: int = 0
    shared: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    counts: dict = field(default_factory=dict)     # HMMA, FFMA, LDSM, LDGSTS -> count
    hmma_kinds: tuple = ()                         # e.g. ("HMMA.1688.F32.TF32",)


def nvcc_path():
    found = shutil.which("nvcc") or next(iter(glob.glob("/usr/local/cuda*/bin/nvcc")), None)
    if not found:
        raise ToolNotFound("nvcc not found: put the CUDA toolkit's bin folder on the PATH")
    return found


def disassembler_bin():
    """The folder with cuobjdump and nvdisasm: from the pip wheels (nvidia/*/bin), else PATH."""
    import site
    roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
    for root in roots:
        for pattern in ("nvidia/*/bin/cuobjdump", "nvidia/cuda_cuobjdump/bin/cuobjdump"):
            for hit in glob.glob(os.path.join(root, pattern)):
                folder = os.path.dirname(hit)
                if os.path.exists(os.path.join(folder, "nvdisasm")) or shutil.which("nvdisasm"):
                    return folder
    if shutil.which("cuobjdump") and shutil.which("nvdisasm"):
        return os.path.dirname(shutil.which("cuobjdump"))
    raise ToolNotFound("cuobjdump and nvdisasm not found: pip install nvidia-cuda-cuobjdump "
                       "nvidia-cuda-nvdisasm (the dev extra has them)")


def variant_name(defines):
    d = dict(defines)
    if not d:
        return "-"
    return (f"{d['TC_BM']}x{d['TC_BN']}x{d['TC_BK']} w{d['TC_WARPS_M']}x{d['TC_WARPS_N']} "
            f"s{d['TC_STAGES']} {'bf16' if d['TC_BF16'] else 'tf32'}")


def compile_and_read(file, defines, arch, workdir):
    """[KernelRow] for every kernel of kernels/<file>.cu built with `defines` for `arch`."""
    stem = f"{file}-{arch}-" + "-".join(str(v) for _, v in defines)
    source = Path(workdir) / f"{stem}.cu"
    cubin = Path(workdir) / f"{stem}.cubin"
    source.write_text(runtime.kernel_source(file))
    cmd = [nvcc_path(), "-cubin", f"-arch={arch}", *CUPY_OPTIONS, "-Xptxas", "-v",
           *runtime.define_options(defines), "-x", "cu", str(source), "-o", str(cubin)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"nvcc failed on {file}.cu ({variant_name(defines)}, {arch}):\n"
                           + built.stderr[-4000:])
    rows, current = {}, None
    for line in built.stderr.splitlines():
        m = _PTXAS_ENTRY.search(line)
        if m:
            current = rows[m.group(1)] = KernelRow(file, variant_name(defines), arch, m.group(1))
            continue
        if current is None:
            continue
        m = _PTXAS_FRAME.search(line)
        if m:
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        m = _PTXAS_USED.search(line)
        if m:
            current.registers = int(m.group(1))
            current.shared = int(m.group(2) or 0)
    tools = disassembler_bin()
    env = dict(os.environ, PATH=tools + os.pathsep + os.environ.get("PATH", ""))
    sass = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", str(cubin)],
                          capture_output=True, text=True, env=env)
    if sass.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed on {cubin.name}: {sass.stderr[-2000:]}")
    parts = _SASS_FUNCTION.split(sass.stdout)
    for name, body in zip(parts[1::2], parts[2::2]):
        row = rows.setdefault(name, KernelRow(file, variant_name(defines), arch, name))
        ops = _SASS_OP.findall(body)
        row.counts = {c: sum(1 for op in ops if op.split(".")[0] == c) for c in COUNTED}
        row.hmma_kinds = tuple(sorted({op for op in ops if op.startswith("HMMA")}))
    return sorted(rows.values(), key=lambda r: r.kernel)


def report(files=None, archs=ARCHS, jobs=2):
    """KernelRows for every (file, variant, arch), compiled `jobs` at a time."""
    files = files or runtime.kernel_files()
    work = [(f, d, a) for f in files for d in tiles.variants(f) for a in archs]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max(1, jobs)) as pool:
        results = list(pool.map(lambda w: compile_and_read(*w, tmp), work))
    return [row for rows in results for row in rows]


def format_rows(rows, markdown=False):
    head = ["kernel", "variant", "arch", "regs", "smem B", "stack B", "spill st/ld B",
            *COUNTED, "HMMA kind"]
    body = [[r.kernel, r.variant, r.arch, str(r.registers), str(r.shared), str(r.stack),
             f"{r.spill_stores}/{r.spill_loads}", *(str(r.counts.get(c, 0)) for c in COUNTED),
             ", ".join(k[5:] for k in r.hmma_kinds) or "-"] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head] + body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", choices=ARCHS,
                        help="sm_80 and/or sm_90 (default both)")
    parser.add_argument("--files", nargs="+", metavar="FILE", help="kernel files, without .cu "
                        f"(default all: {', '.join(runtime.kernel_files())})")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    unknown = set(args.files or ()) - set(runtime.kernel_files())
    if unknown:
        parser.error(f"no kernel file {', '.join(sorted(unknown))} (files: "
                     f"{', '.join(runtime.kernel_files())})")
    try:
        rows = report(args.files, tuple(args.arch or ARCHS), args.jobs)
    except ToolNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"nvcc {' '.join(CUPY_OPTIONS)} -cubin -Xptxas -v; static SASS instruction counts")
    print(format_rows(rows, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
