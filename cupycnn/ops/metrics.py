"""Running training metrics on the device: launches kernels/metrics.cu."""
import numpy as np

from .. import devices as _device
from ..reference import metrics as reference
from ..runtime import get_kernel
from ._check import check_arrays, check_int_array
from ._launch import kernel_constants
from ._storage import activation_dtypes, is_bf16, reference_bf16, suffix

METRICS_THREADS = kernel_constants("metrics")["METRICS_THREADS"]


def new_sums():
    """A zeroed accumulator [loss total, correct, count] (float64) on the current device."""
    return _device.zeros((3,), np.float64)


def accumulate_metrics(logits, labels, loss, sums):
    """sums += [loss * N, correct predictions, N] for one batch; no host synchronisation.

    logits [N, C], labels [N] int32, loss a 0-d array (the batch mean), sums from new_sums()."""
    op = "accumulate_metrics"
    sizes = check_arrays(op, dtypes=activation_dtypes(), logits=(logits, ("N", "C")))
    check_int_array(op, "labels", labels, ("N",), sizes)
    check_arrays(op, loss=(loss, ()))
    check_arrays(op, dtypes=(np.float64,), sums=(sums, (3,)))
    if not _device.runs_kernels():
        if is_bf16(logits):
            return reference_bf16(reference.accumulate_metrics, logits, labels, loss, sums,
                                  outputs=0)
        return reference.accumulate_metrics(logits, labels, loss, sums)
    if labels.dtype != np.int32:
        raise ValueError(f"{op}: labels must be int32 on the {_device.device()} device, got "
                         f"{labels.dtype}")
    if sizes["N"] == 0:
        return sums
    get_kernel("metrics", "accumulate_metrics" + suffix(logits))((1,), (METRICS_THREADS,),
                                                (logits, labels, loss, sums,
                                                 np.int32(sizes["N"]), np.int32(sizes["C"])))
    return sums


def read_sums(sums):
    """(mean loss, accuracy, count) from an accumulator (one device-to-host copy)."""
    loss_total, correct, count = (float(v) for v in _device.asnumpy(sums))
    if count == 0:
        return float("nan"), float("nan"), 0
    return loss_total / count, correct / count, int(count)
