"""Data-parallel plumbing on CPU ranks, started with the mpiexec of the virtual environment."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "mpi"
MPIEXEC = Path(sys.executable).parent / "mpiexec"     # the mpich wheel's, beside the venv's python


def mpirun(n, script, *args, timeout=240):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([str(MPIEXEC), "-n", str(n), sys.executable, str(SCRIPTS / script),
                           *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_single_process_without_mpirun():
    out = subprocess.run([sys.executable, str(SCRIPTS / "collectives.py"), "collectives"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "rank 0/1 local 0/1 OK" in out.stdout


@pytest.mark.parametrize("n", [2, 4])
def test_allreduce_broadcast_and_local_rank(n):
    out = mpirun(n, "collectives.py", "collectives")
    assert out.returncode == 0, out.stderr
    for r in range(n):
        assert f"rank {r}/{n} local {r}/{n} OK" in out.stdout


def test_rank_zero_parameters_reach_every_rank():
    out = mpirun(3, "collectives.py", "broadcast_parameters")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("OK") == 3


def test_mismatched_ranks_are_refused_with_the_difference():
    out = mpirun(2, "collectives.py", "mismatch")
    assert out.returncode == 0, out.stderr
    for r in range(2):
        assert f"rank {r} refused: the ranks do not run the same job" in out.stdout
    assert "rank 1 has global batch = 32 where rank 0 has 64" in out.stdout
    assert "rank 1 has parameters" in out.stdout


def test_a_failing_rank_aborts_the_job_instead_of_hanging():
    out = mpirun(2, "collectives.py", "abort", timeout=120)
    assert out.returncode != 0
    assert "cupycnn: rank 1 of 2 failed, aborting the job: RuntimeError: simulated failure" \
        in out.stderr
    assert "the abort did not happen" not in out.stdout


@pytest.mark.parametrize("device", ["numpy", "sim"])
def test_ranks_draw_their_own_dropout_masks_and_augmentations(device):
    out = mpirun(2, "collectives.py", "streams", device)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("OK") == 2
