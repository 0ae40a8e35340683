"""A host-only stand-in for the parts of CuPy that `cupycnn.data.loader` uses, recording what
runs on which stream, so that the loader's cuda code paths (device residency, pinned uploads,
the prefetch thread's stream and events) run and are checked on machines without a GPU.

It checks the orchestration, not the GPU: arrays are NumPy arrays, streams and events are
labels. The real thing is checked by the `cuda`-marked loader test where a GPU is usable.
"""
import threading
import types

import numpy as np


def make():
    """(cupy, cupyx) modules; `cupy.log` lists (what, stream name, detail) in order."""
    cupy = types.ModuleType("cupy")
    cuda = types.ModuleType("cupy.cuda")
    runtime = types.ModuleType("cupy.cuda.runtime")
    cupyx = types.ModuleType("cupyx")
    log, local = [], threading.local()
    runtime.free = [80 * 2**30]

    class Event:
        def __init__(self, stream):
            self.stream = stream

        def synchronize(self):
            log.append(("event_sync", self.stream.name, None))

    class Stream:
        created = 0

        def __init__(self, non_blocking=False, name=None):
            if name is None:
                Stream.created += 1
                name = f"side{Stream.created}"
            self.name = name

        def __enter__(self):
            local.stack = getattr(local, "stack", []) + [self]
            return self

        def __exit__(self, *exc):
            local.stack.pop()

        def wait_event(self, event):
            assert isinstance(event, Event), f"wait_event({event!r})"
            log.append(("wait", self.name, event.stream.name))

        def record(self):
            log.append(("record", self.name, None))
            return Event(self)

    loop_stream = Stream(name="loop")

    def get_current_stream():
        stack = getattr(local, "stack", [])
        return stack[-1] if stack else loop_stream

    class ndarray(np.ndarray):
        def get(self):
            return np.array(self)

        def set(self, arr, stream=None):
            log.append(("copy_up", stream.name, None))
            np.copyto(np.asarray(self), arr)

        def __getitem__(self, key):
            if isinstance(key, ndarray):               # a gather: a kernel on the stream
                log.append(("gather", get_current_stream().name, None))
                return np.asarray(self)[np.asarray(key)].view(ndarray)
            return super().__getitem__(key)

    def asarray(a, dtype=None):
        log.append(("asarray", get_current_stream().name, np.shape(a)))
        return np.array(a, dtype=dtype).view(ndarray)

    class Device:
        compute_capability = "90"

        def __init__(self, index=0):
            self.index = index

        def use(self):
            local.device = self.index

    cupy.ndarray, cupy.asarray, cupy.log = ndarray, asarray, log
    cupy.empty = lambda shape, dtype=np.float32: np.empty(shape, dtype).view(ndarray)
    cupy.cuda, cuda.runtime = cuda, runtime
    cuda.Stream, cuda.Event, cuda.Device = Stream, Event, Device
    cuda.get_current_stream = get_current_stream
    runtime.getDeviceCount = lambda: 1
    runtime.getDevice = lambda: getattr(local, "device", 0)
    runtime.memGetInfo = lambda: (runtime.free[0], 80 * 2**30)
    cupyx.empty_pinned = lambda shape, dtype: np.empty(shape, dtype)
    return cupy, cupyx
