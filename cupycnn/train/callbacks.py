"""Callbacks: what happens around training without being training itself.

Each callback may implement on_train_begin, on_epoch_begin, on_batch_end, on_epoch_end(epoch,
logs), on_train_end and on_test_end(logs); `logs` holds the epoch's figures ("loss",
"accuracy", "val_loss", "val_accuracy" with a validation set, "lr": the learning rate of the
epoch's last step, "images_per_second"), or for on_test_end the test set's ("test_loss",
"test_accuracy", "test_count", after training: Trainer.record_test). State that must survive a resume (an early-stopping counter, the best
value so far) goes through state_dict() / load_state_dict(), which the trainer puts in its
checkpoints. In data-parallel training the trainer gives every rank the same logs (all-reduced)
and only rank 0 writes files.
"""
import csv
import io
import math
import os
import sys
from pathlib import Path

import numpy as np

from .. import atomic


class Callback:
    trainer = None

    def set_trainer(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_batch_end(self, step, logs=None):
        pass

    def on_epoch_end(self, epoch, logs):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_test_end(self, logs):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def _say(self, message):
        if self.trainer is None or self.trainer.is_root:
            print(message, file=sys.stderr)


def _mode_for(monitor, mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _improved(value, best, mode, min_delta):
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _monitored(logs, monitor, who):
    if monitor not in logs:
        raise KeyError(f"{who}: monitors {monitor!r}, but the epoch logs only have "
                       f"{', '.join(sorted(logs))} (val_* figures need a validation loader)")
    value = float(logs[monitor])
    return value


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs;
    with restore_best, put back the weights of the best epoch when training ends."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto",
                 restore_best=False):
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode = _mode_for(monitor, mode)
        self.restore_best = restore_best
        self.best, self.best_epoch, self.wait = None, None, 0
        self.best_state = None
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs):
        value = _monitored(logs, self.monitor, "EarlyStopping")
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_state = self.trainer.model.state_dict()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.trainer.stop_training = True
                self._say(f"early stopping at epoch {epoch + 1}: {self.monitor} has not improved "
                          f"for {self.patience} epochs (best {self.best:.4g} at epoch "
                          f"{self.best_epoch + 1})")

    def on_train_end(self, logs=None):
        if self.restore_best and self.best_state is not None:
            self.trainer.model.load_state_dict(self.best_state)
            self._say(f"restored the weights of epoch {self.best_epoch + 1} "
                      f"({self.monitor} {self.best:.4g})")

    def state_dict(self):
        state = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}
        if self.restore_best:        # None until an epoch ends: the same keys before and after
            state["best_state"] = None if self.best_state is None else dict(self.best_state)
        return state

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        if "best_state" in state:
            self.best_state = state["best_state"]


class ReduceLROnPlateau(Callback):
    """Multiply every group's learning rate by `factor` when `monitor` has not improved for
    `patience` epochs (never below min_lr): cupycnn.optim's ReduceLROnPlateau schedule, fed
    with the epoch's figure."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_lr=0.0, mode="auto",
                 threshold=1e-4, cooldown=0):
        self.monitor = monitor
        self.kwargs = dict(mode=_mode_for(monitor, mode), factor=factor, patience=patience,
                           min_lr=min_lr, threshold=threshold, cooldown=cooldown)
        self.schedule = None
        self._pending_state = None

    def _new_schedule(self):
        from ..optim.schedules import ReduceLROnPlateau as Schedule
        return Schedule(self.trainer.optimizer, **self.kwargs)

    def on_train_begin(self, logs=None):
        self.schedule = self._new_schedule()
        if self._pending_state is not None:
            self.schedule.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_epoch_end(self, epoch, logs):
        before = [g["lr"] for g in self.trainer.optimizer.param_groups]
        self.schedule.step(_monitored(logs, self.monitor, "ReduceLROnPlateau"))
        after = [g["lr"] for g in self.trainer.optimizer.param_groups]
        if after != before:
            self._say(f"epoch {epoch + 1}: {self.monitor} has plateaued; learning rate "
                      f"{before[0]:.3g} -> {after[0]:.3g}")

    def state_dict(self):
        if self.schedule is not None:
            return self.schedule.state_dict()
        if self._pending_state or self.trainer is None:
            return self._pending_state or {}
        # Not started yet (a trainer about to resume): a fresh schedule's state, whose form is
        # what a checkpoint's state of this callback is checked against.
        return self._new_schedule().state_dict()

    def load_state_dict(self, state):
        if not state:                      # the state of one that never started
            self._pending_state = None
        elif self.schedule is not None:
            self.schedule.load_state_dict(state)
        else:
            self._pending_state = state


class ModelCheckpoint(Callback):
    """Write the last epoch's checkpoint to `last` and the best one (by `monitor`) to `best`;
    either may be None. Writes are atomic: an interrupted save keeps the previous file."""

    def __init__(self, best=None, last=None, monitor="val_accuracy", mode="auto"):
        if best is None and last is None:
            raise ValueError("ModelCheckpoint needs a path for best=, last= or both")
        self.best_path, self.last_path = best, last
        self.monitor, self.mode = monitor, _mode_for(monitor, mode)
        self.best = None

    def on_train_begin(self, logs=None):
        """Before the first epoch: the folders must be writable and hold a checkpoint (one
        sentence now rather than a traceback after the first epoch)."""
        if self.trainer is None or not self.trainer.is_root:
            return
        size = checkpoint_bytes(self.trainer)
        for path in {p for p in (self.best_path, self.last_path) if p is not None}:
            folder = Path(path).parent
            atomic.check_writable(folder, "checkpoints")
            atomic.check_free_space(folder, size + (1 << 20), f"the checkpoint {path}")

    def on_epoch_end(self, epoch, logs):
        if self.best_path is not None:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if _improved(value, self.best, self.mode, 0.0):
                self.best = value
                self.trainer.save_checkpoint(self.best_path)
        if self.last_path is not None:
            self.trainer.save_checkpoint(self.last_path)

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state["best"]


class CSVLogger(Callback):
    """log.csv: a header and one row per epoch, the trainer's history: "epoch" and every
    figure. The whole file is rewritten (atomically) at each epoch's end from the history,
    which checkpoints carry, so after a resume it holds exactly the checkpoint's epochs and
    those run since: no rows lost or repeated by a killed run, no row torn by a full disk, and
    a header that follows the columns when they change. The test figures (on_test_end) become
    columns test_loss, test_accuracy, test_count filled on the last epoch's row (empty above
    it): every row stays one epoch."""

    def __init__(self, path):
        self.path = path

    def on_train_begin(self, logs=None):
        if self.trainer is not None and self.trainer.is_root:
            atomic.check_writable(Path(os.path.abspath(self.path)).parent, "the CSV log")

    def on_epoch_end(self, epoch, logs):
        if not self.trainer.is_root:
            return
        history = getattr(self.trainer, "history", None)
        rows = history.rows() if hasattr(history, "rows") else None
        if rows is None:                      # a trainer without a history: this run's rows
            self._rows = getattr(self, "_rows", []) + [{"epoch": epoch + 1, **logs}]
            rows = self._rows
        self._written = [dict(row) for row in rows]
        self._write(self._written)

    def on_test_end(self, logs):
        rows = getattr(self, "_written", None)
        if not self.trainer.is_root or not rows:
            return
        rows[-1].update(logs)
        self._write(rows)

    def _write(self, rows):
        """The whole file from `rows`, replaced atomically (never half-written)."""
        names = {k for row in rows for k in row} - {"epoch"}
        tests = {k for k in names if k.startswith("test_")}     # the last columns
        fields = ["epoch"] + sorted(names - tests) + sorted(tests)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        with atomic.replace(self.path, what="CSV log") as partial:
            with open(partial, "w", newline="", encoding="utf-8") as f:
                f.write(text.getvalue())


def checkpoint_bytes(trainer):
    """About how many bytes a checkpoint of `trainer` takes: the model's tensors, the
    optimizer's state buffers (made at its first step), 1 MiB for the rest."""
    model = sum(int(np.prod(np.shape(v))) * 4 for v in trainer.model.state_dict().values())
    states = len(getattr(trainer.optimizer, "state_names", ()) or ())
    return model * (1 + states) + (1 << 20)


class TensorBoard(Callback):
    """Loss, accuracy and learning rate as TensorBoard event files (through tensorboardX):
    `tensorboard --logdir <log_dir>`. Scalars are tagged loss/train, loss/val, accuracy/train,
    accuracy/val, lr, at the epoch number, and loss/test, accuracy/test at the last epoch
    (on_test_end); the training loss also every `batch_interval` optimizer steps when the
    trainer reports it."""

    def __init__(self, log_dir, batch_interval=None):
        self.log_dir, self.batch_interval = str(log_dir), batch_interval
        self.writer = None

    def on_train_begin(self, logs=None):
        if not self.trainer.is_root:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("the TensorBoard callback needs tensorboardX: pip install "
                              "tensorboardX") from None
        atomic.check_writable(self.log_dir, "TensorBoard logs")
        try:
            self.writer = SummaryWriter(self.log_dir)
        except OSError as e:
            raise atomic.write_error("TensorBoard log in", self.log_dir, e, kept=False) \
                from None

    def on_batch_end(self, step, logs=None):
        if self.writer is not None and self.batch_interval and logs and "loss" in logs \
                and step % self.batch_interval == 0:
            self.writer.add_scalar("loss/train_step", logs["loss"], step)

    def on_epoch_end(self, epoch, logs):
        if self.writer is None:
            return
        tags = {"loss": "loss/train", "accuracy": "accuracy/train", "val_loss": "loss/val",
                "val_accuracy": "accuracy/val", "lr": "lr"}
        try:
            for key, value in logs.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(tags.get(key, key), value, epoch + 1)
            self.writer.flush()
        except OSError as e:
            raise atomic.write_error("TensorBoard log in", self.log_dir, e, kept=False) \
                from None

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_test_end(self, logs):
        """loss/test and accuracy/test, at the last epoch (their own event file)."""
        if not self.trainer.is_root:
            return
        from tensorboardX import SummaryWriter
        with SummaryWriter(self.log_dir, filename_suffix=".test") as writer:
            for key, tag in (("test_loss", "loss/test"), ("test_accuracy", "accuracy/test")):
                if key in logs and math.isfinite(float(logs[key])):
                    writer.add_scalar(tag, float(logs[key]), self.trainer.epoch)


def history_arrays(history):
    """The history as {name: np.ndarray}, for plotting."""
    return {k: np.asarray(v, dtype=np.float64) for k, v in history.items()}
