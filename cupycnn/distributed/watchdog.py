"""A watchdog on collectives: a rank that stalls ends the job, named, instead of hanging it.

Without it, a rank that stops (a deadlock, a hung file system, SIGSTOP, a GPU hang) leaves every
other rank waiting in its next collective forever. With it, each rank counts its collectives and
a background thread keeps a table, on rank 0, of where every rank is: the number and kind of the
last collective it entered, the training step, and when it last reported. A rank that has waited
in one collective longer than the timeout asks for the table, and the first to ask prints one
line naming the collective, the step, the ranks that have not arrived (and where each last was),
then aborts the job (MPI_Abort):

    cupycnn: collective timeout: rank 0 waited 30 s in collective #812 (iallreduce_sum_ of
    float32[1,234,432]) at step 57 (epoch 3); rank 2 has not arrived (it is at #811, broadcast_
    of float32[64] at step 56, last heard of 0.4 s ago); aborting the job

    Context(..., collective_timeout=600)     # seconds; 0 or None: no watchdog
    python examples/train_cifar.py --collective-timeout 600

How it is built. Each collective is `enter` (a counter and a time, set by the calling thread;
nothing is sent) and `leave` (when it returns; for NCCL, when its CUDA event completes, which
a thread of its own polls). The watchdog thread of every rank sends its counters to rank 0's
table over a TCP connection (a line of JSON, with a random token broadcast at start, so a stray
connection is refused) every `interval` seconds, and checks its own oldest unfinished
collective. The table lives in a thread of rank 0, so a rank 0 that stalls in Python code
still answers; one stopped whole (SIGSTOP, a dead host) does not, and then the line says so.
No MPI call is made from the watchdog threads but the final MPI_Abort.

The default timeout, 600 s, is far beyond any healthy collective (a step is milliseconds to
seconds; the first one, compiling kernels, under a minute; rank 0 writing a checkpoint while the
others wait at the next step, seconds): only a stall comes near it. Data preparation (rank 0
downloading CIFAR-10 while the others wait) is not watched: the download has its own deadline.
"""
import contextlib
import json
import os
import secrets
import socket
import socketserver
import sys
import threading
import time

DEFAULT_TIMEOUT = 600.0
ABORT_STATUS = 124            # as timeout(1) exits
MAX_LINE = 1 << 16
UNCLAIMED_SECONDS = 5.0       # rank 0 not answering: how long ranks > 1 leave the report to rank 1
FORWARD_SECONDS = 1.0         # for mpiexec to forward the report before the abort (without it
                              # the line was lost in about 1 of 5 runs under load)


class _Table:
    """Rank 0's view of every rank: {rank: {"entered", "name", "step", "epoch", "time"}}."""

    def __init__(self, size):
        self.size = size
        self.rows = {}
        self.reporter = None
        self.lock = threading.Lock()

    def post(self, rank, row):
        with self.lock:
            row = dict(row, heard=time.monotonic())
            self.rows[rank] = row

    def snapshot(self):
        now = time.monotonic()
        with self.lock:
            return {str(r): dict(row, ago=now - row["heard"]) for r, row in self.rows.items()}

    def claim(self, rank):
        with self.lock:
            if self.reporter is None:
                self.reporter = rank
            return self.reporter == rank


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        server = self.server
        token = self.rfile.readline(MAX_LINE).strip().decode("ascii", "replace")
        if not secrets.compare_digest(token, server.token):
            return
        for line in self.rfile:
            if len(line) > MAX_LINE:
                return
            try:
                message = json.loads(line)
                kind, rank = message["kind"], int(message["rank"])
            except (ValueError, KeyError, TypeError):
                return
            if kind == "post":
                server.table.post(rank, message["row"])
            elif kind == "table":
                self._reply({"rows": server.table.snapshot()})
            elif kind == "claim":
                self._reply({"first": server.table.claim(rank)})

    def _reply(self, obj):
        self.wfile.write(json.dumps(obj).encode() + b"\n")
        self.wfile.flush()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class Watchdog:
    """One rank's watchdog (see the module docstring). `mpi_comm` is used at construction
    only (to share rank 0's address and the token) and for the final abort."""

    def __init__(self, mpi_comm, timeout=DEFAULT_TIMEOUT, interval=None, single_host=None):
        self.mpi = mpi_comm
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        self.timeout = float(timeout)
        self.interval = interval if interval is not None else min(1.0, self.timeout / 10)
        self.step, self.epoch = 0, 0
        self._lock = threading.Lock()
        self._entered = 0             # collectives entered
        self._open = {}               # number -> (name, started, event or None)
        self._last_name = "none yet"
        self._server = None
        if self.rank == 0:
            host = "127.0.0.1" if single_host else ""
            self._server = _Server((host, 0), _Handler)
            self._server.table = _Table(self.size)
            self._server.token = secrets.token_hex(16)
            port = self._server.server_address[1]
            threading.Thread(target=self._server.serve_forever, name="cupycnn-watchdog-table",
                             daemon=True).start()
            address = ("127.0.0.1" if single_host else socket.gethostname(), port,
                       self._server.token)
        else:
            address = None
        self.address = mpi_comm.bcast(address, root=0)
        self._connection = None
        self._poller = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cupycnn-watchdog",
                                        daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ the calling thread's side
    def set_step(self, step, epoch=None):
        self.step = int(step)
        if epoch is not None:
            self.epoch = int(epoch)

    def enter(self, name):
        """A collective begins; returns its number (hand it to leave)."""
        self.settle()
        with self._lock:
            self._entered += 1
            number = self._entered
            self._open[number] = (name, time.monotonic(), None)
            self._last_name = name
        return number

    def leave(self, number, event=None):
        """The collective `number` has finished on the host; with a CUDA `event`, it finishes
        when the event completes (a thread of its own polls the events)."""
        with self._lock:
            if event is None:
                self._open.pop(number, None)
            elif number in self._open:
                name, started, _ = self._open[number]
                self._open[number] = (name, started, event)
                if self._poller is None:
                    self._poller = threading.Thread(target=self._poll, daemon=True,
                                                    name="cupycnn-watchdog-events")
                    self._poller.start()

    def settle(self, all_done=False):
        """In the calling thread: forget the NCCL collectives whose events have completed
        (all_done: every one, after a synchronisation of their stream)."""
        with self._lock:
            items = [(n, e) for n, (_, _, e) in self._open.items() if e is not None]
        for number, event in items:
            if all_done or _done(event):
                with self._lock:
                    self._open.pop(number, None)

    @contextlib.contextmanager
    def watching(self, name):
        """enter ... leave around a block."""
        number = self.enter(name)
        try:
            yield
        finally:
            self.leave(number)

    def close(self):
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --------------------------------------------------------------- the watchdog thread
    def _row(self):
        with self._lock:
            return {"entered": self._entered, "name": self._last_name, "step": self.step,
                    "epoch": self.epoch}

    def _send(self, message, reply=False):
        if self._connection is None:
            host, port, token = self.address
            sock = socket.create_connection((host, port), timeout=max(5.0, self.interval * 5))
            self._connection = (sock, sock.makefile("rwb"))
            self._connection[1].write(token.encode() + b"\n")
        sock, stream = self._connection
        stream.write(json.dumps(dict(message, rank=self.rank)).encode() + b"\n")
        stream.flush()
        if reply:
            line = stream.readline(MAX_LINE)
            if not line:
                raise ConnectionError("the table closed the connection")
            return json.loads(line)
        return None

    def _watch(self):
        with contextlib.suppress(OSError, ValueError):     # heard from from the start
            self._send({"kind": "post", "row": self._row()})
        while not self._stop.wait(self.interval):
            try:                          # every interval: where this rank is, and that it lives
                self._send({"kind": "post", "row": self._row()})
            except (OSError, ValueError):
                self._connection = None
            oldest = self._oldest()
            if oldest is not None and time.monotonic() - oldest[1] > self.timeout:
                self._fire(*oldest)
                return

    def _poll(self):
        """The events of NCCL collectives, queried apart from the watchdog thread: a query
        that blocks (never on a GPU; in a fake one, while the main thread drives it) cannot
        keep the watchdog from firing."""
        device = _current_gpu()
        if device is not None:
            device.use()                  # events are queried on this rank's GPU
        while not self._stop.wait(self.interval / 2):
            with self._lock:
                items = [(n, e) for n, (_, _, e) in self._open.items() if e is not None]
            for number, event in items:
                if _done(event):
                    with self._lock:
                        self._open.pop(number, None)

    def _oldest(self):
        with self._lock:
            if not self._open:
                return None
            number = min(self._open)
            name, started, _ = self._open[number]
            return number, started, name

    def _fire(self, number, started, name):
        waited = time.monotonic() - started
        where = f"collective #{number} ({name}) at step {self.step} (epoch {self.epoch + 1})"
        try:
            first = self._send({"kind": "claim"}, reply=True)["first"]
            rows = self._send({"kind": "table"}, reply=True)["rows"]
        except (OSError, ValueError, KeyError, TypeError):
            first, rows = True, None
            if self.rank > 1:             # no table to claim the report: rank 1 makes it,
                time.sleep(UNCLAIMED_SECONDS)   # the others only if the job outlives it
        if not first:                     # another rank is reporting; the abort follows
            time.sleep(10)
        else:
            sys.stderr.write(f"cupycnn: collective timeout: rank {self.rank} waited "
                             f"{waited:.0f} s in {where}; "
                             f"{self._absent(number, rows)}; aborting the job\n")
            sys.stderr.flush()
            time.sleep(FORWARD_SECONDS)   # MPI_Abort kills the launcher's forwarding too
        _abort(self.mpi)

    def _absent(self, number, rows):
        if rows is None:
            return ("rank 0, which keeps the watchdog's table, does not answer: it has stopped "
                    "(or its host is gone)")
        late = []
        for rank in range(self.size):
            row = rows.get(str(rank))
            if row is None:
                late.append(f"rank {rank} (not heard from since the job began)")
            elif row["entered"] < number:
                late.append(f"rank {rank} (at step {row['step']}, its last collective "
                            f"#{row['entered']}, {row['name']}; heard from {row['ago']:.1f} s "
                            f"ago)")
        if not late:
            return ("every rank has entered it: they wait on the network or the GPU, or in "
                    "different collectives")
        verb = "has" if len(late) == 1 else "have"
        return f"{', '.join(late)} {verb} not arrived"


def _done(event):
    try:
        return bool(event.done)
    except Exception:                    # an event of a torn-down context: finished
        return True


def _current_gpu():
    try:
        import cupy
        return cupy.cuda.Device(cupy.cuda.runtime.getDevice())
    except Exception:                    # no CuPy, no GPU: nothing to bind
        return None


def _abort(mpi):
    try:
        mpi.Abort(ABORT_STATUS)
    finally:
        os._exit(ABORT_STATUS)


class WatchedCommunicator:
    """A communicator whose every collective is watched: the same interface as the one it
    wraps (comm.py), each call an enter/leave of the watchdog."""

    def __init__(self, inner, watchdog):
        self.inner, self.watchdog = inner, watchdog
        self.backend, self.rank, self.size = inner.backend, inner.rank, inner.size

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def allreduce_sum_(self, array):
        number = self.watchdog.enter(f"allreduce_sum_ of {_describe(array)}")
        result = self.inner.allreduce_sum_(array)
        self.watchdog.leave(number, self._nccl_event())
        return result

    def iallreduce_sum_(self, array):
        number = self.watchdog.enter(f"iallreduce_sum_ of {_describe(array)}")
        handle = self.inner.iallreduce_sum_(array)
        return _WatchedHandle(handle, self.watchdog, number)

    def broadcast_(self, array, root=0):
        number = self.watchdog.enter(f"broadcast_ of {_describe(array)}")
        result = self.inner.broadcast_(array, root)
        self.watchdog.leave(number, self._nccl_event())
        return result

    def allreduce_statistics(self, sums, count):
        number = self.watchdog.enter(f"allreduce_statistics of {_describe(sums)}")
        result = self.inner.allreduce_statistics(sums, count)
        self.watchdog.leave(number, self._nccl_event())
        return result

    def synchronize(self):
        number = self.watchdog.enter("synchronize (of the collective stream)")
        self.inner.synchronize()
        self.watchdog.leave(number)
        self.watchdog.settle(all_done=True)       # every collective queued so far is done

    def _nccl_event(self):
        """On NCCL the call returns once queued: it is done when the collective stream's work
        up to now is (None: done when the call returns, as for MPI, or inside a CUDA graph
        capture, where no event may be queried)."""
        stream = getattr(self.inner, "stream", None)
        if stream is None or _capturing(stream):
            return None
        return stream.record()


def _capturing(stream):
    try:
        import cupy
        return bool(cupy.cuda.get_current_stream().is_capturing() or stream.is_capturing())
    except Exception:                    # no capture API (an old CuPy, the fake): not capturing
        return False


class _WatchedHandle:
    def __init__(self, handle, watchdog, number):
        self.handle, self.watchdog, self.number = handle, watchdog, number

    def wait(self):
        self.handle.wait()
        self.watchdog.leave(self.number, getattr(self.handle, "event", None))


def _describe(array):
    shape = "x".join(f"{s:,}" for s in getattr(array, "shape", ()))
    return f"{getattr(array, 'dtype', type(array).__name__)}[{shape}]"
