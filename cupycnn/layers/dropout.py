"""Dropout, PyTorch's `nn.Dropout(p=0.5)`: inverted dropout. Kernels: kernels/dropout.cu;
reference: reference/dropout.py; wrappers: ops/dropout.py.

    training: y = x * mask / (1 - p),   dx = dy * mask / (1 - p)     (p = 1: zeros)
    eval:     y = x,                    dx = dy

Element i is kept when its uniform number, word i mod 4 of the Philox block (i div 4, stream)
(reference/dropout.py), is >= p. The layer draws its seed from
`cupycnn.random.next_seed()` when it is built (so `cupycnn.manual_seed` makes runs repeatable)
and uses its count of training-mode forward calls as the stream: every call draws a fresh mask.
On a GPU, backward recomputes the mask from the (seed, stream) that forward used instead of
keeping it: no mask memory is held between forward and backward (it would be a byte per
element, a quarter of the activation, for every dropout layer of the network), at the price of
a few integer operations per element that the memory-bound kernel hides. On the numpy
device the mask is kept instead (the Philox rounds are what costs there). `random_state()` /
`set_random_state()` expose (seed, calls) so a gradient check can replay the same mask.
"""
from .. import devices as _device
from .. import random as _random
from ..ops import dropout as ops
from .base import Layer


class Dropout(Layer):
    """Inverted dropout with probability p of zeroing each element (PyTorch's `nn.Dropout`,
    without `inplace`); identity in evaluation mode (`layer.eval()`, or
    forward(x, training=False)). Any input shape. No parameters.

    On the kernel devices the call counter lives in device memory (ops.dropout.StreamCounter) and
    a kernel advances it, so that a recorded step (cupycnn.graph) draws a new mask at every
    replay; `calls` reads it back."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = ops.check_probability("Dropout", p)
        self.seed = _random.next_seed()
        self._calls = 0                      # training-mode forwards so far (numpy device)
        self._counter = None                 # ... and on a kernel device

    @property
    def calls(self):
        """Training-mode forwards so far: the next forward's stream counter."""
        if self._counter is not None and self._counter.device == _device.device():
            return self._counter.calls()
        return self._calls

    @calls.setter
    def calls(self, value):
        self._calls = int(value)
        if self._counter is not None and self._counter.device == _device.device():
            self._counter.set_calls(self._calls)
        else:
            self._counter = None

    def extra_repr(self):
        return f"p={self.p}"

    def random_state(self):
        return {"seed": self.seed, "calls": self.calls}

    def set_random_state(self, state):
        self.seed, self.calls = int(state["seed"]), int(state["calls"])

    def _next_stream(self):
        if not _device.runs_kernels():
            stream = _random.stream(self._calls)       # the rank in its high bits (random.py)
            self._calls += 1
            return stream
        if self._counter is None or self._counter.device != _device.device():
            self._counter = ops.StreamCounter(self.calls, _random.stream(0))
        self._counter.advance()
        return self._counter.stream

    def forward(self, x, training=None):
        self.check_input(x, None)
        if not self.is_training(training):
            self.save_for_backward(shape=tuple(x.shape), stream=None)
            return x
        stream = self._next_stream()
        cache = {}                                # the numpy path keeps its mask here
        self.save_for_backward(shape=tuple(x.shape), stream=stream, cache=cache)
        return ops.dropout_forward(x, self.p, self.seed, stream, cache=cache)

    def backward(self, dy):
        saved = self.saved()
        self.check_grad_output(dy, saved["shape"])
        if saved["stream"] is None:          # the forward ran in eval mode: identity
            return dy
        return ops.dropout_backward(dy, self.p, self.seed, saved["stream"],
                                    cache=saved["cache"])
