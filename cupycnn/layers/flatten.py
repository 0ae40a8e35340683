"""Flatten, PyTorch's `nn.Flatten(start_dim=1, end_dim=-1)`: [N, C, H, W] -> [N, C * H * W] by
default. No kernel: the input is C-contiguous, so merging axes is a reshape (a view, no copy) on
every device; backward reshapes dy back to the input's shape."""
import math

from ..ops._check import check_integer
from .base import Layer


class Flatten(Layer):
    """Merge the axes start_dim ... end_dim (inclusive; negative counts from the end) into one.
    No parameters."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = check_integer("Flatten", "start_dim", start_dim)
        self.end_dim = check_integer("Flatten", "end_dim", end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"

    def _axes(self, ndim):
        """(start, end) as non-negative axes of an ndim-dimensional input, None if invalid."""
        start = self.start_dim + ndim if self.start_dim < 0 else self.start_dim
        end = self.end_dim + ndim if self.end_dim < 0 else self.end_dim
        return (start, end) if 0 <= start <= end < ndim else None

    def forward(self, x, training=None):
        self.check_input(x, None)
        shape = tuple(x.shape)
        axes = self._axes(len(shape))
        if axes is None:
            fits = [n for n in range(1, 33) if self._axes(n) is not None]
            wanted = f"at least {fits[0]} dimensions" if fits else "start_dim <= end_dim"
            raise ValueError(f"{self!r}: input must have {wanted} to flatten axes "
                             f"{self.start_dim} to {self.end_dim}, got shape {shape}")
        start, end = axes
        out_shape = shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:]
        self.save_for_backward(shape=shape, out_shape=out_shape)
        return x.reshape(out_shape)

    def backward(self, dy):
        saved = self.saved()
        self.check_grad_output(dy, saved["out_shape"])
        return dy.reshape(saved["shape"])
