"""
The contenders: our queues, the peers, and the bare transport floors.

Each contender has an *adapter* with one small interface, so that every
workload is written once per family:

- ``async`` adapters (ours, Twisted's ``deferToThread``) need the reactor
  running; ``call`` returns a Deferred.
- ``sync`` adapters (``concurrent.futures``, pebble) need no reactor;
  ``submit`` returns a ``concurrent.futures.Future``.
- ``floor`` adapters are the bare transports, with their own workload code in
  `benchmarks.workloads`.

Imports of optional or not-yet-written modules happen in `Contender.check` and
the adapters' ``start``, never at import time, so that a missing contender
shows as "n/a" with a reason instead of breaking the suite.
"""

from __future__ import annotations

import importlib
import multiprocessing
import pickle
import queue
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import payloads

WORKERS = 2


class NotApplicable(Exception):
    """This workload (or one of its figures) does not apply to this contender."""


@dataclass(frozen=True)
class Contender:
    """A column of the table."""

    key: str
    label: str
    kind: str  # "thread", "process" or "reactor": what it is compared with
    role: str  # "ours", "peer" or "floor"
    family: str  # "async", "sync" or "floor"
    make: Callable[[], Any]
    requires: tuple[tuple[str, str], ...] = ()  # (module, attribute) pairs
    hint: str = ""
    only: tuple[str, ...] = ()  # the workloads measured, if not all

    def check(self) -> str | None:
        """None if I can run here, else why not (a reason for "n/a")."""
        for module, attribute in self.requires:
            try:
                getattr(importlib.import_module(module), attribute)
            except (ImportError, AttributeError) as e:
                hint = f"; {self.hint}" if self.hint else ""
                return f"{module}.{attribute} is not available ({type(e).__name__}: {e}){hint}"
        return None


def openGate(path: str) -> None:
    """Release the workers waiting in `payloads.gate` on *path*."""
    with open(path, "w"):
        pass


# ------------------------------------------------------------------ async: ours


class OursAdapter:
    """One of our TaskQueues."""

    hasPriorities = True
    streams = True
    busyBlocksAll = False

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.q: Any = None

    def start(self) -> Any:
        self.q = self.factory()
        return getattr(self.q, "d", None)

    def call(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self.q.call(f, *args, **kw)

    def busyCall(self, seconds: float) -> Any:
        """Occupy one worker for *seconds*; fires with when that ended."""
        return self.q.call(payloads.busy, seconds)

    def gateCalls(self, path: str) -> list[Any]:
        """Occupy every worker until `openGate`; each fires with when it came free."""
        return [self.call(payloads.gate, path) for _ in range(WORKERS)]

    def openGate(self, path: str) -> None:
        openGate(path)

    def queued(self) -> int:
        """How many calls wait in the queue (not yet handed to a worker)."""
        from asynqueue import TaskQueue

        for name in ("counts", "stats"):  # the base class's counts, by either name
            method = getattr(TaskQueue, name, None)
            counts = method(self.q) if method is not None else None
            if isinstance(counts, dict):
                return int(counts["queued"])
        return len(self.q._scheduler)

    def stop(self) -> Any:
        return self.q.shutdown()

    def startupOnce(self) -> Any:
        """Create a queue, make one call, shut it down."""
        from twisted.internet.defer import inlineCallbacks

        @inlineCallbacks
        def once() -> Any:
            q = self.factory()
            yield q.call(payloads.noop)
            yield q.shutdown()

        return once()


class NullAdapter(OursAdapter):
    """NullQueue: one worker in the reactor thread."""

    busyBlocksAll = True

    def busyCall(self, seconds: float) -> Any:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        return self.q.call(deferLater, reactor, seconds, time.monotonic_ns)

    def gateCalls(self, path: str) -> list[Any]:
        from twisted.internet.defer import Deferred

        self._gate: Deferred[int] = Deferred()
        return [self.q.call(lambda: self._gate)]

    def openGate(self, path: str) -> None:
        self._gate.callback(time.monotonic_ns())


def threadQueue() -> Any:
    from asynqueue import ThreadQueue

    return ThreadQueue(WORKERS, returnFailure=True)


def processQueue() -> Any:
    from asynqueue.process import ProcessQueue

    return ProcessQueue(WORKERS, returnFailure=True)


def nullQueue() -> Any:
    from asynqueue import NullQueue

    return NullQueue(returnFailure=True)


# ------------------------------------------------------------------ async: Twisted


class DeferToThreadAdapter:
    """``twisted.internet.threads.deferToThread`` on the reactor's pool, sized 2."""

    hasPriorities = False
    streams = False

    def start(self) -> None:
        from twisted.internet import reactor

        reactor.suggestThreadPoolSize(WORKERS)
        reactor.getThreadPool().adjustPoolsize(WORKERS, WORKERS)

    def call(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        from twisted.internet.threads import deferToThread

        return deferToThread(f, *args)

    def gateCalls(self, path: str) -> list[Any]:
        return [self.call(payloads.gate, path) for _ in range(WORKERS)]

    def openGate(self, path: str) -> None:
        openGate(path)

    def stop(self) -> None:
        return None

    def startupOnce(self) -> Any:
        """A fresh 2-thread ThreadPool: start, one deferToThreadPool, stop."""
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThreadPool
        from twisted.python.threadpool import ThreadPool

        pool = ThreadPool(WORKERS, WORKERS, "bench")
        pool.start()
        d = deferToThreadPool(reactor, pool, payloads.noop)
        d.addBoth(lambda r: (pool.stop(), r)[1])
        return d


# ------------------------------------------------------------------ async: reactor floors


class TwistedThreadFloor:
    """
    The least a Twisted program pays to run a call in a thread and get a
    Deferred back: one thread takes ``(f, args, Deferred)`` from a
    ``SimpleQueue`` and answers each through ``reactor.callFromThread``.
    No pool, no scheduling, no batching.
    """

    def start(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        answer = self.reactor.callFromThread
        while (job := self.inbox.get()) is not _STOP:
            f, args, d = job
            try:
                answer(d.callback, f(*args))
            except Exception as e:
                answer(d.errback, e)

    def call(self, f: Callable[..., Any], *args: Any) -> Any:
        from twisted.internet.defer import Deferred

        d: Any = Deferred()
        self.inbox.put((f, args, d))
        return d

    def stop(self) -> None:
        self.inbox.put(_STOP)
        self.thread.join()


_LENGTH = struct.Struct("!i")  # (a `multiprocessing.Connection` frame's header)


class TwistedPipeFloor:
    """
    The Pipe floor read and written by the reactor: the same child, each
    message pickled, one Deferred per call, fired in order as replies come.

    A call is written at once when nothing waits to be written; calls made
    while something does (a burst within one reactor turn) go out together
    at the end of the turn, and a reply-laden read is handled whole. That
    is the least an event loop pays on top of the blocking floor: a
    readiness wake-up instead of a blocking read, and a turn of the loop.
    """

    def start(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=_pipeServe, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.sock = socket.socket(fileno=self.conn.fileno())
        self.sock.setblocking(False)
        self.out = bytearray()
        self.inbuf = bytearray()
        self.waiting: deque[Any] = deque()
        self.flushDue = False
        self.writing = False
        reactor.addReader(self)

    def call(self, f: Callable[..., Any], *args: Any) -> Any:
        from twisted.internet.defer import Deferred

        data = pickle.dumps((f, args, False), pickle.HIGHEST_PROTOCOL)
        self.out += _LENGTH.pack(len(data))
        self.out += data
        if not self.flushDue:
            self.flushDue = True
            if not self.writing:
                self.doWrite()
            self.reactor.callLater(0, self._endTurn)
        d: Any = Deferred()
        self.waiting.append(d)
        return d

    def _endTurn(self) -> None:
        self.flushDue = False
        if self.out and not self.writing:
            self.doWrite()

    def doWrite(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            sent = 0
        del self.out[:sent]
        if self.out and not self.writing:
            self.writing = True
            self.reactor.addWriter(self)
        elif not self.out and self.writing:
            self.writing = False
            self.reactor.removeWriter(self)

    def doRead(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        buf = self.inbuf
        buf += data
        start, size = 0, len(buf)
        while size - start >= 4:
            (n,) = _LENGTH.unpack_from(buf, start)
            if size - start - 4 < n:
                break
            reply = pickle.loads(buf[start + 4 : start + 4 + n])
            start += 4 + n
            self.waiting.popleft().callback(reply)
        del buf[:start]

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "TwistedPipeFloor"

    def connectionLost(self, reason: Any) -> None:
        pass

    def stop(self) -> None:
        self.reactor.removeReader(self)
        self.reactor.removeWriter(self)
        self.sock.setblocking(True)
        self.sock.detach()  # (the Connection owns the descriptor)
        self.conn.send(_STOP)
        self.process.join()
        self.conn.close()


# ------------------------------------------------------------------ sync peers


class ExecutorAdapter:
    """A ``concurrent.futures``-style pool."""

    hasPriorities = False
    streams = False

    def __init__(self, factory: Callable[[], Any], stopper: Callable[[Any], None]) -> None:
        self.factory = factory
        self.stopper = stopper
        self.pool: Any = None

    def start(self) -> None:
        self.pool = self.factory()

    def submit(self, f: Callable[..., Any], *args: Any) -> Any:
        return self.pool.submit(f, *args)

    def gateCalls(self, path: str) -> list[Any]:
        return [self.submit(payloads.gate, path) for _ in range(WORKERS)]

    def openGate(self, path: str) -> None:
        openGate(path)

    def stop(self) -> None:
        self.stopper(self.pool)

    def startupOnce(self) -> None:
        pool = self.factory()
        pool.submit(payloads.noop).result()
        self.stopper(pool)


class PebbleAdapter(ExecutorAdapter):
    """pebble's ProcessPool: ``schedule`` instead of ``submit``."""

    def submit(self, f: Callable[..., Any], *args: Any) -> Any:
        return self.pool.schedule(f, args)

    def startupOnce(self) -> None:
        pool = self.factory()
        pool.schedule(payloads.noop).result()
        self.stopper(pool)


def threadPoolExecutor() -> Any:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(WORKERS)


def processPoolExecutor() -> Any:
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(WORKERS)


def shutdownExecutor(pool: Any) -> None:
    pool.shutdown(wait=True)


def pebblePool() -> Any:
    from pebble import ProcessPool

    return ProcessPool(max_workers=WORKERS)


def stopPebble(pool: Any) -> None:
    pool.close()
    pool.join()


# ------------------------------------------------------------------ floors

_STOP = None
_STREAM_END = "__end__"


class QueueFloor:
    """Two ``queue.Queue`` objects between the caller and one worker thread."""

    def start(self) -> None:
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        inbox, outbox = self.inbox, self.outbox
        while True:
            message = inbox.get()
            if message is _STOP:
                return
            f, args, streaming = message
            if streaming:
                for item in f(*args):
                    outbox.put(item)
                outbox.put(_STREAM_END)
            else:
                outbox.put(f(*args))

    def send(self, f: Callable[..., Any], *args: Any, streaming: bool = False) -> None:
        self.inbox.put((f, args, streaming))

    def receive(self) -> Any:
        return self.outbox.get()

    def stop(self) -> None:
        self.inbox.put(_STOP)
        self.thread.join()


def _pipeServe(conn: Any) -> None:
    """The child of `PipeFloor`: one pickled message in, one (or a stream) out."""
    while True:
        message = conn.recv()
        if message is _STOP:
            conn.close()
            return
        f, args, streaming = message
        if streaming:
            for item in f(*args):
                conn.send(item)
            conn.send(_STREAM_END)
        else:
            conn.send(f(*args))


class PipeFloor:
    """A ``multiprocessing.Pipe`` to one child process; each message pickled."""

    def start(self) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=_pipeServe, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def send(self, f: Callable[..., Any], *args: Any, streaming: bool = False) -> None:
        self.conn.send((f, args, streaming))

    def receive(self) -> Any:
        return self.conn.recv()

    def stop(self) -> None:
        self.conn.send(_STOP)
        self.process.join()
        self.conn.close()


# ------------------------------------------------------------------ the registry

CONTENDERS: dict[str, Contender] = {
    c.key: c
    for c in [
        Contender(
            "aq-thread",
            "ThreadQueue(2)",
            "thread",
            "ours",
            "async",
            lambda: OursAdapter(threadQueue),
            (("asynqueue", "ThreadQueue"),),
        ),
        Contender(
            "aq-process",
            "ProcessQueue(2)",
            "process",
            "ours",
            "async",
            lambda: OursAdapter(processQueue),
            (("asynqueue.process", "ProcessQueue"),),
            "process workers have not landed yet",
        ),
        Contender(
            "aq-null",
            "NullQueue",
            "reactor",
            "ours",
            "async",
            lambda: NullAdapter(nullQueue),
            (("asynqueue", "NullQueue"),),
        ),
        Contender(
            "tpe",
            "ThreadPoolExecutor(2)",
            "thread",
            "peer",
            "sync",
            lambda: ExecutorAdapter(threadPoolExecutor, shutdownExecutor),
        ),
        Contender(
            "dtt",
            "deferToThread(2)",
            "thread",
            "peer",
            "async",
            DeferToThreadAdapter,
        ),
        Contender(
            "ppe",
            "ProcessPoolExecutor(2)",
            "process",
            "peer",
            "sync",
            lambda: ExecutorAdapter(processPoolExecutor, shutdownExecutor),
        ),
        Contender(
            "pebble",
            "pebble ProcessPool(2)",
            "process",
            "peer",
            "sync",
            lambda: PebbleAdapter(pebblePool, stopPebble),
            (("pebble", "ProcessPool"),),
            'install it with pip install -e ".[bench]"',
        ),
        Contender(
            "floor-queue",
            "queue.Queue floor",
            "thread",
            "floor",
            "floor",
            QueueFloor,
        ),
        Contender(
            "floor-pipe",
            "Pipe floor",
            "process",
            "floor",
            "floor",
            PipeFloor,
        ),
        Contender(
            "floor-tw-thread",
            "Twisted thread floor",
            "thread",
            "floor",
            "async",
            TwistedThreadFloor,
            only=("dispatch", "latency"),
        ),
        Contender(
            "floor-tw-pipe",
            "Twisted Pipe floor",
            "process",
            "floor",
            "async",
            TwistedPipeFloor,
            only=("dispatch", "latency"),
        ),
    ]
}
