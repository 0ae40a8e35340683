"""Data-parallel training across processes: `mpirun -n 4 python examples/train_cifar.py`.

    ctx = cupycnn.distributed.init()         # every rank; works without mpirun too
    ctx.rank, ctx.size, ctx.local_rank
    ctx.broadcast_parameters(model)          # rank 0's weights everywhere
    ctx.check_consistency(model, optimizer, global_batch=256)
    ctx.synchronize_batchnorm(model)         # optional: batchnorm over the global batch
    trainer = Trainer(model, optimizer, distributed=ctx)

Start-up follows ChainerMN: MPI's COMM_WORLD gives the rank and size; a shared-memory split of it
gives the local rank (the rank within a node), and each rank takes GPU local_rank %
device_count. On `cuda` the gradients and metrics go through NCCL (a communicator built from a
unique id that rank 0 broadcasts with MPI); on `sim` and `numpy` through MPI on host arrays. With
one process and no MPI installed, init() returns a single-process context whose collectives do
nothing, so the same script runs either way.

Gradients are all-reduced in buckets that start while backward is still running
(`buckets.py`); the 1/N average is folded into the optimizer's fused step (`grad_scale`).
Metrics are all-reduced as sums, so reported figures are exact for the whole dataset. A rank that
raises aborts the whole job (COMM_WORLD.Abort) after printing its rank and error, instead of
leaving the others waiting forever in a collective. Synchronised batchnorm: `sync_bn.py`. The
whole design, and how to launch on one node or many: docs/DISTRIBUTED.md.
"""
import contextlib
import os
import sys
import time
import traceback

import numpy as np

from .. import devices as _device
from .. import random as _random
from .buckets import DEFAULT_BUCKET_BYTES, GradientBuckets
from .comm import MpiCommunicator, NcclCommunicator, SingleProcess
from .sync_bn import AllReduceStatistics, local_batchnorm, sync_batchnorm
from .watchdog import DEFAULT_TIMEOUT as DEFAULT_COLLECTIVE_TIMEOUT
from .watchdog import WatchedCommunicator, Watchdog


ABORT_GRACE_SECONDS = 0.5


class ConsistencyError(RuntimeError):
    """Ranks disagree about the model, the optimizer or the batch."""


_LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS",
                            "SLURM_NTASKS")


def _launched_size():
    """The number of processes a launcher (mpirun, mpiexec, srun) says it started, or None."""
    for var in _LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return None


def _mpi_world():
    """COMM_WORLD, or None for a single process where MPI cannot be had: mpi4py not installed
    (ImportError), or installed without an MPI library (mpi4py 4 raises `RuntimeError: cannot
    load MPI library` from `from mpi4py import MPI`). Under a launcher that started several
    processes, a missing MPI is an error: each would otherwise train alone, unaware of the
    others."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as e:
        size = _launched_size()
        if size is not None and size > 1:
            raise RuntimeError(f"this process is one of {size} that a launcher started, but "
                               f"MPI is unusable here ({type(e).__name__}: {e}); install "
                               f"mpi4py with an MPI library (pip install mpi4py mpich)") from e
        return None
    return MPI.COMM_WORLD


class Context:
    """One rank's view of the job: rank, size, local_rank, device, and the collectives."""

    def __init__(self, mpi_comm, device, bucket_bytes=DEFAULT_BUCKET_BYTES, backend=None,
                 collective_timeout=DEFAULT_COLLECTIVE_TIMEOUT):
        if backend not in (None, "none", "mpi", "nccl"):
            raise ValueError(f"backend must be None (chosen by device and size), 'none', 'mpi' "
                             f"or 'nccl', got {backend!r}")
        self.mpi = mpi_comm
        self.device = device
        if mpi_comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        else:
            from mpi4py import MPI
            self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
            local = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            local.Free()
        if device == "cuda":
            import cupy
            count = cupy.cuda.runtime.getDeviceCount()
            self.gpu = self.local_rank % count
            cupy.cuda.Device(self.gpu).use()
        else:
            self.gpu = None
        if backend is None:
            # One process needs neither MPI nor NCCL: its collectives are the identity.
            backend = ("none" if mpi_comm is None or self.size == 1 else
                       "nccl" if device == "cuda" else "mpi")
        if backend != "none" and mpi_comm is None:
            raise ValueError(f"backend {backend!r} needs MPI (mpi4py with an MPI library)")
        if backend == "none" and self.size > 1:
            raise ValueError(f"backend 'none' with {self.size} ranks")
        if backend == "none":
            self.communicator = SingleProcess()
        elif backend == "nccl":
            self.communicator = NcclCommunicator(mpi_comm)
        else:
            self.communicator = MpiCommunicator(mpi_comm)
        self.bucket_bytes = bucket_bytes
        self._buckets = None
        # A stalled rank ends the job, named, within the timeout (watchdog.py).
        self.watchdog = None
        if collective_timeout and self.size > 1:
            self.watchdog = Watchdog(mpi_comm, collective_timeout,
                                     single_host=self.local_size == self.size)
            self.communicator = WatchedCommunicator(self.communicator, self.watchdog)

    def set_step(self, step, epoch=None):
        """The training step now running (named by the watchdog if a collective stalls)."""
        if self.watchdog is not None:
            self.watchdog.set_step(step, epoch)

    def _watched(self, name, timeout=True):
        """enter/leave of the watchdog around a host MPI call (timeout=False: not watched)."""
        if self.watchdog is None or not timeout:
            return contextlib.nullcontext()
        return self.watchdog.watching(name)

    @property
    def backend(self):
        return self.communicator.backend

    @property
    def is_root(self):
        return self.rank == 0

    # ---------------------------------------------------------------------- collectives
    def allreduce_sum_(self, array):
        """Sum `array` over all ranks, in place."""
        return self.communicator.allreduce_sum_(array)

    def broadcast_(self, array, root=0):
        return self.communicator.broadcast_(array, root)

    def barrier(self, watched=True):
        """Wait for every rank. watched=False: however long it takes (data preparation: rank
        0 downloading a dataset while the others wait), outside the watchdog."""
        if self.mpi is not None:
            self.communicator.synchronize()
            with self._watched("barrier", watched):
                self.mpi.Barrier()

    def broadcast_parameters(self, model):
        """Rank 0's parameters and buffers to every rank (call once, after building)."""
        for _, p in model.named_parameters():
            self.broadcast_(p.data)
        self.broadcast_buffers(model)

    def broadcast_buffers(self, model):
        """Rank 0's buffers (batchnorm running statistics) to every rank. Without synchronised
        batchnorm each rank's running statistics follow its own shard; training does not use
        them, but evaluation and checkpoints do, so the trainer calls this after every epoch
        (PyTorch's DDP broadcasts them at every forward) and all ranks evaluate rank 0's model,
        the one its checkpoint holds."""
        if self.size == 1:
            return
        for layer in model.layers():
            for value in layer.buffers.values():
                self.broadcast_(value)
        self.communicator.synchronize()

    def allgather(self, obj):
        """Gather a small Python object from every rank (over MPI)."""
        if self.mpi is None:
            return [obj]
        with self._watched("allgather"):
            return self.mpi.allgather(obj)

    # ------------------------------------------------------------------------- checks
    def check_consistency(self, model, optimizer, global_batch, **extra):
        """Every rank compares its model, optimizer and global batch with every other's; a
        difference raises ConsistencyError on all ranks, naming it (no rank hangs)."""
        mine = fingerprint(model, optimizer, global_batch, **extra)
        everyone = self.allgather(mine)
        problems = []
        for rank, theirs in enumerate(everyone):
            for key in sorted(set(theirs) | set(everyone[0])):
                if theirs.get(key) != everyone[0].get(key):
                    problems.append(f"rank {rank} has {key} = {theirs.get(key)!r} where rank 0 "
                                    f"has {everyone[0].get(key)!r}")
        if problems:
            raise ConsistencyError("the ranks do not run the same job: " + "; ".join(problems[:8])
                                   + (f"; and {len(problems) - 8} more" if len(problems) > 8
                                      else ""))

    def synchronize_batchnorm(self, model):
        """sync_batchnorm(model, self): every BatchNorm1D/2D normalises with the statistics of
        the global batch (one all-reduce of its sums and count in the training forward, one in
        the backward). Returns the number of batchnorm layers."""
        return sync_batchnorm(model, self)

    def per_rank_batch(self, global_batch):
        """global_batch / size, or a clear error when it does not divide."""
        if global_batch % self.size:
            raise ValueError(f"the global batch size {global_batch} does not divide among "
                             f"{self.size} ranks; use a multiple of {self.size}")
        return global_batch // self.size

    # ----------------------------------------------------------------- gradient all-reduce
    def backward(self, model, dy, optimizer):
        """model.backward(dy) with the bucketed, overlapped gradient all-reduce; the average
        is the optimizer's grad_scale = 1/size."""
        if self.size == 1:
            return model.backward(dy)
        return self.gradient_buckets(optimizer).backward(model, dy)

    def gradient_buckets(self, optimizer):
        """The GradientBuckets over `optimizer`'s flat gradient buffer (made on first use, and
        again for a new optimizer or a new bucket_bytes); sets its grad_scale to 1/size."""
        buckets = self._buckets
        if buckets is None or buckets.flat_grads is not optimizer.flat_grads or \
                buckets.bucket_bytes != self.bucket_bytes:
            segments = sorted(((p.layer, p.key, offset, size) for p, (offset, size)
                               in zip(optimizer.params, optimizer.param_segments)),
                              key=lambda segment: segment[2])
            self._buckets = GradientBuckets(optimizer.flat_grads, segments, self.communicator,
                                            self.bucket_bytes)
        optimizer.grad_scale = 1.0 / self.size
        return self._buckets

    # ------------------------------------------------------------------------- failure
    @contextlib.contextmanager
    def abort_on_error(self):
        """Run a block; if it raises on this rank, print the rank and the error and abort the
        whole job, so that the other ranks do not wait forever in a collective.

        sys.exit() with status 0 (or None) passes through: a normal end, which every rank
        reaches. A non-zero status on one rank aborts like an exception: the others would
        otherwise wait forever, in a collective or in MPI_Finalize."""
        try:
            yield
        except SystemExit as e:
            if e.code in (None, 0) or self.mpi is None or self.size == 1:
                raise
            self._abort(f"SystemExit: exit status {e.code}", 1, with_traceback=False)
        except BaseException as e:
            if self.mpi is None or self.size == 1:
                raise
            self._abort(f"{type(e).__name__}: {e}", 1)

    def _abort(self, what, status, with_traceback=True):
        sys.stdout.flush()
        sys.stderr.write(f"cupycnn: rank {self.rank} of {self.size} failed, aborting the "
                         f"job: {what}\n")
        if with_traceback:
            traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        # Give the process manager's output forwarding a moment to deliver the message: the
        # abort tears every rank down, and a loaded machine can lose the last lines otherwise.
        time.sleep(ABORT_GRACE_SECONDS)
        self.mpi.Abort(status)
        # MPICH's MPI_Abort asks the process manager to kill every rank and returns at once;
        # this rank must not carry on (the exception is handled here) until the kill arrives.
        os._exit(status)


def fingerprint(model, optimizer, global_batch, **extra):
    """What must agree across ranks, as comparable values."""
    info = {"global batch": int(global_batch),
            "model": type(model).__name__,
            "parameters": [(n, tuple(p.shape)) for n, p in model.named_parameters()],
            "buffers": [(n, tuple(np.shape(v))) for n, v in model.named_buffers()],
            "optimizer": type(optimizer).__name__,
            "optimizer groups": [{k: v for k, v in g.items() if k != "params"}
                                 for g in getattr(optimizer, "param_groups", [])]}
    info.update({k: v for k, v in extra.items()})
    return info


_context = None


def init(device=None, bucket_bytes=DEFAULT_BUCKET_BYTES, backend=None,
         collective_timeout=DEFAULT_COLLECTIVE_TIMEOUT):
    """Set up this rank (once per process): MPI world, local rank, GPU, communicator.
    `device` defaults to the current cupycnn device. `backend` None chooses: NCCL on cuda and
    MPI elsewhere when there are several ranks, none for one process (which needs neither MPI
    nor NCCL); "nccl" or "mpi" forces one even for a single rank (the GPU checks use that).
    `collective_timeout`: seconds a rank may wait in one collective before the watchdog names
    the ranks that have not arrived and aborts the job (0 or None: never)."""
    global _context
    if _context is not None:
        return _context
    world = None
    if backend != "none":
        world = _mpi_world()      # a single process started without mpirun has size 1
    dev = device or _device.device()
    _context = Context(world, dev, bucket_bytes, backend, collective_timeout)
    _random.set_process_rank(_context.rank)
    return _context


def context():
    """The context init() made (a single-process one if init() was not called)."""
    return _context if _context is not None else init()
