"""Put first on PYTHONPATH, this makes every Python process a machine with a fake GPU:
tests/fake_cupy.py's stand-in for CuPy (CuPy 14.2's API, streams, memory pool and graphs; the
kernels run by the emulator) is what `import cupy` finds. Under an MPI launcher (mpiexec sets
the rank's variables) each rank sees as many fake GPUs as there are ranks and a fake NCCL
(tests/fake_nccl.py: its collectives are MPI collectives on the device bytes). For running
whole commands (training, evaluation, prediction, data-parallel training) on the cuda device's
code paths without a GPU: tests/test_fake_gpu_commands.py. CUPYCNN_FAKE_GPU_SEED picks the
stream schedule (default 0; each rank adds its rank)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))   # tests/
import fake_cupy  # noqa: E402

_seed = int(os.environ.get("CUPYCNN_FAKE_GPU_SEED", "0"))
if any(v in os.environ for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")):
    from mpi4py import MPI
    import fake_nccl  # noqa: E402
    _world = MPI.COMM_WORLD
    fake_nccl.install(*fake_nccl.make(_world, device_count=_world.Get_size(),
                                      seed=_seed + _world.Get_rank()))
else:
    fake_cupy.install_globally(*fake_cupy.make(seed=_seed))
