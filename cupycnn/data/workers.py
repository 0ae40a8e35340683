"""Worker processes that decode streamed datasets into shared memory.

As PyTorch's DataLoader workers, without pickling images: the parent allocates one block of
shared memory holding `slots` batch buffers per worker (uint8 [B, H, W, C] images and int64
[B] labels each); a worker decodes a batch's images straight into one of its buffers and sends
back only (worker, batch number, buffer, count). The parent copies the batch out (into pinned
memory on cuda) and hands the buffer back. Memory is bounded by workers x slots x batch, never
by the dataset.

Order is deterministic: worker w makes the batches of its plan in order, and the parent takes
them round-robin, worker 0's first, worker 1's first, ..., skipping workers that have finished,
so the batches do not depend on which worker is faster.

Failures never hang the loop: a worker that cannot read a sample sends the error (its message
names the file), which the parent raises in the loop; a worker that dies (killed, out of
memory, a crash in a decoder) is noticed within POLL seconds and reported with its exit code;
`timeout` bounds the wait for one batch. Workers exit when their parent does (they check).
Abandoning an epoch (leaving the loop early) bumps a generation number that workers check
between images: they drop what they were doing and wait for the next epoch.
"""
import multiprocessing
import os
import queue
import signal
import threading
import traceback
import warnings
from multiprocessing import shared_memory

import numpy as np

from .folder import BadImageError

POLL = 0.5            # seconds between checks of the workers' health while waiting
DEFAULT_SLOTS = 2     # batch buffers per worker (PyTorch's prefetch_factor)


class WorkerError(RuntimeError):
    """A loader worker failed (died, or raised something other than a bad sample)."""


class ShardError(ValueError):
    """A shard or record file is corrupt, truncated or not of the expected format."""


def default_start_method():
    """fork where the platform has it (as PyTorch's DataLoader on Linux: workers start in
    milliseconds and share the parent's file list), else spawn."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


class _Layout:
    """Where worker w's buffer s lives in the shared block."""

    def __init__(self, workers, slots, batch_size, shape):
        self.workers, self.slots, self.batch_size = workers, slots, batch_size
        self.shape = tuple(shape)
        self.image_bytes = batch_size * int(np.prod(self.shape))
        self.slot_bytes = self.image_bytes + 8 * batch_size
        self.slot_bytes += (-self.slot_bytes) % 64
        self.nbytes = workers * slots * self.slot_bytes

    def views(self, buf, w, s):
        offset = (w * self.slots + s) * self.slot_bytes
        images = np.ndarray((self.batch_size, *self.shape), np.uint8, buf, offset)
        labels = np.ndarray((self.batch_size,), np.int64, buf, offset + self.image_bytes)
        return images, labels


def fill_batches(dataset, plan, epoch, take_slot, images_of, skip_bad, aborted=lambda: False):
    """Decode the batches of `plan` (what dataset.encoded_batches makes of it) into buffers:
    take_slot() -> a buffer index (None: stop), images_of(slot) -> (images, labels) views.
    Yields (slot, count, skipped messages) per batch. Shared by the workers and by the
    in-process path (num_workers=0)."""
    transform = dataset.transform
    for batch in dataset.encoded_batches(plan, epoch):
        slot = take_slot()
        if slot is None:
            return
        images, labels = images_of(slot)
        n, skipped = 0, []
        for data, label, name, draw in batch:
            if aborted():
                return
            try:
                transform(data, name, draw, epoch, out=images[n])
            except BadImageError as e:
                if not skip_bad:
                    raise
                skipped.append(str(e))
                continue
            labels[n] = label
            n += 1
        yield slot, n, skipped


def _worker_main(dataset, w, shm_name, layout, tasks, credits, results, generation, parent,
                 skip_bad):
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's to handle
    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        buf = shm.buf

        def parent_gone():
            return os.getppid() != parent

        while True:
            try:
                task = tasks.get(timeout=POLL)
            except queue.Empty:
                if parent_gone():
                    return
                continue
            if task is None:
                return
            gen, epoch, plan = task

            def aborted():
                return generation.value != gen or parent_gone()

            def take_slot():
                while True:
                    if aborted():
                        return None
                    try:
                        g, slot = credits.get(timeout=POLL)
                    except queue.Empty:
                        continue
                    if g == gen:
                        return slot

            seq = 0
            try:
                for slot, n, skipped in fill_batches(
                        dataset, plan, epoch, take_slot, lambda s: layout.views(buf, w, s),
                        skip_bad, aborted):
                    results.put(("batch", gen, w, seq, slot, n, skipped))
                    seq += 1
                results.put(("done", gen, w, seq, None, 0, None))
            except Exception as e:
                kind = type(e).__name__
                detail = str(e) if isinstance(e, (BadImageError, ShardError)) else \
                    "".join(traceback.format_exception(type(e), e, e.__traceback__))
                results.put(("error", gen, w, seq, kind, detail, None))
    finally:
        buf = None
        try:
            shm.close()
        except BufferError:          # a view still alive at exit: the mapping goes with us
            pass


class WorkerPool:
    """`num_workers` processes decoding `dataset` into shared batch buffers of `batch_size`
    images of `shape`. Started once, reused for every epoch, closed by close() (or when the
    parent exits)."""

    def __init__(self, dataset, batch_size, num_workers, shape, slots=DEFAULT_SLOTS,
                 start_method=None, timeout=None, skip_bad=False):
        self.dataset, self.num_workers = dataset, int(num_workers)
        self.layout = _Layout(self.num_workers, slots, batch_size, shape)
        self.timeout, self.skip_bad = timeout, skip_bad
        self._check_room()
        ctx = multiprocessing.get_context(start_method or default_start_method())
        self.shm = shared_memory.SharedMemory(create=True, size=max(1, self.layout.nbytes))
        self.generation = ctx.Value("q", 0, lock=False)
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(self.num_workers)]
        self.credits = [ctx.Queue() for _ in range(self.num_workers)]
        self.processes = []
        for w in range(self.num_workers):
            p = ctx.Process(target=_worker_main, name=f"cupycnn-decode-{w}", daemon=True,
                            args=(dataset, w, self.shm.name, self.layout, self.tasks[w],
                                  self.credits[w], self.results, self.generation, os.getpid(),
                                  skip_bad))
            p.start()
            self.processes.append(p)
        self._closed = False
        self._lock = threading.Lock()

    def _check_room(self):
        try:
            free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
        except (OSError, AttributeError):
            return
        if self.layout.nbytes > 0.9 * free:
            raise WorkerError(f"Loader workers need {self.layout.nbytes / 2**20:.0f} MiB of "
                              f"shared memory ({self.layout.workers} workers x "
                              f"{self.layout.slots} batches of {self.layout.batch_size} images "
                              f"{'x'.join(map(str, self.layout.shape))}) and /dev/shm has "
                              f"{free / 2**20:.0f} MiB free; use fewer workers or a smaller "
                              f"batch (in Docker: --shm-size)")

    def run(self, plans, epoch, turn=None):
        """Start an epoch: plans[w] is worker w's plan. Returns an iterator of batches
        (images view, labels view, release) in round-robin order; each view is valid until
        release() is called. turn: (active workers, index) to start the round-robin from, as
        skip_round_robin gives it (default: every worker, worker 0 first)."""
        with self._lock:
            if self._closed:
                raise WorkerError("the loader's workers were closed")
            self.generation.value += 1
            gen = self.generation.value
            for w, plan in enumerate(plans):
                for s in range(self.layout.slots):
                    self.credits[w].put((gen, s))
                self.tasks[w].put((gen, epoch, plan))
        return self._batches(gen, len(plans), turn)

    def _batches(self, gen, count, turn=None):
        pending = {}                    # (w, seq) -> message that arrived ahead of its turn
        active, i = (list(range(count)), 0) if turn is None else (list(turn[0]), turn[1])
        seq = [0] * count
        while active:
            i %= len(active)
            w = active[i]
            message = pending.pop((w, seq[w]), None) or self._wait(gen, w, seq[w], pending)
            kind, _, _, _, slot, n, skipped = message
            if kind == "done":
                active.pop(i)            # the same index now names the next worker
                continue
            for text in skipped or ():
                warnings.warn(f"skipping an unreadable image: {text}", stacklevel=3)
            images, labels = self.layout.views(self.shm.buf, w, slot)
            seq[w] += 1
            i += 1

            def release(w=w, slot=slot, done=[]):
                if not done and not self._closed:
                    done.append(True)
                    self.credits[w].put((gen, slot))
            yield images[:n], labels[:n], release

    def _wait(self, gen, w, seq, pending):
        waited = 0.0
        while True:
            try:
                message = self.results.get(timeout=POLL)
            except queue.Empty:
                waited += POLL
                for i, p in enumerate(self.processes):
                    if not p.is_alive():
                        code = p.exitcode
                        how = (f"was killed by signal {signal.Signals(-code).name}"
                               if code is not None and code < 0 else f"exited with code {code}")
                        self.close()
                        raise WorkerError(f"Loader worker {i} (pid {p.pid}) {how} while "
                                          f"decoding {type(self.dataset).__name__}; if it ran "
                                          f"out of memory, use fewer workers or smaller batches")
                if self.timeout and waited >= self.timeout:
                    raise WorkerError(f"Loader worker {w} made no batch in {self.timeout} s "
                                      f"(timeout=)")
                continue
            kind, g, mw, mseq = message[:4]
            if g != gen:
                continue                            # from an abandoned epoch
            if kind == "error":
                name, detail = message[4], message[5]
                self.abandon()
                if name == "BadImageError":
                    raise BadImageError(detail)
                if name == "ShardError":
                    raise ShardError(detail)
                raise WorkerError(f"Loader worker {mw} failed: {detail}")
            if (mw, mseq) == (w, seq) or (kind == "done" and mw == w):
                return message
            pending[(mw, mseq)] = message

    def abandon(self):
        """Stop the current epoch: workers drop it at the next image."""
        with self._lock:
            if not self._closed:
                self.generation.value += 1

    def close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.generation.value += 1
        for t in self.tasks:
            try:
                t.put(None)
            except (OSError, ValueError):
                pass
        for p in self.processes:
            p.join(timeout=2 * POLL + 1)
            if p.is_alive():
                p.terminate()
                p.join(timeout=1)
        for q in [self.results, *self.tasks, *self.credits]:
            q.close()
            q.cancel_join_thread()
        try:
            self.shm.close()
            self.shm.unlink()
        except (FileNotFoundError, BufferError):
            pass

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def skip_round_robin(plans, start, batch_size):
    """Resuming a sharded epoch at batch `start`: how many batches each worker's plan skips
    (set in plan["skip"]: read, not decoded) and where the parent's round-robin then stands,
    (active workers, index): the turns the first `start` batches took. From the plans' sample
    counts, exact unless images were skipped as unreadable."""
    counts = []
    for plan in plans:
        n = plan["samples"]
        counts.append(n // batch_size if plan["drop_last"] else -(-n // batch_size))
    active, i, made = list(range(len(plans))), 0, [0] * len(plans)
    for _ in range(start):
        i %= len(active)
        while made[active[i]] == counts[active[i]]:      # the parent meets its "done"
            active.pop(i)
            i %= len(active)
        made[active[i]] += 1
        i += 1
    for plan, skip in zip(plans, made):
        plan["skip"] = skip
    return active, i


def iterate_in_process(dataset, plan, epoch, batch_size, shape, skip_bad):
    """num_workers=0: the same batches, decoded in the calling thread into one buffer."""
    layout = _Layout(1, 1, batch_size, shape)
    buf = bytearray(layout.nbytes)
    images_of = lambda s: layout.views(buf, 0, s)      # noqa: E731
    for slot, n, skipped in fill_batches(dataset, plan, epoch, lambda: 0, images_of, skip_bad):
        for text in skipped:
            warnings.warn(f"skipping an unreadable image: {text}", stacklevel=3)
        images, labels = images_of(slot)
        yield images[:n], labels[:n], lambda: None



class StreamSource:
    """The Loader's source for streamed datasets: each epoch's batches decoded by a
    WorkerPool (or in the calling thread when num_workers=0), copied out of shared memory.

    Map-style datasets (StreamingDataset): the Loader's order and sharding (its indices()),
    batch k made by worker k % num_workers; the random transforms' draw number of the i-th
    example of rank r is r + world_size * i, its position in the epoch's global order, so a
    crop does not depend on the number of ranks' workers. Sharded datasets (tar shards,
    TFRecord): the dataset's plan (shards per rank and worker, shuffle buffer)."""

    nbytes = None

    def __init__(self, dataset, batch_size, num_workers, start_method=None, timeout=None,
                 skip_bad=False):
        if not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
            raise ValueError(f"Loader: num_workers must be an integer of at least 0, got "
                             f"{num_workers!r}")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.num_workers, self.start_method = int(num_workers), start_method
        self.timeout, self.skip_bad = timeout, bool(skip_bad)
        self.image_shape = tuple(dataset.image_shape)
        self.sharded = hasattr(dataset, "plan")
        self.pool = None
        self._batches = None

    def start_epoch(self, loader, epoch, start=0):
        """The epoch's batch placeholders from batch `start` on (what the Loader's iterator
        hands to gather())."""
        workers = max(1, self.num_workers)
        turn = None
        if self.sharded:
            plans, count = self.dataset.plan(epoch, loader.rank, loader.world_size, workers,
                                             loader.shuffle, loader.seed, self.batch_size,
                                             loader.drop_last)
            turn = skip_round_robin(plans, start, self.batch_size)
            placeholders = [np.arange(self.batch_size)] * max(0, count - start)
        else:
            order = loader.indices(epoch)
            draws = loader.rank + loader.world_size * np.arange(len(order), dtype=np.int64)
            chunks = [(order[i:i + self.batch_size], draws[i:i + self.batch_size])
                      for i in range(0, len(order), self.batch_size)]
            if loader.drop_last and chunks and len(chunks[-1][0]) < self.batch_size:
                chunks.pop()
            chunks = chunks[start:]
            plans = [chunks[w::workers] for w in range(workers)]
            placeholders = [positions for positions, _ in chunks]
        if self.num_workers == 0:
            plan = plans[0] if self.sharded else chunks
            self._batches = iterate_in_process(self.dataset, plan, epoch, self.batch_size,
                                               self.image_shape, self.skip_bad)
        else:
            if self.pool is None:
                self.pool = WorkerPool(self.dataset, self.batch_size, self.num_workers,
                                       self.image_shape, start_method=self.start_method,
                                       timeout=self.timeout, skip_bad=self.skip_bad)
            self._batches = self.pool.run(plans, epoch, turn)
        return placeholders

    def gather(self, positions, out_images=None, out_labels=None):
        try:
            images, labels, release = next(self._batches)
        except StopIteration:
            raise WorkerError("the workers made fewer batches than planned") from None
        n = len(labels)
        try:
            if out_images is None:
                out_images = np.array(images)
                out_labels = labels.astype(np.int32)
            else:
                out_images = out_images[:n]
                out_labels = out_labels[:n]
                out_images[...] = images
                out_labels[...] = labels
        finally:
            release()
        return out_images, out_labels

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool = None
