"""A host-only stand-in for the parts of CuPy that `cupycnn.distributed`'s NCCL path uses, with a
`cupy.cuda.nccl` whose collectives go through MPI on host memory, so that the NCCL code path
(unique id broadcast, communicator construction, the raw-pointer calls, the dtype constants,
the collective stream and its events) runs under mpiexec on machines without a GPU.

It checks the calls against CuPy's API as CuPy defines it (cupy_backends/cuda/libs/nccl.pyx and
nccl.pxd in the CuPy repository):

    get_unique_id() -> a tuple of NCCL_UNIQUE_ID_BYTES (128) ints
    NcclCommunicator(int ndev, tuple commId, int rank)
    .allReduce(intptr_t sendbuf, intptr_t recvbuf, size_t count, int datatype, int op,
               intptr_t stream)
    .bcast(intptr_t buff, size_t count, int datatype, int root, intptr_t stream)
    NCCL_SUM = 0, NCCL_INT32 = 2, NCCL_INT64 = 4, NCCL_FLOAT32 = 7, NCCL_FLOAT64 = 8

and records, in `cupy.log`, what runs on which stream: ("record", stream), ("wait", stream,
stream of the event), ("allReduce", stream, send pointer, receive pointer, count, datatype),
("bcast", ...), ("synchronize", stream). Arrays are NumPy arrays with a `.data.ptr` (their host
address), as CuPy arrays have a device address. It checks the orchestration, not NCCL:
benchmarks/distributed_gpu_check.py runs the real thing on a GPU.
"""
import ctypes
import operator
import types

import numpy as np

NCCL_UNIQUE_ID_BYTES = 128
CONSTANTS = dict(NCCL_SUM=0, NCCL_PROD=1, NCCL_MAX=2, NCCL_MIN=3, NCCL_AVG=4, NCCL_INT8=0,
                 NCCL_UINT8=1, NCCL_INT32=2, NCCL_UINT32=3, NCCL_INT64=4, NCCL_UINT64=5,
                 NCCL_FLOAT16=6, NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_BFLOAT16=9)
_CTYPES = {2: ctypes.c_int32, 4: ctypes.c_int64, 7: ctypes.c_float, 8: ctypes.c_double}


def _integer(name, value):
    """What Cython's int / intptr_t / size_t parameters accept: an integer (not a float, not
    an array)."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def make(mpi_comm, device_count=2):
    """A `cupy` module (with cupy.cuda, cupy.cuda.runtime, cupy.cuda.nccl) whose NCCL
    collectives run over `mpi_comm`."""
    from mpi4py import MPI

    cupy = types.ModuleType("cupy")
    cuda = types.ModuleType("cupy.cuda")
    runtime = types.ModuleType("cupy.cuda.runtime")
    nccl = types.ModuleType("cupy.cuda.nccl")
    log = []
    cupy.log, cupy.cuda, cuda.runtime, cuda.nccl = log, cuda, runtime, nccl
    state = {"device": None}

    class _Memory:
        def __init__(self, ptr):
            self.ptr = ptr

    class ndarray(np.ndarray):
        @property
        def data(self):             # CuPy: a MemoryPointer whose .ptr is the device address
            return _Memory(self.ctypes.data)

    def asarray(a, dtype=None):
        return np.ascontiguousarray(np.array(a, dtype=dtype)).view(ndarray)

    def empty_like(a):
        return np.empty_like(np.asarray(a)).view(ndarray)

    def zeros(shape, dtype=np.float32):
        return np.zeros(shape, dtype).view(ndarray)

    cupy.ndarray, cupy.asarray, cupy.empty_like, cupy.zeros = ndarray, asarray, empty_like, zeros
    cupy.asnumpy = lambda a: np.array(a)

    class Event:
        def __init__(self, stream):
            self.stream = stream

    class Stream:
        def __init__(self, non_blocking=False, name="collective", ptr=None):
            self.name, self.non_blocking = name, non_blocking
            self.ptr = ptr if ptr is not None else id(self)

        def record(self):
            log.append(("record", self.name))
            return Event(self)

        def wait_event(self, event):
            assert isinstance(event, Event), f"wait_event({event!r})"
            log.append(("wait", self.name, event.stream.name))

        def synchronize(self):
            log.append(("synchronize", self.name))

    compute = Stream(name="compute", ptr=0)      # CuPy's default: the null stream, pointer 0
    cuda.Stream, cuda.Event = Stream, Event
    cuda.get_current_stream = lambda: compute

    class Device:
        def __init__(self, index):
            self.id = int(index)

        def use(self):
            state["device"] = self.id

    cuda.Device = Device
    runtime.getDeviceCount = lambda: device_count
    runtime.getDevice = lambda: state["device"]

    for name, value in CONSTANTS.items():
        setattr(nccl, name, value)
    nccl.available = True

    def get_unique_id():
        return tuple(int(b) - 128 for b in np.random.default_rng().integers(0, 256, 128))

    def host_view(name, ptr, count, datatype):
        if datatype not in _CTYPES:
            raise ValueError(f"{name}: datatype {datatype} is not one the arrays use")
        if count == 0:
            return np.empty(0, np.dtype(_CTYPES[datatype]))
        return np.ctypeslib.as_array((_CTYPES[datatype] * count).from_address(ptr))

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank):
            ndev, rank = _integer("ndev", ndev), _integer("rank", rank)
            if not isinstance(commId, tuple) or len(commId) != NCCL_UNIQUE_ID_BYTES:
                raise TypeError("commId must be the tuple get_unique_id() returned")
            if (ndev, rank) != (mpi_comm.Get_size(), mpi_comm.Get_rank()):
                raise ValueError(f"NcclCommunicator({ndev}, ..., {rank}) on MPI rank "
                                 f"{mpi_comm.Get_rank()} of {mpi_comm.Get_size()}")
            ids = mpi_comm.allgather(commId)
            if any(other != ids[0] for other in ids):
                raise ValueError("the ranks built their communicators from different ids")
            self.device = state["device"]
            log.append(("NcclCommunicator", ndev, rank, self.device))

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            sendbuf, recvbuf = _integer("sendbuf", sendbuf), _integer("recvbuf", recvbuf)
            count, datatype = _integer("count", count), _integer("datatype", datatype)
            op, stream = _integer("op", op), _integer("stream", stream)
            if op != CONSTANTS["NCCL_SUM"]:
                raise ValueError(f"allReduce: op {op}, expected NCCL_SUM")
            name = {s.ptr: s.name for s in streams}.get(stream, "unknown")
            log.append(("allReduce", name, sendbuf, recvbuf, count, datatype))
            recv = host_view("allReduce", recvbuf, count, datatype)
            if sendbuf == recvbuf:
                mpi_comm.Allreduce(MPI.IN_PLACE, recv, op=MPI.SUM)
            else:
                mpi_comm.Allreduce(host_view("allReduce", sendbuf, count, datatype), recv,
                                   op=MPI.SUM)

        def bcast(self, buff, count, datatype, root, stream):
            buff, count = _integer("buff", buff), _integer("count", count)
            datatype, root = _integer("datatype", datatype), _integer("root", root)
            stream = _integer("stream", stream)
            name = {s.ptr: s.name for s in streams}.get(stream, "unknown")
            log.append(("bcast", name, buff, count, datatype, root))
            mpi_comm.Bcast(host_view("bcast", buff, count, datatype), root=root)

    streams = [compute]
    original_stream = Stream

    def tracked_stream(non_blocking=False):
        stream = original_stream(non_blocking=non_blocking)
        streams.append(stream)
        return stream

    cuda.Stream = tracked_stream
    nccl.get_unique_id, nccl.NcclCommunicator = get_unique_id, NcclCommunicator
    return cupy


def install(cupy):
    """Put the fake in sys.modules, so that `import cupy` and `from cupy.cuda import nccl`
    find it."""
    import sys
    sys.modules.update({"cupy": cupy, "cupy.cuda": cupy.cuda,
                        "cupy.cuda.runtime": cupy.cuda.runtime, "cupy.cuda.nccl": cupy.cuda.nccl})
