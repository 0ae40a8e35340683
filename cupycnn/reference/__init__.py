"""The specification of every op in plain, vectorised NumPy (float32 or float64).

These functions are what the `numpy` device runs, the ground truth kernels are checked against,
and what `cupycnn.gradcheck` differentiates numerically. Each module mirrors a kernel file and an
ops module of the same name, function for function: `reference/gemm.py` <-> `kernels/gemm.cu`
<-> `ops/gemm.py`.
"""
from . import (  # noqa: F401
    augment, batchnorm, conv2d, dropout, elementwise, gemm, groupnorm, metrics, optim, philox,
    pool, reduce, softmax_xent
)
