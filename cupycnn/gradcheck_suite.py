"""The library's gradient-check suite: every layer, the loss, residual blocks and a small network,
and its command:

    python -m cupycnn.gradcheck_suite [--device numpy|sim|cuda] [--layer NAME] [--seed S]

Each case builds a layer (or composite) and an input kept off kinks, at sizes small enough that
every element of every tensor is checked. `run()` checks them all; the command prints the table;
`tests/test_gradcheck_suite.py` asserts every case passes on numpy (float64, below 1e-6) and on
sim (the kernels' float32 gradients against the float64 derivative, below 1e-5).

To add a case: a function taking a NumPy Generator and returning a dict of `gradcheck`
arguments (at least `layer` and `x`), decorated with `@case("LayerName")`: here for the
library's layers, or in a file of one's own run by `cupycnn gradcheck --cases FILE`
(docs/WRITING_A_LAYER.md).
"""
import collections
import contextlib
import sys
from dataclasses import dataclass

import numpy as np

from . import devices as _device
from . import random as _random
from .gradcheck import gradcheck
from .layers import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                     GlobalAvgPool2D, GroupNorm, MaxPool2D, ReLU, Residual, Sequential)
from .losses import SoftmaxCrossEntropy


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


def load_cases(path):
    """Run a Python file of one's own that registers cases with @case (the gradient-check
    command's --cases FILE): its layers join the suite. Its folder is importable while it
    runs, so it may import its neighbours."""
    import runpy
    import sys
    from pathlib import Path
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Python file at {path}")
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        runpy.run_path(str(path), run_name=f"cupycnn_cases_{path.stem}")
    finally:
        sys.path.remove(folder)


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
    return dict(layer=Dropout(0.3), x=rng.standard_normal((3, 4, 5)))


@case("Flatten")
def _flatten(rng):
    return dict(layer=Flatten(), x=rng.standard_normal((2, 3, 4, 5)))


# Conv2D: padding, stride 2, a non-square kernel with unequal strides and paddings, a strided 1x1
# (the ResNet shortcut, whose input gradient is zero off the stride grid).


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
# ------------------------------------------------ the loss, the composites, a small network
# (branch loss). Layers draw their initial weights from cupycnn.random; these cases draw them
# from the case's generator instead, so that a seed gives the same case every run.



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


# --------------------------------------------------------------------- ResNet blocks (models)
# Imported here, not at the top: cupycnn.models imports the layers this module's cases use.

@case("BasicBlock", "BasicBlock(3, 4, stride=2), projection shortcut, training")
def _basic_block(rng):
    from .models import BasicBlock
    return dict(layer=BasicBlock(3, 4, stride=2), x=rng.standard_normal((2, 3, 5, 5)))


@case("BasicBlock", "BasicBlock(4, 4), identity shortcut, training")
def _basic_block_identity(rng):
    from .models import BasicBlock
    return dict(layer=BasicBlock(4, 4), x=rng.standard_normal((2, 4, 4, 3)))


@case("Bottleneck", "Bottleneck(4, 2, stride=2), projection shortcut, training")
def _bottleneck(rng):
    from .models import Bottleneck
    return dict(layer=Bottleneck(4, 2, stride=2), x=rng.standard_normal((2, 4, 5, 4)))


# ---------------------------------------------------------------------------------- command

def main(argv=None, prog="python -m cupycnn.gradcheck_suite"):
    """python -m cupycnn.gradcheck_suite [--device D] [--layer NAME] [--cases FILE] (also
    `cupycnn gradcheck`): run the suite, print the table. Exit status 0 when every case passes,
    1 when one fails, 2 for a usage error."""
    import argparse
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check every layer's hand-written backward against centred finite "
                    "differences of its float64 NumPy reference. On --device sim or cuda the "
                    "analytic gradients come from the kernels (float32).")
    parser.add_argument("--device", default="numpy", choices=_device.DEVICES,
                        help="numpy: the float64 reference's backward; sim or cuda: the "
                             "kernels' (float32, on the CPU emulator or a GPU) "
                             "(default: %(default)s)")
    parser.add_argument("--layer", default=None, metavar="NAME",
                        help="one layer family, e.g. Conv2D (default: all): "
                             + ", ".join(families()))
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every case's random inputs (default: %(default)s)")
    parser.add_argument("--cases", metavar="FILE", action="append", default=[],
                        help="a Python file of your own that registers cases with "
                             "@cupycnn.gradcheck_suite.case(\"MyLayer\") (run first; "
                             "repeatable): your layers join the table and --layer")
    args = parser.parse_args(argv)
    for path in args.cases:
        try:
            load_cases(path)
        except FileNotFoundError as e:
            print(f"error: --cases: {e}", file=sys.stderr)
            return 2
    if args.device == "cuda" and not _device.cuda_available():
        print(f"error: --device cuda needs a usable GPU and there is none here "
              f"({_device._probe_cuda()}); --device sim runs the same kernels on the CPU "
              f"emulator.", file=sys.stderr)
        return 2
    if args.layer is not None and args.layer.lower() not in [f.lower() for f in families()]:
        print(f"error: no gradient-check case for layer {args.layer!r}; layers: "
              f"{', '.join(families())}", file=sys.stderr)
        return 2
    _device.use(args.device)
    # A case that raises (a layer's bug, not a wrong gradient) stops the run with its traceback
    # and exit status 1.
    results = run(args.device, args.layer, args.seed)
    tolerance = results[0][1].tolerance
    print(f"gradient check on {args.device}: worst relative error per tensor, pass below "
          f"{tolerance:g}")
    rows = [row for _, result in results for row in result.rows()]
    width = max([len("layer")] + [len(r[0]) for r in rows])
    print(f"{'layer':<{width}}  {'tensor':<28} {'worst rel. error':>16}  result")
    for layer, tensor, error, verdict in rows:
        print(f"{layer:<{width}}  {tensor:<28} {error:>16.2e}  {verdict}")
    failed = [c.name for c, r in results if not r.passed]
    print(f"{len(results) - len(failed)} of {len(results)} cases passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
