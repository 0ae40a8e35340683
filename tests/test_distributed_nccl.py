"""The NCCL path of cupycnn.distributed without a GPU: tests/mpi/nccl_path.py runs
NcclCommunicator, the bucketed all-reduce over it and synchronised batchnorm's statistics on
tests/fake_nccl.py (CuPy's NCCL API as cupy_backends/cuda/libs/nccl.pyx defines it, carried out
by MPI on host memory) and compares every result with the MPI path. What it proves: the unique
id reaches every rank, the calls have CuPy's signatures and dtype constants, collectives wait for
the compute stream and are waited for by it without host synchronisation, buckets go out during
backward. What it cannot: NCCL itself (benchmarks/distributed_gpu_check.py, on a GPU)."""
import pytest

from test_distributed import mpirun


@pytest.mark.parametrize("n", [1, 3])
def test_nccl_path_matches_the_mpi_path(n):
    out = mpirun(n, "nccl_path.py", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for r in range(n):
        assert f"rank {r} OK" in out.stdout, out.stdout + out.stderr
