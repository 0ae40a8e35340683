"""cupycnn: a convolutional-network library whose every layer is a hand-written CUDA C kernel
with a hand-written backward pass, launched through CuPy, emulated on the CPU, and checked
against NumPy references.

    import cupycnn
    cupycnn.use("sim")            # or "cuda", "numpy"; default: cuda where a GPU is usable
"""
from . import devices, layers, ops, random, reference, runtime, sim  # noqa: F401
from .devices import (DEVICES, DeviceUnavailableError, asarray, asnumpy, cuda_available, device,
                     synchronize, use)
from .gradcheck import gradcheck
from .random import manual_seed

__version__ = "0.1.0"

__all__ = ["DEVICES", "DeviceUnavailableError", "asarray", "asnumpy", "cuda_available", "device", "gradcheck",
           "layers", "manual_seed", "ops", "random", "reference", "runtime", "sim",
           "synchronize", "use"]
