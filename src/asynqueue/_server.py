"""
`WireServer`: a worker server that runs tasks for remote `WireWorker` clients.

Design
======

::

    WireWorker ══ TCP / UNIX / TLS ══► _Connection ──► internal TaskQueue ──► local workers
    (client)      (Twisted endpoint)   one per client   series = connection   (ProcessWorkers,
                                                                               or threads)

Handshake first
---------------
A new connection is in the *handshake* state: the server sends a CHALLENGE,
accepts only AUTH frames of at most `_auth.HANDSHAKE_MAX` bytes, and closes
the connection on anything else: a frame of another kind, a malformed or
oversized frame, a wrong MAC, or no complete handshake within
``handshakeTimeout`` seconds (which also ends slow-loris clients). Nothing is
unpickled before the client has proved that it knows the key (see
`asynqueue._wire._auth`). Only then does the server prove its own knowledge,
send HELLO, raise the frame limit to ``maxFrame`` and take calls. At most
``maxUnauthenticated`` connections may be in the handshake at once; others
are closed at once.

Calls
-----
The messages are those of a process worker's child (`asynqueue._wire`):
CALLS in, RESULTS out, NEXT/ITEMS/CLOSE for iterator results, plus
STARTED (for calls with a timeout), ABANDON (the client gave up on a call)
and EXIT. Each call becomes a call of the internal TaskQueue, in a series of
its connection's own, so that the queue's fair scheduler shares the local
workers between clients.

- A plain call travels as a `PickledCall`: a process worker sends its bytes
  to its child as they came, and its pickled result (or error) comes back
  and goes out as it is. The server's own process unpickles neither.
- A large result goes out *as it comes in*: over plain TCP and UNIX
  connections (whose `SocketChannel` can send parts still being filled) the
  call is marked ``streamResult``, the process worker hands over the
  `PickledResult` as soon as the head of the child's message is in, and
  this connection's channel sends each chunk as it arrives from the child
  (see `asynqueue._wire._framing`, "Early delivery"). So the child's socket
  and the client's connection carry the 10 MB at the same time instead of
  one after the other, through one pooled buffer and no copy but the
  kernel's. (If the child dies in the middle, the frame cannot be finished:
  the client's connection is closed, and its calls in flight count as lost.)
  Better still, the large parts of a result (1 MiB or more) come through
  shared memory when the child's arena is free (`asynqueue._wire._arena`):
  the child copies them there in growing pieces and says how far it got,
  and this connection's channel sends them from there as they are written,
  so the server's process copies nothing but into the client's socket.
- With an allow-list, the server unpickles the call first and refuses a
  callable not on the list (``PermissionError``) before it runs.
- A call flagged as a universe call names a public method of the server's
  `WireWorkerUniverse`, which runs in the server's reactor thread.
- An update runs on every local worker (``TaskQueue.update``), and is
  replayed to the workers' new child processes.
- An iterator result is kept here as a `Deferator` (from the local worker)
  and served in batches on request.
- ABANDON (a client-side timeout) and a lost connection give up on the
  connection's calls: those not started are dropped when their turn comes,
  and a started one has its local worker kill (or abandon) it.

A result after a pause goes out at once; results that follow it closely
(a burst) go out together, as one RESULTS message at the end of the reactor
turn.
"""

from __future__ import annotations

import hashlib
import importlib
import ipaddress
import itertools
import logging
import os
import pickle
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from . import errors
from ._child import FIRST_BATCH
from ._iteration import Deferator, isIterator
from ._queue import TaskQueue
from ._util import dropTrigger
from ._wire import _auth
from ._wire._client import BURST_GAP
from ._wire._codec import (
    ABANDON,
    AUTH,
    CALLS,
    CLOSE,
    EXIT,
    FLAG_EPHEMERAL,
    FLAG_RAW,
    FLAG_STARTED,
    FLAG_UNIVERSE,
    FLAG_UPDATE,
    HELLO,
    NEXT,
    RESULTS,
    STARTED,
    dumps,
    dumpsError,
    dumpsSmall,
    loads,
)
from ._wire._framed import FrameProtocol, FrameReceiver
from ._wire._framing import Message, encode
from ._wire._relay import CancelledCall, PickledCall, PickledError, PickledResult
from ._wire._streams import encodeItems as _encodeItems

__all__ = [
    "DEFAULT_DESCRIPTION",
    "DEFAULT_MAX_FRAME",
    "WireServer",
    "WireWorkerUniverse",
    "needsKey",
]

log = logging.getLogger("asynqueue")

#: Where ``asynqueue serve`` listens by default.
DEFAULT_DESCRIPTION = "tcp:7341:interface=127.0.0.1"
#: The largest frame (one message, such as a batch of calls or a result)
#: accepted from an authenticated peer.
DEFAULT_MAX_FRAME = 1 << 30
#: Seconds a new connection has to complete the handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Connections in the handshake at once; more are closed at once.
MAX_UNAUTHENTICATED = 64
#: Version of the wire conversation after the handshake.
PROTOCOL_VERSION = 1
#: Bytes waiting to be written to a client above which its input is paused.
HIGH_WATER = 8 * 1024 * 1024

_NOTHING: Any = object()


class WireWorkerUniverse:
    """
    The methods that remote callers may run by name.

    Subclass it and give it public methods; a client calls one with its name
    as the callable (``RemoteQueue.call('add', 1, 2)``, or
    ``WireWorker.universeMethod('add')`` with any queue). The method runs in
    the server's reactor thread: it must not block, and may return a
    Deferred or be a coroutine. Names starting with ``_`` and attributes
    that are not callable cannot be called.

    Args:
        wireServer: the `WireServer` serving me (also set by the server when
            it starts, if None).
    """

    def __init__(self, wireServer: WireServer | None = None) -> None:
        self.wireServer = wireServer

    @classmethod
    def check(cls, instance: Any) -> None:
        """Raise ``TypeError`` unless *instance* is a `WireWorkerUniverse`."""
        if not isinstance(instance, WireWorkerUniverse):
            raise TypeError(f"{instance!r} is not a WireWorkerUniverse")

    def method(self, name: Any) -> Callable[..., Any]:
        """
        The public method called *name*.

        Raises:
            PermissionError: no such public, callable attribute.
        """
        if not isinstance(name, str) or not name or name.startswith("_"):
            raise PermissionError(f"Couldn't run call {name!r}: not a public method name")
        f = getattr(self, name, None)
        if f is None or not callable(f) or name in _UNIVERSE_PRIVATE:
            raise PermissionError(
                f"Couldn't run call {name!r}: {type(self).__qualname__} has no such method"
            )
        return f  # type: ignore[no-any-return]


# Attributes of the base class that are not remote methods.
_UNIVERSE_PRIVATE = frozenset({"check", "method", "wireServer"})


def resolveName(name: str) -> Any:
    """
    The object named *name*: ``"package.module:attr.attr"`` or, without a
    colon, ``"package.module.attr"`` (the longest importable module wins).

    Raises:
        ValueError: nothing by that name.
    """
    moduleName, colon, attrs = name.partition(":")
    candidates: list[tuple[str, list[str]]]
    if colon:
        candidates = [(moduleName, attrs.split("."))]
    else:
        bits = name.split(".")
        candidates = [(".".join(bits[:i]), bits[i:]) for i in range(len(bits) - 1, 0, -1)]
    for modName, path in candidates:
        try:
            obj: Any = importlib.import_module(modName)
        except ImportError:
            continue
        try:
            for attr in path:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"nothing importable is called {name!r}")


def _splitDescription(description: str) -> tuple[list[str], dict[str, str]]:
    """Positional and keyword fields of an endpoint description (``\\:`` escapes)."""
    fields: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(c)
    fields.append("".join(current))
    args: list[str] = []
    kw: dict[str, str] = {}
    for field in fields:
        key, eq, value = field.partition("=")
        if eq and key.isidentifier():
            kw[key] = value
        else:
            args.append(field)
    return args, kw


def needsKey(description: Any) -> bool:
    """
    True unless *description* listens only on loopback addresses or a UNIX
    socket, the only places a server may run without a key.
    """
    if not isinstance(description, str):
        return True
    args, kw = _splitDescription(description)
    kind = args[0].lower() if args else ""
    if kind == "unix":
        return False
    if kind not in ("tcp", "tcp6", "ssl"):
        return True
    host = kw.get("interface", "")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True  # "" (every interface) or a name


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
        self.d: Deferred[Any] | None = None  # a universe method's Deferred
        self.abandoned = False


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


class _Connection(FrameReceiver):
    """One client of a `WireServer`."""

    def __init__(self, server: WireServer, connID: int) -> None:
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
        self._flushCall: Any = None
        self._lastSent = 0.0
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
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._flushCall = None
        for served in list(self.calls.values()):
            self._abandon(served, "the client disconnected")
        self.calls.clear()
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
            for taskID in pickle.loads(message.parts[0]):
                served = self.calls.pop(taskID, None)
                if served is not None:
                    self._abandon(served, "the client gave up on it")
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
        for taskID, callParts, flags in calls:
            served = _Served(taskID, flags, now)
            self.calls[taskID] = served
            try:
                self._start(served, callParts)
            except Exception:
                self._failed(Failure(), served)

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
        # A large result from a worker process goes on to the client as it comes.
        pc.streamResult = bool(getattr(self.link, "sendsPending", False))
        served.pc = pc
        if flags & FLAG_UPDATE:
            ephemeral = bool(flags & FLAG_EPHEMERAL) or not server._firstUpdate(parts)
            d = queue.update(pc, ephemeral=ephemeral)
            d.addCallback(_updateOutcome)
        else:
            d = queue.call(pc, series=self.series, raw=bool(flags & FLAG_RAW), returnFailure=True)
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
            self._entry(taskID, "r", payload, dt)
        elif value is None:
            self._entry(taskID, "n", [], dt)
        elif isinstance(value, Deferator) or (
            isIterator(value) and not served.flags & FLAG_RAW and not served.flags & FLAG_UPDATE
        ):
            dr = value if isinstance(value, Deferator) else Deferator(value)
            iterID = next(self.iterIDs)
            it = _ServedIterator(iterID, dr)
            self.iterators[iterID] = it
            self._entry(taskID, "i", [], dt, iterID)
            self._next(iterID, FIRST_BATCH)
        else:
            try:
                payload = dumps(value)
            except Exception as e:
                error = pickle.PicklingError(
                    f"cannot pickle the result ({type(value).__qualname__}):"
                    f" {type(e).__name__}: {e}"
                )
                self._entry(taskID, "e", errorParts(error), dt)
            else:
                self._entry(taskID, "r", payload, dt)

    def _failed(self, failure: Failure, served: _Served) -> None:
        if served.abandoned or self.calls.pop(served.taskID, None) is None:
            return
        dt = self.reactor.seconds() - (served.startedAt or served.receivedAt)
        self._entry(served.taskID, "e", errorParts(failure), dt)

    def _abandon(self, served: _Served, why: str) -> None:
        """Give up on *served*: drop it if not started, else stop its worker."""
        served.abandoned = True
        if served.d is not None and not served.d.called:
            served.d.cancel()
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
        task.callback(("e", Failure(CancelledCall(f"{pc.name}: {why}"))))

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
        if self._flushCall is None and self.connected:
            now = perf_counter()
            if now - self._lastSent > BURST_GAP:
                self._lastSent = now
                self._flush()
            else:
                self._flushCall = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._flushCall = None
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


class _Factory(Factory):
    def __init__(self, server: WireServer) -> None:
        self.server = server
        self._ids = itertools.count(1)

    def buildProtocol(self, addr: Any) -> FrameProtocol:
        protocol = FrameProtocol(_Connection(self.server, next(self._ids)))
        protocol.factory = self
        return protocol


class WireServer:
    """
    A worker server: runs tasks for `WireWorker` clients on local workers.

    Args:
        description: a Twisted server endpoint description (``tcp:7341``,
            ``unix:/path/to.sock``, ``ssl:7341:privateKey=...``), or an
            ``IStreamServerEndpoint``.
        universe: a `WireWorkerUniverse` instance (or its
            ``"module:Class"`` name) whose public methods clients may call
            by name.
        key: the shared secret (bytes or str). Without one the server runs
            only on loopback addresses and UNIX sockets.
        allow: None (any callable may run), or the callables that may: their
            dotted names (``"math.sqrt"``, ``"pkg.mod:func"``) or the
            objects. Universe methods are always allowed.
        workers: how many local workers (default: one per core).
        threads: run tasks in threads instead of child processes.
        queue: a TaskQueue of your own to run the tasks (then *workers* and
            *threads* are ignored, and `stop` leaves it running).
        clientCA: for ``ssl:`` descriptions, a PEM file of the certificate
            authorities whose client certificates are accepted; clients
            without one are then refused.
        maxFrame: the largest frame accepted from an authenticated client.
        handshakeTimeout: seconds a connection has to authenticate.
        maxUnauthenticated: connections allowed in the handshake at once.
        reactor: the reactor (the global one by default).

    Raises:
        ValueError: no key, and the description is not loopback-only; or an
            allow-list name that does not import.
    """

    def __init__(
        self,
        description: Any = DEFAULT_DESCRIPTION,
        universe: WireWorkerUniverse | str | None = None,
        *,
        key: bytes | str | None = None,
        allow: Iterable[Any] | None = None,
        workers: int | None = None,
        threads: bool = False,
        queue: TaskQueue | None = None,
        clientCA: str | None = None,
        maxFrame: int = DEFAULT_MAX_FRAME,
        handshakeTimeout: float = HANDSHAKE_TIMEOUT,
        maxUnauthenticated: int = MAX_UNAUTHENTICATED,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.description = description
        self._key = _auth.toKey(key)
        if not self._key and needsKey(description):
            raise ValueError(
                f"refusing to serve {description!r} without a key: anyone who can connect"
                " could run code here. Give a key (--key-file, or the ASYNQUEUE_KEY"
                " environment variable), or listen on 127.0.0.1 or a UNIX socket."
            )
        if isinstance(universe, str):
            universe = resolveName(universe)(self)
        if universe is not None:
            WireWorkerUniverse.check(universe)
            if getattr(universe, "wireServer", None) is None:
                universe.wireServer = self
        self.universe: WireWorkerUniverse | None = universe
        self.allow: list[str] | None = None
        self._allowed: list[Any] = []
        if allow is not None:
            self.allow = []
            for entry in allow:
                obj = resolveName(entry) if isinstance(entry, str) else entry
                if not callable(obj):
                    raise ValueError(f"{entry!r} is not callable")
                self._allowed.append(obj)
                self.allow.append(entry if isinstance(entry, str) else _describe(obj))
        self.workers = workers
        self.threads = threads
        self.queue: TaskQueue | None = queue
        self._ownsQueue = queue is None
        self.clientCA = clientCA
        self.maxFrame = maxFrame
        self.handshakeTimeout = handshakeTimeout
        self.maxUnauthenticated = maxUnauthenticated
        self.port: Any = None
        self._connections: set[_Connection] = set()
        self._unauthenticated = 0
        self._updateDigests: set[bytes] = set()
        self._trigger: Any = None
        self._stopD: Deferred[None] | None = None

    def __repr__(self) -> str:
        return f"<WireServer {self.listeningDescription()} clients={len(self._connections)}>"

    # ------------------------------------------------------------ public

    @property
    def connections(self) -> int:
        """How many clients are connected (in the handshake or authenticated)."""
        return len(self._connections)

    def start(self) -> Deferred[Any]:
        """Start the workers and listen; fires with the listening port."""
        if self.port is not None:
            return succeed(self.port)
        if self.queue is None:
            self.queue = self._makeQueue()
        endpoint = self._endpoint()

        def listening(port: Any) -> Any:
            self.port = port
            self._trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self.stop)
            log.info("WireServer listening on %s", self.listeningDescription())
            return port

        return endpoint.listen(_Factory(self)).addCallback(listening)

    def listeningDescription(self) -> str:
        """The description, with the port actually bound (for ``tcp:0`` and the like)."""
        description = self.description
        if not isinstance(description, str):
            return repr(description)
        host = None if self.port is None else self.port.getHost()
        port = getattr(host, "port", None)
        args, _ = _splitDescription(description)
        if port is None or len(args) < 2 or not args[1].isdigit():
            return description
        kind, _, rest = description.partition(":")
        _, _, rest = rest.partition(":")
        return f"{kind}:{port}" + (f":{rest}" if rest else "")

    @property
    def address(self) -> Any:
        """The bound address (``IPv4Address``, ``UNIXAddress``), once listening."""
        return None if self.port is None else self.port.getHost()

    def checkAllowed(self, f: Any) -> None:
        """Raise ``PermissionError`` unless the allow-list lets *f* run."""
        if self.allow is None:
            return
        for allowed in self._allowed:
            if f is allowed:
                return
            try:
                if f == allowed:
                    return
            except Exception:
                pass
        raise PermissionError(
            f"{_describe(f)} is not allowed on this server"
            f" (allowed: {', '.join(self.allow) or 'nothing but universe methods'})"
        )

    def stop(self) -> Deferred[None]:
        """
        Stop listening, close every connection (their calls are given up on)
        and, if the server made its own workers, stop them at once.
        """
        if self._stopD is not None:
            d: Deferred[None] = Deferred()
            self._stopD.addBoth(lambda r: (d.callback(None), r)[1])
            return d
        self._stopD = self._stop()
        self._stopD.addErrback(lambda f: log.error("WireServer: stopping failed: %s", f.value))
        return self.stop()

    @defer.inlineCallbacks
    def _stop(self) -> Any:
        self._trigger = dropTrigger(self._reactor, self._trigger)
        if self.port is not None:
            port, self.port = self.port, None
            yield maybeDeferred(port.stopListening)
        closing = []
        for connection in list(self._connections):
            connection.abort()
            closing.append(connection.whenClosed())
        if closing:
            yield DeferredList(closing)
        queue = self.queue
        if queue is not None and self._ownsQueue:
            self.queue = None
            workers = list(queue.workers())
            for worker in workers:
                queue.detachWorker(worker, crash=True)
            exits = [w.waitForExit() for w in workers if hasattr(w, "waitForExit")]
            if exits:
                yield DeferredList(exits, consumeErrors=True)
            yield queue.shutdown()

    # ------------------------------------------------------------ internals

    def _makeQueue(self) -> TaskQueue:
        if self.threads:
            from ._threads import ThreadQueue

            return ThreadQueue(self.workers or _cores(), returnFailure=True)
        from ._process import ProcessQueue

        return ProcessQueue(self.workers, returnFailure=True)

    def _endpoint(self) -> Any:
        from twisted.internet import endpoints

        description = self.description
        if not isinstance(description, str):
            return description
        if self.clientCA is not None:
            return _tlsEndpoint(self._reactor, description, self.clientCA)
        return endpoints.serverFromString(self._reactor, description)

    def _firstUpdate(self, parts: list[Any]) -> bool:
        """True the first time these update bytes are seen (remember it), else False."""
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        value = digest.digest()
        if value in self._updateDigests:
            return False
        self._updateDigests.add(value)
        return True


def _describe(f: Any) -> str:
    module = getattr(f, "__module__", None)
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None)
    if name is None:
        return repr(f)
    return f"{module}.{name}" if module and module != "builtins" else name


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _tlsEndpoint(reactor: Any, description: str, clientCA: str) -> Any:
    """An ``ssl:`` server endpoint that requires client certificates signed by *clientCA*."""
    import re

    from twisted.internet import ssl
    from twisted.internet.endpoints import SSL4ServerEndpoint
    from twisted.python.filepath import FilePath

    args, kw = _splitDescription(description)
    if not args or args[0].lower() != "ssl" or len(args) < 2:
        raise ValueError(f"clientCA needs an ssl:PORT:... description, not {description!r}")
    privateKey = kw.get("privateKey", "server.pem")
    certKey = kw.get("certKey", privateKey)
    pem = FilePath(certKey).getContent() + b"\n" + FilePath(privateKey).getContent()
    cert = ssl.PrivateCertificate.loadPEM(pem)
    authorities = [
        ssl.Certificate.loadPEM(block)
        for block in re.findall(
            rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
            FilePath(clientCA).getContent(),
            flags=re.DOTALL,
        )
    ]
    if not authorities:
        raise ValueError(f"no certificate in {clientCA}")
    options = cert.options(*authorities)  # verify=True, requireCertificate=True
    return SSL4ServerEndpoint(
        reactor,
        int(args[1]),
        options,
        backlog=int(kw.get("backlog", 50)),
        interface=kw.get("interface", ""),
    )
