"""Layers: each a forward and a hand-written backward over the ops in `cupycnn.ops`."""
from .activation import ReLU
from .base import Layer, Parameter, without_input_grad
from .container import Residual, Sequential
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .flatten import Flatten
from .normalization import BatchNorm1D, BatchNorm2D, GroupNorm
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D

__all__ = ["AvgPool2D", "BatchNorm1D", "BatchNorm2D", "Conv2D", "Dense", "Dropout", "Flatten",
           "GlobalAvgPool2D", "GroupNorm", "Layer", "MaxPool2D", "Parameter", "ReLU", "Residual",
           "Sequential", "without_input_grad"]
