"""`cupy.cuda.nccl` for tests/fake_cupy.py's stream-ordered fake GPU, its collectives carried out
by MPI on the device bytes, so that cupycnn.distributed's NCCL path (unique id broadcast,
communicator construction, raw-pointer calls, dtype constants, the collective stream and its
events, the bucketed all-reduce, synchronised batchnorm) runs under mpiexec without a GPU and
is checked on its data under adversarial schedules.

The API is CuPy's, as cupy_backends/cuda/libs/nccl.pyx defines it, in either version:

    CuPy 13 (13.6)  get_unique_id() -> a tuple of NCCL_UNIQUE_ID_BYTES (128) ints
                    NcclCommunicator(int ndev, tuple commId, int rank)
    CuPy 14 (14.2)  get_unique_id() -> bytes of length 128
                    NcclCommunicator(int ndev, bytes commId, int rank, NcclConfig config=None)
    both            .allReduce(intptr_t sendbuf, intptr_t recvbuf, size_t count, int datatype,
                               int op, intptr_t stream)
                    .bcast(intptr_t buff, size_t count, int datatype, int root, intptr_t stream)
                    NCCL_SUM = 0, NCCL_INT32 = 2, NCCL_INT64 = 4, NCCL_FLOAT32 = 7, ...

A collective is an operation of the stream whose handle it is given, like any other: it starts
when the schedule reaches it (reading its send buffer then) as a non-blocking MPI collective on
a communicator of its own (a duplicate of the one given, so host MPI calls never interleave
with it), and completes, writing the receive buffer, when every rank's has arrived. So a
collective that does not wait for the kernels that wrote its input reads stale data, and a
kernel that does not wait for the collective reads the unreduced values, under some schedule.
What it cannot check: NCCL itself (benchmarks/distributed_gpu_check.py, on a GPU).
"""
import operator
import types

import numpy as np

import fake_cupy

NCCL_UNIQUE_ID_BYTES = 128
CONSTANTS = dict(NCCL_SUM=0, NCCL_PROD=1, NCCL_MAX=2, NCCL_MIN=3, NCCL_AVG=4, NCCL_INT8=0,
                 NCCL_UINT8=1, NCCL_INT32=2, NCCL_UINT32=3, NCCL_INT64=4, NCCL_UINT64=5,
                 NCCL_FLOAT16=6, NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_BFLOAT16=9)
_DTYPES = {2: np.int32, 4: np.int64, 7: np.float32, 8: np.float64}


def _integer(name, value):
    """What Cython's int / intptr_t / size_t parameters accept: an integer (not a float, not
    an array)."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def make(mpi_comm, device_count=2, cupy_version=14, seed=None):
    """(cupy, cupyx) of a fresh fake GPU (fake_cupy.make) with a `cupy.cuda.nccl` of CuPy
    `cupy_version` (13 or 14) whose collectives run over `mpi_comm`. `seed` (default: the
    rank) draws the schedule."""
    from mpi4py import MPI
    if cupy_version not in (13, 14):
        raise ValueError("cupy_version: 13 or 14")
    rank = mpi_comm.Get_rank()
    cupy, cupyx = fake_cupy.make(rank if seed is None else seed, pool_version=cupy_version,
                                 device_count=device_count)
    world = cupy._world
    nccl = types.ModuleType("cupy.cuda.nccl")
    cupy.cuda.nccl = nccl
    for name, value in CONSTANTS.items():
        setattr(nccl, name, value)
    nccl.available = True
    nccl.get_version = lambda: 22703                  # NCCL 2.27.3, as CuPy reports it

    def get_unique_id():
        raw = np.random.default_rng().integers(0, 256, NCCL_UNIQUE_ID_BYTES, dtype=np.uint8)
        if cupy_version == 13:
            return tuple(int(b) - 256 if b > 127 else int(b) for b in raw)   # <char> values
        return raw.tobytes()

    def stream_of(handle):
        for s in world.streams:
            if s.ptr == handle:
                return s
        raise ValueError(f"stream {handle:#x} is no stream of this device")

    def device_view(name, ptr, count, datatype):
        if datatype not in _DTYPES:
            raise ValueError(f"{name}: datatype {datatype} is not one the arrays use")
        dtype = np.dtype(_DTYPES[datatype])
        if count == 0:
            return lambda: np.empty(0, dtype)
        buffer, offset = world.resolve(ptr, count * dtype.itemsize)
        return lambda: np.ndarray((count,), dtype, buffer=buffer, offset=offset)

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank, config=None):
            ndev, rank = _integer("ndev", ndev), _integer("rank", rank)
            wanted = tuple if cupy_version == 13 else bytes
            if not isinstance(commId, wanted):
                raise TypeError(f"Argument 'commId' has incorrect type (expected "
                                f"{wanted.__name__}, got {type(commId).__name__})")
            if len(commId) != NCCL_UNIQUE_ID_BYTES:
                raise ValueError(f"commId length {len(commId)} != {NCCL_UNIQUE_ID_BYTES}.")
            if (ndev, rank) != (mpi_comm.Get_size(), mpi_comm.Get_rank()):
                raise ValueError(f"NcclCommunicator({ndev}, ..., {rank}) on MPI rank "
                                 f"{mpi_comm.Get_rank()} of {mpi_comm.Get_size()}")
            ids = mpi_comm.allgather(commId)
            if any(other != ids[0] for other in ids):
                raise ValueError("the ranks built their communicators from different ids")
            self.device = cupy.cuda.runtime.getDevice()
            self._comm = mpi_comm.Dup()
            world.log.append(("NcclCommunicator", None, (ndev, rank, self.device)))

        def _collective(self, kind, stream, send, recv, start):
            """Queue a collective on `stream`: start() returns an MPI request; the result is
            written to recv() when it completes."""
            state = {}

            def run():
                state["send"] = send().copy()
                state["out"] = np.empty_like(state["send"])
                state["request"] = start(state["send"], state["out"])

            def test():
                if not state["request"].Test():
                    return False
                recv()[...] = state["out"]
                return True
            stream._enqueue(kind, None, run, test=test)

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            sendbuf, recvbuf = _integer("sendbuf", sendbuf), _integer("recvbuf", recvbuf)
            count, datatype = _integer("count", count), _integer("datatype", datatype)
            op, stream = _integer("op", op), _integer("stream", stream)
            if op != CONSTANTS["NCCL_SUM"]:
                raise ValueError(f"allReduce: op {op}, expected NCCL_SUM")
            with world.lock:
                send = device_view("allReduce", sendbuf, count, datatype)
                recv = device_view("allReduce", recvbuf, count, datatype)
                self._collective("allReduce", stream_of(stream), send, recv,
                                 lambda s, o: self._comm.Iallreduce(s, o, op=MPI.SUM))

        def bcast(self, buff, count, datatype, root, stream):
            buff, count = _integer("buff", buff), _integer("count", count)
            datatype, root = _integer("datatype", datatype), _integer("root", root)
            stream = _integer("stream", stream)
            with world.lock:
                view = device_view("bcast", buff, count, datatype)

                def start(s, o):
                    o[...] = s
                    return self._comm.Ibcast(o, root=root)
                self._collective("bcast", stream_of(stream), view, view, start)

    import cupy_api
    NcclCommunicator.__module__ = cupy_api.load()["class_modules"][
        "cupy.cuda.nccl.NcclCommunicator"]                        # as CuPy's (fake_cupy.make)
    nccl.get_unique_id, nccl.NcclCommunicator = get_unique_id, NcclCommunicator
    return cupy, cupyx


def install(cupy, cupyx=None):
    """Make the fake what `import cupy` and `from cupy.cuda import nccl` find, for a script
    of its own (a process under mpiexec), and select the cuda device."""
    return fake_cupy.install_globally(cupy, cupyx)


