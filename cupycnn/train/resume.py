"""Resuming a Trainer: check everything in the checkpoint, then change anything.

`apply(trainer, checkpoint)` (what Trainer.resume calls) first checks every part of the
checkpoint against the trainer it goes into, as data: the model's names and shapes (read before
the tensors, by load_checkpoint), the optimizer's group layout, the counters, the history (one
number or None per epoch and figure), the schedule (the same kind, every field of the same
form), every callback's state (matched by kind, each field of the form the callback's own state
has), the random states (the library's generator, each random layer's, each loader's) and a
mid-epoch position. A problem is one CheckpointError saying what is wrong. Only then is
anything changed, and should a change still fail (a callback's own load_state_dict raising),
everything is put back as it was before resume() began: the trainer is never half-restored.

A mid-epoch checkpoint (saved from a batch callback) holds its position: the epoch, the batches
done, the running sums of loss and hits (every rank's), the epoch's learning rate and time so
far. fit() then starts that epoch at the next batch (`Loader.set_epoch(epoch, start_batch)`), so
the run continues exactly, bitwise, as one never interrupted.
"""
import copy
import math
import time

import numpy as np

from .. import devices as _device
from .. import random as _random
from ..checkpoint import CheckpointError

POSITION_FIELDS = {"epoch", "batch", "batches", "sums", "lr", "seconds", "world_size"}
TRAINER_FIELDS = {"history", "callbacks", "callback_types", "scheduler", "scheduler_type",
                  "position", "array_seed"}


def _world(trainer):
    return 1 if trainer.distributed is None else int(trainer.distributed.size)


def _rank(trainer):
    return 0 if trainer.distributed is None else int(trainer.distributed.rank)


# --------------------------------------------------------------------- the position itself

def position(trainer):
    """The position within the current epoch, to save (call on every rank: the running sums
    of all ranks are gathered)."""
    info = trainer._in_epoch
    loader = trainer.loaders[0] if trainer.loaders else None
    if not _can_start_mid_epoch(loader):
        raise CheckpointError(
            f"cannot save in the middle of an epoch: the training loader "
            f"({type(loader).__name__}) cannot start an epoch at a given batch "
            f"(cupycnn.data.Loader can: set_epoch(epoch, start_batch)); save at the end of an "
            f"epoch instead (ModelCheckpoint does)")
    sums = np.asarray(_device.asnumpy(info["sums"]), dtype=np.float64).reshape(-1)
    everyone = [sums.tolist()] if trainer.distributed is None else \
        trainer.distributed.allgather(sums.tolist())
    return {"epoch": int(info["epoch"]), "batch": int(info["batch"]),
            "batches": int(info["batches"]), "sums": np.array(everyone, dtype=np.float64),
            "lr": float(info["lr"]),
            "seconds": float(info["seconds_before"] + time.perf_counter() - info["started"]),
            "world_size": _world(trainer)}


def start_mid_epoch(trainer, position, loader, epoch, sums):
    """Set up the epoch of a mid-epoch checkpoint: the loader starts at the batch after the
    last one done (Loader.set_epoch(epoch, start_batch)), the sums go on from the saved ones.
    Returns (first batch, the epoch's lr, seconds already spent)."""
    if not _can_start_mid_epoch(loader):
        raise CheckpointError(f"the checkpoint was saved in the middle of an epoch, and this "
                              f"training loader ({type(loader).__name__}) cannot start an epoch "
                              f"at a given batch (cupycnn.data.Loader can)")
    if position["batches"] != len(loader):
        raise CheckpointError(f"the checkpoint was saved at batch {position['batch']} of an "
                              f"epoch of {position['batches']} batches; this training loader "
                              f"has {len(loader)} batches per epoch (another dataset, batch "
                              f"size or number of ranks?)")
    sums[...] = _device.asarray(np.asarray(position["sums"], np.float64)[_rank(trainer)])
    loader.set_epoch(epoch, start_batch=position["batch"])
    return position["batch"], position["lr"], position["seconds"]


def _can_start_mid_epoch(loader):
    import inspect
    try:
        return "start_batch" in inspect.signature(loader.set_epoch).parameters
    except (AttributeError, TypeError, ValueError):
        return False


# -------------------------------------------------------------------------------- checks

class _Checks:
    def __init__(self, where):
        self.where = where

    def bad(self, message):
        return CheckpointError(f"{self.where}: cannot resume from it: {message}")

    def same_form(self, current, saved, what):
        """`saved` must have the form of `current` (a fresh object's own state): the same keys,
        lengths and kinds of values; where `current` is None anything goes."""
        if current is None:
            return
        if isinstance(current, dict):
            if not isinstance(saved, dict):
                raise self.bad(f"{what} is {_kind(saved)}, expected a dict")
            missing = [k for k in current if k not in saved]
            unexpected = [k for k in saved if k not in current]
            if missing or unexpected:
                raise self.bad(f"{what} " + "; ".join(
                    ([f"lacks {', '.join(map(str, missing))}"] if missing else []) +
                    ([f"has unexpected {', '.join(map(str, unexpected))}"]
                     if unexpected else [])))
            for key in current:
                self.same_form(current[key], saved[key], f"{what}.{key}")
        elif isinstance(current, (list, tuple)):
            if not isinstance(saved, (list, tuple)) or len(saved) != len(current):
                raise self.bad(f"{what} is {_kind(saved)}, expected {len(current)} values")
            for i, (a, b) in enumerate(zip(current, saved)):
                self.same_form(a, b, f"{what}[{i}]")
        elif isinstance(current, (bool, np.bool_)):
            if not isinstance(saved, (bool, np.bool_)):
                raise self.bad(f"{what} is {_kind(saved)}, expected true or false")
        elif isinstance(current, (int, float, np.number)):
            if not _is_number(saved):
                raise self.bad(f"{what} is {_kind(saved)}, expected a number")
        elif isinstance(current, str):
            if not isinstance(saved, str):
                raise self.bad(f"{what} is {_kind(saved)}, expected a string")
        elif isinstance(current, np.ndarray) or _device.is_device_array(current):
            if not isinstance(saved, np.ndarray) or saved.shape != tuple(current.shape):
                raise self.bad(f"{what} is {_kind(saved)}, expected an array of shape "
                               f"{tuple(current.shape)}")

    def count(self, value, what, low=0):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise self.bad(f"{what} is {_kind(value)}, expected an integer of at least {low}")
        return int(value)


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, (bool, np.bool_))


def _kind(value):
    text = repr(value)
    text = text if len(text) <= 40 else text[:40] + "..."
    return f"{type(value).__name__} {text}"


def _plan(trainer, checkpoint, strict):
    """Check the checkpoint against the trainer; return the changes to make, in order."""
    c = _Checks(str(checkpoint.path))
    plan = []
    if checkpoint.optimizer_state is None:
        raise c.bad("it holds no optimizer state")
    state = checkpoint.trainer
    if not isinstance(state, dict):
        raise c.bad(f"its trainer state is {_kind(state)}")
    unknown = sorted(set(state) - TRAINER_FIELDS)
    if unknown:
        raise c.bad(f"its trainer state has unknown fields {', '.join(unknown)}")
    epoch, step = c.count(checkpoint.epoch, "its epoch"), c.count(checkpoint.step, "its step")
    history = _check_history(c, state.get("history", {}), epoch)
    plan.append(lambda: _set_counters(trainer, epoch, step, history))
    plan += _check_schedule(c, trainer, state)
    plan += _check_callbacks(c, trainer, state, strict)
    plan += _check_random_states(c, trainer, checkpoint.rng)
    if "array_seed" in state:                  # fit(x, y) on arrays: the shuffling seed
        seed = c.count(state["array_seed"], "its array shuffling seed")
        plan.append(lambda: setattr(trainer, "_array_seed", seed))
    if trainer.normalization is None and checkpoint.normalization is not None:
        normalization = _check_normalization(c, checkpoint.normalization)
        plan.append(lambda: setattr(trainer, "normalization", normalization))
    if state.get("position") is not None:
        position = _check_position(c, trainer, state["position"], epoch)
        plan.append(lambda: setattr(trainer, "_position", position))
    else:
        plan.append(lambda: setattr(trainer, "_position", None))
    return plan


def _check_normalization(c, normalization):
    """What fit(x, y) on images computed: {"mean": [...], "std": [...]}, finite, std > 0."""
    ok = isinstance(normalization, dict) and set(normalization) == {"mean", "std"}
    values = {}
    for key in ("mean", "std") if ok else ():
        v = normalization[key]
        v = v if isinstance(v, list) else [v]
        ok = ok and 0 < len(v) <= 4096 and all(_is_number(x) and math.isfinite(x) for x in v)
        values[key] = [float(x) for x in v] if ok else None
    if not ok or not all(x > 0 for x in values["std"]):
        raise c.bad(f"its input normalization is {_kind(normalization)}, expected "
                    f'{{"mean": [...], "std": [...]}} of finite numbers, std > 0')
    return values


def _set_counters(trainer, epoch, step, history):
    trainer.epoch, trainer.step = epoch, step
    trainer.history = type(trainer.history)({k: list(v) for k, v in history.items()})  # History


def _check_history(c, history, epoch):
    if not isinstance(history, dict):
        raise c.bad(f"its history is {_kind(history)}, not {{figure: [one value per epoch]}}")
    if not history:
        return {}
    numbers = history.get("epoch")
    if numbers != list(range(1, epoch + 1)):
        raise c.bad(f"its history's epochs are {_kind(numbers)}; after {epoch} epochs they "
                    f"are 1 to {epoch}")
    for name, values in history.items():
        if not isinstance(values, list) or len(values) != epoch:
            raise c.bad(f"its history of {name!r} is {_kind(values)}, not {epoch} values")
        for i, value in enumerate(values):
            if value is not None and not _is_number(value):
                raise c.bad(f"its history of {name!r} holds {_kind(value)} at epoch {i + 1}")
    return history


def _check_schedule(c, trainer, state):
    saved, kind = state.get("scheduler"), state.get("scheduler_type")
    schedule = trainer.scheduler
    if schedule is None:
        if saved is not None:
            raise c.bad(f"it was saved with a {kind or 'learning-rate'} schedule and this "
                        f"trainer has none")
        return []
    name = type(schedule).__name__
    if saved is None:
        raise c.bad(f"it holds no learning-rate schedule state and this trainer has a {name} "
                    f"schedule (resuming would restart it)")
    if kind is not None and kind != name:
        raise c.bad(f"it was saved with a {kind} schedule, this trainer has a {name}")
    c.same_form(schedule.state_dict(), saved, f"its {name} schedule state")
    return [lambda: schedule.load_state_dict(copy.deepcopy(saved))]


def _check_callbacks(c, trainer, state, strict):
    states = state.get("callbacks", {})
    types = state.get("callback_types")
    if not isinstance(states, dict) or (types is not None and not isinstance(types, dict)):
        raise c.bad(f"its callback states are {_kind(states)}")
    by_kind = {}
    for cb in trainer.callbacks:
        by_kind.setdefault(type(cb).__name__, []).append(cb)
    seen = {}
    plan = []
    for index in sorted(states, key=lambda k: (len(str(k)), str(k))):
        saved = states[index]
        if types is None:                          # older checkpoints: by position
            i = int(index) if str(index).isdigit() else -1
            target = trainer.callbacks[i] if 0 <= i < len(trainer.callbacks) else None
            name = type(target).__name__ if target is not None else f"number {index}"
        else:
            name = types.get(index)
            if not isinstance(name, str):
                raise c.bad(f"callback {index} has no recorded kind")
            k = seen[name] = seen.get(name, -1) + 1
            candidates = by_kind.get(name, [])
            target = candidates[k] if k < len(candidates) else None
        if not isinstance(saved, dict):
            raise c.bad(f"the state of its {name} callback is {_kind(saved)}")
        if target is None:
            if saved and strict:
                raise c.bad(f"it holds the state of a {name} callback, which this trainer "
                            f"does not have (resume(path, strict=False) ignores it)")
            continue
        c.same_form(target.state_dict(), saved, f"the state of its {name} callback")
        plan.append(lambda target=target, saved=saved: target.load_state_dict(
            copy.deepcopy(saved)))
    return plan


def _check_random_states(c, trainer, rng):
    if not isinstance(rng, dict):
        raise c.bad(f"its random states are {_kind(rng)}")
    unknown = sorted(set(rng) - {"library", "layers", "loaders"})
    if unknown:
        raise c.bad(f"its random states have unknown fields {', '.join(unknown)}")
    plan = []
    if "library" in rng:
        scratch = type(_random.generator().bit_generator)()
        try:
            scratch.state = copy.deepcopy(rng["library"])
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise c.bad(f"its random generator state is not a "
                        f"{type(scratch).__name__} state ({e})") from None
        plan.append(lambda: _random.set_state(copy.deepcopy(rng["library"])))
    layers = list(trainer.model.layers())
    saved_layers = rng.get("layers", {})
    if not isinstance(saved_layers, dict):
        raise c.bad(f"its layers' random states are {_kind(saved_layers)}")
    for index, saved in saved_layers.items():
        if not str(index).isdigit() or int(index) >= len(layers):
            raise c.bad(f"it holds the random state of layer {index}, and the model has "
                        f"{len(layers)} layers")
        layer = layers[int(index)]
        current = layer.random_state()
        if not current:
            raise c.bad(f"it holds a random state for layer {index} ({layer!r}), which has "
                        f"none")
        c.same_form(current, saved, f"the random state of layer {index} ({layer!r})")
        _check_counts(c, saved, f"the random state of layer {index}")
        plan.append(lambda layer=layer, saved=saved: layer.set_random_state(saved))
    loaders = rng.get("loaders", {})
    if not isinstance(loaders, dict):
        raise c.bad(f"its loaders' random states are {_kind(loaders)}")
    for index, saved in loaders.items():
        if not isinstance(saved, dict) or "epoch" not in saved:
            raise c.bad(f"the state of its loader {index} is {_kind(saved)}")
        c.count(saved["epoch"], f"the next epoch of its loader {index}")
        i = int(index) if str(index).isdigit() else -1
        if 0 <= i < len(trainer.loaders) and hasattr(trainer.loaders[i], "state_dict"):
            c.same_form(trainer.loaders[i].state_dict(), saved, f"the state of its loader {index}")
        _check_counts(c, saved.get("transform", {}), f"the transform state of its loader {index}")
    if loaders:
        plan.append(lambda: trainer.set_random_state({"loaders": copy.deepcopy(loaders)}))
    return plan


def _check_counts(c, tree, what):
    """Seeds and counters: non-negative integers, wherever they are."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            _check_counts(c, value, f"{what}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            _check_counts(c, value, f"{what}[{i}]")
    else:
        c.count(tree, what)


def _check_position(c, trainer, position, epoch):
    if not isinstance(position, dict) or set(position) != POSITION_FIELDS:
        raise c.bad(f"its position within the epoch is {_kind(position)}")
    if position["epoch"] != epoch:
        raise c.bad(f"its position is in epoch {position['epoch']!r}, after {epoch} epochs")
    batches = c.count(position["batches"], "the batches of its epoch", low=1)
    batch = c.count(position["batch"], "its batch within the epoch")
    if batch > batches:
        raise c.bad(f"its position is batch {batch} of an epoch of {batches}")
    world = c.count(position["world_size"], "the ranks that saved it", low=1)
    if world != _world(trainer):
        raise c.bad(f"it was saved in the middle of an epoch by {world} rank(s), and this job "
                    f"has {_world(trainer)}: only a checkpoint from the end of an epoch "
                    f"resumes with another number of ranks")
    sums = position["sums"]
    if not isinstance(sums, np.ndarray) or sums.shape != (world, 3) or sums.dtype.kind != "f":
        raise c.bad(f"its running sums are {_kind(sums)}, expected {world} x 3 numbers")
    for key in ("lr", "seconds"):
        if not _is_number(position[key]) or not math.isfinite(position[key]) or \
                position[key] < 0:
            raise c.bad(f"its position's {key} is {_kind(position[key])}")
    return position


# ------------------------------------------------------------------------ change, or not

def _snapshot(trainer):
    return {"model": trainer.model.state_dict(),
            "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
            "scheduler": copy.deepcopy(trainer.scheduler.state_dict())
            if trainer.scheduler is not None else None,
            "callbacks": [copy.deepcopy(cb.state_dict()) for cb in trainer.callbacks],
            "counters": (trainer.epoch, trainer.step, copy.deepcopy(dict(trainer.history))),
            "rng": copy.deepcopy(trainer.random_state()),
            "pending": (copy.deepcopy(trainer._pending_loader_state), trainer._position),
            "data": (trainer._array_seed, copy.deepcopy(trainer.normalization))}


def _rollback(trainer, snapshot):
    trainer.model.load_state_dict(snapshot["model"])
    trainer.optimizer.load_state_dict(snapshot["optimizer"])
    if snapshot["scheduler"] is not None:
        trainer.scheduler.load_state_dict(snapshot["scheduler"])
    for cb, state in zip(trainer.callbacks, snapshot["callbacks"]):
        cb.load_state_dict(state)
    epoch, step, history = snapshot["counters"]
    _set_counters(trainer, epoch, step, history)
    trainer.set_random_state(snapshot["rng"])
    trainer._pending_loader_state, trainer._position = snapshot["pending"]
    trainer._array_seed, trainer.normalization = snapshot["data"]


def apply(trainer, checkpoint, strict=True):
    """Check, then restore (see the module docstring)."""
    plan = _plan(trainer, checkpoint, strict)
    snapshot = _snapshot(trainer)
    try:
        checkpoint.restore(trainer.model, trainer.optimizer)
        for change in plan:
            change()
    except BaseException as e:
        _rollback(trainer, snapshot)
        if isinstance(e, CheckpointError) or not isinstance(e, Exception):
            raise
        raise CheckpointError(f"{checkpoint.path}: cannot resume from it ({type(e).__name__}: "
                              f"{e}); the trainer is as it was before resume()") from None
