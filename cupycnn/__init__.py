"""cupycnn: a convolutional-network library whose every layer is a hand-written CUDA C kernel
with a hand-written backward pass, launched through CuPy, emulated on the CPU, and checked
against NumPy references.

    import cupycnn
    cupycnn.use("sim")            # or "cuda", "numpy"; default: cuda where a GPU is usable
"""
from . import data, devices, layers, losses, ops, optim, random, reference, runtime, sim  # noqa: F401
from .devices import (DEVICES, DeviceUnavailableError, asarray, asnumpy, cuda_available, device,
                     synchronize, use)
from .random import manual_seed


def __getattr__(name):
    # cupycnn.gradcheck is imported on first use, so that `python -m cupycnn.gradcheck` runs it
    # fresh; the module is callable: cupycnn.gradcheck(layer, x).
    if name == "gradcheck":
        import importlib
        return importlib.import_module(".gradcheck", __name__)
    raise AttributeError(f"module 'cupycnn' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = ["DEVICES", "DeviceUnavailableError", "asarray", "asnumpy", "cuda_available", "data",
           "device", "gradcheck", "layers", "losses", "manual_seed", "ops", "optim", "random",
           "reference", "runtime", "sim", "synchronize", "use"]
