"""Put first on PYTHONPATH, this makes every Python process a machine with one fake GPU:
tests/fake_cupy.py's stand-in for CuPy (CuPy 14.2's API, streams, memory pool and graphs; the
kernels run by the emulator) is what `import cupy` finds. For running whole commands (training,
evaluation, prediction) on the cuda device's code paths without a GPU: tests/test_fake_gpu_commands.py.
CUPYCNN_FAKE_GPU_SEED picks the stream schedule (default 0)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))   # tests/
import fake_cupy  # noqa: E402

fake_cupy.install_globally(*fake_cupy.make(seed=int(os.environ.get("CUPYCNN_FAKE_GPU_SEED", "0"))))
