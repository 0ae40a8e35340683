"""Batches of a dataset on the current device: seeded per-epoch shuffling, per-rank sharding,
background prefetch, and the whole dataset kept on the GPU when it fits.

    loader = Loader(CIFAR10("data"), batch_size=128, shuffle=True, transform=RandomCropFlip(...))
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:       # what `transform` returns, int32 labels [B]
            ...

What a batch is (uint8 images [B, H, W, C] and int32 labels [B], arrays of the current device,
or what `transform` returns), its order, the sharding (PyTorch's DistributedSampler), device
residency and prefetch: docs/data.md, "The loader".

Prefetch on cuda, and why it is safe under any order of host threads and streams. CuPy's memory
pool keeps one arena per stream: a block goes back, the moment its last reference goes, to the
arena of the stream that was current when it was allocated, with no event, and the next
allocation on that stream may take it at once. That is safe for work on that one stream (it is
ordered after everything queued before), and only for it. So a batch is never allocated on the
prefetch stream: its buffers are allocated from the arena of the loop's stream (the consumer: the
stream current where the loop asked for the batch), and the prefetch stream then waits for an
event recorded on the loop's stream after that allocation before it writes them. Whatever the
loop's stream did with that memory before (a freed batch still read by a queued transform, a
freed temporary) was queued before the allocation, hence before the event. Once made, the batch
belongs to the loop's stream like any array made there: the loop's stream waits for the batch's
ready event before using it, and when the batch is dropped its memory returns to the loop
stream's arena, reused only in that stream's order or, by the next prefetch, after a new event.
A batch made ahead but never taken (the loop left the epoch early) is waited for in the same way
when the iterator closes, before its memory goes back: else the loop stream's next allocation
could take that memory while the prefetch stream's writes into it are still queued.
Pinned (page-locked) staging buffers are a ring of two: one is refilled on the host only after
the event of its last copy has completed, so the host never overwrites data an async copy has
yet to read. (tests/fake_cupy.py models the pool, the streams and pinned copies, and runs this
under adversarial schedules; tests/test_stream_order.py checks every batch's pixels.)
"""
import math
import queue
import threading
import weakref

import numpy as np

from .. import devices as _device
from ..ops._check import check_flag, check_integer, shown

MAX_WORLD_SIZE = 1 << 20     # ranks: more would only pad each rank's share to one example
RESIDENT_FRACTION = 0.5       # "auto": keep the dataset on the GPU if it needs at most this
                              # fraction of the free memory


class _HostSource:
    """Batches gathered from host arrays (a dataset's `storage()`)."""

    def __init__(self, images, labels, index):
        # int32 labels, as the loss and metric kernels take them (one small copy).
        self.images, self.labels, self.index = images, labels.astype(np.int32), index
        self.nbytes = images.nbytes + labels.nbytes

    def rows(self, positions):
        return positions if self.index is None else self.index[positions]

    def gather(self, positions, out_images=None, out_labels=None):
        rows = self.rows(positions)
        return (np.take(self.images, rows, axis=0, out=out_images),
                np.take(self.labels, rows, axis=0, out=out_labels))


def _item_image(i, image):
    """dataset[i]'s image as uint8, converted only when exact: integers in 0..255. Floats (an
    image scaled to [0, 1] would become zeros) and other values are refused, saying so."""
    try:
        array = np.asarray(image)
    except (ValueError, TypeError) as e:          # ragged nested lists, say
        raise ValueError(f"Loader: dataset[{i}] gave an image that is not an array "
                         f"({type(image).__name__}: {e})") from None
    if array.dtype == np.uint8 and array.ndim in (2, 3):
        return array
    if array.ndim not in (2, 3):
        raise ValueError(f"Loader: dataset[{i}] gave an image of shape {array.shape}; images "
                         f"are [H, W, C] (or [H, W])")
    if array.dtype.kind in "iub" and array.size:
        low, high = int(array.min()), int(array.max())
        if 0 <= low and high <= 255:
            return array.astype(np.uint8)
    what = (f"{array.dtype} values in [{array.min()}, {array.max()}]" if array.size and
            array.dtype.kind in "iufb" else f"a {array.dtype} array of shape {array.shape}")
    raise ValueError(f"Loader: dataset[{i}] gave an image of {what}; images must be uint8 "
                     f"(0..255), HWC: convert them yourself (floats in [0, 1]: "
                     f"(image * 255).round().astype(np.uint8))")


def _item_label(i, label):
    """dataset[i]'s label as an int: integers, or floats that are whole (3.0); never 1.7, '3',
    True or None."""
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, float, np.integer,
                                                                      np.floating)) or \
            isinstance(label, (float, np.floating)) and not float(label).is_integer():
        raise ValueError(f"Loader: dataset[{i}] gave the label {label!r} "
                         f"({type(label).__name__}); labels are integer class indices")
    return int(label)


class _ItemSource:
    """Batches gathered one `dataset[i]` at a time, for datasets without `storage()`."""

    nbytes = None

    def __init__(self, dataset):
        self.dataset = dataset

    def gather(self, positions, out_images=None, out_labels=None):
        items = [(int(i), self.dataset[int(i)]) for i in positions]
        arrays = [_item_image(i, image) for i, (image, _) in items]
        for (i, _), a in zip(items, arrays):
            if a.shape != arrays[0].shape:
                raise ValueError(f"Loader: dataset[{items[0][0]}] gave an image of shape "
                                 f"{arrays[0].shape}, dataset[{i}] one of {a.shape}; a batch's "
                                 f"images must have one shape")
        images = np.stack(arrays)
        if images.ndim == 3:
            images = images[..., None]
        labels = np.array([_item_label(i, label) for i, (_, label) in items], dtype=np.int32)
        if out_images is not None:
            out_images[...] = images
            out_labels[...] = labels
            return out_images, out_labels
        return images, labels


# Device copies of host arrays, shared by every loader that reads the same arrays:
# id(host array) -> (weak reference to it, device copy). An entry dies with its host array.
_device_copies = {}


def _on_device(host):
    """The CuPy copy of the host array `host` on the current GPU, made once."""
    import cupy
    key = (id(host), cupy.cuda.runtime.getDevice())
    entry = _device_copies.get(key)
    if entry is not None and entry[0]() is host:
        return entry[1]
    copy = cupy.asarray(host)
    # Loaders on other streams will read it: let the upload finish (once per array).
    cupy.cuda.get_current_stream().synchronize()
    _device_copies[key] = (weakref.ref(host, lambda _, key=key: _device_copies.pop(key, None)),
                           copy)
    return copy


class _DeviceSource:
    """Batches gathered on the GPU from device copies of a dataset's arrays."""

    def __init__(self, host):
        import cupy
        self.images, self.labels = _on_device(host.images), _on_device(host.labels)
        self.index = None if host.index is None else cupy.asarray(host.index)

    def gather(self, positions, out_images=None, out_labels=None):
        import cupy
        rows = cupy.asarray(positions)
        if self.index is not None:
            rows = self.index[rows]
        if out_images is None:
            return self.images[rows], self.labels[rows]
        cupy.take(self.images, rows, axis=0, out=out_images)
        cupy.take(self.labels, rows, axis=0, out=out_labels)
        return out_images, out_labels


class Loader:
    """Batches of `dataset` (anything with len() and [i] -> (uint8 HWC image, label); fastest
    with the `storage()` of `cupycnn.data` datasets) on the current device.

    batch_size      examples per batch (per rank)
    shuffle         a new seeded permutation every epoch; False (the default): dataset order
    drop_last       drop the rank's last batch when it is shorter than batch_size
    seed            the permutation of epoch e is default_rng([seed, e]).permutation(N)
    transform       called on each uint8 image batch on the device; the loop gets its result
    prefetch        prepare the next batch in a background thread (on cuda, its own stream)
    device_resident True, False or "auto": keep the whole dataset on the GPU (cuda only)
    rank, world_size  this process's shard, with DistributedSampler's semantics
    pad             pad the shards to equal length (training); False: exact shares (evaluation)
    num_workers     streamed datasets (cupycnn.data.stream, .shards, .tfrecord): processes
                    that decode the batches into shared memory (0: in this process);
                    worker_start_method ("fork", "spawn", "forkserver"), worker_timeout
                    (seconds to wait for one batch, None: no limit) and skip_bad (skip
                    unreadable images with a warning) go with them (docs/data.md, streaming)

    len(loader) is the number of batches of this rank in an epoch; `num_samples` the number of
    examples (ceil(N / world_size))."""

    def __init__(self, dataset, batch_size, shuffle=False, drop_last=False, seed=0,
                 transform=None, prefetch=True, device_resident="auto", rank=0, world_size=1,
                 pad=True, num_workers=0, worker_start_method=None, worker_timeout=None,
                 skip_bad=False):
        op = "Loader"
        for name, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1),
                                 ("seed", seed, 0)):
            check_integer(op, name, value, low)            # True is not 1, 2.0 is not 2
        if world_size > MAX_WORLD_SIZE:
            raise ValueError(f"{op}: world_size {world_size} is more ranks than a job has "
                             f"(at most {MAX_WORLD_SIZE})")
        for name, value in (("shuffle", shuffle), ("drop_last", drop_last),
                            ("prefetch", prefetch), ("pad", pad), ("skip_bad", skip_bad)):
            check_flag(op, name, value)                    # 'no' is true
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or \
                not 0 <= rank < world_size:
            raise ValueError(f"{op}: rank must lie in [0, world_size={world_size}), got "
                             f"{shown(rank)}")
        if device_resident not in (True, False, "auto"):
            raise ValueError(f"{op}: device_resident must be True, False or 'auto', got "
                             f"{device_resident!r}")
        if transform is not None and not callable(transform):
            raise ValueError(f"{op}: transform must be callable, got {type(transform).__name__}")
        if len(dataset) == 0:
            raise ValueError(f"{op}: the dataset is empty")
        streaming = getattr(dataset, "streaming", False)
        if num_workers and not streaming:
            raise ValueError(f"{op}: num_workers is for streamed datasets (StreamingImageFolder, "
                             f"ImageNet, TarShards, TFRecordDataset); {type(dataset).__name__} "
                             f"is already decoded in memory")
        self.dataset = dataset
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), \
            bool(drop_last)
        self.seed, self.transform, self.prefetch = int(seed), transform, bool(prefetch)
        self.device_resident = device_resident
        self.rank, self.world_size = int(rank), int(world_size)
        self.pad = bool(pad)
        self.epoch = 0
        if self.pad:
            self.num_samples = math.ceil(len(dataset) / self.world_size)
            self.total_size = self.num_samples * self.world_size
        else:
            self.num_samples = len(range(self.rank, len(dataset), self.world_size))
            self.total_size = len(dataset)
        if streaming:
            from .workers import StreamSource
            self._host = StreamSource(dataset, self.batch_size, num_workers,
                                      worker_start_method, worker_timeout, skip_bad)
            if hasattr(dataset, "plan"):          # sharded: the dataset says what a rank gets
                self.num_samples, self.total_size = dataset.rank_samples(
                    self.rank, self.world_size, self.batch_size, self.drop_last, self.pad)
        else:
            self._host = (_HostSource(*dataset.storage()) if hasattr(dataset, "storage")
                          else _ItemSource(dataset))
        self._device = None        # the _DeviceSource once made (cuda, resident)

    def set_epoch(self, epoch, start_batch=0):
        """Make the next iteration epoch `epoch` (DistributedSampler.set_epoch), from its batch
        `start_batch` on (resuming mid-epoch: the batches before are not served; a streamed
        dataset's shards are read past them without decoding)."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"Loader: epoch must be an integer of at least 0, got {epoch!r}")
        if not isinstance(start_batch, (int, np.integer)) or not 0 <= start_batch <= len(self):
            raise ValueError(f"Loader: start_batch must lie in [0, {len(self)}], got "
                             f"{start_batch!r}")
        self.epoch, self._start_batch = int(epoch), int(start_batch)

    def indices(self, epoch=None):
        """int64 [num_samples]: the positions in the dataset of this rank's examples in epoch
        `epoch` (default: the next one), in the order they are served."""
        epoch = self.epoch if epoch is None else int(epoch)
        if hasattr(self.dataset, "plan"):
            raise TypeError(f"Loader.indices: {type(self.dataset).__name__} is read shard by "
                            f"shard, in an order its plan() gives, not by index")
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        if self.total_size > n:                          # pad by repeating from the start
            order = np.concatenate([order, np.resize(order, self.total_size - n)])
        return order[self.rank:self.total_size:self.world_size].astype(np.int64)

    def state_dict(self):
        """What a checkpoint needs to resume this loader exactly: the next epoch and the
        transform's random state (its per-batch counter)."""
        state = {"epoch": self.epoch}
        if self.transform is not None and hasattr(self.transform, "random_state"):
            state["transform"] = self.transform.random_state()
        return state

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])
        if "transform" in state and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(state["transform"])

    def in_order(self):
        """A loader of the same examples, batches and transform in the dataset's order: no
        shuffling, no dropped batch, no padding (this rank's exact share when sharded). What
        evaluation and prediction iterate, whatever this loader does: this loader itself when
        it is in order already (its decoding workers reused), else one that shares the
        dataset's arrays (and their GPU copy) and its workers' settings, and leaves this
        loader's epoch alone."""
        if not self.shuffle and not self.drop_last and not self.pad:
            return self
        streamed = getattr(self.dataset, "streaming", False)        # self._host: StreamSource
        return Loader(self.dataset, self.batch_size, shuffle=False, drop_last=False,
                      seed=self.seed, transform=self.transform, prefetch=self.prefetch,
                      device_resident=self.device_resident, rank=self.rank,
                      world_size=self.world_size, pad=False,
                      num_workers=self._host.num_workers if streamed else 0,
                      worker_start_method=self._host.start_method if streamed else None,
                      worker_timeout=self._host.timeout if streamed else None,
                      skip_bad=self._host.skip_bad if streamed else False)

    def positions(self, epoch=None):
        """int64 [this rank's examples]: the dataset position of each example, in the order
        this loader serves them (`indices()`; for a sharded dataset, position k is the k-th
        sample of its files in order, and the order is the plan's: each worker's shards, its
        batches taken round-robin as the workers' pool does). A shuffled sharded loader's order
        is drawn by its shuffle buffer: use in_order().positions()."""
        if not hasattr(self.dataset, "plan"):
            return self.indices(epoch)
        if self.shuffle:
            raise TypeError("Loader.positions: a shuffled sharded loader's order is drawn by "
                            "its shuffle buffer; in_order() gives one whose positions are known")
        epoch = self.epoch if epoch is None else int(epoch)
        workers = max(1, self._host.num_workers)
        plans, count = self.dataset.plan(epoch, self.rank, self.world_size, workers, False,
                                         self.seed, self.batch_size, self.drop_last)
        offsets, size = self.dataset.offsets, self.batch_size
        per_worker = []
        for plan in plans:
            mine = [np.arange(offsets[k], offsets[k + 1]) for k in plan["shards"]]
            samples = np.concatenate(mine) if mine else np.zeros(0, np.int64)
            batches = [samples[i:i + size] for i in range(0, len(samples), size)]
            if self.drop_last and batches and len(batches[-1]) < size:
                batches.pop()
            per_worker.append(batches)
        served = [batch for turn in range(max(map(len, per_worker), default=0))
                  for batches in per_worker if turn < len(batches) for batch in [batches[turn]]]
        served = served[:count]                  # pad=True: the fewest batches any rank has
        return (np.concatenate(served) if served else np.zeros(0)).astype(np.int64)

    def __len__(self):
        if hasattr(self.dataset, "plan"):
            return self.dataset.rank_batches(self.rank, self.world_size, self.batch_size,
                                             self.drop_last, self.pad,
                                             max(1, self._host.num_workers))
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def close(self):
        """Stop the decoding workers of a streamed dataset (they also stop with the process)."""
        if hasattr(self._host, "close"):
            self._host.close()

    @property
    def resident(self):
        """True when batches are gathered from a copy of the whole dataset in device memory
        (on sim and numpy, always for datasets with `storage()`: their host arrays are it).
        On cuda the choice is made at the first iteration and kept."""
        if isinstance(self._host, _ItemSource) or self._host.nbytes is None:
            return False
        if _device.device() != "cuda":
            return True
        if self._device is not None:
            return True
        if self.device_resident == "auto":
            import cupy
            free, _ = cupy.cuda.runtime.memGetInfo()
            return self._host.nbytes <= RESIDENT_FRACTION * free
        return bool(self.device_resident)

    def __iter__(self):
        start, self._start_batch = getattr(self, "_start_batch", 0), 0
        if self._host.nbytes is None and hasattr(self._host, "start_epoch"):   # streamed
            batches = self._host.start_epoch(self, self.epoch, start)[:len(self) - start]
            self.epoch += 1
        else:
            order = self.indices(self.epoch)
            self.epoch += 1
            batches = [order[i:i + self.batch_size]
                       for i in range(0, len(order), self.batch_size)]
            if self.drop_last and len(batches[-1]) < self.batch_size:
                batches.pop()
            batches = batches[start:]
        on_cuda = _device.device() == "cuda"
        if not on_cuda:
            produce = self._produce_host
        elif self.resident:
            if self._device is None:
                self._device = _DeviceSource(self._host)
            produce = self._produce_device
        else:
            produce = _PinnedUpload(self._host, self.batch_size).produce
        return _BatchIterator(batches, produce, self.transform, self.prefetch, on_cuda)

    # Each producer makes one batch: (images, labels, ready event or None). `stream` is the
    # stream to work on (None: no prefetch, everything on the current stream), `consumer` the
    # stream that will use the batch (see the module doc).
    def _produce_host(self, positions, stream, consumer):
        images, labels = self._host.gather(positions)
        return images, labels, None

    def _produce_device(self, positions, stream, consumer):
        if stream is None:
            images, labels = self._device.gather(positions)
            return images, labels, None
        shape = (len(positions), *self._device.images.shape[1:])
        images, labels = _allocate_for(consumer, stream, (shape, self._device.images.dtype),
                                       ((len(positions),), np.int32))
        with stream:
            self._device.gather(positions, images, labels)
            return images, labels, stream.record()

    def __repr__(self):
        return (f"Loader({type(self.dataset).__name__} of {len(self.dataset)}, batch_size="
                f"{self.batch_size}, shuffle={self.shuffle}, drop_last={self.drop_last}, seed="
                f"{self.seed}, rank={self.rank}, world_size={self.world_size}, "
                f"{len(self)} batches)")


def _allocate_for(consumer, stream, *specs):
    """Device arrays of the given (shape, dtype) for a batch that `stream` makes and `consumer`
    uses: allocated from the consumer's pool arena, and `stream` made to wait for an event
    recorded on the consumer after the allocation, before it writes them (module doc)."""
    import cupy
    with consumer:
        arrays = [cupy.empty(shape, dtype) for shape, dtype in specs]
        allocated = consumer.record()
    stream.wait_event(allocated)
    return arrays


class _PinnedUpload:
    """cuda, dataset on the host: gather a batch into page-locked memory, copy it to the GPU."""

    SLOTS = 2             # pinned staging buffers: the host fills one while the other is copied

    def __init__(self, host, batch_size):
        self.host, self.batch_size = host, batch_size
        self._slots = None      # [pinned images, pinned labels, event of its last copy or None]
        self._turn = 0

    def produce(self, positions, stream, consumer):
        import cupy
        if stream is None:                 # no prefetch: a plain synchronous upload
            images, labels = self.host.gather(positions)
            return cupy.asarray(images), cupy.asarray(labels), None
        m = len(positions)
        if self._slots is None:
            import cupyx
            shape = getattr(self.host, "image_shape", None)   # streamed: known, not gathered
            if shape is None:
                shape = self.host.gather(positions[:1])[0].shape[1:]
            self._slots = [[cupyx.empty_pinned((self.batch_size, *shape), np.uint8),
                            cupyx.empty_pinned((self.batch_size,), np.int32), None]
                           for _ in range(self.SLOTS)]
        slot = self._slots[self._turn]
        self._turn = (self._turn + 1) % self.SLOTS
        if slot[2] is not None:
            slot[2].synchronize()          # its last copy has read it: the host may refill it
        images_h, labels_h = self.host.gather(positions, slot[0][:m], slot[1][:m])
        images, labels = _allocate_for(consumer, stream, (images_h.shape, np.uint8),
                                       (labels_h.shape, np.int32))
        images.set(images_h, stream=stream)
        labels.set(labels_h, stream=stream)
        slot[2] = ready = stream.record()
        return images, labels, ready


def _current_stream():
    import cupy
    return cupy.cuda.get_current_stream()


class _Prefetcher:
    """The background thread: makes batch k + 1 while the loop works on batch k.

    It holds no reference to the iterator, so dropping the iterator (leaving a loop early)
    closes it. Batch k is made only once a request for it arrives, carrying (on cuda) the
    loop's stream at the time: the stream the batch is made for."""

    def __init__(self, batches, produce, on_cuda):
        self.batches, self.produce = batches, produce
        self.requests, self.results = queue.Queue(), queue.Queue()
        self.stop = threading.Event()
        self.stream = self.device_id = None
        if on_cuda:
            import cupy
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.device_id = cupy.cuda.runtime.getDevice()
        self.thread = threading.Thread(target=self._work, name="cupycnn-loader", daemon=True)
        self.thread.start()

    def _work(self):
        try:
            if self.device_id is not None:
                import cupy
                cupy.cuda.Device(self.device_id).use()
            for positions in self.batches:
                consumer = self.requests.get()
                if self.stop.is_set():
                    return
                self.results.put(("batch", self.produce(positions, self.stream, consumer),
                                  consumer))
        except BaseException as e:                # handed to the loop, raised there
            self.results.put(("error", e, None))

    def close(self):
        self.stop.set()
        self.requests.put(None)
        self.thread.join()


class _BatchIterator:
    """One epoch's batches, made in order by `produce`, one ahead in a thread if prefetch."""

    def __init__(self, batches, produce, transform, prefetch, on_cuda):
        self._batches, self._produce, self._transform = batches, produce, transform
        self._next, self._on_cuda, self._closed = 0, on_cuda, False
        self._prefetcher = None
        if prefetch and batches:
            self._prefetcher = _Prefetcher(batches, produce, on_cuda)
            self._prefetcher.requests.put(self._consumer())

    def _consumer(self):
        """The stream the loop works on (cuda), for which the next batch is made."""
        return _current_stream() if self._on_cuda else None

    def __iter__(self):
        return self

    def __next__(self):
        if self._closed or self._next >= len(self._batches):
            self.close()
            raise StopIteration
        if self._prefetcher is None:
            try:
                images, labels, _ = self._produce(self._batches[self._next], None, None)
            except BaseException:
                self.close()                  # an error ends the epoch, as in a generator
                raise
        else:
            if self._next + 1 < len(self._batches):
                self._prefetcher.requests.put(self._consumer())
            kind, item, _ = self._prefetcher.results.get()
            if kind == "error":
                self.close()
                raise item
            images, labels, ready = item
            if ready is not None:
                import cupy
                cupy.cuda.get_current_stream().wait_event(ready)
        self._next += 1
        if self._transform is not None:
            images = self._transform(images)
        return images, labels

    def __len__(self):
        return 0 if self._closed else len(self._batches) - self._next

    def close(self):
        """Stop the background thread and end the iteration (called at the end, on error,
        and when the iterator is dropped)."""
        self._closed = True
        prefetcher, self._prefetcher = self._prefetcher, None
        if prefetcher is not None:
            prefetcher.close()
            # A batch made ahead but never handed out (the loop left early): its memory goes
            # back to the loop stream's arena when dropped here, so that stream waits for the
            # prefetch stream's writes first, as it would have before using the batch.
            while not prefetcher.results.empty():
                kind, item, consumer = prefetcher.results.get()
                if kind == "batch" and item[2] is not None:
                    consumer.wait_event(item[2])

    def __del__(self):
        self.close()
