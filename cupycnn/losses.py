"""Losses. `SoftmaxCrossEntropy`: softmax and cross-entropy fused, as PyTorch's
`nn.CrossEntropyLoss(label_smoothing=...)`. Kernels: kernels/softmax_xent.cu.

    loss_fn = SoftmaxCrossEntropy(label_smoothing=0.1)
    loss = loss_fn.forward(logits, labels)    # a 0-d device array: no host synchronisation
    dlogits = loss_fn.backward()              # [N, C], the gradient of the loss

The maths, forward and backward, is in reference/softmax_xent.py.
"""
from .ops import softmax_xent as ops
from .ops._check import check_arrays, check_int_array, check_positive
from .ops._storage import activation_dtypes


class SoftmaxCrossEntropy:
    """PyTorch's `nn.CrossEntropyLoss(label_smoothing=e)` (= `F.cross_entropy`) for logits
    [N, C] and class-index labels [N] with the default reduction "mean":

        loss = (1/N) sum_i -sum_c t_ic log softmax(logits_i)_c,   t_ic = (1-e)[c == y_i] + e/C
        backward: dloss/dlogits = (softmax(logits) - t) / N

    Computed from the row maximum (log-sum-exp), so logits of any size are safe. Labels may be
    of any integer dtype (int8 ... int64, uint8 ... uint64). Not offered from PyTorch's
    signature: `weight`, `ignore_index` (every label must be a class index: -100 is an error,
    not "ignore") and `reduction` (always the mean); class-probability targets; unbatched [C]
    or spatial [N, C, d1, ...] logits.

    A label outside [0, C) is a ValueError naming the first one on the numpy and sim devices.
    On cuda the labels stay on the GPU unchecked (a check would cost a device-to-host copy every
    step): the bad rows' loss and gradient are NaN, so the loss is NaN.

    Not a Layer: forward takes the labels as well, and backward takes no upstream gradient (the
    loss is the end of the graph; its gradient is 1).
    """

    def __init__(self, label_smoothing=0.0):
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"SoftmaxCrossEntropy: label_smoothing must be between 0.0 and "
                             f"1.0, got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self._saved = None

    def __repr__(self):
        return f"SoftmaxCrossEntropy(label_smoothing={self.label_smoothing})"

    def forward(self, logits, labels):
        """The mean loss (a 0-d array on the current device) of logits [N, C] for labels [N]."""
        op = repr(self)
        self._saved = None
        sizes = check_arrays(op, dtypes=activation_dtypes(), logits=(logits, ("N", "C")))
        check_int_array(op, "labels", labels, ("N",), sizes)
        check_positive(op, N=sizes["N"], C=sizes["C"])
        labels32 = ops.labels_to_int32(labels, sizes["C"], op)     # checks them (numpy, sim)
        loss, row_max, row_sum = ops.softmax_xent_forward(logits, labels32, self.label_smoothing,
                                                          check_labels=False)
        self._saved = dict(logits=logits, labels=labels32, row_max=row_max, row_sum=row_sum)
        return loss

    __call__ = forward

    def backward(self):
        """dloss/dlogits [N, C] for the last forward."""
        if self._saved is None:
            raise RuntimeError(f"{self!r}: backward called before forward (or twice after one "
                               f"forward); call forward first")
        saved, self._saved = self._saved, None
        return ops.softmax_xent_backward(saved["logits"], saved["labels"], saved["row_max"],
                                         saved["row_sum"], self.label_smoothing,
                                         check_labels=False)
