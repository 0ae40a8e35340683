"""Synchronised batchnorm: every rank normalises with the statistics of the global batch, as
PyTorch's `nn.SyncBatchNorm.convert_sync_batchnorm(model)` gives under DistributedDataParallel.

    n = cupycnn.distributed.sync_batchnorm(model, ctx)     # or ctx.synchronize_batchnorm(model)

BatchNorm1D/2D compute their statistics in stages and, between them, call
`layer.stats_reducer(sums, count) -> (sums, count)` (layers/normalization.py):

    forward (training)   sums = [sum x, sum x^2] per channel (float64 [C, 2]), count = the
                         elements per channel on this rank (N * H * W); the returned pair gives
                         the mean and the biased variance, and the running statistics (whose
                         unbiased variance uses the returned count)
    backward (training)  sums = [sum dy, sum dy * xhat] per channel, count as above; the returned
                         pair gives dx = weight * invstd * (dy - sum dy / count
                         - xhat * sum(dy xhat) / count)

This module sets the hook to one all-reduce of the sums (NCCL: on the device, no host
synchronisation; MPI: one Allreduce of the packed [sums, count], the count checking that the
ranks agree), the global count being count * ranks (every rank runs the same shapes; comm.py's
global_count), so both passes see the global batch: the forward's mean and variance are those of
every rank's examples together, and the backward's two sums are the global ones that the
gradient through the mean and the variance needs. The reducer returns new arrays and leaves
its argument alone: the layer's parameter gradients are computed from this rank's own sums and
added up by the gradient all-reduce with every other gradient.

Why the backward is right when every rank's loss is the mean over its own B/N examples: each
rank's dy is N times the global loss's dy for those examples (the same factor on every rank),
so the all-reduced sums are N times the global sums, dx is N times the global dx, and the
parameter gradients, all-reduced and scaled by the optimizer's 1/N, are the global ones. The
evaluation forward uses the running statistics and calls no hook (no communication).

Every rank must reach the same batchnorm layers in the same order (each call is a collective):
true for a data-parallel model, where every rank runs the same graph on a batch of the same
size.
"""
from ..layers.normalization import BatchNorm1D, BatchNorm2D, local_statistics


class AllReduceStatistics:
    """A `stats_reducer` that sums the per-channel sums over every rank; the count is this rank's
    times the number of ranks (equal shapes on every rank)."""

    def __init__(self, context):
        self.context = context

    def __call__(self, sums, count):
        return self.context.communicator.allreduce_statistics(sums, int(count))

    def __repr__(self):
        return f"AllReduceStatistics(ranks={self.context.size}, backend={self.context.backend})"


def batchnorm_layers(model):
    """Every BatchNorm1D and BatchNorm2D of `model`, in model order."""
    return [layer for layer in model.layers() if isinstance(layer, (BatchNorm1D, BatchNorm2D))]


def sync_batchnorm(model, ctx=None):
    """Make every BatchNorm1D/2D of `model` use the global batch's statistics across the ranks
    of `ctx` (default: the context init() made). Returns the number of layers changed. With one
    rank the all-reduce is the identity (the local statistics are the global ones)."""
    if ctx is None:
        from . import context
        ctx = context()
    layers = batchnorm_layers(model)
    reducer = AllReduceStatistics(ctx)
    for layer in layers:
        layer.stats_reducer = reducer
    return len(layers)


def local_batchnorm(model):
    """Undo sync_batchnorm: every batchnorm back to this rank's own batch statistics."""
    for layer in batchnorm_layers(model):
        layer.stats_reducer = local_statistics
