"""One step recorded once and replayed: a CUDA graph on `cuda`, the emulator's launch list on
`sim`.

A training step launches a few hundred kernels. From Python each launch costs several
microseconds of host time, which at batch 256 on an H200 is more than the kernels take. A
recorded step is launched as one unit: on `cuda` through CuPy's stream capture
(`cupy.cuda.Stream.begin_capture` / `end_capture`, then `Graph.launch`), on `sim` as the list of
prepared launches (`cupycnn.sim.record`) called again. Both replay exactly the kernels, grids
and arguments of the recorded step, so a replay needs three things, which `GraphedStep` provides:

1. Fixed addresses. Every array the step allocates comes from a static memory plan
   (`cupycnn.plan`): the first call traces the step, later calls take the arena's buffers in the
   same order. Inputs are copied into buffers of their own before each replay.
2. No host work inside. What changes from step to step lives in device memory and is written
   there before each replay (the optimizer's hyperparameter table and step number:
   `Optimizer.prepare_step`), or is counted on the device (batchnorm's num_batches_tracked,
   dropout's call counter). While a step is recorded, `cupycnn.devices` refuses a host read, a
   host-to-device copy, a synchronisation and an allocation outside the plan (CaptureError):
   the replay could not repeat them.
3. The same shapes. A replay is valid for the input shapes it was recorded with; GraphedStep
   says when it falls back to running the step eagerly (a short last batch) and records again
   for a new shape.

    step = GraphedStep(body)         # body(): the device half of a step, no host work
    step()                           # 1st call: traced (eager), the plan's arena allocated
    step()                           # 2nd: recorded (sim: runs as it records; cuda: captured,
                                     #      then launched)
    step()                           # 3rd and on: replayed
"""

from . import devices as _device
from .plan import Arena, trace


class StepGraph:
    """A recorded step: `replay()` runs it again. Made by `record(fn, arena)`."""

    def __init__(self, device, launches=None, graph=None, stream=None):
        self.device = device
        self._launches, self._graph, self._stream = launches, graph, stream

    @property
    def num_launches(self):
        """Entries of the sim launch list (None on cuda, where the graph holds them)."""
        return None if self._launches is None else len(self._launches)

    def replay(self):
        """Run the recorded step again: on cuda one graph launch on the current stream; on sim
        the prepared launches in order. Nothing is allocated, checked or read."""
        if self._graph is not None:
            import cupy
            self._graph.launch(cupy.cuda.get_current_stream())
        else:
            for launch in self._launches:
                launch()


def record(fn, arena):
    """Run fn() once under the arena, recorded, and return (its result, the StepGraph).

    sim: fn runs as usual while its launches are recorded. cuda: fn is captured on a capture
    stream (it does not run then) and the graph is launched once, so that in both cases the step
    has happened when record returns. Inside fn the rules of a recording apply (module
    docstring): a violation raises CaptureError and nothing is recorded."""
    dev = _device.device()
    if dev == "numpy":
        raise RuntimeError("the numpy device runs no kernels: there is no step to record")
    if dev == "sim":
        from .sim import module as sim
        previous = _device.set_capturing("the sim launch-list recording")
        try:
            with arena.serving(), sim.record() as launches:
                result = fn()
        finally:
            _device.set_capturing(previous)
        return result, StepGraph("sim", launches=list(launches))
    import cupy
    stream = cupy.cuda.Stream(non_blocking=True)
    previous = _device.set_capturing("a CUDA graph capture")
    try:
        with stream:
            stream.begin_capture()
            try:
                with arena.serving():
                    result = fn()
            except BaseException:
                try:                         # end the (invalid) capture; fn's error is the news
                    stream.end_capture()
                except Exception:
                    pass
                raise
            graph = stream.end_capture()
    finally:
        _device.set_capturing(previous)
    step = StepGraph("cuda", graph=graph, stream=stream)
    step.replay()              # on the caller's stream, after whatever it queued before
    return result, step


class GraphedStep:
    """fn() (the device half of a step) traced, planned, recorded once and then replayed; see
    the module docstring. Each call returns fn's result, which lives in the plan's arena (the
    same arrays every call, overwritten by the next one).

    `phase` says what the last call did: "traced", "recorded" or "replayed"."""

    def __init__(self, fn):
        self.fn = fn
        self.plan = self.arena = self.graph = None
        self.result = None
        self.phase = None

    def __call__(self):
        if self.plan is None:
            self.result, self.plan = trace(self.fn)
            self.arena = Arena(self.plan)
            self.phase = "traced"
        elif self.graph is None:
            self.result, self.graph = record(self.fn, self.arena)
            self.phase = "recorded"
        else:
            self.graph.replay()
            self.phase = "replayed"
        return self.result


__all__ = ["GraphedStep", "StepGraph", "record"]
