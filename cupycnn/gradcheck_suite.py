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


# ---------------------------------------------------------- pooling, dropout, flatten (branch pool)
from .layers import AvgPool2D, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D  # noqa: E402


def distinct_values(rng, shape, spacing=1e-2):
    """The values 0, spacing, 2 * spacing, ... (centred on 0) in random order: a max-pool window
    never holds a tie, and its maximum beats the runner-up by far more than the finite
    difference's eps, so the input sits off the kinks of max."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * spacing).reshape(shape)


@case("MaxPool2D", "MaxPool2D, 3x3 stride 2 padding 1 (overlapping windows)")
def _max_pool_overlapping(rng):
    return dict(layer=MaxPool2D(3, 2, 1), x=distinct_values(rng, (2, 3, 7, 6)))


@case("MaxPool2D", "MaxPool2D, (2, 3) stride (1, 2) padding (1, 1)")
def _max_pool_non_square(rng):
    return dict(layer=MaxPool2D((2, 3), (1, 2), (1, 1)), x=distinct_values(rng, (1, 2, 5, 7)))


@case("AvgPool2D", "AvgPool2D, 3x3 stride 2 padding 1")
def _avg_pool_overlapping(rng):
    return dict(layer=AvgPool2D(3, 2, 1), x=rng.standard_normal((2, 3, 7, 6)))


@case("AvgPool2D", "AvgPool2D, (3, 2) stride (2, 1) padding (1, 0)")
def _avg_pool_non_square(rng):
    return dict(layer=AvgPool2D((3, 2), (2, 1), (1, 0)), x=rng.standard_normal((1, 2, 5, 6)))


@case("GlobalAvgPool2D")
def _global_avg_pool(rng):
    return dict(layer=GlobalAvgPool2D(), x=rng.standard_normal((2, 3, 4, 5)))


@case("Dropout", "Dropout(p=0.3), training (the mask replayed from its seed and stream)")
def _dropout(rng):
    # dy is given: without it gradcheck runs one forward on its float64 copy to learn y's shape,
    # which advances that copy's call counter (the stream) before the random states are
    # captured, and the kernel copy would then replay a different mask.
    return dict(layer=Dropout(0.3), x=rng.standard_normal((3, 4, 5)),
                dy=rng.standard_normal((3, 4, 5)))


@case("Flatten")
def _flatten(rng):
    return dict(layer=Flatten(), x=rng.standard_normal((2, 3, 4, 5)))
# Conv2D: padding, stride 2, a non-square kernel with unequal strides and paddings, a strided 1x1
# (the ResNet shortcut, whose input gradient is zero off the stride grid).
from .layers import Conv2D  # noqa: E402


@case("Conv2D", "Conv2D 3x3, padding 1")
def _conv2d_3x3(rng):
    return dict(layer=Conv2D(2, 3, 3, padding=1), x=rng.standard_normal((2, 2, 5, 4)))


@case("Conv2D", "Conv2D 3x3, stride 2, padding 1, no bias")
def _conv2d_stride2(rng):
    return dict(layer=Conv2D(3, 4, 3, stride=2, padding=1, bias=False),
                x=rng.standard_normal((1, 3, 7, 6)))


@case("Conv2D", "Conv2D (3, 5), stride (2, 1), padding (2, 1)")
def _conv2d_rectangular(rng):
    return dict(layer=Conv2D(2, 3, (3, 5), stride=(2, 1), padding=(2, 1)),
                x=rng.standard_normal((2, 2, 6, 7)))


@case("Conv2D", "Conv2D 1x1, stride 2")
def _conv2d_1x1_stride2(rng):
    return dict(layer=Conv2D(4, 3, 1, stride=2), x=rng.standard_normal((2, 4, 5, 5)))
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
