"""The library's gradient-check suite: every layer, the loss, residual blocks and a small network.

Each case builds a layer (or composite) and an input kept off kinks, at sizes small enough that
every element of every tensor is checked. `run()` checks them all; `python -m cupycnn.gradcheck`
prints the table; `tests/test_gradcheck_suite.py` asserts every case passes on numpy (float64,
below 1e-6) and on sim (the kernels' float32 gradients against the float64 derivative, below
1e-5).

To add a case: a function taking a NumPy Generator and returning a dict of `gradcheck`
arguments (at least `layer` and `x`), decorated with `@case("LayerName")`.
"""
from dataclasses import dataclass

import numpy as np

from .gradcheck import gradcheck
from .layers import Dense, ReLU


@dataclass
class Case:
    family: str      # what --layer selects: the layer's class name
    name: str        # this case's description
    build: object    # rng -> dict of gradcheck arguments


CASES = []


def case(family, name=None):
    def register(build):
        CASES.append(Case(family, name or family, build))
        return build
    return register


def off_kinks(values, margin=1e-3):
    """Move values within `margin` of 0 away from it (ReLU's kink), keeping their sign."""
    values = np.array(values, dtype=np.float64)
    near = np.abs(values) < margin
    values[near] = np.where(values[near] < 0, -margin, margin) * 10
    return values


def families():
    return sorted({c.family for c in CASES})


def run(device="numpy", family=None, seed=0):
    """Run the suite (or one layer family's cases): a list of (Case, GradcheckResult)."""
    selected = [c for c in CASES if family is None or c.family.lower() == family.lower()]
    if not selected:
        raise ValueError(f"no gradient-check case for layer {family!r}; layers: "
                         f"{', '.join(families())}")
    results = []
    for c in selected:
        rng = np.random.default_rng(seed)
        args = c.build(rng)
        results.append((c, gradcheck(device=device, name=c.name, seed=seed, **args)))
    return results


# ------------------------------------------------------------------------------------ cases

@case("Dense")
def _dense(rng):
    return dict(layer=Dense(7, 5), x=rng.standard_normal((3, 7)))


@case("Dense", "Dense, no bias")
def _dense_no_bias(rng):
    return dict(layer=Dense(4, 6, bias=False), x=rng.standard_normal((1, 4)))


@case("ReLU")
def _relu(rng):
    return dict(layer=ReLU(), x=off_kinks(rng.standard_normal((2, 3, 4, 5))))


# ------------------------------------------------------------------ normalisation (branch norm)
from .layers import BatchNorm1D, BatchNorm2D, GroupNorm  # noqa: E402


def _affine_and_running(layer, rng, channels, running=False):
    """Random weight and bias (the defaults, ones and zeros, would hide errors in their use) and,
    for an evaluation-mode check, random running statistics."""
    layer.params["weight"][...] = rng.uniform(0.5, 1.5, channels)
    layer.params["bias"][...] = rng.standard_normal(channels)
    if running:
        layer.buffers["running_mean"][...] = rng.standard_normal(channels)
        layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, channels)
    return layer


@case("BatchNorm2D", "BatchNorm2D, training")
def _batchnorm2d_training(rng):
    return dict(layer=_affine_and_running(BatchNorm2D(3), rng, 3),
                x=rng.standard_normal((2, 3, 3, 2)) * 2 + 1)


@case("BatchNorm2D", "BatchNorm2D, evaluation (frozen statistics)")
def _batchnorm2d_eval(rng):
    return dict(layer=_affine_and_running(BatchNorm2D(3), rng, 3, running=True),
                x=rng.standard_normal((2, 3, 2, 3)), training=False)


@case("BatchNorm1D", "BatchNorm1D, training, [N, C]")
def _batchnorm1d_training(rng):
    return dict(layer=_affine_and_running(BatchNorm1D(4), rng, 4),
                x=rng.standard_normal((5, 4)))


@case("BatchNorm1D", "BatchNorm1D, training, [N, C, L]")
def _batchnorm1d_training_3d(rng):
    return dict(layer=_affine_and_running(BatchNorm1D(2), rng, 2),
                x=rng.standard_normal((2, 2, 3)))


@case("GroupNorm", "GroupNorm, 3 groups of 2 channels")
def _groupnorm(rng):
    return dict(layer=_affine_and_running(GroupNorm(3, 6), rng, 6),
                x=rng.standard_normal((2, 6, 2, 2)) + 0.5)


@case("GroupNorm", "GroupNorm, batch 1, one group")
def _groupnorm_one_group(rng):
    return dict(layer=_affine_and_running(GroupNorm(1, 3), rng, 3),
                x=rng.standard_normal((1, 3, 5)))
