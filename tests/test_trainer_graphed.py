"""Trainer(cuda_graph=True) on sim (and cuda, where usable): the recorded and replayed step trains exactly as the eager
one (parameters, buffers, history), falls back to an eager step for a short last batch and
records anew for a shape that persists, saying so; numpy runs eagerly and says why."""
import numpy as np
import pytest

import cupycnn
from cupycnn import devices
from cupycnn.data import ArrayDataset, Loader, Normalize, RandomCropFlip, Synthetic
from cupycnn.layers import (BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU,
                            Sequential)
from cupycnn.losses import SoftmaxCrossEntropy
from cupycnn.optim import Adam
from cupycnn.optim.schedules import OneCycleLR
from cupycnn.train import Trainer


def make_run(device, cuda_graph, examples=40, batch_size=16):
    cupycnn.use(device)
    cupycnn.manual_seed(0)
    train = Synthetic(examples, shape=(8, 8, 3), num_classes=4, seed=1)
    val = Synthetic(16, shape=(8, 8, 3), num_classes=4, seed=2)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train_loader = Loader(train, batch_size=batch_size, seed=3,
                          transform=RandomCropFlip(padding=1, mean=mean, std=std, seed=4))
    val_loader = Loader(val, batch_size=16, shuffle=False, transform=Normalize(mean, std))
    conv, norm = Conv2D(3, 6, 3, padding=1), BatchNorm2D(6)
    conv.feed_statistics_to(norm)           # tf32, bf16: the statistics from conv's epilogue
    model = Sequential(conv, norm, ReLU(), MaxPool2D(2), Dropout(0.2), Flatten(),
                       Dense(6 * 4 * 4, 4))
    optimizer = Adam(model.parameters(), lr=0.01)
    steps = 3 * -(-examples // batch_size)
    trainer = Trainer(model, optimizer, SoftmaxCrossEntropy(label_smoothing=0.1),
                      scheduler=OneCycleLR(optimizer, max_lr=0.02, total_steps=steps),
                      scheduler_interval="step", progress=False, cuda_graph=cuda_graph)
    return trainer, train_loader, val_loader


def test_graphed_training_is_the_eager_training_bit_for_bit(capsys, step_device):
    eager, tl, vl = make_run(step_device, cuda_graph=False)
    eager.fit(tl, epochs=3, val_loader=vl)
    graphed, tl, vl = make_run(step_device, cuda_graph=True)
    graphed.fit(tl, epochs=3, val_loader=vl)
    for (name, a), (_, b) in zip(eager.model.state_dict().items(),
                                 graphed.model.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert eager.history[key] == graphed.history[key], key
    g = graphed.graphed
    # 3 batches an epoch, the last of 8: per epoch two full batches and one eager short one.
    assert (g.replayed_steps, g.eager_steps) == (4, 5)
    err = capsys.readouterr().err
    assert err.count("cuda graph: a batch of shape (8, 3, 8, 8) runs eagerly: the step was "
                     "recorded for (16, 3, 8, 8)") == 1
    assert "memory plan:" in g.describe()


def test_a_shape_that_persists_is_recorded_anew(capsys):
    trainer, tl, vl = make_run("sim", cuda_graph=True, examples=64)
    x = [cupycnn.asarray(np.random.default_rng(i).standard_normal((n, 3, 8, 8))
                         .astype(np.float32)) for i, n in enumerate((16, 16, 16, 8, 8, 8, 8))]
    y = [cupycnn.asarray((np.arange(len(a)) % 4).astype(np.int32)) for a in x]
    sums = trainer.new_sums()
    phases = []
    for a, b in zip(x, y):
        trainer.train_step(a, b, sums)
        rec = trainer.graphed.recording
        phases.append((rec.shape[0][0], rec.update.phase))
    assert phases == [(16, "traced"), (16, "recorded"), (16, "replayed"), (16, "replayed"),
                      (8, "traced"), (8, "recorded"), (8, "replayed")]
    err = capsys.readouterr().err
    assert "batches of shape (8, 3, 8, 8) follow one another: the step is recorded anew" in err


def test_numpy_runs_eagerly_and_says_why(capsys):
    eager, tl, vl = make_run("numpy", cuda_graph=False)
    eager.fit(tl, epochs=1)
    graphed, tl, vl = make_run("numpy", cuda_graph=True)
    graphed.fit(tl, epochs=1)
    for (name, a), (_, b) in zip(eager.model.state_dict().items(),
                                 graphed.model.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert capsys.readouterr().err.count("cuda graph: the numpy device runs no kernels") == 1


def test_replayed_steps_allocate_nothing(step_device):
    trainer, tl, vl = make_run(step_device, cuda_graph=True, examples=64)
    sums = trainer.new_sums()
    batches = list(tl)
    for x, y in batches[:2]:
        trainer.train_step(x, y, sums)
    x, y = batches[2]
    before = devices.allocation_count
    trainer.train_step(x, y, sums)
    assert trainer.graphed.recording.update.phase == "replayed"
    assert devices.allocation_count == before


def test_data_parallel_graphed_training_is_the_eager_one_on_every_rank():
    """2 CPU ranks on sim (tests/mpi/graphed.py): the replayed forward-backward and update with
    the bucketed all-reduce between them, against the eager data-parallel step."""
    import os
    import subprocess
    import sys
    from test_distributed import MPIEXEC, SCRIPTS
    out = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, str(SCRIPTS / "graphed.py"),
                          "2"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert out.returncode == 0, out.stdout + out.stderr
    # 3 batches of 8 per rank per epoch: 2 epochs, 6 steps, 2 traced and recorded, 4 replayed.
    assert "OK graphed=True replayed=4 ranks_agree=True ranks=2" in out.stdout, \
        out.stdout + out.stderr


def test_graphed_training_at_bf16_is_the_eager_one(capsys, step_device):
    """precision bf16: the batch written in BF16 by the augmentation, BF16 activations through
    the whole step (the convolutions on the tensor-core kernels), recorded and replayed."""
    histories = []
    with cupycnn.set_precision("bf16"):
        for cuda_graph in (False, True):
            trainer, tl, vl = make_run(step_device, cuda_graph=cuda_graph, examples=32)
            trainer.fit(tl, epochs=2, val_loader=vl)
            histories.append((trainer.model.state_dict(), dict(trainer.history)))
            x, _ = next(iter(tl))
            assert x.dtype == np.uint16                       # BF16 storage from the loader
    (eager_state, eager_history), (state, history) = histories
    for name in eager_state:
        np.testing.assert_array_equal(state[name], eager_state[name], err_msg=name)
    assert history["loss"] == eager_history["loss"]
