"""Training: the loop (Trainer: fit, evaluate, predict, checkpoints, resume) and callbacks."""
from .callbacks import (Callback, CSVLogger, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau,
                        TensorBoard)
from .trainer import History, Trainer

__all__ = ["Callback", "CSVLogger", "EarlyStopping", "History", "ModelCheckpoint",
           "ReduceLROnPlateau", "TensorBoard", "Trainer"]
