"""Threads and scratch buffers for the CPU path.

Threads. NumPy's copies, ufuncs and BLAS calls release the GIL, so a few Python threads that each
take a slice of the batch run on separate cores. `parallel_for(count, task)` runs task(0) ...
task(count - 1) on `num_threads()` threads (this one included; the others are started once and
kept), each thread taking the next index as it becomes free. While they run, BLAS is held to one
thread (also when num_threads() is 1): its own threads would compete with ours for the cores,
and OpenBLAS's results change with its thread count. Outside `parallel_for` BLAS keeps its own
setting. Small work stays on the calling thread (`nbytes` below MIN_TASK_BYTES a thread);
`run_together(tasks)` runs a few independent callables (a convolution's two gradients) the
same way.

How many threads: `set_num_threads(n)`, else $CUPYCNN_CPU_THREADS (read when first needed and by
set_num_threads(None)), else as many as BLAS is allowed at the moment of the call
(OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, or a threadpoolctl limit), so that one setting governs
NumPy, BLAS and this path alike.

What the threads compute never depends on how many there are: work is cut into pieces by the
shapes alone (OpenBLAS's bits depend on how a product is cut, too), each piece's result goes to
its own place, and nothing is summed across pieces in an order that depends on which thread ran
them. A training run gives the same bits on 1 core and on 16.

Scratch buffers. `scratch(name, shape, dtype)` returns this thread's buffer of that name and
shape, allocated on first use and kept (least recently used first out past SCRATCH_BYTES per
thread), so a layer's temporaries are not allocated and page-faulted again at every step.
"""
import collections
import ctypes
import itertools
import os
import queue
import threading

import numpy as np

# Per thread; a step of ResNet-18 at batch 32 cycles through about 60 MB of them.
SCRATCH_BYTES = 512 * 2**20

_requested = None            # set_num_threads(n); None: the environment or BLAS decides
_UNREAD = object()
_env_threads = _UNREAD       # CUPYCNN_CPU_THREADS, read when first needed (None: unset)
_local = threading.local()   # .inside: this thread runs a task of parallel_for; .scratch


def set_num_threads(n):
    """Use `n` threads from now on (None: back to the default: CUPYCNN_CPU_THREADS, read again
    here, else the BLAS thread count)."""
    global _requested, _env_threads
    if n is not None and int(n) < 1:
        raise ValueError(f"cupycnn.cpu.set_num_threads: n must be at least 1, got {n}")
    _requested = None if n is None else int(n)
    if n is None:
        _env_threads = _UNREAD


def num_threads():
    """The threads parallel_for uses now."""
    return _chosen_threads() or _Blas.get().threads()


def _chosen_threads():
    """set_num_threads' or CUPYCNN_CPU_THREADS' count; None when BLAS's count decides."""
    global _env_threads
    if _requested is not None:
        return _requested
    if _env_threads is _UNREAD:      # os.environ costs microseconds: read once, not per call
        env = os.environ.get("CUPYCNN_CPU_THREADS", "").strip()
        value = None
        if env:
            try:
                value = int(env)
            except ValueError:
                value = 0
            if value < 1:
                raise ValueError(f"CUPYCNN_CPU_THREADS={env!r}: expected a positive integer")
        _env_threads = value
    return _env_threads


class _Blas:
    """NumPy's BLAS thread count, read and set through threadpoolctl (found once)."""

    _instance = None

    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        self._controllers = []
        try:
            from threadpoolctl import ThreadpoolController
            self._controllers = ThreadpoolController().select(user_api="blas").lib_controllers
        except Exception:      # no threadpoolctl, or no BLAS it knows: one thread, untouched
            self._controllers = []
        # OpenBLAS's own getter, called directly: parallel_for asks at every call, and through
        # threadpoolctl's wrapper that is a few microseconds of a small op's time.
        self._get = None
        controller = self._controllers[0] if self._controllers else None
        if type(controller).__name__ == "OpenBLASController" and \
                getattr(controller, "threading_layer", None) != "openmp":
            try:          # the symbol's name carries the build's prefix and suffix
                self._get = controller._get_symbol("openblas_get_num_threads")
            except Exception:
                self._get = None
            if self._get is not None:
                self._get.restype = ctypes.c_int
                self._get.argtypes = []
        self._default = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)

    def threads(self):
        if not self._controllers:
            return 1
        if self._get is not None:
            return max(1, self._get())
        return max(1, int(self._controllers[0].get_num_threads()))

    def set(self, n):
        for c in self._controllers:
            c.set_num_threads(n)


class _Pool:
    """Worker threads, each waiting on its own queue for a job (a callable)."""

    def __init__(self):
        self.pid = os.getpid()
        self.workers = []
        self.done = queue.SimpleQueue()

    def ensure(self, count):
        while len(self.workers) < count:
            tasks = queue.SimpleQueue()
            thread = threading.Thread(target=self._work, args=(tasks,), daemon=True,
                                      name=f"cupycnn-cpu-{len(self.workers) + 1}")
            thread.start()
            self.workers.append(tasks)

    def _work(self, tasks):
        _local.inside = True
        while True:
            job = tasks.get()
            self.done.put(job())


_pool = None
_pool_lock = threading.Lock()


def _get_pool():
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():     # a forked child has no threads
            _pool = _Pool()
        return _pool


# A thread is woken for at least this many bytes of work: waking one costs about 30 us, and two
# threads taking turns at the GIL between short NumPy calls lose more than they share (two 64 KB
# copies took 44 us on 2 threads, 21 us on one; digits' step at batch 32 is 1.10x faster with
# this threshold than with every op split: `python benchmarks/cpu_choices.py threshold`).
MIN_TASK_BYTES = 2**20


def product_bytes(m, k, n):
    """A [m, k] @ [k, n] product's work in parallel_for's nbytes: its FLOPs / 8, about the time
    of streaming that many bytes through an elementwise op (SGEMM ~80 GFLOP/s, copies ~10 GB/s
    on one core)."""
    return 2 * m * k * n // 8


def parallel_for(count, task, nbytes=None):
    """task(i) for every i in range(count), on up to num_threads() threads; returns when all are
    done. `nbytes`: about how many bytes the tasks read and write together; below
    MIN_TASK_BYTES per thread, fewer threads (one, for small work) run them. An exception in
    any task is raised here (the first one, after the others finished). Called from inside a
    task, it runs serially."""
    count = int(count)
    if count <= 0:
        return
    if getattr(_local, "inside", False):
        for i in range(count):
            task(i)
        return
    blas = _Blas.get()
    previous = blas.threads()
    threads = min(_chosen_threads() or previous, count)
    if nbytes is not None:
        threads = max(1, min(threads, int(nbytes) // MIN_TASK_BYTES))
    if previous != 1:
        blas.set(1)
    try:
        if threads == 1:
            _local.inside = True
            try:
                for i in range(count):
                    task(i)
            finally:
                _local.inside = False
        else:
            _run(threads, count, task)
    finally:
        if previous != 1:
            blas.set(previous)


def run_together(tasks, nbytes=None):
    """Call the independent callables `tasks` (none reads what another writes) on the threads,
    as parallel_for runs its tasks (nbytes as there); returns their results in order. Work
    they cut into pieces themselves runs serially inside each (see parallel_for)."""
    results = [None] * len(tasks)

    def task(i):
        results[i] = tasks[i]()

    parallel_for(len(tasks), task, nbytes=nbytes)
    return results


def _run(threads, count, task):
    indices = itertools.count()          # next() is atomic under the GIL

    def job():
        try:
            while True:
                i = next(indices)
                if i >= count:
                    return None
                task(i)
        except BaseException as e:       # handed to the caller
            return e

    pool = _get_pool()
    pool.ensure(threads - 1)
    for tasks in pool.workers[:threads - 1]:
        tasks.put(job)
    _local.inside = True
    try:
        errors = [job()]
    finally:
        _local.inside = False
    errors += [pool.done.get() for _ in range(threads - 1)]
    for e in errors:
        if e is not None:
            raise e


def chunks(total, size):
    """[(start, stop), ...] covering range(total) in pieces of `size` (the last may be shorter)."""
    size = max(1, int(size))
    return [(start, min(total, start + size)) for start in range(0, total, size)]


def split(total, pieces, align=1):
    """About `pieces` (start, stop) ranges covering range(total), each a multiple of `align`
    long but the last."""
    pieces = max(1, min(int(pieces), -(-total // align)))
    size = -(-total // pieces)
    size = -(-size // align) * align
    return chunks(total, size)


# Elementwise work is cut into pieces of at most PIECE_MAX elements (they stay in L2); an array
# of up to PIECE_MIN elements (float32: MIN_TASK_BYTES) is one piece, as it runs on one thread.
PIECE_MIN, PIECE_MAX = MIN_TASK_BYTES // 4, 2**16


def flat_pieces(size):
    """(start, stop) pieces of range(size) for elementwise work on the threads."""
    if size <= PIECE_MIN:
        return [(0, size)]
    return split(size, max(num_threads(), -(-size // PIECE_MAX)), align=16)


def scratch(name, shape, dtype, zero=False):
    """This thread's reusable buffer `name` of this shape and dtype (uninitialised, or zeros on
    first allocation when `zero`: a caller that writes only the interior keeps a zero border)."""
    cache = getattr(_local, "scratch", None)
    if cache is None:
        cache = _local.scratch = collections.OrderedDict()
        _local.scratch_bytes = 0
    key = (name, tuple(shape), np.dtype(dtype).str, zero)
    buffer = cache.get(key)
    if buffer is not None:
        cache.move_to_end(key)
        return buffer
    buffer = np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
    cache[key] = buffer
    _local.scratch_bytes += buffer.nbytes
    while _local.scratch_bytes > SCRATCH_BYTES and len(cache) > 1:
        _, old = cache.popitem(last=False)
        _local.scratch_bytes -= old.nbytes
    return buffer


def release_scratch():
    """Drop this thread's scratch buffers (they are made again on demand)."""
    _local.scratch = collections.OrderedDict()
    _local.scratch_bytes = 0
