"""What the host wrappers share about launching kernels (CUDA's limits: cupycnn.limits).

- `kernel_constants(file)`: the integer `#define`s of kernels/<file>.cu (tile sizes, threads per
  block), read from the source, so that a launch constant is written once, in its kernel.
- SM_COUNT, TARGET_BLOCKS: the GPU the launch shapes are sized for, and how many blocks a
  reduction is split into to fill it.
- `resolve_version`: which of an op's kernel versions (VERSIONS) runs at the precision.
"""
import ast
import functools
import operator
import re

from ..precision import get_precision
from ..runtime import kernel_source

SM_COUNT = 132          # streaming multiprocessors of an H100 / H200 SXM
# Reductions that would run on too few blocks (a channel's statistics, a weight gradient's long
# sum) are split into chunks for about this many blocks: 4 resident blocks on each SM. A count
# from the shapes only keeps results the same bits on every run.
TARGET_BLOCKS = 4 * SM_COUNT

_DEFINE_RE = re.compile(
    r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)[ \t]+([^\n]*?)[ \t]*(?://[^\n]*)?$", re.M)
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: lambda a, b: int(a / b), ast.Mod: operator.mod,      # C's int division
              ast.LShift: operator.lshift, ast.RShift: operator.rshift}


def _evaluate(node, known):
    """An integer expression of literals and earlier #define names, or KeyError/TypeError."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        return known[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, known)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left, known), _evaluate(node.right, known))
    raise TypeError("not an integer expression")


@functools.lru_cache(maxsize=None)
def kernel_constants(file):
    """{NAME: value} for every `#define NAME <integer expression>` of kernels/<file>.cu and the
    headers it includes (other #defines, floats and macros with arguments, are left out)."""
    known = {}
    for name, text in _DEFINE_RE.findall(kernel_source(file)):
        try:
            known[name] = _evaluate(ast.parse(text, mode="eval").body, known)
        except (SyntaxError, KeyError, TypeError, ZeroDivisionError):
            pass
    return known


# The kernel versions of the ops that have several (conv2d, gemm), in the order of the
# progression: one thread per output, FP32 register tiles, tensor cores.
VERSIONS = ("direct", "tiled", "tensor_core")


def resolve_version(op, version):
    """The kernel version to run at the current precision: `version`, checked against it, or
    the precision's default (fp32: "tiled"; tf32, bf16: "tensor_core")."""
    precision = get_precision()
    if version is None:
        return "tiled" if precision == "fp32" else "tensor_core"
    if version not in VERSIONS:
        raise ValueError(f"{op}: version must be one of {', '.join(VERSIONS)}, got {version!r}")
    if (version == "tensor_core") != (precision != "fp32"):
        raise ValueError(f"{op}: the {version} kernels compute in "
                         f"{'tf32 or bf16' if version == 'tensor_core' else 'fp32'}, but the "
                         f"precision is {precision} (cupycnn.set_precision)")
    return version
