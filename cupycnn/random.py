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


# Data-parallel ranks must not draw the same dropout masks and augmentations for their different
# examples. Each process puts its rank into the high bits of every Philox stream it uses: the
# random states (seeds and counters) stay the same on every rank, so a checkpoint written by
# rank 0 resumes every rank exactly.
RANK_STREAM_SHIFT = 48
_process_rank = 0


def set_process_rank(rank):
    """Called by cupycnn.distributed.init(): this process's rank in the job."""
    global _process_rank
    if not 0 <= int(rank) < 2 ** (64 - RANK_STREAM_SHIFT):
        raise ValueError(f"rank {rank} out of range")
    _process_rank = int(rank)


def stream(counter):
    """The Philox stream for a layer's or transform's call `counter` in this process."""
    if not 0 <= int(counter) < 2 ** RANK_STREAM_SHIFT:
        raise ValueError(f"random stream counter {counter} out of range")
    return int(counter) | (_process_rank << RANK_STREAM_SHIFT)
