"""The arithmetic of convolutions and dense layers: a user's choice, as in PyTorch.

    cupycnn.set_precision("tf32")            # from now on
    with cupycnn.set_precision("bf16"):      # within the block only, then back
        ...
    cupycnn.get_precision()                  # "fp32", "tf32" or "bf16"

| precision | conv2d and gemm (dense) on cuda and sim | on numpy | like PyTorch's |
| --- | --- | --- | --- |
| `fp32` (default) | the exact FP32 SIMT kernels | float32 NumPy | `allow_tf32 = False` |
| `tf32` | tensor cores: operands rounded to TF32 (cvt.rna), FP32 accumulation | operands rounded the same way | cuDNN's default for convolutions |
| `bf16` | tensor cores: operands rounded to BF16 (nearest even), FP32 accumulation | operands rounded the same way | `torch.autocast(dtype=torch.bfloat16)` |

Only the two operands of each product are rounded (x and w forward; dy and w for the input
gradient; dy and x for the weight gradient; likewise for the dense layer's three GEMMs). Master
weights, their gradients and optimizer state stay FP32, so the three devices agree to
accumulation-order rounding at every precision. The rounding itself is
`cupycnn.reference.rounding.round_operand`; CUPYCNN_PRECISION sets the initial value.

Activation storage: under `bf16` the training step also stores the activations and their
gradients in BF16 (the augmentation kernels write the batch so, the trainer casts a float32
batch, and every op keeps its input's storage: ops/_storage.py, docs/STEP.md); at `fp32` and
`tf32`, and for float32 input outside the trainer, they are float32.
"""
import os

from .reference.rounding import PRECISIONS, check_precision

_current = check_precision(os.environ.get("CUPYCNN_PRECISION", "fp32"), "CUPYCNN_PRECISION")


class set_precision:
    """Set the precision of conv2d and gemm now; used in a `with` statement, restore the
    previous one when the block ends."""

    def __init__(self, precision):
        global _current
        check_precision(precision)
        self._previous, _current = _current, precision

    def __enter__(self):
        return _current

    def __exit__(self, *exc):
        global _current
        _current = self._previous
        return False


def get_precision():
    """The current precision: "fp32", "tf32" or "bf16"."""
    return _current


__all__ = ["PRECISIONS", "get_precision", "set_precision"]
