"""Communicators: one interface, chosen by device.

    allreduce_sum_(array)        sum over ranks, in place
    iallreduce_sum_(array)       the same, started now; returns a handle whose wait() finishes it
    broadcast_(array, root=0)    root's values to every rank, in place
    allreduce_statistics(sums, count)
                                 (sum of `sums` over ranks as a new array, the global count
                                 count * size): synchronised batchnorm's all-reduce (sync_bn.py)

`NcclCommunicator` (cuda): device arrays through NCCL (`cupy.cuda.nccl`); the communicator is
built from a unique id that rank 0 creates and broadcasts with MPI, as ChainerMN does. Its
collectives run on a dedicated stream that waits for the compute stream's work up to the call
(an event), so the all-reduce of one gradient bucket overlaps the backward of the next layers.

`MpiCommunicator` (sim, numpy): host arrays through MPI (`Allreduce` with MPI_IN_PLACE, and the
non-blocking `Iallreduce` for overlap).

`SingleProcess`: one rank, no MPI: every collective is the identity.
"""
import numpy as np


def global_count(count, size):
    """Synchronised batchnorm's element count per channel over every rank: the ranks of a
    data-parallel step run the same shapes (equal per-rank batches: the Loader pads its shards
    to equal length), so it is this rank's count times the number of ranks, with no
    communication."""
    return int(count) * int(size)


class _Done:
    def wait(self):
        pass


class SingleProcess:
    backend = "none"
    rank, size = 0, 1

    def allreduce_sum_(self, array):
        return array

    def iallreduce_sum_(self, array):
        return _Done()

    def broadcast_(self, array, root=0):
        return array

    def allreduce_statistics(self, sums, count):
        return sums, int(count)

    def synchronize(self):
        pass


def _mpi_op_sum():
    from mpi4py import MPI
    return MPI.SUM


class MpiCommunicator:
    """Collectives on host (NumPy) arrays through an mpi4py communicator."""

    backend = "mpi"

    def __init__(self, comm):
        from mpi4py import MPI
        self.comm, self._in_place = comm, MPI.IN_PLACE
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    @staticmethod
    def _check(array):
        if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
            raise ValueError("MPI collectives need a C-contiguous NumPy array, got "
                             f"{type(array).__name__}")

    def allreduce_sum_(self, array):
        self._check(array)
        if self.size > 1:
            self.comm.Allreduce(self._in_place, array, op=_mpi_op_sum())
        return array

    def iallreduce_sum_(self, array):
        self._check(array)
        if self.size == 1:
            return _Done()
        return self.comm.Iallreduce(self._in_place, array, op=_mpi_op_sum())

    def broadcast_(self, array, root=0):
        self._check(array)
        if self.size > 1:
            self.comm.Bcast(array, root=root)
        return array

    def allreduce_statistics(self, sums, count):
        """One Allreduce of [sums..., count] packed in float64 (the count is exact below
        2^53). Returns new arrays: the caller's `sums` are left as they were (batchnorm's
        backward still needs this rank's own sums for the parameter gradients). The count is
        count * size, as on NCCL (every rank's batch has the same shape); the packed count, free
        here, checks that."""
        self._check(sums)
        packed = np.empty(sums.size + 1, np.float64)
        packed[:-1] = sums.reshape(-1)
        packed[-1] = count
        if self.size > 1:
            self.comm.Allreduce(self._in_place, packed, op=_mpi_op_sum())
        total = global_count(count, self.size)
        if int(packed[-1]) != total:
            raise ValueError(f"synchronised batchnorm: this rank has {count} elements per "
                             f"channel but the {self.size} ranks have {int(packed[-1])} in all, "
                             f"not {total}: every rank's batch must have the same shape (the "
                             f"Loader's padded shards give that)")
        return packed[:-1].reshape(sums.shape).astype(sums.dtype, copy=False), total

    def synchronize(self):
        pass


class _NcclHandle:
    def __init__(self, communicator, event):
        self.communicator, self.event = communicator, event

    def wait(self):
        # Make the compute stream wait for the collective (no host synchronisation).
        import cupy
        cupy.cuda.get_current_stream().wait_event(self.event)


class NcclCommunicator:
    """Collectives on CuPy arrays through NCCL, on a stream of their own."""

    backend = "nccl"

    def __init__(self, mpi_comm):
        import cupy
        from cupy.cuda import nccl
        if not getattr(nccl, "available", False):
            # cupy.cuda.nccl imports without NCCL and only sets available = False.
            raise RuntimeError(
                "data-parallel training on cuda needs NCCL, which CuPy could not load: install "
                "the NCCL wheel of your CUDA major version (pip install \"nvidia-nccl-cu13\" "
                "with cupy-cuda13x, \"nvidia-nccl-cu12\" with cupy-cuda12x), conda's nccl or "
                "the system's libnccl2")
        self._nccl = nccl
        self.mpi = mpi_comm
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        # The API of cupy_backends/cuda/libs/nccl.pyx: get_unique_id() -> a tuple of 128 ints
        # (CuPy 13) or 128 bytes (CuPy 14), picklable either way: MPI broadcasts it as it is,
        # and NcclCommunicator(ndev, commId, rank) takes that same type back; then
        # allReduce(sendbuf, recvbuf, count, datatype, op, stream) and
        # bcast(buff, count, datatype, root, stream) with raw pointers, element counts and the
        # NCCL_* constants of nccl.pxd. The current device must be this rank's GPU already.
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        unique_id = mpi_comm.bcast(unique_id, root=0)
        self.comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self._dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                        np.dtype(np.float64): nccl.NCCL_FLOAT64,
                        np.dtype(np.int32): nccl.NCCL_INT32,
                        np.dtype(np.int64): nccl.NCCL_INT64}

    def _nccl_dtype(self, array):
        import cupy
        if not isinstance(array, cupy.ndarray) or not array.flags.c_contiguous:
            raise ValueError("NCCL collectives need a C-contiguous CuPy array, got "
                             f"{type(array).__name__}")
        if array.dtype not in self._dtypes:
            raise ValueError(f"NCCL collectives: unsupported dtype {array.dtype}")
        return self._dtypes[array.dtype]

    def _after_compute(self):
        import cupy
        self.stream.wait_event(cupy.cuda.get_current_stream().record())

    def iallreduce_sum_(self, array):
        import cupy
        dtype = self._nccl_dtype(array)
        self._after_compute()
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, dtype,
                            self._nccl.NCCL_SUM, self.stream.ptr)
        return _NcclHandle(self, self.stream.record())

    def allreduce_sum_(self, array):
        self.iallreduce_sum_(array).wait()
        return array

    def broadcast_(self, array, root=0):
        dtype = self._nccl_dtype(array)
        self._after_compute()
        self.comm.bcast(array.data.ptr, array.size, dtype, root, self.stream.ptr)
        _NcclHandle(self, self.stream.record()).wait()
        return array

    def allreduce_statistics(self, sums, count):
        """The sums through NCCL, out of place (a new array: batchnorm's backward still needs
        this rank's own sums), on the collective stream and waited for by the compute stream;
        the count, a host integer the kernels take as a launch argument, follows from the shapes
        (global_count): no host communication, no synchronisation."""
        import cupy
        dtype = self._nccl_dtype(sums)
        total = cupy.empty_like(sums)
        self._after_compute()
        self.comm.allReduce(sums.data.ptr, total.data.ptr, sums.size, dtype,
                            self._nccl.NCCL_SUM, self.stream.ptr)
        _NcclHandle(self, self.stream.record()).wait()
        return total, global_count(count, self.size)

    def synchronize(self):
        self.stream.synchronize()
