"""A stream-ordered stand-in for CuPy, on the host: the cuda code paths (the loader's prefetch
streams, NCCL collectives with fake_nccl.py, kernels and synchronised batchnorm) run here and are
checked on their *data*, under any legal schedule of the GPU's streams.

    cupy, cupyx = fake_cupy.make(seed=3)         # a new GPU: its own streams, pool and memory
    fake_cupy.install(monkeypatch, cupy, cupyx)  # sys.modules, caches, the cuda device

What it models, after CuPy 13.6 and 14.2's own source (cupy/cuda/stream.pyx, memory.pyx,
pinned_memory.pyx, function.pyx) and the CUDA programming guide:

Streams and time. Nothing runs when it is called: every kernel, copy, memset, event record and
event wait is queued on its stream (the calling thread's current stream, thread-local as in
CuPy, the legacy null stream by default). Queued work runs later, in stream order, at moments a
seeded adversarial `Scheduler` chooses: at every call into the fake it may run any number of
ready operations of any streams (each stream has its own eagerness, drawn from the seed: some
streams run at once, some only when the host forces them), and the host forces work only where
CUDA would: `Stream.synchronize`, `Event.synchronize`, `Device.synchronize`, `ndarray.get()`
(which synchronises the stream it copies on, the current one) and what reads a value on the host
(`float(a)`, `a.item()`). An operation is ready when it is first in its stream and everything it
waits for has completed: events it waits on (the record current when `wait_event` was called; an
event never recorded is no wait, as cudaStreamWaitEvent), and for the legacy null stream the
implicit barrier with every blocking stream (non_blocking=False) in both directions. Every
schedule the scheduler can choose is one a GPU may run; seeds vary which.

Memory. Device memory is real bytes (segments from a "cudaMalloc", filled with a poison pattern
when new); arrays are views of it that the host cannot read: `numpy.asarray(a)` raises TypeError
as CuPy does, `a.get()` copies in stream order. Queued work holds addresses, never arrays, so an
array's memory returns to the pool when its last reference goes, whatever work is still queued
on it: exactly CuPy's behaviour. `MemoryPool` is `SingleDeviceMemoryPool`: sizes rounded up to
512 bytes, one arena of free chunks per stream (the current stream when the block was
allocated; a freed chunk goes back to *that* arena at once, with no event), best fit (the
smallest free chunk that is large enough; among chunks of one size CuPy's choice depends on
object addresses, here on the seed), a larger chunk split and the rest kept free in the arena,
a freed chunk merged with free neighbours of its arena. So memory freed on one stream is reused
by the next allocation on that stream, and never by another stream's: a bug that frees memory
still read by another stream's queued work shows up as wrong data, as on a GPU.

Host memory. `cupyx.empty_pinned` arrays are page-locked: a copy from (or to) them runs when
the copy runs, so a host write before then changes what arrives. A copy from pageable memory
reads the host array when called (CUDA stages pageable memory before the call returns).

Kernels. `RawModule(code=...)` compiles the CUDA C source with the project's emulator
(cupycnn.sim), so a launch is a queued operation that runs the real kernel on the device bytes
when the schedule reaches it. Arguments follow CuPy's `_pointer` rules: arrays by address, NumPy
scalars by value, None a null pointer, a NumPy array a TypeError unless of size one; the
emulator checks them against the kernel's parameters at launch.

Elementwise arithmetic, reductions and NumPy functions on these arrays (`a + b`, `a.sum()`,
`cupy.take`, ...) are queued like kernels, with results allocated from the pool on the
current stream.

CUDA graphs (stream capture, after CuPy's stream.pyx and graph.pyx and the CUDA guide's rules).
`Stream.begin_capture()` (not on the legacy null stream) makes the stream's `_enqueue` append
to a graph's node list instead of its queue: nothing captured runs. While a stream captures,
what CUDA refuses is refused, with CUDA's error, and the capture is invalidated (end_capture
then raises): synchronising that stream, the device or an event recorded in the capture; a
device-to-host copy (`get()`, `float(a)`); a host-to-device copy from pageable memory; waiting
for an event recorded outside the capture (capture isolation). Allocations from the pool are
allowed (CuPy captures in relaxed mode) and those made on a capturing stream counted
(`cupy._world.capture_mallocs`; other threads' allocations are not the capture's): memory the
graph was captured with and that is freed before a replay is reused by later allocations, and
the replay then reads or writes another array's bytes, as on a GPU. `end_capture()` returns a
`Graph`; `Graph.launch(stream=None)` enqueues its nodes, in capture order, as operations of that
stream (the current one by default), each running again what it ran when captured: a kernel
with the arguments (addresses and scalars) it was captured with, a copy from the same pinned
buffer. Another stream joins the capture as in CUDA, by waiting for an event recorded in it: its
work is captured too (a collective's as well), and at end_capture every joined stream's last
work must have been waited for by another stream of the capture, else the capture fails
(cudaErrorStreamCaptureUnjoined); a replay runs all the nodes in capture order on one stream.

`cupy.log` lists what ran, in the order it ran: (kind, stream name, detail).
"""
import itertools
import re
import sys
import threading
import time
import types

import numpy as np

ALLOCATION_UNIT_SIZE = 512                  # memory.pyx
SEGMENT_ALIGNMENT = 2 * 2**20
POISON_BYTE = 0xA5
TOTAL_MEMORY = 80 * 2**30
STREAM_PER_THREAD = 2                       # cudaStreamPerThread's handle value


class Deadlock(RuntimeError):
    """The host waits for work that can never run (a stream waits for itself, or a collective
    whose peers never come)."""


# ----------------------------------------------------------------------------- operations

class _Op:
    """One queued operation of a stream. `run()` does it; an op with `start`/`test` (a
    collective) is in flight between them."""

    __slots__ = ("stream", "kind", "detail", "run", "waits", "deps", "done", "started",
                 "test", "seq")

    def __init__(self, stream, kind, detail, run=None, waits=(), deps=(), test=None):
        self.stream, self.kind, self.detail, self.run = stream, kind, detail, run
        self.waits = list(waits)        # (event, generation) pairs
        self.deps = list(deps)          # ops of other streams that must complete first
        self.done = self.started = False
        self.test = test                # None: completes when run() returns
        self.seq = None

    def ready(self):
        return all(ev._completed >= gen for ev, gen in self.waits) and \
            all(d.done for d in self.deps)


class Scheduler:
    """Chooses, by seed, when queued work runs: any legal order of the streams."""

    def __init__(self, world, seed):
        self.world = world
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        # How much of the ready work to run at each call into the fake.
        self.burst = float(self.rng.choice([0.0, 0.5, 2.0, 8.0]))
        # When the host forces a stream: run the others first as far as they can go (the
        # adversary of a missing dependency on them), or pick by eagerness.
        self.others_first = bool(self.rng.random() < 0.5)
        # Host threads: a seeded share of allocations outside the main thread first sleeps a
        # little, so that the host threads interleave in other orders too.
        self.host_delay = float(self.rng.choice([0.0, 0.3, 0.7]))

    def eagerness(self):
        """A new stream's weight: 0 means it runs only when the host forces it."""
        return float(self.rng.choice([0.0, 0.02, 1.0, 50.0]))

    def _ready_heads(self):
        heads = []
        for s in self.world.streams:
            if s._queue:
                op = s._queue[0]
                if not op.started and op.ready():
                    heads.append(op)
        return heads

    def _in_flight(self):
        return [s._queue[0] for s in self.world.streams if s._queue and s._queue[0].started]

    def _finish_in_flight(self):
        progressed = False
        for op in self._in_flight():
            if op.test():
                self.world._complete(op)
                progressed = True
        return progressed

    def step(self, weights_floor=0.0, target=None):
        """Run one ready operation (chosen at random, weighted by eagerness; with `target` and
        others_first, any stream but the target's first); False if none."""
        progressed = self._finish_in_flight()
        heads = self._ready_heads()
        if not heads:
            return progressed
        if target is not None and self.others_first:
            others = [op for op in heads if op.stream is not target]
            if others:
                op = others[int(self.rng.integers(len(others)))]
                self.world._execute(op)
                return True
        w = np.array([op.stream._eagerness + weights_floor for op in heads])
        if w.sum() <= 0:
            return progressed
        op = heads[int(self.rng.choice(len(heads), p=w / w.sum()))]
        self.world._execute(op)
        return True

    def tick(self):
        """At a call into the fake: run a random amount of the ready work."""
        if self.burst == 0.0:
            self._finish_in_flight()
            return
        for _ in range(int(self.rng.poisson(self.burst))):
            if not self.step():
                break

    def drive(self, condition, what, target=None):
        """Run work (any legal order) until `condition()` holds; `target`: the stream the host
        waits for."""
        idle_since = None
        while not condition():
            if self.step(weights_floor=0.05, target=target):
                idle_since = None
                continue
            if self._in_flight():            # a collective waiting for its peers
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > self.world.collective_timeout:
                    raise Deadlock(f"{what}: a collective waited "
                                   f"{self.world.collective_timeout:.0f} s for its peers")
                time.sleep(0.0005)
                continue
            blocked = [(s.name, s._queue[0].kind) for s in self.world.streams if s._queue]
            raise Deadlock(f"{what} can never finish: the streams wait for each other "
                           f"{blocked}")


# -------------------------------------------------------------------------------- streams

class _World:
    """One GPU: its streams, memory, pool and schedule."""

    def __init__(self, seed, pool_version, collective_timeout=120.0):
        self.lock = threading.RLock()
        self.local = threading.local()
        self.streams = []
        self.log = []
        self.seq = itertools.count()
        self.collective_timeout = collective_timeout
        self.scheduler = Scheduler(self, seed)
        self.segments = []                  # (base address, bytes) in address order
        self.next_address = 0x7F0000000000
        self.pinned = []                    # pinned host buffers (numpy uint8 arrays)
        self.pool_version = pool_version
        self.mallocs = 0
        self.capture_mallocs = 0            # pool allocations while a stream captured

    # work
    def _execute(self, op):
        op.started = True
        if op.run is not None:
            op.run()
        if op.test is None:
            self._complete(op)

    def _complete(self, op):
        op.done = True
        q = op.stream._queue
        assert q and q[0] is op
        q.pop(0)
        self.log.append((op.kind, op.stream.name, op.detail))

    def host_point(self):
        self.scheduler.tick()

    # memory
    def cuda_malloc(self, nbytes):
        base = self.next_address
        self.next_address += -(-nbytes // SEGMENT_ALIGNMENT) * SEGMENT_ALIGNMENT
        buffer = np.full(nbytes, POISON_BYTE, np.uint8)
        self.segments.append((base, buffer))
        self.mallocs += 1
        return base, buffer

    def resolve(self, address, nbytes):
        """(segment buffer, offset) holding [address, address + nbytes)."""
        for base, buffer in self.segments:
            if base <= address and address + nbytes <= base + buffer.size:
                return buffer, address - base
        raise RuntimeError(f"address {address:#x} (+{nbytes}) is not device memory that the "
                           f"pool handed out: an illegal memory access")

    def is_pinned(self, array):
        if not isinstance(array, np.ndarray) or array.size == 0:
            return False
        start = array.__array_interface__["data"][0]
        for buffer in self.pinned:
            b = buffer.__array_interface__["data"][0]
            if b <= start < b + buffer.nbytes:
                return True
        return False


def make(seed=0, pool_version=14, device_count=1, compute_capability="90"):
    """(cupy, cupyx): a fresh fake GPU whose schedule and pool choices follow `seed`.
    `pool_version` 13 or 14: the memory pool of that CuPy (the same reuse rules; 14 keeps
    its free chunks in one sorted set, 13 in size bins)."""
    if pool_version not in (13, 14):
        raise ValueError("pool_version: 13 or 14")
    world = _World(seed, pool_version)
    cupy = types.ModuleType("cupy")
    cuda = types.ModuleType("cupy.cuda")
    runtime = types.ModuleType("cupy.cuda.runtime")
    cupyx = types.ModuleType("cupyx")
    cupy.__version__ = "14.2.0" if pool_version == 14 else "13.6.0"
    cupy._world = world
    cupy.log = world.log
    cupy.cuda, cuda.runtime = cuda, runtime

    # ------------------------------------------------------------------ events and streams
    class Event:
        """cupy.cuda.Event: `record(stream)`, `synchronize()`, `done`; waited for by
        `Stream.wait_event`."""

        def __init__(self, block=False, disable_timing=False, interprocess=False):
            self._recorded = 0          # generation of the last record call
            self._completed = 0         # generation whose record has run
            self._stream = None
            self._graph = None
            self.ptr = id(self)

        def record(self, stream=None):
            stream = get_current_stream() if stream is None else stream
            with world.lock:
                self._stream = stream
                self._recorded += 1
                generation = self._recorded

                def run(generation=generation):
                    self._completed = max(self._completed, generation)
                    self._time = time.perf_counter()       # for get_elapsed_time
                self._graph = stream._capture             # recorded inside a capture, or None
                stream._enqueue("record", self if stream._capture is not None else None, run)

        @property
        def done(self):
            with world.lock:
                world.host_point()
                return self._completed >= self._recorded

        def synchronize(self):
            with world.lock:
                if self._stream is not None and self._stream._capture is not None:
                    self._stream._capture._invalidate("Event.synchronize")
                target = self._recorded
                world.scheduler.drive(lambda: self._completed >= target, "Event.synchronize",
                                      self._stream)
                world.log.append(("event_sync", None, None))

    class Stream:
        """cupy.cuda.Stream: a queue of work. `with stream:` makes it the calling thread's
        current stream."""

        def __init__(self, null=False, non_blocking=False, ptds=False, *, name=None):
            with world.lock:
                self.non_blocking = bool(non_blocking)
                if null:
                    self.ptr, default = 0, "null"
                elif ptds:
                    self.ptr, default = STREAM_PER_THREAD, "per-thread"
                else:
                    self.ptr, default = 0x5000 + 16 * len(world.streams), \
                        f"stream{len(world.streams)}"
                self.name = name or default
                self._queue = []
                self._last = None
                self._eagerness = world.scheduler.eagerness()
                self._is_null = bool(null)
                self._capture = None            # the Graph being captured, if any
                world.streams.append(self)

        def __repr__(self):
            return f"<fake Stream {self.name}>"

        # queueing
        def _enqueue(self, kind, detail, run=None, waits=(), test=None):
            with world.lock:
                if self._capture is not None:
                    return self._capture._add(self, kind, detail, run, waits, test)
                deps = []
                if self._is_null:        # the legacy default stream: after every blocking one
                    deps = [s._last for s in world.streams
                            if s is not self and not s.non_blocking and s._last is not None
                            and not s._last.done]
                elif not self.non_blocking and null_stream._last is not None and \
                        not null_stream._last.done:
                    deps = [null_stream._last]
                op = _Op(self, kind, detail, run, waits, deps, test)
                op.seq = next(world.seq)
                self._queue.append(op)
                self._last = op
                world.host_point()
                return op

        def record(self, event=None):
            event = Event() if event is None else event
            event.record(self)
            return event

        def wait_event(self, event):
            if not isinstance(event, Event):
                raise TypeError(f"wait_event() takes a cupy.cuda.Event, got "
                                f"{type(event).__name__}")
            with world.lock:
                graph = event._graph
                if self._capture is None and graph is not None and graph.open:
                    # A stream that waits for an event recorded in a capture joins it: its work
                    # is captured too, until the capture ends (which it must have rejoined).
                    self._capture = graph
                    graph.joined.append(self)
                self._enqueue("wait", event, None, waits=[(event, event._recorded)])

        def synchronize(self):
            with world.lock:
                _refuse_while_capturing(f"{self.name}.synchronize", self)
                last = self._last
                world.scheduler.drive(lambda: last is None or last.done,
                                      f"{self.name}.synchronize", self)

        # capture (module docstring)
        def begin_capture(self, mode=None):
            with world.lock:
                if self.ptr in (0, 1):
                    raise RuntimeError("cannot capture on the default (legacy) stream")
                if self._capture is not None:
                    raise RuntimeError("cudaErrorIllegalState: the stream is already capturing")
                self._capture = Graph(self)
                world.log.append(("begin_capture", self.name, None))

        def end_capture(self):
            with world.lock:
                graph, self._capture = self._capture, None
                if graph is None:
                    raise RuntimeError("cudaErrorIllegalState: the stream is not capturing")
                if graph.stream is not self:
                    raise RuntimeError("cudaErrorStreamCaptureUnmatched: the capture began on "
                                       f"{graph.stream.name}, not {self.name}")
                graph.open = False
                for joined in graph.joined:
                    joined._capture = None
                world.log.append(("end_capture", self.name, len(graph.nodes)))
                unjoined = graph._unjoined()
                if unjoined and graph.invalidated is None:
                    graph.invalidated = (f"{', '.join(unjoined)}: captured work the capturing "
                                         f"stream never waited for (cudaErrorStreamCaptureUnjoined)")
                if graph.invalidated is not None:
                    raise RuntimeError(f"cudaErrorStreamCaptureInvalidated: the capture was "
                                       f"invalidated by {graph.invalidated}")
                return graph

        def is_capturing(self):
            return self._capture is not None

        @property
        def done(self):
            with world.lock:
                world.host_point()
                return self._last is None or self._last.done

        def use(self):
            world.local.stack = [self]
            return self

        def __enter__(self):
            stack = _stack()
            stack.append(self)
            return self

        def __exit__(self, *exc):
            _stack().pop()

    class Graph:
        """A captured graph: its nodes in capture order. `launch(stream)` enqueues them."""

        def __init__(self, stream):
            self.stream, self.nodes, self.invalidated = stream, [], None
            self.open, self.joined = True, []     # streams that joined the capture
            self.recorded = {}            # id(event) -> (its stream, node index) in the capture
            self.last = {}                # stream -> index of its last node
            self.waited = set()           # (stream, node index) of records waited for

        def _add(self, stream, kind, detail, run, waits, test):
            for event, _ in waits:
                if id(event) not in self.recorded or event._graph is not self:
                    self._invalidate(f"{stream.name} waiting for an event recorded outside the "
                                     f"capture (cudaErrorStreamCaptureIsolation)")
                source = self.recorded[id(event)]
                if source[0] is not stream:
                    self.waited.add(source)
            if kind == "record" and detail is not None:
                self.recorded[id(detail)] = (stream, len(self.nodes))
            self.last[stream] = len(self.nodes)
            self.nodes.append((kind, detail, run, test))    # a collective keeps its test
            return _Op(stream, kind, detail, run)

        def _unjoined(self):
            """Names of joined streams whose last captured work no other stream waited for."""
            return [s.name for s in self.joined if (s, self.last[s]) not in self.waited]

        def _invalidate(self, why):
            if self.invalidated is None:
                self.invalidated = why
            raise RuntimeError(f"cudaErrorStreamCaptureUnsupported: {why} while "
                               f"{self.stream.name} captures")

        def launch(self, stream=None):
            with world.lock:
                stream = get_current_stream() if stream is None else stream
                if stream._capture is not None:
                    raise NotImplementedError("the fake does not capture graph launches")
                world.log.append(("graph_launch", stream.name, len(self.nodes)))
                for kind, detail, run, test in self.nodes:     # in capture order, one stream
                    stream._enqueue(kind, detail, run, test=test)

    def _refuse_while_capturing(what, stream=None):
        """CUDA refuses a synchronisation (of a capturing stream, or of the device while any
        stream captures) and a device-to-host copy while capturing: the capture is invalid."""
        capturing = [s for s in world.streams if s._capture is not None]
        if not capturing:
            return
        if stream is None or stream._capture is not None:
            (stream or capturing[0])._capture._invalidate(what)

    cuda.graph = types.SimpleNamespace(Graph=Graph)

    def _stack():
        stack = getattr(world.local, "stack", None)
        if stack is None:
            stack = world.local.stack = []
        return stack

    null_stream = Stream(null=True)
    Stream.null = null_stream

    def get_current_stream():
        stack = _stack()
        return stack[-1] if stack else null_stream

    def device_synchronize():
        with world.lock:
            _refuse_while_capturing("Device.synchronize")
            world.scheduler.drive(lambda: all(not s._queue for s in world.streams),
                                  "Device.synchronize")

    cuda.Stream, cuda.Event, cuda.get_current_stream = Stream, Event, get_current_stream
    cuda.ExternalStream = None

    class Device:
        def __init__(self, device=None):
            self.id = getattr(world.local, "device", 0) if device is None else int(device)
            if not 0 <= self.id < device_count:
                raise RuntimeError(f"cudaErrorInvalidDevice: device {self.id} of "
                                   f"{device_count}")
            self.compute_capability = compute_capability

        def use(self):
            world.local.device = self.id

        def synchronize(self):
            device_synchronize()

        def __enter__(self):
            self._previous = getattr(world.local, "device", 0)
            self.use()
            return self

        def __exit__(self, *exc):
            world.local.device = self._previous

    cuda.Device = Device
    runtime.getDeviceCount = lambda: device_count
    runtime.getDevice = lambda: getattr(world.local, "device", 0)
    runtime.deviceSynchronize = device_synchronize
    runtime.free = [TOTAL_MEMORY]               # tests may lower the free memory
    runtime.memGetInfo = lambda: (runtime.free[0], TOTAL_MEMORY)
    runtime.streamPerThread = STREAM_PER_THREAD
    runtime.runtimeGetVersion = runtime.driverGetVersion = lambda: 13000

    def getDeviceProperties(device):
        """What the benchmarks read of cudaDeviceProp, for a fake GPU (and named so)."""
        if not 0 <= int(device) < device_count:
            raise RuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        return {"name": b"fake GPU (tests/fake_cupy.py)", "totalGlobalMem": TOTAL_MEMORY,
                "multiProcessorCount": 132, "l2CacheSize": 50 << 20, "clockRate": 1980000,
                "memoryClockRate": 2619000, "memoryBusWidth": 6144,
                "major": int(compute_capability[0]), "minor": int(compute_capability[1:])}
    runtime.getDeviceProperties = getDeviceProperties

    def get_elapsed_time(start_event, end_event):
        """Milliseconds between the two events' completions, by the host's clock (the fake's
        "GPU time": how long the emulator took, not what a GPU would)."""
        for e in (start_event, end_event):
            if e._completed < e._recorded or e._recorded == 0:
                raise RuntimeError("cudaErrorNotReady: device not ready")
        return (end_event._time - start_event._time) * 1e3
    cuda.get_elapsed_time = get_elapsed_time

    # ----------------------------------------------------------------------------- the pool
    class _Chunk:
        __slots__ = ("base", "buffer", "offset", "size", "arena", "prev", "next", "free",
                     "__weakref__")

        def __init__(self, base, buffer, offset, size, arena):
            self.base, self.buffer, self.offset, self.size = base, buffer, offset, size
            self.arena, self.prev, self.next, self.free = arena, None, None, False

        @property
        def ptr(self):
            return self.base + self.offset

        def split(self, size):
            """Keep `size` bytes; the rest becomes the next chunk (memory.pyx _Chunk.split)."""
            if self.size <= size:
                return None
            rest = _Chunk(self.base, self.buffer, self.offset + size, self.size - size,
                          self.arena)
            self.size = size
            rest.next, rest.prev = self.next, self
            if self.next is not None:
                self.next.prev = rest
            self.next = rest
            return rest

        def merge_next(self):
            other = self.next
            self.size += other.size
            self.next = other.next
            if other.next is not None:
                other.next.prev = self

    class MemoryPool:
        """cupy.cuda.MemoryPool for one device: SingleDeviceMemoryPool's rules (see the
        module doc)."""

        def __init__(self):
            self._arenas = {}        # stream identifier -> list of free chunks
            self._in_use = 0
            self._total = 0

        def _identifier(self, stream):
            if stream.ptr == STREAM_PER_THREAD:        # memory.pyx _get_stream_identifier
                return -threading.get_ident()
            return stream.ptr

        def malloc(self, nbytes):
            if threading.current_thread() is not threading.main_thread() and \
                    world.scheduler.host_delay and \
                    world.scheduler.rng.random() < world.scheduler.host_delay:
                time.sleep(0.002)                # let the other host threads run first
            with world.lock:
                if get_current_stream()._capture is not None:    # by the capturing code
                    world.capture_mallocs += 1
                if nbytes == 0:
                    return MemoryPointer(None, 0)
                size = -(-int(nbytes) // ALLOCATION_UNIT_SIZE) * ALLOCATION_UNIT_SIZE
                ident = self._identifier(get_current_stream())
                arena = self._arenas.setdefault(ident, [])
                fitting = [c for c in arena if c.size >= size]
                if fitting:
                    best = min(c.size for c in fitting)
                    candidates = [c for c in fitting if c.size == best]
                    chunk = candidates[int(world.scheduler.rng.integers(len(candidates)))]
                    arena.remove(chunk)
                    chunk.free = False
                    rest = chunk.split(size)
                    if rest is not None:
                        rest.free = True
                        arena.append(rest)
                else:
                    base, buffer = world.cuda_malloc(size)
                    self._total += size
                    chunk = _Chunk(base, buffer, 0, size, ident)
                self._in_use += chunk.size
                world.host_point()
                return MemoryPointer(PooledMemory(self, chunk), 0)

        def _free(self, chunk):
            with world.lock:
                self._in_use -= chunk.size
                arena = self._arenas[chunk.arena]
                while chunk.next is not None and chunk.next.free and \
                        chunk.next.arena == chunk.arena:
                    arena.remove(chunk.next)
                    chunk.merge_next()
                while chunk.prev is not None and chunk.prev.free and \
                        chunk.prev.arena == chunk.arena:
                    arena.remove(chunk.prev)
                    chunk = chunk.prev
                    chunk.merge_next()
                chunk.free = True
                arena.append(chunk)

        def used_bytes(self):
            return self._in_use

        def total_bytes(self):
            return self._total

        def free_bytes(self):
            return self._total - self._in_use

        def n_free_blocks(self):
            return sum(len(a) for a in self._arenas.values())

        def free_all_blocks(self, stream=None):
            with world.lock:
                for ident, arena in self._arenas.items():
                    if stream is not None and ident != self._identifier(stream):
                        continue
                    for chunk in [c for c in arena if c.prev is None and c.next is None]:
                        arena.remove(chunk)
                        self._total -= chunk.size

    class PooledMemory:
        def __init__(self, pool, chunk):
            self.pool, self.chunk = pool, chunk
            self.ptr, self.size = chunk.ptr, chunk.size
            self.device_id = 0

        def __del__(self):
            # The block goes back to its arena the moment its last reference goes, whatever
            # work is still queued on it (memory.pyx PooledMemory.free).
            try:
                self.pool._free(self.chunk)
            except Exception:          # interpreter shutdown
                pass

    class MemoryPointer:
        def __init__(self, mem, offset):
            self.mem, self.offset = mem, int(offset)
            self.ptr = 0 if mem is None else mem.ptr + self.offset

        def __add__(self, offset):
            return MemoryPointer(self.mem, self.offset + int(offset))

    pool = MemoryPool()
    cupy.get_default_memory_pool = lambda: pool
    cuda.MemoryPool, cuda.MemoryPointer = MemoryPool, MemoryPointer

    # ------------------------------------------------------------------------------- arrays
    class _Raw:
        """What queued work holds: an address range and a layout, never the array."""

        __slots__ = ("buffer", "offset", "shape", "dtype", "strides")

        def __init__(self, a):
            if a.nbytes == 0 or a.data.mem is None:
                self.buffer = None
            else:
                self.buffer, self.offset = world.resolve(a.data.ptr, 1)
            self.shape, self.dtype, self.strides = a.shape, a.dtype, a.strides

        def view(self):
            if self.buffer is None:
                return np.empty(self.shape, self.dtype)
            return np.ndarray(self.shape, self.dtype, buffer=self.buffer, offset=self.offset,
                              strides=self.strides)

    def _is_device(x):
        return isinstance(x, ndarray)

    def _to_raw(x):
        """Arguments of queued NumPy work: device arrays as _Raw, host data copied now."""
        if _is_device(x):
            return _Raw(x)
        if isinstance(x, (list, tuple)):
            return type(x)(_to_raw(v) for v in x)
        if isinstance(x, np.ndarray):
            return x.copy()
        return x

    def _from_raw(x):
        if isinstance(x, _Raw):
            return x.view()
        if isinstance(x, (list, tuple)):
            return type(x)(_from_raw(v) for v in x)
        return x

    def _placeholder(x):
        if _is_device(x):
            return np.zeros(x.shape, x.dtype)
        if isinstance(x, (list, tuple)):
            return type(x)(_placeholder(v) for v in x)
        return x

    class _Flags:
        def __init__(self, a):
            self.c_contiguous = _contiguous(a.shape, a.strides, a.itemsize, "C")
            self.f_contiguous = _contiguous(a.shape, a.strides, a.itemsize, "F")
            self.owndata = a.base is None

        def __getitem__(self, key):
            return {"C_CONTIGUOUS": self.c_contiguous,
                    "F_CONTIGUOUS": self.f_contiguous}[key]

    def _contiguous(shape, strides, itemsize, order):
        dims = list(zip(shape, strides))
        if order == "C":
            dims.reverse()
        expected = itemsize
        for size, stride in dims:
            if size == 1:
                continue
            if stride != expected:
                return False
            expected *= size
        return True

    def _queue_numpy(fn, args, kwargs, out_arrays, what):
        """Queue `fn(*args, **kwargs)` on the current stream, writing its result(s) into
        out_arrays (device arrays of the right shapes)."""
        raw_args, raw_kwargs = _to_raw(args), {k: _to_raw(v) for k, v in kwargs.items()}
        raw_outs = [_Raw(o) for o in out_arrays]

        def run():
            result = fn(*_from_raw(raw_args), **{k: _from_raw(v) for k, v in
                                                  raw_kwargs.items()})
            results = result if isinstance(result, tuple) else (result,)
            for raw, value in zip(raw_outs, results):
                view = raw.view()
                if value is not None and not (isinstance(value, np.ndarray) and
                                              np.shares_memory(value, view)):
                    view[...] = value
        get_current_stream()._enqueue("kernel", what, run)

    def _deferred(fn, name):
        """fn on device arrays: output shapes from a dry run on placeholders, the work queued."""
        def call(*args, **kwargs):
            out = kwargs.pop("out", None)
            with world.lock:
                if out is not None:
                    outs = out if isinstance(out, tuple) else (out,)
                    _queue_numpy(fn, args, kwargs, outs, name)
                    return outs[0] if len(outs) == 1 else outs
                probe = fn(*_placeholder(args), **{k: _placeholder(v)
                                                  for k, v in kwargs.items()})
                probes = probe if isinstance(probe, tuple) else (probe,)
                if not all(isinstance(p, (np.ndarray, np.generic)) for p in probes):
                    return probe                     # shapes, dtypes: host values
                outs = tuple(ndarray(np.shape(p), np.asarray(p).dtype) for p in probes)
                _queue_numpy(fn, args, kwargs, outs, name)
                return outs if isinstance(probe, tuple) else outs[0]
        call.__name__ = name
        return call

    class ndarray(np.lib.mixins.NDArrayOperatorsMixin):
        """cupy.ndarray: device memory from the pool, read by the host only through get()."""

        def __init__(self, shape, dtype=np.float32, memptr=None, strides=None, order="C"):
            shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
            self.shape, self.dtype = shape, np.dtype(dtype)
            self.itemsize = self.dtype.itemsize
            self.size = int(np.prod(shape, dtype=np.int64))
            self.ndim, self.nbytes = len(shape), self.size * self.itemsize
            if strides is None:
                strides = _c_strides(shape, self.itemsize) if order == "C" else \
                    _c_strides(shape[::-1], self.itemsize)[::-1]
            self.strides = tuple(strides)
            self.base = None
            self.data = pool.malloc(self.nbytes) if memptr is None else memptr

        def __repr__(self):
            return f"<fake cupy.ndarray {self.shape} {self.dtype} on the device>"

        @property
        def flags(self):
            return _Flags(self)

        @property
        def T(self):
            return self.transpose()

        def _view(self, shape, strides, offset_bytes=0, dtype=None):
            v = ndarray.__new__(ndarray)
            v.shape, v.dtype = tuple(shape), np.dtype(dtype or self.dtype)
            v.itemsize = v.dtype.itemsize
            v.size = int(np.prod(v.shape, dtype=np.int64))
            v.ndim, v.nbytes = len(v.shape), v.size * v.itemsize
            v.strides = tuple(strides)
            v.base = self if self.base is None else self.base
            v.data = self.data + offset_bytes
            return v

        # host <-> device
        def __array__(self, *args, **kwargs):
            raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                            "`.get()` to construct a NumPy array explicitly.")

        def get(self, stream=None, order="C", out=None, blocking=True):
            with world.lock:
                stream = get_current_stream() if stream is None else stream
                if stream._capture is not None:
                    stream._capture._invalidate("a device-to-host copy (ndarray.get)")
                host = np.empty(self.shape, self.dtype) if out is None else out
                raw = _Raw(self)
                pinned = world.is_pinned(host)

                def run():
                    host[...] = raw.view()
                op = stream._enqueue("copy_down", None, run)
                if blocking or not pinned:
                    world.scheduler.drive(lambda: op.done, "ndarray.get", stream)
                return host

        def set(self, arr, stream=None):
            with world.lock:
                arr = np.asarray(arr)
                if arr.shape != self.shape and arr.size != self.size:
                    raise ValueError(f"set: shape {arr.shape} into {self.shape}")
                stream = get_current_stream() if stream is None else stream
                if stream._capture is not None and not world.is_pinned(arr):
                    stream._capture._invalidate("a host-to-device copy from pageable memory")
                source = arr if world.is_pinned(arr) else arr.copy()   # pageable: staged now
                raw = _Raw(self)

                def run():
                    raw.view()[...] = source.reshape(raw.shape).astype(raw.dtype, copy=False)
                stream._enqueue("copy_up", "pinned" if source is arr else "pageable", run)

        def item(self):
            return self.get().item()

        def tolist(self):
            return self.get().tolist()

        def __float__(self):
            return float(self.get())

        def __int__(self):
            return int(self.get())

        def __bool__(self):
            return bool(self.get())

        def __len__(self):
            if not self.shape:
                raise TypeError("len() of unsized object")
            return self.shape[0]

        def __iter__(self):
            return (self[i] for i in range(len(self)))

        # indexing
        def __getitem__(self, key):
            if _is_advanced(key):                   # a gather: a kernel, a new array
                return _deferred(lambda a, k: a[k], "gather")(self, key)
            probe = np.lib.stride_tricks.as_strided(
                np.zeros(1, self.dtype), self.shape, self.strides, writeable=False)
            base = probe.__array_interface__["data"][0]
            keys = key if isinstance(key, tuple) else (key,)
            if not any(k is Ellipsis for k in keys):
                keys = keys + (Ellipsis,)            # a 0-d view, never a scalar copy
            view = probe[keys]
            offset = view.__array_interface__["data"][0] - base
            return self._view(view.shape, view.strides, offset)

        def __setitem__(self, key, value):
            with world.lock:
                raw_self, raw_key, raw_value = _Raw(self), _to_raw(key), _to_raw(value)

                def run():
                    raw_self.view()[_from_raw(raw_key)] = _from_raw(raw_value)
                get_current_stream()._enqueue("setitem", None, run)

        # layout
        def reshape(self, *shape, order="C"):
            if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
                shape = tuple(shape[0])
            probe = np.empty(self.shape, np.int8).reshape(shape)
            if not self.flags.c_contiguous:
                return self.copy().reshape(probe.shape)
            return self._view(probe.shape, _c_strides(probe.shape, self.itemsize))

        def ravel(self):
            return self.reshape(-1)

        def view(self, dtype=None):
            if dtype is None or np.dtype(dtype) == self.dtype:
                return self._view(self.shape, self.strides)
            dtype = np.dtype(dtype)
            shape = self.shape[:-1] + (self.shape[-1] * self.itemsize // dtype.itemsize,)
            return self._view(shape, _c_strides(shape, dtype.itemsize), 0, dtype)

        def transpose(self, *axes):
            axes = axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else axes
            axes = tuple(range(self.ndim))[::-1] if not axes else tuple(axes)
            return self._view([self.shape[a] for a in axes], [self.strides[a] for a in axes])

        def copy(self, order="C"):
            out = ndarray(self.shape, self.dtype)
            _queue_numpy(lambda a: a, (self,), {}, (out,), "copy")
            return out

        def astype(self, dtype, copy=True, **kwargs):
            dtype = np.dtype(dtype)
            if dtype == self.dtype and not copy:
                return self
            out = ndarray(self.shape, dtype)
            _queue_numpy(lambda a: a.astype(dtype), (self,), {}, (out,), "astype")
            return out

        def fill(self, value):
            with world.lock:
                raw = _Raw(self)

                def run():
                    raw.view()[...] = value
                get_current_stream()._enqueue("memset", None, run)

        # arithmetic and NumPy functions: queued
        def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
            fn = getattr(ufunc, method) if method != "__call__" else ufunc
            return _deferred(fn, f"{ufunc.__name__}.{method}")(*inputs, **kwargs)

        def __array_function__(self, func, types_, args, kwargs):
            return _deferred(func, func.__name__)(*args, **kwargs)

    for name in ("sum", "mean", "max", "min", "argmax", "argmin", "prod", "std", "var", "any",
                 "all", "cumsum", "clip", "dot", "round", "nonzero", "squeeze", "swapaxes",
                 "take", "repeat", "flatten"):
        setattr(ndarray, name, (lambda n: lambda self, *a, **k: _deferred(
            lambda x, *aa, **kk: getattr(x, n)(*aa, **kk), n)(self, *a, **k))(name))

    def _c_strides(shape, itemsize):
        strides, step = [], itemsize
        for size in reversed(shape):
            strides.append(step)
            step *= max(int(size), 1)
        return tuple(reversed(strides))

    def _is_advanced(key):
        keys = key if isinstance(key, tuple) else (key,)
        return any(_is_device(k) or isinstance(k, (np.ndarray, list)) for k in keys)

    # ----------------------------------------------------------------------- array creation
    def empty(shape, dtype=np.float32, order="C"):
        return ndarray(shape, dtype, order=order)

    def zeros(shape, dtype=np.float32, order="C"):
        a = ndarray(shape, dtype, order=order)
        a.fill(0)
        return a

    def full(shape, value, dtype=None):
        a = ndarray(shape, dtype if dtype is not None else np.asarray(value).dtype)
        a.fill(value)
        return a

    def asarray(a, dtype=None, order=None):
        if _is_device(a):
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        host = np.asarray(a, dtype=dtype)
        out = ndarray(host.shape, host.dtype)
        out.set(host)
        return out

    def array(a, dtype=None, copy=True, order="K"):
        if _is_device(a):
            out = a.copy()
            return out if dtype is None else out.astype(dtype)
        return asarray(a, dtype)

    def asnumpy(a, stream=None, order="C", out=None, blocking=True):
        if _is_device(a):
            return a.get(stream=stream, out=out, blocking=blocking)
        return np.asarray(a)

    def ascontiguousarray(a, dtype=None):
        a = asarray(a, dtype)
        return a if a.flags.c_contiguous else a.copy()

    cupy.ndarray, cupy.empty, cupy.zeros, cupy.full = ndarray, empty, zeros, full
    cupy.asarray, cupy.array, cupy.asnumpy = asarray, array, asnumpy
    cupy.ascontiguousarray = ascontiguousarray
    cupy.empty_like = lambda a, dtype=None: empty(a.shape, dtype or a.dtype)
    cupy.zeros_like = lambda a, dtype=None: zeros(a.shape, dtype or a.dtype)
    cupy.ones = lambda shape, dtype=np.float32: full(shape, 1, dtype)
    cupy.cuda.Device().use()
    for dtype_name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                       "uint8", "uint16", "uint32", "uint64", "bool_", "dtype", "newaxis"):
        setattr(cupy, dtype_name, getattr(np, dtype_name))

    import cupy_api
    real_names = cupy_api.load()

    def module_getattr(name):
        """Any other NumPy function that CuPy has too (tests/data/cupy-api.json), queued on the
        current stream."""
        if name not in real_names["objects"]["cupy"]:
            raise AttributeError(f"module 'cupy' has no attribute {name!r} (CuPy "
                                 f"{real_names['cupy_version']} has no {name!r})")
        fn = getattr(np, name, None)
        if callable(fn):
            return _deferred(fn, name)
        raise AttributeError(f"the fake cupy has no {name!r}")
    cupy.__getattr__ = module_getattr

    # --------------------------------------------------------------------------- pinned host
    def empty_pinned(shape, dtype=np.float32, order="C"):
        """Page-locked host memory (cupyx.empty_pinned): async copies read it when they run."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        buffer = np.empty(max(1, count * dtype.itemsize), np.uint8)
        with world.lock:
            world.pinned.append(buffer)
        return np.ndarray(shape, dtype, buffer=buffer, order=order)

    def zeros_pinned(shape, dtype=np.float32, order="C"):
        out = empty_pinned(shape, dtype, order)
        out[...] = 0
        return out

    cupyx.empty_pinned, cupyx.zeros_pinned = empty_pinned, zeros_pinned

    # ------------------------------------------------------------------------------ kernels
    class RawKernel:
        """A kernel of a RawModule: a launch queues the emulated kernel on the stream."""

        def __init__(self, sim_kernel, name):
            self._sim, self.name = sim_kernel, name

        def __call__(self, grid, block, args, *, shared_mem=0, stream=None,
                     enable_cooperative_groups=False):
            with world.lock:
                stream = get_current_stream() if stream is None else stream
                raws = []
                for i, a in enumerate(args):
                    pointer = i < len(self._sim.params) and self._sim.params[i].is_pointer
                    if _is_device(a):
                        raws.append(_Raw(a))
                    elif a is None or (pointer and isinstance(a, np.integer) and
                                       a.itemsize == 8 and int(a) == 0):
                        raws.append(None)             # NULL: None, or a 64-bit zero scalar
                    elif isinstance(a, np.ndarray) and a.size != 1:
                        raise TypeError(
                            f"You are trying to pass a numpy.ndarray of shape {a.shape} as a "
                            f"kernel parameter. Only numpy.ndarrays of size one can be passed "
                            f"by value. If you meant to pass a pointer to __global__ memory, "
                            f"you need to pass a cupy.ndarray instead.")
                    else:
                        raws.append(a)
                # The emulator checks the arguments against the parameters now, at launch.
                if len(raws) != len(self._sim.params):
                    raise TypeError(f"{self.name}: takes {len(self._sim.params)} arguments, "
                                    f"got {len(raws)}")
                for i, (a, p) in enumerate(zip(_from_raw(raws), self._sim.params)):
                    self._sim._marshal(i, a, p)
                sim_kernel = self._sim
                grid_, block_ = tuple(grid), tuple(block)

                def run():
                    sim_kernel(grid_, block_, tuple(_from_raw(raws)), shared_mem=shared_mem)
                stream._enqueue("kernel", self.name, run)

    class RawModule:
        """cupy.RawModule(code=..., options=..., name_expressions=...), compiled by the
        emulator (g++ options: only -D and -I of `options` apply)."""

        def __init__(self, code=None, path=None, options=(), name_expressions=None,
                     **kwargs):
            from cupycnn.sim import module as sim
            if code is None:
                with open(path) as f:
                    code = f.read()
            flags = [o for o in options if o.startswith(("-D", "-I"))]
            # Named as the sim device names it (the source's first #line), so that both share
            # the emulator's build cache.
            named = re.match(r'#line 1 "([^"]+)"', code)
            self._sim = sim.Module(code, name=named.group(1) if named else "<code>",
                                   name_expressions=name_expressions or (), options=flags)
            self.options = tuple(options)

        def get_function(self, name):
            return RawKernel(self._sim.get_function(name), name)

    cupy.RawModule, cupy.RawKernel = RawModule, RawKernel
    # Each class in CuPy's module, as CuPy's own (code that tells a GPU array by its type's
    # module sees the fake's as it would see CuPy's): tests/data/cupy-api.json.
    for path, module in real_names["class_modules"].items():
        obj = {"cupy": cupy, "cupyx": cupyx}[path.split(".")[0]]
        for part in path.split(".")[1:]:
            obj = getattr(obj, part, None)
        if isinstance(obj, type):
            obj.__module__ = module
    return cupy, cupyx


def install(monkeypatch, cupy, cupyx=None):
    """Make `cupy` (and `cupyx`) what `import cupy` finds, clear cupycnn's per-device caches
    (which would hold another fake GPU's arrays and modules) and select the cuda device."""
    import cupycnn
    from cupycnn import devices, runtime
    from cupycnn.data import loader
    from cupycnn.ops import augment
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cupy.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.runtime", cupy.cuda.runtime)
    if hasattr(cupy.cuda, "nccl"):
        monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", cupy.cuda.nccl)
    if cupyx is not None:
        monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setattr(devices, "_cuda_reason", "")
    monkeypatch.setattr(loader, "_device_copies", {})
    monkeypatch.setattr(runtime, "_modules", {})
    monkeypatch.setattr(augment, "_coefficients", {})
    cupycnn.use("cuda")
    return cupy


def install_globally(cupy, cupyx=None):
    """install() for a script of its own (a process under mpiexec): nothing to undo."""
    class _Setter:
        setitem = staticmethod(lambda mapping, key, value: mapping.__setitem__(key, value))
        setattr = staticmethod(setattr)
    return install(_Setter(), cupy, cupyx)
