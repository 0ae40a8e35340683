"""Layers: each a forward and a hand-written backward over the ops in `cupycnn.ops`."""
from .activation import ReLU
from .base import Layer, Parameter
from .dense import Dense

__all__ = ["Layer", "Parameter", "ReLU", "Dense"]
from .dropout import Dropout  # noqa: E402
from .flatten import Flatten  # noqa: E402
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D  # noqa: E402

__all__ += ["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Dropout", "Flatten"]
