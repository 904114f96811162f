"""
Framing: messages as length-prefixed frames, encoded to lists of buffers and
decoded incrementally. No I/O, no Twisted, standard library only: the child
interpreter of a process worker loads this file on its own.

Wire format
===========

One message is one frame::

    header  kind:u8  flags:u8  pad:u16  nparts:u32  length:u64   (16 bytes)
    table   nparts x partLength:u64
    parts   part 0, part 1, ... back to back

All integers are big-endian. ``length`` counts the table and the parts, i.e.
everything after the header. ``kind`` says what the message is (see
`asynqueue._wire._codec`); ``flags`` is reserved and zero.

A message is a list of *parts*, byte strings that are never copied into one
another. A batch of separately pickled calls, or a pickle and its
out-of-band buffers (pickle protocol 5), travel as they are: `encode` returns
the header followed by the parts themselves, for scatter/gather writes
(``os.writev``, ``socket.sendmsg``), and `SendQueue` keeps track of partial
writes.

Decoding
========

`FrameDecoder` turns bytes into `Message` objects. It takes bytes in two
ways:

- ``feed(data)``, for transports that hand over bytes (Twisted's
  ``dataReceived``, TLS);
- ``getBuffer()`` then ``bufferUpdated(n)``, for readers that read into
  memory they are given (``socket.recv_into``, ``os.readv``).

Small messages are read many at a time into a scratch buffer and copied out
once each. The body of a large message is read straight into a buffer of
its own, so a message of gigabytes costs no copy besides the kernel's, and
arrives in as many reads as the reader likes: a reactor reads what is
there and goes on with other work.

Sizes are 64-bit. A decoder for an untrusted peer takes ``maxLength``; a
longer message raises `OversizeMessage` before anything is allocated.
"""

from __future__ import annotations

import struct
from collections import deque, namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:  # the child must not pay for importing typing
    from typing import Any

__all__ = [
    "HEADER",
    "FrameDecoder",
    "FramingError",
    "Message",
    "OversizeMessage",
    "SendQueue",
    "encode",
    "encodeBytes",
]

HEADER = struct.Struct("!BBxxIQ")
HEADER_SIZE = HEADER.size

# Messages up to this size (header included) are parsed out of the scratch
# buffer; larger ones get a buffer of their own.
SMALL_MESSAGE = 64 * 1024
SCRATCH_SIZE = 256 * 1024

# At most this many buffers per scatter/gather write (Linux IOV_MAX is 1024).
MAX_IOVECS = 512


class FramingError(ValueError):
    """The byte stream is not a valid sequence of frames."""


class OversizeMessage(FramingError):
    """A frame announced a message longer than the decoder accepts."""


Message = namedtuple("Message", "kind parts flags", defaults=(0,))
Message.__doc__ = "A decoded message: its kind, its parts (writable memoryviews), flags."


def _nbytes(part: Any) -> int:
    return len(part) if type(part) is bytes else memoryview(part).nbytes


def encode(kind: int, parts: list[Any] | tuple[Any, ...] = (), flags: int = 0) -> list[Any]:
    """
    Encode a message of *kind* made of *parts* (bytes-like objects).

    Returns ``[header, part0, part1, ...]``, to be written in that order;
    the parts are not copied. Empty parts are left out of the list.
    """
    lengths = [_nbytes(p) for p in parts]
    n = len(lengths)
    head = HEADER.pack(kind, flags, n, 8 * n + sum(lengths))
    if n:
        head += struct.pack(f"!{n}Q", *lengths)
    return [head, *(p for p, size in zip(parts, lengths, strict=True) if size)]


def encodeBytes(kind: int, parts: list[Any] | tuple[Any, ...] = (), flags: int = 0) -> bytes:
    """`encode`, joined into one bytes object (for tests and small messages)."""
    return b"".join(bytes(b) if not isinstance(b, bytes) else b for b in encode(kind, parts, flags))


class FrameDecoder:
    """
    Incremental decoder: bytes in, `Message` objects out.

    Use ``feed(data)``, or ``getBuffer()`` + ``bufferUpdated(n)`` to read
    straight into the decoder's memory; do not mix the two within one read.
    After a `FramingError` the stream is corrupt: drop the decoder.
    """

    def __init__(self, maxLength: int | None = None, scratchSize: int = SCRATCH_SIZE) -> None:
        if scratchSize < SMALL_MESSAGE + HEADER_SIZE:
            raise ValueError(f"scratchSize must be at least {SMALL_MESSAGE + HEADER_SIZE}")
        self.maxLength = maxLength
        self._scratch = bytearray(scratchSize)
        self._view = memoryview(self._scratch)
        self._start = 0
        self._end = 0
        # The large message being read into its own buffer, if any.
        self._body: bytearray | None = None
        self._bodyView: memoryview | None = None
        self._filled = 0
        self._kind = 0
        self._flags = 0
        self._nparts = 0

    def pending(self) -> int:
        """How many bytes of an unfinished message are held (0 between messages)."""
        if self._body is not None:
            return HEADER_SIZE + self._filled
        return self._end - self._start

    def getBuffer(self) -> memoryview:
        """A non-empty writable buffer for the next bytes; then call `bufferUpdated`."""
        if self._bodyView is not None:
            return self._bodyView[self._filled :]
        if self._end == len(self._scratch):
            self._compact()
        return self._view[self._end :]

    def _compact(self) -> None:
        n = self._end - self._start
        if self._start:
            self._scratch[:n] = bytes(self._view[self._start : self._end])
        self._start = 0
        self._end = n

    def bufferUpdated(self, n: int) -> list[Message]:
        """*n* bytes were written into the last `getBuffer`; returns complete messages."""
        if n <= 0:
            return []
        if self._body is not None:
            self._filled += n
            if self._filled < len(self._body):
                return []
            body, self._body, self._bodyView = self._body, None, None
            return [self._message(self._kind, self._flags, self._nparts, body)]
        self._end += n
        return self._parse()

    def feed(self, data: Any) -> list[Message]:
        """Decode *data* (any bytes-like object); returns complete messages."""
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        size = len(view)
        pos = 0
        out: list[Message] = []
        while pos < size:
            buf = self.getBuffer()
            k = min(len(buf), size - pos)
            buf[:k] = view[pos : pos + k]
            pos += k
            out.extend(self.bufferUpdated(k))
        return out

    def _parse(self) -> list[Message]:
        out: list[Message] = []
        view = self._view
        start, end = self._start, self._end
        while end - start >= HEADER_SIZE:
            kind, flags, nparts, length = HEADER.unpack_from(self._scratch, start)
            self._check(nparts, length)
            total = HEADER_SIZE + length
            if end - start >= total:
                body = bytearray(view[start + HEADER_SIZE : start + total])
                start += total
                out.append(self._message(kind, flags, nparts, body))
                continue
            if total > SMALL_MESSAGE:
                # Read the rest straight into a buffer of its own.
                body = bytearray(length)
                have = end - start - HEADER_SIZE
                body[:have] = view[start + HEADER_SIZE : end]
                self._body = body
                self._bodyView = memoryview(body)
                self._filled = have
                self._kind, self._flags, self._nparts = kind, flags, nparts
                start = end = 0
            break
        if start == end:
            start = end = 0
        self._start, self._end = start, end
        return out

    def _check(self, nparts: int, length: int) -> None:
        if length < 8 * nparts:
            raise FramingError(f"frame of {length} bytes cannot hold {nparts} parts")
        if self.maxLength is not None and length > self.maxLength:
            raise OversizeMessage(
                f"frame announces {length} bytes, more than the limit of {self.maxLength}"
            )

    @staticmethod
    def _message(kind: int, flags: int, nparts: int, body: bytearray) -> Message:
        view = memoryview(body)
        parts: list[memoryview] = []
        if nparts:
            pos = 8 * nparts
            for size in struct.unpack_from(f"!{nparts}Q", body, 0):
                parts.append(view[pos : pos + size])
                pos += size
            if pos != len(body):
                raise FramingError(f"parts of {pos} bytes in a frame of {len(body)}")
        elif body:
            raise FramingError(f"{len(body)} stray bytes in a frame without parts")
        return Message(kind, parts, flags)


class SendQueue:
    """
    Buffers waiting to be written, in order, for scatter/gather writers.

    ``peek()`` gives buffers for one ``writev``/``sendmsg``; ``advance(n)``
    drops the *n* bytes that were written, however they split the buffers.
    """

    def __init__(self) -> None:
        self._buffers: deque[memoryview] = deque()
        self.size = 0

    def __bool__(self) -> bool:
        return bool(self._buffers)

    def __len__(self) -> int:
        return self.size

    def append(self, buffers: list[Any]) -> None:
        """Queue *buffers* (bytes-like objects; not copied)."""
        for buf in buffers:
            view = memoryview(buf)
            if view.ndim != 1 or view.format != "B":
                view = view.cast("B")
            if view.nbytes:
                self._buffers.append(view)
                self.size += view.nbytes

    def peek(self, maxBuffers: int = MAX_IOVECS) -> list[memoryview]:
        """Up to *maxBuffers* buffers from the front, without removing them."""
        buffers = self._buffers
        if len(buffers) <= maxBuffers:
            return list(buffers)
        return [buffers[i] for i in range(maxBuffers)]

    def advance(self, n: int) -> None:
        """Drop the first *n* bytes (they were written)."""
        buffers = self._buffers
        self.size -= n
        while n:
            first = buffers[0]
            size = first.nbytes
            if n >= size:
                buffers.popleft()
                n -= size
            else:
                buffers[0] = first[n:]
                n = 0

    def clear(self) -> None:
        self._buffers.clear()
        self.size = 0
