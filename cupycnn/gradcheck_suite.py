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


# ------------------------------------------------ the loss, the composites, a small network
# (branch loss). Layers draw their initial weights from cupycnn.random; these cases draw them
# from the case's generator instead, so that a seed gives the same case every run.
import collections  # noqa: E402
import contextlib  # noqa: E402

from . import random as _random  # noqa: E402
from .layers import Residual, Sequential  # noqa: E402
from .losses import SoftmaxCrossEntropy  # noqa: E402


@contextlib.contextmanager
def _weights_from(rng):
    """Layers built inside draw their initial weights from `rng`; the library's generator is
    restored after."""
    state = _random.get_state()
    _random.manual_seed(int(rng.integers(2**63 - 1)))
    try:
        yield
    finally:
        _random.set_state(state)


def _labels(rng, n, classes, dtype):
    return rng.integers(0, classes, n).astype(dtype)


@case("SoftmaxCrossEntropy")
def _xent(rng):
    return dict(layer=None, loss=SoftmaxCrossEntropy(), x=rng.standard_normal((4, 7)),
                labels=_labels(rng, 4, 7, np.int64))


@case("SoftmaxCrossEntropy", "SoftmaxCrossEntropy, label_smoothing=0.1, int8 labels")
def _xent_smoothing(rng):
    return dict(layer=None, loss=SoftmaxCrossEntropy(label_smoothing=0.1),
                x=3 * rng.standard_normal((5, 6)), labels=_labels(rng, 5, 6, np.int8))


@case("SoftmaxCrossEntropy", "SoftmaxCrossEntropy, label_smoothing=1, uint8 labels, batch 1")
def _xent_uniform(rng):
    return dict(layer=None, loss=SoftmaxCrossEntropy(label_smoothing=1.0),
                x=rng.standard_normal((1, 9)), labels=_labels(rng, 1, 9, np.uint8))


@case("SoftmaxCrossEntropy", "SoftmaxCrossEntropy, 2 classes, uint64 labels")
def _xent_two_classes(rng):
    return dict(layer=None, loss=SoftmaxCrossEntropy(label_smoothing=0.05),
                x=rng.standard_normal((6, 2)), labels=_labels(rng, 6, 2, np.uint64))


@case("SoftmaxCrossEntropy", "SoftmaxCrossEntropy, int32 labels, logits near 30")
def _xent_offset(rng):
    # Large logits with differences of order 1: a naive exp would be 1e13, a naive lse - z_y
    # would lose digits; the derivative is unchanged.
    return dict(layer=None, loss=SoftmaxCrossEntropy(label_smoothing=0.2),
                x=30 + rng.standard_normal((3, 5)), labels=_labels(rng, 3, 5, np.int32))


@case("Sequential")
def _sequential(rng):
    with _weights_from(rng):
        layer = Sequential(Dense(5, 8), ReLU(), Dense(8, 3))
    return dict(layer=layer, x=rng.standard_normal((3, 5)))


@case("Sequential", "Sequential, named children, nested")
def _sequential_named(rng):
    with _weights_from(rng):
        layer = Sequential(collections.OrderedDict(
            fc1=Dense(4, 6), act=ReLU(), block=Sequential(Dense(6, 6, bias=False), ReLU()),
            fc2=Dense(6, 2)))
    return dict(layer=layer, x=rng.standard_normal((2, 4)))


@case("Residual", "Residual, identity shortcut")
def _residual_identity(rng):
    with _weights_from(rng):
        layer = Residual(Sequential(Dense(6, 6), ReLU(), Dense(6, 6)))
    return dict(layer=layer, x=rng.standard_normal((3, 6)))


@case("Residual", "Residual, projection shortcut")
def _residual_projection(rng):
    with _weights_from(rng):
        layer = Residual(Sequential(Dense(5, 7), ReLU(), Dense(7, 4)),
                         shortcut=Dense(5, 4, bias=False))
    return dict(layer=layer, x=rng.standard_normal((3, 5)))


@case("Network", "Network: Dense, ReLU, Residual, ReLU, projection Residual, loss")
def _network(rng):
    """A whole small classifier, checked from the loss back to the input and every weight."""
    with _weights_from(rng):
        layer = Sequential(Dense(6, 10), ReLU(),
                           Residual(Sequential(Dense(10, 10), ReLU(), Dense(10, 10))), ReLU(),
                           Residual(Dense(10, 4), shortcut=Dense(10, 4, bias=False)))
    return dict(layer=layer, x=rng.standard_normal((4, 6)),
                loss=SoftmaxCrossEntropy(label_smoothing=0.1), labels=_labels(rng, 4, 4, np.int64))
