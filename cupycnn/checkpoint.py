"""Checkpoints in HDF5: everything needed to resume training exactly or to predict.

A checkpoint file (version 2) is an HDF5 file after a header:
    header          the HDF5 userblock (bytes HDF5 reserves for the application): one line
                    "cupycnn-checkpoint 2 <userblock> <length> <SHA-256>" and a JSON document
                    holding the manifest, the tensor table [[dataset, offset, bytes, SHA-256]]
                    and the SHA-256 of every byte after the userblock
    /model/<name>   the model's state_dict, one dataset per tensor (PyTorch's names)
    /optimizer/<k>, /rng/<k>, /trainer/<k>
                    the arrays of the optimizer state, random states and trainer state
    attributes      format, version, epoch, step, created, cupycnn_version, for a reader's eye
The manifest says everything else, as data:
    epoch, step, config, model_description, classes, normalization,
    model           [{"name", "dataset", "shape", "dtype", "sha256"}, ...] in state_dict order
    optimizer, rng, trainer
                    nested values: {"dict": [[key, "int"|"str", value], ...]},
                    {"list": [value, ...]}, {"json": plain JSON}, {"float": "nan"|"inf"|"-inf"},
                    and arrays {"array": dataset, "shape", "dtype", "sha256"}

Saving is atomic (cupycnn.atomic): written beside its destination, flushed, renamed over it,
with Ctrl-C and SIGTERM held back until the rename; an interrupted or failed save (a crash, a
full disk, a kill -9) leaves the previous checkpoint intact, and the next save removes what a
killed one left.

Loading trusts nothing in the file (docs/RELIABILITY.md):
1. the path must be a regular file (a FIFO would block the open forever);
2. the header's digest and the whole file's are checked before HDF5 parses a byte: a damaged
   file is one CheckpointError naming the tensor the damage falls in (HDF5's parser can loop
   forever on some damaged structures, so damage must never reach it);
3. `safe_hdf5.audit` walks every object before any data is read (what a crafted file, with
   digests recomputed, would try): hard links only, no external or virtual storage, no
   filters, plain numeric datasets that store every byte their shape declares;
4. the manifest must be bounded JSON describing exactly the datasets the file holds, with
   their shapes, dtypes and offsets; with `model=` given, the names and shapes must be the
   model's, all before a byte of tensor data is read;
5. every tensor read must match its SHA-256.
Nothing in a checkpoint is ever run: there is no pickle, and the config and model description
are JSON data, validated as data (`check_data`), never evaluated. Version 1 files (before the
header) still load, through the same audit, with a warning that they cannot be verified.
"""
import datetime
import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np

from . import atomic, safe_hdf5

FORMAT = "cupycnn-checkpoint"
VERSION = 2
MAX_MANIFEST_BYTES = 64 << 20       # the JSON part of a checkpoint (a ResNet-50's: ~100 kB)
MAX_DEPTH = 48                      # nesting of the values in the manifest
MAX_DIMS = 8                        # axes of one tensor
ARRAY_DTYPES = {np.dtype(t).str for t in (np.float16, np.float32, np.float64, np.int8, np.int16,
                                          np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                                          np.uint64, np.bool_)}
SECTIONS = ("optimizer", "rng", "trainer")


class CheckpointError(ValueError):
    """A file that is missing, unreadable, not a cupycnn checkpoint, damaged, hostile, or does
    not match the model it is loaded into."""


class CheckpointWriteError(CheckpointError, atomic.WriteError):
    """A checkpoint could not be written (a full disk, a read-only folder); the previous one is
    kept. Both a CheckpointError and an OSError (`errno` is the underlying one's)."""

    def __init__(self, code, message):
        atomic.WriteError.__init__(self, code, message)

    __str__ = atomic.WriteError.__str__


# --------------------------------------------------------------------- data, never code

def check_data(value, where, depth=0, max_depth=MAX_DEPTH):
    """`value` must be plain JSON data (dict with str keys, list, str, int, finite float, bool,
    None), nested at most max_depth deep: what a config or a model description may hold.
    CheckpointError naming `where` otherwise. Returns the value."""
    if depth > max_depth:
        raise CheckpointError(f"{where} is nested more than {max_depth} deep")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CheckpointError(f"{where} holds the number {value}")
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_data(item, f"{where}[{i}]", depth + 1, max_depth)
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{where} has the key {key!r}, not a string")
            check_data(item, f"{where}.{key}", depth + 1, max_depth)
        return value
    raise CheckpointError(f"{where} holds a {type(value).__name__}, not JSON data")


def _jsonable(value):
    """What the caller gave (NumPy scalars, tuples, Paths) as plain JSON data."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


# ------------------------------------------------------------ nested values <-> manifest

def _non_finite(value):
    return isinstance(value, (float, np.floating)) and not math.isfinite(float(value))


def _is_array(value):
    from .devices import is_cupy_array
    return isinstance(value, np.ndarray) or is_cupy_array(value)


def _to_host(value):
    from .devices import asnumpy
    array = np.asarray(asnumpy(value))
    return array if array.flags.c_contiguous else array.copy(order="C")   # keeps 0-d arrays


def _digest(array):
    array = np.ascontiguousarray(array)
    return hashlib.sha256(memoryview(array.reshape(-1).view(np.uint8)) if array.size else b"") \
        .hexdigest()


def _array_entry(dataset, array):
    if array.dtype.str not in ARRAY_DTYPES:
        raise CheckpointError(f"cannot store {dataset}: dtype {array.dtype} (checkpoints hold "
                              f"numbers and booleans)")
    return {"array": dataset, "shape": list(array.shape), "dtype": array.dtype.str,
            "sha256": _digest(array)}


def _encode(value, section, arrays, where):
    """value -> manifest node; arrays collects (dataset name, host array)."""
    if _is_array(value):
        array = _to_host(value)
        name = f"{section}/{len(arrays)}"
        arrays.append((name, array))
        return _array_entry(name, array)
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, (str, int, np.integer)):
                raise CheckpointError(f"cannot store the key {key!r} of {where}: keys are "
                                      f"strings or integers")
            kind = "str" if isinstance(key, str) else "int"
            items.append([key if kind == "str" else int(key), kind,
                          _encode(item, section, arrays, f"{where}.{key}")])
        return {"dict": items}
    if isinstance(value, (list, tuple)):
        if any(_is_array(v) or isinstance(v, (dict, list, tuple)) or _non_finite(v)
               for v in value):
            return {"list": [_encode(v, section, arrays, f"{where}[{i}]")
                             for i, v in enumerate(value)]}
    plain = _jsonable(value)
    if _non_finite(plain):                 # a diverged loss, an unmeasured rate
        return {"float": repr(float(plain))}
    try:
        check_data(plain, where)
    except CheckpointError as e:
        raise CheckpointError(f"cannot store it in a checkpoint: {e}") from None
    return {"json": plain}


class _Reader:
    """Decodes manifest nodes, checking their form; `expected` collects the arrays named."""

    def __init__(self, where):
        self.where = where
        self.expected = {}            # dataset -> (shape, dtype str, sha256, what)

    def bad(self, what, why):
        return CheckpointError(f"{self.where}: the checkpoint is damaged: {what} {why}")

    def array(self, node, section, what):
        if set(node) != {"array", "shape", "dtype", "sha256"}:
            raise self.bad(what, f"is an array entry with the fields {sorted(node)}")
        name, shape, dtype, digest = node["array"], node["shape"], node["dtype"], node["sha256"]
        if not (isinstance(name, str) and name.startswith(section + "/")) and section:
            raise self.bad(what, f"names the dataset {name!r} outside /{section}")
        if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and
                all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise self.bad(what, f"has the shape {shape!r}")
        if dtype not in ARRAY_DTYPES:
            raise self.bad(what, f"has the dtype {dtype!r}")
        if not (isinstance(digest, str) and len(digest) == 64):
            raise self.bad(what, "has no SHA-256 digest")
        if name in self.expected:
            raise self.bad(what, f"names the dataset {name!r} twice")
        self.expected[name] = (tuple(shape), dtype, digest, what)
        return _Pending(name)

    def node(self, node, section, what, depth=0):
        if depth > MAX_DEPTH:
            raise self.bad(what, f"is nested more than {MAX_DEPTH} deep")
        if "array" in node if isinstance(node, dict) else False:
            return self.array(node, section, what)
        if not isinstance(node, dict) or len(node) != 1:
            raise self.bad(what, f"is {type(node).__name__} {_short(node)}, not a manifest "
                                 f"entry")
        (kind, body), = node.items()
        if kind == "json":
            return check_data(body, f"{self.where}: {what}")
        if kind == "float":
            if body not in ("nan", "inf", "-inf"):
                raise self.bad(what, f"is the number {_short(body)}")
            return float(body)
        if kind == "list":
            if not isinstance(body, list):
                raise self.bad(what, "is a list entry without a list")
            return [self.node(v, section, f"{what}[{i}]", depth + 1) for i, v in enumerate(body)]
        if kind == "dict":
            if not isinstance(body, list):
                raise self.bad(what, "is a dict entry without its items")
            out = {}
            for item in body:
                if not (isinstance(item, list) and len(item) == 3 and item[1] in ("int", "str")
                        and isinstance(item[0], int if item[1] == "int" else str)
                        and not isinstance(item[0], bool)):
                    raise self.bad(what, f"has the item {_short(item)}")
                if item[0] in out:
                    raise self.bad(what, f"has the key {item[0]!r} twice")
                out[item[0]] = self.node(item[2], section, f"{what}.{item[0]}", depth + 1)
            return out
        raise self.bad(what, f"is an entry of unknown kind {kind!r}")


class _Pending:
    """An array named by the manifest, read once every check has passed."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _fill(value, arrays):
    if isinstance(value, _Pending):
        return arrays[value.name]
    if isinstance(value, dict):
        return {k: _fill(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, arrays) for v in value]
    return value


# --------------------------------------------------------------------------------- saving

def save_checkpoint(path, *, model, optimizer=None, epoch=0, step=0, config=None, classes=None,
                    normalization=None, rng=None, trainer=None, model_description=None):
    """Write a checkpoint atomically to `path`; returns the path.

    model: a Layer (its state_dict is saved); optimizer: anything with state_dict();
    config: JSON data to rebuild the model (e.g. {"model": "resnet18", ...});
    model_description: JSON data describing the layer tree (data, never code);
    classes: class names; normalization: {"mean": [...], "std": [...]} of the inputs;
    rng: random states (JSON-able or arrays); trainer: history and callback state.
    A failure to write (a full disk, a read-only folder) is a CheckpointWriteError in one
    sentence; the previous checkpoint is kept. Ctrl-C and SIGTERM during the save (gathering
    the tensors, their digests, the write) are held back and delivered once the new file is in
    place: a save once begun completes.
    """
    with atomic.deferred_signals():
        return _save(Path(path), model, optimizer, epoch, step, config, classes, normalization,
                     rng, trainer, model_description)


def _save(path, model, optimizer, epoch, step, config, classes, normalization, rng, trainer,
          model_description):
    arrays, model_entries = [], []
    for name, value in model.state_dict().items():
        if not name or "/" in name or name in (".", ".."):
            raise CheckpointError(f"the model's state_dict name {name!r} cannot be stored")
        array = _to_host(value)
        entry = _array_entry(f"model/{name}", array)
        model_entries.append({"name": name, "dataset": entry.pop("array"), **entry})
        arrays.append((f"model/{name}", array))
    manifest = {"epoch": int(epoch), "step": int(step),
                "config": check_data(_jsonable(config or {}), "the config"),
                "model_description": check_data(_jsonable(model_description),
                                                "the model description"),
                "classes": check_data(list(classes) if classes is not None else None,
                                      "the classes"),
                "normalization": check_data(_jsonable(normalization), "the normalization"),
                "model": model_entries}
    for section, tree in (("optimizer", optimizer.state_dict() if optimizer is not None
                           else None), ("rng", rng or {}), ("trainer", trainer or {})):
        manifest[section] = None if tree is None else _encode(tree, section, arrays, section)
    text = json.dumps(manifest, separators=(",", ":"), allow_nan=False)
    needed = sum(a.nbytes for _, a in arrays) + 2 * len(text) + (4 << 10) * (16 + len(arrays))
    try:
        atomic.check_free_space(path.parent if path.parent.exists() else Path("."), needed,
                                f"the checkpoint {path}")
        with atomic.replace(path, what="checkpoint") as partial:
            _write(partial, manifest, text, arrays, epoch, step)
    except atomic.WriteError as e:
        raise CheckpointWriteError(e.errno, e.strerror) from None
    return path


def _write(partial, manifest, text, arrays, epoch, step):
    """The HDF5 file of `arrays` after the verified header (safe_hdf5.write_verified)."""
    from .version import __version__
    digests = {entry["dataset"]: entry["sha256"] for entry in manifest["model"]}
    for section in SECTIONS:
        digests.update((node["array"], node["sha256"]) for node in _array_nodes(manifest[section]))
    attrs = {"format": np.bytes_(FORMAT), "version": VERSION, "epoch": int(epoch),
             "step": int(step), "cupycnn_version": np.bytes_(str(__version__)),
             "created": np.bytes_(datetime.datetime.now(datetime.timezone.utc).isoformat())}

    def groups(f):
        f.create_group("model", track_order=True)       # state_dict order

    safe_hdf5.write_verified(partial, arrays, manifest, MAGIC, VERSION, digests, attrs=attrs,
                             prepare=groups, text_length=len(text))


def _array_nodes(node):
    """The array entries of an encoded tree (following only its dict and list nodes)."""
    if not isinstance(node, dict):
        return
    if "array" in node:
        yield node
    elif "dict" in node:
        for _, _, value in node["dict"]:
            yield from _array_nodes(value)
    elif "list" in node:
        for value in node["list"]:
            yield from _array_nodes(value)


MAGIC = "cupycnn-checkpoint"


# -------------------------------------------------------------------------------- loading

class Checkpoint:
    """What load_checkpoint read: model_state (OrderedDict of arrays), optimizer_state, epoch,
    step, config, model_description, classes, normalization, rng, trainer, path, version,
    verified (False for version 1 files, which hold no checksums)."""

    def __init__(self, **fields):
        self.model_description = None
        self.verified = True
        self.__dict__.update(fields)

    def restore(self, model, optimizer=None):
        """Load the model (and optimizer) state, with a clear message on any mismatch; nothing
        is changed unless both match."""
        check_model_state(self, model)
        if optimizer is not None:
            if self.optimizer_state is None:
                raise CheckpointError(f"{self.path}: holds no optimizer state to resume from")
        try:
            model_before = model.state_dict() if optimizer is not None else None
            model.load_state_dict(self.model_state)
        except ValueError as e:
            raise CheckpointError(f"{self.path}: the checkpoint does not match the model "
                                  f"({_describe(self.config)}): {e}") from None
        if optimizer is not None:
            try:
                optimizer.load_state_dict(self.optimizer_state)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                model.load_state_dict(model_before)        # as it was
                raise CheckpointError(f"{self.path}: the optimizer state does not match: "
                                      f"{e}") from None


def _describe(config):
    return ", ".join(f"{k}={v}" for k, v in (config or {}).items()) or "no configuration saved"


def check_model_state(checkpoint, model):
    """CheckpointError unless the checkpoint's tensors have the model's names and shapes."""
    _compare_model(checkpoint.path, checkpoint.config,
                   {n: tuple(np.shape(a)) for n, a in checkpoint.model_state.items()},
                   dict(_model_shapes(model)))


def _model_shapes(model):
    for name, p in model.named_parameters():
        yield name, p.shape
    for name, value in model.named_buffers():
        yield name, tuple(value.shape)


def _compare_model(path, config, found, expected):
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        problems.append("missing: " + ", ".join(missing[:20]) +
                        (f" and {len(missing) - 20} more" if len(missing) > 20 else ""))
    if unexpected:
        problems.append("unexpected: " + ", ".join(unexpected[:20]) +
                        (f" and {len(unexpected) - 20} more" if len(unexpected) > 20 else ""))
    for name, shape in expected.items():
        if name in found and tuple(found[name]) != tuple(shape):
            problems.append(f"{name}: shape {tuple(found[name])} in the state, {tuple(shape)} "
                            f"in the model")
    if problems:
        raise CheckpointError(f"{path}: the checkpoint does not match the model "
                              f"({_describe(config)}): " + "; ".join(problems))


def load_checkpoint(path, model=None):
    """Read a checkpoint written by save_checkpoint; CheckpointError says what is wrong.

    With `model` (a Layer), the checkpoint's tensor names and shapes are compared with the
    model's before any tensor is read."""
    path = Path(path)
    where = str(path)
    try:       # before HDF5 reads a byte
        header = safe_hdf5.read_header(path, MAGIC, VERSION, CheckpointError, "checkpoint")
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    f = safe_hdf5.open_file(path, CheckpointError, "checkpoint")
    try:
        with f:
            files = safe_hdf5.audit(f, CheckpointError, where)      # before reading data
            if header is not None:
                manifest, offsets, userblock = header
                if f.userblock_size != userblock:
                    raise CheckpointError(f"{where}: the checkpoint is damaged: its header "
                                          f"says a userblock of {userblock} bytes, HDF5 "
                                          f"{f.userblock_size}")
                return _load(f, path, files, model, manifest, offsets)
            fmt = _attr(f, "format", where)
            if fmt != FORMAT:
                raise CheckpointError(f"{path} is an HDF5 file but not a cupycnn checkpoint "
                                      f"(format attribute {fmt!r})")
            version = _attr(f, "version", where)
            if not isinstance(version, (int, np.integer)) or isinstance(version, bool) or \
                    version < 1:
                raise CheckpointError(f"{path}: the checkpoint is damaged: version "
                                      f"{_short(version)}")
            if version > VERSION:
                raise CheckpointError(f"{path} was written by a newer cupycnn (checkpoint "
                                      f"version {version}; this one reads up to {VERSION})")
            if version == 1:
                return _load_version_1(f, path, files, model)
            raise CheckpointError(f"{where}: the checkpoint is damaged: its header (the "
                                  f"first bytes of the file) is missing")
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, RuntimeError,
            RecursionError) as e:       # what h5py raises on a damaged file
        raise CheckpointError(f"{path}: the checkpoint is damaged ({type(e).__name__}: "
                              f"{safe_hdf5._first_line(e)})") from None


def _attr(f, name, where):
    if name not in f.attrs:
        if name == "format":
            return None
        raise CheckpointError(f"{where}: the checkpoint is damaged: it has no {name!r} "
                              f"attribute")
    value = f.attrs[name]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    return value


def _load(f, path, files, model, manifest, offsets):
    where = str(path)
    reader = _Reader(where)
    if not isinstance(manifest, dict):
        raise reader.bad("the manifest", f"is {type(manifest).__name__}")
    known = {"epoch", "step", "config", "model_description", "classes", "normalization",
             "model", *SECTIONS}
    if set(manifest) != known:
        raise reader.bad("the manifest", f"has the fields {sorted(manifest)}, expected "
                                         f"{sorted(known)}")
    for key in ("epoch", "step"):
        value = manifest[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise reader.bad(key, f"is {_short(value)}, not a count")
    config = check_data(manifest["config"], f"{where}: the config")
    if not isinstance(config, dict):
        raise reader.bad("the config", f"is {type(config).__name__}, not a dict")
    description = check_data(manifest["model_description"], f"{where}: the model description")
    classes = check_data(manifest["classes"], f"{where}: the classes")
    if classes is not None and not (isinstance(classes, list) and
                                    all(isinstance(c, str) for c in classes)):
        raise reader.bad("the classes", f"are {_short(classes)}, not a list of names")
    normalization = check_data(manifest["normalization"], f"{where}: the normalization")
    if not isinstance(manifest["model"], list):
        raise reader.bad("the model's tensor list", "is missing")
    model_names = []
    for i, entry in enumerate(manifest["model"]):
        if not isinstance(entry, dict) or set(entry) != {"name", "dataset", "shape", "dtype",
                                                         "sha256"}:
            raise reader.bad(f"model tensor {i}", f"is {_short(entry)}")
        name = entry["name"]
        if not isinstance(name, str) or entry["dataset"] != f"model/{name}" or \
                name in model_names:
            raise reader.bad(f"model tensor {i}", f"has the name {_short(name)} and dataset "
                                                  f"{_short(entry['dataset'])}")
        reader.array({"array": entry["dataset"], "shape": entry["shape"],
                      "dtype": entry["dtype"], "sha256": entry["sha256"]}, "model",
                     f"the tensor {name}")
        model_names.append(name)
    trees = {}
    for section in SECTIONS:
        node = manifest[section]
        if node is None and section == "optimizer":
            trees[section] = None
            continue
        tree = reader.node(node, section, f"the {section} state")
        if not isinstance(tree, dict):
            raise reader.bad(f"the {section} state", f"is {type(tree).__name__}, not a dict")
        trees[section] = tree
    # The file holds exactly the datasets the manifest names, as it declares them.
    for name in files:
        if name not in reader.expected:
            raise CheckpointError(f"{where}: the checkpoint holds the dataset {name!r}, which "
                                  f"its manifest does not name (a damaged or altered file)")
    for name, (shape, dtype, _, what) in reader.expected.items():
        if name not in files:
            raise CheckpointError(f"{where}: the checkpoint is damaged: {what} (dataset "
                                  f"{name!r}) is missing")
        entry = files[name]
        if entry.shape != shape or entry.dtype.str != dtype:
            raise CheckpointError(f"{where}: the checkpoint is damaged: {what} is stored as "
                                  f"{entry.shape} {entry.dtype}, its manifest says {shape} "
                                  f"{np.dtype(dtype)}")
    safe_hdf5.check_offsets(f, files, offsets, CheckpointError, where)
    if model is not None:
        _compare_model(path, config, {n: reader.expected[f"model/{n}"][0] for n in model_names},
                       dict(_model_shapes(model)))
    arrays = {}
    for name, (shape, dtype, digest, what) in reader.expected.items():
        value = safe_hdf5.read(f, name, CheckpointError, where)
        value = np.asarray(value)
        if _digest(value) != digest:
            raise CheckpointError(f"{where}: {what} ({name}) fails its SHA-256 checksum: the "
                                  f"file is damaged")
        arrays[name] = value
    import collections
    model_state = collections.OrderedDict((n, arrays[f"model/{n}"]) for n in model_names)
    return Checkpoint(path=path, version=2, epoch=manifest["epoch"], step=manifest["step"],
                      config=config, model_description=description, classes=classes,
                      normalization=normalization, created=str(_attr(f, "created", where)),
                      model_state=model_state, optimizer_state=_fill(trees["optimizer"], arrays),
                      rng=_fill(trees["rng"], arrays), trainer=_fill(trees["trainer"], arrays))


# ------------------------------------------------------------------ version 1 (no digests)

def _load_version_1(f, path, files, model):
    """Checkpoints written before version 2: the same audit, no checksums to verify."""
    import collections
    where = str(path)
    warnings.warn(f"{where} is a version 1 checkpoint, written without checksums: its contents "
                  f"cannot be verified (saving it again writes version 2)", stacklevel=3)
    if "model" not in f or not hasattr(f["model"], "keys"):
        raise CheckpointError(f"{where}: the checkpoint is damaged: it has no /model group")
    names = list(f["model"].keys())
    for name in names:
        if f"model/{name}" not in files:
            raise CheckpointError(f"{where}: the checkpoint is damaged: /model/{name} is not "
                                  f"a dataset")
    if model is not None:
        _compare_model(path, None, {n: files[f"model/{n}"].shape for n in names},
                       dict(_model_shapes(model)))
    model_state = collections.OrderedDict(
        (n, np.asarray(safe_hdf5.read(f, f"model/{n}", CheckpointError, where))) for n in names)

    def tree(group, what, depth=0):
        if depth > MAX_DEPTH:
            raise CheckpointError(f"{where}: {what} is nested too deeply")
        keys = json.loads(_attr(group, "__keys__", where))
        out = {}
        for item in keys:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and item[1] in ("int", "str")):
                raise CheckpointError(f"{where}: the checkpoint is damaged: {what} has the key "
                                      f"{_short(item)}")
            name, kind = item
            key = int(name) if kind == "int" else name
            if name in group:
                child = group[name]
                out[key] = tree(child, f"{what}.{name}", depth + 1) if hasattr(child, "keys") \
                    else np.asarray(safe_hdf5.read(group, name, CheckpointError, where))
            else:
                out[key] = check_data(json.loads(_attr(group, name, where)),
                                      f"{where}: {what}.{name}")
        return out

    def attr_json(name):
        return check_data(json.loads(_attr(f, name, where)), f"{where}: the {name}")

    config = attr_json("config")
    return Checkpoint(path=path, version=1, verified=False, epoch=int(_attr(f, "epoch", where)),
                      step=int(_attr(f, "step", where)), config=config,
                      classes=attr_json("classes"), normalization=attr_json("normalization"),
                      created=str(_attr(f, "created", where)), model_state=model_state,
                      optimizer_state=tree(f["optimizer"], "the optimizer state")
                      if "optimizer" in f else None,
                      rng=tree(f["rng"], "the rng state"),
                      trainer=tree(f["trainer"], "the trainer state"))
