"""
`WireWorker`: a worker whose tasks run on a remote `WireServer`.

The worker keeps one connection to its server, opened (and reopened) by
itself. It speaks the protocol of process workers (`WireClient`): calls
pickled here go out in batches, up to a window of them in flight; results,
errors and iterator batches come back.

Connection life cycle
=====================

::

    connecting ─► handshake ─► open ─► lost ─► (back-off) connecting ...
                     │                          └─► gives up after giveUpAfter s: resigns
                     └─► refused (wrong key): resigns

- While it is not connected, the worker refuses tasks on the spot (an
  innocent status ``d``: the queue re-queues them free of charge), and the
  Deferred it returns fires only once it is connected again, so the queue
  gives it nothing meanwhile. Updates are held and sent on connection.
- When the connection drops, every task in flight is reported lost (status
  ``d``: the queue re-runs it once, then fails it with
  `errors.WorkerLost`); tasks not yet written are innocent. Iterators fail.
- Persistent updates are replayed on every new connection, before any task.
- A series runs in sequence on the server too: each of its calls goes out
  with the series' *lane* (a number made from its hash), and the server
  starts a lane's calls one at a time, in order. So the worker
  ``runsInOrder`` for series: the queue hands it a series' next calls while
  one runs, and they cross the network in batches, not one round trip per
  call. On a timeout the calls of the series sent after the one timed out
  come back unrun (innocent), so that its retry runs first.
- After ``giveUpAfter`` seconds without a connection, or when the server
  refuses the key, the worker resigns: its queue detaches it.

``stop()`` and ``crash()`` never wait for a server that is gone.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import random
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import errors
from .._core._named import UniverseMethod
from .._core._queue import TaskQueue
from .._core._task import Task
from .._core._window import PipelineWindow
from .._iter._base import BATCH_ITEMS
from .._support._status import Status
from .._wire import _auth
from .._wire._auth import HANDSHAKE_TIMEOUT
from .._wire._client import WireClient
from .._wire._codec import (
    ABANDON,
    AUTH,
    EXIT,
    FLAG_EPHEMERAL,
    FLAG_RAW,
    FLAG_STARTED,
    FLAG_UNIVERSE,
    FLAG_UPDATE,
    HELLO,
    LANE_SHIFT,
    PING,
    PONG,
    WIRE_VERSION,
    dumpsCall,
    dumpsSmall,
)
from .._wire._framing import Message, encode
from .._wire._protocol import DEFAULT_MAX_FRAME, FrameProtocol, FrameReceiver
from ..interfaces import IWorker

__all__ = ["GIVE_UP_AFTER", "RemoteQueue", "UniverseMethod", "WireWorker"]

log = logging.getLogger("asynqueue")

#: Most tasks a worker keeps in flight on its server.
REMOTE_MAX_WINDOW = 128
#: Seconds without a connection after which a worker resigns.
GIVE_UP_AFTER = 60.0
#: First and longest pause between connection attempts (seconds).
RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 2.0
#: Seconds a graceful close may take before the connection is cut.
CLOSE_GRACE = 2.0
#: While calls wait on a server, it is asked this often whether it is there
#: (PING); a connection that heard nothing for HEARTBEAT_MISSES of these
#: pauses in a row is closed, its calls reported lost (a frozen server, or
#: a host gone without a word, which TCP alone would notice after hours).
HEARTBEAT = 10.0
HEARTBEAT_MISSES = 3


def _lane(series: Hashable) -> int:
    """
    The lane of *series* (1 to 2**32): two series that share one only run
    one after the other on the server, which is still right.
    """
    return (hash(series) & 0xFFFFFFFF) + 1


def _isUniverse(obj: Any) -> bool:
    from ._universe import WireWorkerUniverse

    return isinstance(obj, WireWorkerUniverse) or (
        isinstance(obj, type) and issubclass(obj, WireWorkerUniverse)
    )


class _ServerLink(WireClient, FrameReceiver):
    """One connection of a `WireWorker` to its server."""

    errorType = errors.WorkerError
    orderedStart = False

    def __init__(self, worker: WireWorker) -> None:
        WireClient.__init__(self, worker, worker._reactor)
        self.state = "challenge"  # -> proof -> hello -> open
        self.info: dict[str, Any] = {}
        self.fatal = False  # closed for a reason that retrying cannot mend
        self._serverNonce = b""
        self._clientNonce = b""
        self._timer: Any = None
        # The heartbeat (see HEARTBEAT): its timer, whether anything came
        # since it last looked, and how many pauses in a row were silent.
        self._beat: Any = None
        self._heard = False
        self._silent = 0
        self._unsent = 0  # bytes still queued for it at the last look
        self._read = 0  # bytes read from it at the last look

    def __repr__(self) -> str:
        return f"<WireWorker connection to {self.worker.description} {self.state}>"

    def opened(self) -> None:
        self._timer = self.reactor.callLater(self.worker.handshakeTimeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        self.close(errors.WireError("the server did not complete the handshake in time"))

    def protocolError(self, reason: Exception) -> None:
        if self.state == "open":
            log.warning("WireWorker: closing the connection to %s: %s", self.peer, reason)

    def lost(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None
        self.unscheduleSend()
        self.worker._lost(self, self.closeReason or reason.value)

    # ------------------------------------------------------------ messages

    def handle(self, message: Message) -> None:
        if self.state == "open":
            self._heard = True
            if message.kind == PONG:
                return
            if not self.handleMessage(message):
                raise errors.WireError(f"unexpected message kind {message.kind} from the server")
            return
        try:
            self._handshake(message)
        except errors.WireError:
            self.fatal = True
            raise

    def _handshake(self, message: Message) -> None:
        key = self.worker._key
        state = self.state
        if state == "hello":
            if message.kind != HELLO:
                raise errors.WireError(f"expected HELLO, got a frame of kind {message.kind}")
            self.info = pickle.loads(message.parts[0])
            version = self.info.get("version") if isinstance(self.info, dict) else None
            if version != WIRE_VERSION:
                raise errors.WireError(
                    f"the server speaks wire protocol {version!r}, this client"
                    f" {WIRE_VERSION}: install the same asynqueue version on both sides"
                )
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self.state = "open"
            self.helloed = True
            self.channel = self.link
            interval = self.worker.heartbeat
            if interval and self.info.get("ping"):
                self._beat = self.reactor.callLater(interval, self._pulse, interval)
            self.worker._opened(self)
            return
        if message.kind != AUTH:
            raise errors.WireError(f"expected the handshake, got a frame of kind {message.kind}")
        if state == "challenge":
            self._serverNonce = _auth.checkChallenge(message.parts)
            self._clientNonce, parts = _auth.respond(key, self._serverNonce)
            self.send(encode(AUTH, parts))
            self.state = "proof"
        elif state == "proof":
            _auth.checkProof(key, self._serverNonce, self._clientNonce, message.parts)
            self.state = "hello"
            self.link.maxLength = self.worker.maxFrame

    def _pulse(self, interval: float) -> None:
        """The heartbeat: ask a server that calls wait on; close one that stays silent."""
        self._beat = None
        if self.state != "open" or not self.connected:
            return
        waiting = bool(self.inflight or self.firstBatch or self.itemWaiters)
        # A large call still going out: our PING waits behind it, but the
        # server is there if it takes our bytes (a frozen one soon stops).
        unsent = getattr(self.link, "bufferedBytes", 0)
        taking = unsent < self._unsent
        self._unsent = unsent
        # A large result still coming in: no message yet, but bytes.
        read = getattr(self.link, "bytesRead", 0)
        arriving = read != self._read
        self._read = read
        if self._heard or taking or arriving or not waiting:
            self._silent = 0
        else:
            self._silent += 1
            if self._silent >= HEARTBEAT_MISSES:
                self.close(
                    errors.WireError(f"the server did not answer for {self._silent * interval:g} s")
                )
                return
        self._heard = False
        if waiting:
            self.send(encode(PING))
        self._beat = self.reactor.callLater(interval, self._pulse, interval)

    # ------------------------------------------------------------ WireClient hooks

    def settle(self) -> None:
        self.worker._checkReady()
        self.worker._checkStop()

    def location(self) -> str:
        return f"on {self.worker.description}"


@implementer(IWorker)
class WireWorker(PipelineWindow):
    """
    A worker that runs tasks on a remote `WireServer`.

    Callables, arguments and results are pickled (cloudpickle for lambdas,
    closures and ``__main__`` functions), as for process workers, so the
    server must be able to import what they refer to. An iterator result
    stays on the server and comes back in batches as a `Deferator`.

    Args:
        description: a Twisted client endpoint description of the server
            (``tcp:host:7341``, ``unix:/path/to.sock``,
            ``ssl:host:7341:caCertsDir=...``), or an ``IStreamClientEndpoint``.
        key: the shared secret (bytes or str); by default the
            ``ASYNQUEUE_KEY`` environment variable, else none.
        series: series this worker is qualified for, besides
            ``cQualified = ['wire', 'remote']``.
        raw: return iterator results as-is (they must then pickle).
        reconnect: reconnect when the connection is lost (else resign).
        giveUpAfter: resign after this many seconds without a connection
            (None: never).
        handshakeTimeout: seconds the server has to answer the handshake.
        maxFrame: the largest frame accepted from the server.
        maxWindow: most tasks in flight at once.
        heartbeat: while calls wait on the server, ask it this often (seconds)
            whether it is there; after `HEARTBEAT_MISSES` silent pauses the
            connection is closed and its calls reported lost (None: never).
        reactor: the reactor (the global one by default).

    The worker connects at once, in the background; see `whenConnected`.
    """

    cQualified = ["wire", "remote"]
    reportsStart = True
    batchItems = BATCH_ITEMS

    def __init__(
        self,
        description: Any,
        key: bytes | str | None = None,
        series: list[Hashable] | tuple[Hashable, ...] = (),
        raw: bool = False,
        *,
        reconnect: bool = True,
        giveUpAfter: float | None = GIVE_UP_AFTER,
        handshakeTimeout: float = HANDSHAKE_TIMEOUT,
        maxFrame: int = DEFAULT_MAX_FRAME,
        maxWindow: int = REMOTE_MAX_WINDOW,
        heartbeat: float | None = HEARTBEAT,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if _isUniverse(description):
            # The original's form, WireWorker(universe, description): the
            # universe lives on the server; here it is not needed.
            description, key = key, None
        self._reactor = reactor
        self.description = description
        self._key = _auth.toKey(key if key is not None else _auth.loadKey())
        self.iQualified = list(series)
        self.raw = raw
        self.reconnect = reconnect
        self.giveUpAfter = giveUpAfter
        self.handshakeTimeout = handshakeTimeout
        self.heartbeat = heartbeat
        self.maxFrame = maxFrame
        self.maxWindow = max(1, maxWindow)
        if isinstance(description, str):
            from twisted.internet.endpoints import clientFromString

            self._endpoint = clientFromString(reactor, description)
        else:
            self._endpoint = description
        self.serverInfo: dict[str, Any] = {}
        self._taskIDs = itertools.count(1)
        self._conn: _ServerLink | None = None
        self._attempt: _ServerLink | None = None
        self._connectD: Deferred[Any] | None = None
        self._retryCall: Any = None
        self._delay = RETRY_DELAY
        self._since = reactor.seconds()
        self._updates: list[tuple[list[Any], int]] = []
        self._held: list[tuple[Task, list[Any], int]] = []
        self._readyWaiters: deque[Deferred[None]] = deque()
        self._connectWaiters: list[Deferred[dict[str, Any]]] = []
        self._avgRun: float | None = None
        self._resignator: Callable[[], Any] | None = None
        self._stopping = False
        self._stopD: Deferred[None] | None = None
        self._closing = False
        self._broken: str | None = None
        self._connect()

    def __repr__(self) -> str:
        state = "connected" if self._conn is not None else self._broken or "not connected"
        return f"<WireWorker {self.description} {state}>"

    # ------------------------------------------------------------ IWorker

    def setResignator(self, callableObject: Callable[[], Any]) -> None:
        self._resignator = callableObject

    def run(self, task: Task) -> Deferred[None] | None:
        """Send *task* to the server; None (or a Deferred) when I can take another."""
        if self._stopping or self._broken is not None:
            return self._refuse(task, self._broken or "the wire worker is stopping")
        f, args, kw = task.callTuple
        raw = self.raw if task.raw is None else task.raw
        flags = FLAG_RAW if raw else 0
        try:
            if isinstance(f, UniverseMethod):
                flags |= FLAG_UNIVERSE
                parts = dumpsCall(f.name, args, kw)
            else:
                parts = dumpsCall(f, args, kw)
        except Exception:
            task.callback((Status.ERROR, Failure()))
            return None
        if task.update is not None:
            flags |= FLAG_UPDATE | (FLAG_EPHEMERAL if task.update == "ephemeral" else 0)
        if task.timeout is not None:
            flags |= FLAG_STARTED
        conn = self._conn
        series = task.series
        if (
            series is not None
            and task.update is None
            and self.runsInOrder  # (connected, to a server with lanes)
            and getattr(task.owner, "inSequence", True)
        ):
            flags |= _lane(series) << LANE_SHIFT
        if conn is None:
            if task.update is not None:
                self._held.append((task, parts, flags))  # sent on connection
            else:
                task.innocent = True
                task.callback((Status.NOT_RUN, f"not connected to {self.description}"))
            return self._waitForRoom()
        self._send(conn, task, parts, flags)
        if self._hasRoom():
            return None
        return self._waitForRoom()

    @property
    def runsInOrder(self) -> bool:
        """True while connected to a server that runs each series' calls in sequence (lanes)."""
        conn = self._conn
        return conn is not None and bool(conn.info.get("lanes"))

    def timedOut(self, task: Task) -> None:
        """
        The queue gave up on *task* after a timeout: the server cancels it in
        its own queue, and the calls of its series sent after it come back
        unrun (innocent), to run after its retry.
        """
        self._giveUpOn(task, handBack=True)

    def cancelled(self, task: Task) -> None:
        """The caller cancelled *task*: the server cancels it; its series goes on."""
        self._giveUpOn(task, handBack=False)

    def _giveUpOn(self, task: Task, handBack: bool) -> None:
        conn = self._conn
        if conn is None:
            return
        taskID = None
        behind: list[Any] = []  # attempts of its series sent after it
        for attempt in conn.inflight.values():
            if taskID is not None:
                other = attempt.task
                if other is not None and other.series == task.series:
                    behind.append(attempt)
            elif attempt.task is task:
                taskID = attempt.taskID
                if not (handBack and task.series is not None and self.runsInOrder):
                    break
        if taskID is None:
            for attempt, _ in conn.firstBatch.values():
                if attempt.task is task:
                    taskID = attempt.taskID
                    break
        if taskID is None:
            return
        given = [taskID, *(attempt.taskID for attempt in behind)]
        for lost in given:
            conn.forget(lost)
        if conn.connected:
            conn.flush()  # the calls themselves first, if still in the outbox
            conn.send(encode(ABANDON, [dumpsSmall(given)]))
        for attempt in behind:
            attempt.task.innocent = True
            attempt.task.callback((Status.NOT_RUN, "a call before it in its series timed out"))
        self._checkReady()

    def stop(self) -> Deferred[None]:
        """
        Finish the tasks in hand, then close the connection. Fires at once if
        there is no connection (nothing can finish then).
        """
        if self._stopD is None:
            self._stopping = True
            self._stopD = Deferred()
            self._cancelConnecting()
            self._dropHeld("the wire worker stopped")
            self._checkStop()
        d: Deferred[None] = Deferred()
        self._stopD.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def crash(self) -> list[Task]:
        """Close the connection now; returns the tasks not finished."""
        self._stopping = True
        self._cancelConnecting()
        unfinished = [task for task, _, _ in self._held]
        self._held = []
        conn, self._conn = self._conn, None
        if conn is not None:
            unfinished.extend(a.task for a in conn.abandon() if a.task is not None)
            conn.failIterators("the wire worker crashed")
            conn.abort()
        if self._stopD is None:
            self._stopD = Deferred()
        if not self._stopD.called:
            self._stopD.callback(None)
        return unfinished

    # ------------------------------------------------------------ public extras

    @property
    def connected(self) -> bool:
        """True while the connection is open and authenticated."""
        return self._conn is not None

    def whenConnected(self) -> Deferred[dict[str, Any]]:
        """
        Fires with the server's information (``workers``, ``pid``, ...) once
        connected; fails with `errors.AuthenticationFailed` if the server
        refuses the key, or `errors.WorkerError` if the worker gave up.
        """
        if self._conn is not None:
            return succeed(self.serverInfo)
        if self._broken is not None:
            return fail(self._brokenError())
        d: Deferred[dict[str, Any]] = Deferred()
        self._connectWaiters.append(d)
        return d

    @staticmethod
    def universeMethod(name: str) -> UniverseMethod:
        """The callable for the server universe's method *name*."""
        return UniverseMethod(name)

    # ------------------------------------------------------------ connection

    def _connect(self) -> None:
        self._retryCall = None
        if self._stopping or self._broken is not None:
            return
        from twisted.internet.endpoints import connectProtocol

        connection = _ServerLink(self)
        self._attempt = connection
        try:
            d = connectProtocol(self._endpoint, FrameProtocol(connection))
        except Exception:
            d = fail()
        self._connectD = d
        d.addCallbacks(self._tcpConnected, self._connectFailed, errbackArgs=(connection,))

    def _tcpConnected(self, protocol: Any) -> None:
        self._connectD = None

    def _connectFailed(self, failure: Failure, protocol: _ServerLink) -> None:
        self._connectD = None
        if self._attempt is protocol:
            self._attempt = None
        if failure.check(errors.AuthenticationFailed):
            self._giveUp(str(failure.value), failure.value)
            return
        log.debug("WireWorker: cannot connect to %s: %s", self.description, failure.value)
        self._retry()

    def _retry(self) -> None:
        if self._stopping or self._broken is not None or self._retryCall is not None:
            return
        if not self.reconnect:
            self._giveUp(f"the connection to {self.description} was lost")
            return
        away = self._reactor.seconds() - self._since
        if self.giveUpAfter is not None and away >= self.giveUpAfter:
            self._giveUp(f"could not connect to {self.description} for {away:.0f} seconds")
            return
        delay = self._delay * (0.8 + 0.4 * random.random())
        self._delay = min(MAX_RETRY_DELAY, self._delay * 2)
        self._retryCall = self._reactor.callLater(delay, self._connect)

    def _cancelConnecting(self) -> None:
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None
        attempt, self._attempt = self._attempt, None
        if self._connectD is not None:
            d, self._connectD = self._connectD, None
            d.addErrback(lambda _: None)
            d.cancel()
        if attempt is not None:
            attempt.close(errors.WireError("given up on"))  # at once, even mid-TLS-handshake

    def _opened(self, conn: _ServerLink) -> None:
        if self._attempt is conn:
            self._attempt = None
        if self._stopping or self._broken is not None:
            conn.close()
            return
        self._conn = conn
        self._delay = RETRY_DELAY
        self.serverInfo = conn.info
        log.info("WireWorker: connected to %s", self.description)
        for parts, flags in self._updates:
            conn.submit(None, parts, flags)
        held, self._held = self._held, []
        for task, parts, flags in held:
            self._send(conn, task, parts, flags)
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.callback(self.serverInfo)
        self._checkReady()

    def _lost(self, conn: _ServerLink, reason: Any) -> None:
        if conn is not self._conn:
            # A connection that never opened (or one given up on already).
            if self._attempt is conn:
                self._attempt = None
                if conn.fatal and isinstance(reason, errors.WireError):
                    self._giveUp(f"{self.description}: {reason}", reason)
                else:
                    self._retry()
            return
        self._conn = None
        self._since = self._reactor.seconds()
        text = f"lost the connection to {self.description}"
        why = str(reason) if reason is not None else ""
        if why:
            text = f"{text} ({why})"
        unsent = {taskID for taskID, _, _ in conn.outbox}
        attempts = conn.abandon()
        conn.failIterators(text)
        if not self._stopping:
            log.warning("WireWorker: %s", text)
        for attempt in attempts:
            task = attempt.task
            if task is None:
                continue
            if attempt.taskID in unsent:
                task.innocent = True
            task.callback((Status.NOT_RUN, text))
        if self._stopping:
            self._checkStop()
        else:
            self._retry()

    def _giveUp(self, why: str, error: Exception | None = None) -> None:
        if self._broken is not None:
            return
        self._broken = why
        self._brokenReason = error
        log.error("WireWorker gives up: %s", why)
        self._cancelConnecting()
        self._dropHeld(why)
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.errback(Failure(self._brokenError()))
        if self._resignator is not None:
            self._reactor.callLater(0, self._resignator)

    def _brokenError(self) -> Exception:
        error = getattr(self, "_brokenReason", None)
        if isinstance(error, errors.AuthenticationFailed):
            return errors.AuthenticationFailed(f"{self.description}: {error}")
        return errors.WorkerError(str(self._broken))

    def _dropHeld(self, why: str) -> None:
        held, self._held = self._held, []
        for task, _, _ in held:
            task.innocent = True
            task.callback((Status.NOT_RUN, why))

    # ------------------------------------------------------------ tasks

    def _send(self, conn: _ServerLink, task: Task, parts: list[Any], flags: int) -> None:
        conn.submit(task, parts, flags)
        if task.update == "persistent":
            self._updates.append((parts, flags))  # replayed on every new connection

    def _refuse(self, task: Task, why: str) -> Deferred[None]:
        """Hand *task* back unrun; the Deferred never fires (see `ProcessWorker`)."""
        task.innocent = True
        task.callback((Status.NOT_RUN, why))
        return Deferred()

    def _waitForRoom(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._readyWaiters.append(d)
        return d

    # The pipelining window (PipelineWindow): no link, no room; a server
    # runs as many tasks at once as it has workers.
    _roomWithoutClient = False

    def _activeClient(self) -> _ServerLink | None:
        return self._conn

    def _parallelism(self) -> int:
        return max(1, int(self.serverInfo.get("workers", 1)))

    def _checkStop(self) -> None:
        stopD = self._stopD
        if not self._stopping or stopD is None or stopD.called or self._closing:
            return
        conn = self._conn
        if conn is None:
            stopD.callback(None)
            return
        if conn.inflight or conn.firstBatch:
            return
        self._conn = None
        self._closing = True
        conn.flush()
        conn.failIterators("the wire worker stopped")
        conn.send(encode(EXIT))
        conn.close()
        # Fires once closed (a TLS close takes a round trip); cut short if slow.
        timer = self._reactor.callLater(CLOSE_GRACE, conn.abort)

        def closed(_: Any) -> None:
            if timer.active():
                timer.cancel()
            if not stopD.called:
                stopD.callback(None)

        conn.whenClosed().addBoth(closed)


class RemoteQueue(TaskQueue):
    """
    A `TaskQueue` with *N* `WireWorker` connections to one server.

    A string callable names a method of the server's universe:
    ``q.call('add', 1, 2)``.

    Args:
        description: the server's client endpoint description (see `WireWorker`).
        N: how many connections (workers).
        key: the shared secret (default: the ``ASYNQUEUE_KEY`` environment variable).
        series, raw, reconnect, giveUpAfter, handshakeTimeout, maxFrame,
            maxWindow, heartbeat: passed to each `WireWorker`.
        **kw: `TaskQueue` keywords (``timeout``, ``returnFailure``, ...).
    """

    def __init__(
        self,
        description: Any,
        N: int = 2,
        key: bytes | str | None = None,
        *,
        series: list[Hashable] | tuple[Hashable, ...] = (),
        raw: bool = False,
        reconnect: bool = True,
        giveUpAfter: float | None = GIVE_UP_AFTER,
        handshakeTimeout: float = HANDSHAKE_TIMEOUT,
        maxFrame: int = DEFAULT_MAX_FRAME,
        maxWindow: int = REMOTE_MAX_WINDOW,
        heartbeat: float | None = HEARTBEAT,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if N < 1:
            raise ValueError(f"a RemoteQueue needs at least one connection, not {N!r}")
        reactor = self._reactor if hasattr(self._reactor, "connectTCP") else None
        for _ in range(N):
            self.attachWorker(
                WireWorker(
                    description,
                    key,
                    series,
                    raw,
                    reconnect=reconnect,
                    giveUpAfter=giveUpAfter,
                    handshakeTimeout=handshakeTimeout,
                    maxFrame=maxFrame,
                    maxWindow=maxWindow,
                    heartbeat=heartbeat,
                    reactor=reactor,
                )
            )

    def newTask(self, func: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        if isinstance(func, str):
            func = UniverseMethod(func)
        return super().newTask(func, args, kw)

    def update(self, func: Any, *args: Any, **kw: Any) -> Deferred[list[Any]]:
        """`TaskQueue.update`; a string names a universe method."""
        if isinstance(func, str):
            func = UniverseMethod(func)
        return super().update(func, *args, **kw)

    def whenConnected(self) -> Deferred[list[dict[str, Any]]]:
        """Fires once every worker is connected (with their server information)."""
        d = gatherResults(
            [w.whenConnected() for w in self.workers() if isinstance(w, WireWorker)],
            consumeErrors=True,
        )
        return d.addErrback(lambda f: f.value.subFailure if f.check(FirstError) else f)
