"""Run under mpiexec by tests/test_distributed_nccl.py: the NCCL code path of cupycnn.distributed
(NcclCommunicator, the bucketed all-reduce over it, synchronised batchnorm) on tests/fake_nccl.py
over tests/fake_cupy.py: a stream-ordered fake GPU whose queued work runs in adversarial,
seeded orders and whose NCCL collectives are MPI collectives on its device bytes. Every result
is checked on its data, against the MPI path on host copies (integer values: every sum exact in
any order), under several schedules.

    nccl_path.py CUPY_VERSION [REMOVE]

CUPY_VERSION 13 or 14 (the unique id as a tuple of ints, or bytes). REMOVE names a wait_event
to take out of comm.py, to show the checks catch it: "collective-waits-compute" (the collective
stream no longer waits for the compute stream's work before a collective) or
"compute-waits-collective" (the compute stream no longer waits for the collective's result).
Prints "rank r OK" when everything held, "rank r CAUGHT: ..." when a removed wait was caught.
"""
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))       # tests/
import fake_nccl  # noqa: E402

import cupycnn  # noqa: E402
from cupycnn import distributed  # noqa: E402
from cupycnn.distributed import comm as comm_module  # noqa: E402
from cupycnn.distributed.buckets import GradientBuckets  # noqa: E402
from cupycnn.distributed.comm import MpiCommunicator  # noqa: E402

CUPY_VERSION = int(sys.argv[1])
REMOVE = sys.argv[2] if len(sys.argv) > 2 else None
SEEDS = 6
WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.Get_rank(), WORLD.Get_size()
mpi = MpiCommunicator(WORLD)

if REMOVE == "collective-waits-compute":
    comm_module.NcclCommunicator._after_compute = lambda self: None
elif REMOVE == "compute-waits-collective":
    comm_module._NcclHandle.wait = lambda self: None
elif REMOVE is not None:
    raise SystemExit(f"unknown REMOVE {REMOVE!r}")


failures = []


def same(actual, expected, what, close=False):
    """Check data; with REMOVE, note a difference and go on (every rank must still issue the
    same collectives in the same order), else fail."""
    ok = np.allclose(actual, expected, rtol=1e-4, atol=1e-4) if close else \
        np.array_equal(actual, expected)
    if not ok:
        message = f"{what}: wrong data (max difference {np.max(np.abs(actual - expected))})"
        if REMOVE is None:
            raise AssertionError(message)
        failures.append(message)


class NoHostMpi:
    """Stands in for the NCCL communicator's MPI communicator after construction: the
    collectives must not touch MPI on the host (no blocking host round trip per batchnorm)."""

    def __getattr__(self, name):
        raise AssertionError(f"a host MPI call ({name}) in an NCCL collective")


def fresh_gpu(seed):
    cupy, cupyx = fake_nccl.make(WORLD, device_count=2, cupy_version=CUPY_VERSION,
                                 seed=1000 * seed + RANK)
    fake_nccl.install(cupy, cupyx)
    ctx = distributed.Context(WORLD, "cuda", bucket_bytes=64, backend="nccl")
    ctx.communicator.mpi = NoHostMpi()
    return cupy, ctx


def check_collectives(cupy, ctx, rng):
    for dtype in (np.float32, np.float64, np.int32, np.int64):
        host = rng.integers(-1000, 1000, size=37).astype(dtype)
        device = cupy.asarray(host)
        ctx.allreduce_sum_(device)
        same(device.get(), mpi.allreduce_sum_(host.copy()), f"allreduce_sum_ {np.dtype(dtype)}")
    # broadcast_ from the last rank, including a 0-d int64 buffer (num_batches_tracked).
    for host in (rng.integers(0, 100, size=(3, 4)).astype(np.float32),
                 np.array(RANK * 7, dtype=np.int64)):
        device = cupy.asarray(host)
        ctx.broadcast_(device, root=SIZE - 1)
        same(device.get(), mpi.broadcast_(host.copy(), root=SIZE - 1), "broadcast_")


def check_statistics(cupy, ctx, rng):
    """Out of place (the input left alone), the count from the shapes, no host MPI call."""
    host = rng.integers(-50, 50, size=(5, 2)).astype(np.float64)
    sums = cupy.asarray(host)
    total, count = ctx.communicator.allreduce_statistics(sums, 10)
    same(sums.get(), host, "statistics: input changed")
    expected, expected_count = mpi.allreduce_statistics(host.copy(), 10)
    same(total.get(), expected, "statistics: sums")
    assert count == expected_count == 10 * SIZE, count


def check_buckets(cupy, ctx, rng):
    """Layers that write their gradients in backward (on the compute stream); buckets launched
    on the collective stream during backward; the result against MPI on the whole buffer."""
    calls = []

    class GradientLayer:
        def __init__(self, name, flat, segments, values):
            self.name, self.flat, self.segments, self.values = name, flat, segments, values

        def backward(self, dy):
            for (offset, size), value in zip(self.segments, self.values):
                self.flat[offset:offset + size] = value
            calls.append(self.name)
            return dy

    class Model:
        def __init__(self, layers):
            self.layers = layers

        def backward(self, dy):
            for layer in reversed(self.layers):
                dy = layer.backward(dy)
            return dy

    flat = cupy.zeros(32 * 8, np.float32)
    layers, segments, local = [], [], np.zeros(32 * 8, np.float32)
    for i in range(4):                       # two parameters per layer, 32-element aligned
        own = [(64 * i, 20), (64 * i + 32, 5)]
        values = [rng.integers(-9, 9, size).astype(np.float32) for _, size in own]
        layer = GradientLayer(f"layer{i}", flat, own, values)
        layers.append(layer)
        for (offset, size), value in zip(own, values):
            segments.append((layer, f"p{offset}", offset, size))
            local[offset:offset + size] = value
    buckets = GradientBuckets(flat, segments, ctx.communicator, bucket_bytes=64)
    assert len(buckets.buckets) == 8
    nccl_comm = ctx.communicator.comm
    all_reduce = nccl_comm.allReduce

    def recording_all_reduce(*args):
        calls.append("allReduce")
        return all_reduce(*args)
    nccl_comm.allReduce = recording_all_reduce
    try:
        buckets.backward(Model(layers), None)
    finally:
        nccl_comm.allReduce = all_reduce
    # Each layer's two buckets go out right after it, before the next layer's backward.
    assert calls == sum(([f"layer{i}", "allReduce", "allReduce"] for i in (3, 2, 1, 0)), []), \
        calls
    # What an optimizer step on the compute stream would read next: its kernel reads `flat`.
    stepped = flat * 1
    same(stepped.get(), mpi.allreduce_sum_(local.copy()), "bucketed all-reduce")


def check_sync_batchnorm(cupy, ctx, rng):
    """BatchNorm2D with synchronised statistics: each rank's output and input gradient are
    its slice of one BatchNorm2D over the global batch (the numpy device on every rank's data)."""
    from cupycnn.layers import BatchNorm2D
    shape = (3, 4, 5, 5)
    xs = [np.random.default_rng([r, 7]).standard_normal(shape).astype(np.float32) * 2 + 1
          for r in range(SIZE)]
    dys = [np.random.default_rng([r, 8]).standard_normal(shape).astype(np.float32)
           for r in range(SIZE)]
    layer = BatchNorm2D(4)
    distributed.sync_batchnorm(layer, ctx)
    y = layer.forward(cupy.asarray(xs[RANK]), training=True)
    dx = layer.backward(cupy.asarray(dys[RANK]))     # dx is linear in dy
    y, dx = y.get(), dx.get()
    cupycnn.use("numpy")
    whole = BatchNorm2D(4)
    y_all = whole.forward(np.concatenate(xs), training=True)
    dx_all = whole.backward(np.concatenate(dys))
    cupycnn.use("cuda")
    part = slice(RANK * shape[0], (RANK + 1) * shape[0])
    same(y, y_all[part], "sync batchnorm forward", close=True)
    same(dx, dx_all[part], "sync batchnorm backward", close=True)


def main():
    for seed in range(SEEDS):
        cupy, ctx = fresh_gpu(seed)
        assert ctx.backend == "nccl" and ctx.gpu == ctx.local_rank % 2
        unique_id_type = tuple if CUPY_VERSION == 13 else bytes
        assert isinstance(cupy.cuda.nccl.get_unique_id(), unique_id_type)
        rng = np.random.default_rng([seed, RANK])
        for check in (check_collectives, check_statistics, check_buckets,
                      check_sync_batchnorm):
            check(cupy, ctx, rng)
            # Every rank ends each check with its collectives finished: the next check's
            # collectives must pair with the same ones on every rank.
            cupy.cuda.Device().synchronize()
            WORLD.Barrier()
    caught = sorted(set().union(*WORLD.allgather({f.split(":")[0] for f in failures})))
    if REMOVE is None:
        print(f"rank {RANK} OK", flush=True)
    elif caught:
        print(f"rank {RANK} CAUGHT: wrong data in {'; '.join(caught)}", flush=True)
    else:
        print(f"rank {RANK} NOT CAUGHT", flush=True)


with distributed.Context(WORLD, "numpy", backend="mpi").abort_on_error():
    main()
