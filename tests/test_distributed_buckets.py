"""The bucketed all-reduce that overlaps backward (cupycnn/distributed/buckets.py), verified.

In one process, with a recording communicator that stands for a second rank (its all-reduce
adds that rank's gradients when the collective is waited for): the buckets are launched during
backward, in reverse buffer order, each as soon as the layers holding its parameters are done
(the log interleaves layer completions and launches); the result is exactly the plain sum of the
whole flat buffers; parameter groups that interleave layers and a branch that backward never
reaches still give that result. Then under mpiexec (tests/mpi/buckets.py), the same with real
MPI ranks against a plain Allreduce of the whole flat buffer.
"""
import collections

import numpy as np
import pytest

import cupycnn
from cupycnn.distributed.buckets import GradientBuckets
from cupycnn.layers import Dense, Layer, ReLU, Sequential
from cupycnn.optim import SGD
from test_distributed import mpirun


class TwoBranches(Layer):
    """y = used(x); `unused` has parameters but no part in forward or backward (a branch a
    model did not take this step)."""

    def __init__(self, features):
        super().__init__()
        self.used, self.unused = Dense(features, features), Dense(features, features)

    def named_children(self):
        return [("used", self.used), ("unused", self.unused)]

    def forward(self, x, training=True):
        return self.used.forward(x, training)

    def backward(self, dy):
        return self.used.backward(dy)


def make_model(unused_branch=False):
    cupycnn.manual_seed(3)
    middle = TwoBranches(7) if unused_branch else Dense(7, 7)
    return Sequential(Dense(5, 7), ReLU(), middle, ReLU(), Dense(7, 9), ReLU(), Dense(9, 3))


def weights_then_biases(model):
    """Two parameter groups that interleave the layers in the flat buffer."""
    params = model.parameters()
    return [{"params": [p for p in params if p.key == "weight"]},
            {"params": [p for p in params if p.key == "bias"], "weight_decay": 0.0}]


class SecondRank:
    """A communicator standing for one other rank: a launch is logged with its element range in
    the flat buffer; wait() adds the other rank's gradients to that range (the result of a sum
    over two ranks)."""

    backend = "recording"

    def __init__(self, flat, other, log):
        self.flat, self.other, self.log = flat, other, log

    def iallreduce_sum_(self, array):
        start = (array.ctypes.data - self.flat.ctypes.data) // array.itemsize
        stop = start + array.size
        self.log.append(("launch", start, stop))
        other, log = self.other, self.log

        class Handle:
            def wait(self):
                log.append(("wait", start, stop))
                array[...] += other[start:stop]

        return Handle()


def record_layer_backwards(model, log):
    """Wrap every parameter-owning layer's backward (an instance attribute, as a profiler
    would) to log its completion; returns {layer id: name}."""
    names = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p.layer), name.rsplit(".", 1)[0])
    for layer in model.layers():
        if id(layer) in names:
            original = layer.backward

            def recording(dy, _original=original, _name=names[id(layer)]):
                dx = _original(dy)
                log.append(("done", _name))
                return dx

            layer.backward = recording
    return names


def run(bucket_bytes, groups=False, unused_branch=False, rng=None):
    cupycnn.use("numpy")
    model = make_model(unused_branch)
    optimizer = SGD(weights_then_biases(model) if groups else model.parameters(), lr=0.1)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    dy = rng.standard_normal((4, 3)).astype(np.float32)
    if unused_branch:                       # stale values: whatever an earlier step left
        for key, grad in model[2].unused.grads.items():
            grad[...] = rng.standard_normal(grad.shape)
    model.forward(x)
    model.backward(dy)                      # this rank's gradients, without any all-reduce
    local = optimizer.flat_grads.copy()
    other = np.zeros_like(local)            # the other rank's: zero in the alignment padding
    for offset, size in optimizer.param_segments:
        other[offset:offset + size] = rng.standard_normal(size)

    log = []
    names = record_layer_backwards(model, log)
    recorders = {id(layer): layer.__dict__["backward"] for layer in model.layers()
                 if "backward" in layer.__dict__}
    segments = [(p.layer, p.key, offset, size)
                for p, (offset, size) in zip(optimizer.params, optimizer.param_segments)]
    buckets = GradientBuckets(optimizer.flat_grads, segments,
                              SecondRank(optimizer.flat_grads, other, log), bucket_bytes)
    model.forward(x)
    model_backward = model.backward

    def model_returns(dy):
        dx = model_backward(dy)
        log.append(("returned",))           # model.backward ends; buckets.backward goes on
        return dx

    model.backward = model_returns
    buckets.backward(model, dy)
    del model.backward
    # The recorders put on the instances before are back in place.
    for layer in model.layers():
        if id(layer) in recorders:
            assert layer.__dict__["backward"] is recorders[id(layer)]
    return model, optimizer, buckets, local, other, log, names, segments


def layers_of(start, stop, segments, names):
    return {names[id(layer)] for layer, _, offset, size in segments
            if start <= offset and offset + size <= stop}


def check_launches(optimizer, buckets, log, names, segments):
    """Buckets cover every parameter once, are launched in reverse buffer order, each as soon
    as it may be (its layers done and the bucket before it launched), and waited for after."""
    launches = [(i, e[1], e[2]) for i, e in enumerate(log) if e[0] == "launch"]
    assert len(launches) == len(buckets.buckets)
    starts = [start for _, start, _ in launches]
    assert starts == sorted(starts, reverse=True), "launches must go from the buffer's end"
    covered = np.zeros(optimizer.flat_grads.size, int)
    for _, start, stop in launches:
        covered[start:stop] += 1
    for offset, size in optimizer.param_segments:
        assert (covered[offset:offset + size] == 1).all(), "a parameter reduced != once"
    done_at = collections.defaultdict(list)
    for i, event in enumerate(log):
        if event[0] == "done":
            done_at[event[1]].append(i)
    returned = log.index(("returned",))
    first_wait = min(i for i, e in enumerate(log) if e[0] == "wait")
    previous_launch = -1
    for position, start, stop in launches:
        layers = layers_of(start, stop, segments, names)
        finished = [done_at[name][-1] for name in layers if done_at[name]]
        if len(finished) == len(layers):               # every layer of the bucket ran
            ready = max(finished + [previous_launch])
            between = [e for e in log[ready + 1:position] if e[0] == "done"]
            assert not between, (f"bucket [{start}, {stop}) of {sorted(layers)} could launch "
                                 f"at event {ready} but waited for {between}")
        else:                                          # an unused layer: flushed at the end
            assert position > max(i for i, e in enumerate(log) if e[0] == "done")
        assert position < first_wait, "every bucket is launched before the first wait"
        previous_launch = position
    return launches, returned


@pytest.mark.parametrize("bucket_bytes", [1, 200, 600, 1 << 20])
def test_buckets_launch_in_reverse_as_soon_as_their_layers_are_done(bucket_bytes, rng):
    model, optimizer, buckets, local, other, log, names, segments = run(bucket_bytes, rng=rng)
    expected_buckets = {1: 8, 1 << 20: 1}.get(bucket_bytes)
    if expected_buckets:
        assert len(buckets.buckets) == expected_buckets
    else:
        assert 2 < len(buckets.buckets) < 8          # some buckets hold several parameters
    launches, returned = check_launches(optimizer, buckets, log, names, segments)
    # Plain model order: every bucket starts during backward, before model.backward returns,
    # and every bucket without a parameter of the first layer before that layer's backward ends
    # (the overlap: those all-reduces run while backward goes on).
    assert all(position < returned for position, _, _ in launches)
    first_layer_done = log.index(("done", "0"))
    early = [position for position, start, stop in launches
             if "0" not in layers_of(start, stop, segments, names)]
    assert all(position < first_layer_done for position in early)
    assert len(early) >= min(len(launches) - 1, 1)
    np.testing.assert_array_equal(optimizer.flat_grads, local + other)


@pytest.mark.parametrize("bucket_bytes", [1, 200, 600])
def test_parameter_groups_that_interleave_layers(bucket_bytes, rng):
    model, optimizer, buckets, local, other, log, names, segments = run(bucket_bytes,
                                                                         groups=True, rng=rng)
    keys = [p.key for p in optimizer.params]
    assert keys == ["weight"] * 4 + ["bias"] * 4      # the buffer: every weight, then biases
    check_launches(optimizer, buckets, log, names, segments)
    np.testing.assert_array_equal(optimizer.flat_grads, local + other)


@pytest.mark.parametrize("bucket_bytes", [1, 200, 1 << 20])
def test_buckets_of_an_unused_branch_are_flushed_in_order(bucket_bytes, rng):
    model, optimizer, buckets, local, other, log, names, segments = run(
        bucket_bytes, unused_branch=True, rng=rng)
    assert ("done", "2.unused") not in log and ("done", "2.used") in log
    launches, returned = check_launches(optimizer, buckets, log, names, segments)
    unused_offsets = [offset for p, (offset, _) in zip(optimizer.params,
                                                        optimizer.param_segments)
                      if p.layer is model[2].unused]
    assert len(unused_offsets) == 2
    flushed = [(start, stop) for position, start, stop in launches if position > returned]
    # The buckets holding the unused branch, and every bucket after them, wait for the end of
    # backward and are then launched in order; the ones before go during backward.
    for offset in unused_offsets:
        assert any(start <= offset < stop for start, stop in flushed)
    during = [start for position, start, _ in launches if position < returned]
    assert all(start > max(unused_offsets) for start in during)
    if len(buckets.buckets) > 1:
        assert during, "the buckets after the unused branch go during backward"
    np.testing.assert_array_equal(optimizer.flat_grads, local + other)


@pytest.mark.parametrize("n", [2, 4])
def test_bucketed_allreduce_equals_a_plain_allreduce_under_mpi(n):
    out = mpirun(n, "buckets.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("OK") == n, out.stdout + out.stderr
