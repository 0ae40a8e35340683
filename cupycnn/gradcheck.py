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

What a layer of your own must do to be checked (its NumPy path computing in the input's dtype,
tensors in `params`, randomness replayed, inputs off kinks), and the failures it reports besides
wrong gradients: docs/layers/loss_containers.md, "Gradient-checking your own layer". The suite of
the library's own layers, and its command: `cupycnn.gradcheck_suite`.
"""
import contextlib
import copy
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


def _one_line_name(obj):
    """A composite's repr spans lines (PyTorch's layout): in a table, its first words will do."""
    text = repr(obj)
    if "\n" not in text and len(text) <= 60:
        return text
    return f"{type(obj).__name__}(...)"


def _is_compiled_kernel(value):
    from . import runtime, sim
    if isinstance(value, (runtime.Kernel, runtime.Module, sim.Kernel, sim.Module)):
        return True
    kind = type(value)
    return kind.__module__.startswith("cupy") and kind.__name__ in (
        "RawModule", "RawKernel", "ElementwiseKernel", "ReductionKernel")


def _copy_layer(layer):
    """A deep copy of `layer` that shares, rather than copies, any compiled kernel a layer keeps
    as an attribute (those hold native handles and cannot be copied)."""
    memo = {}

    def share_kernels(value, depth=0):
        if _is_compiled_kernel(value):
            memo[id(value)] = value
        elif depth < 3 and isinstance(value, (list, tuple, set, dict)):
            for item in (value.values() if isinstance(value, dict) else value):
                share_kernels(item, depth + 1)

    for sub in layer.layers():
        for value in vars(sub).values():
            share_kernels(value)
    return copy.deepcopy(layer, memo)


class _Objective:
    """The scalar being differentiated, on one copy of the layer (and loss).

    It also watches for the mistakes that make a backward look right in a single call and go
    wrong in a model; each becomes a failing row of the result (see `problems`)."""

    def __init__(self, layer, loss, labels, dy, training):
        self.layer, self.loss, self.labels, self.dy, self.training = layer, loss, labels, dy, training
        # Taken before any forward, from a fresh copy, on every device alike.
        self.random_states = [(l, l.random_state()) for l in layer.layers()] if layer else []
        self.problems = {}           # row name -> relative size of the problem

    def _note_change(self, row, before, after):
        before, after = _device.asnumpy(before), _device.asnumpy(after)
        if not np.array_equal(before, after, equal_nan=True):
            self.problems.setdefault(row, relative_error(after, before))

    def output(self, x):
        """The layer's output for x (the loss's input); x itself is never handed over."""
        for l, state in self.random_states:     # replay the same dropout masks every time
            l.set_random_state(state)
        x_in = x.copy()      # a forward that writes into its input must not move the point
        y = self.layer.forward(x_in, self.training) if self.layer is not None else x_in
        self._note_change("input: forward changed it in place", x, x_in)
        if y.dtype != x.dtype:
            raise ValueError(f"gradcheck: {_one_line_name(self.layer)}.forward returned {y.dtype} "
                             f"for a {x.dtype} input; a layer must compute in its input's dtype "
                             f"(on the numpy device the finite differences need float64)")
        return y

    def forward(self, x):
        y = self.output(x)
        if self.loss is not None:
            value = self.loss.forward(y, self.labels)
            if getattr(value, "dtype", y.dtype) != y.dtype:
                raise ValueError(f"gradcheck: {self.loss!r} returned {value.dtype} for {y.dtype} "
                                 f"logits; a loss must compute in its input's dtype")
            return y, float(_device.asnumpy(value))
        return y, float(np.sum(_device.asnumpy(y).astype(np.float64) * self.dy))

    def gradients(self, x):
        """Analytic gradients: {"input": dx, parameter name: grad} as float64 host arrays."""
        y, _ = self.forward(x)
        if self.loss is not None:
            g = self.loss.backward()
        else:
            g = _device.asarray(self.dy, dtype=y.dtype)
        g_before = g.copy()
        dx = self.layer.backward(g) if self.layer is not None else g
        self._note_change("dy: backward changed it in place", g_before, g)
        # Copies: the gradient buffers are overwritten by the next backward.
        grads = {"input": np.array(_device.asnumpy(dx), np.float64)}
        if self.layer is not None:
            for name, p in self.layer.named_parameters():
                grads[name] = np.array(_device.asnumpy(p.grad), np.float64)
            tensors = dict(input=x, **{n: p.data for n, p in self.layer.named_parameters()})
            for name, grad in grads.items():
                if grad.shape != tuple(tensors[name].shape):
                    raise ValueError(f"gradcheck: {_one_line_name(self.layer)}: the gradient of "
                                     f"{name} has shape {grad.shape}, but {name} has shape "
                                     f"{tuple(tensors[name].shape)}")
        return grads

    def checked_gradients(self, x):
        """gradients(x), twice: a backward must overwrite its gradients, not add to them, and
        give the same values for the same input (a layer keeps no state across calls)."""
        first = self.gradients(x)
        second = self.gradients(x)
        for name, grad in first.items():
            change = relative_error(second[name], grad)
            if not np.array_equal(second[name], grad, equal_nan=True):
                self.problems.setdefault(
                    f"{name}: 2nd backward differs (accumulates instead of overwriting?)", change)
        return first


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
    if layer is None and loss is None:
        raise ValueError("gradcheck: give a layer, a loss, or both")
    if loss is not None and labels is None:
        raise ValueError(f"gradcheck: {loss!r} needs labels=")
    if loss is None and labels is not None:
        raise ValueError("gradcheck: labels= is for a loss; give loss= as well (or drop labels)")
    rng = np.random.default_rng(seed)
    x64 = np.array(_device.asnumpy(x), dtype=np.float64)      # a copy: it gets nudged
    labels_host = None if labels is None else np.asarray(_device.asnumpy(labels))
    if tolerance is None:
        tolerance = TOLERANCE_FLOAT64 if device == "numpy" else TOLERANCE_FLOAT32

    # Numerical gradients, always from the float64 reference.
    with on_device("numpy"):
        ref_layer = _copy_layer(layer).to(np.float64) if layer is not None else None
        objective = _Objective(ref_layer, copy.deepcopy(loss), labels_host, None, training)
        if loss is None:
            y = objective.output(x64)
            if dy is None:
                dy = rng.standard_normal(y.shape)
            dy = np.asarray(_device.asnumpy(dy), np.float64)
            if dy.shape != y.shape:
                raise ValueError(f"gradcheck: dy has shape {dy.shape} but the layer's output "
                                 f"has shape {y.shape}")
            objective.dy = dy
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
            analytic = objective.checked_gradients(x64)
            problems = objective.problems

    if device != "numpy":
        with on_device(device):
            dev_layer = _copy_layer(layer).to(np.float32) if layer is not None else None
            dev_labels = None if labels_host is None else _device.asarray(labels_host)
            dev_objective = _Objective(dev_layer, copy.deepcopy(loss), dev_labels, dy, training)
            analytic = dev_objective.checked_gradients(_device.asarray(x64, dtype=np.float32))
            problems = {**objective.problems, **dev_objective.problems}

    result = GradcheckResult(layer=name or _one_line_name(layer if layer is not None else loss),
                             device=device, tolerance=tolerance)
    for tensor_name, (derivative, picks) in numeric.items():
        a = analytic[tensor_name].reshape(-1)[picks]
        result.tensors.append(TensorCheck(tensor_name, relative_error(a, derivative[picks]),
                                          len(picks), derivative.size))
    for row, change in problems.items():       # each one a failure, whatever its size
        result.tensors.append(TensorCheck(row, max(change, tolerance), 0, 0))
    return result
