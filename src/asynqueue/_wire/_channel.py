"""
`SocketChannel`: frames over a connected stream socket, driven by the reactor.

A reactor descriptor (``IReadWriteDescriptor``) for a non-blocking stream
socket: one end of a socketpair for a process worker; a UNIX or TCP socket
works the same. Unlike a Twisted transport, it reads straight into the
`FrameDecoder`'s buffers (``recv_into``) and writes the encoded buffers with
``sendmsg`` (scatter/gather), so a payload of any size is copied only by the
kernel. It never polls and never blocks the reactor: a read takes what is
there (at most `READ_BUDGET` bytes per turn), a write sends what the kernel
takes and waits for writability for the rest. While a large message arrives
over TCP, the reactor is woken for big pieces of it, not for every few
hundred kilobytes (`LOW_WATER_MAX`).

Over TLS, where bytes come through a transport, use `FrameDecoder.feed`
from ``dataReceived`` instead; the frames are the same.

The receiver is any object with ``messageReceived(message)`` and
``channelLost(reason)`` methods, and optionally ``channelDrained()``, called
when everything queued has been written, and ``wantsEarly(message)``: a
large message for which it returns True is handed over as soon as its head
has arrived (see `FrameDecoder`), to be relayed as it comes. This module
imports Twisted: parent side only.

A channel can send the parts of such a message before they are complete
(``sendsPending``): queued with `Filling.pending`, they go out as their bytes
arrive. While the front of its queue waits for bytes that have not arrived,
the channel is neither reading from the kernel's point of view nor waiting
for writability: the source's progress wakes it up. If the source is lost,
the frame being sent cannot be finished and the channel closes.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from ._framing import (
    HEADER,
    HEADER_SIZE,
    MAX_IOVECS,
    Filling,
    FrameDecoder,
    FramingError,
    SendQueue,
)

__all__ = ["READ_BUDGET", "RelayCutShort", "SocketChannel"]

# Most bytes read per reactor turn, so one huge message cannot starve the
# reactor's other work.
READ_BUDGET = 16 * 1024 * 1024

# While a large message comes in, the kernel is asked (SO_RCVLOWAT) to wake
# the reactor only once this much of it, or all the rest, is there: a 10 MB
# result then takes a handful of reads instead of one per window's worth
# (~256 KiB over loopback TCP), each with its own wake-up. TCP on Linux
# only: recent Linux kernels cap the mark at what the receive buffer can
# hold; other systems may not (a mark the buffer cannot hold would never be
# reached), and UNIX sockets ignore it. In case a kernel still fails to wake
# us, a watchdog reads after `LOW_WATER_PATIENCE` seconds without a wake-up
# and gives up the mark on that socket for good: a stall, never a hang.
LOW_WATER_MAX = 1 << 20
LOW_WATER_PATIENCE = 0.05
_LOW_WATER_FAMILIES = (socket.AF_INET, socket.AF_INET6) if sys.platform.startswith("linux") else ()

_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)
# At most this many reads (of up to READ_BUDGET bytes each) in `readLast`.
_LAST_READS = 64


class RelayCutShort(ConnectionLost):
    """A message being relayed was cut short: its source connection was lost."""


@implementer(IReadWriteDescriptor)
class SocketChannel:
    """
    Frames in and out over *sock*, which becomes non-blocking and owned by me.

    Args:
        sock: a connected stream socket.
        receiver: gets ``messageReceived(message)`` for each decoded
            `Message` and ``channelLost(reason)`` once, when the channel
            closes for any reason (end of file, error, `loseConnection`).
        reactor: the reactor (the global one if None).
        maxLength: the largest message accepted (None: no limit).
    """

    #: `send` takes the placeholders of `Filling.pending`.
    sendsPending = True

    def __init__(
        self,
        sock: socket.socket,
        receiver: Any,
        reactor: Any = None,
        maxLength: int | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        sock.setblocking(False)
        self.socket = sock
        self._fd = sock.fileno()
        self._decoder = FrameDecoder(maxLength, early=getattr(receiver, "wantsEarly", None))
        self._out = SendQueue()
        self._receiver = receiver
        self._reactor = reactor
        self._writing = False
        self._tunesLowWater = sock.family in _LOW_WATER_FAMILIES
        # The early message whose bytes the front of the send queue waits for.
        self._stalled: Filling | None = None
        self._readingPaused = False
        # Bytes read so far: a receiver can tell that a long message is
        # still coming in (a heartbeat) before any of it is handed over.
        self.bytesRead = 0
        # Inside doRead's hold (see _holdSends), and the end met there: the
        # receiver hears of it only once what it read has been handled.
        self._reading = False
        self._lostInRead: Failure | None = None
        # Why a write failed (see `_sendFailed`): then it sends no more, and
        # closes once it has read what is left.
        self._sendError: Failure | None = None
        # The receiver's ``holdSends(bool)``, if it has one: told before and
        # after each read, so that what it sends in answer goes out once.
        self._holdSends = getattr(receiver, "holdSends", None)
        self.connected = True
        reactor.addReader(self)

    def __repr__(self) -> str:
        return f"<SocketChannel fd={self._fd}{'' if self.connected else ' closed'}>"

    # ------------------------------------------------------------ descriptor

    def fileno(self) -> int:
        return self._fd if self.connected else -1

    def logPrefix(self) -> str:
        return "SocketChannel"

    def doRead(self) -> None:
        hold = self._holdSends
        if hold is None:
            return self._read()
        hold(True)
        self._reading = True
        try:
            return self._read()
        finally:
            self._reading = False
            hold(False)
            # An end met in this read is told after its messages were handled.
            lost, self._lostInRead = self._lostInRead, None
            if lost is not None:
                self._receiver.channelLost(lost)

    def _read(self) -> None:
        decoder = self._decoder
        recvInto = self.socket.recv_into
        receiver = self._receiver
        budget = READ_BUDGET
        while self.connected and not self._readingPaused and budget > 0:
            buf = decoder.getBuffer()
            want = len(buf)
            try:
                n = recvInto(buf)
            except BlockingIOError:
                break
            except OSError as e:
                self._close(Failure(ConnectionLost(str(e))))
                return None
            del buf  # (it may be a view of a bytes object being read into)
            self.bytesRead += n
            if not n:
                if decoder.pending():
                    reason = ConnectionLost("end of file in the middle of a message")
                else:
                    reason = ConnectionDone("end of file")
                self._close(Failure(reason))
                return None
            budget -= n
            try:
                messages = decoder.bufferUpdated(n)
            except FramingError as e:
                self._close(Failure(e))
                return None
            for message in messages:
                receiver.messageReceived(message)
                if not self.connected:
                    return None
            if n < want:
                # The kernel had no more: asking again would only cost a
                # system call to learn so (the reactor says when there is more).
                break
        if self._tunesLowWater:
            remaining = decoder.remaining()
            if remaining or self._lowWater != 1:
                self._setLowWater(remaining)
        return None

    _lowWater = 1  # the socket's SO_RCVLOWAT, as last set
    _lowWaterWatch: Any = None  # the watchdog's delayed call while the mark is up

    def _setLowWater(self, remaining: int) -> None:
        """Wake for *remaining* bytes of a large message (up to `LOW_WATER_MAX`), else any."""
        if not self.connected:
            return
        want = min(remaining, LOW_WATER_MAX) if remaining else 1
        if want != self._lowWater:
            self._lowWater = want
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            except OSError:
                pass
        if want > 1:
            self._watchLowWater()
        else:
            self._unwatchLowWater()

    def _watchLowWater(self) -> None:
        """(Re)start the watchdog of the low-water mark (see `LOW_WATER_PATIENCE`)."""
        watch = self._lowWaterWatch
        if watch is None:
            self._lowWaterWatch = self._reactor.callLater(LOW_WATER_PATIENCE, self._lowWaterStalled)
        else:
            watch.reset(LOW_WATER_PATIENCE)

    def _unwatchLowWater(self) -> None:
        watch, self._lowWaterWatch = self._lowWaterWatch, None
        if watch is not None:
            watch.cancel()

    def _lowWaterStalled(self) -> None:
        """No wake-up for a while with the mark up: drop it on this socket and read."""
        self._lowWaterWatch = None
        self._tunesLowWater = False
        self._setLowWater(0)
        if self.connected and not self._readingPaused:
            self.doRead()

    def doWrite(self) -> None:
        self._flush()
        return None

    def connectionLost(self, reason: Failure) -> None:
        """Called by the reactor (e.g. when it shuts down)."""
        self._close(reason)

    # ------------------------------------------------------------ public

    @property
    def bufferedBytes(self) -> int:
        """Bytes queued for writing and not yet taken by the kernel."""
        return self._out.size

    @property
    def maxLength(self) -> int | None:
        """The largest message accepted, or None for any size. It may be changed at any time."""
        return self._decoder.maxLength

    @maxLength.setter
    def maxLength(self, value: int | None) -> None:
        self._decoder.maxLength = value

    def pauseReading(self) -> None:
        """Stop reading until `resumeReading` (back-pressure on the peer)."""
        if self.connected and not self._readingPaused:
            self._readingPaused = True
            self._reactor.removeReader(self)
            self._unwatchLowWater()  # no wake-up is due while we do not read

    def resumeReading(self) -> None:
        if self.connected and self._readingPaused:
            self._readingPaused = False
            self._reactor.addReader(self)
            if self._lowWater > 1:
                self._watchLowWater()

    def send(self, buffers: list[Any]) -> None:
        """Queue an encoded message (see `encode`) and write what can be written now."""
        if not self.connected or self._sendError is not None:
            return
        out = self._out
        if not out and not self._writing and len(buffers) <= MAX_IOVECS:
            # Nothing queued: write straight from the message's own buffers,
            # and queue only what the kernel did not take (most messages go
            # out whole, without passing through the queue).
            try:
                n = self.socket.sendmsg(buffers, (), _SEND_FLAGS)
            except BlockingIOError:
                n = 0
            except TypeError:
                n = 0  # placeholders of parts still arriving: nothing was sent
            except OSError as e:
                self._sendFailed(e)
                return
            if n == HEADER_SIZE + HEADER.unpack_from(buffers[0])[3]:
                return
            out.append(buffers)
            out.advance(n)
        else:
            out.append(buffers)
        if not self._writing and self._stalled is None:
            self._flush()

    def sendPreamble(self, data: bytes) -> None:
        """Queue bytes that are not a frame (read by the peer before its first frame)."""
        if self.connected and self._sendError is None:
            self._out.append([data])
            if not self._writing and self._stalled is None:
                self._flush()

    def readLast(self) -> None:
        """
        Read and deliver, now, what the peer sent and is not read yet, even
        while reading is paused: for a receiver that learns some other way
        that the peer is gone (a child process reaped before its socket
        said end of file), whose last messages would be lost with the
        connection. Stops at end of file, or when nothing more is there.
        """
        for _ in range(_LAST_READS):
            if not self.connected:
                return
            try:
                more = self.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                return  # (nothing there: the peer's socket lives on elsewhere)
            paused, self._readingPaused = self._readingPaused, False
            try:
                self.doRead()
            finally:
                if self.connected:
                    self._readingPaused = paused
            if not more:
                return  # (end of file: doRead closed me)

    def loseConnection(self, reason: Failure | None = None) -> None:
        """Close now; unwritten data is dropped. The receiver gets ``channelLost``."""
        self._close(reason or Failure(ConnectionDone("closed by this side")))

    # ------------------------------------------------------------ internals

    def _flush(self, waited: bool = False) -> None:
        out = self._out
        sendmsg = self.socket.sendmsg
        waited = waited or self._writing
        stalled = None
        while out:
            buffers = out.peek()
            if not buffers:
                stalled = out.stalledOn()
                break
            try:
                n = sendmsg(buffers, (), _SEND_FLAGS)
            except BlockingIOError:
                break
            except OSError as e:
                self._sendFailed(e)
                return
            out.advance(n)
        if stalled is not None:
            # Waiting for a relayed message's bytes, not for the kernel.
            if stalled.error is not None:
                self._close(
                    Failure(RelayCutShort(f"a relayed message was cut short: {stalled.error}"))
                )
                return
            if self._writing:
                self._writing = False
                self._reactor.removeWriter(self)
            if self._stalled is None:
                self._stalled = stalled
                stalled.notify(self._resume)
        elif out:
            if not self._writing:
                self._writing = True
                self._reactor.addWriter(self)
        elif self._writing or waited:
            if self._writing:
                self._writing = False
                self._reactor.removeWriter(self)
            drained = getattr(self._receiver, "channelDrained", None)
            if drained is not None:
                drained()

    def _resume(self) -> None:
        """More of the relayed message we wait for arrived (or it ended)."""
        self._stalled = None
        if self.connected and not self._writing:
            self._flush(True)

    def _sendFailed(self, error: OSError) -> None:
        """
        A write failed: the peer is gone, or stopped reading. What it sent
        before may still be unread here (the results of calls it did):
        write no more, read that (next turn, out of the sender's call), then
        close.
        """
        self._sendError = Failure(ConnectionLost(str(error)))
        self._out.clear()
        self._stalled = None
        if self._writing:
            self._writing = False
            self._reactor.removeWriter(self)
        self._reactor.callLater(0, self._closeAfterReading)

    def _closeAfterReading(self) -> None:
        self.readLast()
        if self.connected and self._sendError is not None:
            self._close(self._sendError)

    def _close(self, reason: Failure) -> None:
        if not self.connected:
            return
        if not self._readingPaused:
            self._reactor.removeReader(self)
        if self._writing:
            self._writing = False
            self._reactor.removeWriter(self)
        self.connected = False
        self._unwatchLowWater()
        self._out.clear()
        self._stalled = None
        self._decoder.close(ConnectionLost(str(reason.value)))
        try:
            self.socket.close()
        except OSError:
            pass
        if self._reading:
            self._lostInRead = reason  # (told at the end of doRead)
        else:
            self._receiver.channelLost(reason)
