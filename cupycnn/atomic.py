"""Writing files so that nothing already saved is lost: checkpoints, image caches, the CSV log.

    with atomic.replace(path, what="checkpoint") as partial:
        write_everything_to(partial)
    # path now holds the new file, or (after any failure or kill) still the previous one

The file is written beside its destination under a temporary name
`.<name>.<host>.<pid>.<random>.partial`, flushed to disk (fsync), then renamed over the
destination (atomic on POSIX) and the folder synced, so a reader sees the old file or the new,
never half of one. On top of that:

- Ctrl-C and SIGTERM that arrive during the write are held back and delivered right after the
  rename (`deferred_signals`): the save completes, then the interrupt raises as usual. Without
  this a KeyboardInterrupt could land inside h5py's teardown, where it is swallowed, and
  training would go on.
- A kill -9 cannot run any cleanup, so each write first removes the partial files that earlier
  writers of the same destination left behind: those named for this host whose process no
  longer exists (`remove_stale_partials`).
- The file gets the permissions a plain `open()` would give it (0666 less the umask), not the
  0600 of a temporary file.
- A failure is one sentence (`WriteError`, an OSError): "cannot write the checkpoint
  runs/x/last.h5: No space left on device (the previous file is kept)", instead of a traceback
  from h5py or the csv module. `check_writable` and `check_free_space` say the same before
  training, where it can be known.
"""
import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

DEFERRED = (signal.SIGINT, signal.SIGTERM)
LEGACY_STALE_SECONDS = 3600      # partial files of older versions (no pid in the name)


class WriteError(OSError):
    """A file could not be written; the message is one sentence and the previous file is
    kept. `errno` is the underlying error's (ENOSPC for a full disk, EROFS, EACCES, ...)."""

    def __init__(self, code, message):
        OSError.__init__(self, code, message)

    def __str__(self):
        return self.strerror


def umask():
    """The process's umask, read without changing it (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:                  # elsewhere: set and restore (racy only across threads)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_umask_lock = threading.Lock()


def _host():
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[^.]+\.partial$")
_LEGACY = re.compile(r"^\.(?P<name>.+)\.[^.]+\.partial$")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:            # someone else's process: alive
        return True
    return True


def remove_stale_partials(path):
    """Delete the partial files of `path` left by writers that were killed: those of this host
    whose process is gone, and unnamed ones (older cupycnn) untouched for an hour. Returns the
    paths removed."""
    path = Path(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    host = _host()
    for entry in entries:
        if not (entry.name.startswith(f".{path.name}.") and entry.name.endswith(".partial")):
            continue
        match = _PARTIAL.match(entry.name)
        stale = False
        if match and match["name"] == path.name:
            stale = match["host"] == host and not _alive(int(match["pid"]))
        elif _LEGACY.match(entry.name):
            try:
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > \
                    LEGACY_STALE_SECONDS
            except OSError:
                stale = False
        if stale and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _deliver(signum, previous):
    if callable(previous):
        previous(signum, None)          # Python's default_int_handler raises KeyboardInterrupt
    elif previous == signal.SIG_DFL:
        signal.raise_signal(signum)     # the default action (SIGTERM: the process ends)


@contextlib.contextmanager
def deferred_signals(signals=DEFERRED):
    """Hold back `signals` (Ctrl-C, SIGTERM) while the block runs and deliver each once, to
    the handler that was in place, when it ends. Only the main thread receives signals; in
    another thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {}

    def hold(signum, frame):
        received.append(signum)

    for s in signals:
        try:
            previous[s] = signal.signal(s, hold)
        except (ValueError, OSError):    # pragma: no cover - not settable here
            pass
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(received):
            _deliver(s, previous[s])


def _describe(error):
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "No space left on device (the disk is full)"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    # h5py: "Unable to ... (file write failed: ..., errno = 28, error message = 'No space ...')"
    found = re.search(r"errno = (\d+), error message = '([^']*)'", text)
    if found:
        code = int(found.group(1))
        return "No space left on device (the disk is full)" if code == errno.ENOSPC else \
            found.group(2)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _errno_of(error):
    if isinstance(error, OSError) and error.errno:
        return error.errno
    found = re.search(r"errno = (\d+)", str(error))
    return int(found.group(1)) if found else None


def write_error(what, path, error, kept=True):
    """A WriteError saying in one sentence that `what` at `path` could not be written."""
    tail = " (the previous file is kept)" if kept and Path(path).exists() else ""
    return WriteError(_errno_of(error) or errno.EIO,
                      f"cannot write the {what} {path}: {_describe(error)}{tail}")


@contextlib.contextmanager
def replace(path, what="file", defer_signals=True):
    """Yield a temporary path beside `path`; when the block ends without error, make it `path`
    (fsync, rename, sync the folder). Signals are deferred across the whole write and rename
    (defer_signals). Any OSError (and h5py's) while writing becomes a WriteError naming `what`;
    the temporary file never outlives the block (unless the process is killed: the next
    write of `path` removes it)."""
    path = Path(path)
    guard = deferred_signals() if defer_signals else contextlib.nullcontext()
    with guard:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(what, path, e) from None
        remove_stale_partials(path)
        try:
            fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_host()}."
                                           f"{os.getpid()}.", suffix=".partial")
        except OSError as e:
            raise write_error(what, path, e) from None
        try:
            try:
                os.fchmod(fd, 0o666 & ~umask())
            finally:
                os.close(fd)
            try:
                yield Path(partial)
                with open(partial, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(partial, path)
            except WriteError:
                raise
            except OSError as e:
                raise write_error(what, path, e) from None
            _sync_folder(path.parent)
        finally:
            if os.path.lexists(partial):
                with contextlib.suppress(OSError):
                    os.unlink(partial)


def _sync_folder(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(folder, what="files"):
    """Make `folder` if needed and prove that a file can be created in it (then removed);
    WriteError in one sentence if not (a read-only or missing folder, no permission)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".cupycnn-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise WriteError(_errno_of(e) or errno.EIO,
                         f"cannot write {what} in {folder}: {_describe(e)}") from None
    return folder


def check_free_space(folder, needed, what="files"):
    """WriteError if `folder`'s file system has fewer than `needed` bytes free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise WriteError(errno.ENOSPC, f"not enough space in {folder} for {what}: about "
                                       f"{_mb(needed)} needed, {_mb(free)} free")


def _mb(n):
    return f"{n / 1e6:.1f} MB"
