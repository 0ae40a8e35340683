"""Hostile and damaged files (issue 12, items 1, 2, 3, 9): nothing read from a file reaches
outside it, no file makes a loader allocate what it merely declares, a flipped byte never loads
silently, and special files never block.

Every malicious file here is built from a real checkpoint or cache, written by the library,
then edited with h5py as an attacker would: the attack keeps names, shapes and dtypes, so only
the defences tested here can stop it.
"""
import os
import threading
import tracemalloc

import h5py
import numpy as np
import pytest

import cupycnn
from cupycnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cupycnn.layers import Dense

from hostile_files import reseal

SECRET = b"root:x:0:0:TOP-SECRET-BYTES:/root:/bin/bash\n" * 8     # a file outside the checkpoint


@pytest.fixture(autouse=True)
def _numpy(numpy_device):
    pass


def _checkpoint(path, model=None, **kw):
    model = model or Dense(16, 8)
    save_checkpoint(path, model=model, epoch=1, step=3, config={"name": "dense"}, **kw)
    return model


def _replace(path, name, **create):
    """Swap the dataset `name` for another of the same shape and dtype, made by `create`."""
    with h5py.File(path, "a") as f:
        old = f[name]
        shape, dtype = old.shape, old.dtype
        del f[name]
        create.setdefault("shape", shape)
        create.setdefault("dtype", dtype)
        f.create_dataset(name, **create)
    reseal(path)


def _no_secret_in(checkpoint):
    for value in checkpoint.model_state.values():
        assert SECRET[:16] not in np.asarray(value).tobytes()


def _load_or_refuse(path, match):
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as e:
        assert __import__("re").search(match, str(e)), str(e)
        return str(e)
    _no_secret_in(checkpoint)
    pytest.fail(f"{path.name} loaded without a word (the defence is missing)")


# ------------------------------------------------------------------ item 1: other files

def _weight_stored_in_a_secret(tmp_path):
    """A checkpoint whose model/weight is HDF5 external storage on another file (passwd)."""
    secret = tmp_path / "passwd"
    secret.write_bytes(SECRET * 2)
    path = tmp_path / "evil.h5"
    _checkpoint(path)
    _replace(path, "model/weight", external=[(str(secret), 0, 16 * 8 * 4)])
    return path


def test_external_storage_pointing_at_another_file_is_refused(tmp_path):
    path = _weight_stored_in_a_secret(tmp_path)
    message = _load_or_refuse(path, r"external storage.*passwd")
    assert "model/weight" in message


def test_virtual_dataset_is_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.frombuffer((SECRET * 2)[:128 * 4], np.float32).reshape(8, 16)
    path = tmp_path / "evil.h5"
    _checkpoint(path)
    with h5py.File(path, "a") as f:
        del f["model/weight"]
        layout = h5py.VirtualLayout(shape=(8, 16), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(other), "x", shape=(8, 16))
        f.create_virtual_dataset("model/weight", layout)
    reseal(path)
    _load_or_refuse(path, r"virtual dataset")


@pytest.mark.parametrize("kind", ["soft", "external"])
def test_soft_and_external_links_are_refused(tmp_path, kind):
    other = tmp_path / "other.h5"
    donor = Dense(16, 8)
    _checkpoint(other, model=donor)
    path = tmp_path / "evil.h5"
    _checkpoint(path)
    with h5py.File(path, "a") as f:
        f.move("model", "original_model")
        if kind == "soft":
            f.copy(f["original_model"], "stash")
            f["model"] = h5py.SoftLink("/stash")
        else:
            f["model"] = h5py.ExternalLink(str(other), "/model")
        del f["original_model"]
    reseal(path)
    _load_or_refuse(path, rf"{kind} link")


def test_a_resume_and_save_never_copies_another_files_bytes(tmp_path):
    """The issue's chain: an external dataset loaded, then saved into the next checkpoint."""
    path = _weight_stored_in_a_secret(tmp_path)
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError:
        return
    model = Dense(16, 8)
    checkpoint.restore(model)
    _checkpoint(tmp_path / "next.h5", model=model)
    assert SECRET[:16] not in (tmp_path / "next.h5").read_bytes(), \
        "the next checkpoint holds bytes of /etc/passwd"


# ------------------------------------------------------------ item 2: declared sizes

def _refused(fn, kind, limit):
    """The error of kind `kind` that fn() raised, having allocated less than `limit` bytes to
    refuse (tracemalloc's peak)."""
    tracemalloc.start()
    try:
        fn()
    except Exception as e:
        error = e
    else:
        error = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert isinstance(error, kind), error
    assert peak < limit, f"allocated {peak / 2**20:.0f} MiB to refuse it"
    return error


def test_a_declared_gigabyte_is_refused_without_allocating_it(tmp_path):
    path = tmp_path / "evil.h5"
    _checkpoint(path)
    with h5py.File(path, "a") as f:       # 1 GiB declared, nothing stored: 80 kB on disk
        f.create_dataset("model/unexpected", shape=(2 ** 28,), dtype=np.float32, chunks=(4096,))
    reseal(path)
    assert path.stat().st_size < 200_000
    error = _refused(lambda: load_checkpoint(path), CheckpointError, 16 << 20)
    assert "model/unexpected" in str(error)


def test_a_huge_declared_weight_of_the_right_name_is_refused(tmp_path):
    path = tmp_path / "evil.h5"
    _checkpoint(path)
    _replace(path, "model/weight", shape=(2 ** 27, 2), chunks=(4096, 2))
    _refused(lambda: load_checkpoint(path), CheckpointError, 16 << 20)


def test_a_config_asking_for_terabytes_is_refused_before_building(tmp_path):
    from cupycnn.models import simple_cnn
    from cupycnn.predict import load_model
    cupycnn.manual_seed(0)
    model = simple_cnn(num_classes=3, in_channels=1, input_size=8, widths=(4,),
                       block_dropout=(0.1,), hidden=8)
    path = tmp_path / "evil.h5"
    save_checkpoint(path, model=model, config={
        "model": "simple_cnn", "input_shape": [1, 8, 8],
        "model_kwargs": {"num_classes": 3, "in_channels": 1, "input_size": 8,
                         "widths": [200000, 200000], "block_dropout": [0.1, 0.1],
                         "hidden": 8}},
        normalization={"mean": [0.5], "std": [0.25]}, classes=["a", "b", "c"])
    _refused(lambda: load_model(path), CheckpointError, 64 << 20)


def test_an_architecture_asking_for_terabytes_is_refused_before_building(tmp_path):
    from cupycnn.layers import Sequential
    from cupycnn.predict import load_model
    path = tmp_path / "evil.h5"
    big = {"type": "Dense", "args": {"in_features": 20000, "out_features": 20000,   # 3.2 GB
                                     "bias": True}}
    save_checkpoint(path, model=Sequential(Dense(4, 3)), config={
        "input_shape": [1, 2, 2], "architecture": {"type": "Sequential", "children": [
            ["0", big]]}},
        normalization={"mean": [0.5], "std": [0.25]}, classes=["a", "b", "c"])
    _refused(lambda: load_model(path), CheckpointError, 64 << 20)


# ----------------------------------------------------------------- item 3: integrity

def _flip_byte_of(path, name, index=5):
    with h5py.File(path, "r") as f:
        offset = f[name].id.get_offset()
    assert offset is not None
    with open(path, "r+b") as f:
        f.seek(offset + index)
        byte = f.read(1)
        f.seek(offset + index)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_flipped_byte_in_a_weight_names_the_tensor(tmp_path):
    path = tmp_path / "c.h5"
    _checkpoint(path)
    _flip_byte_of(path, "model/weight")
    _load_or_refuse(path, r"weight.*(checksum|damaged)")


def test_a_flipped_byte_anywhere_never_loads_a_different_checkpoint(tmp_path, rng):
    """Every byte position class: header, metadata, data. A load either refuses with a
    CheckpointError or returns exactly what was saved."""
    path = tmp_path / "c.h5"
    model = _checkpoint(path, optimizer=None, rng={"x": np.arange(5)},
                        trainer={"history": {"loss": [1.0, 0.5]}})
    good = path.read_bytes()
    expected = model.state_dict()
    positions = rng.choice(len(good), size=40, replace=False)
    for pos in positions:
        damaged = bytearray(good)
        damaged[pos] ^= 1 << int(rng.integers(8))
        bad = tmp_path / "bad.h5"
        bad.write_bytes(bytes(damaged))
        try:
            c = load_checkpoint(bad)
        except CheckpointError as e:
            assert str(e), pos
            continue
        for name, value in expected.items():
            np.testing.assert_array_equal(c.model_state[name], value, err_msg=f"byte {pos}")
        assert (c.epoch, c.step, c.config) == (1, 3, {"name": "dense"}), pos
        np.testing.assert_array_equal(c.rng["x"], np.arange(5))


# ------------------------------------------------------------ item 9: special files

def _blocks(fn, seconds=10):
    """Run fn in a thread; True if it is still running after `seconds`."""
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as e:                    # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return t.is_alive(), result


def test_a_fifo_at_the_checkpoint_path_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "last.h5"
    os.mkfifo(fifo)
    blocked, result = _blocks(lambda: load_checkpoint(fifo))
    if blocked:
        with open(fifo, "wb"):          # unblock the reader so the test process can end
            pass
        pytest.fail("load_checkpoint blocked on a FIFO")
    assert isinstance(result.get("error"), CheckpointError), result
    assert "FIFO" in str(result["error"])


def test_a_folder_at_the_checkpoint_path_is_one_sentence(tmp_path):
    (tmp_path / "last.h5").mkdir()
    with pytest.raises(CheckpointError, match="is a folder, not a regular file"):
        load_checkpoint(tmp_path / "last.h5")


# ---------------------------------------------------------- item 2: CIFAR-10 pickles

class _Declared:
    """Pickles as numpy's _reconstruct of an array of `shape` that the file never fills: the
    unpickler allocates the shape, the file holds a few bytes."""

    def __init__(self, shape):
        self.shape = shape


def test_a_12_kB_cifar_pickle_cannot_make_10_million_labels(tmp_path):
    from cifar_archives import Py2Pickler, _reconstruct
    import io

    from cupycnn.data.cifar import UnsafePickleError, load_pickle

    class Pickler(Py2Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, _Declared):
                return (_reconstruct, (np.ndarray, obj.shape, b"b"))
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    rows = np.zeros((3, 3072), np.uint8)
    Pickler(buffer).dump({b"data": rows, b"labels": _Declared((10_000_000,)),
                          b"padding": b"x" * 2000})
    path = tmp_path / "data_batch_1"
    path.write_bytes(buffer.getvalue())
    assert path.stat().st_size < 13_000
    error = _refused(lambda: load_pickle(path), UnsafePickleError, 8 << 20)
    assert "_reconstruct" in str(error)


def test_a_pickle_declaring_gigabytes_of_bytes_is_refused_without_allocating(tmp_path):
    import pickle
    import struct

    from cupycnn.data.cifar import load_pickle
    path = tmp_path / "data_batch_1"      # BINBYTES of 2 GB declared, 10 bytes present
    path.write_bytes(b"\x80\x03B" + struct.pack("<I", 2 ** 31) + b"0123456789" + pickle.STOP)
    error = _refused(lambda: load_pickle(path), ValueError, 8 << 20)
    assert "not a readable CIFAR-10 pickle" in str(error)


def test_cifar_files_that_are_fifos_or_huge_are_refused(tmp_path):
    from cupycnn.data.cifar import _read_binary_batch, load_pickle
    fifo = tmp_path / "data_batch_1"
    os.mkfifo(fifo)
    blocked, result = _blocks(lambda: load_pickle(fifo))
    if blocked:
        with open(fifo, "wb"):
            pass
        pytest.fail("load_pickle blocked on a FIFO")
    assert "FIFO" in str(result.get("error")), result
    big = tmp_path / "data_batch_2.bin"
    with open(big, "wb") as f:
        f.truncate(200 << 20)                 # sparse: 200 MB declared, nothing on disk
    with pytest.raises(ValueError, match="a CIFAR-10 batch file has at most"):
        _read_binary_batch(big)


# ------------------------------------------------------------- the image-folder cache

def _tiny_tree(root):
    from PIL import Image
    for k, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((6, 5, 3), 40 * k + i, np.uint8)).save(root / name /
                                                                            f"{i}.png")
    return root


def test_a_cache_with_external_storage_is_refused(tmp_path):
    from cupycnn.data import HDF5Dataset, ImageFolder
    secret = tmp_path / "passwd"
    secret.write_bytes(SECRET * 2)
    path = ImageFolder(_tiny_tree(tmp_path / "photos")).to_hdf5(tmp_path / "cache.h5")
    with h5py.File(path, "a") as f:
        shape = f["images"].shape
        del f["images"]
        f.create_dataset("images", shape=shape, dtype=np.uint8,
                         external=[(str(secret), 0, int(np.prod(shape)))])
    reseal(path, magic="cupycnn-cache")
    with pytest.raises(ValueError, match="external storage"):
        HDF5Dataset(path)


def test_a_damaged_cache_is_one_error_and_is_rebuilt(tmp_path, capfd):
    from cupycnn.data import HDF5Dataset, ImageFolder
    root = _tiny_tree(tmp_path / "photos")
    path = ImageFolder(root).to_hdf5(tmp_path / "cache.h5")
    _flip_byte_of(path, "images", index=7)
    with pytest.raises(ValueError, match=r"the bytes of images do not match its SHA-256"):
        HDF5Dataset(path)
    rebuilt = ImageFolder.cached(root, path)
    assert "rebuilding the cache" in capfd.readouterr().err
    assert len(rebuilt) == 4


def test_non_utf8_file_names_fifos_and_symlink_loops_in_an_image_folder(tmp_path):
    """Every name stored exactly; a FIFO named like an image is an unreadable image, not a
    wait; a symlink back to a parent folder is read once, with a warning."""
    from cupycnn.data import BadImageError, HDF5Dataset, ImageFolder
    root = _tiny_tree(tmp_path / "photos")
    odd = os.fsdecode(b"caf\xe9-\xff.png")                   # Latin-1 bytes, not UTF-8
    (root / "cat" / "0.png").rename(root / "cat" / odd)
    os.symlink("..", root / "dog" / "loop")                   # dog/loop/dog/loop/...
    os.mkfifo(root / "dog" / "pipe.png")
    blocked, result = _blocks(lambda: ImageFolder(root))
    if blocked:
        with open(root / "dog" / "pipe.png", "wb"):
            pass
        pytest.fail("ImageFolder blocked on a FIFO")
    assert isinstance(result.get("error"), BadImageError), result
    assert "pipe.png" in str(result["error"]) and "FIFO" in str(result["error"])
    with pytest.warns(UserWarning) as caught:
        ds = ImageFolder(root, skip_bad=True)
    assert len(ds) == 4 + 2, [str(p) for p in ds.files]       # dog/loop/cat read once
    assert any("through a symbolic link" in str(w.message) for w in caught)
    cache = HDF5Dataset(ds.to_hdf5(tmp_path / "cache.h5"))
    assert f"cat/{odd}" in cache.files
    np.testing.assert_array_equal(cache.images, ds.images)


def _readers_of_streamed_data():
    from cupycnn.data import CSVImages, TarShards, TFRecordDataset
    from cupycnn.data.shards import count_tar_samples, read_tar_samples
    from cupycnn.data.stream import read_file
    from cupycnn.data.tfrecord import count_records, read_records
    return {"read_file": read_file, "read_tar_samples": lambda p: list(read_tar_samples(p)),
            "count_tar_samples": count_tar_samples, "TarShards": lambda p: TarShards([p]),
            "read_records": lambda p: list(read_records(p)), "count_records": count_records,
            "TFRecordDataset": TFRecordDataset, "CSVImages": CSVImages}


@pytest.mark.parametrize("reader", sorted(_readers_of_streamed_data()))
def test_a_fifo_given_to_a_streamed_data_reader_is_refused_not_waited_on(tmp_path, reader):
    fifo = tmp_path / "data"
    os.mkfifo(fifo)
    blocked, result = _blocks(lambda: _readers_of_streamed_data()[reader](fifo), seconds=5)
    if blocked:
        with open(fifo, "wb"):          # unblock the reader so the test process can end
            pass
        pytest.fail(f"{reader} blocked on a FIFO")
    error = result.get("error")
    assert isinstance(error, (OSError, ValueError)), result
    assert "FIFO" in str(error) and "\n" not in str(error), str(error)


def _shards(folder):
    import io

    from PIL import Image

    from cupycnn.data import write_shards
    out = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(out, format="PNG")
    write_shards([(f"s{k}", out.getvalue(), "png", k % 2) for k in range(4)], folder,
                 classes=["a", "b"])
    return folder / "index.json"


@pytest.mark.parametrize("index, match", [
    ('{"format": "cupycnn.shards/1", "classes": [], "shards": '
     '[{"file": "shard-000000.tar", "samples": 1000000000000}]}',
     r"says the shard .* holds 1000000000000 samples; its \d+ bytes hold at most \d+"),
    ('[1, 2]', r"is not a cupycnn shard index \(format 'list'"),
    ('{"format": "cupycnn.shards/1", "shards": [{"file": "shard-000000.tar"}]}',
     r"shard 'shard-000000.tar' has 'None' samples, not a count"),
    ('{"format": "cupycnn.shards/1", "shards": [{"file": "shard-000000.tar", "samples": "4"}]}',
     r"has '4' samples, not a count"),
    ('{"format": "cupycnn.shards/1", "shards": [{"file": "../x.tar", "samples": 1}]}',
     r"names the shard '../x.tar', which is not a file in its folder"),
    ('{"format": "cupycnn.shards/1", "shards": [7]}', r"shard 0 is not"),
    ('{"format": "cupycnn.shards/1", "classes": [1], "shards": []}', r"classes are not"),
    ('{"format": ', r"not JSON"),
])
def test_a_shard_index_is_checked_as_data_before_planning(tmp_path, index, match):
    from cupycnn.data import ShardError, TarShards
    path = _shards(tmp_path / "shards")
    path.write_text(index, encoding="utf-8")
    with pytest.raises(ShardError, match=match) as info:
        TarShards(tmp_path / "shards")
    assert "\n" not in str(info.value)


def _npz_declaring(path, shape):
    """An .npz whose member's header declares `shape` but holds 8 bytes of data."""
    import zipfile

    from numpy.lib import format as npy
    import io
    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                        "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("weight.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + bytes(8))


def test_pretrained_weights_are_checked_before_numpy_allocates_them(tmp_path):
    from cupycnn.models.pretrained import read_state
    path = tmp_path / "w.npz"
    _npz_declaring(path, (1 << 40,))
    with pytest.raises(ValueError, match=r"declares shape \(1099511627776,\) "
                                         r"\(4,398,046,511,104 bytes\) and holds"):
        read_state(path)
    np.savez(path, weight=np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(read_state(path)["weight"], np.arange(4))   # a good one loads
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    blocked, result = _blocks(lambda: read_state(fifo), seconds=5)
    if blocked:
        with open(fifo, "wb"):
            pass
        pytest.fail("read_state blocked on a FIFO")
    assert "FIFO" in str(result.get("error")), result


def test_a_fifo_given_as_the_config_file_is_one_sentence(tmp_path):
    import subprocess
    import sys
    fifo = tmp_path / "run.toml"
    os.mkfifo(fifo)
    out = subprocess.run([sys.executable, "-m", "cupycnn", "train", "--config", str(fifo),
                          "--device", "numpy"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1].endswith(
        f"error: --config: {fifo} is a FIFO (named pipe), not a regular file; a config file "
        f"must be one"), out.stderr
