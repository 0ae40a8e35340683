"""The static memory plan (cupycnn.plan) and the recorded step (cupycnn.graph) on sim (the
planned and the replayed step also on cuda, where usable: a real CUDA graph).

- A traced step's plan never lets two buffers alive at the same time share a byte, and it is
  smaller than the sum of the step's allocations.
- A planned step allocates nothing and gives the same bits as the eager step.
- The recorded launch list, replayed, gives the same bits as the eager step, step after step,
  with Adam (its step number read from the device), SGD with momentum, a per-step learning-rate
  schedule (the table rewritten in place between replays) and dropout (its stream counted on the
  device): parameters, buffers, loss and metric sums.
- The replay does nothing but launch: no allocation, no synchronisation, no host read, no call
  into NumPy; the checker is shown to catch each of those.
- A recording refuses what a replay could not repeat (CaptureError), and a plan refuses a step
  of another shape (PlanMismatch).
"""
import collections
import sys
import tracemalloc

import numpy as np
import pytest

import cupycnn
from cupycnn import devices, graph, optim, plan
from cupycnn.layers import (BatchNorm2D, Conv2D, Dense, Dropout, GlobalAvgPool2D, MaxPool2D,
                            ReLU, Sequential)
from cupycnn.losses import SoftmaxCrossEntropy
from cupycnn.models.resnet import BasicBlock
from cupycnn.ops import metrics as metric_ops
from cupycnn.optim.schedules import OneCycleLR
from helpers import recorded_launches

BATCH, CLASSES = 4, 5


def small_net():
    """Every kind of layer a ResNet step has, on 8x8 inputs: conv, batchnorm, ReLU, max-pool, a
    residual block with a projection, global pooling, dropout, dense."""
    return Sequential(Conv2D(3, 8, 3, padding=1, bias=True), BatchNorm2D(8), ReLU(),
                      MaxPool2D(2), BasicBlock(8, 16, stride=2), GlobalAvgPool2D(),
                      Dropout(0.3), Dense(16, CLASSES))


class Run:
    """A model, loss and optimizer from one seed; `body` is the device half of a step."""

    def __init__(self, optimizer="adam", seed=0):
        cupycnn.manual_seed(seed)
        self.model = small_net()
        params = self.model.parameters()
        if optimizer == "adam":
            self.optimizer = optim.Adam(params, lr=1e-2)
        else:
            self.optimizer = optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True,
                                       weight_decay=1e-3)
        self.schedule = OneCycleLR(self.optimizer, max_lr=0.05, total_steps=20)
        self.loss = SoftmaxCrossEntropy(label_smoothing=0.1)
        self.sums = metric_ops.new_sums()
        self.x = self.y = None

    def body(self):
        logits = self.model.forward(self.x, training=True)
        loss = self.loss.forward(logits, self.y)
        self.model.backward(self.loss.backward())
        self.optimizer.launch_step()
        metric_ops.accumulate_metrics(logits, self.y, loss, self.sums)
        return loss

    def host_half(self):
        self.optimizer.prepare_step()

    def after(self):
        self.schedule.step()

    def state(self):
        out = {k: np.array(v) for k, v in self.model.state_dict().items()}
        out["sums"] = np.array(cupycnn.asnumpy(self.sums))
        for name, buf in self.optimizer.flat_state.items():
            out["opt." + name] = np.array(cupycnn.asnumpy(buf))
        return out


def batches(rng, n):
    return [(rng.standard_normal((BATCH, 3, 8, 8)).astype(np.float32),
             rng.integers(0, CLASSES, BATCH).astype(np.int32)) for _ in range(n)]


def assert_same_state(a, b, what):
    sa, sb = a.state(), b.state()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert np.array_equal(sa[key], sb[key], equal_nan=True), f"{what}: {key} differs"


def test_plan_keeps_live_buffers_apart_and_reuses_the_rest(rng):
    cupycnn.use("sim")
    run = Run()
    run.x, run.y = (cupycnn.asarray(a) for a in batches(rng, 1)[0])
    run.host_half()
    _, p = plan.trace(run.body)
    p.check()
    assert len(p) > 50
    assert p.live_peak_bytes <= p.arena_bytes < p.total_bytes
    assert all(b.offset % plan.ALIGN == 0 for b in p.buffers)
    # What the step returned (the 0-d loss) is alive when it ends: it lives to the end.
    assert [b.shape for b in p.buffers if b.end == p.clock_end] == [()]
    text = p.describe()
    assert "memory plan:" in text and "ops.conv2d.conv2d_forward" in text


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_planned_step_allocates_nothing_and_matches_eager(rng, optimizer, step_device):
    cupycnn.use(step_device)
    eager, planned = Run(optimizer), Run(optimizer)
    arena = None
    for k, (x, y) in enumerate(batches(rng, 4)):
        for run in (eager, planned):
            run.x, run.y = cupycnn.asarray(x), cupycnn.asarray(y)
            run.host_half()
        eager.body()
        if k == 0:
            _, p = plan.trace(planned.body)
            arena = plan.Arena(p)
        else:
            before = devices.allocation_count
            with arena.serving():
                planned.body()
            assert devices.allocation_count == before, f"step {k + 1} allocated"
        for run in (eager, planned):
            run.after()
        assert_same_state(eager, planned, f"step {k + 1}")


def _replay_vs_eager(rng, optimizer, steps):
    eager, replayed = Run(optimizer), Run(optimizer)
    # A replay reads its input from fixed buffers: the batch is copied in before each step.
    replayed.x = cupycnn.asarray(np.zeros((BATCH, 3, 8, 8), np.float32))
    replayed.y = cupycnn.asarray(np.zeros(BATCH, np.int32))
    step = graph.GraphedStep(replayed.body)
    phases = []
    for k, (x, y) in enumerate(batches(rng, steps)):
        eager.x, eager.y = cupycnn.asarray(x), cupycnn.asarray(y)
        eager.host_half()
        loss_eager = float(cupycnn.asnumpy(eager.body()))
        replayed.x[...], replayed.y[...] = cupycnn.asarray(x), cupycnn.asarray(y)
        replayed.host_half()
        loss_replayed = float(cupycnn.asnumpy(step()))
        phases.append(step.phase)
        for run in (eager, replayed):
            run.after()
        assert loss_eager == loss_replayed, f"step {k + 1} ({step.phase}): loss differs"
        assert_same_state(eager, replayed, f"step {k + 1} ({step.phase})")
    return phases, step, replayed


@pytest.mark.parametrize("order", ["natural", "reversed", "random"])
def test_replayed_launch_list_is_bitwise_the_eager_step(rng, order):
    cupycnn.use("sim")
    cupycnn.sim.set_thread_order(order, seed=7)
    phases, step, _ = _replay_vs_eager(rng, "adam", 5)
    assert phases == ["traced", "recorded", "replayed", "replayed", "replayed"]
    assert step.graph.num_launches > 40


def test_replayed_sgd_with_a_schedule_and_dropout_draws_new_masks(rng, step_device):
    """On cuda: a CUDA graph captured through CuPy's stream capture, replayed."""
    cupycnn.use(step_device)
    phases, step, run = _replay_vs_eager(rng, "sgd", 4)
    assert phases[-1] == "replayed"
    dropout, = [layer for layer in run.model.layers() if isinstance(layer, Dropout)]
    assert dropout.calls == 4                      # counted on the device, replays included


# ------------------------------------------------------------- what a replay may not do

def assert_only_launches(fn):
    """Run fn() and fail if it called anything but the replay's own code: the profile of every
    Python and builtin call it makes may name only cupycnn/graph.py and the sim launcher (no
    allocation, synchronisation or host read through cupycnn or NumPy)."""
    allowed = ("cupycnn/graph.py", "cupycnn/sim/module.py")
    calls = collections.Counter()

    def profile(frame, event, arg):
        if event == "call":
            calls[(frame.f_code.co_filename, frame.f_code.co_qualname)] += 1
        elif event == "c_call":
            calls[("builtin", getattr(arg, "__qualname__", repr(arg)))] += 1

    before = devices.allocation_count
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    calls.pop(("builtin", "setprofile"), None)
    strays = sorted(f"{where}:{name}" for where, name in calls
                    if not where.replace("\\", "/").endswith(allowed))
    assert not strays, f"the replay called {strays}"
    assert devices.allocation_count == before, "the replay allocated a device array"


def assert_no_memory_growth(fn):
    """Run fn() and fail if the traced memory grew by an array's worth at any moment."""
    tracemalloc.start()
    try:
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The launcher's ctypes calls make a few small Python objects; a 1-element array is ~130 B.
    assert peak - current < 1024, f"the replay's memory grew by {peak - current} bytes"


def test_replay_only_launches(rng):
    cupycnn.use("sim")
    run = Run()
    run.x, run.y = (cupycnn.asarray(a) for a in batches(rng, 1)[0])
    step = graph.GraphedStep(run.body)
    for _ in range(2):
        run.host_half()
        step()
    for check in (assert_only_launches, assert_no_memory_growth):
        run.host_half()
        check(step)
        assert step.phase == "replayed"


@pytest.mark.parametrize("sin", ["allocates", "synchronises", "reads the host", "numpy"])
def test_the_replay_checks_catch_each_sin(sin):
    cupycnn.use("sim")
    x = cupycnn.asarray(np.ones(1000, np.float32))
    sins = {"allocates": lambda: devices.empty((1000,)),
            "synchronises": devices.synchronize,
            "reads the host": lambda: devices.asnumpy(x),
            "numpy": lambda: np.empty(10 ** 5)}
    with pytest.raises(AssertionError, match="the replay called"):
        assert_only_launches(sins[sin])
    if sin in ("allocates", "numpy"):             # each makes an array (asnumpy on sim: none)
        with pytest.raises(AssertionError, match="the replay's memory grew"):
            assert_no_memory_growth(sins[sin])


@pytest.mark.parametrize("sin, message", [
    ("read", "reads a device array on the host"),
    ("sync", "synchronises with the device"),
    ("upload", "copies a host array to the device"),
])
def test_recording_refuses_what_a_replay_cannot_repeat(rng, sin, message):
    cupycnn.use("sim")
    run = Run()
    run.x, run.y = (cupycnn.asarray(a) for a in batches(rng, 1)[0])

    def body():
        loss = run.body()
        if sin == "read":
            float(cupycnn.asnumpy(loss))              # a host read inside the step
        elif sin == "sync":
            cupycnn.synchronize()
        else:
            cupycnn.asarray(np.ones(3, np.float32))
        return loss

    step = graph.GraphedStep(body)
    run.host_half()
    step()                                            # traced: eager, everything allowed
    run.host_half()
    with pytest.raises(devices.CaptureError, match=message + ".* while the sim launch-list "
                                                   "recording runs"):
        step()
    assert devices.capturing() is None and step.graph is None


def test_recording_refuses_an_allocation_outside_the_plan():
    cupycnn.use("sim")
    previous = devices.set_capturing("a test recording")
    try:
        with pytest.raises(devices.CaptureError, match=r"allocates an array of shape \(3,\) "
                                                       r"outside the memory plan"):
            devices.empty((3,))
    finally:
        devices.set_capturing(previous)


def test_a_plan_refuses_a_step_of_another_shape(rng):
    cupycnn.use("sim")
    run = Run()
    (x, y), = batches(rng, 1)
    run.x, run.y = cupycnn.asarray(x), cupycnn.asarray(y)
    run.host_half()
    _, p = plan.trace(run.body)
    arena = plan.Arena(p)
    run.x, run.y = cupycnn.asarray(x[:2]), cupycnn.asarray(y[:2])
    run.host_half()
    with pytest.raises(plan.PlanMismatch, match=r"the step's array #0 is float32\(2, 8, 8, 8\), "
                                                r"but the memory plan has float32\(4, 8, 8, 8\)"):
        with arena.serving():
            run.body()


def test_a_dry_run_traces_the_same_plan_as_a_real_step(rng):
    """benchmarks/memory_plan.py traces ResNet-18 at batch 256 with launches not run; a plan
    depends on shapes and lifetimes only, so it is the one a real step gives."""
    cupycnn.use("sim")
    plans = []
    for dry in (False, True):
        run = Run()
        run.x, run.y = (cupycnn.asarray(a) for a in batches(rng, 1)[0])
        run.host_half()
        if dry:
            with cupycnn.sim.dry_run():
                _, p = plan.trace(run.body)
        else:
            _, p = plan.trace(run.body)
        plans.append([(b.shape, b.dtype, b.start, b.end, b.offset, b.requester)
                      for b in p.buffers] + [p.arena_bytes])
    assert plans[0] == plans[1]


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_the_folded_statistics_replay_bitwise_and_allocate_nothing(rng, precision):
    """The ResNet block's convolutions compute their batchnorms' statistics in their epilogue
    (conv2d_forward_stats at fp32, conv2d_tc_forward_stats at tf32 and bf16: a planned
    workspace per convolution, then batchnorm_combine_partials): the replayed launch list is
    still the eager step bit for bit, and a replay allocates nothing."""
    cupycnn.use("sim")
    with cupycnn.set_precision(precision):
        with recorded_launches() as names:
            phases, step, replayed = _replay_vs_eager(rng, "sgd", 4)
        assert phases[-1] == "replayed"
        folded = "conv2d_forward_stats" if precision == "fp32" else "conv2d_tc_forward_stats"
        assert folded in names, sorted(set(names))
        x, y = (cupycnn.asarray(a) for a in batches(rng, 1)[0])
        before = devices.allocation_count
        replayed.x[...], replayed.y[...] = x, y
        replayed.host_half()
        step()
        assert devices.allocation_count == before, "the replay allocated a device array"
