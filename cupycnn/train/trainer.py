"""The training loop: fit, evaluate, predict, checkpoints and exact resumption.

    trainer = Trainer(model, optimizer, SoftmaxCrossEntropy(), scheduler=schedule,
                      callbacks=[EarlyStopping(patience=5), CSVLogger("log.csv")])
    history = trainer.fit(train_loader, epochs=30, val_loader=val_loader)

A training step is: forward, loss, backward through the loss and the model, (data-parallel: the
gradient all-reduce), one fused optimizer step, and one kernel that adds the batch's loss and
correct predictions to running sums on the device. Nothing in the step copies to the host: on
`cuda` the whole step is kernels. The sums are read when the progress bar redraws and at the end
of the epoch.

Resumption is exact: a checkpoint holds the model, the optimizer and scheduler, the epoch and
step counts, the history, every callback's state and every random state (the library generator,
each layer's dropout counter, the loaders' transforms), so 2 epochs, a save, a resume and 2 more
epochs end with the same parameters as 4 epochs in one go (on numpy and sim, where runs are
deterministic; tested).
"""
import copy
import time

import numpy as np

from .. import devices as _device
from .. import random as _random
from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..ops import metrics as metric_ops
from ..ops._check import check_device_array, check_int_array
from ..ops.softmax_xent import check_labels_on_host, labels_to_int32
from ..progress import Progress
from ..reference.softmax_xent import softmax
from . import resume as _resume
from .callbacks import Callback


class History(dict):
    """{figure name: [one value per epoch]}; "epoch" lists the epoch numbers (from 1). Every
    list has one entry per epoch: a figure an epoch did not report is None there."""

    def append(self, epoch, logs):
        done = len(self.get("epoch", []))
        self.setdefault("epoch", []).append(epoch + 1)
        for key, value in logs.items():
            self.setdefault(key, [None] * done).append(value)
        for key, values in self.items():
            if len(values) == done:
                values.append(None)

    def rows(self):
        """One {name: value} per epoch (what CSVLogger writes)."""
        names = list(self)
        return [dict(zip(names, values)) for values in zip(*(self[n] for n in names))]


class Trainer:
    """Trains `model` with `optimizer` on `loss` (SoftmaxCrossEntropy by default).

    scheduler: a learning-rate schedule stepped every epoch, or every optimizer step with
    scheduler_interval="step" (one-cycle); ReduceLROnPlateau is the callback of that name.
    distributed: a cupycnn.distributed context (gradient all-reduce, metric sums, rank 0 only
    printing and writing); None trains on one process.
    config, classes, normalization: saved in checkpoints so that a model can be rebuilt and fed
    (examples/predict.py).
    cuda_graph: record the training step once and replay it (a CUDA graph on cuda, the launch
    list on sim; train/graphed.py says when a step falls back to running eagerly, and says so).
    """

    def __init__(self, model, optimizer, loss=None, *, scheduler=None, scheduler_interval="epoch",
                 callbacks=(), distributed=None, progress=True, config=None, classes=None,
                 normalization=None, cuda_graph=False):
        if loss is None:
            from ..losses import SoftmaxCrossEntropy
            loss = SoftmaxCrossEntropy()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got "
                             f"{scheduler_interval!r}")
        self.model, self.optimizer, self.loss = model, optimizer, loss
        self.scheduler, self.scheduler_interval = scheduler, scheduler_interval
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be cupycnn.train.Callback objects, got "
                                f"{type(cb).__name__}")
            cb.set_trainer(self)
        self.distributed = distributed
        self.progress = progress
        self.config, self.classes, self.normalization = config, classes, normalization
        self.history = History()
        self.epoch = 0              # epochs completed
        self.step = 0               # optimizer steps completed
        self.stop_training = False
        self.loaders = []           # whose random state goes into checkpoints (set by fit)
        self._pending_loader_state = None   # from resume(), applied when fit gets the loaders
        self._position = None       # from resume() of a mid-epoch checkpoint: where to start
        self._in_epoch = None       # during an epoch: its number, batches done, sums, lr
        self._classes_seen = None   # the model's outputs, known after the first step
        self.graphed = None
        if cuda_graph:
            from .graphed import GraphedTraining
            self.graphed = GraphedTraining(self)

    # ------------------------------------------------------------------------- properties
    @property
    def is_root(self):
        return self.distributed is None or self.distributed.rank == 0

    def _allreduce_sums(self, sums):
        if self.distributed is not None:
            self.distributed.allreduce_sum_(sums)
        return sums

    def _callbacks(self, hook, *args):
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    # -------------------------------------------------------------------------- training
    def _labels(self, op, x, y):
        """Check a batch before anything changes (a failing step must not have stepped): x a
        device array with y's batch size, y integer class labels [N] on the device; labels of
        another integer dtype become int32 explicitly, a label out of range is refused where
        the labels are on the host (numpy, sim; on cuda the loss turns NaN instead)."""
        check_device_array(op, "the inputs x", x)
        check_int_array(op, "the labels y", y, ("N",))
        if len(x.shape) < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{op}: {y.shape[0]} labels for inputs of shape {tuple(x.shape)}; "
                             f"one label per example")
        classes = len(self.classes) if self.classes else self._classes_seen
        if _device.device() != "cuda" and classes:
            check_labels_on_host(op, y, classes)
        if y.dtype != np.int32:
            y = labels_to_int32(y, classes or np.iinfo(np.int32).max, op)
        return y

    def new_sums(self):
        """A zeroed accumulator for an epoch's loss and hits (the graphed step's own one)."""
        return self.graphed.epoch_sums() if self.graphed is not None else metric_ops.new_sums()

    def train_step(self, x, y, sums):
        """One optimizer step on a batch; adds its loss and hits to `sums` (on the device).
        The batch is checked first: a step that fails has changed nothing."""
        y = self._labels("Trainer.train_step", x, y)
        if self.distributed is not None and hasattr(self.distributed, "set_step"):
            self.distributed.set_step(self.step + 1, self.epoch)   # what a watchdog names
        if self.graphed is not None:
            self.graphed.step(x, y, sums)
        else:
            self._eager_step(x, y, sums)
        self.step += 1
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()

    def _eager_step(self, x, y, sums):
        logits = self.model.forward(x, training=True)
        self._classes_seen = int(logits.shape[1]) if len(logits.shape) == 2 else None
        loss = self.loss.forward(logits, y)
        dy = self.loss.backward()
        if self.distributed is not None:
            self.distributed.backward(self.model, dy, self.optimizer)
        else:
            self.model.backward(dy)
        self.optimizer.step()
        metric_ops.accumulate_metrics(logits, y, loss, sums)

    def fit(self, train_loader, epochs, val_loader=None, stop_at=None):
        """Train until `epochs` epochs are complete (counting those before a resume), or a
        callback stops training, or (stop_at) that many epochs are complete: a run cut into
        pieces, each resumed from the last checkpoint. Returns the history."""
        self.loaders = [train_loader] + ([val_loader] if val_loader is not None else [])
        if self._pending_loader_state:
            self.set_random_state({"loaders": self._pending_loader_state})
            self._pending_loader_state = None
        self.stop_training = False
        position, self._position = self._position, None
        self._callbacks("on_train_begin", {})
        logs = {}
        last = epochs if stop_at is None else min(epochs, stop_at)
        while self.epoch < last and not self.stop_training:
            epoch = self.epoch
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            sums = self.new_sums()
            lr = self.optimizer.param_groups[0]["lr"]
            start, seconds_before = 0, 0.0
            if position is not None:                 # a mid-epoch checkpoint: go on from it
                start, lr, seconds_before = _resume.start_mid_epoch(self, position, train_loader,
                                                                    epoch, sums)
                position = None
            self._callbacks("on_epoch_begin", epoch, {})
            bar = Progress(total=len(train_loader), desc=f"epoch {epoch + 1}/{epochs}",
                           unit="batch", enabled=self.progress and self.is_root,
                           unit_scale=getattr(train_loader, "batch_size", 1))
            bar.done = start
            started = time.perf_counter()
            self._in_epoch = {"epoch": epoch, "batch": start, "batches": len(train_loader),
                              "sums": sums, "lr": lr, "started": started,
                              "seconds_before": seconds_before}
            for x, y in train_loader:
                self.train_step(x, y, sums)
                self._in_epoch["batch"] += 1
                if bar.enabled and bar.due():       # the only host read inside an epoch
                    loss, accuracy, _ = metric_ops.read_sums(sums)
                    bar.set_metrics(loss=loss, acc=accuracy)
                bar.update(1)
                if any(type(cb).on_batch_end is not Callback.on_batch_end
                       for cb in self.callbacks):
                    self._callbacks("on_batch_end", self.step, {})
            self._in_epoch = None
            self._allreduce_sums(sums)
            if self.distributed is not None:
                self.distributed.broadcast_buffers(self.model)   # one model to evaluate and save
            loss, accuracy, count = metric_ops.read_sums(sums)
            seconds = time.perf_counter() - started + seconds_before
            logs = {"loss": loss, "accuracy": accuracy, "lr": lr,
                    "images_per_second": count / seconds if seconds > 0 else float("nan")}
            bar.set_metrics(loss=loss, acc=accuracy)
            bar.close()
            if val_loader is not None:
                val = self.evaluate(val_loader, desc="  validation")
                logs["val_loss"], logs["val_accuracy"] = val["loss"], val["accuracy"]
            self.epoch += 1
            self.history.append(epoch, logs)
            if self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            self._callbacks("on_epoch_end", epoch, logs)
            if self.is_root:
                figures = "  ".join(f"{k}={v:.4g}" for k, v in logs.items())
                print(f"epoch {epoch + 1}/{epochs}: {figures}", flush=True)
        self._callbacks("on_train_end", logs)
        return self.history

    # ------------------------------------------------------------------------ evaluation
    def evaluate(self, loader, desc="evaluate"):
        """Mean loss and accuracy over the whole of `loader` (all ranks together):
        {"loss", "accuracy", "count"}."""
        sums = metric_ops.new_sums()
        bar = Progress(total=len(loader), desc=desc, unit="batch",
                       enabled=self.progress and self.is_root,
                       unit_scale=getattr(loader, "batch_size", 1))
        for x, y in loader:
            y = self._labels("Trainer.evaluate", x, y)
            logits = self.model.forward(x, training=False)
            loss = self.loss.forward(logits, y)
            metric_ops.accumulate_metrics(logits, y, loss, sums)
            bar.update(1)
        self._allreduce_sums(sums)
        loss, accuracy, count = metric_ops.read_sums(sums)
        bar.set_metrics(loss=loss, acc=accuracy)
        bar.close()
        return {"loss": loss, "accuracy": accuracy, "count": count}

    def predict(self, inputs, batch_size=256):
        """Class probabilities [N, classes] (NumPy) for model-ready inputs: an array [N, ...]
        or a loader of (x, y) batches. The softmax is taken on the host, after the forward."""
        outputs = []
        if hasattr(inputs, "__iter__") and not hasattr(inputs, "shape"):
            batches = (x for x, _ in inputs)
        else:
            batches = (inputs[i:i + batch_size] for i in range(0, len(inputs), batch_size))
        for x in batches:
            logits = self.model.forward(_device.asarray(x), training=False)
            outputs.append(_device.asnumpy(logits).astype(np.float64))
        return softmax(np.concatenate(outputs) if outputs else np.zeros((0, 0)))

    # ----------------------------------------------------------------------- checkpoints
    def random_state(self):
        state = {"library": _random.get_state(),
                 "layers": {str(i): layer.random_state()
                            for i, layer in enumerate(self.model.layers())
                            if layer.random_state()}}
        state["loaders"] = {str(i): loader.state_dict() for i, loader in enumerate(self.loaders)
                            if hasattr(loader, "state_dict")}
        return state

    def set_random_state(self, state):
        if "library" in state:
            _random.set_state(state["library"])
        layers = list(self.model.layers())
        for index, layer_state in state.get("layers", {}).items():
            layers[int(index)].set_random_state(layer_state)
        loader_states = state.get("loaders", {})
        if loader_states and not self.loaders:
            self._pending_loader_state = loader_states     # fit() applies it
        for i, loader in enumerate(self.loaders):
            if str(i) in loader_states:
                loader.load_state_dict(loader_states[str(i)])

    def save_checkpoint(self, path):
        """Everything needed to resume or to predict, written atomically (rank 0 writes; in
        data-parallel training call it on every rank). Saved from a batch callback, in the
        middle of an epoch, it holds the position within the epoch, and resume() continues
        from the next batch, exactly as if never interrupted."""
        position = _resume.position(self) if self._in_epoch is not None else None
        if not self.is_root:
            return None
        trainer_state = {"history": dict(self.history),
                         "callbacks": {str(i): cb.state_dict()
                                       for i, cb in enumerate(self.callbacks)},
                         "callback_types": {str(i): type(cb).__name__
                                            for i, cb in enumerate(self.callbacks)}}
        if self.scheduler is not None:
            trainer_state["scheduler"] = self.scheduler.state_dict()
            trainer_state["scheduler_type"] = type(self.scheduler).__name__
        if position is not None:
            trainer_state["position"] = position
        return save_checkpoint(path, model=self.model, optimizer=self.optimizer,
                               epoch=self.epoch, step=self.step, config=self.config,
                               classes=self.classes, normalization=self.normalization,
                               rng=self.random_state(), trainer=trainer_state)

    def resume(self, path, strict=True):
        """Continue from a checkpoint: model, optimizer, scheduler, counters, history,
        callbacks and random states (the loaders' states are applied when fit() receives the
        loaders; a mid-epoch checkpoint's position too). Then call fit() with the same total
        number of epochs.

        Everything in the checkpoint is checked before anything is changed: a damaged or
        mismatched checkpoint is one CheckpointError saying what is wrong, and the trainer is
        left exactly as it was. strict=False lets the checkpoint hold the state of callbacks
        this trainer no longer has (it is ignored)."""
        checkpoint = load_checkpoint(path, model=self.model)
        _resume.apply(self, checkpoint, strict)
        return checkpoint
