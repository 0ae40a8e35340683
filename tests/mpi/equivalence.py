"""Run under mpiexec by tests/test_distributed_equivalence.py: N ranks with batch B/N each train
to the same parameters as one process with batch B.

    mpiexec -n N python tests/mpi/equivalence.py <device> <dtype>[,<dtype>...]

For each model (plain: conv-relu-pool-dense, no batchnorm, no dropout; bn: the same with
BatchNorm2D and BatchNorm1D, synchronised) and each dtype, every rank trains its shard with the
bucketed all-reduce (several buckets) for STEPS optimizer steps, and rank 0 also trains the same
model in one process with the whole batch (no communication at all). Rank 0 then compares, and
every rank checks that all ranks hold bit-identical parameters and buffers. Anything wrong raises
inside abort_on_error, which aborts the job with the rank and the error (the test sees a
non-zero exit status); rank 0 prints one "OK ..." line per case with the measured differences.

Why the one process and the N ranks see the same examples at every step: the Loader shards as
DistributedSampler does (rank r takes positions r, r + N, r + 2N, ... of the epoch's
permutation), so with batch B/N per rank, step k of rank r takes the positions p of [kB, (k+1)B)
with p = r mod N, and the N ranks together take exactly positions [kB, (k+1)B): the one
process's batch k. The dataset size is a multiple of B, so no batch is short and no example is
padded in.

Why the gradients agree (and to what): one process's loss is the mean over B examples, so its
gradient is (1/B) sum_i g_i. Rank r's loss is the mean over its B/N examples; the all-reduce adds
the N ranks' gradients and the optimizer multiplies by grad_scale = 1/N:
(1/N) sum_r (N/B) sum_{i in r} g_i = (1/B) sum_i g_i, because every rank has the same number of
examples (B/N; with unequal shards the mean of the per-rank means would weight examples
unequally). B and N are powers of two, so the factors 1/B, N/B and 1/N are exact in floating
point: the two runs differ only in the order in which the per-example terms are added (inside
the gradient kernels, then across ranks), i.e. by rounding. Synchronised batchnorm makes the
statistics those of the B examples too (its backward is right because every rank's dy carries
the same factor N: sync_bn.py). So the parameters after several steps agree to a few units of
rounding of the dtype: TOLERANCE. The control: the bn model trained with each rank's own batch
statistics (no synchronisation) differs by far more than that, which shows the comparison
would see a missing synchronisation.
"""
import sys

import numpy as np

import cupycnn
from cupycnn import distributed
from cupycnn.data import Loader, Synthetic
from cupycnn.layers import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU,
                            Sequential)
from cupycnn.losses import SoftmaxCrossEntropy
from cupycnn.optim import SGD

GLOBAL_BATCH = 8
STEPS_PER_EPOCH = 3
EPOCHS = 2                    # 6 optimizer steps, two shuffled epochs
CLASSES = 4
BUCKET_BYTES = 256            # several buckets even for these tiny models
# max |distributed - one process| / max |one process| over each tensor, after the steps.
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
CONTROL_FACTOR = 100          # unsynchronised batchnorm must miss by more than this x TOLERANCE


def build(kind):
    cupycnn.manual_seed(0)    # the same initial weights on every rank and in the reference
    if kind == "plain":
        return Sequential(Conv2D(3, 4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),
                          Dense(4 * 4 * 4, 6), ReLU(), Dense(6, CLASSES))
    return Sequential(Conv2D(3, 4, 3, padding=1, bias=False), BatchNorm2D(4), ReLU(),
                      MaxPool2D(2), Flatten(), Dense(4 * 4 * 4, 6), BatchNorm1D(6), ReLU(),
                      Dense(6, CLASSES))


def to_input(dtype):
    def transform(images):      # uint8 NHWC -> normalised NCHW (host arrays on numpy and sim)
        x = np.asarray(images).transpose(0, 3, 1, 2).astype(dtype)
        return np.ascontiguousarray((x / 255 - 0.5) / 0.25, dtype=dtype)
    return transform


def train(kind, dtype, ctx, rank, world_size, sync_bn=True):
    """Train `kind` for EPOCHS epochs with batch GLOBAL_BATCH / world_size on shard `rank`;
    ctx None: one process, plain backward."""
    model = build(kind)
    if dtype == "float64":
        model.to(np.float64)
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    if ctx is not None:
        ctx.broadcast_parameters(model)
        if sync_bn:
            assert ctx.synchronize_batchnorm(model) == (2 if kind == "bn" else 0)
    data = Synthetic(GLOBAL_BATCH * STEPS_PER_EPOCH, shape=(8, 8, 3), num_classes=CLASSES,
                     seed=5)
    loader = Loader(data, batch_size=GLOBAL_BATCH // world_size, shuffle=True, seed=7,
                    prefetch=False, rank=rank, world_size=world_size, transform=to_input(dtype))
    loss_fn = SoftmaxCrossEntropy()
    steps = 0
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        for x, y in loader:
            assert len(y) == GLOBAL_BATCH // world_size
            logits = model.forward(x, training=True)
            loss_fn.forward(logits, y)
            dy = loss_fn.backward()
            if ctx is None:
                model.backward(dy)
            else:
                ctx.backward(model, dy, optimizer)
            optimizer.step()
            steps += 1
    assert steps == EPOCHS * STEPS_PER_EPOCH
    if ctx is not None:
        buckets = ctx._buckets
        assert ctx.size == 1 or len(buckets.buckets) >= 3, "expected several buckets"
        assert optimizer.grad_scale == 1.0 / ctx.size
    return model


def worst_difference(model, reference, kinds=("f",)):
    """max over tensors of max |a - b| / max |b|, over the floating-point state."""
    worst, where = 0.0, None
    ours, theirs = model.state_dict(), reference.state_dict()
    for name, ref in theirs.items():
        if ref.dtype.kind not in kinds:
            continue
        ref64, got64 = ref.astype(np.float64), ours[name].astype(np.float64)
        diff = np.max(np.abs(got64 - ref64)) / max(np.max(np.abs(ref64)), 1e-30)
        if diff > worst:
            worst, where = diff, name
    return worst, where


def identical_on_every_rank(ctx, model):
    mine = {k: v.tobytes() for k, v in model.state_dict().items()}
    everyone = ctx.allgather(mine)
    return all(theirs == everyone[0] for theirs in everyone)


def main():
    device, dtypes = sys.argv[1], sys.argv[2].split(",")
    cupycnn.use(device)
    ctx = distributed.init(bucket_bytes=BUCKET_BYTES)
    n = ctx.size
    with ctx.abort_on_error():
        assert GLOBAL_BATCH % n == 0
        for dtype in dtypes:
            for kind in ("plain", "bn"):
                model = train(kind, dtype, ctx, ctx.rank, n)
                if not identical_on_every_rank(ctx, model):
                    raise AssertionError(f"{kind} {dtype}: the ranks' parameters differ")
                control = None
                if kind == "bn":
                    control = train(kind, dtype, ctx, ctx.rank, n, sync_bn=False)
                if ctx.rank != 0:
                    continue
                reference = train(kind, dtype, None, 0, 1)
                diff, where = worst_difference(model, reference)
                tol = TOLERANCE[dtype]
                if not diff <= tol:
                    raise AssertionError(f"{kind} {dtype}: {n} ranks differ from one process by "
                                         f"{diff:.3g} (relative, in {where}); tolerance {tol:g}")
                counters = worst_difference(model, reference, kinds=("i",))[0]
                if counters != 0:
                    raise AssertionError(f"{kind} {dtype}: num_batches_tracked differs")
                line = f"OK {kind} {dtype} ranks={n} difference={diff:.3g} tolerance={tol:g}"
                if control is not None:
                    control_diff, _ = worst_difference(control, reference)
                    if not control_diff > CONTROL_FACTOR * tol:
                        raise AssertionError(f"{kind} {dtype}: without synchronised batchnorm "
                                             f"the difference is only {control_diff:.3g}")
                    line += f" unsynchronised={control_diff:.3g}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
