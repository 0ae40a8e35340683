"""Small CIFAR-10 archives in the exact official formats, for the tests.

The official python batches were written by Python 2's cPickle, protocol 2: dict keys and other
strings are Python 2 `str`, stored as SHORT_BINSTRING/BINSTRING (they load as bytes with
encoding="bytes"), and the arrays name `numpy.core.multiarray._reconstruct`, `numpy.ndarray` and
`numpy.dtype`. Python 3's pickle, even at protocol 2, writes bytes through `_codecs.encode` and
NumPy 2 names `numpy._core`, so `Py2Pickler` writes the Python 2 opcodes itself.
"""
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from cupycnn.data.cifar import _numpy_reconstruct

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
_reconstruct = _numpy_reconstruct()
_PY2_GLOBALS = {id(_reconstruct): ("numpy.core.multiarray", "_reconstruct"),
                id(np.ndarray): ("numpy", "ndarray"), id(np.dtype): ("numpy", "dtype")}


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did at protocol 2 for what CIFAR-10 holds: bytes as
    Python 2 str, NumPy arrays and dtypes as NumPy of that time reduced them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file):
        super().__init__(file, protocol=2)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if id(obj) in _PY2_GLOBALS:
            module, name = _PY2_GLOBALS[id(obj)]
            self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            return (_reconstruct, (np.ndarray, (0,), b"b"),
                    (1, obj.shape, obj.dtype, False, obj.tobytes()))
        if isinstance(obj, np.dtype):
            return (np.dtype, (obj.str[1:].encode(), 0, 1),
                    (3, b"|", None, None, None, -1, -1, 0))
        return NotImplemented


def py2_pickle(obj):
    buffer = io.BytesIO()
    Py2Pickler(buffer).dump(obj)
    return buffer.getvalue()


def hwc_to_rows(images):
    """uint8 [N, 32, 32, 3] -> [N, 3072]: the R plane, then G, then B, each row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def make_split(rng, sizes):
    """Random images and labels for batches of the given sizes."""
    return [(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
             rng.integers(0, 10, n).astype(np.int64)) for n in sizes]


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def python_batch(images, labels, batch_label):
    return py2_pickle({
        b"batch_label": batch_label.encode(),
        b"labels": [int(v) for v in labels],
        b"data": hwc_to_rows(images),
        b"filenames": [f"image_{k:05d}.png".encode() for k in range(len(labels))],
    })


def write_python_archive(path, train, test):
    """`cifar-10-python.tar.gz`: `train` a list of 5 (images, labels), `test` one."""
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "cifar-10-batches-py/batches.meta", py2_pickle({
            b"num_cases_per_batch": sum(len(lab) for _, lab in train) // len(train),
            b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}))
        for k, (images, labels) in enumerate(train, 1):
            _add(tar, f"cifar-10-batches-py/data_batch_{k}",
                 python_batch(images, labels, f"training batch {k} of 5"))
        _add(tar, "cifar-10-batches-py/test_batch",
             python_batch(*test, "testing batch 1 of 1"))
        _add(tar, "cifar-10-batches-py/readme.html", b"<html>CIFAR-10</html>\n")
    return Path(path)


def extracted_python_archive(data_dir, train_per_batch, test, seed=0):
    """CIFAR-10 as the training command finds it under --data-dir: the python archive of random
    images (5 batches of `train_per_batch`, `test` test images) written and extracted, the
    archive removed (its md5 check is for the real one)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    archive = write_python_archive(data_dir / "cifar-10-python.tar.gz",
                                   make_split(rng, [train_per_batch] * 5),
                                   make_split(rng, [test])[0])
    with tarfile.open(archive) as tar:
        tar.extractall(data_dir)
    archive.unlink()
    return data_dir


def binary_batch(images, labels):
    records = np.concatenate([labels.astype(np.uint8)[:, None], hwc_to_rows(images)], axis=1)
    return records.tobytes()


def write_binary_archive(path, train, test):
    """`cifar-10-binary.tar.gz`: records of 1 label byte + 3072 pixel bytes."""
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "cifar-10-batches-bin/batches.meta.txt",
             ("\n".join(CLASSES) + "\n\n").encode())
        for k, (images, labels) in enumerate(train, 1):
            _add(tar, f"cifar-10-batches-bin/data_batch_{k}.bin", binary_batch(images, labels))
        _add(tar, "cifar-10-batches-bin/test_batch.bin", binary_batch(*test))
        _add(tar, "cifar-10-batches-bin/readme.html", b"<html>CIFAR-10</html>\n")
    return Path(path)
