"""A one-process run needs neither MPI nor NCCL: where mpi4py is installed without an MPI library
(mpi4py 4 then raises `RuntimeError: cannot load MPI library` from `from mpi4py import MPI`, as on
the GPU image), `distributed.init()` gives a single-process context and the training command runs.
tests/stubs/gpu_image, put first on PYTHONPATH, is such an mpi4py, and a tensorboardX that is not
there (the GPU image lacks it too: training goes on without TensorBoard logs, and says so)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUB = Path(__file__).resolve().parent / "stubs" / "gpu_image"
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS",
                      "SLURM_NTASKS", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK",
                      "SLURM_PROCID")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(STUB), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _run(code, **extra):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=_env(**extra), cwd=ROOT)


def test_the_stub_raises_what_mpi4py_raises_without_a_library():
    out = _run("from mpi4py import MPI")
    assert out.returncode != 0 and "RuntimeError: cannot load MPI library" in out.stderr


@pytest.mark.parametrize("device", ["numpy", "sim"])
def test_init_gives_a_single_process_without_mpi(device):
    out = _run("import cupycnn; from cupycnn import distributed; "
               f"cupycnn.use('{device}'); ctx = distributed.init(); "
               "print(ctx.rank, ctx.size, ctx.backend, ctx.mpi)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "1", "none", "None"]


def test_under_a_launcher_of_several_processes_no_mpi_is_one_clear_error():
    out = _run("import cupycnn; from cupycnn import distributed; cupycnn.use('numpy'); "
               "distributed.init()", PMI_SIZE="4", PMI_RANK="1")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "one of 4 that a launcher started, but MPI is unusable here" in last, out.stderr
    assert "cannot load MPI library" in last


def test_a_single_rank_with_mpi_uses_no_collectives():
    """Started without mpirun but with a working MPI: size 1, no communicator to build (on cuda
    that would need NCCL)."""
    from cupycnn import distributed
    ctx = distributed.Context(None, "numpy")
    assert ctx.backend == "none"
    with pytest.raises(ValueError, match="needs MPI"):
        distributed.Context(None, "numpy", backend="mpi")


def test_train_cifar_digits_one_epoch_runs_where_mpi_cannot_load(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "train_cifar.py"), "--dataset",
                          "digits", "--epochs", "1", "--device", "numpy", "--no-progress",
                          "--log-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "run" / "log.csv").exists(), out.stdout[-2000:]
    assert "tensorboardX is not installed, so no TensorBoard logs" in out.stderr
