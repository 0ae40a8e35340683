"""Per-kernel resources and instruction mix from the machine code, without a GPU.

    python benchmarks/kernel_report.py                           # every kernel, sm_80 and sm_90
    python benchmarks/kernel_report.py --arch sm_90 --files conv2d_tc gemm_tc
    python benchmarks/kernel_report.py --arch sm_90 --update-docs   # the table in BENCHMARKS.md

Every kernel file, in every variant it is built in (the tensor-core files once per tile
configuration and precision of cupycnn/ops/tiles.py), compiled by nvcc -cubin -Xptxas -v with
CuPy's option set and disassembled by cuobjdump -sass: cupycnn/machine_code.py does both and
reads the results (the tests use the same). Per kernel: registers per thread, static shared
memory per block, stack frame, spill stores / loads (bytes), and the number of HMMA (tensor-core
mma, with its shape and types), FFMA (FP32 fused multiply-add), LDSM (ldmatrix), LDGSTS
(cp.async) and LDL/STL (local memory) instructions in the SASS: static counts, what the compiler
emitted, not how often it runs. For the tensor-core tiles, whose block size the configuration
fixes, also the blocks (and warps) one SM holds at once by registers, shared memory and threads
(machine_code.occupancy).
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree

from cupycnn import machine_code, runtime  # noqa: E402

HEAD = ["kernel", "variant", "arch", "regs", "smem B", "stack B", "spill st/ld B", "blocks/SM",
        "HMMA", "FFMA", "LDSM", "LDGSTS", "LDL/STL", "HMMA kind"]


def occupancy(k):
    """'blocks (warps)' per SM where the block size is known (the tensor-core tiles)."""
    blocks = k.blocks_per_sm
    return "-" if blocks is None else f"{blocks} ({blocks * k.threads // 32} warps)"


def rows(kernels):
    return [[k.kernel, k.variant, k.arch, str(k.registers), str(k.shared), str(k.stack),
             f"{k.spill_stores}/{k.spill_loads}", occupancy(k), *(str(k.count(c)) for c in
                                                    ("HMMA", "FFMA", "LDSM", "LDGSTS")),
             f"{k.count('LDL')}/{k.count('STL')}",
             ", ".join(kind[len("HMMA."):] for kind in k.hmma_kinds) or "-"] for k in kernels]


def format_table(kernels, markdown=False):
    body = rows(kernels)
    if markdown:
        lines = ["| file | " + " | ".join(HEAD) + " |", "|" + "---|" * (len(HEAD) + 1)]
        return "\n".join(lines + [f"| {k.file} | " + " | ".join(r) + " |"
                                  for k, r in zip(kernels, body)])
    widths = [max(len(x) for x in col) for col in zip(HEAD, *body)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip()
                     for line in [HEAD] + body)


def command_line(archs, files):
    return " ".join(["nvcc", "-cubin", *machine_code.NVCC_OPTIONS, "-Xptxas", "-v"] +
                    [f"-arch={a}" for a in archs]) + (
        f"; files {' '.join(files)}" if files else "; every kernel file")


def docs_block(kernels, archs):
    """The generated block of docs/BENCHMARKS.md: how it was made, then the table."""
    nvcc, cuobjdump = machine_code.tool_versions()
    return (f"`python benchmarks/kernel_report.py --arch {' --arch '.join(archs)} "
            f"--update-docs` (nvcc: {nvcc.split(', ', 1)[-1]}; cuobjdump: "
            f"{cuobjdump.split(', ', 1)[-1]}; options `{' '.join(machine_code.NVCC_OPTIONS)}`, "
            f"CuPy's): {len(kernels)} kernels.\n\n" + format_table(kernels, markdown=True))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", choices=machine_code.ARCHS,
                        help="sm_80 and/or sm_90 (default both)")
    parser.add_argument("--files", nargs="+", metavar="FILE", help="kernel files, without .cu "
                        f"(default all: {', '.join(runtime.kernel_files())})")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--update-docs", action="store_true",
                        help="write the table into docs/BENCHMARKS.md (its generated block)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                        help="compiles at a time (default: the CPU count)")
    parser.add_argument("--no-cache", action="store_true",
                        help="compile everything again (default: reuse cupycnn.machine_code's "
                             "cache, keyed by the source, options and tool versions)")
    args = parser.parse_args(argv)
    unknown = set(args.files or ()) - set(runtime.kernel_files())
    if unknown:
        parser.error(f"no kernel file {', '.join(sorted(unknown))} (files: "
                     f"{', '.join(runtime.kernel_files())})")
    archs = tuple(args.arch or machine_code.ARCHS)
    missing = machine_code.missing_tools()
    if missing:
        print(f"kernel_report: {missing}", file=sys.stderr)
        return 2
    kernels = machine_code.inspect_all(args.files, archs, args.jobs, cache=not args.no_cache)
    if args.update_docs:
        import docblock
        docblock.update_block("kernel_report.py", docs_block(kernels, archs))
        print(f"wrote {len(kernels)} kernels' rows into {docblock.DOCS}")
        return 0
    print(command_line(archs, args.files) + "; static SASS instruction counts (cuobjdump -sass)")
    print(format_table(kernels, args.markdown))
    spilled = [k for k in kernels if k.spills or k.stack]
    print(f"{len(kernels)} kernels; with a stack frame or spills: "
          + (", ".join(f"{k.kernel} ({k.variant}, {k.arch})" for k in spilled) or "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
