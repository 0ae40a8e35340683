"""The NCCL path of cupycnn.distributed without a GPU: tests/mpi/nccl_path.py runs
NcclCommunicator, the bucketed all-reduce over it and synchronised batchnorm on tests/fake_nccl.py
over tests/fake_cupy.py (a stream-ordered fake GPU: queued work in adversarial seeded orders,
CuPy's pool, NCCL collectives as MPI collectives on the device bytes; CuPy 13's and 14's NCCL
API) and checks every result's data against the MPI path. It also shows that the checks catch a
wait_event taken out of the collectives. What it cannot check: NCCL itself
(benchmarks/distributed_gpu_check.py, on a GPU)."""
import pytest

from test_distributed import mpirun


@pytest.mark.parametrize("cupy_version", [13, 14])
@pytest.mark.parametrize("n", [1, 3])
def test_nccl_path_matches_the_mpi_path(n, cupy_version):
    out = mpirun(n, "nccl_path.py", str(cupy_version), timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    for r in range(n):
        assert f"rank {r} OK" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("removed", ["collective-waits-compute", "compute-waits-collective"])
def test_a_removed_wait_event_is_caught(removed):
    out = mpirun(2, "nccl_path.py", "14", removed, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    for r in range(2):
        assert f"rank {r} CAUGHT" in out.stdout, out.stdout + out.stderr
    assert "bucketed all-reduce" in out.stdout, out.stdout
