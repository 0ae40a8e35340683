"""`cupycnn.optim.lr_scheduler`, PyTorch's name for the module of schedules: the same classes
as `cupycnn.optim.schedules`."""
from .schedules import *  # noqa: F401,F403
from .schedules import __all__  # noqa: F401
