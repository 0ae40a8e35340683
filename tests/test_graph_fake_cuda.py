"""The CUDA-graph path (cupycnn.graph on `cuda`, Trainer(cuda_graph=True)) under
tests/fake_cupy.py's stream-ordered model of CuPy, whose stream capture refuses what CUDA
refuses and whose graph replays run the captured kernels again at the captured addresses.

- Graphed training on the fake GPU is bit for bit the eager training on another fake GPU (other
  schedules, other pool choices): parameters, buffers, history.
- The captured step allocates nothing from the pool, and its replays launch one graph each.
- Without the memory plan, a capture's temporaries go back to the pool and a replay overwrites
  what later allocations hold: the model catches it (why the plan exists).
- A host read inside a capture is refused by cupycnn (CaptureError) and by the model (CUDA's
  error) alike.
"""
import numpy as np
import pytest

import cupycnn
import fake_cupy
from cupycnn import devices, graph, plan
from cupycnn.data import Loader, Normalize, RandomCropFlip, Synthetic
from cupycnn.layers import (BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU,
                            Sequential)
from cupycnn.losses import SoftmaxCrossEntropy
from cupycnn.optim import SGD
from cupycnn.optim.schedules import OneCycleLR
from cupycnn.train import Trainer


@pytest.fixture
def gpu(monkeypatch):
    def make(seed):
        cupy, cupyx = fake_cupy.make(seed)
        return fake_cupy.install(monkeypatch, cupy, cupyx)
    yield make
    cupycnn.use("numpy")


def make_run(cuda_graph):
    cupycnn.manual_seed(0)
    train = Synthetic(40, shape=(8, 8, 3), num_classes=4, seed=1)
    val = Synthetic(16, shape=(8, 8, 3), num_classes=4, seed=2)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train_loader = Loader(train, batch_size=16, seed=3,
                          transform=RandomCropFlip(padding=1, mean=mean, std=std, seed=4))
    val_loader = Loader(val, batch_size=16, shuffle=False, transform=Normalize(mean, std))
    model = Sequential(Conv2D(3, 6, 3, padding=1), BatchNorm2D(6, relu=True), MaxPool2D(2),
                       Dropout(0.2), Flatten(), Dense(6 * 4 * 4, 4))
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    trainer = Trainer(model, optimizer, SoftmaxCrossEntropy(label_smoothing=0.1),
                      scheduler=OneCycleLR(optimizer, max_lr=0.05, total_steps=9),
                      scheduler_interval="step", progress=False, cuda_graph=cuda_graph)
    return trainer, train_loader, val_loader


def test_graphed_training_on_the_fake_gpu_is_the_eager_one(gpu, capsys):
    results = {}
    for seed, cuda_graph in ((5, False), (11, True)):
        cupy = gpu(seed)
        trainer, tl, vl = make_run(cuda_graph)
        trainer.fit(tl, epochs=3, val_loader=vl)
        results[cuda_graph] = (trainer.model.state_dict(), dict(trainer.history), trainer,
                               cupy)
    (eager_state, eager_history, _, _), (state, history, trainer, cupy) = \
        results[False], results[True]
    for name in eager_state:
        np.testing.assert_array_equal(state[name], eager_state[name], err_msg=name)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert history[key] == eager_history[key], key
    g = trainer.graphed
    assert (g.replayed_steps, g.eager_steps) == (4, 5)
    assert cupy._world.capture_mallocs == 0
    launches = [e for e in cupy.log if e[0] == "graph_launch"]
    # Each graphed step is two graphs (forward-backward, update), launched at capture and at
    # every replay: 2 full batches an epoch; epoch 1 traces and captures, 2 and 3 replay.
    assert len(launches) == 2 * (1 + 4)


def test_a_capture_without_the_plan_is_caught_reusing_freed_memory(gpu):
    """The naive way: capture the step straight from the pool. Its temporaries are freed after
    the capture; the replay writes into what later allocations hold."""
    cupy = gpu(3)
    x = cupycnn.asarray(np.arange(1024, dtype=np.float32))
    out = []

    def body():
        t = x * 2                          # a temporary from the pool, freed after capture
        out.append(t + 1)                  # the step's result

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        body()
        g = stream.end_capture()
        result = out[0]
        other = cupy.full(1024, 7.0, np.float32)   # the stream's arena: the temporary's memory
    assert other.data.ptr != result.data.ptr
    g.launch()
    cupycnn.synchronize()
    assert cupy._world.capture_mallocs == 2
    assert not np.array_equal(other.get(), np.full(1024, 7.0)), "the model missed the reuse"
    np.testing.assert_array_equal(result.get(), np.arange(1024) * 2 + 1)

    # With the plan, the same step's buffers live in the arena and nothing else is touched.
    run = []
    step = graph.GraphedStep(lambda: cupycnn.ops.elementwise.add(
        cupycnn.ops.elementwise.relu_forward(x), x))
    for _ in range(3):
        run.append(step())
        other = cupy.full(1024, 7.0, np.float32)
    cupycnn.synchronize()
    np.testing.assert_array_equal(other.get(), np.full(1024, 7.0))
    np.testing.assert_array_equal(run[-1].get(), 2 * np.arange(1024))
    assert step.phase == "replayed"


def test_a_host_read_inside_a_capture_is_refused(gpu):
    cupy = gpu(1)
    x = cupycnn.asarray(np.ones(16, np.float32))

    def body():
        y = cupycnn.ops.elementwise.relu_forward(x)
        float(cupycnn.asnumpy(y)[0])          # a host read inside the step
        return y

    step = graph.GraphedStep(body)
    step()
    with pytest.raises(devices.CaptureError, match="reads a device array on the host .* while "
                                                   "a CUDA graph capture runs"):
        step()
    # The model refuses it too, with CUDA's error, when cupycnn's guard is bypassed.
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        y = x * 2
        with pytest.raises(RuntimeError, match="cudaErrorStreamCaptureUnsupported: a "
                                               "device-to-host copy"):
            float(y[0])
        with pytest.raises(RuntimeError, match="cudaErrorStreamCaptureInvalidated"):
            stream.end_capture()


@pytest.mark.parametrize("rejoined", [True, False])
def test_a_side_stream_joins_a_capture_through_an_event_and_must_rejoin_it(gpu, rejoined):
    """CUDA's cross-stream capture, as the data-parallel step uses it (compute -> collective
    stream -> compute, by events): the side stream's work is captured and replayed in order; a
    capture whose side stream is never waited for again fails at end_capture."""
    cupy = gpu(2)
    x = cupy.asarray(np.arange(8, dtype=np.float32))
    main, side = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)
    with main:
        main.begin_capture()
        y = x * 2
        side.wait_event(main.record())                 # the side stream joins the capture
        assert side.is_capturing()
        with side:
            z = y + 1
        if not rejoined:
            with pytest.raises(RuntimeError, match="cudaErrorStreamCaptureUnjoined"):
                main.end_capture()
            assert not side.is_capturing()
            return
        main.wait_event(side.record())                 # ... and rejoins it
        w = z * 3
        step = main.end_capture()
    assert not side.is_capturing()
    for values in (np.arange(8), np.full(8, 5)):       # replays read x's memory anew
        with main:
            x.set(values.astype(np.float32))
        step.launch(main)
        main.synchronize()
        np.testing.assert_array_equal(w.get(), (values * 2 + 1) * 3)
