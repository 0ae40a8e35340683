"""Bucketed gradient all-reduce that overlaps backward, as PyTorch's DistributedDataParallel.

The optimizer keeps every gradient in one flat buffer, in the order its parameters were given
(model order, unless parameter groups reorder them). Backward produces gradients in reverse
model order, so the buffer is cut into contiguous buckets of about `bucket_bytes` (25 MB by
default) from its end: the first bucket holds the last layers' gradients, which are ready first.
Each parameter-owning layer's backward is wrapped (for the duration of one backward) to mark
its parameters ready; when every parameter of a bucket is ready, that bucket's all-reduce
starts at once, on the communicator's own stream (cuda) or as a non-blocking MPI collective
(CPU ranks), while backward carries on with earlier layers. After backward, the compute stream
waits for every bucket (no host synchronisation on cuda).

Buckets are launched in bucket order only: one that is complete waits until every bucket before
it has been launched. So every rank issues the same collectives in the same order, which MPI
and NCCL require, whatever the order in which its layers finish. Parameter groups that
interleave layers (all weights, then all biases) still give the right result, with less
overlap: a bucket holding the first layer's bias is complete only at the end of backward.
Buckets that no backward reached (a branch the forward did not use) are launched, in order,
when backward ends; they all-reduce whatever those gradients hold, as a single process would
step with them (layers overwrite their gradients in backward; nothing zeroes them).

On CPU ranks MPICH progresses a non-blocking collective mostly inside MPI calls, so the overlap
there is partial (MPICH_ASYNC_PROGRESS=1 adds a progress thread); NCCL progresses on the GPU.
The 1/N average is not taken here: the optimizer multiplies the gradients by its `grad_scale`
inside its fused step.
"""
import contextlib

DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024


class Bucket:
    def __init__(self, start, stop):
        self.start, self.stop = start, stop      # element range in the flat gradient buffer
        self.parameters = set()                  # ids of the Parameter entries it covers
        self.pending = 0
        self.handle = None


class GradientBuckets:
    """Buckets over a flat gradient buffer. `segments`: (layer, key, offset, size) of every
    parameter in the buffer, in buffer order."""

    def __init__(self, flat_grads, segments, communicator, bucket_bytes=DEFAULT_BUCKET_BYTES):
        self.flat_grads, self.communicator = flat_grads, communicator
        self.bucket_bytes = bucket_bytes
        self.segments = list(segments)
        itemsize = flat_grads.dtype.itemsize
        limit = max(1, bucket_bytes // itemsize)
        self.buckets = []
        self._bucket_of = {}           # (id(layer), key) -> Bucket
        self._layer_keys = {}          # id(layer) -> [keys]
        current = None
        for layer, key, offset, size in reversed(self.segments):
            if current is None or current.stop - offset > limit:
                current = Bucket(offset, offset + size)
                self.buckets.append(current)
            current.start = offset
            current.parameters.add((id(layer), key))
            self._bucket_of[(id(layer), key)] = current
            self._layer_keys.setdefault(id(layer), []).append(key)
        self._layers = {id(layer): layer for layer, _, _, _ in self.segments}

    def _reset(self):
        for bucket in self.buckets:
            bucket.pending = len(bucket.parameters)
            bucket.handle = None
        self._next = 0

    def _launch_ready(self):
        # Launch in bucket order only: a later bucket that is ready waits for earlier ones, so
        # every rank issues the same collectives in the same order.
        while self._next < len(self.buckets) and self.buckets[self._next].pending == 0:
            bucket = self.buckets[self._next]
            bucket.handle = self.communicator.iallreduce_sum_(
                self.flat_grads[bucket.start:bucket.stop])
            self._next += 1

    def _mark_ready(self, layer):
        for key in self._layer_keys.get(id(layer), ()):
            self._bucket_of[(id(layer), key)].pending -= 1
        self._launch_ready()

    @contextlib.contextmanager
    def _hooks(self):
        """Wrap each parameter-owning layer's backward (and backward_residual, a fused
        batchnorm's other backward) for the duration of one backward."""
        wrapped = []
        for layer_id, layer in self._layers.items():
            for method in ("backward", "backward_residual"):
                original = getattr(layer, method, None)
                if original is None:
                    continue
                # A wrapper someone else put on the instance (a profiler, a test's recorder) is
                # called inside ours and put back afterwards.
                own = layer.__dict__.get(method)

                def hooked(dy, _original=original, _layer=layer):
                    result = _original(dy)
                    self._mark_ready(_layer)
                    return result

                setattr(layer, method, hooked)
                wrapped.append((layer, method, own))
        try:
            yield
        finally:
            for layer, method, own in wrapped:
                if own is None:
                    delattr(layer, method)          # back to the class's method
                else:
                    setattr(layer, method, own)

    def backward(self, model, dy):
        """model.backward(dy) with every bucket all-reduced, overlapping; returns dx."""
        self._reset()
        with self._hooks():
            dx = model.backward(dy)
        for bucket in self.buckets:          # anything no layer reached, in order
            bucket.pending = 0
        self._launch_ready()
        for bucket in self.buckets:
            bucket.handle.wait()
        return dx
