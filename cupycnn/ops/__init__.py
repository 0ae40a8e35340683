"""Host wrappers: check the inputs, then launch the kernel (cuda, sim) or run the reference (numpy).

Each module mirrors a kernel file and a reference module of the same name, function for
function: `ops/gemm.py` launches `kernels/gemm.cu` and is specified by `reference/gemm.py`.
Bad input raises ValueError naming the op and the expected and received shape, before any launch.
"""
from . import (  # noqa: F401
    augment, batchnorm, conv2d, conv2d_stats, dropout, elementwise, gemm, groupnorm, metrics, optim, pool,
    reduce, softmax_xent
)
