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

def test_external_storage_pointing_at_another_file_is_refused(tmp_path):
    secret = tmp_path / "passwd"
    secret.write_bytes(SECRET * 2)
    path = tmp_path / "evil.h5"
    _checkpoint(path)
    _replace(path, "model/weight", external=[(str(secret), 0, 16 * 8 * 4)])
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
    secret = tmp_path / "passwd"
    secret.write_bytes(SECRET * 2)
    path = tmp_path / "evil.h5"
    _checkpoint(path)
    _replace(path, "model/weight", external=[(str(secret), 0, 16 * 8 * 4)])
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

def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    except Exception as e:            # what was refused, and how much was allocated to refuse
        error = e
    else:
        error = None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, error


def test_a_declared_gigabyte_is_refused_without_allocating_it(tmp_path):
    path = tmp_path / "evil.h5"
    _checkpoint(path)
    with h5py.File(path, "a") as f:       # 1 GiB declared, nothing stored: 80 kB on disk
        f.create_dataset("model/unexpected", shape=(2 ** 28,), dtype=np.float32, chunks=(4096,))
    reseal(path)
    assert path.stat().st_size < 200_000
    peak, error = _peak_bytes(lambda: load_checkpoint(path))
    assert isinstance(error, CheckpointError), error
    assert "model/unexpected" in str(error)
    assert peak < 16 << 20, f"allocated {peak / 2**20:.0f} MiB to refuse an 80 kB file"


def test_a_huge_declared_weight_of_the_right_name_is_refused(tmp_path):
    path = tmp_path / "evil.h5"
    _checkpoint(path)
    _replace(path, "model/weight", shape=(2 ** 27, 2), chunks=(4096, 2))
    peak, error = _peak_bytes(lambda: load_checkpoint(path))
    assert isinstance(error, CheckpointError), error
    assert peak < 16 << 20, f"allocated {peak / 2**20:.0f} MiB"


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
    peak, error = _peak_bytes(lambda: load_model(path))
    assert isinstance(error, CheckpointError), error
    assert peak < 64 << 20, f"allocated {peak / 2**20:.0f} MiB for the config"


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
