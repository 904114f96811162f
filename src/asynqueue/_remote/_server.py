"""
`WireServer`: a worker server that runs tasks for remote `WireWorker` clients.

Design
======

::

    WireWorker ══ TCP / UNIX / TLS ══► _ClientSession ──► internal TaskQueue ──► local workers
    (client)      (Twisted endpoint)   one per client   flow = connection     (ProcessWorkers,
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
and EXIT. Each call becomes a call of the internal TaskQueue, in a flow of
its connection's own, so that the queue's fair scheduler shares the local
workers between clients (a flow is scheduled like a series, but its calls
run side by side, not in sequence).

- A plain call travels as a `PickledCall`: a process worker sends its bytes
  to its child as they came, and its pickled result (or error) comes back
  and goes out as it is. The server's own process unpickles neither.
- A large result goes out *as it comes in*: over plain TCP and UNIX
  connections (whose `SocketChannel` can send parts still being filled) the
  session marks the call ``early`` (and gives it flags that ask the child
  for shared memory, which the process worker passes on unread): the
  process worker hands over the `PickledResult` as soon as the head of the
  child's message is in, and this connection's channel sends each chunk as it arrives from the child
  (see `asynqueue._wire._framing`, "Early delivery"). So the child's socket
  and the client's connection carry the 10 MB at the same time instead of
  one after the other, through one pooled buffer and no copy but the
  kernel's. (If the child dies in the middle, the frame cannot be finished:
  the client's connection is closed, and its calls in flight count as lost.)
  Better still, the large parts of a result (1 MiB or more) come through
  shared memory when the child's arena is free (`asynqueue._process._arena`):
  the child copies them there in growing pieces and says how far it got,
  and this connection's channel sends them from there as they are written,
  so the server's process copies nothing but into the client's socket.
  Large arguments go the other way through the child's inbox, another
  arena: the server copies them in, the child reads them from there.
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
import ipaddress
import itertools
import logging
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.protocol import Factory

from .._core._queue import TaskQueue
from .._support._system import cores
from .._support._util import dropTrigger
from .._wire import _auth
from .._wire._auth import HANDSHAKE_TIMEOUT
from .._wire._protocol import DEFAULT_MAX_FRAME, FrameProtocol
from ._defaults import DEFAULT_DESCRIPTION
from ._session import _ClientSession
from ._universe import WireWorkerUniverse, resolveName

__all__ = [
    "DEFAULT_DESCRIPTION",
    "DEFAULT_MAX_FRAME",
    "WireServer",
    "WireWorkerUniverse",
    "needsKey",
]

log = logging.getLogger("asynqueue")

#: Connections in the handshake at once; more are closed at once.
MAX_UNAUTHENTICATED = 64


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


class _Factory(Factory):
    def __init__(self, server: WireServer) -> None:
        self.server = server
        self._ids = itertools.count(1)

    def buildProtocol(self, addr: Any) -> FrameProtocol:
        protocol = FrameProtocol(_ClientSession(self.server, next(self._ids)))
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
        self._connections: set[_ClientSession] = set()
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
            from .._threads._worker import ThreadQueue

            return ThreadQueue(self.workers or cores(), returnFailure=True)
        from .._process._parent import ProcessQueue

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
