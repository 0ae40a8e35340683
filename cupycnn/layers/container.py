"""Composites: `Sequential` (layers one after another) and `Residual` (y = main(x) + shortcut(x)).

Both are Layers: their parameters are their children's, named as PyTorch names them
("0.weight", "fc1.bias", "main.0.weight"), so `state_dict`, `parameters()` and optimizers see
through them. There is no autograd: a composite's backward calls its children's backwards, in
reverse order for Sequential, and through both branches for Residual. Each child keeps what its
own backward needs, so a layer object may appear only once in a model.

`forward(x, training=None)` hands `training` to every child unchanged: None lets each child
follow its own mode (`train()` / `eval()`), True or False puts them all in that mode.
"""
import collections

from ..ops import elementwise as elementwise_ops
from ..ops._check import check_arrays
from ..ops._storage import activation_dtypes
from .base import Layer


def _check_layer(owner, name, layer):
    if not isinstance(layer, Layer):
        raise TypeError(f"{owner}: {name} must be a cupycnn Layer, got {type(layer).__name__}")


class _LayerList(list):
    """A Sequential's children, as a list (`model.layers[0]`, `len(model.layers)`). Calling it,
    `model.layers()`, keeps the meaning `Layer.layers()` has on every layer: this layer and
    every sub-layer, depth first (what `Layer.to()` and gradcheck walk)."""

    def __init__(self, owner, children):
        super().__init__(children)
        self._owner = owner

    def __call__(self):
        return Layer.layers(self._owner)


class Sequential(Layer):
    """PyTorch's `nn.Sequential`: the output of each layer is the input of the next.

        model = Sequential(Dense(784, 128), ReLU(), Dense(128, 10))       # names "0", "1", "2"
        model = Sequential(OrderedDict(fc1=Dense(784, 128), act=ReLU(), fc2=Dense(128, 10)))

    Iterable, indexable (`model[0]`, `model[-1]`, `model["fc1"]`, and a slice gives a Sequential
    of the same layer objects), `len(model)`, `model.fc1` for a named child, `append(layer)`.
    `model.layers` is the list of children (a new list: use `append` to add one). The state_dict
    keys are "<child name>.<parameter>", e.g. "0.weight" or "fc1.weight", as PyTorch's. As in
    PyTorch, a layer assigned as an attribute (`model.head = Dense(...)`) becomes the last
    child, under that name.

    An empty Sequential passes its input through. Backward must follow a forward; it runs the
    children's backwards in reverse order.
    """

    def __init__(self, *layers):
        super().__init__()
        self._children = self._modules        # the registered sub-layers are the children
        if len(layers) == 1 and isinstance(layers[0], collections.OrderedDict):
            for name, layer in layers[0].items():
                self._add(name, layer)
        else:
            for layer in layers:
                self._add(str(len(self._children)), layer)

    def _add(self, name, layer):
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"Sequential: a child's name must be a non-empty string without "
                             f"'.', got {name!r}")
        if name in self._children:
            raise ValueError(f"Sequential: there is already a child named {name!r}")
        if hasattr(type(self), name) or name in self.__dict__:
            raise ValueError(f"Sequential: a child cannot be named {name!r}, which is an "
                             f"attribute of Sequential")
        _check_layer("Sequential", f"child {name!r}", layer)
        self._children[name] = layer

    def append(self, layer):
        """Add a layer at the end, named by its position (as PyTorch's append)."""
        self._add(str(len(self._children)), layer)
        return self

    # ------------------------------------------------------------------ the container protocol
    @property
    def layers(self):
        return _LayerList(self, [layer for _, layer in self.named_children()])

    def __len__(self):
        return len(self.named_children())

    def __iter__(self):
        return iter([layer for _, layer in self.named_children()])

    def __getitem__(self, index):
        items = self.named_children()
        if isinstance(index, slice):
            return Sequential(collections.OrderedDict(items[index]))
        if isinstance(index, str):
            if self._children.get(index) is None:
                raise KeyError(f"Sequential has no child named {index!r}; its children: "
                               f"{', '.join(self._children)}")
            return self._children[index]
        try:
            return items[index][1]
        except IndexError:
            raise IndexError(f"Sequential index {index} is out of range for {len(items)} "
                             f"layers") from None

    def input_layers(self):
        """The first child receives the Sequential's input."""
        return self.layers[0].input_layers() if self._children else []

    # ------------------------------------------------------------------ forward and backward
    def forward(self, x, training=None):
        self._saved = None                    # a failed forward leaves nothing to go back through
        self.check_input(x, None)
        for name, layer in self.named_children():
            try:
                x = layer(x, training)
            except ValueError as e:
                raise ValueError(f"Sequential layer {name!r}: {e}") from e
        self.save_for_backward(output_shape=tuple(x.shape))
        return x

    def backward(self, dy):
        check_arrays("Sequential.backward", dtypes=activation_dtypes(),
                     dy=(dy, self.saved()["output_shape"]))
        for name, layer in reversed(self.named_children()):
            try:
                dy = layer.backward(dy)
            except ValueError as e:
                raise ValueError(f"Sequential layer {name!r}: {e}") from e
        return dy


class Residual(Layer):
    """A residual connection: y = main(x) + shortcut(x), or main(x) + x when shortcut is None
    (the identity). As in PyTorch's ResNet blocks (there `out += identity`, the shortcut being
    `downsample` or the identity), with any layers as the branches; a ReLU after the sum, as in
    ResNet, is a separate layer.

    Backward sends dy through both branches and adds the two input gradients:
    dx = main.backward(dy) + shortcut.backward(dy) (or + dy). The sums go through the `add`
    kernel. The two branches must give outputs of the same shape; children are named "main" and
    "shortcut" (state_dict keys "main.0.weight", "shortcut.weight").
    """

    def __init__(self, main, shortcut=None):
        super().__init__()
        _check_layer("Residual", "main", main)
        if shortcut is not None:
            _check_layer("Residual", "shortcut", shortcut)
        self.main, self.shortcut = main, shortcut      # registered: children "main", "shortcut"

    def input_layers(self):
        """Both branches receive the input; with the identity shortcut its gradient is dy
        itself, so nothing can be skipped."""
        if self.shortcut is None:
            return []
        return self.main.input_layers() + self.shortcut.input_layers()

    @staticmethod
    def _branch(name, method, *args):
        try:
            return method(*args)
        except ValueError as e:                 # say which branch the message is about
            raise ValueError(f"Residual {name}: {e}") from e

    def forward(self, x, training=None):
        self._saved = None
        self.check_input(x, None)
        y_main = self._branch("main", self.main, x, training)
        y_shortcut = x if self.shortcut is None else \
            self._branch("shortcut", self.shortcut, x, training)
        if tuple(y_main.shape) != tuple(y_shortcut.shape):
            which = "the identity shortcut (the input)" if self.shortcut is None else \
                "the shortcut"
            raise ValueError(f"Residual: the main branch gives shape {tuple(y_main.shape)} but "
                             f"{which} gives {tuple(y_shortcut.shape)}; they are added, so they "
                             f"must match")
        self.save_for_backward(output_shape=tuple(y_main.shape))
        return elementwise_ops.add(y_main, y_shortcut)

    def backward(self, dy):
        check_arrays("Residual.backward", dtypes=activation_dtypes(),
                     dy=(dy, self.saved()["output_shape"]))
        dx_main = self._branch("main", self.main.backward, dy)
        dx_shortcut = dy if self.shortcut is None else \
            self._branch("shortcut", self.shortcut.backward, dy)
        if dx_main is None and dx_shortcut is None:      # without_input_grad: not wanted
            return None
        if dx_main is None or dx_shortcut is None:
            raise RuntimeError("Residual: one branch skipped its input gradient and the other "
                               "did not; mark the layers with without_input_grad(model)")
        # A new array, not in place: either gradient may be dy itself (an identity branch),
        # which belongs to the caller.
        return elementwise_ops.add(dx_main, dx_shortcut)
