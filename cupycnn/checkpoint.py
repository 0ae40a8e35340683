"""Checkpoints in HDF5: everything needed to resume training exactly or to predict.

A checkpoint file holds
    /model          the model's state_dict (parameters and buffers, PyTorch's names)
    /optimizer      the optimizer's state_dict (per-parameter state, group hyperparameters)
    /trainer        epoch, step, history, callback state
    /rng            random states (the library generator, loaders, transforms, dropout layers)
    attributes      format, version, the model's configuration (to rebuild it), class names,
                    input normalisation, creation time, library version

Saving is atomic: the file is written beside its destination under a temporary name, flushed to
disk, then renamed over the destination, so an interrupted save (a crash, a full disk, a killed
job) leaves the previous checkpoint intact. Loading checks the format and says exactly what is
wrong with a file that is not a checkpoint, is truncated or corrupt, or does not match the model.
"""
import datetime
import json
import os
import tempfile
from pathlib import Path

import numpy as np

FORMAT = "cupycnn-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is missing, unreadable, not a cupycnn checkpoint, or does not match."""


# ------------------------------------------------------------------ nested values <-> HDF5

def _write_tree(group, tree):
    """dict -> group: arrays become datasets, dicts subgroups, anything else a JSON attribute.
    Keys are stored as strings; their original types (int keys of optimizer state) are kept in
    the group's `__keys__` attribute."""
    keys = []
    for key, value in tree.items():
        name = str(key)
        if "/" in name or name.startswith("__"):
            raise CheckpointError(f"checkpoint key {name!r} cannot be stored")
        keys.append([name, "int" if isinstance(key, (int, np.integer)) else "str"])
        if isinstance(value, dict):
            _write_tree(group.create_group(name), value)
        elif _is_array(value):
            group.create_dataset(name, data=_to_host(value))
        else:
            group.attrs[name] = json.dumps(_jsonable(value))
    group.attrs["__keys__"] = json.dumps(keys)


def _read_tree(group):
    out = {}
    for name, kind in json.loads(group.attrs["__keys__"]):
        key = int(name) if kind == "int" else name
        if name in group:
            item = group[name]
            out[key] = _read_tree(item) if hasattr(item, "keys") else item[()]
        else:
            out[key] = json.loads(group.attrs[name])
    return out


def _is_array(value):
    return isinstance(value, np.ndarray) or type(value).__module__.startswith("cupy")


def _to_host(value):
    from .devices import asnumpy
    return np.asarray(asnumpy(value))


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------- saving

def save_checkpoint(path, *, model, optimizer=None, epoch=0, step=0, config=None, classes=None,
                    normalization=None, rng=None, trainer=None):
    """Write a checkpoint atomically to `path`; returns the path.

    model: a Layer (its state_dict is saved); optimizer: anything with state_dict();
    config: JSON-able description to rebuild the model (e.g. {"name": "resnet18", ...});
    classes: class names; normalization: {"mean": [...], "std": [...]} of the inputs;
    rng: random states (JSON-able or arrays); trainer: history and callback state.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        with h5py.File(partial, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
            from . import __version__
            f.attrs["cupycnn_version"] = __version__
            f.attrs["epoch"] = int(epoch)
            f.attrs["step"] = int(step)
            f.attrs["config"] = json.dumps(_jsonable(config or {}))
            f.attrs["classes"] = json.dumps(list(classes) if classes is not None else None)
            f.attrs["normalization"] = json.dumps(_jsonable(normalization))
            model_group = f.create_group("model", track_order=True)   # state_dict order
            for name, value in model.state_dict().items():
                model_group.create_dataset(name, data=value)
            if optimizer is not None:
                _write_tree(f.create_group("optimizer"), optimizer.state_dict())
            _write_tree(f.create_group("rng"), rng or {})
            _write_tree(f.create_group("trainer"), trainer or {})
            f.flush()
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return path


# -------------------------------------------------------------------------------- loading

class Checkpoint:
    """What load_checkpoint read: model_state (OrderedDict of arrays), optimizer_state, epoch,
    step, config, classes, normalization, rng, trainer, path."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def restore(self, model, optimizer=None):
        """Load the model (and optimizer) state, with a clear message on any mismatch."""
        try:
            model.load_state_dict(self.model_state)
        except ValueError as e:
            raise CheckpointError(f"{self.path}: the checkpoint does not match the model "
                                  f"({_describe(self.config)}): {e}") from None
        if optimizer is not None:
            if self.optimizer_state is None:
                raise CheckpointError(f"{self.path}: holds no optimizer state to resume from")
            try:
                optimizer.load_state_dict(self.optimizer_state)
            except ValueError as e:
                raise CheckpointError(f"{self.path}: the optimizer state does not match: {e}") \
                    from None


def _describe(config):
    return ", ".join(f"{k}={v}" for k, v in (config or {}).items()) or "no configuration saved"


def load_checkpoint(path):
    """Read a checkpoint written by save_checkpoint; CheckpointError says what is wrong."""
    import collections

    import h5py

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"{path} is not a readable HDF5 file (truncated or corrupt?): "
                              f"{e}") from None
    try:
        with f:
            if f.attrs.get("format") != FORMAT:
                raise CheckpointError(f"{path} is an HDF5 file but not a cupycnn checkpoint "
                                      f"(format attribute {f.attrs.get('format')!r})")
            version = int(f.attrs["version"])
            if version > VERSION:
                raise CheckpointError(f"{path} was written by a newer cupycnn (checkpoint "
                                      f"version {version}; this one reads up to {VERSION})")
            model_state = collections.OrderedDict(
                (name, f["model"][name][()]) for name in f["model"].keys())
            return Checkpoint(
                path=path, version=version, epoch=int(f.attrs["epoch"]),
                step=int(f.attrs["step"]), config=json.loads(f.attrs["config"]),
                classes=json.loads(f.attrs["classes"]),
                normalization=json.loads(f.attrs["normalization"]),
                created=str(f.attrs["created"]), model_state=model_state,
                optimizer_state=_read_tree(f["optimizer"]) if "optimizer" in f else None,
                rng=_read_tree(f["rng"]), trainer=_read_tree(f["trainer"]))
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: the checkpoint is damaged ({type(e).__name__}: {e})") \
            from None
