"""ReLU: y = max(x, 0); dx = dy where x > 0. Kernels: kernels/elementwise.cu."""
from ..ops import elementwise as ops
from .base import Layer


class ReLU(Layer):
    """Rectified linear unit, any input shape. No parameters."""

    def forward(self, x, training=None):
        self.check_input(x, None)
        self.save_for_backward(x=x)
        return ops.relu_forward(x)

    def backward(self, dy):
        x = self.saved()["x"]
        self.check_grad_output(dy, x.shape)
        return ops.relu_backward(x, dy)
