"""Run under mpiexec by tests/test_watchdog.py: a rank that stalls, stops or dies, and the
watchdog on the collectives that ends the job naming it.

    watchdog.py MODE DEVICE TIMEOUT

MODE: healthy (200 steps of collectives, nothing fires), sleep (rank LAST sleeps before the
collectives of step 4), stop (rank LAST stops itself with SIGSTOP at step 4), root (rank 0 sleeps
at step 4), stop-root (rank 0, which keeps the watchdog's table, stops itself), kill (rank LAST kills itself with SIGKILL at step 4: the launcher ends the job),
raise (rank LAST raises at step 4: abort_on_error ends the job), trainer (a Trainer whose
rank LAST stalls in a batch callback after step 2). DEVICE numpy (the MPI path) or
fake-cuda (the NCCL path on tests/fake_nccl.py). Every rank prints "rank r step s" after each
step and "rank r DONE" at the end.
"""
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

MODE, DEVICE, TIMEOUT = sys.argv[1], sys.argv[2], float(sys.argv[3])

if DEVICE == "fake-cuda":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))       # tests/
    import fake_nccl
    from mpi4py import MPI
    cupy, cupyx = fake_nccl.make(MPI.COMM_WORLD, seed=MPI.COMM_WORLD.Get_rank())
    fake_nccl.install(cupy, cupyx)

import cupycnn  # noqa: E402
from cupycnn import distributed  # noqa: E402

if DEVICE != "fake-cuda":
    cupycnn.use("numpy")                      # fake_nccl.install selected cuda
ctx = distributed.init("cuda" if DEVICE == "fake-cuda" else "numpy", collective_timeout=TIMEOUT)
xp = sys.modules["cupy"] if DEVICE == "fake-cuda" else np
last = ctx.size - 1
culprit = 0 if MODE in ("root", "stop-root") else last

if MODE == "trainer":                     # the Trainer tells the watchdog its steps
    from cupycnn.data import Loader, Normalize, Synthetic
    from cupycnn.layers import Dense, Flatten, Sequential
    from cupycnn.optim import SGD
    from cupycnn.train import Callback, Trainer

    class StallAfter(Callback):
        def on_batch_end(self, step, logs=None):
            if step == 2 and ctx.rank == last:
                time.sleep(3600)

    cupycnn.manual_seed(0)
    model = Sequential(Flatten(), Dense(4 * 4 * 3, 3))
    ctx.broadcast_parameters(model)
    loader = Loader(Synthetic(48, shape=(4, 4, 3), num_classes=3, seed=0), 8,
                    rank=ctx.rank, world_size=ctx.size, transform=Normalize(0.5, 0.25))
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1), distributed=ctx, progress=False,
                      callbacks=[StallAfter()])
    with ctx.abort_on_error():
        trainer.fit(loader, epochs=2)
    sys.exit(0)

with ctx.abort_on_error():
    steps = 200 if MODE == "healthy" else 8
    for step in range(1, steps + 1):
        ctx.set_step(step, 0)
        if step == 4 and ctx.rank == culprit:
            if MODE in ("sleep", "root"):
                time.sleep(3600)
            elif MODE in ("stop", "stop-root"):
                os.kill(os.getpid(), signal.SIGSTOP)
            elif MODE == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif MODE == "raise":
                raise RuntimeError("this rank failed at step 4")
        grads = xp.asarray(np.full(1000, ctx.rank + 1.0, np.float32))
        handle = ctx.communicator.iallreduce_sum_(grads)      # as the gradient buckets do
        handle.wait()
        sums = xp.asarray(np.ones(3))
        ctx.allreduce_sum_(sums)
        ctx.broadcast_(grads)
        ctx.barrier()
        if step % 50 == 0 or steps < 50:
            print(f"rank {ctx.rank} step {step}", flush=True)
    print(f"rank {ctx.rank} DONE", flush=True)
