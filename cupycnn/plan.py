"""The static memory plan of a step: every array it allocates, placed once in one arena.

A training step asks for the same arrays, of the same shapes, in the same order, every time:
activations, the gradients flowing back, workspaces (the weight gradient's split partials,
batchnorm's per-channel sums), the loss. Allocating them from a pool on every step costs host
time and leaves the peak to the pool's fragmentation; a CUDA graph cannot allocate at all. So:

    result, plan = trace(step)          # run the step once, watching every allocation
    arena = Arena(plan)                 # ONE allocation of plan.arena_bytes
    with arena.serving():               # every later step: the same requests, in order,
        step()                          #   answered with views into the arena; none allocates

`trace` runs the step normally, with every `cupycnn.devices.empty` / `zeros` call recorded in
order (shape, dtype, which op asked) and its lifetime measured on a clock that ticks at every
allocation and every release: an array is released when Python drops its last reference (and
every view's), which is when CuPy's pool would take it back. Arrays still alive when the step
returns (its outputs: the logits, the loss) live to the end. Two arrays whose lifetimes do not
overlap may share memory, and the plan gives each an offset in the arena so that no two
overlapping ones collide: largest first, each at the lowest offset free during its lifetime
(the greedy-by-size placement of TensorFlow Lite's and XLA's planners). Offsets are multiples
of ALIGN bytes, as cudaMalloc's are.

Reuse across steps follows from the order: request k of every step gets the same buffer. What a
step returns (the loss, the logits) is therefore overwritten by the next step, as a CUDA graph's
outputs are; copy it to keep it. A step whose requests differ from the traced ones (another
input shape) raises PlanMismatch before anything is overwritten: make a plan per shape.

Figures: `arena_bytes` (what the plan allocates), `live_peak_bytes` (the most bytes alive at
once: no placement can do better), `total_bytes` (every request added up: what a step would hold
if nothing were ever released). `describe()` prints them with the largest buffers.
"""
import contextlib
import math
import os
import sys
import weakref

import numpy as np

from . import devices as _device

ALIGN = 256          # bytes: every buffer starts on a 256-byte boundary (cudaMalloc's guarantee)


class PlanMismatch(RuntimeError):
    """A step asked for other arrays than the plan was made for."""


def _align(n):
    return -(-int(n) // ALIGN) * ALIGN


def _normal_shape(shape):
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


_HERE = os.path.dirname(os.path.abspath(__file__))
_SKIP = {os.path.join(_HERE, "devices.py"), os.path.join(_HERE, "plan.py")}


def _requester():
    """`module.function` of the nearest caller outside devices.py and plan.py (the op that
    asked), for the report."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename in _SKIP:
        frame = frame.f_back
    if frame is None:
        return "?"
    name = frame.f_globals.get("__name__", "?").replace("cupycnn.", "")
    return f"{name}.{frame.f_code.co_name}"


class Buffer:
    """One allocation of the traced step: request `index` (0-based, in order), its shape and
    dtype, bytes, lifetime [start, end) on the plan's clock, offset in the arena."""

    __slots__ = ("index", "shape", "dtype", "nbytes", "start", "end", "offset", "requester")

    def __init__(self, index, shape, dtype, start, requester):
        self.index, self.shape, self.dtype = index, shape, np.dtype(dtype)
        self.nbytes = int(math.prod(shape)) * self.dtype.itemsize
        self.start, self.end, self.offset, self.requester = start, None, None, requester

    @property
    def size(self):
        """Bytes it takes in the arena (rounded up to ALIGN)."""
        return _align(self.nbytes)

    def overlaps(self, other):
        return self.start < other.end and other.start < self.end

    def __repr__(self):
        return (f"Buffer(#{self.index} {self.dtype}{self.shape} from {self.requester}, "
                f"live [{self.start}, {self.end}), offset {self.offset})")


class MemoryPlan:
    """Offsets for every buffer of one traced step (see the module docstring)."""

    def __init__(self, buffers, clock_end):
        self.buffers = list(buffers)
        self.clock_end = clock_end
        self._place()

    def _place(self):
        placed = []
        for b in sorted(self.buffers, key=lambda b: (-b.size, b.start, b.index)):
            busy = sorted((p.offset, p.offset + p.size) for p in placed if p.overlaps(b))
            offset = 0
            for low, high in busy:
                if offset + b.size <= low:
                    break
                offset = max(offset, high)
            b.offset = offset
            placed.append(b)
        self.arena_bytes = max((b.offset + b.size for b in self.buffers), default=0)
        self.total_bytes = sum(b.size for b in self.buffers)
        events = sorted([(b.start, b.size) for b in self.buffers] +
                        [(b.end, -b.size) for b in self.buffers], key=lambda e: (e[0], e[1]))
        live = peak = 0
        for _, delta in events:
            live += delta
            peak = max(peak, live)
        self.live_peak_bytes = peak

    def __len__(self):
        return len(self.buffers)

    def requests(self):
        """(shape, dtype) of every request, in order: what a step must ask for."""
        return [(b.shape, b.dtype) for b in self.buffers]

    def check(self):
        """Assert the placement: buffers alive at the same time never share a byte."""
        for i, a in enumerate(self.buffers):
            for b in self.buffers[i + 1:]:
                if a.overlaps(b) and a.size and b.size and \
                        a.offset < b.offset + b.size and b.offset < a.offset + a.size:
                    raise AssertionError(f"{a} and {b} are alive together and overlap")

    def summary(self):
        """The figures as a dict (bytes)."""
        return {"buffers": len(self.buffers), "arena_bytes": self.arena_bytes,
                "live_peak_bytes": self.live_peak_bytes, "total_bytes": self.total_bytes}

    def describe(self, largest=8):
        """A few lines: the figures, then the largest buffers with the op that asked."""
        mib = 2.0 ** 20
        lines = [f"memory plan: {len(self.buffers)} buffers, arena {self.arena_bytes / mib:.1f} "
                 f"MiB (live peak {self.live_peak_bytes / mib:.1f} MiB; "
                 f"{self.total_bytes / mib:.1f} MiB if nothing were reused)"]
        for b in sorted(self.buffers, key=lambda b: -b.nbytes)[:largest]:
            lines.append(f"  {b.nbytes / mib:8.2f} MiB  {str(b.dtype):8} {str(b.shape):22} "
                         f"{b.requester}  live [{b.start}, {b.end})")
        return "\n".join(lines)

    def __repr__(self):
        return (f"MemoryPlan({len(self.buffers)} buffers, arena {self.arena_bytes} bytes, "
                f"live peak {self.live_peak_bytes})")


class _Tracer:
    """The allocator while a step is traced: real allocations, each one's release watched."""

    def __init__(self):
        self.clock = 0
        self.buffers = []
        self.open = True

    def _tick(self):
        t = self.clock
        self.clock += 1
        return t

    def _released(self, buffer):
        if self.open:
            buffer.end = self._tick()

    def __call__(self, shape, dtype):
        shape = _normal_shape(shape)
        buffer = Buffer(len(self.buffers), shape, dtype, self._tick(), _requester())
        self.buffers.append(buffer)
        array = _device._allocate(shape, dtype)
        # Released when the array and its last view are gone (NumPy's and CuPy's arrays take
        # weak references, and views hold their base).
        weakref.finalize(array, self._released, buffer)
        return array

    def close(self):
        self.open = False
        end = self._tick()
        for b in self.buffers:
            if b.end is None:        # still alive when the step returned: one of its outputs
                b.end = end
        return end


def trace(fn, *args, **kwargs):
    """Run fn(*args, **kwargs) once, recording every allocation it makes through
    cupycnn.devices; returns (its result, the MemoryPlan)."""
    tracer = _Tracer()
    previous = _device.set_allocator(tracer)
    try:
        result = fn(*args, **kwargs)
    finally:
        _device.set_allocator(previous)
        clock_end = tracer.close()
    return result, MemoryPlan(tracer.buffers, clock_end)


class Arena:
    """A plan made real: one device allocation of plan.arena_bytes, and the view every request
    of a step receives, made once."""

    def __init__(self, plan):
        self.plan = plan
        self.memory = _device._allocate((max(plan.arena_bytes, 1),), np.uint8)
        self.views = [self._view(b) for b in plan.buffers]
        self._next = None

    def _view(self, b):
        flat = self.memory[b.offset:b.offset + b.nbytes].view(b.dtype)
        return flat.reshape(b.shape)

    def _serve(self, shape, dtype):
        k = self._next
        shape, dtype = _normal_shape(shape), np.dtype(dtype)
        if k >= len(self.views):
            raise PlanMismatch(f"the step asks for a {len(self.views) + 1}th array "
                               f"({dtype}{shape}), but the memory plan was made for a step of "
                               f"{len(self.views)}; make a plan for this step (another input "
                               f"shape or mode)")
        b = self.plan.buffers[k]
        if b.shape != shape or b.dtype != dtype:
            raise PlanMismatch(f"the step's array #{k} is {dtype}{shape}, but the memory plan "
                               f"has {b.dtype}{b.shape} there (asked for by {b.requester}); "
                               f"make a plan for this step (another input shape or mode)")
        self._next = k + 1
        return self.views[k]

    @contextlib.contextmanager
    def serving(self):
        """Answer every allocation of the block from the arena, in the plan's order; at the end
        the block must have made exactly the plan's requests."""
        if self._next is not None:
            raise RuntimeError("the arena is already serving a step")
        self._next = 0
        previous = _device.set_allocator(self._serve)
        try:
            yield self
            if self._next != len(self.views):
                raise PlanMismatch(f"the step made {self._next} of the memory plan's "
                                   f"{len(self.views)} requests; make a plan for this step")
        finally:
            _device.set_allocator(previous)
            self._next = None


__all__ = ["ALIGN", "Arena", "Buffer", "MemoryPlan", "PlanMismatch", "trace"]
