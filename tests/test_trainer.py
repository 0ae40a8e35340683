"""The training loop with the real optimizers, loss, loaders and transforms: learning, exact
resumption, evaluation, prediction, and every callback's behaviour."""
import struct

import numpy as np
import pytest

import cupycnn
from cupycnn.data import ArrayDataset, Loader, Normalize, RandomCropFlip, Synthetic
from cupycnn.layers import (BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU,
                            Sequential)
from cupycnn.losses import SoftmaxCrossEntropy
from cupycnn.optim import SGD
from cupycnn.optim.schedules import StepLR
from cupycnn.train import (Callback, CSVLogger, EarlyStopping, ModelCheckpoint,
                           ReduceLROnPlateau, TensorBoard, Trainer)
from helpers import DEVICES


def small_cnn(classes=4):
    return Sequential(Conv2D(3, 6, 3, padding=1), BatchNorm2D(6), ReLU(), MaxPool2D(2),
                      Dropout(0.2), Flatten(), Dense(6 * 4 * 4, classes))


def make_run(device="numpy", seed=0, callbacks=(), flip=True):
    cupycnn.use(device)
    cupycnn.manual_seed(seed)
    train = Synthetic(48, shape=(8, 8, 3), num_classes=4, seed=1)
    val = Synthetic(16, shape=(8, 8, 3), num_classes=4, seed=2)        # the same classes
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train_loader = Loader(train, batch_size=16, shuffle=True, seed=3,
                          transform=RandomCropFlip(padding=1, mean=mean, std=std, seed=4,
                                                   flip=flip))
    val_loader = Loader(val, batch_size=16, shuffle=False, transform=Normalize(mean, std))
    model = small_cnn()
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = Trainer(model, optimizer, SoftmaxCrossEntropy(label_smoothing=0.1),
                      scheduler=StepLR(optimizer, step_size=1, gamma=0.7), progress=False,
                      callbacks=list(callbacks), config={"name": "small_cnn"},
                      classes=train.classes, normalization={"mean": mean, "std": std})
    return trainer, train_loader, val_loader


@pytest.mark.parametrize("device", DEVICES)
def test_resume_continues_exactly(tmp_path, device):
    """2 epochs, save, a fresh process-like rebuild, resume, 2 more == 4 epochs straight."""
    straight, tl, vl = make_run(device=device)
    straight.fit(tl, epochs=4, val_loader=vl)

    first, tl, vl = make_run(device=device)
    first.fit(tl, epochs=2, val_loader=vl)
    first.save_checkpoint(tmp_path / "mid.h5")
    cupycnn.manual_seed(999)                       # the resumed run must not depend on this
    second, tl, vl = make_run(device=device, seed=123)
    second.resume(tmp_path / "mid.h5")
    assert (second.epoch, second.step) == (2, 6)
    second.fit(tl, epochs=4, val_loader=vl)

    for (name, a), (_, b) in zip(straight.model.state_dict().items(),
                                 second.model.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    for key in ("loss", "val_accuracy", "lr"):
        assert straight.history[key] == second.history[key]
    assert second.history["epoch"] == [1, 2, 3, 4]


@pytest.mark.parametrize("make_callback", [
    lambda: ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=0),
    lambda: EarlyStopping(monitor="val_accuracy", patience=10, restore_best=True)],
    ids=["plateau", "early-stopping"])
def test_resume_with_a_stateful_callback_continues_exactly(tmp_path, make_callback):
    """The folder recipe's --schedule plateau and --early-stopping: a resumed run's callback
    takes the saved state (the plateau's lr cuts and counters; the best epoch and its weights)
    before it has started."""
    def run():
        return make_run(callbacks=[make_callback()])
    straight, tl, vl = run()
    straight.fit(tl, epochs=4, val_loader=vl)
    first, tl, vl = run()
    first.fit(tl, epochs=2, val_loader=vl)
    first.save_checkpoint(tmp_path / "mid.h5")
    second, tl, vl = run()
    second.resume(tmp_path / "mid.h5")
    second.fit(tl, epochs=4, val_loader=vl)
    for key in ("loss", "val_accuracy", "lr"):
        assert straight.history[key] == second.history[key]
    for (name, a), (_, b) in zip(straight.model.state_dict().items(),
                                 second.model.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)   # early stopping: the best restored
    assert straight.callbacks[-1].state_dict().keys() == second.callbacks[-1].state_dict().keys()


def test_learns_and_reports_exact_figures(tmp_path):
    trainer, tl, vl = make_run(flip=False)        # a mirrored wave is another class's pattern
    history = trainer.fit(tl, epochs=6, val_loader=vl)
    assert history["loss"][-1] < history["loss"][0]
    assert history["val_accuracy"][-1] >= 0.75
    result = trainer.evaluate(vl)
    assert result["count"] == 16 and result["accuracy"] == history["val_accuracy"][-1]
    probs = trainer.predict(vl)
    assert probs.shape == (16, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert np.mean(np.argmax(probs, 1) == vl.dataset.labels) == result["accuracy"]


def test_checkpoint_carries_what_prediction_needs(tmp_path):
    trainer, tl, vl = make_run()
    trainer.fit(tl, epochs=1)
    path = trainer.save_checkpoint(tmp_path / "c.h5")
    from cupycnn.checkpoint import load_checkpoint
    c = load_checkpoint(path)
    from cupycnn.models.description import describe
    # The trainer's config, completed with the model's architecture and input shape.
    assert c.config == {"name": "small_cnn", "architecture": describe(trainer.model),
                        "input_shape": [3, 8, 8], "resize": None, "crop": False}
    assert c.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert c.normalization == {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert c.optimizer_state["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.7)   # StepLR ran


# ----------------------------------------------------------------------- callbacks, one by one

class StubTrainer:
    """What callbacks use of a trainer, with logs the test chooses."""

    is_root = True

    def __init__(self):
        cupycnn.use("numpy")
        self.model = Dense(2, 2)
        self.optimizer = SGD(self.model.parameters(), lr=1.0)
        self.stop_training = False
        self.saved = []

    def save_checkpoint(self, path):
        self.saved.append(str(path))


def drive(callback, values, monitor="val_loss", trainer=None):
    trainer = trainer or StubTrainer()
    callback.set_trainer(trainer)
    callback.on_train_begin({})
    for epoch, value in enumerate(values):
        trainer.model.params["bias"][...] = epoch           # a fingerprint of the epoch
        callback.on_epoch_end(epoch, {monitor: value, "loss": value})
        if trainer.stop_training:
            break
    callback.on_train_end({})
    return trainer, epoch


def test_early_stopping_waits_patience_then_restores_the_best():
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best=True)
    trainer, last = drive(stopper, [1.0, 0.5, 0.6, 0.7, 0.1])
    assert last == 3 and trainer.stop_training
    assert stopper.best == 0.5 and stopper.best_epoch == 1
    np.testing.assert_array_equal(trainer.model.params["bias"], [1, 1])    # epoch 1's weights


def test_early_stopping_on_accuracy_maximises_and_min_delta_counts():
    stopper = EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.05)
    trainer, last = drive(stopper, [0.5, 0.52, 0.9], monitor="val_accuracy")
    assert last == 1 and stopper.best == 0.5


def test_reduce_lr_on_plateau_multiplies_lr_down_to_min_lr():
    reducer = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_lr=0.3)
    trainer, _ = drive(reducer, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.3)
    lrs = []
    reducer2 = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1)
    t2 = StubTrainer()
    reducer2.set_trainer(t2)
    reducer2.on_train_begin({})
    for epoch, v in enumerate([1.0, 1.0, 1.0, 0.5, 0.5, 0.5]):
        reducer2.on_epoch_end(epoch, {"val_loss": v})
        lrs.append(t2.optimizer.param_groups[0]["lr"])
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25]


def test_model_checkpoint_best_only_when_improved_and_last_always(tmp_path):
    saver = ModelCheckpoint(best=tmp_path / "best.h5", last=tmp_path / "last.h5",
                            monitor="val_accuracy")
    trainer, _ = drive(saver, [0.5, 0.7, 0.6], monitor="val_accuracy")
    assert trainer.saved == [str(tmp_path / "best.h5"), str(tmp_path / "last.h5"),
                             str(tmp_path / "best.h5"), str(tmp_path / "last.h5"),
                             str(tmp_path / "last.h5")]


def test_csv_logger_writes_the_history_a_row_per_epoch(tmp_path):
    from cupycnn.train.trainer import History
    path = tmp_path / "log.csv"
    trainer = StubTrainer()
    trainer.history = History()
    logger = CSVLogger(path)
    logger.set_trainer(trainer)
    for epoch, logs in enumerate([{"loss": 0.9}, {"loss": 0.8, "val_loss": 0.7}]):
        trainer.history.append(epoch, logs)
        logger.on_epoch_end(epoch, logs)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == ["epoch,loss,val_loss", "1,0.9,", "2,0.8,0.7"]    # the header follows


def _tensorboard_scalars(folder):
    """(tag, step, value) from the TFRecord event files tensorboardX wrote."""
    from tensorboardX.proto import event_pb2
    found = []
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                found.append((value.tag, event.step, round(value.simple_value, 6)))
    return found


def test_tensorboard_writes_loss_accuracy_and_lr(tmp_path):
    board = TensorBoard(tmp_path)
    trainer = StubTrainer()
    board.set_trainer(trainer)
    board.on_train_begin({})
    board.on_epoch_end(0, {"loss": 1.5, "accuracy": 0.25, "val_loss": 1.25, "val_accuracy": 0.5,
                           "lr": 0.1})
    board.on_train_end({})
    scalars = set(_tensorboard_scalars(tmp_path))
    assert {("loss/train", 1, 1.5), ("accuracy/train", 1, 0.25), ("loss/val", 1, 1.25),
            ("accuracy/val", 1, 0.5), ("lr", 1, 0.1)} <= scalars


def test_all_callbacks_in_a_real_run(tmp_path):
    callbacks = [EarlyStopping(monitor="val_loss", patience=10), ReduceLROnPlateau(patience=5),
                 ModelCheckpoint(best=tmp_path / "best.h5", last=tmp_path / "last.h5"),
                 CSVLogger(tmp_path / "log.csv"), TensorBoard(tmp_path / "tb")]
    trainer, tl, vl = make_run(callbacks=callbacks)
    trainer.fit(tl, epochs=2, val_loader=vl)
    assert (tmp_path / "best.h5").exists() and (tmp_path / "last.h5").exists()
    assert len((tmp_path / "log.csv").read_text(encoding="utf-8").splitlines()) == 3
    tags = {t for t, _, _ in _tensorboard_scalars(tmp_path / "tb")}
    assert {"loss/train", "loss/val", "accuracy/val", "lr"} <= tags


def test_callbacks_must_be_callbacks():
    trainer, _, _ = make_run()
    with pytest.raises(TypeError, match="cupycnn.train.Callback"):
        Trainer(trainer.model, trainer.optimizer, callbacks=[object()])
    with pytest.raises(KeyError, match="val_\\* figures need a validation loader"):
        drive(EarlyStopping(monitor="val_loss"), [1.0], monitor="loss_only")


def test_a_callback_can_stop_training():
    class StopAfterOne(Callback):
        def on_epoch_end(self, epoch, logs):
            self.trainer.stop_training = True

    trainer, tl, _ = make_run(callbacks=[StopAfterOne()])
    trainer.fit(tl, epochs=5)
    assert trainer.epoch == 1
