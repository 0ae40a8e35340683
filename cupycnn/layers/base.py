"""The `Layer` base: forward, backward written out by hand, parameters, state.

A layer keeps three dicts of device arrays:
    params   trainable tensors (PyTorch's names: "weight", "bias")
    grads    one gradient per parameter, same shape; `backward` overwrites it
    buffers  state that is not trained (batchnorm's running statistics)

`forward(x, training=None)` computes the output and keeps what backward needs; `backward(dy)`
fills `grads` and returns the gradient of the input. There is no autograd: each layer writes its
own backward, and composites (`Sequential`, `Residual`) call their children's in reverse.

The input gradient nobody reads (that of the model's input, the images) need not be computed:
`with without_input_grad(model): model.backward(dy)` marks the layers that see the model's
input (`input_layers()`: a Sequential's first child, both branches of a Residual with a
shortcut); those that can skip it (Conv2D, Dense) then return None instead of dx.

Modes, as PyTorch's: every layer has a persistent `training` flag (True when built);
`model.train()` and `model.eval()` set it on the layer and every sub-layer (`training_mode`
does it for the length of a `with` block). `training=None` (the
default, and what `model(x)` passes) makes each layer follow its own flag (batchnorm: batch or
running statistics; dropout: on or off); an explicit True or False puts the whole call in that
mode, whatever the flags say (the Trainer trains with True and evaluates with False). A
subclass's `forward(self, x)` written without `training`, as in PyTorch, is given one
(`Layer.__init_subclass__`): an explicit flag then sets the modes of its tree for the call.

Sub-layers: a Layer assigned as an attribute (`self.conv1 = Conv2D(...)`) registers itself as a
child, as `nn.Module.__setattr__` does: it appears in `named_children()` (in assignment order),
so in `parameters()`, `state_dict()` (as "conv1.weight"), `train()`/`eval()` and the printed
tree, with no method to override. A list, tuple or dict of layers is not registered (nor is it
in PyTorch, where it needs nn.ModuleList): assigning one that holds layers which are not
sub-layers is refused, with the fix (a Sequential iterates, indexes and appends as ModuleList
does), and so is a Trainer for a model with such layers (see `unregistered_layers`).

Parameters are reached through `params[key]` every time, never kept elsewhere: an optimizer may
move every parameter of a model into one flat buffer (each becoming a view of it), and the
layer then reads and writes the views without knowing.
"""
import collections
import contextlib
import functools
import inspect
import math
import os
import threading

import numpy as np

from .. import devices as _device
from ..ops._check import check_arrays
from ..ops._storage import activation_dtypes


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


class LayerName:
    """How check messages name a layer (`Type(args)[.backward]`): formatted only when a message
    is, not at every forward (short_repr costs microseconds a call)."""
    __slots__ = ("layer", "suffix")

    def __init__(self, layer, suffix=""):
        self.layer, self.suffix = layer, suffix

    def __str__(self):
        return self.layer.short_repr() + self.suffix

    def __format__(self, spec):
        return format(str(self), spec)


class Layer:
    """Base class of every layer and composite; see the module docstring."""

    # False while the input gradient is not wanted (without_input_grad): backward may skip it
    # and return None. A layer that does not look at it computes dx anyway, which is harmless.
    input_grad = True

    def __init_subclass__(cls, **kwargs):
        """A subclass's forward(self, x) without `training`, as PyTorch users write it, is
        wrapped to take one: None runs it as written (each sub-layer follows its own mode), an
        explicit True or False runs it with the layer's tree in that mode (training_mode)."""
        super().__init_subclass__(**kwargs)
        forward = cls.__dict__.get("forward")
        if forward is None or not callable(forward) or _takes_training(forward):
            return

        @functools.wraps(forward)
        def forward_with_training(self, x, training=None):
            if training is None:
                return forward(self, x)
            with training_mode(self, bool(training)):
                return forward(self, x)
        cls.forward = forward_with_training

    def __init__(self):
        if "_modules" not in self.__dict__:        # sub-layers assigned before this call stay
            object.__setattr__(self, "_modules", collections.OrderedDict())
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.training = True
        self._saved = None

    # ---------------------------------------------------------------- what subclasses write
    def forward(self, x, training=None):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dy):
        raise NotImplementedError(
            f"{type(self).__name__}.backward is not written: cupycnn has no autograd, so a "
            f"layer of one's own writes its backward (a composite: its sub-layers' backwards "
            f"in reverse order; docs/WRITING_A_LAYER.md), or the model is built as a "
            f"Sequential or Residual of library layers, which have theirs")

    def named_children(self):
        """(name, layer) for each sub-layer; the names build the state_dict keys. By default the
        layers assigned as attributes, in assignment order (None-valued ones skipped)."""
        return [(name, layer) for name, layer in self.__dict__.get("_modules", {}).items()
                if layer is not None]

    def extra_repr(self):
        return ""

    def random_state(self):
        """What this layer's randomness depends on (Dropout: its seed and call counter), so that
        a gradient check can replay the same mask; {} for deterministic layers."""
        return {}

    def set_random_state(self, state):
        """Restore what random_state() returned."""

    def input_layers(self):
        """The layers that receive this layer's input as theirs: itself, for a layer that is not
        a composite (composites say which of their children do)."""
        return [self]

    # ---------------------------------------------------------------- sub-layers as attributes
    def __setattr__(self, name, value):
        modules = self.__dict__.get("_modules")
        if isinstance(value, Layer):
            if modules is None:
                modules = collections.OrderedDict()
                object.__setattr__(self, "_modules", modules)
            attribute = getattr(type(self), name, None)
            if callable(attribute) or isinstance(attribute, property):
                raise ValueError(f"{type(self).__name__}: a sub-layer cannot be named {name!r}, "
                                 f"which is a method or property of every Layer "
                                 f"({type(self).__name__}.{name}); choose another name")
            self.__dict__.pop(name, None)
            modules[name] = value
        elif modules is not None and name in modules:
            if value is not None:
                raise TypeError(f"{type(self).__name__}: cannot assign a "
                                f"{type(value).__name__} to {name!r}, a sub-layer (a Layer or "
                                f"None expected); delete it first (del layer.{name})")
            modules[name] = None
        else:
            # A class with its own named_children() may list the layers it keeps this way.
            held = _layers_in(value) if type(self).named_children is Layer.named_children else ()
            if held:
                reachable = {id(layer) for layer in self._every_layer()}
                loose = [(index, layer) for index, layer in held if id(layer) not in reachable]
                if loose:
                    raise ValueError(_unregistered_message(
                        [f"{type(self).__name__}.{name}{index} ({type(layer).__name__})"
                         for index, layer in loose], name))
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only reached when normal lookup fails: a registered sub-layer (kept in _modules only,
        # so that registering and replacing one has a single home).
        modules = self.__dict__.get("_modules")
        if modules is not None and name in modules:
            return modules[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        modules = self.__dict__.get("_modules")
        if modules is not None and name in modules:
            del modules[name]
        else:
            object.__delattr__(self, name)

    # ----------------------------------------------------------------------------- modes
    def train(self, mode=True):
        """Put this layer and every sub-layer in training mode (mode=False: evaluation), as
        PyTorch's Module.train. Returns the layer."""
        mode = bool(mode)
        for layer in self._every_layer():
            layer.training = mode
        return self

    def eval(self):
        """Evaluation mode for this layer and every sub-layer: batchnorm uses its running
        statistics (and leaves them alone), dropout passes its input through."""
        return self.train(False)

    def is_training(self, training=None):
        """The mode a forward runs in: `training` when given, else this layer's own flag."""
        return self.training if training is None else bool(training)

    def _every_layer(self):
        """Every Layer object reachable from this one, each once: through named_children and
        through the attributes registered as sub-layers (a composite may expose other names
        than those of the objects it runs, as the ResNet blocks do)."""
        seen, stack = set(), [self]
        while stack:
            layer = stack.pop()
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            yield layer
            children = [child for _, child in layer.named_children()]
            children += [child for child in layer.__dict__.get("_modules", {}).values()
                         if child is not None]
            stack.extend(reversed(children))

    # ---------------------------------------------------------------------------- helpers
    _forward_hooks = ()          # an instance's own list once add_forward_hook is called

    def __call__(self, x, training=None):
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
            who = type(self).__name__ if self.named_children() else self.short_repr()
            raise RuntimeError(f"{who}: backward called before forward (or twice after one "
                               f"forward); call forward first")
        saved, self._saved = self._saved, None
        return saved

    def check_input(self, x, pattern, bound=None):
        """Check the input's device, dtype and shape against a pattern (see ops._check); the
        message names this layer. Activations may be float or BF16 storage (ops._storage).
        A uint8 batch (images straight from a Loader without a
        transform) is told to add Normalize."""
        if _device.is_device_array(x) and x.dtype == np.uint8:
            raise ValueError(f"{self.short_repr()}: got a uint8 batch {tuple(x.shape)}: those are "
                             f"raw images [N, H, W, C], not network input. Normalise them into "
                             f"float32 [N, C, H, W] first: give the Loader "
                             f"transform=cupycnn.data.Normalize(mean, std) (or an augmentation), "
                             f"or pass the uint8 arrays to Trainer.fit(x, y) / predict(x), which "
                             f"normalise them")
        return check_arrays(LayerName(self), bound=bound, dtypes=activation_dtypes(),
                            input=(x, pattern))

    def check_grad_output(self, dy, shape):
        """dy must have the shape the forward output had."""
        return check_arrays(LayerName(self, ".backward"), dtypes=activation_dtypes(),
                            dy=(dy, tuple(shape)))

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

    def short_repr(self):
        """One line, `Type(constructor arguments)`: how error messages name the layer."""
        return f"{type(self).__name__}({self.extra_repr()})"

    def __repr__(self):
        """PyTorch's tree: `Type(args)` for a leaf; a composite lists its children, one
        `(name): child` line each, indented, after its own arguments."""
        children = self.named_children()
        if not children:
            return self.short_repr()
        lines = [f"  {self.extra_repr()}"] if self.extra_repr() else []
        lines += [f"  ({name}): " + repr(child).replace("\n", "\n  ")
                  for name, child in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"

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


@contextlib.contextmanager
def without_input_grad(model):
    """Within this block, the layers that see `model`'s input skip its gradient where they can
    (model.backward then returns None): what a training step, which never reads it, wants. The
    stem convolution of a ResNet saves its input gradient this way, a product as large as the
    forward's."""
    marked = [layer for layer in model.input_layers() if layer.input_grad]
    for layer in marked:
        layer.input_grad = False
    try:
        yield
    finally:
        for layer in marked:
            layer.input_grad = True


def _takes_training(function):
    """Whether forward(self, x, ...) takes a `training` argument (by name or **kwargs)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return True                            # a builtin or odd callable: leave it alone
    return any(p.name == "training" or p.kind is p.VAR_KEYWORD for p in parameters)


def _layers_in(value):
    """(index, Layer) for each layer a list, tuple or dict holds (one level deep)."""
    if isinstance(value, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(value) if isinstance(v, Layer)]
    if isinstance(value, dict):
        return [(f"[{k!r}]", v) for k, v in value.items() if isinstance(v, Layer)]
    return []


def unregistered_layers(model):
    """'Net.blocks[0] (Conv2D)' for every layer held in a list, tuple or dict attribute of a
    layer of `model` without being one of the model's sub-layers: its parameters would be
    neither trained nor saved (a list filled after its assignment, `self.blocks.append(...)`,
    is found here, not at the assignment)."""
    reachable = {id(layer) for layer in model._every_layer()}
    return [f"{type(layer).__name__}.{name}{index} ({type(held).__name__})"
            for layer in model._every_layer() for name, value in vars(layer).items()
            for index, held in _layers_in(value) if id(held) not in reachable]


def _unregistered_message(where, name):
    return (f"{', '.join(where[:3])}{' and more' if len(where) > 3 else ''}: a layer in a "
            f"plain list, tuple or dict is not a sub-layer: its parameters would be neither "
            f"trained nor saved, nor its mode set by train() and eval(); hold the layers in a Sequential (self.{name} = "
            f"Sequential(...): it iterates, indexes and appends as PyTorch's nn.ModuleList, "
            f"its state_dict names are '{name}.0.weight', ...), or assign each one as an "
            f"attribute")


def check_registered(model, who):
    """Raise the one-sentence error when `model` holds layers that are not sub-layers."""
    where = unregistered_layers(model)
    if where:
        name = where[0].split(".", 1)[1].split("[", 1)[0]
        raise ValueError(f"{who}: " + _unregistered_message(where, name))


@contextlib.contextmanager
def training_mode(model, training):
    """`with training_mode(model, False): ...`: the block runs with `model` and every sub-layer
    in that mode (True: training, False: evaluation); each layer's own previous mode comes back
    afterwards, even on an error. How Trainer.evaluate and predict leave a model as they found
    it."""
    before = [(layer, layer.training) for layer in model._every_layer()]
    model.train(training)
    try:
        yield model
    finally:
        for layer, flag in before:
            layer.training = flag


def uniform_init(shape, fan_in, rng):
    """PyTorch's default for Linear and Conv weights and biases: kaiming_uniform with a=sqrt(5),
    which is U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    _reserve(shape, 2 * 4, commit=False)             # checked before drawing (add_param counts)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)
