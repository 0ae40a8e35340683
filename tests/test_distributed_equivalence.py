"""Data parallelism changes nothing but rounding: N ranks (2 and 4) with batch B/N each end with
the parameters of one process with batch B, after several optimizer steps, with and without
(synchronised) batchnorm, on numpy (float32 and float64) and on sim.

The script, tests/mpi/equivalence.py, explains why the two runs see the same examples at every
step and why their gradients are equal up to the order of summation; it aborts the job with the
rank and the error if any comparison fails, and prints the measured differences otherwise."""
import pytest

from test_distributed import mpirun


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("device, dtypes", [("numpy", "float32,float64"), ("sim", "float32")])
def test_n_ranks_train_to_the_parameters_of_one_process(device, dtypes, n):
    out = mpirun(n, "equivalence.py", device, dtypes)
    assert out.returncode == 0, out.stdout + out.stderr
    for dtype in dtypes.split(","):
        for kind in ("plain", "bn"):
            assert f"OK {kind} {dtype} ranks={n} " in out.stdout, out.stdout + out.stderr
