"""CIFAR-10 from its official archives: 60,000 32x32 colour images in 10 classes, 50,000 for
training and 10,000 for testing (https://www.cs.toronto.edu/~kriz/cifar.html).

Two official formats, both read here:

python  `cifar-10-python.tar.gz` -> `cifar-10-batches-py/`: `data_batch_1` ... `data_batch_5`,
        `test_batch`, `batches.meta`. Each batch is a pickle (protocol 2, written by Python 2's
        cPickle) of a dict with bytes keys: b"data" a uint8 array [10000, 3072], b"labels" a
        list of ints, b"batch_label", b"filenames"; `batches.meta` holds b"label_names".
binary  `cifar-10-binary.tar.gz` -> `cifar-10-batches-bin/`: `data_batch_1.bin` ...
        `data_batch_5.bin`, `test_batch.bin`, `batches.meta.txt` (a class name per line). Each
        batch is 10000 records of 3073 bytes: the label, then the pixels.

In both, an image's 3072 bytes are the red plane, then the green, then the blue, each 32 rows of
32 pixels: byte c*1024 + y*32 + x is channel c of pixel (y, x). They come out as HWC uint8.

Pickles can run code when loaded, so the batches are read by `RestrictedUnpickler`, which admits
only the three globals the official files name (numpy's array reconstruction, ndarray, dtype) and
refuses any other with an error that names it: a tampered file cannot run code.

The archive is downloaded (with a progress bar and an md5 check) when it is not found. Without it
and without a network, `DatasetNotFoundError` says in one message where to put which file and how
to run on a dataset that needs no download. The URLs and md5 sums are the module constants below
(the tests point them at a local server).
"""
import pickle
from pathlib import Path

import numpy as np

from . import download as _download
from .base import ArrayDataset

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_BINARY_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"

IMAGE_SHAPE = (32, 32, 3)
RECORD_BYTES = 1 + 32 * 32 * 3           # binary format: label byte, then R, G, B planes

# What each format's archive holds, under its top folder.
FORMATS = {
    "python": {"archive": "cifar-10-python.tar.gz", "folder": "cifar-10-batches-py",
               "train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"],
               "meta": "batches.meta"},
    "binary": {"archive": "cifar-10-binary.tar.gz", "folder": "cifar-10-batches-bin",
               "train": [f"data_batch_{k}.bin" for k in range(1, 6)], "test": ["test_batch.bin"],
               "meta": "batches.meta.txt"},
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk and could not be downloaded. The message says which
    file to put where, and how to run on a dataset that needs no download."""


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle named a global that the official CIFAR-10 files never reference (a ValueError
    too: like every damaged or foreign file, one line from the command)."""


def _numpy_reconstruct():
    try:                                   # NumPy 2 moved numpy.core to numpy._core
        from numpy._core.multiarray import _reconstruct
    except ImportError:                    # pragma: no cover - NumPy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _printable(text, limit=80):
    """A name read from a file, safe for a one-line message."""
    text = text if text.isprintable() else ascii(text)[1:-1]
    return text if len(text) <= limit else text[:limit - 3] + "..."


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals the official CIFAR-10 pickles reference:
    `numpy.core.multiarray._reconstruct`, `numpy.ndarray` and `numpy.dtype` (how NumPy pickles
    an array). Any other global (`os.system`, `builtins.eval`, ...) raises UnsafePickleError
    naming it, before anything is called. Strings of the Python 2 pickles load as bytes."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    DTYPES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8"}

    def __init__(self, file, source="<pickle>"):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module, name):
        try:
            found = self.ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in self.ALLOWED)
            raise UnsafePickleError(
                f"{self.source}: refused to load the global {_printable(module)}."
                f"{_printable(name)}: the official "
                f"CIFAR-10 files reference only {allowed}, so this file is not one of them "
                f"(tampered or damaged); nothing in it was run") from None
        # Even the allowed ones only with the arguments NumPy's pickles give them: an empty
        # array that the pickle then fills with bytes it holds (_reconstruct(ndarray, (0,),
        # b"b") could otherwise allocate any shape), and the plain dtypes CIFAR-10 uses.
        if found is np.ndarray:
            return found
        if found is np.dtype:
            return self._dtype
        return self._reconstruct

    def _reconstruct(self, subtype, shape, dtype_code):
        if subtype is not np.ndarray or tuple(shape) != (0,) or dtype_code != b"b":
            raise UnsafePickleError(
                f"{self.source}: refused numpy's _reconstruct{(subtype, shape, dtype_code)!r}: "
                f"NumPy's pickles make an empty array (ndarray, (0,), b'b') and fill it with "
                f"bytes the file holds")
        return self.ALLOWED[("numpy.core.multiarray", "_reconstruct")](subtype, shape,
                                                                       dtype_code)

    def _dtype(self, code, align=False, copy=True):
        code = code.decode("ascii", "replace") if isinstance(code, bytes) else code
        if code not in self.DTYPES:
            raise UnsafePickleError(f"{self.source}: refused the dtype {code!r}: CIFAR-10 "
                                    f"holds only {', '.join(sorted(self.DTYPES))}")
        return np.dtype(code, bool(align), bool(copy))


MAX_FILE_BYTES = 64 << 20      # an official batch is 31 MB (the pickle) or 30.7 MB (binary)


def _read_bounded(path):
    """The bytes of the regular file `path`, at most MAX_FILE_BYTES (read in one go, so that a
    length a pickle declares never allocates more than the file holds)."""
    from .. import safe_hdf5
    info = safe_hdf5.check_regular_file(path, ValueError, "CIFAR-10 file")
    if info.st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {info.st_size:,} bytes; a CIFAR-10 batch file has at most "
                         f"{MAX_FILE_BYTES:,}")
    with open(path, "rb") as f:
        data = f.read(info.st_size + 1)
    if len(data) > MAX_FILE_BYTES:                  # it grew since
        raise ValueError(f"{path}: more than {MAX_FILE_BYTES:,} bytes; a CIFAR-10 batch file "
                         f"has at most that")
    return data


def _check_opcodes(data):
    """Walk the pickle's opcodes without building anything (pickletools): every length it
    declares must be present in the file, and memo indices must count up from 0, before the
    unpickler runs (it allocates a BINBYTES's declared length, and a memo up to the largest
    index, before reading a byte of them)."""
    import pickletools
    puts = 0
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if not isinstance(arg, int) or arg > puts:
                raise ValueError(f"memo index {arg} after {puts} entries")
            puts += arg == puts
        elif opcode.name == "MEMOIZE":
            puts += 1


def load_pickle(path):
    """The object pickled in `path`, read by `RestrictedUnpickler` from the file's bytes
    (at most MAX_FILE_BYTES, every declared length checked first)."""
    import io
    data = _read_bounded(path)
    try:
        _check_opcodes(data)
        return RestrictedUnpickler(io.BytesIO(data), source=str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not a readable CIFAR-10 pickle ({type(e).__name__}: "
                         f"{e})") from None


def planes_to_hwc(rows):
    """uint8 [N, 3072] rows (R plane, G plane, B plane, each row-major 32x32) -> [N, 32, 32, 3]."""
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _read_python_batch(path):
    batch = load_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: expected a dict with keys b'data' and b'labels', got {keys}")
    data, labels = batch[b"data"], batch[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == RECORD_BYTES - 1):
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path}: b'data' must be a uint8 array [N, {RECORD_BYTES - 1}], got "
                         f"{type(data).__name__} of shape {shape}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise ValueError(f"{path}: b'labels' must be {len(data)} integers, got "
                         f"{type(labels).__name__} of length {_length(labels)}")
    if isinstance(labels, list) and not all(type(v) is int for v in labels):
        raise ValueError(f"{path}: b'labels' must be {len(data)} integers")
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: b'labels' must be {len(data)} integers, got shape "
                         f"{labels.shape} of {labels.dtype}")
    return data, labels, [f.decode("utf-8", "replace") for f in batch.get(b"filenames", [])]


def _length(value):
    try:
        return len(value)
    except TypeError:
        return None


def _read_binary_batch(path):
    raw = np.frombuffer(_read_bounded(path), dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of "
                         f"{RECORD_BYTES}-byte CIFAR-10 records (1 label + 3072 pixels)")
    records = raw.reshape(-1, RECORD_BYTES)
    return records[:, 1:], records[:, 0].astype(np.int64), []


def _read_meta(fmt, path):
    if fmt == "binary":
        try:
            text = _read_bounded(path).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e})") from None
        names = [line.strip() for line in text.splitlines()]
        names = [n for n in names if n]
    else:
        meta = load_pickle(path)
        if not isinstance(meta, dict) or b"label_names" not in meta:
            raise ValueError(f"{path}: expected a dict with the key b'label_names'")
        names = [n.decode("utf-8") if isinstance(n, bytes) else str(n)
                 for n in meta[b"label_names"]]
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


class CIFAR10(ArrayDataset):
    """CIFAR-10, as torchvision's `datasets.CIFAR10(root, train, download)`: `root` holds the
    archive `cifar-10-python.tar.gz` and/or its extracted folder `cifar-10-batches-py/`.

    `train=True` gives the 50,000 training images (data_batch_1..5, in order), False the 10,000
    test images. `download=True` fetches the archive when neither it nor the extracted folder is
    in `root`. `format` is "python" (the pickled batches), "binary" (`cifar-10-binary.tar.gz`,
    `cifar-10-batches-bin/`) or "auto": whichever is in `root`, the python one first, and the
    python one to download when neither is.

    images uint8 [N, 32, 32, 3] (RGB, HWC); labels int64 [N]; classes the 10 names of
    `batches.meta` ("airplane", "automobile", ...); `filenames` the original image names (python
    format only, else empty)."""

    def __init__(self, root, train=True, download=True, format="auto"):
        if format not in ("auto", *FORMATS):
            raise ValueError(f"CIFAR10: format must be 'auto', 'python' or 'binary', got "
                             f"{format!r}")
        self.root = Path(root).expanduser().absolute()
        self.train = bool(train)
        self.format = self._choose_format() if format == "auto" else format
        folder = self._prepare(self.format, download)
        spec = FORMATS[self.format]
        classes = _read_meta(self.format, folder / spec["meta"])
        read = _read_python_batch if self.format == "python" else _read_binary_batch
        parts = [read(folder / name) for name in spec["train" if train else "test"]]
        data = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
        self.filenames = [f for p in parts for f in p[2]]
        super().__init__(planes_to_hwc(data), labels, classes)

    def _files(self, fmt):
        spec = FORMATS[fmt]
        return [spec["meta"], *spec["train" if self.train else "test"]]

    def _extracted(self, fmt):
        folder = self.root / FORMATS[fmt]["folder"]
        return all((folder / name).is_file() for name in self._files(fmt))

    def _choose_format(self):
        for fmt in FORMATS:
            if self._extracted(fmt):
                return fmt
        for fmt in FORMATS:
            if (self.root / FORMATS[fmt]["archive"]).is_file():
                return fmt
        return "python"

    def _prepare(self, fmt, download):
        """The folder of extracted batches, extracting or downloading the archive if needed."""
        spec = FORMATS[fmt]
        folder = self.root / spec["folder"]
        if self._extracted(fmt):
            return folder
        archive = self.root / spec["archive"]
        url, md5 = _source(fmt)
        if not archive.is_file():
            if not download:
                raise DatasetNotFoundError(_offline_message(self.root, fmt, "download=False"))
            import http.client
            import urllib.error
            try:
                _download.download(url, archive, md5)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = getattr(e, "reason", None) or e
                raise DatasetNotFoundError(_offline_message(
                    self.root, fmt, f"{type(e).__name__}: {reason}")) from None
        else:
            got = _download.md5sum(archive)
            if got != md5:
                raise ValueError(f"CIFAR10: {archive} has md5 {got}, expected {md5}: it is not "
                                 f"the official {spec['archive']} or it is damaged. Delete it "
                                 f"to download it again, or replace it with a good copy from "
                                 f"{url}")
        names = [f"{spec['folder']}/{n}" for n in (spec["meta"], *spec["train"], *spec["test"])]
        _download.extract_members(archive, names, self.root)
        return folder


def _source(fmt):
    # Read at call time, so that a test can point the constants elsewhere.
    return ((CIFAR10_URL, CIFAR10_MD5) if fmt == "python"
            else (CIFAR10_BINARY_URL, CIFAR10_BINARY_MD5))


def _offline_message(root, fmt, reason):
    spec = FORMATS[fmt]
    url, md5 = _source(fmt)
    return (f"CIFAR-10 is not in {root} and could not be downloaded ({reason}). To use it "
            f"without a network, put the official archive {spec['archive']} (from {url}, md5 "
            f"{md5}) at {root / spec['archive']}, or its extracted folder at "
            f"{root / spec['folder']}, and run again. To run offline on a dataset that needs no "
            f"download instead, use --dataset digits (scikit-learn's 8x8 handwritten digits) or "
            f"--dataset synthetic (in Python: cupycnn.data.Digits() or "
            f"cupycnn.data.Synthetic(n)).")
