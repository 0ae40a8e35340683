"""Optimizers and learning-rate schedules, as PyTorch's `torch.optim`.

    from cupycnn import optim
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    schedule = optim.CosineAnnealingLR(optimizer, T_max=epochs)
    for epoch in range(epochs):
        for x, labels in batches:
            optimizer.zero_grad()
            ...forward, loss, backward...
            optimizer.step()            # one fused kernel launch for the whole model
        schedule.step()

SGD, Adam and AdamW follow PyTorch's update rules exactly, with an `l1` term per parameter group
added; every step is one launch of kernels/optim.cu over flat parameter and gradient buffers
(see `optimizer.py`). The schedules are in `schedules.py` (also `cupycnn.optim.lr_scheduler`).
The update rules, the flat buffers and the schedules are described in docs/optim.md.
"""
from . import lr_scheduler, schedules
from .adam import Adam, AdamW
from .optimizer import SEGMENT_ALIGN, Optimizer
from .schedules import (CosineAnnealingLR, LinearLR, LinearWarmup, LRScheduler, MultiStepLR,
                        OneCycleLR, ReduceLROnPlateau, SequentialLR, StepLR)
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "SEGMENT_ALIGN", "schedules", "lr_scheduler",
           "LRScheduler", "StepLR", "MultiStepLR", "CosineAnnealingLR", "LinearLR",
           "SequentialLR", "LinearWarmup", "OneCycleLR", "ReduceLROnPlateau"]
