"""Gradient checks: a hand-written backward against centred finite differences.

    import cupycnn
    from cupycnn.layers import Dense
    result = cupycnn.gradcheck(Dense(4, 3), x)          # x: [N, 4]
    print(result.table())
    assert result.passed

The layer is copied (the original is not touched) to the `numpy` device in float64. The scalar
objective is sum(layer(x) * dy) for a fixed random dy, or, given a loss, loss(layer(x), labels).
For the input and every parameter, each element is nudged by +-eps and the objective's change
gives the numerical derivative; the layer's backward gives the analytic one. Per tensor the
result is the worst error relative to the tensor's scale:

    max_i |analytic_i - numeric_i| / max(1e-8, max_i (|analytic_i| + |numeric_i|))

With `device="sim"` or `"cuda"` the analytic gradients come from the kernels in float32 (the
numerical ones still from the float64 reference): the check then says the kernels' backward
equals the true derivative to float32 precision.

Inputs must stay off kinks (ReLU at 0, ties in a max-pool window): the finite difference
straddles a kink and disagrees with either one-sided derivative.

`python -m cupycnn.gradcheck [--device D] [--layer NAME]` runs the library's suite (every layer,
the loss, residual blocks and a small network) and prints a table.
"""
import contextlib
import copy
import sys
import types
from dataclasses import dataclass, field

import numpy as np

from . import devices as _device

TOLERANCE_FLOAT64 = 1e-6
TOLERANCE_FLOAT32 = 1e-5


@dataclass
class TensorCheck:
    name: str               # "input" or a parameter's name
    error: float            # worst relative error (see the module docstring)
    checked: int            # elements perturbed
    size: int


@dataclass
class GradcheckResult:
    layer: str
    device: str
    tolerance: float
    tensors: list = field(default_factory=list)

    @property
    def worst(self):
        return max((t.error for t in self.tensors), default=0.0)

    @property
    def passed(self):
        return all(t.error < self.tolerance for t in self.tensors)

    def rows(self):
        return [(self.layer, t.name, t.error, "pass" if t.error < self.tolerance else "FAIL")
                for t in self.tensors]

    def table(self):
        lines = [f"{'layer':<40} {'tensor':<24} {'worst rel. error':>16}  result"]
        for layer, tensor, error, verdict in self.rows():
            lines.append(f"{layer:<40} {tensor:<24} {error:>16.2e}  {verdict}")
        return "\n".join(lines)


@contextlib.contextmanager
def on_device(name):
    """Run a block on another device, restoring the current one after."""
    previous = _device._current
    _device.use(name)
    try:
        yield
    finally:
        _device._current = previous


def relative_error(analytic, numeric):
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    if analytic.size == 0:
        return 0.0
    scale = max(1e-8, float(np.max(np.abs(analytic) + np.abs(numeric))))
    return float(np.max(np.abs(analytic - numeric)) / scale)


class _Objective:
    """The scalar being differentiated, on one copy of the layer (and loss)."""

    def __init__(self, layer, loss, labels, dy, training):
        self.layer, self.loss, self.labels, self.dy, self.training = layer, loss, labels, dy, training
        self.random_states = [(l, l.random_state()) for l in layer.layers()] if layer else []

    def forward(self, x):
        for l, state in self.random_states:     # replay the same dropout masks every time
            l.set_random_state(state)
        y = self.layer.forward(x, self.training) if self.layer is not None else x
        if self.loss is not None:
            return y, float(_device.asnumpy(self.loss.forward(y, self.labels)))
        return y, float(np.sum(_device.asnumpy(y).astype(np.float64) * self.dy))

    def gradients(self, x):
        """Analytic gradients: {"input": dx, parameter name: grad} as float64 host arrays."""
        y, _ = self.forward(x)
        if self.loss is not None:
            g = self.loss.backward()
        else:
            g = _device.asarray(self.dy, dtype=y.dtype)
        dx = self.layer.backward(g) if self.layer is not None else g
        grads = {"input": np.asarray(_device.asnumpy(dx), np.float64)}
        if self.layer is not None:
            for name, p in self.layer.named_parameters():
                grads[name] = np.asarray(_device.asnumpy(p.grad), np.float64)
        return grads


def gradcheck(layer, x, *, loss=None, labels=None, dy=None, eps=1e-6, training=True,
              device="numpy", max_per_tensor=None, tolerance=None, seed=0, name=None):
    """Check `layer`'s backward (input and every parameter) against finite differences.

    layer: a Layer or composite (None to check `loss` alone, with x as the logits).
    x: the input (host or device array); labels: class indices when a loss is given.
    dy: the weights of the objective sum(y * dy) (random when None; ignored with a loss).
    device: where the analytic gradients come from ("numpy": the float64 reference; "sim" or
    "cuda": the kernels in float32). max_per_tensor: check at most this many elements of each
    tensor, chosen at random (None: all). Returns a GradcheckResult.
    """
    rng = np.random.default_rng(seed)
    x64 = np.array(_device.asnumpy(x), dtype=np.float64)      # a copy: it gets nudged
    labels_host = None if labels is None else np.asarray(_device.asnumpy(labels))
    if tolerance is None:
        tolerance = TOLERANCE_FLOAT64 if device == "numpy" else TOLERANCE_FLOAT32

    # Numerical gradients, always from the float64 reference.
    with on_device("numpy"):
        ref_layer = copy.deepcopy(layer).to(np.float64) if layer is not None else None
        ref_loss = copy.deepcopy(loss)
        if dy is None and loss is None:
            # A forward to learn the output's shape; it must not advance any random state
            # (a Dropout's call counter), or the reference would replay another mask.
            states = [(l, l.random_state()) for l in ref_layer.layers()] if ref_layer else []
            y = ref_layer.forward(x64, training) if ref_layer is not None else x64
            for l, state in states:
                l.set_random_state(state)
            dy = rng.standard_normal(np.shape(y))
        dy = None if dy is None else np.asarray(_device.asnumpy(dy), np.float64)
        objective = _Objective(ref_layer, ref_loss, labels_host, dy, training)
        tensors = {"input": x64}
        if ref_layer is not None:
            tensors.update({n: p.data for n, p in ref_layer.named_parameters()})
        numeric = {}
        for tensor_name, values in tensors.items():
            flat = values.reshape(-1)       # a view: nudging it nudges the tensor
            picks = np.arange(flat.size)
            if max_per_tensor is not None and flat.size > max_per_tensor:
                picks = np.sort(rng.choice(flat.size, max_per_tensor, replace=False))
            derivative = np.full(flat.size, np.nan)
            for i in picks:
                saved = flat[i]
                flat[i] = saved + eps
                plus = objective.forward(x64)[1]
                flat[i] = saved - eps
                minus = objective.forward(x64)[1]
                flat[i] = saved
                derivative[i] = (plus - minus) / (2 * eps)
            numeric[tensor_name] = (derivative, picks)
        if device == "numpy":
            analytic = objective.gradients(x64)

    if device != "numpy":
        with on_device(device):
            dev_layer = copy.deepcopy(layer).to(np.float32) if layer is not None else None
            dev_loss = copy.deepcopy(loss)
            dev_labels = None if labels_host is None else _device.asarray(labels_host)
            analytic = _Objective(dev_layer, dev_loss, dev_labels, dy, training).gradients(
                _device.asarray(x64, dtype=np.float32))

    result = GradcheckResult(layer=name or (repr(layer) if layer is not None else repr(loss)),
                             device=device, tolerance=tolerance)
    for tensor_name, (derivative, picks) in numeric.items():
        a = analytic[tensor_name].reshape(-1)[picks]
        result.tensors.append(TensorCheck(tensor_name, relative_error(a, derivative[picks]),
                                          len(picks), derivative.size))
    return result


def main(argv=None):
    """python -m cupycnn.gradcheck [--device D] [--layer NAME]: run the suite, print the table."""
    import argparse

    from . import gradcheck_suite

    parser = argparse.ArgumentParser(
        prog="python -m cupycnn.gradcheck",
        description="Check every layer's hand-written backward against centred finite "
                    "differences of its float64 NumPy reference. On --device sim or cuda the "
                    "analytic gradients come from the kernels (float32).")
    parser.add_argument("--device", default="numpy", choices=_device.DEVICES)
    parser.add_argument("--layer", default=None, metavar="NAME",
                        help="one layer family, e.g. Conv2D (default: all): "
                             + ", ".join(gradcheck_suite.families()))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        _device.use(args.device)
        results = gradcheck_suite.run(args.device, args.layer, args.seed)
    except (ValueError, _device.DeviceUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tolerance = results[0][1].tolerance
    print(f"gradient check on {args.device}: worst relative error per tensor, pass below "
          f"{tolerance:g}")
    rows = [row for _, result in results for row in result.rows()]
    width = max([len("layer")] + [len(r[0]) for r in rows])
    print(f"{'layer':<{width}}  {'tensor':<28} {'worst rel. error':>16}  result")
    for layer, tensor, error, verdict in rows:
        print(f"{layer:<{width}}  {tensor:<28} {error:>16.2e}  {verdict}")
    failed = sum(not r.passed for _, r in results)
    print(f"{len(results) - failed} of {len(results)} cases passed")
    return 1 if failed else 0


class _CallableModule(types.ModuleType):
    """`cupycnn.gradcheck(layer, x)` calls the function while `python -m cupycnn.gradcheck`
    runs this module: the module object itself is callable."""

    def __call__(self, *args, **kwargs):
        return gradcheck(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    raise SystemExit(main())
