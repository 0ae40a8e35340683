"""CIFAR10 on small archives in the exact official formats: parsing and pixel order, both
formats, the download path against a local HTTP server (progress, md5 check, a corrupt download
refused), the offline message, and tampered pickles refused."""
import functools
import hashlib
import http.server
import os
import pickle
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from cupycnn.data import CIFAR10, DatasetNotFoundError, UnsafePickleError
from cupycnn.data import cifar, download
from cifar_archives import (CLASSES, hwc_to_rows, make_split, py2_pickle, write_binary_archive,
                            write_python_archive)

TRAIN_SIZES = (3, 2, 4, 1, 2)        # five batches of different sizes
TEST_SIZE = 3


@pytest.fixture
def splits(rng):
    train = make_split(rng, TRAIN_SIZES)
    test = make_split(rng, (TEST_SIZE,))[0]
    return train, test


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _check(ds, parts):
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    assert ds.images.dtype == np.uint8 and ds.images.shape == (len(labels), 32, 32, 3)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.labels.dtype == np.int64
    assert ds.classes == CLASSES
    assert len(ds) == len(labels)
    image, label = ds[len(ds) - 1]
    np.testing.assert_array_equal(image, images[-1])
    assert label == labels[-1]


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_reads_both_official_formats(tmp_path, splits, fmt, monkeypatch):
    train, test = splits
    write = write_python_archive if fmt == "python" else write_binary_archive
    archive = write(tmp_path / cifar.FORMATS[fmt]["archive"], train, test)
    md5 = "CIFAR10_MD5" if fmt == "python" else "CIFAR10_BINARY_MD5"
    monkeypatch.setattr(cifar, md5, _md5(archive))
    ds = CIFAR10(tmp_path, train=True, download=False)       # finds the archive, extracts it
    assert ds.format == fmt
    _check(ds, train)
    assert (tmp_path / cifar.FORMATS[fmt]["folder"] / cifar.FORMATS[fmt]["meta"]).is_file()
    archive.unlink()                                          # the extracted folder suffices
    _check(CIFAR10(tmp_path, train=False, download=False), [test])
    if fmt == "python":
        assert ds.filenames[:3] == ["image_00000.png", "image_00001.png", "image_00002.png"]


def test_pixel_order_is_red_green_blue_planes_row_major(tmp_path, monkeypatch):
    # One image built byte by byte in the official layout: byte c*1024 + y*32 + x is channel c
    # of pixel (y, x). Every byte distinct mod 256 in a known pattern.
    row = np.zeros(3072, np.uint8)
    row[0 * 1024 + 1 * 32 + 2] = 200          # red at (y=1, x=2)
    row[1 * 1024 + 5 * 32 + 0] = 100          # green at (y=5, x=0)
    row[2 * 1024 + 31 * 32 + 30] = 50         # blue at (y=31, x=30)
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 1, 2, 0], image[0, 5, 0, 1], image[0, 31, 30, 2] = 200, 100, 50
    np.testing.assert_array_equal(hwc_to_rows(image)[0], row)  # the helper agrees with the spec
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    (folder / "test_batch.bin").write_bytes(bytes([7]) + row.tobytes())
    ds = CIFAR10(tmp_path, train=False, download=False)
    assert ds.labels.tolist() == [7]
    got = ds.images[0]
    assert (got[1, 2] == [200, 0, 0]).all() and (got[5, 0] == [0, 100, 0]).all()
    assert (got[31, 30] == [0, 0, 50]).all() and int(got.sum()) == 350


def test_auto_prefers_the_python_format(tmp_path, splits, monkeypatch):
    train, test = splits
    py = write_python_archive(tmp_path / "cifar-10-python.tar.gz", train, test)
    write_binary_archive(tmp_path / "cifar-10-binary.tar.gz", train, test)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", _md5(py))
    assert CIFAR10(tmp_path, download=False).format == "python"
    with pytest.raises(ValueError, match="has md5 .* expected c32a1d4ab5d03f1284b67883e8d87530"):
        CIFAR10(tmp_path, download=False, format="binary")    # the official md5 is checked


def test_archive_with_the_wrong_md5_is_refused(tmp_path, splits):
    archive = write_python_archive(tmp_path / "cifar-10-python.tar.gz", *splits)
    with pytest.raises(ValueError) as info:
        CIFAR10(tmp_path, download=False)
    message = str(info.value)
    assert str(archive) in message and _md5(archive) in message
    assert cifar.CIFAR10_MD5 in message and "Delete it" in message
    assert not (tmp_path / "cifar-10-batches-py").exists()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """A folder served on 127.0.0.1; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_from_a_server_with_progress_and_md5(tmp_path, rng, http_root, monkeypatch,
                                                       capfd):
    served, base = http_root
    train = make_split(rng, (40, 40, 40, 40, 40))          # ~600 kB: several progress lines
    test = make_split(rng, (5,))[0]
    archive = write_python_archive(served / "cifar-10-python.tar.gz", train, test)
    monkeypatch.setattr(cifar, "CIFAR10_URL", f"{base}/cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar, "CIFAR10_MD5", _md5(archive))
    monkeypatch.setattr(download, "PROGRESS_INTERVAL_FILE", 0.0)  # a line per chunk
    root = tmp_path / "data"
    ds = CIFAR10(root)                                     # download=True by default
    _check(ds, train)
    assert _md5(root / "cifar-10-python.tar.gz") == _md5(archive)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py",
                                                      "cifar-10-python.tar.gz"]
    out, err = capfd.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) >= 3, err
    assert all(line.startswith("cifar-10-python.tar.gz: ") for line in lines)
    assert all("MB/s" in line and "ETA" in line for line in lines)
    percents = [int(line.split(": ")[1].split("%")[0]) for line in lines]
    assert percents == sorted(percents) and percents[0] < 100 and percents[-1] == 100
    size_mb = f"{archive.stat().st_size / 1e6:.1f}"
    assert f"{size_mb}/{size_mb} MB" in lines[-1]
    CIFAR10(root, train=False)                             # no second download
    assert capfd.readouterr().err == ""


def test_corrupt_download_is_refused_and_deleted(tmp_path, splits, http_root, monkeypatch):
    served, base = http_root
    archive = write_python_archive(served / "cifar-10-python.tar.gz", *splits)
    good = _md5(archive)
    with open(archive, "r+b") as f:                        # damage one byte in transit
        f.seek(archive.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(cifar, "CIFAR10_URL", f"{base}/cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar, "CIFAR10_MD5", good)
    root = tmp_path / "data"
    with pytest.raises(ValueError) as info:
        CIFAR10(root)
    message = str(info.value)
    assert "is corrupt" in message and good in message and _md5(archive) in message
    assert str(root / "cifar-10-python.tar.gz") in message
    assert list(root.iterdir()) == []                      # nothing half-written is left


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("why", ["no server", "download=False", "not found"])
def test_offline_is_one_clear_message(tmp_path, http_root, monkeypatch, why):
    served, base = http_root
    url = (f"http://127.0.0.1:{_closed_port()}/cifar-10-python.tar.gz" if why == "no server"
           else f"{base}/cifar-10-python.tar.gz")          # "not found": the server has no file
    monkeypatch.setattr(cifar, "CIFAR10_URL", url)
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR10(root, download=(why != "download=False"))
    message = str(info.value)
    assert "\n" not in message
    assert info.value.__cause__ is None          # no chained traceback under the message
    assert info.value.__context__ is None or info.value.__suppress_context__
    assert f"at {root.absolute() / 'cifar-10-python.tar.gz'}" in message
    assert url in message and cifar.CIFAR10_MD5 in message
    assert "--dataset digits" in message
    expected = {"no server": "URLError", "download=False": "download=False",
                "not found": "HTTPError"}[why]
    assert expected in message
    assert not root.exists() or not any(root.iterdir())


def _tampered_batch(payload):
    """A data batch in the official format whose b"data" calls `payload` = (callable, args)
    when loaded by a plain pickle.load."""
    class Exploit:
        def __reduce__(self):
            return payload
    return py2_pickle({b"data": Exploit(), b"labels": [0]})


# Named as the file names them: protocol 2 writes Python 2's module names (builtins is
# __builtin__, os.system lives in posix).
@pytest.mark.parametrize("payload, named", [
    ((os.system, ("touch PWNED",)), f"{os.system.__module__}.system"),
    ((eval, ("open('PWNED', 'w')",)), "__builtin__.eval"),
    ((shutil.copy, ("cifar-10-batches-py/batches.meta", "PWNED")), "shutil.copy"),
])
def test_tampered_pickle_is_refused_naming_the_global(tmp_path, monkeypatch, payload, named):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [c.encode() for c in
                                                                       CLASSES]}))
    (folder / "test_batch").write_bytes(_tampered_batch(payload))
    with pytest.raises(UnsafePickleError) as info:
        CIFAR10(tmp_path, train=False, download=False)
    message = str(info.value)
    assert f"refused to load the global {named}" in message
    assert str(folder / "test_batch") in message
    assert not (tmp_path / "PWNED").exists()
    with pytest.raises(Exception):                # what a plain pickle.load would have done
        pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")["missing"]
    assert (tmp_path / "PWNED").exists()


def test_python3_protocol_2_pickles_need_a_global_the_official_files_lack(tmp_path):
    # Python 3 writes bytes at protocol 2 through _codecs.encode: the official files (Python 2)
    # never do, so such a file is refused, by name, like any other unknown global.
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"]}, protocol=2))
    with pytest.raises(UnsafePickleError, match="global _codecs.encode"):
        cifar.load_pickle(folder / "batches.meta")


def test_malformed_files_are_clear_errors(tmp_path, splits):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [c.encode() for c in
                                                                       CLASSES]}))
    good = py2_pickle({b"data": hwc_to_rows(splits[1][0]), b"labels": [1, 2, 3]})
    (folder / "test_batch").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="test_batch: not a readable CIFAR-10 pickle"):
        CIFAR10(tmp_path, train=False, download=False)
    (folder / "test_batch").write_bytes(py2_pickle({b"data": np.zeros((2, 100), np.uint8),
                                                    b"labels": [1, 2]}))
    with pytest.raises(ValueError, match=r"uint8 array \[N, 3072\], got ndarray of shape "
                                         r"\(2, 100\)"):
        CIFAR10(tmp_path, train=False, download=False)
    binary = tmp_path / "cifar-10-batches-bin"
    binary.mkdir()
    (binary / "batches.meta.txt").write_text("a\nb\n", encoding="utf-8")
    (binary / "test_batch.bin").write_bytes(bytes(3073 + 5))
    with pytest.raises(ValueError, match="3078 bytes is not a whole number of 3073-byte"):
        CIFAR10(tmp_path, train=False, download=False, format="binary")


def test_extraction_writes_only_the_expected_members(tmp_path, splits, monkeypatch):
    archive = write_python_archive(tmp_path / "cifar-10-python.tar.gz", *splits)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "cifar-10-batches-py/readme.html" in names
    monkeypatch.setattr(cifar, "CIFAR10_MD5", _md5(archive))
    CIFAR10(tmp_path, download=False)
    extracted = sorted(p.name for p in (tmp_path / "cifar-10-batches-py").iterdir())
    assert extracted == sorted(["batches.meta", "test_batch",
                                *[f"data_batch_{k}" for k in range(1, 6)]])
    with pytest.raises(ValueError, match="not a relative path"):
        download.extract_members(archive, ["../escape"], tmp_path / "x")


class _Terminal:
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_progress_on_a_terminal_redraws_one_line_with_rate_and_eta(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(download.time, "monotonic", lambda: clock[0])
    screen = _Terminal()
    progress = download.Progress("cifar-10-python.tar.gz", 100_000_000, stream=screen)
    for _ in range(4):                       # 10 MB a second
        clock[0] += 1.0
        progress.update(10_000_000)
    progress.abort()                         # an error now would start on a new line
    draws = screen.text.split("\r")[1:]
    assert len(draws) == 4 and screen.text.endswith("\n")
    assert draws[1].rstrip() == "cifar-10-python.tar.gz:  20% 20.0/100.0 MB, 10.00 MB/s, ETA 0:08"
    assert draws[3].rstrip() == "cifar-10-python.tar.gz:  40% 40.0/100.0 MB, 10.00 MB/s, ETA 0:06"
    unknown = download.Progress("file", None, stream=_Terminal())
    clock[0] += 2.0
    unknown.update(5_000_000)
    assert unknown.line() == "file: 5.0 MB, 2.50 MB/s, 0:02 elapsed"
