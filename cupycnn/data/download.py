"""Downloading a file with a progress bar and an md5 check, and extracting chosen members of a
tar archive.

The progress bar goes to stderr: percentage, bytes so far and in all, rate and time left,
rewritten in place on a terminal (at most every PROGRESS_INTERVAL seconds) and as a line every
PROGRESS_INTERVAL_FILE seconds elsewhere (a log), always ending with one final line.
"""
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .. import atomic

CHUNK = 1 << 16
PROGRESS_INTERVAL = 0.1           # seconds between redraws on a terminal
PROGRESS_INTERVAL_FILE = 10.0     # seconds between lines when stderr is a file or a pipe
TIMEOUT = 30.0                    # seconds without data before a download is given up
DEADLINE = 3 * 3600.0             # seconds for a whole download, however the data trickles


class DownloadTooSlowError(OSError):
    """A download did not finish within its deadline (a server that sends a byte now and then
    never trips the per-read timeout)."""


def md5sum(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _megabytes(n):
    return f"{n / 1e6:.1f}"


def _clock(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """A one-line progress bar on stderr: `update(n)` after every n bytes, `close()` at the end."""

    def __init__(self, label, total=None, stream=None):
        self.label, self.total, self.done = label, total, 0
        self.stream = sys.stderr if stream is None else stream
        self.start = self._last = time.monotonic()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = PROGRESS_INTERVAL if self.tty else PROGRESS_INTERVAL_FILE
        self._width = 0                   # of the line on screen, to blank a longer old one

    def line(self):
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta = _clock(left) if left != float("inf") else "?"
            return (f"{self.label}: {100 * self.done / self.total:3.0f}% "
                    f"{_megabytes(self.done)}/{_megabytes(self.total)} MB, "
                    f"{rate / 1e6:.2f} MB/s, ETA {eta}")
        return (f"{self.label}: {_megabytes(self.done)} MB, {rate / 1e6:.2f} MB/s, "
                f"{_clock(elapsed)} elapsed")

    def update(self, n):
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._write(final=False)

    def _write(self, final):
        if self.tty:
            line = self.line()
            self.stream.write("\r" + line.ljust(self._width) + ("\n" if final else ""))
            self._width = 0 if final else len(line)
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self):
        self._write(final=True)

    def abort(self):
        """End a line left open on a terminal, so that an error message starts on its own."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()


def download(url, path, md5=None, timeout=TIMEOUT, deadline=DEADLINE):
    """Download `url` to `path` with a progress bar on stderr, then check its md5.

    The data goes to a temporary file beside `path`, renamed into place only once complete and
    verified: an interrupted or corrupt download never leaves a file at `path`. `timeout`
    bounds each wait for data, `deadline` the whole download (DownloadTooSlowError). Raises
    `urllib.error.URLError` / `OSError` when the server cannot be reached and `ValueError` when
    the md5 differs (the download is deleted)."""
    import urllib.request
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".part")
    os.fchmod(fd, 0o666 & ~atomic.umask())
    progress = None
    started = time.monotonic()
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                progress = Progress(path.name, int(length) if length else None)
                # read1: whatever has arrived (read(n) would wait for all n bytes, a byte at a
                # time from a slow server, past any deadline)
                for block in iter(lambda: response.read1(CHUNK), b""):
                    out.write(block)
                    progress.update(len(block))
                    if time.monotonic() - started > deadline:
                        raise DownloadTooSlowError(
                            f"gave up on {url} after {deadline:g} s: {progress.done:,} bytes "
                            f"of {int(length) if length else 'unknown'} arrived; try again, or "
                            f"download it yourself and put it at {path}")
                progress.close()
        if md5 is not None:
            got = md5sum(tmp)
            if got != md5:
                raise ValueError(f"the download of {url} is corrupt: its md5 is {got}, "
                                 f"expected {md5}; it was deleted. Run again to retry, or put "
                                 f"a good copy at {path}")
        os.replace(tmp, path)
    except BaseException:
        if progress is not None:
            progress.abort()
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def extract_members(archive, members, dest):
    """Extract the regular files named `members` (paths inside the archive) from the tar archive
    `archive` into `dest`, each written to a temporary file and renamed into place.

    Only the listed names are written, at `dest/<name>` (names with `..` or an absolute path are
    refused), so a crafted archive cannot write anywhere else. Returns the written paths. Raises
    ValueError naming a missing member."""
    import tarfile
    dest = Path(dest)
    written = []
    with tarfile.open(archive, "r:*") as tar:
        for name in members:
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"refusing to extract {name!r}: not a relative path")
            try:
                info = tar.getmember(name)
            except KeyError:
                raise ValueError(f"{archive} has no member {name}: it is not the archive "
                                 f"expected (or it is damaged)") from None
            if not info.isfile():
                raise ValueError(f"{archive}: member {name} is not a regular file")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".part")
            try:
                with os.fdopen(fd, "wb") as out, tar.extractfile(info) as src:
                    shutil.copyfileobj(src, out, CHUNK)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            written.append(target)
    return written
