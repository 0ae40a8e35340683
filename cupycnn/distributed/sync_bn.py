"""Synchronised batchnorm: every rank normalises with the statistics of the global batch, as
PyTorch's `nn.SyncBatchNorm.convert_sync_batchnorm(model)` gives under DistributedDataParallel.

    n = cupycnn.distributed.sync_batchnorm(model, ctx)     # or ctx.synchronize_batchnorm(model)

It sets every BatchNorm1D/2D's `stats_reducer` hook (its protocol: layers/normalization.py) to the
context's all-reduce of the per-channel sums (comm.py: allreduce_statistics). Why that gives
the global batch's forward and backward, and what each backend sends: docs/DISTRIBUTED.md,
"Synchronised batchnorm".
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


def sync_batchnorm(model, ctx):
    """Make every BatchNorm1D/2D of `model` use the global batch's statistics across the ranks
    of `ctx` (what distributed.init() returned). Returns the number of layers changed. With one
    rank the all-reduce is the identity (the local statistics are the global ones)."""
    layers = batchnorm_layers(model)
    reducer = AllReduceStatistics(ctx)
    for layer in layers:
        layer.stats_reducer = reducer
    return len(layers)


def local_batchnorm(model):
    """Undo sync_batchnorm: every batchnorm back to this rank's own batch statistics."""
    for layer in batchnorm_layers(model):
        layer.stats_reducer = local_statistics
