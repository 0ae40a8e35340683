"""The library's one random generator, on the host.

Parameters are initialised from it on the host and then copied to the device, so a seed gives
the same initial model on cuda, sim and numpy. Kernels that need randomness (dropout,
augmentation) take a seed and a counter drawn from it and use a counter-based generator
(Philox) inside the kernel, so the same seed gives the same numbers on cuda and sim.
"""
import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed):
    """Seed the generator (parameter initialisation, dropout and augmentation seeds)."""
    global _generator
    _generator = np.random.default_rng(int(seed))


def generator():
    """The current np.random.Generator."""
    return _generator


def get_state():
    """The generator's state, for a checkpoint."""
    return _generator.bit_generator.state


def set_state(state):
    """Restore a state from get_state()."""
    _generator.bit_generator.state = state


def next_seed():
    """A fresh 64-bit seed for a kernel's counter-based generator."""
    return int(_generator.integers(0, 2**63 - 1))
