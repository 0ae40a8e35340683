"""Resuming (issue 12, items 7 and 8): a checkpoint saved in the middle of an epoch resumes
exactly there, bitwise equal to a run never interrupted (one-cycle schedule included); a
damaged checkpoint is one CheckpointError naming what is wrong, and the trainer is left
exactly as it was."""
import copy

import numpy as np
import pytest

import cupycnn
from cupycnn import checkpoint as ckpt
from cupycnn.checkpoint import CheckpointError
from cupycnn.data import Loader, RandomCropFlip, Synthetic
from cupycnn.layers import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Sequential
from cupycnn.losses import SoftmaxCrossEntropy
from cupycnn.optim import SGD
from cupycnn.optim.schedules import OneCycleLR
from cupycnn.train import Callback, EarlyStopping, Trainer
from helpers import DEVICES

BATCHES = 4          # per epoch: 64 examples, batch 16


def make(device="numpy", seed=0, callbacks=()):
    cupycnn.use(device)
    cupycnn.manual_seed(seed)
    train = Synthetic(64, shape=(8, 8, 3), num_classes=4, seed=1)
    loader = Loader(train, batch_size=16, seed=3, shuffle=True,
                    transform=RandomCropFlip(padding=1, mean=(0.5,) * 3, std=(0.25,) * 3, seed=4))
    model = Sequential(Conv2D(3, 6, 3, padding=1), BatchNorm2D(6), ReLU(), MaxPool2D(2),
                       Dropout(0.3), Flatten(), Dense(6 * 4 * 4, 4))
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
    schedule = OneCycleLR(optimizer, max_lr=0.1, total_steps=3 * BATCHES)
    trainer = Trainer(model, optimizer, SoftmaxCrossEntropy(), scheduler=schedule,
                      scheduler_interval="step", progress=False, callbacks=list(callbacks))
    return trainer, loader


class Interrupt(Exception):
    pass


class SaveAt(Callback):
    """Save at optimizer step `step` from the batch callback, then stop the run as a kill
    would (an exception: nothing after the save runs)."""

    def __init__(self, path, step):
        self.path, self.at = path, step

    def on_batch_end(self, step, logs=None):
        if step == self.at:
            self.trainer.save_checkpoint(self.path)
            raise Interrupt


def _params(trainer):
    return {k: v.copy() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("at", [2, BATCHES + 1, 2 * BATCHES])     # mid-epoch 1, 2, last batch
def test_mid_epoch_checkpoint_resumes_exactly(tmp_path, device, at):
    straight, loader = make(device)
    straight.fit(loader, epochs=3)
    assert straight.step == 3 * BATCHES

    path = tmp_path / "mid.h5"
    first, loader = make(device, callbacks=[SaveAt(path, at)])
    with pytest.raises(Interrupt):
        first.fit(loader, epochs=3)
    cupycnn.manual_seed(1234)                        # the resumed run must not depend on it
    second, loader = make(device, seed=77)
    second.resume(path)
    assert second.step == at
    second.fit(loader, epochs=3)
    assert second.step == 3 * BATCHES, "the resumed run took another number of steps"
    for name, value in _params(straight).items():
        np.testing.assert_array_equal(second.model.state_dict()[name], value, err_msg=name)
    assert second.history["loss"] == straight.history["loss"]
    assert second.history["accuracy"] == straight.history["accuracy"]
    assert second.history["lr"] == straight.history["lr"]


def test_a_mid_epoch_save_with_a_loader_that_cannot_resume_is_refused(tmp_path):
    trainer, loader = make(callbacks=[SaveAt(tmp_path / "mid.h5", 2)])
    batches = list(Loader(Synthetic(64, shape=(8, 8, 3), num_classes=4, seed=1), 16,
                          transform=RandomCropFlip(padding=1, mean=(0.5,) * 3,
                                                   std=(0.25,) * 3, seed=4)))
    with pytest.raises(CheckpointError, match="cannot save in the middle of an epoch"):
        trainer.fit(batches, epochs=3)           # a plain list of batches: no position
    assert not (tmp_path / "mid.h5").exists()


def test_resuming_mid_epoch_with_another_loader_length_is_refused(tmp_path):
    path = tmp_path / "mid.h5"
    first, loader = make(callbacks=[SaveAt(path, 2)])
    with pytest.raises(Interrupt):
        first.fit(loader, epochs=3)
    second, loader = make()
    second.resume(path)
    other = Loader(Synthetic(96, shape=(8, 8, 3), num_classes=4, seed=1), 16, seed=3,
                   transform=loader.transform)
    with pytest.raises(CheckpointError, match="saved at batch 2 of an epoch of 4 batches.*6"):
        second.fit(other, epochs=3)


# ------------------------------------------------------------ damaged checkpoints (8)

def _state_of(trainer):
    """Everything resume() may change, as comparable values."""
    return copy.deepcopy({"model": _params(trainer), "optimizer": trainer.optimizer.state_dict(),
                          "scheduler": trainer.scheduler.state_dict(),
                          "epoch": trainer.epoch, "step": trainer.step,
                          "history": dict(trainer.history),
                          "callbacks": [cb.state_dict() for cb in trainer.callbacks],
                          "rng": trainer.random_state(), "library": cupycnn.random.get_state()})


def _assert_same(a, b, where="state"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def _saved(tmp_path):
    """A real checkpoint's parts (after one epoch with early stopping), to damage."""
    trainer, loader = make(callbacks=[EarlyStopping(monitor="loss", patience=3)])
    trainer.fit(loader, epochs=1)
    path = trainer.save_checkpoint(tmp_path / "good.h5")
    return ckpt.load_checkpoint(path)


def _write(tmp_path, c, **changes):
    fields = dict(model=None, optimizer=None, epoch=c.epoch, step=c.step, rng=c.rng,
                  trainer=c.trainer)
    fields.update(changes)
    path = tmp_path / "damaged.h5"
    model, _ = make()
    model = model.model
    model.load_state_dict(c.model_state)

    class Opt:
        def state_dict(self):
            return fields["optimizer"] if fields["optimizer"] is not None else c.optimizer_state

    ckpt.save_checkpoint(path, model=model, optimizer=Opt(), epoch=fields["epoch"],
                         step=fields["step"], rng=fields["rng"], trainer=fields["trainer"])
    return path


def _with(tree, keys, value):
    tree = copy.deepcopy(tree)
    node = tree
    for k in keys[:-1]:
        node = node[k]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return tree


DAMAGE = {
    # name: (what to change, a fragment of the message)
    "history not a dict": (lambda c: dict(trainer=_with(c.trainer, ["history"], [1, 2])),
                           "history"),
    "history of unequal lengths": (lambda c: dict(trainer=_with(c.trainer, ["history", "loss"],
                                                                [1.0, 2.0, 3.0])), "history"),
    "history of words": (lambda c: dict(trainer=_with(c.trainer, ["history", "loss"], ["x"])),
                         "history"),
    "callback state lacks a key": (lambda c: dict(trainer=_with(c.trainer,
                                                                ["callbacks", "0", "wait"],
                                                                KeyError)), "EarlyStopping"),
    "callback of another kind": (lambda c: dict(trainer=_with(c.trainer, ["callback_types", "0"],
                                                              "ModelCheckpoint")),
                                 "ModelCheckpoint"),
    "layer index out of range": (lambda c: dict(rng=_with(c.rng, ["layers", "99"],
                                                          {"seed": 1, "calls": 2})), "layer"),
    "layer state of words": (lambda c: dict(rng=_with(c.rng, ["layers", next(iter(c.rng["layers"])), "calls"], "many")),
                             "layer"),
    "library generator garbage": (lambda c: dict(rng=_with(c.rng, ["library"], "not a state")),
                                  "generator"),
    "scheduler state lacks a key": (lambda c: dict(trainer=_with(c.trainer,
                                                                 ["scheduler", "total_steps"],
                                                                 KeyError)), "schedule"),
    "scheduler counter of words": (lambda c: dict(trainer=_with(c.trainer,
                                                                ["scheduler", "last_epoch"],
                                                                "x")), "schedule"),
    "no scheduler state": (lambda c: dict(trainer=_with(c.trainer, ["scheduler"], KeyError)),
                           "schedule"),
    "loader epoch of words": (lambda c: dict(rng=_with(c.rng, ["loaders", "0", "epoch"], "x")),
                              "loader"),
    "negative step": (lambda c: dict(step=-3), "step"),
    "optimizer of another layout": (lambda c: dict(optimizer=_with(
        c.optimizer_state, ["param_groups"], c.optimizer_state["param_groups"] * 2)),
        "optimizer"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_one_error_and_changes_nothing(tmp_path, case):
    change, fragment = DAMAGE[case]
    saved = _saved(tmp_path)
    try:
        path = _write(tmp_path, saved, **change(saved))
    except CheckpointError as e:          # refused at save already: a fine answer too
        assert fragment.lower() in str(e).lower(), str(e)
        return
    trainer, loader = make(seed=5, callbacks=[EarlyStopping(monitor="loss", patience=3)])
    trainer.fit(loader, epochs=1)              # a trainer with state of its own
    before = _state_of(trainer)
    with pytest.raises(CheckpointError) as error:
        trainer.resume(path)
    assert type(error.value) is CheckpointError
    message = str(error.value)
    assert fragment.lower() in message.lower(), message
    assert "\n" not in message
    _assert_same(before, _state_of(trainer))
