"""Dense (fully connected) layer, PyTorch's `nn.Linear`. Kernels: kernels/gemm.cu, reduce.cu.

    forward:   y  = x @ W^T + b          x: [N, in], W: [out, in], b: [out], y: [N, out]
    backward:  dx = dy @ W               [N, out] @ [out, in]
               dW = dy^T @ x             [out, N] @ [N, in]
               db = sum over N of dy
"""
from .. import random as _random
from ..ops import gemm as gemm_ops
from ..ops import reduce as reduce_ops
from ..ops._check import check_integer
from .base import Layer, uniform_init


class Dense(Layer):
    """y = x W^T + b. Weight [out_features, in_features], bias [out_features], both initialised
    U(-1/sqrt(in_features), 1/sqrt(in_features)) as PyTorch's Linear."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        in_features = check_integer("Dense", "in_features", in_features, 1)
        out_features = check_integer("Dense", "out_features", out_features, 1)
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = _random.generator()
        self.add_param("weight", uniform_init((out_features, in_features), in_features, rng))
        if bias:
            self.add_param("bias", uniform_init((out_features,), in_features, rng))

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'bias' in self.params}")

    def forward(self, x, training=None):
        self.check_input(x, ("N", self.in_features))
        self.save_for_backward(x=x)
        # x, y (and dy, dx) in the activations' storage, BF16 or float; W, b and their
        # gradients float32 (ops/gemm.py: the products on BF16 storage).
        return gemm_ops.gemm(x, self.params["weight"], transpose_b=True,
                             bias=self.params.get("bias"), bias_per="column")

    def backward(self, dy):
        x = self.saved()["x"]
        self.check_grad_output(dy, (x.shape[0], self.out_features))
        gemm_ops.gemm(dy, x, transpose_a=True, out=self.grads["weight"])
        if "bias" in self.params:
            reduce_ops.channel_sum(dy, out=self.grads["bias"])
        if not self.input_grad:              # nobody reads it (the model's input): skipped
            return None
        return gemm_ops.gemm(dy, self.params["weight"])
