"""Communicators: one interface, chosen by device.

    allreduce_sum_(array)        sum over ranks, in place
    iallreduce_sum_(array)       the same, started now; returns a handle whose wait() finishes it
    broadcast_(array, root=0)    root's values to every rank, in place

`NcclCommunicator` (cuda): device arrays through NCCL (`cupy.cuda.nccl`); the communicator is
built from a unique id that rank 0 creates and broadcasts with MPI, as ChainerMN does. Its
collectives run on a dedicated stream that waits for the compute stream's work up to the call
(an event), so the all-reduce of one gradient bucket overlaps the backward of the next layers.

`MpiCommunicator` (sim, numpy): host arrays through MPI (`Allreduce` with MPI_IN_PLACE, and the
non-blocking `Iallreduce` for overlap).

`SingleProcess`: one rank, no MPI: every collective is the identity.
"""
import numpy as np


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
        self._nccl = nccl
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
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

    def synchronize(self):
        self.stream.synchronize()
