"""Run under mpiexec by tests/test_distributed_buckets.py: the bucketed, overlapped all-reduce of
Context.backward (non-blocking MPI collectives launched during backward) gives the same flat
gradient buffer as one plain Allreduce of the whole buffer after a plain backward, for several
bucket sizes, with parameter groups that interleave layers and with a branch that backward
never reaches; and the optimizer's grad_scale is 1/N.

Each rank has its own inputs, so the ranks' gradients differ. The comparison is exact: both
sides add the same N numbers per element, and MPICH (the mpich wheel of the dev extra) adds
them in the same order for a bucket as for the whole buffer. (With 2 ranks any order gives the
same bits; an MPI library that chose its summation order by message length could differ in the
last bit with 4.)
"""
import sys
from pathlib import Path

import numpy as np

import cupycnn
from cupycnn import distributed
from cupycnn.layers import Dense, ReLU, Sequential
from cupycnn.optim import SGD

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))       # tests/
from test_distributed_buckets import TwoBranches, weights_then_biases  # noqa: E402

cupycnn.use("numpy")
ctx = distributed.init()
rng = np.random.default_rng(100 + ctx.rank)

with ctx.abort_on_error():
    for unused_branch in (False, True):
        for groups in (False, True):
            for bucket_bytes in (1, 200, 600, 1 << 20):
                cupycnn.manual_seed(3)
                middle = TwoBranches(7) if unused_branch else Dense(7, 7)
                model = Sequential(Dense(5, 7), ReLU(), middle, ReLU(), Dense(7, 9), ReLU(),
                                   Dense(9, 3))
                optimizer = SGD(weights_then_biases(model) if groups else model.parameters(),
                                lr=0.1)
                if unused_branch:
                    for grad in middle.unused.grads.values():
                        grad[...] = rng.standard_normal(grad.shape)
                x = rng.standard_normal((4, 5)).astype(np.float32)
                dy = rng.standard_normal((4, 3)).astype(np.float32)
                model.forward(x)
                model.backward(dy)
                expected = optimizer.flat_grads.copy()
                ctx.allreduce_sum_(expected)                 # one plain Allreduce
                ctx.bucket_bytes = bucket_bytes
                model.forward(x)
                ctx.backward(model, dy, optimizer)           # bucketed, overlapped
                case = (f"unused_branch={unused_branch} groups={groups} "
                        f"bucket_bytes={bucket_bytes}")
                assert optimizer.grad_scale == 1.0 / ctx.size, case
                if bucket_bytes == 1:
                    assert len(ctx._buckets.buckets) == len(optimizer.params), case
                np.testing.assert_array_equal(optimizer.flat_grads, expected, err_msg=case)
    print(f"rank {ctx.rank} OK", flush=True)
