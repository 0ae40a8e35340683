"""Data parallelism changes nothing but rounding: N ranks (2 and 4) with batch B/N each end with
the parameters of one process with batch B, after several optimizer steps, with and without
(synchronised) batchnorm, on numpy (float32 and float64) and on sim.

The same examples: the Loader shards as DistributedSampler (rank r takes positions r, r + N,
... of the epoch's permutation), so with B/N per rank the N ranks' step k takes exactly
positions [kB, (k+1)B), the one process's batch k (the dataset is a multiple of B: no short
batch, no padding).
The same gradient: one process's is (1/B) sum_i g_i; each rank's loss is the mean over its B/N
examples, the all-reduce sums the ranks and the optimizer scales by 1/N, which gives
(1/N) sum_r (N/B) sum_{i in r} g_i = (1/B) sum_i g_i because the per-rank batches are equal (the
mean of unequal per-rank means would not be the global mean). B = 8 and N = 2, 4 are powers of
two, so every scale factor is exact in floating point and only the order of summation differs:
the tolerance is rounding (1e-5 relative in float32, 1e-12 in float64; measured about 5e-7 and
2e-15). Synchronised batchnorm makes the statistics the B examples' too; the control, batchnorm
without synchronisation, must miss by far more than the tolerance.

The script, tests/mpi/equivalence.py, says this at length; it aborts the job with the rank and
the error if any comparison fails, and prints the measured differences otherwise."""
import numpy as np
import pytest

import cupycnn
from cupycnn import distributed
from cupycnn.layers import BatchNorm1D, BatchNorm2D, Conv2D, Dense, Flatten, ReLU, Sequential
from cupycnn.layers.normalization import local_statistics
from test_distributed import mpirun


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("device, dtypes", [("numpy", "float32,float64"), ("sim", "float32")])
def test_n_ranks_train_to_the_parameters_of_one_process(device, dtypes, n):
    out = mpirun(n, "equivalence.py", device, dtypes)
    assert out.returncode == 0, out.stdout + out.stderr
    for dtype in dtypes.split(","):
        for kind in ("plain", "bn"):
            assert f"OK {kind} {dtype} ranks={n} " in out.stdout, out.stdout + out.stderr


def test_sync_batchnorm_in_one_process_is_the_identity(rng):
    """With one rank the synchronised statistics are the local ones: sync_batchnorm sets every
    BatchNorm1D/2D's hook (and no other layer's), and forward, backward and the running
    statistics are bit-identical to plain batchnorm; local_batchnorm puts the default back."""
    cupycnn.use("numpy")
    ctx = distributed.Context(None, "numpy")

    def model():
        cupycnn.manual_seed(1)
        return Sequential(Conv2D(2, 3, 3, padding=1), BatchNorm2D(3), ReLU(), Flatten(),
                          Dense(3 * 4 * 4, 5), BatchNorm1D(5))

    plain, synced = model(), model()
    assert ctx.synchronize_batchnorm(synced) == 2
    hooks = [layer.stats_reducer for layer in synced.layers()
             if isinstance(layer, (BatchNorm1D, BatchNorm2D))]
    assert all(isinstance(h, distributed.AllReduceStatistics) for h in hooks)
    x = rng.standard_normal((4, 2, 4, 4)).astype(np.float32)
    dy = rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_array_equal(plain.forward(x), synced.forward(x))
    np.testing.assert_array_equal(plain.backward(dy), synced.backward(dy))
    for (name, a), (_, b) in zip(plain.state_dict().items(), synced.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    for p, q in zip(plain.parameters(), synced.parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=p.name)
    distributed.local_batchnorm(synced)
    assert all(layer.stats_reducer is local_statistics for layer in synced.layers()
               if isinstance(layer, (BatchNorm1D, BatchNorm2D)))
