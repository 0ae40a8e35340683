"""The watchdog on collectives (issue 12, item 5): a rank that stalls (sleeps, is stopped with
SIGSTOP, is rank 0 itself) ends the job within the timeout, with one line naming the ranks that
have not arrived, the collective and the step; a rank that fails or dies ends it within seconds;
a healthy job never trips it. Real CPU ranks under mpiexec, on the MPI path and on the NCCL path
(tests/fake_nccl.py)."""
import time

import pytest

from test_distributed import mpirun

TIMEOUT = 3          # seconds: the watchdog's, in these runs


def run(mode, device="numpy", n=3, timeout=TIMEOUT):
    started = time.monotonic()
    out = mpirun(n, "watchdog.py", mode, device, str(timeout), timeout=240)
    return out, time.monotonic() - started


def _the_line(out):
    lines = [line for line in out.stderr.splitlines() if "collective timeout" in line]
    assert len(lines) == 1, out.stdout + out.stderr       # one report, not one per rank
    return lines[0]


@pytest.mark.parametrize("mode, device, culprit", [
    ("sleep", "numpy", 2),
    ("stop", "numpy", 2),
    ("sleep", "fake-cuda", 2),
    pytest.param("root", "numpy", 0, marks=pytest.mark.slow),
    pytest.param("stop", "fake-cuda", 2, marks=pytest.mark.slow),
])
def test_a_stalled_rank_ends_the_job_naming_it(mode, device, culprit):
    out, seconds = run(mode, device)
    assert out.returncode != 0
    line = _the_line(out)
    assert line.startswith("cupycnn: collective timeout: rank ")
    assert "in collective #16 (iallreduce_sum_ of float32[1,000]) at step 4 (epoch 1)" in line
    assert f"; rank {culprit} (at step " in line and line.endswith(
        "has not arrived; aborting the job"), line
    assert "DONE" not in out.stdout
    assert seconds < TIMEOUT + 60, seconds             # the timeout, and start-up, and no more


def test_a_stopped_rank_0_is_named_though_it_keeps_the_table():
    out, _ = run("stop-root")
    assert out.returncode != 0
    assert "rank 0, which keeps the watchdog's table, does not answer" in _the_line(out)


def test_the_trainer_names_its_step():
    out, _ = run("trainer", n=2)
    assert out.returncode != 0
    line = _the_line(out)
    assert "at step 3 (epoch 1)" in line and "rank 1 (at step 2" in line, line


@pytest.mark.parametrize("device", ["numpy", pytest.param("fake-cuda", marks=pytest.mark.slow)])
def test_a_healthy_job_never_trips_it(device):
    out, _ = run("healthy", device, timeout=1)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("DONE") == 3 and "collective timeout" not in out.stderr


@pytest.mark.parametrize("mode, says", [
    ("kill", "Killed (signal 9)"),                          # the launcher ends the job
    ("raise", "cupycnn: rank 2 of 3 failed, aborting the job: RuntimeError: this rank failed"),
])
def test_a_failing_or_dead_rank_ends_the_job_within_seconds(mode, says):
    out, seconds = run(mode, timeout=600)                   # the watchdog is not what ends it
    assert out.returncode != 0
    assert says in out.stdout + out.stderr
    assert "collective timeout" not in out.stderr
    assert seconds < 60, seconds
