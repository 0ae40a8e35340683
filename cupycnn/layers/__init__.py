"""Layers: each a forward and a hand-written backward over the ops in `cupycnn.ops`."""
from .activation import ReLU
from .base import Layer, Parameter
from .dense import Dense

__all__ = ["Layer", "Parameter", "ReLU", "Dense"]
from .normalization import BatchNorm1D, BatchNorm2D, GroupNorm  # noqa: E402

__all__ += ["BatchNorm1D", "BatchNorm2D", "GroupNorm"]
