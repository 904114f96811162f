"""
One client's conversation with a `WireServer`: `_ClientSession` (the handshake,
calls, iterator results, abandoned calls, back-pressure, and the flushing of
results in bursts), the records it keeps of its calls (`_Served`) and
iterators (`_ServedIterator`), and the encoding of errors and iterator items
for the client.

Lanes: the calls whose flags carry one lane number (``flags >> LANE_SHIFT``,
see `asynqueue._wire._codec`) run one at a time, in the order they came: a
client's series. They go to the server's queue as a series of their own
(``("wire", connID, lane)``), which runs them in sequence, and a worker
that runs its tasks in order (a process worker) takes the next ones while
one runs. A universe method of a lane (run here, not in the queue) waits
until the lane's calls before it are over, and the lane's later calls wait
for it (`_Lane`). So the client sends a series' next calls without waiting
for each result: one network round trip per batch instead of per call (the
server's HELLO says ``"lanes": True``). Each lane shares the server's
workers as a client's own flow does. Calls without a lane run side by side
in their connection's flow, as before.

See `asynqueue._remote._server` for the design of the server.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from .. import errors
from .._iter._base import isIterator
from .._iter._deferator import Deferator
from .._process._child import FIRST_BATCH
from .._support._status import Status
from .._wire import _auth
from .._wire._client import BurstSender
from .._wire._codec import (
    ABANDON,
    AUTH,
    CALLS,
    CLOSE,
    EXIT,
    FLAG_EPHEMERAL,
    FLAG_RAW,
    FLAG_SHARED_RESULT,
    FLAG_STARTED,
    FLAG_UNIVERSE,
    FLAG_UPDATE,
    HELLO,
    LANE_SHIFT,
    NEXT,
    PING,
    PONG,
    RESULTS,
    STARTED,
    WIRE_ERROR,
    WIRE_ITERATOR,
    WIRE_NONE,
    WIRE_RESULT,
    WIRE_VERSION,
    dumps,
    dumpsError,
    dumpsSmall,
    loads,
)
from .._wire._framing import Message, encode
from .._wire._protocol import FrameReceiver
from .._wire._relay import CancelledCall, PickledCall, PickledError, PickledResult
from .._wire._streams import encodeItems as _encodeItems

if TYPE_CHECKING:
    from .._core._queue import TaskQueue
    from ._universe import WireWorkerUniverse

__all__ = ["HIGH_WATER", "PROTOCOL_VERSION", "encodeItems", "errorParts"]

log = logging.getLogger("asynqueue")


class ServerSide(Protocol):
    """
    What a connection uses of its server (`asynqueue._remote._server.WireServer`),
    named here so that the server module may import this one and not the
    other way round.
    """

    _reactor: Any
    _key: bytes
    _connections: set[_ClientSession]
    _unauthenticated: int
    maxUnauthenticated: int
    handshakeTimeout: float
    maxFrame: int
    queue: TaskQueue | None
    allow: list[str] | None
    universe: WireWorkerUniverse | None

    def checkAllowed(self, f: Any) -> None: ...

    def _firstUpdate(self, parts: list[Any]) -> bool: ...


#: Version of the wire conversation after the handshake.
PROTOCOL_VERSION = WIRE_VERSION
#: Bytes waiting to be written to a client above which its input is paused.
HIGH_WATER = 8 * 1024 * 1024

_NOTHING: Any = object()


def _typeName(exc: BaseException) -> str | None:
    name = getattr(exc, "typeName", "")
    return name if isinstance(exc, errors.WorkerError) and name else None


def errorParts(failure: Failure | BaseException, note: str = "") -> list[Any]:
    """The parts of an error report (``dumpsError``) for the client."""
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, PickledError):
        return exc.parts  # the child's own report, as it came
    remote = getattr(exc, "remoteTraceback", "")
    if remote:
        text = str(remote)
    elif isinstance(failure, Failure):
        try:
            text = failure.getTraceback()
        except Exception:
            text = f"{type(exc).__name__}: {exc}"
    else:
        text = None
    return dumpsError(exc, note, text, _typeName(exc))  # type: ignore[arg-type]


def encodeItems(iterID: int, items: list[Any], more: bool, error: Any) -> tuple[list[Any], bool]:
    """An ITEMS message; items that do not pickle end the iteration with an error."""
    return _encodeItems(iterID, items, more, error, errorParts)


class _Served:
    """A call this server is running for a client."""

    __slots__ = (
        "abandoned",
        "d",
        "flags",
        "lane",
        "pc",
        "receivedAt",
        "serverTask",
        "startedAt",
        "taskID",
    )

    def __init__(self, taskID: int, flags: int, receivedAt: float) -> None:
        self.taskID = taskID
        self.flags = flags
        self.receivedAt = receivedAt
        self.startedAt: float | None = None
        self.pc: PickledCall | None = None
        self.serverTask: Any = None  # the local worker's Task, once started
        self.d: Deferred[Any] | None = None  # the server queue's call, or a universe method's
        self.abandoned = False
        self.lane = flags >> LANE_SHIFT  # (0: none)

    def finished(self) -> None:
        """
        The call is over: let go of its parts and its local task now. (The
        call, its start hook and this record refer to each other: left to
        the garbage collector, a large argument would keep its receive
        buffer busy, and the next one would need fresh memory.)
        """
        pc = self.pc
        if pc is not None:
            pc.parts = []
            pc.onStart = None
            self.pc = None
        self.serverTask = None


class _Lane:
    """A lane's calls started and not over, and those waiting their turn (see the module)."""

    __slots__ = ("running", "universe", "waiting")

    def __init__(self) -> None:
        self.running = 0
        self.universe = False  # the one running is a universe method
        self.waiting: deque[tuple[_Served, list[Any]]] = deque()

    def mayStart(self, served: _Served) -> bool:
        if self.universe:
            return False
        return not self.running or not served.flags & FLAG_UNIVERSE


class _ServedIterator:
    """An iterator result kept for a client, served in batches."""

    __slots__ = ("arrived", "closed", "dr", "iterID", "requests", "waiting")

    def __init__(self, iterID: int, dr: Deferator) -> None:
        self.iterID = iterID
        self.dr = dr
        self.waiting: Deferred[Any] | None = None  # an item not arrived yet
        self.arrived: Any = _NOTHING  # an item (or Failure) that came meanwhile
        self.requests: list[int] = []  # batch sizes asked for and not yet sent
        self.closed = False


class _ClientSession(BurstSender, FrameReceiver):
    """One client of a `WireServer`."""

    def __init__(self, server: ServerSide, connID: int) -> None:
        self.server = server
        self.connID = connID
        self.series = ("wire", connID)
        self.reactor = server._reactor
        self.state = "handshake"
        self.nonce = b""
        self.calls: dict[int, _Served] = {}
        self.iterators: dict[int, _ServedIterator] = {}
        self.iterIDs = itertools.count(1)
        self.entries: list[tuple[int, str, list[Any], float, Any]] = []
        self.following: list[list[Any]] = []
        self.startedIDs: list[int] = []
        # Lanes with calls running or waiting.
        self.lanes: dict[int, _Lane] = {}
        self._timer: Any = None
        self._paused = False
        self._counted = False  # in the server's count of unauthenticated connections

    def __repr__(self) -> str:
        return f"<WireServer connection #{self.connID} from {self.peer} {self.state}>"

    # ------------------------------------------------------------ connection

    def opened(self) -> None:
        server = self.server
        server._connections.add(self)
        if server._unauthenticated >= server.maxUnauthenticated:
            self.close(errors.WireError("too many connections in the handshake"))
            return
        server._unauthenticated += 1
        self._counted = True
        self._timer = self.reactor.callLater(server.handshakeTimeout, self._handshakeTimedOut)
        self.nonce, parts = _auth.challenge()
        self.send(encode(AUTH, parts))

    def _handshakeTimedOut(self) -> None:
        self._timer = None
        self.close(
            errors.AuthenticationFailed(
                f"no handshake within {self.server.handshakeTimeout:g} seconds"
            )
        )

    def _endHandshake(self) -> None:
        if self._counted:
            self._counted = False
            self.server._unauthenticated -= 1
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def protocolError(self, reason: Exception) -> None:
        log.warning("WireServer: closing the connection from %s: %s", self.peer, reason)

    def lost(self, reason: Failure) -> None:
        self._endHandshake()
        wasOpen = self.state == "open"
        self.state = "closed"
        self.server._connections.discard(self)
        self.unscheduleSend()
        for served in list(self.calls.values()):
            served.abandoned = True  # (no lane starts its next call meanwhile)
        for served in list(self.calls.values()):
            self._abandon(served, "the client disconnected")
        self.calls.clear()
        self.lanes.clear()
        for it in list(self.iterators.values()):
            self._closeIterator(it)
        if wasOpen:
            log.info("WireServer: client %s disconnected", self.peer)

    # ------------------------------------------------------------ back-pressure

    def _checkBackPressure(self) -> None:
        """Our writes back up: read no more calls or requests until they drain."""
        if not self._paused and self.link.bufferedBytes > HIGH_WATER:
            self._paused = True
            self.link.pauseReading()

    def channelDrained(self) -> None:
        if self._paused:
            self._paused = False
            if self.connected:
                self.link.resumeReading()

    # ------------------------------------------------------------ messages

    def handle(self, message: Message) -> None:
        kind = message.kind
        if self.state != "open":
            self._handshake(message)
        elif kind == CALLS:
            self._calls(message.parts)
        elif kind == NEXT:
            iterID, maxItems = pickle.loads(message.parts[0])
            self._next(int(iterID), max(1, int(maxItems)))
        elif kind == CLOSE:
            for iterID in pickle.loads(message.parts[0]):
                it = self.iterators.get(iterID)
                if it is not None:
                    self._closeIterator(it)
        elif kind == ABANDON:
            given = []
            for taskID in pickle.loads(message.parts[0]):
                served = self.calls.pop(taskID, None)
                if served is not None:
                    served.abandoned = True  # all first: no lane starts one of them
                    given.append(served)
            for served in given:
                self._abandon(served, "the client gave up on it")
        elif kind == PING:
            self.send(encode(PONG))
        elif kind == EXIT:
            self.close()
        else:
            raise errors.WireError(f"unexpected message kind {kind}")

    def _handshake(self, message: Message) -> None:
        """Check the client's RESPONSE (no pickle here, ever)."""
        if message.kind != AUTH:
            raise errors.AuthenticationFailed(
                f"a frame of kind {message.kind} instead of the handshake"
            )
        server = self.server
        try:
            clientNonce = _auth.checkResponse(server._key, self.nonce, message.parts)
        except errors.AuthenticationFailed as e:
            self.send(encode(AUTH, _auth.refused()))
            self.closeReason = e
            self.protocolError(e)
            self.close()  # the refusal is written first
            return
        self._endHandshake()
        self.state = "open"
        self.link.maxLength = server.maxFrame
        info = {
            "version": PROTOCOL_VERSION,
            "workers": max(1, len(server.queue)) if server.queue is not None else 1,
            "pid": os.getpid(),
            "maxFrame": server.maxFrame,
            "restricted": server.allow is not None,
            "universe": server.universe is not None,
            "lanes": True,
            "ping": True,  # (it answers PING: the client may check it is there)
        }
        self.send(encode(AUTH, _auth.proof(server._key, self.nonce, clientNonce)))
        self.send(encode(HELLO, [dumpsSmall(info)]))
        log.info("WireServer: client %s authenticated", self.peer)

    # ------------------------------------------------------------ calls

    def _calls(self, parts: list[Any]) -> None:
        envelope = pickle.loads(parts[0])
        pos = 1
        now = self.reactor.seconds()
        calls = []
        for taskID, nparts, flags in envelope:
            if not isinstance(taskID, int) or not isinstance(flags, int) or nparts < 1:
                raise errors.WireError(f"malformed call envelope entry {(taskID, nparts, flags)!r}")
            callParts = parts[pos : pos + nparts]
            pos += nparts
            if len(callParts) != nparts:
                raise errors.WireError("a call envelope announces more parts than were sent")
            calls.append((taskID, callParts, flags))
        lanes = self.lanes
        for taskID, callParts, flags in calls:
            served = _Served(taskID, flags, now)
            self.calls[taskID] = served
            lane = served.lane
            if lane:
                state = lanes.get(lane)
                if state is None:
                    state = lanes[lane] = _Lane()
                if state.waiting or not state.mayStart(served):
                    state.waiting.append((served, callParts))  # (its turn: `_laneNext`)
                    continue
                state.running += 1
                state.universe = bool(served.flags & FLAG_UNIVERSE)
            self._startOrFail(served, callParts)

    def _startOrFail(self, served: _Served, parts: list[Any]) -> None:
        try:
            self._start(served, parts)
        except Exception:
            self._failed(Failure(), served)

    def _laneNext(self, lane: int) -> None:
        """A call of *lane* is over: start those waiting whose turn it is."""
        state = self.lanes.get(lane)
        if state is None:
            return  # (the connection is gone)
        state.running -= 1
        state.universe = False
        waiting = state.waiting
        while waiting:
            served, parts = waiting[0]
            if served.abandoned:
                waiting.popleft()
                continue
            if not state.mayStart(served):
                return
            waiting.popleft()
            state.running += 1
            state.universe = bool(served.flags & FLAG_UNIVERSE)
            self._startOrFail(served, parts)
        if not state.running and self.lanes.get(lane) is state:
            del self.lanes[lane]

    def _start(self, served: _Served, parts: list[Any]) -> None:
        server = self.server
        flags = served.flags
        if flags & FLAG_UNIVERSE:
            self._runUniverse(served, parts)
            return
        name = "a call"
        if server.allow is not None:
            try:
                f, _, _ = loads(parts)
            except Exception as e:
                self._failed(
                    Failure(errors.WireError(f"the call could not be unpickled: {e!r}")), served
                )
                return
            server.checkAllowed(f)  # PermissionError if not allowed
            name = getattr(f, "__qualname__", None) or repr(f)
        queue = server.queue
        if queue is None:
            raise errors.QueueRunError("the server is stopping")
        pc = PickledCall(parts, name, self._onStart(served), self.reactor)
        if getattr(self.link, "sendsPending", False):
            # Stream the result: a large one goes on to the client as it comes
            # from a worker process, through shared memory from its child.
            pc.early, pc.wireFlags = True, FLAG_SHARED_RESULT
        if flags & FLAG_STARTED:
            pc.wireFlags |= FLAG_STARTED  # (a child reports its start promptly)
        served.pc = pc
        if flags & FLAG_UPDATE:
            ephemeral = bool(flags & FLAG_EPHEMERAL) or not server._firstUpdate(parts)
            d = queue.update(pc, ephemeral=ephemeral)
            d.addCallback(_updateOutcome)
        elif served.lane:
            # A client's series: in sequence, in a flow of its own (see the module).
            d = queue.call(
                pc, series=(*self.series, served.lane), raw=bool(flags & FLAG_RAW),
                returnFailure=True,
            )  # fmt: skip
            served.d = d
        else:
            # The connection's own flow: fair between clients, not a sequence.
            d = queue._callInFlow(self.series, pc, raw=bool(flags & FLAG_RAW), returnFailure=True)
            served.d = d  # cancelled if the client gives up on the call
        d.addCallbacks(self._done, self._failed, (served,), None, (served,))

    def _onStart(self, served: _Served) -> Callable[[Any], None]:
        def started(task: Any) -> None:
            if served.abandoned:
                return
            served.startedAt = self.reactor.seconds()
            served.serverTask = task
            if served.flags & FLAG_STARTED:
                self.startedIDs.append(served.taskID)
                self._scheduleFlush()

        return started

    def _runUniverse(self, served: _Served, parts: list[Any]) -> None:
        universe = self.server.universe
        name, args, kw = loads(parts)
        if universe is None:
            raise PermissionError(f"Couldn't run call {name!r}: this server has no universe")
        method = universe.method(name)
        served.startedAt = self.reactor.seconds()
        if served.flags & FLAG_STARTED:
            self.startedIDs.append(served.taskID)
            self._scheduleFlush()
        d = maybeDeferred(method, *args, **kw)
        served.d = d
        d.addCallbacks(self._done, self._failed, (served,), None, (served,))

    def _done(self, value: Any, served: _Served) -> None:
        try:
            self._reportDone(value, served)
        finally:
            if served.lane:
                self._laneNext(served.lane)  # (after its result: in the order they ran)

    def _reportDone(self, value: Any, served: _Served) -> None:
        served.finished()
        if served.abandoned or self.calls.pop(served.taskID, None) is None:
            if isinstance(value, Deferator):
                value.stop()
            return
        dt = self.reactor.seconds() - (served.startedAt or served.receivedAt)
        taskID = served.taskID
        if isinstance(value, PickledResult):
            payload = value.sendable()
            # Whoever keeps the task's result must not keep the receive buffer too.
            value.parts, value.filling = [], None
            self._entry(taskID, WIRE_RESULT, payload, dt)
        elif value is None:
            self._entry(taskID, WIRE_NONE, [], dt)
        elif isinstance(value, Deferator) or (
            isIterator(value) and not served.flags & FLAG_RAW and not served.flags & FLAG_UPDATE
        ):
            dr = value if isinstance(value, Deferator) else Deferator(value)
            iterID = next(self.iterIDs)
            it = _ServedIterator(iterID, dr)
            self.iterators[iterID] = it
            self._entry(taskID, WIRE_ITERATOR, [], dt, iterID)
            self._next(iterID, FIRST_BATCH)
        else:
            try:
                payload = dumps(value)
            except Exception as e:
                error = pickle.PicklingError(
                    f"cannot pickle the result ({type(value).__qualname__}):"
                    f" {type(e).__name__}: {e}"
                )
                self._entry(taskID, WIRE_ERROR, errorParts(error), dt)
            else:
                self._entry(taskID, WIRE_RESULT, payload, dt)

    def _failed(self, failure: Failure, served: _Served) -> None:
        served.finished()
        if not (served.abandoned or self.calls.pop(served.taskID, None) is None):
            dt = self.reactor.seconds() - (served.startedAt or served.receivedAt)
            self._entry(served.taskID, WIRE_ERROR, errorParts(failure), dt)
        if served.lane:
            self._laneNext(served.lane)

    def _abandon(self, served: _Served, why: str) -> None:
        """
        Give up on *served*: cancel it in the server's queue (withdrawn if
        queued, stopped by its worker if running), or its universe method.
        """
        served.abandoned = True
        if served.d is not None:
            if not served.d.called:
                served.d.cancel()
            return
        pc = served.pc
        if pc is None:
            return
        pc.cancelled = True
        task = served.serverTask
        queue = self.server.queue
        if task is None or queue is None or task.reported:
            return
        for worker in queue.workers():
            hook = getattr(worker, "timedOut", None)
            if hook is not None:
                try:
                    hook(task)
                except Exception:
                    log.exception("WireServer: worker %r failed to abandon a task", worker)
        task.callback((Status.ERROR, Failure(CancelledCall(f"{pc.name}: {why}"))))

    # ------------------------------------------------------------ iterators

    def _next(self, iterID: int, maxItems: int) -> None:
        it = self.iterators.get(iterID)
        if it is None:
            self.following.append(encodeItems(iterID, [], False, None)[0])
            self._scheduleFlush()
            return
        it.requests.append(maxItems)
        if len(it.requests) == 1:
            self._serve(it)

    def _serve(self, it: _ServedIterator) -> None:
        """Answer *it*'s oldest request with what is there (waiting for one item)."""
        while it.requests and not it.closed:
            maxItems = it.requests[0]
            items: list[Any] = []
            error: Any = None
            more = True
            while len(items) < maxItems:
                value = it.arrived
                if value is _NOTHING:
                    if it.waiting is not None:
                        break
                    try:
                        d = next(it.dr)
                    except StopIteration:
                        more = False
                        break
                    d.addBoth(self._itemArrived, it, d)
                    value = it.arrived
                    if value is _NOTHING:
                        it.waiting = d
                        break
                it.arrived = _NOTHING
                if isinstance(value, Failure):
                    error, more = value, False
                    break
                items.append(value)
            if more and not items and error is None:
                return  # nothing yet: _itemArrived goes on
            if more:
                more = it.waiting is not None or it.arrived is not _NOTHING or it.dr.moreLeft
            it.requests.pop(0)
            message, more = encodeItems(it.iterID, items, more, error)
            self.following.append(message)
            self._scheduleFlush()
            if not more:
                self._closeIterator(it)

    def _itemArrived(self, value: Any, it: _ServedIterator, d: Deferred[Any]) -> None:
        if it.closed:
            return None
        it.arrived = value
        if it.waiting is d:
            it.waiting = None
            self._serve(it)
        return None

    def _closeIterator(self, it: _ServedIterator) -> None:
        if it.closed:
            return
        it.closed = True
        it.requests.clear()
        self.iterators.pop(it.iterID, None)
        it.dr.stop()

    # ------------------------------------------------------------ output

    def _entry(
        self, taskID: int, status: str, payload: list[Any], dt: float, extra: Any = None
    ) -> None:
        self.entries.append((taskID, status, payload, dt, extra))
        self._scheduleFlush()

    def _scheduleFlush(self) -> None:
        """Send at once after a pause; in a burst, at the end of the reactor turn."""
        if self.connected:
            self.sendSoon(self._flush)

    def _flush(self) -> None:
        self.unscheduleSend()
        if not self.connected:
            return
        if self.startedIDs:
            ids, self.startedIDs = self.startedIDs, []
            self.send(encode(STARTED, [dumpsSmall(ids)]))
        if self.entries:
            entries, self.entries = self.entries, []
            envelope = dumpsSmall(
                (
                    [
                        (taskID, status, len(p), dt, extra)
                        for taskID, status, p, dt, extra in entries
                    ],
                    False,
                )
            )
            allParts = [envelope]
            for entry in entries:
                allParts.extend(entry[2])
            self.send(encode(RESULTS, allParts))
        if self.following:
            following, self.following = self.following, []
            for message in following:
                self.send(message)
        self._checkBackPressure()


def _updateOutcome(values: list[Any]) -> Any:
    """The outcome of an update: its first failure, else its first value."""
    for value in values:
        if isinstance(value, Failure):
            return value
    return values[0] if values else None
