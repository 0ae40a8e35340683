"""Fuzzing the public entry points (issue 12): layers, ops, optimizers and schedules, loaders,
datasets, checkpoints and data files, called with random arguments of every kind. Whatever a
call does, it must either work or raise one of the library's errors: an exception of an
expected type, with a one-line message, raised by cupycnn's own code (the innermost frame of its
traceback is in the cupycnn package: a check, not a failure deep inside NumPy or h5py). Never a
crash (the process would die), never a hang (each call has an alarm), never anything else.

The cases are drawn from the run's seed (CUPYCNN_TEST_SEED, printed in the report header, so a
failure replays) and bounded: FUZZ_CASES in the default run, 10x as many in the slow-marked one.
"""
import os
import signal
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

import cupycnn
from cupycnn import sim
from cupycnn.checkpoint import CheckpointError

FUZZ_CASES = 400
SECONDS_PER_CASE = 20
PACKAGE = str(Path(cupycnn.__file__).resolve().parent)
# What a user may see: the library's checks and the errors it documents.
ALLOWED = (ValueError, TypeError, IndexError, KeyError, FileNotFoundError, OSError)


class Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise Hang()


# ----------------------------------------------------------------------- random values

def _values(rng):
    """A random argument: numbers of every kind, strings, containers, arrays, None."""
    pool = [0, 1, 2, 3, -1, 7, 3.7, 0.5, -0.5, float("nan"), float("inf"), True, False, None,
            "3", "x", (2, 2), (1, 2, 3), [2], [], {}, np.int64(2), np.float32(1.5),
            10 ** 12, -10 ** 12, object(), b"\xff", np.zeros(0), np.ones((2, 2))]
    return pool[int(rng.integers(len(pool)))]


def _array(rng):
    """A random array (or not quite one) for an input."""
    kind = int(rng.integers(10))
    if kind == 0:
        return _values(rng)
    ndim = int(rng.integers(0, 6))
    shape = tuple(int(rng.choice([0, 1, 2, 3, 4, 5, 8])) for _ in range(ndim))
    dtype = rng.choice(["float32", "float32", "float32", "float64", "float16", "int32", "int64",
                        "uint8", "bool"])
    a = rng.standard_normal(shape).astype(dtype) if dtype != "bool" else \
        rng.random(shape) < 0.5
    if kind == 1 and a.size:
        a.flat[0] = np.nan if a.dtype.kind == "f" else a.flat[0]
    if kind == 2 and a.ndim >= 2:
        a = a[:, ::-1]                                   # not contiguous
    if kind == 3:
        return a.tolist()
    return cupycnn.asarray(a) if a.dtype.kind != "b" else a


def _args(rng, n):
    return [_values(rng) for _ in range(n)]


# ------------------------------------------------------------------------------- cases

def _case_layer(rng, tmp):
    from cupycnn import layers
    makers = [
        lambda: layers.Conv2D(*_args(rng, 3)),
        lambda: layers.Conv2D(3, int(rng.integers(1, 5)), int(rng.integers(1, 4)),
                              stride=_values(rng), padding=_values(rng)),
        lambda: layers.Dense(*_args(rng, 2)),
        lambda: layers.Dense(int(rng.integers(1, 9)), int(rng.integers(1, 9))),
        lambda: layers.BatchNorm2D(_values(rng), eps=_values(rng), momentum=_values(rng)),
        lambda: layers.BatchNorm1D(int(rng.integers(1, 5))),
        lambda: layers.GroupNorm(*_args(rng, 2)),
        lambda: layers.MaxPool2D(*_args(rng, 2)),
        lambda: layers.AvgPool2D(_values(rng)),
        lambda: layers.GlobalAvgPool2D(),
        lambda: layers.Dropout(_values(rng)),
        lambda: layers.ReLU(),
        lambda: layers.Flatten(*_args(rng, 2)),
        lambda: layers.Sequential(*[_values(rng) for _ in range(2)]),
    ]
    layer = makers[int(rng.integers(len(makers)))]()
    x = _array(rng)
    y = layer.forward(x, training=bool(rng.integers(2)))
    if rng.integers(2):
        layer.backward(_array(rng) if rng.integers(2) else y)


def _case_op(rng, tmp):
    from cupycnn import ops
    from cupycnn.ops import pool, softmax_xent
    calls = [
        lambda: ops.conv2d.conv2d_forward(_array(rng), _array(rng), _array(rng), _values(rng),
                                          _values(rng)),
        lambda: ops.gemm.gemm(_array(rng), _array(rng), transpose_b=bool(rng.integers(2))),
        lambda: pool.max_pool2d_forward(_array(rng), _values(rng)),
        lambda: pool.avg_pool2d_forward(_array(rng), int(rng.integers(1, 4))),
        lambda: ops.elementwise.relu_forward(_array(rng)),
        lambda: ops.elementwise.add(_array(rng), _array(rng)),
        lambda: softmax_xent.softmax_xent_forward(_array(rng), _array(rng), _values(rng)),
        lambda: softmax_xent.labels_to_int32(_array(rng), _values(rng)),
        lambda: ops.reduce.channel_sum(_array(rng)),
        lambda: ops.dropout.dropout_forward(_array(rng), _values(rng), _values(rng),
                                            _values(rng)),
        lambda: ops.metrics.accumulate_metrics(_array(rng), _array(rng), _array(rng),
                                               _array(rng)),
        lambda: ops.augment.normalize(_array(rng), _values(rng), _values(rng)),
    ]
    calls[int(rng.integers(len(calls)))]()


def _case_optimizer(rng, tmp):
    from cupycnn import optim
    from cupycnn.layers import Dense
    from cupycnn.optim import schedules
    model = Dense(3, 2)
    params = model.parameters() if rng.integers(4) else _values(rng)
    kind, names = [(optim.SGD, ["lr", "momentum", "weight_decay", "nesterov", "l1",
                                "dampening"]),
                   (optim.Adam, ["lr", "betas", "eps", "weight_decay", "l1"]),
                   (optim.AdamW, ["lr", "betas", "eps", "weight_decay"])][int(rng.integers(3))]
    kwargs = {name: _values(rng) for name in rng.choice(names, size=int(rng.integers(0, 3)),
                                                        replace=False)}
    opt = kind(params, **({"lr": 0.1} | kwargs))
    action = int(rng.integers(4))
    if action == 0:
        opt.step()
    elif action == 1:
        state = opt.state_dict()
        state["param_groups"][0][str(rng.choice(["lr", "params", "momentum", "x"]))] = \
            _values(rng)
        opt.load_state_dict(state if rng.integers(3) else _values(rng))
    else:
        maker = [lambda: schedules.OneCycleLR(opt, max_lr=_values(rng), total_steps=_values(rng)),
                 lambda: schedules.StepLR(opt, step_size=_values(rng), gamma=_values(rng)),
                 lambda: schedules.CosineAnnealingLR(opt, T_max=_values(rng)),
                 lambda: schedules.LinearWarmup(opt, _values(rng))][int(rng.integers(4))]
        schedule = maker()
        for _ in range(int(rng.integers(1, 4))):
            schedule.step()
        state = schedule.state_dict()
        if state and rng.integers(2):
            state[str(rng.choice(list(state)))] = _values(rng)
        schedule.load_state_dict(state)


def _case_data(rng, tmp):
    from cupycnn import data
    n = int(rng.integers(0, 6))
    images = rng.integers(0, 256, (n, 3, 3, 3)).astype(rng.choice(["uint8", "float32", "int64"]))
    labels = rng.integers(-1, 4, n) if rng.integers(2) else _values(rng)
    action = int(rng.integers(5))
    if action == 0:
        ds = data.ArrayDataset(images, labels, _values(rng) if rng.integers(2) else None)
        ds[_values(rng)]
    elif action == 1:
        ds = data.ArrayDataset(np.zeros((4, 2, 2, 3), np.uint8), [0, 1, 0, 1])
        data.Subset(ds, _values(rng) if rng.integers(2) else rng.integers(-2, 6, 3))
    elif action == 2:
        ds = data.ArrayDataset(np.zeros((6, 2, 2, 3), np.uint8), [0, 1, 0, 1, 2, 2])
        data.train_val_split(ds, _values(rng), _values(rng))
    elif action == 3:
        ds = data.ArrayDataset(np.zeros((6, 2, 2, 3), np.uint8), [0, 1, 0, 1, 2, 2])
        kwargs = {name: _values(rng) for name in rng.choice(
            ["batch_size", "shuffle", "drop_last", "seed", "rank", "world_size", "transform",
             "pad"], size=int(rng.integers(1, 3)), replace=False)}
        loader = data.Loader(ds, **({"batch_size": 2, "prefetch": False} | kwargs))
        for _ in loader:            # (a loader may make no batch: 6 items, batch 7, drop_last)
            break
    else:
        class Items:
            def __len__(self):
                return 3

            def __getitem__(self, i):
                return _values(rng) if rng.integers(2) else _array(rng), _values(rng)
        next(iter(data.Loader(Items(), batch_size=2, prefetch=False)))


def _good_files(tmp):
    """A checkpoint, an image cache, a CIFAR-10 pickle and binary batch, once per folder."""
    from cifar_archives import python_batch
    from cupycnn.checkpoint import save_checkpoint
    from cupycnn.data.folder import write_hdf5
    from cupycnn.layers import BatchNorm1D, Dense, Sequential
    from cupycnn.optim import SGD
    paths = {"checkpoint": tmp / "c.h5", "cache": tmp / "cache.h5", "pickle": tmp / "batch",
             "binary": tmp / "batch.bin", "tfrecord": tmp / "records" / "data-00000-of-00001.tfrec",
             "shard": tmp / "shards" / "shard-000000.tar", "csv": tmp / "pixels.csv",
             "index": tmp / "shards" / "index.json"}
    if not paths["checkpoint"].exists():
        import io
        from PIL import Image
        from cupycnn.data import write_shards, write_tfrecords
        pngs = []
        for k in range(3):
            out = io.BytesIO()
            Image.fromarray(np.full((4, 4, 3), 40 * k, np.uint8)).save(out, format="PNG")
            pngs.append(out.getvalue())
        write_tfrecords([(png, k) for k, png in enumerate(pngs)], tmp / "records")
        write_shards([(f"s{k}", png, "png", k) for k, png in enumerate(pngs)], tmp / "shards",
                     classes=["a", "b", "c"])
        paths["csv"].write_text("label,p0,p1,p2,p3\n1,0,255,3,4\n0,5,6,7,8\n2,1,1,1,1\n",
                                encoding="utf-8")
        model = Sequential(Dense(4, 3), BatchNorm1D(3))
        optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
        save_checkpoint(paths["checkpoint"], model=model, optimizer=optimizer, epoch=1, step=4,
                        config={"name": "x"}, rng={"library": cupycnn.random.get_state()},
                        trainer={"history": {"epoch": [1], "loss": [0.5]}})
        write_hdf5(paths["cache"], np.zeros((3, 2, 2, 3), np.uint8), [0, 1, 1], ["a", "b"],
                   ["x.png", "y.png", "z.png"], size=[2, 2])
        images = np.zeros((3, 32, 32, 3), np.uint8)
        paths["pickle"].write_bytes(python_batch(images, np.array([1, 2, 3]), "batch"))
        paths["binary"].write_bytes(bytes([1] + [0] * 3072) * 2)
    return paths


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(4))
        pos = int(rng.integers(max(1, len(data))))
        if kind == 0 and data:
            data[pos] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            data = data[:pos]
        elif kind == 2:
            data[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 9))).astype(np.uint8))
        elif data:
            data[pos:pos + 8] = bytes(8)
    return bytes(data)


def _case_file(rng, tmp):
    from cupycnn.checkpoint import load_checkpoint
    from cupycnn.data import HDF5Dataset
    from cupycnn.data.cifar import _read_binary_batch, _read_python_batch
    paths = _good_files(tmp)
    kind = str(rng.choice(list(paths)))
    bad = tmp / f"bad-{kind}"
    bad.write_bytes(_mutate(rng, paths[kind].read_bytes()))
    if kind == "index":                                 # a damaged index beside its shard
        import shutil
        folder = tmp / "bad-index-folder"
        folder.mkdir(exist_ok=True)
        shutil.copyfile(paths["shard"], folder / paths["shard"].name)
        bad.replace(folder / "index.json")
        from cupycnn.data import Loader, TarShards
        for _ in Loader(TarShards(folder), batch_size=2, prefetch=False):
            pass
    elif kind in ("tfrecord", "shard"):
        from cupycnn.data import Loader, TarShards, TFRecordDataset
        dataset = TFRecordDataset(bad) if kind == "tfrecord" else TarShards([bad])
        for _ in Loader(dataset, batch_size=2, prefetch=False):
            pass
    elif kind == "csv":
        from cupycnn.data import CSVImages
        CSVImages(bad)
    elif kind == "checkpoint":
        c = load_checkpoint(bad)
        from cupycnn.layers import BatchNorm1D, Dense, Sequential
        c.restore(Sequential(Dense(4, 3), BatchNorm1D(3)))
    elif kind == "cache":
        HDF5Dataset(bad)
    elif kind == "pickle":
        _read_python_batch(bad)
    else:
        _read_binary_batch(bad)


def _case_checkpoint_contents(rng, tmp):
    """A well-formed checkpoint (digests recomputed) with random contents, resumed."""
    from hostile_files import reseal
    from cupycnn.layers import Dense
    from cupycnn.optim import SGD
    from cupycnn.train import EarlyStopping, Trainer
    import shutil
    paths = _good_files(tmp)
    path = tmp / "edited.h5"
    shutil.copyfile(paths["checkpoint"], path)

    def edit(header):
        doc = header["document"]
        field = str(rng.choice(["epoch", "step", "config", "classes", "normalization",
                                "model_description", "trainer", "rng", "optimizer", "model"]))
        doc[field] = _jsonish(rng)
    reseal(path, edit=edit)
    model = Dense(4, 3)
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1), progress=False,
                      callbacks=[EarlyStopping(monitor="loss")])
    trainer.resume(path)


def _jsonish(rng, depth=0):
    kind = int(rng.integers(8 if depth < 3 else 5))
    return [lambda: int(rng.integers(-5, 10)), lambda: None, lambda: "x", lambda: 1.5,
            lambda: True, lambda: [_jsonish(rng, depth + 1) for _ in range(2)],
            lambda: {str(rng.choice(["dict", "list", "json", "array", "a"])):
                     _jsonish(rng, depth + 1)},
            lambda: {"array": "rng/0", "shape": [2], "dtype": "<f4", "sha256": "0" * 64}][kind]()


CASES = {"layer": _case_layer, "op": _case_op, "optimizer": _case_optimizer,
         "data": _case_data, "file": _case_file, "checkpoint": _case_checkpoint_contents}


# -------------------------------------------------------------------------------- checks

def _from_the_library(error):
    """Whether the innermost frame that raised `error` is cupycnn's own code."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(PACKAGE)


def _trace(error):
    """The whole traceback, with FUZZ_TRACE=1 (to find where a failure comes from)."""
    if not os.environ.get("FUZZ_TRACE"):
        return ""
    return "\n" + "".join(traceback.format_exception(error))


def _fuzz(rng, tmp_path, count, device):
    # On sim, a kernel writing outside its arrays is a SimMemoryError (a problem, with its seed),
    # not a heap corrupted silently until something else falls over.
    with sim.memory_check(device == "sim"):
        return _fuzz_calls(rng, tmp_path, count, device)


def _fuzz_calls(rng, tmp_path, count, device):
    cupycnn.use(device)
    previous = signal.signal(signal.SIGALRM, _alarm)
    problems, outcomes = [], {}
    try:
        names = sorted(CASES)
        for i in range(count):
            name = names[i % len(names)]
            seed = int(rng.integers(2 ** 32))
            signal.alarm(SECONDS_PER_CASE)
            if os.environ.get("FUZZ_LOG"):
                print(f"FUZZCASE {name} {seed}", file=sys.__stderr__, flush=True)
            try:
                CASES[name](np.random.default_rng(seed), tmp_path)
                outcome = "ok"
            except Hang:
                problems.append(f"{name} (seed {seed}): still running after "
                                f"{SECONDS_PER_CASE} s")
                continue
            except ALLOWED as e:
                outcome = type(e).__name__
                message = str(e)
                if isinstance(e, KeyError) and not _from_the_library(e):
                    outcome = "raw KeyError"
                if not message or "\n" in message.strip() or not _from_the_library(e):
                    frame = traceback.extract_tb(e.__traceback__)[-1]
                    problems.append(f"{name} (seed {seed}): {type(e).__name__} from "
                                    f"{frame.filename}:{frame.lineno}: {message[:300]!r}"
                                    + _trace(e))
            except Exception as e:                 # noqa: BLE001 - the point of the test
                frame = traceback.extract_tb(e.__traceback__)[-1]
                problems.append(f"{name} (seed {seed}): {type(e).__name__} from "
                                f"{frame.filename}:{frame.lineno}: {str(e)[:300]!r}"
                                + _trace(e))
                continue
            finally:
                signal.alarm(0)
            outcomes[(name, outcome)] = outcomes.get((name, outcome), 0) + 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    return problems, outcomes


def _report(problems, outcomes):
    assert not problems, f"{len(problems)} calls failed otherwise than with a library error:\n" \
                         + "\n".join(problems[:40])
    assert any(o == "ok" for _, o in outcomes), outcomes          # the fuzz reaches real work
    assert any(o != "ok" for _, o in outcomes), outcomes


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("device", ["numpy", "sim"])
def test_fuzz_public_entry_points(rng, tmp_path, device):
    _report(*_fuzz(rng, tmp_path, FUZZ_CASES, device))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("device", ["numpy", "sim"])
def test_fuzz_public_entry_points_longer(rng, tmp_path, device):
    _report(*_fuzz(rng, tmp_path, 10 * FUZZ_CASES, device))


# The cases the fuzz found once, kept deterministic: each must be one line from the library.
FOUND = [
    lambda: __import__("cupycnn.ops.softmax_xent", fromlist=["x"]).labels_to_int32(
        cupycnn.asarray(np.array([1, 1])), np.ones((2, 2))),
    lambda: cupycnn.layers.Dropout(np.ones((30, 30))),
    lambda: cupycnn.layers.MaxPool2D(np.ones((30, 30))),
    lambda: cupycnn.layers.BatchNorm2D(10 ** 12),
    lambda: cupycnn.layers.MaxPool2D(2, stride=10 ** 12)(
        cupycnn.asarray(np.ones((1, 1, 4, 4), np.float32))),
    lambda: cupycnn.data.Subset(cupycnn.data.ArrayDataset(np.zeros((2, 2, 2, 3), np.uint8),
                                                          [0, 1]), [0.5]),
    lambda: cupycnn.data.train_val_split(cupycnn.data.ArrayDataset(
        np.zeros((4, 2, 2, 3), np.uint8), [0, 1, 0, 1]), "0.5", 0),
    lambda: cupycnn.data.Loader(cupycnn.data.ArrayDataset(np.zeros((2, 2, 2, 3), np.uint8),
                                                          [0, 1]), batch_size=1,
                                world_size=10 ** 12),
    lambda: cupycnn.ops.gemm.gemm([[1.0]], np.ones((1, 1), np.float32)),
]


@pytest.mark.parametrize("case", range(len(FOUND)))
def test_found_cases_are_one_line(case):
    cupycnn.use("numpy")
    with pytest.raises((ValueError, TypeError)) as info:
        FOUND[case]()
    assert _from_the_library(info.value), traceback.format_exception(info.value)
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 400, message


def test_found_a_gemm_over_an_empty_batch_writes_nothing():
    """Found by the sim variant of the longer fuzz (seed 101, case 3892, `op 3592078399`): a
    batched gemm of a (0, 5, 2) by a transposed (5, 2) ran one product as if the batch were 1,
    writing 25 floats through the pointer of a 0-element output: heap corruption on sim, an
    out-of-bounds write on a GPU. `out` here is an empty view into a guarded buffer, so a write
    shows without a sanitizer."""
    from cupycnn.ops import gemm
    cupycnn.use("sim")
    guard = np.full(64, 7.0, np.float32)
    out = guard[8:8].reshape(0, 5, 5)
    a, b = np.ones((0, 5, 2), np.float32), np.ones((5, 2), np.float32)
    result = gemm.gemm(a, b, transpose_b=True, out=out)
    assert result.shape == (0, 5, 5)
    assert (guard == 7.0).all(), f"{int((guard != 7.0).sum())} floats written outside out"
    cupycnn.use("numpy")
    assert gemm.gemm(a, b, transpose_b=True).shape == (0, 5, 5)


def test_found_fit_on_a_loader_that_makes_no_batch_is_one_sentence():
    """Found by the sim fuzz at seed 2 (`data 3789842888`): a Loader of 6 items, batch_size 7,
    drop_last makes no batch; fit trained two epochs of nothing and logged loss nan."""
    from cupycnn import data, layers, optim
    from cupycnn.train import Trainer
    cupycnn.use("numpy")
    ds = data.ArrayDataset(np.zeros((6, 4, 4, 3), np.uint8), [0, 1, 0, 1, 0, 1])
    model = layers.Sequential(layers.Flatten(), layers.Dense(48, 2))
    before = [p.data.copy() for p in model.parameters()]
    trainer = Trainer(model, optim.SGD(model.parameters(), lr=0.1), progress=False)
    full = data.Loader(ds, batch_size=2)
    for train, val in ((data.Loader(ds, batch_size=7, drop_last=True), None),
                       (full, data.Loader(ds, batch_size=7, drop_last=True))):
        with pytest.raises(ValueError, match=r"loader makes no batch \(6 items, batch_size=7, "
                                             r"drop_last=True, world_size=1\)") as info:
            trainer.fit(train, epochs=2, val_loader=val)
        assert _from_the_library(info.value) and "\n" not in str(info.value)
    assert trainer.epoch == 0 and all(np.array_equal(p.data, b) for p, b in
                                      zip(model.parameters(), before))


def test_a_csv_of_pixels_that_is_not_utf8_is_one_line(tmp_path):
    from cupycnn.data import CSVImages
    path = tmp_path / "pixels.csv"
    path.write_bytes(b"label,p0,p1,p2,p3\n1,0,255,3,4\n0,5,\xf6,7,8\n")
    with pytest.raises(ValueError, match=r"pixels.csv is not UTF-8 text \(byte 0xf6") as info:
        CSVImages(path)
    assert _from_the_library(info.value) and "\n" not in str(info.value)
