"""Trainer(..., cuda_graph=True): the training step recorded once and replayed.

On `cuda` the step is a CUDA graph; on `sim` the emulator's launch list, the same mechanism
(cupycnn.graph), so that the path is tested on any CPU. Per step the host does only this:

    copy the batch into the step's input buffers        (one device copy each)
    optimizer.prepare_step()                            (hyperparameters and step number
                                                         written in place into device memory)
    replay                                              (one graph launch)
    [data-parallel: all-reduce the gradient buckets, then replay the update]

Calls 1 and 2 for an input shape trace the step (eager, allocations watched: the memory plan)
and record it; every later call replays. Data-parallel training records two parts, the forward
and backward, and the update; the bucketed all-reduce runs between them (the "between replays"
variant: no overlap of the all-reduce with backward, in exchange for no collective inside a
graph; docs/BENCHMARKS.md says how the two compare when measured).

Where a replay cannot hold, the step runs eagerly, and the trainer says so once per reason:
- a batch whose shape differs from the recorded one (the short last batch of an epoch) runs
  eagerly; a new shape that persists (two batches in a row) is recorded for itself, and the
  old recording is dropped;
- the numpy device runs no kernels: every step is eager;
- synchronised batchnorm over MPI (CPU ranks) all-reduces on the host inside the step: eager.
"""
import sys

from .. import devices as _device
from ..graph import GraphedStep
from ..ops import metrics as metric_ops
from ..ops import softmax_xent as xent_ops
from ..ops._storage import as_activation


class _Recording:
    """The graphed parts of the step for one input shape, and its input buffers."""

    def __init__(self, training, x, y):
        self.x = _device.empty(x.shape, x.dtype)
        self.y = _device.empty(y.shape, y.dtype)
        self.shape = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)
        t = training
        self.forward_backward = GraphedStep(lambda: t.forward_backward(self.x, self.y))
        self.update = GraphedStep(lambda: t.update(self.y, *self.forward_backward.result))
        self.classes = None


class GraphedTraining:
    """The graphed step of a Trainer (see the module docstring)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.recording = None
        self.pending_shape = None        # a new shape seen once: recorded if it comes again
        self.sums = None
        self._said = set()
        self.eager_steps = self.replayed_steps = 0

    # ---------------------------------------------------------------------------- notes
    def _say(self, key, message):
        if key not in self._said:
            self._said.add(key)
            if self.trainer.is_root:
                print(f"cuda graph: {message}", file=sys.stderr, flush=True)

    def unavailable(self):
        """Why no step can be replayed here, or None."""
        if not _device.runs_kernels():
            return "the numpy device runs no kernels; every step runs eagerly"
        dist = self.trainer.distributed
        if dist is not None and dist.size > 1 and dist.backend == "mpi":
            from ..distributed.sync_bn import AllReduceStatistics
            if any(isinstance(getattr(layer, "stats_reducer", None), AllReduceStatistics)
                   for layer in self.trainer.model.layers()):
                return ("synchronised batchnorm over MPI all-reduces on the host inside the "
                        "step; every step runs eagerly")
        return None

    def epoch_sums(self):
        """The metric accumulator the recorded steps add into, zeroed (one per trainer: a
        replay adds into the address it recorded)."""
        if self.sums is None:
            self.sums = metric_ops.new_sums()
        else:
            _device.fill(self.sums, 0)
        return self.sums

    # ------------------------------------------------------------------ the step's halves
    def forward_backward(self, x, y):
        t = self.trainer
        logits = t.model.forward(as_activation(x), training=True)
        loss = t.loss.forward(logits, y)
        t.model.backward(t.loss.backward())        # data-parallel: the all-reduce comes after
        return logits, loss

    def update(self, y, logits, loss):
        self.trainer.optimizer.launch_step()
        metric_ops.accumulate_metrics(logits, y, loss, self.sums)

    def _allreduce(self):
        dist = self.trainer.distributed
        if dist is None or dist.size == 1:
            return
        buckets = dist.gradient_buckets(self.trainer.optimizer)
        for bucket in buckets.buckets:           # the eager path's collectives, in its order
            buckets.communicator.allreduce_sum_(buckets.flat_grads[bucket.start:bucket.stop])

    # ------------------------------------------------------------------------------ step
    def step(self, x, y, sums):
        """One training step on the batch (x, y), its loss and hits added to `sums` (which must
        be epoch_sums()'s buffer)."""
        t = self.trainer
        reason = self.unavailable()
        if reason is not None:
            self._say("unavailable", reason)
            return self._eager(x, y, sums)
        if sums is not self.sums:
            raise ValueError("cuda graph: a recorded step adds its loss and hits into one "
                             "buffer; pass trainer.new_sums() to train_step")
        shape = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)
        rec = self.recording
        if rec is None or rec.shape != shape:
            if rec is not None and self.pending_shape != shape:
                self.pending_shape = shape
                self._say(("eager", shape), f"a batch of shape {shape[0]} runs eagerly: the step "
                                            f"was recorded for {rec.shape[0]} (a short last "
                                            f"batch; a shape that persists is recorded anew)")
                return self._eager(x, y, sums)
            if rec is not None:
                self._say(("new", shape), f"batches of shape {shape[0]} follow one another: the "
                                          f"step is recorded anew for them")
            rec = self.recording = _Recording(self, x, y)
        self.pending_shape = None
        if rec.classes is not None and _device.device() != "cuda":
            xent_ops.check_labels_on_host("cuda graph step", y, rec.classes)
        rec.x[...] = x
        rec.y[...] = y
        t.optimizer.prepare_step()
        rec.forward_backward()
        self._allreduce()
        rec.update()
        if rec.classes is None:
            rec.classes = int(rec.forward_backward.result[0].shape[1])
        if rec.update.phase == "replayed":
            self.replayed_steps += 1
        else:
            self.eager_steps += 1

    def _eager(self, x, y, sums):
        self.eager_steps += 1
        self.trainer._eager_step(x, y, sums)

    def describe(self):
        """A line on what the recording holds (for logs)."""
        rec = self.recording
        if rec is None or rec.forward_backward.plan is None:
            return "cuda graph: nothing recorded yet"
        plan = rec.forward_backward.plan
        return (f"cuda graph: step recorded for batches of {rec.shape[0]}; "
                f"{plan.describe(largest=0)}; {self.replayed_steps} steps replayed, "
                f"{self.eager_steps} eager")


__all__ = ["GraphedTraining"]
