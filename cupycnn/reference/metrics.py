"""Running metrics: the specification of kernels/metrics.cu."""
import numpy as np


def accumulate_metrics(logits, labels, loss, sums):
    """sums += [loss * N, number of rows whose argmax (first maximum) equals the label, N]."""
    n = logits.shape[0]
    correct = int(np.count_nonzero(np.argmax(logits, axis=1) == labels))
    sums += np.array([float(loss) * n, correct, n], dtype=np.float64)
    return sums
