"""ReLU and elementwise add: the specification of kernels/elementwise.cu."""
import numpy as np


def relu_forward(x):
    """y = max(x, 0)."""
    return np.maximum(x, 0).astype(x.dtype, copy=False)


def relu_backward(x, dy):
    """dx = dy where the forward input x > 0, else 0 (0 at exactly x = 0, as PyTorch)."""
    return np.where(x > 0, dy, 0).astype(dy.dtype, copy=False)


def add(a, b):
    """out = a + b."""
    return a + b
