"""Interrupts, kills, full disks and read-only folders (issue 12, items 4, 6 and 10): nothing
already saved is lost, no interrupt is swallowed, every failure is one sentence, before
training where it can be known.

A full disk and a read-only folder are real: a 1 MB tmpfs, and a read-only bind mount, in a
private mount namespace (`unshare -rm`, no root needed where user namespaces are enabled, as
on the project's machines and CI's); where that is unavailable those tests are skipped, saying
why."""
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cupycnn
from cupycnn import atomic
from cupycnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cupycnn.layers import Dense

HERE = Path(__file__).parent
CHILD = HERE / "reliability_child.py"
ROOT = HERE.parent


@pytest.fixture(autouse=True)
def _numpy(numpy_device):
    pass


def _partials(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".partial"))


# ---------------------------------------------------------------- item 4: Ctrl-C, SIGTERM

class _Optimizer:
    def state_dict(self):
        return {"state": {i: {"momentum_buffer": np.full((128, 64), float(i))} for i in range(6)},
                "param_groups": [{"lr": 0.1, "params": list(range(6))}]}


def test_ctrl_c_during_a_save_arrives_after_the_rename_every_time(tmp_path):
    """SIGINT at a random moment of each of 40 saves: every one raises KeyboardInterrupt (none
    swallowed, as h5py's teardown used to swallow some), and only after the new checkpoint is
    complete in place."""
    path = tmp_path / "last.h5"
    model = Dense(128, 128)
    started = time.perf_counter()
    save_checkpoint(path, model=model, optimizer=_Optimizer(), epoch=0)
    duration = time.perf_counter() - started
    rng = random.Random(12)
    swallowed, early = [], []
    for epoch in range(1, 41):
        timer = threading.Timer(rng.uniform(0.0, duration),
                                lambda: os.kill(os.getpid(), signal.SIGINT))
        entered = False
        try:
            timer.start()                     # a timer of ~0 s fires before start() returns
            entered = True
            save_checkpoint(path, model=model, optimizer=_Optimizer(), epoch=epoch)
            timer.join()
            deadline = time.monotonic() + 2.0     # a signal still in flight lands here (on a
            while time.monotonic() < deadline:    # loaded machine, not always within 50 ms)
                time.sleep(0.01)
        except KeyboardInterrupt:
            timer.join()
            if not entered:                   # before the save began: another epoch's case
                continue
            if load_checkpoint(path).epoch != epoch:
                early.append(epoch)
            continue
        swallowed.append(epoch)
    assert not swallowed, f"Ctrl-C swallowed during the saves of epochs {swallowed}"
    assert not early, f"Ctrl-C interrupted the saves of epochs {early} (the old file stayed)"
    assert _partials(tmp_path) == []


def test_sigterm_during_saves_ends_the_process_with_a_complete_checkpoint(tmp_path):
    child = subprocess.Popen([sys.executable, str(CHILD), "saves", str(tmp_path)],
                             stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: _partials(tmp_path) and (tmp_path / "last.h5").exists(), child)
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGTERM
    load_checkpoint(tmp_path / "last.h5")           # complete
    assert _partials(tmp_path) == []                 # the save in flight was finished


def _wait_for(condition, child, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_ctrl_c_ends_the_training_command_with_one_line(tmp_path):
    log_dir = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "train_cifar.py"), "--dataset", "digits",
         "--epochs", "1000", "--device", "numpy", "--no-progress", "--log-dir", str(log_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (log_dir / "last.h5").exists(), child, seconds=300)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("cupycnn: interrupted (Ctrl-C) during epoch "), err
    assert f"the last checkpoint is {log_dir / 'last.h5'} (after epoch " in last
    assert last.endswith("continue with --resume")


# ------------------------------------------------------- item 6: kill -9, leftovers, log

def _train_with_kills(tmp_path, kills, epochs=3):
    """Run the child's training, kill -9 it `kills` times while it writes a checkpoint (and
    once at a random moment), resume each time; returns the folder."""
    folder = tmp_path / "run"
    folder.mkdir()
    rng = random.Random(kills)
    done = 0
    for attempt in range(kills + 20):
        child = subprocess.Popen([sys.executable, str(CHILD), "train", str(folder), str(epochs)],
                                 stderr=subprocess.PIPE)
        try:
            if done < kills:
                deadline = time.monotonic() + 120
                seen = 0
                while child.poll() is None and time.monotonic() < deadline:
                    if _partials(folder):
                        seen += 1
                        if seen > rng.randrange(3):      # vary where in the write it lands
                            child.send_signal(signal.SIGKILL)
                            done += 1
                            break
                    time.sleep(0.001)
            child.wait(timeout=300)
        finally:
            child.kill()
        if child.returncode == 0:
            break
        assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-3000:]
    assert child.returncode == 0 and done == kills, (child.returncode, done)
    return folder


@pytest.mark.parametrize("kills", [pytest.param(20, id="20 kills")])     # about 4 s
def test_kill_9_mid_save_loses_nothing_and_resumes_exactly(tmp_path, kills):
    straight = tmp_path / "straight"
    straight.mkdir()
    subprocess.run([sys.executable, str(CHILD), "train", str(straight), "3"], check=True,
                   timeout=300)
    folder = _train_with_kills(tmp_path, kills)
    final, expected = np.load(folder / "final.npz"), np.load(straight / "final.npz")
    for name in expected.files:
        np.testing.assert_array_equal(final[name], expected[name], err_msg=name)
    assert _partials(folder) == [], "killed saves left partial files behind"
    rows = (folder / "log.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "epoch,accuracy,images_per_second,loss,lr"
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"], rows
    loss = [[r.split(",")[3] for r in (f / "log.csv").read_text(encoding="utf-8").splitlines()[1:]]
            for f in (folder, straight)]
    assert loss[0] == loss[1]


def test_stale_partials_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "last.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = atomic._host()
    stale = tmp_path / f".last.h5.{host}.{dead.pid}.abc.partial"
    live = tmp_path / f".last.h5.{host}.{os.getpid()}.def.partial"
    other_host = tmp_path / f".last.h5.elsewhere.{dead.pid}.ghi.partial"
    other_file = tmp_path / f".best.h5.{host}.{dead.pid}.jkl.partial"
    for p in (stale, live, other_host, other_file):
        p.write_bytes(b"x" * 100)
    save_checkpoint(target, model=Dense(2, 2))
    assert not stale.exists()
    assert live.exists() and other_host.exists() and other_file.exists()


# -------------------------------------------------------- item 10: disks and folders

def test_files_get_the_permissions_of_the_umask(tmp_path):
    from cupycnn.data.folder import write_hdf5
    from cupycnn.train import CSVLogger
    from cupycnn.train.trainer import History
    previous = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "c.h5", model=Dense(2, 2))
        write_hdf5(tmp_path / "cache.h5", np.zeros((1, 2, 2, 3), np.uint8), [0], ["a"])

        class Stub:
            is_root = True
            history = History()

        Stub.history.append(0, {"loss": 1.0})
        logger = CSVLogger(tmp_path / "log.csv")
        logger.set_trainer(Stub())
        logger.on_epoch_end(0, {"loss": 1.0})
        from cupycnn.data import write_shards, write_tfrecords
        write_shards([("s0", b"x" * 10, "png", 0)], tmp_path / "shards")
        write_tfrecords([(b"x" * 10, 0)], tmp_path / "records", prefix="r")
    finally:
        os.umask(previous)
    for name in ("c.h5", "cache.h5", "log.csv", "shards/shard-000000.tar", "shards/index.json",
                 "records/r-00000-of-00001.tfrec"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def _namespaces_available():
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare -rm failed: {probe.stderr.strip()}"


NO_NAMESPACES = _namespaces_available()
needs_mounts = pytest.mark.skipif(NO_NAMESPACES is not None,
                                  reason=f"no private mount namespace ({NO_NAMESPACES})")


def _in_namespace(script, timeout=300):
    """Run a shell script in a private mount namespace (its mounts vanish with it)."""
    return subprocess.run(["unshare", "-rm", "sh", "-ec", script], capture_output=True,
                          text=True, timeout=timeout)


@needs_mounts
def test_a_full_disk_is_one_sentence_and_keeps_the_previous_files(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    out = _in_namespace(f"mount -t tmpfs -o size=1m tmpfs {disk}; "
                        f"{sys.executable} {CHILD} full-disk {disk}")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    up_front = next(line for line in lines if line.startswith("up front:"))
    assert "CheckpointWriteError" in up_front and "not enough space in" in up_front
    mid = next(line for line in lines if line.startswith("mid-write:"))
    assert "CheckpointWriteError: cannot write the checkpoint" in mid
    assert "No space left on device" in mid and "(the previous file is kept)" in mid
    assert "kept epoch 1" in lines
    csv = next(line for line in lines if line.startswith("csv:"))
    assert "cannot write the CSV log" in csv and "No space left on device" in csv
    assert "log epoch,loss|1,0.5|" in lines                     # the old log, whole
    assert "partials []" in lines


@needs_mounts
def test_a_read_only_log_folder_is_one_sentence_before_training(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    out = _in_namespace(
        f"mount --bind {logs} {logs}; mount -o remount,ro,bind {logs}; "
        f"{sys.executable} {ROOT / 'examples' / 'train_cifar.py'} --dataset synthetic "
        f"--synthetic-size 64 --epochs 1 --model simple_cnn --device numpy --no-progress "
        f"--log-dir {logs / 'run'} || echo exit=$?")
    assert "exit=2" in out.stdout, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: cannot write logs and checkpoints in {logs / 'run'}: Read-only file system"]


@needs_mounts
def test_read_only_folders_for_each_writer_are_one_sentence(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "tb").mkdir()
    out = _in_namespace(f"mount --bind {folder} {folder}; mount -o remount,ro,bind {folder}; "
                        f"{sys.executable} {CHILD} read-only {folder}")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    expected = ["save_checkpoint: CheckpointWriteError: cannot write the checkpoint",
                "write_hdf5: WriteError: cannot write the image cache",
                "CSVLogger.on_epoch_end: WriteError: cannot write the CSV log",
                "CSVLogger.on_train_begin: WriteError: cannot write the CSV log in",
                "ModelCheckpoint.on_train_begin: WriteError: cannot write checkpoints in",
                "TensorBoard.on_train_begin: WriteError: cannot write TensorBoard logs in",
                "write_shards: WriteError: cannot write the shards in",
                "write_tfrecords: WriteError: cannot write the TFRecord files in"]
    assert len(lines) == len(expected), lines
    for line, start in zip(lines, expected):
        assert line.startswith(start) and line.endswith("Read-only file system"), line
    assert out.stderr.strip() == "", out.stderr


@needs_mounts
def test_make_shards_into_a_read_only_folder_is_one_sentence(tmp_path):
    from PIL import Image
    images, folder = tmp_path / "images", tmp_path / "ro"
    for name in ("a", "b"):
        (images / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / name / "0.png")
    folder.mkdir()
    out = _in_namespace(f"mount --bind {folder} {folder}; mount -o remount,ro,bind {folder}; "
                        f"{sys.executable} -m cupycnn data make-shards {images} {folder / 'out'}"
                        f" || echo exit=$?")
    assert "exit=2" in out.stdout, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        f"cupycnn data make-shards: error: cannot write the shards in {folder / 'out'}: "
        f"Read-only file system"], out.stderr


def test_a_slow_drip_download_gives_up_at_its_deadline(tmp_path, monkeypatch):
    """A server that sends a byte every 0.1 s never trips the per-read timeout; the overall
    deadline ends the download, in one sentence, leaving nothing behind."""
    import http.server
    from cupycnn.data import download

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(10000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(download.DownloadTooSlowError,
                           match=r"gave up on http://127.0.0.1:\d+/x after 2 s"):
            download.download(f"http://127.0.0.1:{server.server_port}/x", tmp_path / "x.tar.gz",
                              timeout=1.0, deadline=2.0)
    finally:
        server.shutdown()
    assert time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == []
