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
`asynqueue._wire._codec`); ``flags`` has one bit, `FLAG_BYTES` (see
"Immutable parts"); the others are zero.

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

Receive buffers
---------------
Memory that a process has not touched yet costs a page fault per page on
first write: for a large message, several times what the kernel takes to
move it over a socket (measured: benchmarks/README.md, "Measurements behind
the design"). Bodies of `POOL_MIN` bytes or more are therefore read into
buffers of a process-wide `BufferPool`, which hands a buffer out again once
nothing refers to it: no memoryview of it (a message part, a view held by
a send queue, a NumPy array unpickled over an out-of-band buffer) is left.
A buffer still referred to is never written again: a result that a caller
holds is never overwritten by a later message.

Immutable parts
---------------
A part of `BYTES_MIN` bytes or more that cannot change on the sender's side
(a ``bytes`` object, a read-only buffer: a large ``bytes`` result or
argument sent out of band) has `BYTES_BIT` set in its length, and the
header has `FLAG_BYTES`. The receiver reads such a part straight into the
memory of a new ``bytes`` object (a ``BytesIO``'s, taken with ``getvalue()``
once full: no copy) and hands it over as that ``bytes``: unpickling takes
it as it is, where a writable buffer would have to be copied into a
``bytes`` once more. The unpickled object cannot tell: it asked for an
immutable buffer either way. A message handed over early (to be relayed,
below) gets read-only views instead, which stay marked when sent on.

Early delivery and relaying
---------------------------
A process that relays a large message (a worker server passing a child's
result on to its client) need not wait for all of it before sending it on.
A decoder given an ``early`` predicate asks it about each large message as
soon as the message's part table and first part (an envelope) have arrived;
if it says yes, the message is handed over at once, with a `Filling` that
tells how much of it has arrived so far. Its parts are the final
memoryviews, filled as the bytes come. The receiver may queue them for
sending (`Filling.pending`): a `SendQueue` hands out only the bytes that
have arrived, and the writer is told (`Filling.notify`) when more do. So a
relayed message goes out as it comes in, through one buffer, and the relay
adds next to nothing to the time it takes. If the sender is lost before the
end, the filling fails and whoever was sending it on must give up on its
own stream (a frame cannot be cut short).

Sizes are 64-bit. A decoder for an untrusted peer takes ``maxLength``; a
longer message raises `OversizeMessage` before anything is allocated.
"""

from __future__ import annotations

import io
import struct
from _thread import allocate_lock
from collections import deque, namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:  # the child must not pay for importing typing
    from typing import Any

__all__ = [
    "HEADER",
    "POOL",
    "BufferPool",
    "Filling",
    "FrameDecoder",
    "FramingError",
    "Message",
    "OversizeMessage",
    "SendQueue",
    "encode",
    "encodeBytes",
    "nbytes",
]

HEADER = struct.Struct("!BBxxIQ")
HEADER_SIZE = HEADER.size

# Messages up to this size (header included) are parsed out of the scratch
# buffer; larger ones get a buffer of their own.
SMALL_MESSAGE = 64 * 1024
SCRATCH_SIZE = 256 * 1024

# At most this many buffers per scatter/gather write (Linux IOV_MAX is 1024).
MAX_IOVECS = 512

# Message bodies of at least this many bytes are read into pooled buffers.
POOL_MIN = 256 * 1024
# Pooled buffers are whole multiples of this (so that sizes that differ a
# little share buffers).
POOL_GRAIN = 1024 * 1024
# A process keeps at most this many bytes of pooled buffers.
POOL_KEEP = 64 * 1024 * 1024

# Header flag: the part table marks immutable parts (see "Immutable parts").
FLAG_BYTES = 0x01
# The mark, in a part's length.
BYTES_BIT = 1 << 63
# Immutable parts of at least this many bytes are marked.
BYTES_MIN = POOL_MIN


class FramingError(ValueError):
    """The byte stream is not a valid sequence of frames."""


class OversizeMessage(FramingError):
    """A frame announced a message longer than the decoder accepts."""


Message = namedtuple("Message", "kind parts flags filling", defaults=(0, None))
# A Message made by the C constructor of tuples, without the Python-level
# ``__new__`` of namedtuples (once per message decoded).
_newMessage = tuple.__new__
Message.__doc__ = """A decoded message: its kind, its parts (writable memoryviews), flags,
and for a message handed over before all of it arrived, its `Filling` (else None)."""


def nbytes(part: Any) -> int:
    """The size in bytes of a part (a bytes-like object, or a `Filling.pending` placeholder)."""
    cls = type(part)
    if cls is bytes:
        return len(part)
    if cls is _Pending:
        return part.nbytes  # type: ignore[no-any-return]
    return memoryview(part).nbytes


class Filling:
    """
    How much of a message handed over early (see ``early`` in `FrameDecoder`)
    has arrived.

    Attributes:
        filled: bytes of the message body (part table included) arrived so far.
        size: bytes in the whole body.
        done: all of it arrived.
        error: why the rest will never come (the connection was lost), or None.
    """

    __slots__ = ("_notify", "_starts", "done", "error", "filled", "size")

    def __init__(self, size: int, filled: int, starts: dict[int, tuple[memoryview, int]]) -> None:
        self.size = size
        self.filled = filled
        self.done = False
        self.error: BaseException | None = None
        # id(part view) -> (the view, its offset in the body): the views are kept alive.
        self._starts = starts
        self._notify: list[Any] = []

    def __repr__(self) -> str:
        state = "done" if self.done else "failed" if self.error else "filling"
        return f"<Filling {self.filled}/{self.size} {state}>"

    def pending(self, parts: list[Any]) -> list[Any]:
        """
        *parts* (views of parts of my message) for `encode` and `SendQueue`:
        those not complete yet become placeholders that send their bytes as
        they arrive.
        """
        if self.done:
            return parts
        out: list[Any] = []
        for part in parts:
            entry = self._starts.get(id(part))
            if entry is None or entry[0] is not part:
                out.append(part)  # not one of mine: complete, as far as I know
                continue
            pending = _Pending(part, entry[1], self)
            out.append(part if pending.available() == pending.nbytes else pending)
        return out

    def notify(self, callback: Any) -> None:
        """Call *callback()* once, when more bytes arrive or the message ends (or fails)."""
        if self.done or self.error is not None:
            callback()
        else:
            self._notify.append(callback)

    def _fire(self) -> None:
        callbacks, self._notify = self._notify, []
        for callback in callbacks:
            callback()

    def _progress(self, filled: int) -> None:
        self.filled = filled
        if self._notify:
            self._fire()

    def _complete(self) -> None:
        self.filled = self.size
        self.done = True
        self._starts = {}
        self._fire()

    def _fail(self, error: BaseException) -> None:
        if not self.done and self.error is None:
            self.error = error
            self._starts = {}
            self._fire()


class _Pending:
    """A part of an early message in a `SendQueue`: sent as its bytes arrive."""

    __slots__ = ("filling", "nbytes", "start", "view")

    def __init__(self, view: memoryview, start: int, filling: Filling) -> None:
        self.view = view
        self.start = start
        self.filling = filling
        self.nbytes = view.nbytes

    def available(self) -> int:
        filling = self.filling
        if filling.done:
            return self.nbytes  # type: ignore[no-any-return]
        return max(0, min(self.nbytes, filling.filled - self.start))

    def advanced(self, n: int) -> _Pending:
        return _Pending(self.view[n:], self.start + n, self.filling)


def encode(kind: int, parts: list[Any] | tuple[Any, ...] = (), flags: int = 0) -> list[Any]:
    """
    Encode a message of *kind* made of *parts* (bytes-like objects).

    Returns ``[header, part0, part1, ...]``, to be written in that order;
    the parts are not copied. Empty parts are left out of the list. Parts of
    `BYTES_MIN` bytes or more that cannot change (``bytes``, read-only
    buffers) are marked as such (see "Immutable parts").
    """
    lengths = [len(p) if type(p) is bytes else nbytes(p) for p in parts]
    n = len(lengths)
    if not n:
        return [HEADER.pack(kind, flags, 0, 0)]
    table = lengths
    if max(lengths) >= BYTES_MIN:
        table = [
            size | BYTES_BIT if size >= BYTES_MIN and _isImmutable(p) else size
            for p, size in zip(parts, lengths, strict=True)
        ]
        if table != lengths:
            flags |= FLAG_BYTES
    packer = _partTables.get(n) or partTable(n)
    head = HEADER.pack(kind, flags, n, 8 * n + sum(lengths)) + packer.pack(*table)
    if 0 in lengths:
        return [head, *(p for p, size in zip(parts, lengths, strict=True) if size)]
    return [head, *parts]


_partTables: dict[int, struct.Struct] = {}


def partTable(n: int) -> struct.Struct:
    """The ``struct.Struct`` of a table of *n* part lengths (made once per size)."""
    table = _partTables.get(n)
    if table is None:
        table = struct.Struct(f"!{n}Q")
        if len(_partTables) < 1024:
            _partTables[n] = table
    return table


def _isImmutable(part: Any) -> bool:
    """A part whose bytes cannot change: ``bytes``, or a read-only buffer."""
    cls = type(part)
    if cls is bytes:
        return True
    if cls is _Pending:
        return part.view.readonly  # type: ignore[no-any-return]
    try:
        return memoryview(part).readonly
    except TypeError:
        return False


def encodeBytes(kind: int, parts: list[Any] | tuple[Any, ...] = (), flags: int = 0) -> bytes:
    """`encode`, joined into one bytes object (for tests and small messages)."""
    return b"".join(bytes(b) if not isinstance(b, bytes) else b for b in encode(kind, parts, flags))


def _isFree(buf: bytearray) -> bool:
    """
    True if no buffer export of *buf* exists (no memoryview of it is alive).

    A bytearray with exports refuses to change size, so shrinking it by one
    byte tells, in constant time; the byte is put back at once.
    """
    try:
        del buf[-1:]
    except BufferError:
        return False
    buf.append(0)
    return True


class BufferPool:
    """
    Writable buffers for large message bodies, reused once free.

    ``get(size)`` returns a writable memoryview of exactly *size* bytes, in
    a buffer that no live memoryview refers to: a pooled one if one is free
    and large enough, else a new one (already faulted in, being zeroed),
    which the pool keeps if it holds less than *keep* bytes. The caller
    keeps the buffer busy for as long as it, or anything it handed the view
    to, holds a view of it; dropping the last one frees it. Thread-safe.
    """

    def __init__(self, keep: int = POOL_KEEP) -> None:
        self.keep = keep
        self._buffers: list[bytearray] = []
        self._lock = allocate_lock()

    @property
    def size(self) -> int:
        """Bytes held in pooled buffers (busy or free)."""
        return sum(len(buf) for buf in self._buffers)

    def get(self, size: int) -> memoryview:
        """A writable memoryview of *size* bytes that nothing else refers to."""
        if size < POOL_MIN:
            return memoryview(bytearray(size))
        with self._lock:
            best: bytearray | None = None
            for buf in self._buffers:
                if len(buf) >= size and (best is None or len(buf) < len(best)) and _isFree(buf):
                    best = buf
            if best is None:
                best = bytearray(-(-size // POOL_GRAIN) * POOL_GRAIN)
                self._keep(best)
            return memoryview(best)[:size]

    def _keep(self, new: bytearray) -> None:
        """Pool *new* if it fits, dropping free smaller buffers to make room."""
        buffers = self._buffers
        room = self.keep - len(new)
        if room < 0:
            return
        held = sum(len(buf) for buf in buffers)
        if held > room:
            for buf in sorted(buffers, key=len):
                if held <= room:
                    break
                if _isFree(buf):
                    buffers.remove(buf)
                    held -= len(buf)
        if held <= room:
            buffers.append(new)

    def clear(self) -> None:
        """Forget every pooled buffer (busy ones live on until released)."""
        with self._lock:
            self._buffers = []


#: The process's pool of receive buffers, shared by its decoders.
POOL = BufferPool()


class _Large:
    """A large message being read, one segment (writable buffer) at a time."""

    __slots__ = (
        "ask",
        "body",
        "filled",
        "filling",
        "flags",
        "kind",
        "length",
        "marks",
        "nparts",
        "parts",
        "segFilled",
        "segment",
        "segments",
        "sizes",
        "stage",
        "streams",
    )

    def __init__(self, kind: int, flags: int, nparts: int, length: int) -> None:
        self.kind = kind
        self.flags = flags
        self.nparts = nparts
        self.length = length
        self.filled = 0  # bytes of the body (part table included) arrived
        self.segment: memoryview = _EMPTY  # being filled
        self.segFilled = 0
        self.segments: deque[memoryview] = deque()  # to fill after it
        self.stage = _BODY
        self.body: memoryview | None = None  # the whole body, when read in one piece
        self.sizes: tuple[int, ...] = ()
        self.marks: tuple[bool, ...] = ()
        self.parts: list[Any] = []
        self.streams: dict[int, Any] = {}  # part index -> BytesIO it is read into
        self.ask = False  # ask `early` once the table and the first part are in
        self.filling: Filling | None = None


# _Large.stage: what completes with the current segment.
_BODY = 0  # the whole body (one buffer): the message
_TABLE = 1  # the part table of a message with immutable parts
_HEAD = 2  # its first part, before `early` is asked
_PARTS = 3  # the last of its parts: the message

_EMPTY = memoryview(b"")


class FrameDecoder:
    """
    Incremental decoder: bytes in, `Message` objects out.

    Use ``feed(data)``, or ``getBuffer()`` + ``bufferUpdated(n)`` to read
    straight into the decoder's memory; do not mix the two within one read.
    After a `FramingError` the stream is corrupt: drop the decoder.
    """

    def __init__(
        self,
        maxLength: int | None = None,
        scratchSize: int = SCRATCH_SIZE,
        pool: BufferPool | None = None,
        early: Any = None,
    ) -> None:
        if scratchSize < SMALL_MESSAGE + HEADER_SIZE:
            raise ValueError(f"scratchSize must be at least {SMALL_MESSAGE + HEADER_SIZE}")
        self.maxLength = maxLength
        self.pool = POOL if pool is None else pool
        # early(message) -> bool: hand this large message over before it is complete?
        self.early = early
        self._scratch = bytearray(scratchSize)
        self._view = memoryview(self._scratch)
        self._start = 0
        self._end = 0
        # The large message being read into buffers of its own, if any.
        self._large: _Large | None = None

    def pending(self) -> int:
        """How many bytes of an unfinished message are held (0 between messages)."""
        large = self._large
        if large is not None:
            return HEADER_SIZE + large.filled
        return self._end - self._start

    def remaining(self) -> int:
        """Bytes still to come of a large message being read (0 when none is)."""
        large = self._large
        return 0 if large is None else large.length - large.filled

    def getBuffer(self) -> memoryview:
        """A non-empty writable buffer for the next bytes; then call `bufferUpdated`."""
        large = self._large
        if large is not None:
            return large.segment[large.segFilled :]
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
        large = self._large
        if large is not None:
            large.filled += n
            large.segFilled += n
            if large.segFilled < len(large.segment):
                if large.filling is not None:
                    large.filling._progress(large.filled)
                    return []
                return self._askEarly(large) if large.ask else []
            return self._segmentDone(large)
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
            del buf  # a view of a part read into a bytes object must not outlive the write
            pos += k
            out.extend(self.bufferUpdated(k))
        return out

    def _parse(self) -> list[Message]:
        out: list[Message] = []
        view = self._view
        start, end = self._start, self._end
        maxLength = self.maxLength
        while end - start >= HEADER_SIZE:
            kind, flags, nparts, length = HEADER.unpack_from(self._scratch, start)
            if length < 8 * nparts or (maxLength is not None and length > maxLength):
                raise self._badFrame(nparts, length)
            total = HEADER_SIZE + length
            if end - start >= total:
                body = bytearray(view[start + HEADER_SIZE : start + total])
                start += total
                out.append(self._message(kind, flags, nparts, body))
                continue
            if total > SMALL_MESSAGE:
                # Read the rest into buffers of its own; what is here goes first.
                have = view[start + HEADER_SIZE : end]
                start = end = 0
                try:
                    self._startLarge(kind, flags, nparts, length)
                except (MemoryError, OverflowError) as e:
                    # (Not a frame a peer of ours would send: bytes that are not ours.)
                    raise OversizeMessage(
                        f"frame announces {length} bytes in {nparts} parts, more than"
                        f" this process can hold ({type(e).__name__})"
                    ) from None
                out.extend(self.feed(have))  # (less than the message: it stays large)
            break
        if start == end:
            start = end = 0
        self._start, self._end = start, end
        return out

    # ------------------------------------------------------------ large messages

    def _startLarge(self, kind: int, flags: int, nparts: int, length: int) -> None:
        large = self._large = _Large(kind, flags, nparts, length)
        if flags & FLAG_BYTES and nparts:
            # Immutable parts are read into bytes objects of their own: first
            # the table, to learn which parts they are.
            large.stage = _TABLE
            large.segment = memoryview(bytearray(8 * nparts))
        else:
            large.body = large.segment = self.pool.get(length)
            large.ask = self.early is not None and nparts > 0

    def _segmentDone(self, large: _Large) -> list[Message]:
        """The current segment is full: go on to the next, or finish the message."""
        if large.segments:
            large.segment = large.segments.popleft()
            large.segFilled = 0
            if large.filling is not None:
                large.filling._progress(large.filled)
            return []
        stage = large.stage
        if stage == _TABLE:
            self._readTable(large)
            if self.early is None:
                large.stage = _PARTS
                self._plan(large, 0, False)
            else:
                large.stage = _HEAD
                self._plan(large, 0, False, upTo=1)
            return self._nextSegment(large)
        if stage == _HEAD:
            out = self._askEarly(large)
            if not out:
                self._plan(large, 1, False)
            large.stage = _PARTS
            return out + self._nextSegment(large)
        # The whole message is in.
        self._large = None
        if large.filling is not None:
            large.filling._complete()
            return []
        if stage == _BODY:
            return [self._message(large.kind, large.flags, large.nparts, large.segment)]
        parts = large.parts
        for index, stream in large.streams.items():
            parts[index].release()
            parts[index] = stream.getvalue()  # the bytes object read into: no copy
        return [Message(large.kind, parts, large.flags)]

    def _nextSegment(self, large: _Large) -> list[Message]:
        """Go on to the first planned segment (or finish, if there is nothing left to read)."""
        large.segment = _EMPTY
        large.segFilled = 0
        return self._segmentDone(large)

    def _readTable(self, large: _Large) -> None:
        raw = partTable(large.nparts).unpack_from(large.segment, 0)
        large.sizes = sizes = tuple(size & ~BYTES_BIT for size in raw)
        large.marks = tuple(
            size != mark and size > 0 for size, mark in zip(sizes, raw, strict=True)
        )
        if 8 * large.nparts + sum(sizes) != large.length:
            raise FramingError(f"parts of {sum(sizes)} bytes in a frame of {large.length}")
        large.parts = [_EMPTY] * large.nparts

    def _plan(self, large: _Large, first: int, early: bool, upTo: int | None = None) -> None:
        """
        Buffers for parts *first* to *upTo*: runs of parts share a pooled
        buffer; an immutable part gets a bytes object of its own, unless the
        message is handed over *early* (to be relayed: it is never unpickled
        here), where it is a read-only view.
        """
        sizes, marks, parts = large.sizes, large.marks, large.parts
        last = len(sizes) if upTo is None else upTo
        i = first
        while i < last:
            if marks[i] and not early:
                stream = io.BytesIO()
                stream.seek(sizes[i] - 1)
                stream.write(b"\0")
                view = stream.getbuffer()
                large.streams[i] = stream
                parts[i] = view
                large.segments.append(view)
                i += 1
                continue
            j = i
            total = 0
            while j < last and not (marks[j] and not early):
                total += sizes[j]
                j += 1
            if total:
                buf = self.pool.get(total)
                large.segments.append(buf)
                pos = 0
                for k in range(i, j):
                    view = buf[pos : pos + sizes[k]]
                    parts[k] = view.toreadonly() if marks[k] else view
                    pos += sizes[k]
            i = j

    def _askEarly(self, large: _Large) -> list[Message]:
        """The message being read, handed over early if its head is in and `early` wants it."""
        if large.stage == _BODY:
            body, nparts, filled = large.segment, large.nparts, large.filled
            table = 8 * nparts
            if filled < table:
                return []
            size0 = struct.unpack_from("!Q", body, 0)[0]
            if filled < table + size0:
                return []
            large.ask = False
            if not self.early(Message(large.kind, [body[table : table + size0]], large.flags)):
                return []
            message = self._message(large.kind, large.flags, nparts, body)
        else:  # _HEAD: the first part is in; the rest is planned as one relayable piece
            if not self.early(Message(large.kind, [large.parts[0]], large.flags)):
                return []
            self._plan(large, 1, True)
            # A first part read into a bytes object's memory is relayed as a
            # read-only view of it, so that it stays marked.
            streams = large.streams
            parts = [p.toreadonly() if i in streams else p for i, p in enumerate(large.parts)]
            message = Message(large.kind, parts, large.flags)
        starts: dict[int, tuple[memoryview, int]] = {}
        pos = 8 * large.nparts
        for part in message.parts:
            starts[id(part)] = (part, pos)
            pos += part.nbytes
        filling = large.filling = Filling(large.length, large.filled, starts)
        return [message._replace(filling=filling)]

    def close(self, error: BaseException | None = None) -> None:
        """The stream ended: an early message still filling fails with *error*."""
        large, self._large = self._large, None
        if large is not None and large.filling is not None:
            lost = error or FramingError("the connection was lost in the middle of it")
            large.filling._fail(lost)

    def _badFrame(self, nparts: int, length: int) -> FramingError:
        """The error for a header that `_parse` rejected: too short, or too long."""
        if length < 8 * nparts:
            return FramingError(f"frame of {length} bytes cannot hold {nparts} parts")
        return OversizeMessage(
            f"frame announces {length} bytes, more than the limit of {self.maxLength}"
        )

    @staticmethod
    def _message(kind: int, flags: int, nparts: int, body: bytearray | memoryview) -> Message:
        view = body if type(body) is memoryview else memoryview(body)
        parts: list[memoryview] = []
        if nparts:
            pos = 8 * nparts
            marked = flags & FLAG_BYTES
            for size in partTable(nparts).unpack_from(body, 0):
                if marked and size & BYTES_BIT:
                    size &= ~BYTES_BIT
                    parts.append(view[pos : pos + size].toreadonly())
                else:
                    parts.append(view[pos : pos + size])
                pos += size
            if pos != len(body):
                raise FramingError(f"parts of {pos} bytes in a frame of {len(body)}")
        elif body:
            raise FramingError(f"{len(body)} stray bytes in a frame without parts")
        return _newMessage(Message, (kind, parts, flags, None))


class SendQueue:
    """
    Buffers waiting to be written, in order, for scatter/gather writers.

    ``peek()`` gives buffers for one ``writev``/``sendmsg``; ``advance(n)``
    drops the *n* bytes that were written, however they split the buffers.
    """

    def __init__(self) -> None:
        self._buffers: deque[Any] = deque()
        self.size = 0
        self._pending = 0  # placeholders (`Filling.pending`) queued

    def __bool__(self) -> bool:
        return bool(self._buffers)

    def __len__(self) -> int:
        return self.size

    def append(self, buffers: list[Any]) -> None:
        """Queue *buffers* (bytes-like objects, or `Filling.pending` placeholders; not copied)."""
        for buf in buffers:
            if type(buf) is _Pending:
                if buf.nbytes:
                    self._buffers.append(buf)
                    self.size += buf.nbytes
                    self._pending += 1
                continue
            view = memoryview(buf)
            if view.ndim != 1 or view.format != "B":
                view = view.cast("B")
            if view.nbytes:
                self._buffers.append(view)
                self.size += view.nbytes

    def peek(self, maxBuffers: int = MAX_IOVECS) -> list[memoryview]:
        """
        Up to *maxBuffers* buffers from the front, without removing them; they
        stop at the first byte that has not arrived yet (see `stalledOn`).
        """
        buffers = self._buffers
        if not self._pending:
            if len(buffers) <= maxBuffers:
                return list(buffers)
            return [buffers[i] for i in range(maxBuffers)]
        out: list[memoryview] = []
        for buf in buffers:
            if len(out) >= maxBuffers:
                break
            if type(buf) is _Pending:
                available = buf.available()
                if available == buf.nbytes:
                    out.append(buf.view)
                    continue
                if available:
                    out.append(buf.view[:available])
                break
            out.append(buf)
        return out

    def stalledOn(self) -> Filling | None:
        """The `Filling` whose bytes the front of the queue waits for, if it waits."""
        if self._pending:
            for buf in self._buffers:
                if type(buf) is _Pending:
                    if buf.available() < buf.nbytes:
                        return buf.filling  # type: ignore[no-any-return]
                    continue
        return None

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
                if type(first) is _Pending:
                    self._pending -= 1
            else:
                buffers[0] = first.advanced(n) if type(first) is _Pending else first[n:]
                n = 0

    def clear(self) -> None:
        self._buffers.clear()
        self.size = 0
        self._pending = 0
