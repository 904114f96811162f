"""
Frames over Twisted stream connections (TCP, UNIX, TLS): `FrameProtocol`.

A remote worker and its server connect through Twisted endpoints. Whatever
the endpoint, the two sides then see a *channel* with the interface of
`SocketChannel`:

- ``send(buffers)``, ``loseConnection(reason=None)``, ``connected``;
- ``maxLength`` (settable), ``bufferedBytes``, ``pauseReading()`` and
  ``resumeReading()``;

and they are its *receiver* (a `FrameReceiver`): ``channelOpened(channel,
peer)``, ``messageReceived(message)``, ``channelLost(reason)`` and
``channelDrained()``.

Plain TCP and UNIX connections are taken over by a `SocketChannel` as soon as
they are made: the Twisted transport lets go of the socket, and frames are
read straight into the decoder's buffers (``recv_into``) and written at once
with ``sendmsg``, without copies and without waiting a reactor turn. Other
transports (TLS) stay with Twisted: bytes come through ``dataReceived``
(decoded with `FrameDecoder.feed`) and go out joined through
``transport.write``; the `FrameProtocol` itself is then the channel.

A channel starts with the tiny handshake limit (`_auth.HANDSHAKE_MAX`): a
peer that has not proved it knows the key cannot make this side allocate
more than that.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from twisted.internet import abstract, tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from ..errors import FrameTooLarge, WireError
from ._auth import HANDSHAKE_MAX
from ._channel import SocketChannel
from ._framing import FrameDecoder, FramingError, Message, OversizeMessage

__all__ = ["DEFAULT_MAX_FRAME", "FrameProtocol", "FrameReceiver", "describeReason"]

log = logging.getLogger("asynqueue")

# Transport tuning when a connection stays with Twisted (TLS): bytes read per
# recv (Twisted's default is 64 KiB) and offered to the kernel per write.
#: The largest frame (one message, such as a batch of calls or a result)
#: accepted from an authenticated peer, unless told otherwise.
DEFAULT_MAX_FRAME = 1 << 30

READ_SIZE = 256 * 1024
SEND_LIMIT = 4 * 1024 * 1024


def describeReason(reason: Any) -> str:
    """A short text for why a channel closed (a Failure or an exception)."""
    value = getattr(reason, "value", reason)
    if isinstance(value, OversizeMessage):
        value = FrameTooLarge(str(value))
    elif isinstance(value, FramingError):
        value = WireError(f"malformed frame: {value}")
    text = str(value) or type(value).__name__
    return text


class FrameReceiver:
    """
    Base of the objects at either end of a channel.

    Subclasses implement ``handle(message)`` and may override
    ``opened()``, ``lost(reason)`` and ``channelDrained()``. An exception
    from ``handle`` closes the connection (logged by `protocolError`).

    Attributes:
        link: the channel, once connected.
        peer: text describing the other end, for logs.
        closeReason: the error this side closed the connection for, if any.
    """

    link: Any = None
    peer = "?"
    closeReason: Exception | None = None
    _closed = False
    _gone = False
    _closedWaiters: list[Deferred[None]] | None = None

    def channelOpened(self, channel: Any, peer: str) -> None:
        self.link = channel
        self.peer = peer
        if self._closed:  # closed while connecting
            channel.loseConnection(Failure(WireError("closed while connecting")))
            return
        self.opened()

    def messageReceived(self, message: Message) -> None:
        if self._closed:
            return
        try:
            self.handle(message)
        except WireError as e:
            self.close(e)
        except Exception as e:
            log.debug("Frame handling failed on %r", self, exc_info=True)
            self.close(WireError(f"bad frame (kind {message.kind}): {e!r}"))

    def channelLost(self, reason: Failure) -> None:
        self._closed = True
        self._gone = True
        waiters, self._closedWaiters = self._closedWaiters, None
        for d in waiters or ():
            d.callback(None)
        value = reason.value
        if self.closeReason is None and isinstance(value, (FramingError, WireError)):
            self.closeReason = (
                FrameTooLarge(str(value))
                if isinstance(value, OversizeMessage)
                else value
                if isinstance(value, WireError)
                else WireError(f"malformed frame: {value}")
            )
            self.protocolError(self.closeReason)
        self.lost(reason)

    def channelDrained(self) -> None:
        """Everything queued was written."""

    @property
    def connected(self) -> bool:
        return not self._closed and self.link is not None and self.link.connected

    def send(self, buffers: list[Any]) -> None:
        if self.connected:
            self.link.send(buffers)

    def close(self, reason: Exception | None = None) -> None:
        """
        Close: for an error *reason* (logged and kept in ``closeReason``) at
        once, dropping unwritten data; without one, after writing what is
        queued (over TLS; a socket channel closes at once either way).
        """
        if reason is not None and self.closeReason is None:
            self.closeReason = reason
            self.protocolError(reason)
        self._loseLink(reason or ConnectionDone("closed by this side"))

    def abort(self) -> None:
        """Close at once, dropping unwritten data, without logging."""
        self._loseLink(WireError("aborted"))

    def _loseLink(self, reason: Exception) -> None:
        if self._gone:
            return
        self._closed = True
        if self.link is not None:
            self.link.loseConnection(Failure(reason))

    def whenClosed(self) -> Deferred[None]:
        """A Deferred that fires once the connection is closed (or was never made)."""
        if self._gone or self.link is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        if self._closedWaiters is None:
            self._closedWaiters = []
        self._closedWaiters.append(d)
        return d

    # ------------------------------------------------------------ hooks

    def opened(self) -> None:
        """The channel is open."""

    def handle(self, message: Message) -> None:
        raise NotImplementedError

    def lost(self, reason: Failure) -> None:
        """The channel closed (for whatever reason)."""

    def protocolError(self, reason: Exception) -> None:
        """Log why this side closes the connection."""
        log.warning("Closing the connection with %s: %s", self.peer, reason)


class FrameProtocol(Protocol):
    """
    The Twisted protocol of a framed connection: it hands the socket to a
    `SocketChannel` when it can, and is the channel itself otherwise (see
    the module docstring).

    Args:
        receiver: the `FrameReceiver` to connect.
        takeOver: let a `SocketChannel` take plain TCP and UNIX sockets.
    """

    connected = False

    def __init__(self, receiver: FrameReceiver, takeOver: bool = True) -> None:
        self.receiver = receiver
        self.takeOver = takeOver
        self.decoder = FrameDecoder(HANDSHAKE_MAX)
        self._writeBlocked = False
        self._fd: abstract.FileDescriptor | None = None
        self._lostReason: Failure | None = None
        self._aborted = False
        self._lost = False
        # Bytes received so far (a heartbeat counts them as an answer: a
        # large message may take many heartbeats to arrive whole).
        self.bytesRead = 0

    def connectionMade(self) -> None:
        transport = self.transport
        try:
            peer = _describeAddress(transport.getPeer())
        except Exception:
            peer = "?"
        channel = _takeOver(transport, self.receiver) if self.takeOver else None
        if channel is None:
            self.connected = True
            for target in (transport, getattr(transport, "transport", None)):
                if isinstance(target, abstract.FileDescriptor):
                    target.bufferSize = READ_SIZE
                    target.SEND_LIMIT = SEND_LIMIT  # type: ignore[misc]
                    self._fd = target
            for option in ("setTcpNoDelay", "setTcpKeepAlive"):
                try:
                    getattr(transport, option)(True)
                except Exception:
                    pass
            transport.registerProducer(self, True)
            channel = self
        self.receiver.channelOpened(channel, peer)

    # ------------------------------------------------------------ channel (no takeover)

    @property
    def maxLength(self) -> int | None:
        return self.decoder.maxLength

    @maxLength.setter
    def maxLength(self, value: int | None) -> None:
        self.decoder.maxLength = value

    @property
    def bufferedBytes(self) -> int:
        """Bytes waiting to be written (an estimate over TLS)."""
        fd = self._fd
        if fd is None:
            return 0
        try:
            return len(fd.dataBuffer) - fd.offset + fd._tempDataLen
        except Exception:
            return 1 << 30 if self._writeBlocked else 0

    def send(self, buffers: list[Any]) -> None:
        if self.connected:
            self.transport.write(
                buffers[0] if len(buffers) == 1 and type(buffers[0]) is bytes else b"".join(buffers)
            )

    def pauseReading(self) -> None:
        if self.connected:
            self.transport.pauseProducing()

    def resumeReading(self) -> None:
        if self.connected:
            self.transport.resumeProducing()

    def loseConnection(self, reason: Failure | None = None) -> None:
        """
        Close: at once for an error *reason*, else after writing what is
        queued. An error may still cut short a close already under way.
        """
        value = None if reason is None else reason.value
        if value is not None and not isinstance(value, ConnectionDone):
            if self._aborted or self._lost:
                return
            self.connected = False
            self._aborted = True
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None:
                abort()
                return
        if not self.connected:
            return
        self.connected = False
        self.transport.loseConnection()

    # ------------------------------------------------------------ IPushProducer

    def pauseProducing(self) -> None:
        self._writeBlocked = True

    def resumeProducing(self) -> None:
        if self._writeBlocked:
            self._writeBlocked = False
            self.receiver.channelDrained()

    def stopProducing(self) -> None:
        pass

    # ------------------------------------------------------------ Protocol

    def dataReceived(self, data: bytes) -> None:
        if not self.connected:
            return
        self.bytesRead += len(data)
        try:
            messages = self.decoder.feed(data)
        except FramingError as e:
            self._lostReason = Failure(e)
            self.loseConnection(self._lostReason)
            return
        receiver = self.receiver
        for message in messages:
            if not self.connected:
                return
            receiver.messageReceived(message)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.connected = False
        self._lost = True
        self.receiver.channelLost(self._lostReason or reason)


def _takeOver(transport: Any, receiver: Any) -> SocketChannel | None:
    """A `SocketChannel` on a plain TCP or UNIX transport's socket, or None."""
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket):
        return None
    try:
        transport.stopReading()
        transport.stopWriting()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except Exception:
        log.debug("Cannot take over %r", transport, exc_info=True)
        return None
    # The transport no longer reads, writes or closes the socket: it is the
    # channel's. (Keeping the transport from ever closing it: it is not in
    # the reactor any more, and nothing calls its connectionLost.)
    transport.connected = False
    return SocketChannel(sock, receiver, transport.reactor, maxLength=HANDSHAKE_MAX)


def _describeAddress(address: Any) -> str:
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{getattr(address, 'port', '?')}"
    name = getattr(address, "name", None)
    if name:
        return f"unix:{name.decode() if isinstance(name, bytes) else name}"
    return "a UNIX socket peer" if type(address).__name__ == "UNIXAddress" else str(address)
