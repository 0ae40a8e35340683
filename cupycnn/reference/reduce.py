"""Per-channel sums: the specification of kernels/reduce.cu."""
import numpy as np


def channel_sum(x):
    """out[c] = sum of x over every axis but axis 1 (x is [N, C] or [N, C, ...])."""
    axes = (0,) + tuple(range(2, x.ndim))
    return np.sum(x, axis=axes, dtype=x.dtype)
