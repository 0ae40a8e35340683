"""Layers: each a forward and a hand-written backward over the ops in `cupycnn.ops`."""
from .activation import ReLU
from .base import Layer, Parameter
from .dense import Dense

__all__ = ["Layer", "Parameter", "ReLU", "Dense"]
from .container import Residual, Sequential  # noqa: E402

__all__ += ["Sequential", "Residual"]
