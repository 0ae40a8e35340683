"""Softmax cross-entropy, forward and backward: launches kernels/softmax_xent.cu.

    loss, row_max, row_sum = softmax_xent_forward(logits, labels, label_smoothing)
    dlogits = softmax_xent_backward(logits, labels, row_max, row_sum, label_smoothing)

The maths is in reference/softmax_xent.py and the kernel file's header. Labels may be of any
integer dtype; the kernels read int32, so `labels_to_int32` converts them first (a layer calls
it once and hands the int32 labels to both halves).

Bad labels: on numpy and sim the labels are host arrays, and a label outside [0, C) is a
ValueError naming the first one. On cuda they are not checked (that would be a device-to-host
copy and a synchronisation every step): the kernels make the row's loss and gradient NaN, so
the mean loss turns NaN.
"""
import numpy as np

from .. import devices as _device
from ..reference import softmax_xent as reference
from ..runtime import ceil_div, elementwise_grid, get_kernel
from ._check import check_arrays, check_int32, check_int_array, check_integer, check_positive
from ._launch import kernel_constants
from ._storage import activation_dtypes, is_bf16, reference_bf16, suffix

_K = kernel_constants("softmax_xent")
XENT_ROWS_PER_BLOCK, XENT_THREADS = _K["XENT_ROWS_PER_BLOCK"], _K["XENT_THREADS"]   # a warp per row
MEAN_THREADS = _K["MEAN_THREADS"]              # one block, whole warps
_INT32 = np.dtype(np.int32)


def check_labels_on_host(op, labels, classes):
    """ValueError naming the first label outside [0, classes). Host arrays only (numpy, sim)."""
    wide = np.asarray(labels).astype(np.int64, copy=False)   # uint64 above 2^63: negative
    bad = np.flatnonzero((wide < 0) | (wide >= classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{op}: labels[{i}] = {labels[i]} is not a class index for {classes} "
                         f"classes (expected 0 <= label < {classes}; {bad.size} bad label"
                         f"{'s' if bad.size > 1 else ''} in all)")


def labels_to_int32(labels, classes, op="labels_to_int32", check=True):
    """Labels [N] of any integer dtype as int32 on the current device, as the kernels read them.

    With `check` (the default), on numpy and sim a label outside [0, classes) is a ValueError
    naming the first one (see the module docstring for cuda). int8, int16, uint8, uint16 and
    int32 fit int32 and are cast; int64, uint32 and uint64 go through the narrow_labels kernel,
    which maps every value outside [0, classes) to -1 rather than letting 2^32 + 3 wrap to 3.
    """
    classes = check_integer(op, "classes", classes, 0)
    check_int_array(op, "labels", labels, ("N",))
    if check and _device.device() != "cuda":
        check_labels_on_host(op, labels, classes)
    if not _device.runs_kernels():
        return reference.narrow_labels(labels, classes)
    if np.can_cast(labels.dtype, _INT32, casting="safe"):
        return labels.astype(_INT32, copy=False)       # lossless; no copy when already int32
    wide = labels.astype(np.int64, copy=False)
    out = _device.empty(labels.shape, _INT32)
    n = labels.shape[0]
    check_int32("narrow_labels", n=n, classes=classes)
    if n:
        grid, block = elementwise_grid(n)
        get_kernel("softmax_xent", "narrow_labels")(grid, block,
                                                    (wide, out, np.int32(n), np.int32(classes)))
    return out


def _check_smoothing(op, label_smoothing):
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be between 0.0 and 1.0, got "
                         f"{label_smoothing}")



def _checked_labels(op, sizes, labels, label_smoothing, check_labels):
    """What forward and backward both check: labels [N] of any integer dtype, N and C at least
    1, the smoothing in [0, 1]; returns the labels as int32 (see labels_to_int32)."""
    check_int_array(op, "labels", labels, ("N",), sizes)
    check_positive(op, N=sizes["N"], C=sizes["C"])
    _check_smoothing(op, label_smoothing)
    return labels_to_int32(labels, sizes["C"], op, check=check_labels)

def softmax_xent_forward(logits, labels, label_smoothing=0.0, check_labels=True):
    """Mean softmax cross-entropy of logits [N, C] for labels [N] (any integer dtype).

    Returns (loss, row_max, row_sum): the loss as a 0-d array, and per row the maximum logit and
    the sum of exp(logit - maximum), which softmax_xent_backward takes. check_labels: see
    labels_to_int32 (False lets a bad label reach the kernel, which makes it NaN)."""
    op = "softmax_xent_forward"
    sizes = check_arrays(op, dtypes=activation_dtypes(), logits=(logits, ("N", "C")))
    labels = _checked_labels(op, sizes, labels, label_smoothing, check_labels)
    rows, classes = sizes["N"], sizes["C"]
    check_int32("softmax_xent", rows=rows, classes=classes, elements=rows * classes)
    if not _device.runs_kernels():
        if is_bf16(logits):
            return reference_bf16(reference.softmax_xent_forward, logits, labels,
                                  label_smoothing, outputs=0)
        return reference.softmax_xent_forward(logits, labels, label_smoothing)
    row_loss = _device.empty((rows,), np.float32)
    row_max = _device.empty((rows,), np.float32)
    row_sum = _device.empty((rows,), np.float32)
    get_kernel("softmax_xent", "softmax_xent_forward" + suffix(logits))(
        (ceil_div(rows, XENT_ROWS_PER_BLOCK),), (XENT_THREADS,),
        (logits, labels, row_loss, row_max, row_sum, np.int32(rows), np.int32(classes),
         np.float32(label_smoothing)))
    return batch_mean(row_loss), row_max, row_sum


def batch_mean(values):
    """The mean of a vector [n], n >= 1, as a 0-d array (a fixed summation order: the same
    bits on every run)."""
    op = "batch_mean"
    sizes = check_arrays(op, values=(values, ("n",)))
    check_positive(op, n=sizes["n"])
    if not _device.runs_kernels():
        return reference.batch_mean(values)
    out = _device.empty((), np.float32)
    get_kernel("softmax_xent", "batch_mean")((1,), (MEAN_THREADS,),
                                             (values, out, np.int32(sizes["n"])))
    return out


def softmax_xent_backward(logits, labels, row_max, row_sum, label_smoothing=0.0,
                          check_labels=True):
    """dloss/dlogits [N, C] = (softmax - target) / N, for the loss softmax_xent_forward gave
    from the same logits, labels and label_smoothing (row_max and row_sum are its outputs)."""
    op = "softmax_xent_backward"
    sizes = check_arrays(op, dtypes=activation_dtypes(), logits=(logits, ("N", "C")))
    check_arrays(op, bound=sizes, row_max=(row_max, ("N",)), row_sum=(row_sum, ("N",)))
    labels = _checked_labels(op, sizes, labels, label_smoothing, check_labels)
    rows, classes = sizes["N"], sizes["C"]
    if not _device.runs_kernels():
        if is_bf16(logits):
            return reference_bf16(reference.softmax_xent_backward, logits, labels, row_max,
                                  row_sum, label_smoothing)
        return reference.softmax_xent_backward(logits, labels, row_max, row_sum, label_smoothing)
    dlogits = _device.empty((rows, classes), logits.dtype)
    grid, block = elementwise_grid(rows * classes)
    get_kernel("softmax_xent", "softmax_xent_backward" + suffix(logits))(
        grid, block, (logits, labels, row_max, row_sum, dlogits, np.int32(rows),
                      np.int32(classes), np.float32(label_smoothing), np.float32(1.0 / rows)))
    return dlogits
