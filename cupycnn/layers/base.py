"""The `Layer` base: forward, backward written out by hand, parameters, state.

A layer keeps three dicts of device arrays:
    params   trainable tensors (PyTorch's names: "weight", "bias")
    grads    one gradient per parameter, same shape; `backward` overwrites it
    buffers  state that is not trained (batchnorm's running statistics)

`forward(x, training=True)` computes the output and keeps what backward needs; `backward(dy)`
fills `grads` and returns the gradient of the input. There is no autograd: each layer writes its
own backward, and composites (`Sequential`, `Residual`) call their children's in reverse.

Parameters are reached through `params[key]` every time, never kept elsewhere: an optimizer may
move every parameter of a model into one flat buffer (each becoming a view of it), and the
layer then reads and writes the views without knowing.
"""
import collections
import contextlib
import math
import os
import threading

import numpy as np

from .. import devices as _device
from ..ops._check import check_arrays


class ModelTooLargeError(ValueError):
    """Building a model needed more memory than `allocation_limit` allows."""


_limit = threading.local()


@contextlib.contextmanager
def allocation_limit(nbytes, what="the model"):
    """Layers built inside the block may allocate at most `nbytes` of parameters, gradients and
    buffers in all; the layer that would exceed it raises ModelTooLargeError before allocating.
    For models built from data (a checkpoint's config): the data cannot ask for terabytes."""
    previous = getattr(_limit, "state", None)
    _limit.state = [int(nbytes), 0, what]
    try:
        yield
    finally:
        _limit.state = previous


def check_allocation(shape, itemsize=4, count=1):
    """Before a layer makes `count` arrays of `shape` on the host: refuse what cannot fit (the
    machine's memory, or the allocation_limit in force) with ModelTooLargeError."""
    _reserve(tuple(shape[:-1]) + (int(shape[-1]) * count,) if shape else (count,), itemsize,
             commit=False)


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):      # not on this system: no bound
        return float("inf")


def _reserve(shape, itemsize, commit=True):
    """Account for an allocation of `shape` under the allocation_limit in force, if any."""
    count = 1
    for s in shape:
        count *= max(int(s), 0)
    size = count * int(itemsize)
    state = getattr(_limit, "state", None)
    if state is None:
        if size > _physical_memory():
            raise ModelTooLargeError(
                f"a tensor of shape {tuple(int(s) for s in shape)} needs {size / 2**30:,.1f} GiB, "
                f"more than this machine's {_physical_memory() / 2**30:.0f} "
                f"GiB of memory")
        return
    if state[1] + size > state[0]:
        raise ModelTooLargeError(
            f"building {state[2]} needs more than {state[0]:,} bytes (a tensor of shape "
            f"{tuple(int(s) for s in shape)} alone is {size:,} bytes)")
    if commit:
        state[1] += size


class Parameter:
    """One trainable tensor of a layer, seen from outside: its value is `layer.params[key]` and
    its gradient `layer.grads[key]`, wherever those arrays live."""

    __slots__ = ("layer", "key", "name")

    def __init__(self, layer, key, name):
        self.layer, self.key, self.name = layer, key, name

    @property
    def data(self):
        return self.layer.params[self.key]

    @property
    def grad(self):
        return self.layer.grads[self.key]

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def size(self):
        return int(self.data.size)

    def rebind(self, data, grad):
        """Make `data` and `grad` (arrays of the same shape, e.g. views into flat buffers) the
        parameter's storage, copying the current values into them."""
        data[...] = self.data
        grad[...] = self.grad
        self.layer.params[self.key] = data
        self.layer.grads[self.key] = grad

    def __repr__(self):
        return f"Parameter({self.name}, shape={self.shape})"


class Layer:
    """Base class of every layer and composite; see the module docstring."""

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self._saved = None

    # ---------------------------------------------------------------- what subclasses write
    def forward(self, x, training=True):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def named_children(self):
        """(name, layer) for each sub-layer; the names build the state_dict keys."""
        return []

    def extra_repr(self):
        return ""

    def random_state(self):
        """What this layer's randomness depends on (Dropout: its seed and call counter), so that
        a gradient check can replay the same mask; {} for deterministic layers."""
        return {}

    def set_random_state(self, state):
        """Restore what random_state() returned."""

    # ---------------------------------------------------------------------------- helpers
    _forward_hooks = ()          # an instance's own list once add_forward_hook is called

    def __call__(self, x, training=True):
        """forward(x, training), then the forward hooks. Composites call their children this
        way, so a hook sees every forward through a model."""
        y = self.forward(x, training)
        for hook in self._forward_hooks:
            hook(self, x, y)
        return y

    def add_forward_hook(self, hook):
        """Call hook(layer, x, y) after every forward through this layer's __call__ (PyTorch's
        register_forward_hook); returns a function that removes the hook."""
        if not self._forward_hooks:
            self._forward_hooks = []
        self._forward_hooks.append(hook)
        return lambda: self._forward_hooks.remove(hook)

    def add_param(self, key, value):
        """Register a parameter from a host array (float32 on the current device) with a zero
        gradient."""
        _reserve(np.shape(value), 2 * 4)             # the value and its gradient, float32
        self.params[key] = _device.asarray(np.asarray(value, dtype=np.float32))
        self.grads[key] = _device.zeros(self.params[key].shape, self.params[key].dtype)

    def add_buffer(self, key, value):
        value = np.asarray(value)
        _reserve(value.shape, value.itemsize)
        self.buffers[key] = _device.asarray(value)

    def save_for_backward(self, **arrays):
        """Keep what backward needs (replacing what the previous forward kept)."""
        self._saved = arrays

    def saved(self):
        """What forward kept; an error if backward comes before forward."""
        if self._saved is None:
            who = repr(self) if "\n" not in repr(self) else type(self).__name__   # a composite
            raise RuntimeError(f"{who}: backward called before forward (or twice after one "
                               f"forward); call forward first")
        saved, self._saved = self._saved, None
        return saved

    def check_input(self, x, pattern, bound=None):
        """Check the input's device, dtype and shape against a pattern (see ops._check); the
        message names this layer."""
        return check_arrays(repr(self), bound=bound, input=(x, pattern))

    def check_grad_output(self, dy, shape):
        """dy must have the shape the forward output had."""
        return check_arrays(repr(self) + ".backward", dy=(dy, tuple(shape)))

    # ------------------------------------------------------------------ parameters and state
    def layers(self):
        """This layer and every sub-layer, depth first."""
        yield self
        for _, child in self.named_children():
            yield from child.layers()

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) for every parameter, in a fixed order: a layer's own, then its
        children's. Names are PyTorch's (`layer1.0.conv1.weight`)."""
        for key in self.params:
            name = prefix + key
            yield name, Parameter(self, key, name)
        for child_name, child in self.named_children():
            yield from child.named_parameters(f"{prefix}{child_name}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for key, value in self.buffers.items():
            yield prefix + key, value
        for child_name, child in self.named_children():
            yield from child.named_buffers(f"{prefix}{child_name}.")

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    def zero_grad(self):
        for p in self.parameters():
            p.grad[...] = 0

    def state_dict(self):
        """Parameters and buffers as NumPy copies, keyed by PyTorch's names, in PyTorch's order
        (a layer's parameters, then its buffers, then its children)."""
        state = collections.OrderedDict()
        self._collect_state(state, "")
        return state

    def _collect_state(self, state, prefix):
        for key, value in self.params.items():
            state[prefix + key] = np.array(_device.asnumpy(value))
        for key, value in self.buffers.items():
            state[prefix + key] = np.array(_device.asnumpy(value))
        for child_name, child in self.named_children():
            child._collect_state(state, f"{prefix}{child_name}.")

    def load_state_dict(self, state, strict=True):
        """Copy values from a state dict (NumPy or device arrays) into this layer.

        Every mismatch is reported at once, in one ValueError: keys the layer has and the state
        lacks, keys the state has and the layer lacks (both only when strict), and shapes that
        differ. Nothing is changed unless everything matches."""
        targets = {}
        for name, p in self.named_parameters():
            targets[name] = (p.layer.params, p.key)
        for layer_prefix, layer in self._named_layers():
            for key in layer.buffers:
                targets[layer_prefix + key] = (layer.buffers, key)
        problems = []
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        if strict and missing:
            problems.append("missing: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected: " + ", ".join(unexpected))
        for name, (store, key) in targets.items():
            if name in state and tuple(np.shape(state[name])) != tuple(store[key].shape):
                problems.append(f"{name}: shape {tuple(np.shape(state[name]))} in the state, "
                                f"{tuple(store[key].shape)} in the model")
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state does not match "
                             f"the model; " + "; ".join(problems))
        for name, (store, key) in targets.items():
            if name in state:
                value = _device.asnumpy(state[name])
                store[key][...] = _device.asarray(value, dtype=store[key].dtype)

    def _named_layers(self, prefix=""):
        yield prefix, self
        for child_name, child in self.named_children():
            yield from child._named_layers(f"{prefix}{child_name}.")

    def to(self, dtype=None):
        """Move every parameter, gradient and buffer to the current device (and to `dtype`,
        for floating-point arrays, when given: float64 for a gradient check on numpy)."""
        for layer in self.layers():
            for store in (layer.params, layer.grads, layer.buffers):
                for key, value in store.items():
                    host = _device.asnumpy(value)
                    if dtype is not None and host.dtype.kind == "f":
                        host = host.astype(dtype)
                    store[key] = _device.asarray(host)
            layer._saved = None
        return self

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def summary(self, input_shape, print_fn=print):
        """Print every layer with its output shape and parameter count, and the totals, from a
        forward pass (evaluation mode) of a random batch of 2 inputs of `input_shape` (without
        the batch axis), e.g. model.summary((3, 32, 32)). Returns the rows printed."""
        named = [(name.rstrip(".") or type(self).__name__, layer)
                 for name, layer in self._named_layers()]
        shapes = {}

        def record(layer, x, y):
            shapes[id(layer)] = tuple(y.shape[1:])

        removers = [layer.add_forward_hook(record) for _, layer in named]
        try:
            x = np.random.default_rng(0).standard_normal((2,) + tuple(input_shape))
            self(_device.asarray(x.astype(np.float32)), training=False)
        finally:
            for remove in removers:
                remove()
        rows = [(name, type(layer).__name__, shapes.get(id(layer)),
                 sum(int(np.prod(v.shape)) for v in layer.params.values()))
                for name, layer in named]
        width = max(len("layer"), *(len(r[0]) + 2 * r[0].count(".") for r in rows))
        print_fn(f"{'layer':<{width}}  {'type':<16} {'output shape':<20} {'parameters':>12}")
        for name, kind, shape, count in rows:
            indent = "  " * name.count(".") if name != rows[0][0] else ""
            print_fn(f"{(indent + name):<{width}}  {kind:<16} {str(shape):<20} {count:>12,}")
        total = self.num_parameters()
        print_fn(f"total parameters: {total:,} ({4 * total / 2**20:.2f} MiB in float32)")
        return rows


def uniform_init(shape, fan_in, rng):
    """PyTorch's default for Linear and Conv weights and biases: kaiming_uniform with a=sqrt(5),
    which is U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    _reserve(shape, 2 * 4, commit=False)             # checked before drawing (add_param counts)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)
