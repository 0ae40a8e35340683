"""Run under mpiexec by tests/test_distributed_nccl.py: the NCCL code path of cupycnn.distributed
(NcclCommunicator, the bucketed all-reduce over it, synchronised batchnorm's statistics) against
tests/fake_nccl.py, a stand-in for CuPy whose NCCL calls are checked against CuPy's signatures
and carried out by MPI on host memory. Every result is compared with the MPI path
(MpiCommunicator) on host copies; the values are integers, so every sum is exact in any order.
Prints "rank r OK" when everything held; an error aborts the job with the rank and the error.
"""
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))       # tests/
import fake_nccl  # noqa: E402

cupy = fake_nccl.make(MPI.COMM_WORLD, device_count=2)
fake_nccl.install(cupy)

from cupycnn import distributed  # noqa: E402
from cupycnn.distributed.buckets import GradientBuckets  # noqa: E402
from cupycnn.distributed.comm import MpiCommunicator  # noqa: E402

ctx = distributed.Context(MPI.COMM_WORLD, "cuda", bucket_bytes=64, backend="nccl")
mpi = MpiCommunicator(MPI.COMM_WORLD)
rng = np.random.default_rng(ctx.rank)
log = cupy.log


def events_since(mark):
    return log[mark:]


def check_collective_ordering(events, collective):
    """The collective stream first waits for the compute stream's work (an event recorded on
    it), runs the collective, records an event that the compute stream then waits for; nothing
    synchronises the host."""
    kinds = [e for e in events if e[0] != "NcclCommunicator"]
    assert ("synchronize", "compute") not in kinds and \
        ("synchronize", "collective") not in kinds, kinds
    at = [i for i, e in enumerate(kinds) if e[0] == collective]
    assert at, kinds
    for i in at:
        assert kinds[i][1] == "collective", kinds[i]
        assert kinds[i - 2:i] == [("record", "compute"), ("wait", "collective", "compute")], \
            kinds[i - 2:i + 1]
        assert ("record", "collective") in kinds[i + 1:i + 2], kinds[i:i + 3]
    assert kinds[-1] == ("wait", "compute", "collective"), kinds[-3:]


with ctx.abort_on_error():
    assert ctx.backend == "nccl" and ctx.gpu == ctx.local_rank % 2
    built = [e for e in log if e[0] == "NcclCommunicator"]
    assert built == [("NcclCommunicator", ctx.size, ctx.rank, ctx.gpu)], built

    # allreduce_sum_ in place, every dtype the library sends, against MPI on a host copy.
    for dtype in (np.float32, np.float64, np.int32, np.int64):
        host = rng.integers(-1000, 1000, size=37).astype(dtype)
        device = cupy.asarray(host)
        mark = len(log)
        ctx.allreduce_sum_(device)
        check_collective_ordering(events_since(mark), "allReduce")
        send = [e for e in events_since(mark) if e[0] == "allReduce"][0]
        assert send[2] == send[3] == device.data.ptr and send[4] == 37, send
        assert send[5] == {np.float32: 7, np.float64: 8, np.int32: 2, np.int64: 4}[dtype]
        np.testing.assert_array_equal(np.asarray(device), mpi.allreduce_sum_(host.copy()))

    # broadcast_ from the last rank, including a 0-d int64 buffer (num_batches_tracked).
    for host in (rng.integers(0, 100, size=(3, 4)).astype(np.float32),
                 np.array(ctx.rank * 7, dtype=np.int64)):
        device = cupy.asarray(host)
        mark = len(log)
        ctx.broadcast_(device, root=ctx.size - 1)
        check_collective_ordering(events_since(mark), "bcast")
        np.testing.assert_array_equal(np.asarray(device),
                                      mpi.broadcast_(host.copy(), root=ctx.size - 1))

    # Synchronised batchnorm's statistics: out of place (the input is left alone), the count
    # added up through MPI on the host.
    sums = cupy.asarray(rng.integers(-50, 50, size=(5, 2)).astype(np.float64))
    before = np.array(sums)
    mark = len(log)
    total, count = ctx.communicator.allreduce_statistics(sums, 10)
    check_collective_ordering(events_since(mark), "allReduce")
    call = [e for e in events_since(mark) if e[0] == "allReduce"][0]
    assert call[2] == sums.data.ptr and call[3] == total.data.ptr != call[2], call
    np.testing.assert_array_equal(np.asarray(sums), before)
    expected_total, expected_count = mpi.allreduce_statistics(before, 10)
    np.testing.assert_array_equal(np.asarray(total), expected_total)
    assert count == expected_count == 10 * ctx.size, count

    # The bucketed all-reduce over NCCL: layers that write their gradients in backward
    # (reverse order); buckets launched on the collective stream during backward; the result
    # against a plain MPI all-reduce of the whole buffer.
    class GradientLayer:
        def __init__(self, name, flat, segments, values):
            self.name, self.flat, self.segments, self.values = name, flat, segments, values

        def backward(self, dy):
            for (offset, size), value in zip(self.segments, self.values):
                self.flat[offset:offset + size] = value
            log.append(("layer done", self.name))
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
    mark = len(log)
    buckets.backward(Model(layers), None)
    events = events_since(mark)
    check_collective_ordering(events, "allReduce")
    order = [e[0] if e[0] != "layer done" else e[1] for e in events
             if e[0] in ("layer done", "allReduce")]
    # Each layer's two buckets go right after it, before the next layer's backward.
    assert order == sum(([f"layer{i}", "allReduce", "allReduce"] for i in (3, 2, 1, 0)), []), \
        order
    expected = mpi.allreduce_sum_(local.copy())
    np.testing.assert_array_equal(np.asarray(flat), expected)
    print(f"rank {ctx.rank} OK", flush=True)
