"""Data-parallel training end to end under mpiexec (tests/mpi/training.py): exact metrics from
sharded evaluation, rank 0 alone printing and writing, and a job that loses a rank ending at
once instead of hanging."""
import os
import subprocess
import sys

import pytest

from test_distributed import MPIEXEC, SCRIPTS


def mpiexec(n, *args, timeout=120):
    """`mpiexec -prepend-rank -n n python tests/mpi/training.py args...`: every output line
    starts with "[rank] "."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([str(MPIEXEC), "-prepend-rank", "-n", str(n), sys.executable,
                           str(SCRIPTS / "training.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_sharded_evaluation_and_training_figures_equal_one_process():
    """23 examples on 4 ranks (pad=False shards of 6, 6, 6 and 5): count and accuracy exactly
    the one-process figures, the loss too with batches of 1 and to float32 rounding with
    batches of 4; padded shards (the control) would count 24. An epoch of fit reports the
    one-process figures for the global batch. On numpy and on sim (the metrics kernel)."""
    out = mpiexec(4, "metrics", "numpy,sim")
    assert out.returncode == 0, out.stdout + out.stderr
    for device in ("numpy", "sim"):
        for batch in (1, 4):
            assert f"[0] OK evaluate {device} batch={batch} ranks=4 count=23 " in out.stdout, \
                out.stdout + out.stderr
        assert f"[0] OK fit {device} ranks=4 " in out.stdout, out.stdout + out.stderr


def test_only_rank_zero_prints_and_writes(tmp_path):
    """Trainer.fit with checkpoints (best, last), a CSV log, TensorBoard and early stopping,
    and a final save_checkpoint: every rank is given paths of its own, and only rank 0's are
    written; every line of output, stdout and stderr (the progress bars), is rank 0's."""
    out = mpiexec(2, "rank0", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[0] all 2 ranks trained: True" in out.stdout
    written = sorted(os.listdir(tmp_path / "rank0"))
    assert written == ["best.h5", "final.h5", "last.h5", "log.csv", "tensorboard"]
    assert os.listdir(tmp_path / "rank0" / "tensorboard")
    assert os.listdir(tmp_path / "rank1") == []
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert sum("epoch 2/2:" in line for line in lines) == 1
    assert any(line.startswith("[0]") and "validation" in line for line in lines)
    assert all(line.startswith("[0] ") for line in lines), lines


@pytest.mark.parametrize("how, message", [
    ("raise", "cupycnn: rank 1 of 3 failed, aborting the job: RuntimeError: simulated failure "
              "on one rank"),
    ("sysexit", "cupycnn: rank 1 of 3 failed, aborting the job: SystemExit: exit status 2")])
def test_an_error_on_one_rank_aborts_the_job_with_its_rank_and_error(how, message):
    """Inside abort_on_error, an exception or a non-zero sys.exit on rank 1 while ranks 0 and 2
    wait in a collective: the job ends with the rank and the error printed, and no rank goes
    on (rank 1 itself does not carry on after MPI_Abort returns)."""
    out = mpiexec(3, "die", how, timeout=60)
    assert out.returncode != 0
    assert f"[1] {message}" in out.stderr, out.stderr
    assert "finished" not in out.stdout, out.stdout


@pytest.mark.parametrize("how", ["kill", "exit3"])
def test_a_rank_that_dies_without_an_exception_takes_the_job_down(how):
    """Rank 1 killed by SIGKILL, or leaving with os._exit(3), in the middle of training, with no
    Python exception to catch: MPICH's mpiexec (Hydra) sees a process end without
    MPI_Finalize, kills the other ranks, which wait in the gradient all-reduce, and returns a
    non-zero status (the dead rank's, or 9 for the SIGKILL it sent the others), within seconds
    (the timeout would fail a hang)."""
    out = mpiexec(3, "die", how, timeout=60)
    assert out.returncode != 0, out.stdout + out.stderr
    assert "finished" not in out.stdout, out.stdout
    if how == "kill":
        assert "BAD TERMINATION" in out.stdout + out.stderr


def test_a_rank_that_leaves_with_status_zero_still_takes_the_job_down():
    """The pitfall docs/DISTRIBUTED.md warns about: os._exit(0) on rank 1 mid-training. Hydra
    still kills the others (no rank finishes, no hang), but the job's status is a race between
    the dead rank's 0 and the 9 of the SIGKILL sent to the others (both seen here), so it may
    say success: a training script should be judged by its final checkpoint, not by the status
    alone."""
    out = mpiexec(3, "die", "exit0", timeout=60)
    assert out.returncode in (0, 9), out.stdout + out.stderr
    assert "finished" not in out.stdout, out.stdout
