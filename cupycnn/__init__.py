"""cupycnn: a convolutional-network library whose every layer is a hand-written CUDA C kernel
with a hand-written backward pass, launched through CuPy, emulated on the CPU, and checked
against NumPy references.

    import cupycnn
    cupycnn.use("sim")            # or "cuda", "numpy"; default: cuda where a GPU is usable
"""
from . import (data, devices, layers, losses, ops, optim, random, reference,  # noqa: F401
               runtime, sim)
from .devices import (DEVICES, DeviceUnavailableError, asarray, asnumpy, cuda_available, device,
                     synchronize, use)
from .gradcheck import gradcheck
from .random import manual_seed
from .precision import PRECISIONS, get_precision, set_precision

# Imported on first use (cupycnn.models, cupycnn.train, ...): `import cupycnn` stays light, and
# `python -m cupycnn.gradcheck_suite` runs that module fresh.
_LAZY = ("checkpoint", "cli", "distributed", "gradcheck_suite", "models", "nvrtc", "predict",
         "progress", "train")


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cupycnn' has no attribute {name!r}")


from .version import __version__  # noqa: E402,F401

__all__ = ["DEVICES", "PRECISIONS", "get_precision", "set_precision", "DeviceUnavailableError", "asarray", "asnumpy", "checkpoint",
           "cuda_available", "data", "device", "distributed", "gradcheck", "layers", "losses",
           "manual_seed", "models", "ops", "optim", "random", "reference", "runtime", "sim",
           "synchronize", "train", "use"]
