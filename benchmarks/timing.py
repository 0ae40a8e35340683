"""Seconds per call of `calls` back-to-back calls of fn(), the two ways the benchmarks time:
CUDA events on the GPU (its time, not Python's), the wall clock on the CPU devices. Medians,
rounds and interleaving are each benchmark's own."""
import time


def gpu_seconds(fn, calls):
    """CUDA events on the current stream around the calls: GPU time per call. What runs before
    the start event (a spin kernel, say) is not counted."""
    import cupy
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(calls):
        fn()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / 1e3 / calls


def wall_seconds(fn, calls, synchronize=None):
    """The wall clock around the calls and then synchronize() (the device's queue drained),
    where given: time per call."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if synchronize is not None:
        synchronize()
    return (time.perf_counter() - start) / calls
