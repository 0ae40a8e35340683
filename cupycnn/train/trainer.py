"""The training loop: fit, evaluate, predict, checkpoints and exact resumption.

    trainer = Trainer(model, optimizer, SoftmaxCrossEntropy(), scheduler=schedule,
                      callbacks=[EarlyStopping(patience=5), CSVLogger("log.csv")])
    history = trainer.fit(train_loader, epochs=30, val_loader=val_loader)
    history = trainer.fit(x, y, epochs=30, batch_size=64, validation_data=(x_val, y_val))

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
import warnings

import numpy as np

from .. import devices as _device
from .. import random as _random
from ..checkpoint import load_checkpoint, save_checkpoint
from ..layers import without_input_grad
from ..layers.base import check_registered, training_mode
from ..ops import metrics as metric_ops
from ..ops._check import check_device_array, check_int_array, check_integer
from ..ops._storage import as_activation, decode
from ..ops.softmax_xent import check_labels_on_host, labels_to_int32
from ..progress import Progress
from ..reference.softmax_xent import softmax
from ..data.transforms import Transform
from ..models.description import NotDescribable, describe
from . import resume as _resume
from .arrays import array_loader, is_array, refuse_a_list_of_arrays
from .callbacks import Callback


def _images_per_batch(loader):
    """What one batch of this rank stands for in the progress bar's images/s: the batch of
    every rank together (a sharded loader's batch times its world size), so the bar shows the
    job's throughput, as the epoch line does."""
    return getattr(loader, "batch_size", 1) * getattr(loader, "world_size", 1)


class History(dict):
    """{figure name: [one value per epoch]}; "epoch" lists the epoch numbers (from 1). Every
    list has one entry per epoch: a figure an epoch did not report is None there. Keras's
    `history.history["val_accuracy"]` reads it too."""

    @property
    def history(self):
        return self

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


def _refuse_no_batch(what, loader):
    """A loader that makes no batch (6 items, batch_size 7, drop_last) would train epochs of
    nothing, loss nan: a ValueError before anything changes."""
    try:
        empty = loader is not None and len(loader) == 0
    except TypeError:                   # an iterable without a length: it says as it goes
        return
    if empty:
        dataset = getattr(loader, "dataset", None)
        detail = ""
        if hasattr(dataset, "__len__") and hasattr(loader, "batch_size"):
            detail = (f" ({len(dataset)} items, batch_size={loader.batch_size}, drop_last="
                      f"{getattr(loader, 'drop_last', False)}, world_size="
                      f"{getattr(loader, 'world_size', 1)})")
        raise ValueError(f"fit: the {what} loader makes no batch{detail}; give it more items "
                         f"or a smaller batch_size")


class Trainer:
    """Trains `model` with `optimizer` on `loss` (SoftmaxCrossEntropy by default).

    scheduler: a learning-rate schedule stepped every epoch, or every optimizer step with
    scheduler_interval="step" (one-cycle); ReduceLROnPlateau is the callback of that name.
    distributed: a cupycnn.distributed context (gradient all-reduce, metric sums, rank 0 only
    printing and writing); None trains on one process.
    config, classes, normalization: saved in checkpoints so that a model can be rebuilt and fed
    (examples/predict.py). The config is completed with the model's architecture (any model of
    library layers) and its input shape (checkpoint_config); the normalization, when not given,
    comes from fit: the images' statistics for arrays, a loader's Normalize or augmentation.
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
        check_registered(model, "Trainer")       # layers in a list would train unseen
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
        self._array_seed = None     # the shuffling seed of fit(x, y) on arrays (checkpointed)
        self.input_shape = None     # of one example, from the first training batch
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
        if self.input_shape is None:            # for the checkpoint's config
            self.input_shape = tuple(int(s) for s in x.shape[1:])
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
        logits = self.model.forward(as_activation(x), training=True)
        self._classes_seen = int(logits.shape[1]) if len(logits.shape) == 2 else None
        loss = self.loss.forward(logits, y)
        dy = self.loss.backward()
        with without_input_grad(self.model):           # the images' gradient: never read
            if self.distributed is not None:
                self.distributed.backward(self.model, dy, self.optimizer)
            else:
                self.model.backward(dy)
        self.optimizer.step()
        metric_ops.accumulate_metrics(logits, y, loss, sums)

    def fit(self, x, y=None, epochs=1, *, batch_size=None, validation_data=None,
            validation_split=None, val_loader=None, shuffle=True, seed=None, stop_at=None):
        """Train until `epochs` epochs are complete (counting those before a resume), or a
        callback stops training, or (stop_at) that many epochs are complete: a run cut into
        pieces, each resumed from the last checkpoint. Returns the history.

        The data, as Keras or PyTorch users hold it:
            fit(x, y, epochs=10, batch_size=32, validation_data=(x_val, y_val))   NumPy arrays
            fit(loader, epochs=10, val_loader=val_loader)         a Loader (or any iterable
                                                                   of (x, y) batches)
        Arrays (uint8 or float images, or network input: cupycnn/train/arrays.py) are served in
        batches of `batch_size` (32 by default), reshuffled every epoch when `shuffle` (the
        order from `seed`, drawn once from cupycnn.random when None, and kept in checkpoints).
        `validation_data` is (x_val, y_val) arrays or a loader; `val_loader` is the same;
        `validation_split=f` (arrays) holds out the last fraction f of x and y, before any
        shuffling, as Keras does. `epochs` counts the epochs already trained (Keras's `epochs`
        with `initial_epoch`): a second fit(..., epochs=3) after 3 epochs trains none, and
        says so. The model trains in training mode; each layer gets its own mode back at the
        end, also when training stops on an error."""
        if not is_array(x) and isinstance(y, (int, np.integer)) and not isinstance(y, bool):
            epochs, y = int(y), None                      # fit(loader, epochs), positionally
        check_integer("fit", "epochs", epochs, 0)         # 2.5 is not 3, True is not 1
        if stop_at is not None:
            check_integer("fit", "stop_at", stop_at, 0)
        if validation_data is not None and val_loader is not None:
            raise ValueError("fit: give validation_data or val_loader, not both")
        val = validation_data if validation_data is not None else val_loader
        if self.optimizer is None:
            raise ValueError("fit: the trainer has no optimizer (Trainer(model, None) evaluates "
                             "and predicts): Trainer(model, Adam(model.parameters()))")
        refuse_a_list_of_arrays(x, "fit")
        if validation_split is not None:
            x, y, val = self._split_off_validation(x, y, val, validation_split)
        if is_array(x):
            if y is None:
                raise ValueError("fit: arrays need their labels: fit(x, y, ...)")
            if seed is None:
                if self._array_seed is None:
                    self._array_seed = int(_random.next_seed())
                seed = self._array_seed
            train_loader = array_loader(self, x, y, 32 if batch_size is None else batch_size,
                                        who="fit", shuffle=shuffle, seed=seed, train=True)
        else:
            if y is not None or batch_size is not None:
                raise ValueError("fit: a loader brings its own labels and batch size; y and "
                                 "batch_size are for arrays: fit(x, y, batch_size=...)")
            train_loader = x
        if isinstance(val, (tuple, list)):
            if len(val) != 2 or not is_array(val[0]):
                raise ValueError("fit: validation_data must be (x_val, y_val) arrays or a "
                                 "loader")
            val = array_loader(self, val[0], val[1], batch_size or 256,
                               who="fit validation_data")
        val_loader = val
        for what, loader in (("training", train_loader), ("validation", val_loader)):
            _refuse_no_batch(what, loader)
        transform = getattr(train_loader, "transform", None)
        if self.normalization is None and isinstance(transform, Transform):
            self.normalization = {"mean": np.atleast_1d(transform.mean).tolist(),
                                  "std": np.atleast_1d(transform.std).tolist()}
        self.loaders = [train_loader] + ([val_loader] if val_loader is not None else [])
        if self._pending_loader_state:
            self.set_random_state({"loaders": self._pending_loader_state})
            self._pending_loader_state = None
        self.stop_training = False
        position, self._position = self._position, None
        self._callbacks("on_train_begin", {})
        logs = {}
        last = epochs if stop_at is None else min(epochs, stop_at)
        if self.epoch >= epochs and self.is_root:
            warnings.warn(f"fit: nothing to train: {self.epoch} epoch(s) are already done and "
                          f"epochs={epochs} counts them (as Keras's epochs with initial_epoch); "
                          f"for n more, fit(..., epochs={self.epoch} + n)", stacklevel=2)
        with training_mode(self.model, True):       # each layer's own mode comes back at the end
            logs = self._fit_epochs(train_loader, val_loader, epochs, last, logs, position)
        self._callbacks("on_train_end", logs)
        return self.history

    def _split_off_validation(self, x, y, val, fraction):
        """(x, y, (x_val, y_val)): Keras's validation_split, the last `fraction` of the rows."""
        if not is_array(x):
            raise ValueError("fit: validation_split splits arrays; a loader's validation set "
                             "is a loader: fit(loader, val_loader=...)")
        if val is not None:
            raise ValueError("fit: give validation_split or validation_data, not both")
        if not isinstance(fraction, (float, int, np.floating)) or not 0 < fraction < 1:
            raise ValueError(f"fit: validation_split must be a fraction between 0 and 1, got "
                             f"{fraction!r}")
        if y is None or not hasattr(y, "__len__") or len(y) != len(x):
            return x, y, None               # the labels' own check says what is wrong
        split = int(np.floor(len(x) * (1.0 - fraction)))
        if split < 1 or split == len(x):
            raise ValueError(f"fit: validation_split={fraction} of {len(x)} rows leaves "
                             f"{split} for training and {len(x) - split} for validation; "
                             f"both need at least one")
        return x[:split], y[:split], (x[split:], y[split:])

    def _fit_epochs(self, train_loader, val_loader, epochs, last, logs, position=None):
        """The epochs of fit; `position`: a mid-epoch checkpoint's, where the first starts."""
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
                           unit_scale=_images_per_batch(train_loader))
            bar.done = start
            started = time.perf_counter()
            self._in_epoch = {"epoch": epoch, "batch": start, "batches": len(train_loader),
                              "sums": sums, "lr": lr, "started": started,
                              "seconds_before": seconds_before}
            for x, y in train_loader:
                lr = self.optimizer.param_groups[0]["lr"]     # the epoch logs its last step's
                self.train_step(x, y, sums)
                self._in_epoch["batch"] += 1
                self._in_epoch["lr"] = lr
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
        return logs

    # ------------------------------------------------------------------------ evaluation
    def evaluate(self, loader, y=None, *, batch_size=256, desc="evaluate"):
        """Mean loss and accuracy over the whole dataset of `loader` (all ranks together):
        {"loss", "accuracy", "count"}; or over arrays, evaluate(x, y) (cupycnn/train/arrays.py).
        A Loader is read in dataset order, every example once (Loader.in_order: no shuffling,
        dropped batch or padding, whatever it was built with); the model runs in evaluation
        mode and gets its previous modes back."""
        refuse_a_list_of_arrays(loader, "evaluate")
        if is_array(loader):
            if y is None:
                raise ValueError("evaluate: arrays need their labels: evaluate(x, y)")
            loader = array_loader(self, loader, y, batch_size, who="evaluate")
        elif y is not None:
            raise ValueError("evaluate: a loader brings its own labels; y is for arrays")
        if hasattr(loader, "in_order"):
            loader = loader.in_order()
        sums = metric_ops.new_sums()
        bar = Progress(total=len(loader), desc=desc, unit="batch",
                       enabled=self.progress and self.is_root,
                       unit_scale=_images_per_batch(loader))
        with training_mode(self.model, False):
            for x, y in loader:
                y = self._labels("Trainer.evaluate", x, y)
                logits = self.model.forward(as_activation(x), training=False)
                loss = self.loss.forward(logits, y)
                metric_ops.accumulate_metrics(logits, y, loss, sums)
                bar.update(1)
        self._allreduce_sums(sums)
        loss, accuracy, count = metric_ops.read_sums(sums)
        bar.set_metrics(loss=loss, acc=accuracy)
        bar.close()
        return {"loss": loss, "accuracy": accuracy, "count": count}

    def predict(self, inputs, batch_size=256):
        """Class probabilities [N, classes] (NumPy), row i for example i: for arrays (images
        or network input, cupycnn/train/arrays.py; on each rank alone) or a loader of (x, y)
        batches. A Loader is read in dataset order (Loader.in_order), whatever its shuffling;
        a Loader sharded over the ranks of the trainer's data-parallel context gives every rank
        the whole dataset's rows (each rank predicts its share, then the shares are gathered
        and put in place by Loader.positions(): every rank must call it). Tar shards and
        TFRecords: row k is the k-th sample of the files in order, with any number of
        decoding workers. The model runs in evaluation mode and gets its previous modes
        back; the softmax is taken on the host."""
        outputs = []
        gather = None
        refuse_a_list_of_arrays(inputs, "predict")
        if is_array(inputs):
            inputs = array_loader(self, inputs, None, batch_size, who="predict", shard=False)
        if hasattr(inputs, "in_order"):
            inputs = inputs.in_order()
            if inputs.world_size > 1 and (self.distributed is None
                                          or self.distributed.size != inputs.world_size):
                raise ValueError(f"predict: the loader is rank {inputs.rank} of "
                                 f"{inputs.world_size} shards, but the trainer has no "
                                 f"data-parallel context of {inputs.world_size} ranks to "
                                 f"gather the other shards from")
            gather = (len(inputs.dataset), inputs.positions())
        batches = (x for x, _ in inputs)
        with training_mode(self.model, False):
            for x in batches:
                logits = self.model.forward(as_activation(_device.asarray(x)),
                                            training=False)
                outputs.append(decode(_device.asnumpy(logits)).astype(np.float64))
        logits = np.concatenate(outputs) if outputs else np.zeros((0, 0))
        if gather is not None:        # each row to its dataset position, every rank's rows
            n, positions = gather
            if len(positions) != len(logits):
                raise ValueError(f"predict: the loader served {len(logits)} examples where its "
                                 f"plan has {len(positions)} (unreadable images skipped?): "
                                 f"their dataset positions are unknown")
            if inputs.world_size > 1:
                shares = self.distributed.allgather((positions, logits))
                positions = np.concatenate([share[0] for share in shares])
                logits = np.concatenate([share[1] for share in shares])
            if len(positions) != n or not np.array_equal(np.sort(positions), np.arange(n)):
                raise ValueError(f"predict: the loaders of the {inputs.world_size} rank(s) "
                                 f"served {len(positions)} examples, not each of the "
                                 f"dataset's {n} once")
            ordered = np.empty_like(logits)
            ordered[positions] = logits
            logits = ordered
        return softmax(logits)

    def record_test(self, result):
        """Hand the test set's figures (what evaluate returned) to the callbacks' on_test_end:
        the CSV log and TensorBoard get them beside the epochs'."""
        logs = {f"test_{k}": v for k, v in result.items()}
        self._callbacks("on_test_end", logs)
        return logs

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
        if self._array_seed is not None:
            trainer_state["array_seed"] = self._array_seed
        return save_checkpoint(path, model=self.model, optimizer=self.optimizer,
                               epoch=self.epoch, step=self.step, config=self.checkpoint_config(),
                               classes=self.classes, normalization=self.normalization,
                               rng=self.random_state(), trainer=trainer_state)

    def checkpoint_config(self):
        """The config a checkpoint gets: the one given to the Trainer, completed with what
        rebuilding and feeding the model needs (examples/predict.py, cupycnn.predict): the
        model's architecture when it is made of library layers (or, when it is not, why not),
        and the input shape of the training batches."""
        config = dict(self.config or {})
        if "architecture" not in config:
            try:
                config["architecture"] = describe(self.model)
            except NotDescribable as e:
                config["architecture_missing"] = str(e)
        if "input_shape" not in config and self.input_shape is not None:
            config["input_shape"] = list(self.input_shape)
            config.setdefault("resize", None)
            config.setdefault("crop", False)
        return config

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
