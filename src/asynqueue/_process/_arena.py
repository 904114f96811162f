"""
Shared-memory arenas between a process worker and its child: one for the
large results that a worker server relays, one (the *inbox*) for the large
arguments of any call.

A worker server passes a child's result on to its client without
unpickling it. Through the socketpair, a 10 MB result costs the child a
copy into the kernel and the server one out of it, before the server's
copy into the client's socket: the server, which also runs the reactor,
does twice the work of its client. With an arena, the child copies the
large parts of its result into memory that both processes map (one
``memcpy``) and sends only where they are; the server sends them from
there, straight into the client's socket. It need not wait for the whole
copy: the child says where the parts will be first, then copies them in
growing pieces and reports after each how far it got (PLACED messages),
and the server sends on what is there (a `Filling`, as for a message
relayed as it arrives).

One result at a time: the first byte of the arena says whether it is
taken. The child takes it (if it is free and the parts fit) and the
server frees it once nothing refers to the parts any more: the views it
hands out all export one ``ctypes`` array over the arena (which can be
weakly referred to), and a finalizer frees the arena when that object
dies: when the last byte was sent, or the result dropped, whichever way. A child that
finds the arena taken sends its result through the socket as before.

The inbox works the same way round: the parent takes it (`reserve`) for
the parts of 1 MiB or more of a call when it is free, copies them in at
once (`fill`) and sends the call with where they are; the child reads them
from there (`lend`: the views, which unpickling copies from, or keeps, as a
NumPy array would), and the inbox is free again once the child holds no
view of it. That spares a large argument the trip through the socket (the
kernel's copy in and the child's copy out): one ``memcpy`` on each side. A
call that finds the inbox taken (a call before it not run yet, or an object
the child keeps) goes by the socket.

The memory is a ``memfd`` (Linux): where there is none, there is no arena.
Pages are allocated the first time they are written and kept for the
child's life: an arena of `ARENA_SIZE` bytes costs as much memory as the
largest result (or arguments) it carried, shared by both processes; a
child's memory limit (``maxRSS``) does not count them.

Standard library only: the child loads this file on its own.
"""

from __future__ import annotations

import mmap
import os
import struct
import weakref

from .._wire._framing import Filling, nbytes

TYPE_CHECKING = False
if TYPE_CHECKING:  # the child must not pay for importing typing
    from collections.abc import Iterator
    from typing import Any

__all__ = ["ARENA_MIN", "ARENA_SIZE", "BOARD_SLOTS", "Arena", "PollBoard"]

#: Bytes of an arena (address space; memory only as far as it is used).
ARENA_SIZE = 32 * 1024 * 1024
#: Parts of a result at least this large go through the arena.
ARENA_MIN = 1024 * 1024

# The first page holds the flag; parts start page-aligned after it.
_DATA = mmap.PAGESIZE
_FREE, _TAKEN = 0, 1
# Also in the first page of a child's results arena: the task ID of the call
# it started last (a native int64), which its parent reads if it dies.
_STARTED = 8
# And the results it holds back (see `_child`, *Results*), which its parent
# also reads if it dies, so that a call that finished is not lost or run
# again: the bytes of records in use (a native int64), then the records, up
# to the end of the page. A record: the task ID, the status letter, the
# seconds the call ran, how many parts; then each part, its length first.
_HELD_USED = 16
_HELD = 24
_HELD_RECORD = struct.Struct("=qcdH")
_HELD_PART = struct.Struct("=I")
_HELD_USED_SLOT = struct.Struct("=q")
_HELD_ONE = struct.Struct("=qcdHI")  # a record and the length of its one part


class Arena:
    """One arena, as either process maps it (see the module docstring)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.map = mmap.mmap(fd, size)
        # The most bytes ever written (the child's memory that it costs).
        self.highWater = 0
        # The child's side: bytes of held-result records in use (see holdResult).
        self.heldUsed = 0

    @classmethod
    def create(cls, size: int = ARENA_SIZE) -> Arena | None:
        """A new arena (the parent's side), or None where there can be none."""
        if not hasattr(os, "memfd_create") or size <= _DATA:
            return None
        try:
            import ctypes  # noqa: F401  (`take` needs it)
        except ImportError:
            return None
        fd = _sharedFile("asynqueue-arena", size)
        if fd is None:
            return None
        try:
            return cls(fd, size)
        except OSError:
            os.close(fd)
            return None

    def close(self) -> None:
        """Close the file descriptor; the mapping lasts while anything uses it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def unmap(self) -> None:
        """
        Let go of the memory now (its other side is gone), unless views of
        it are still out: then when the last one goes.
        """
        try:
            self.map.close()
        except BufferError:
            pass  # views are out: their holder's finalizer keeps the map until they go

    def startedSlot(self) -> memoryview:
        """
        The child's side of the started-call slot (``slot[0] = taskID``): a
        store into shared memory, no system call, so it costs nothing per call.
        """
        return memoryview(self.map)[_STARTED : _STARTED + 8].cast("q")

    def lastStarted(self) -> int:
        """The parent's side: the task ID in the slot (0: none started yet)."""
        value: int = struct.unpack_from("q", self.map, _STARTED)[0]
        return value

    def holdResult(self, taskID: int, status: str, seconds: float, parts: list[Any]) -> bool:
        """
        The child's side: note a result it holds back (see `heldResults`),
        after the others. False if it does not fit: then send them all now.
        """
        region = self.map
        pos = _HELD + self.heldUsed
        letter = status.encode()
        if len(parts) == 1 and type(parts[0]) is bytes:  # (the usual case, in one go)
            part = parts[0]
            end = pos + _HELD_ONE.size + len(part)
            if end > _DATA:
                return False
            _HELD_ONE.pack_into(region, pos, taskID, letter, seconds, 1, len(part))
            region[end - len(part) : end] = part
        elif not parts:  # (a call that returned None)
            end = pos + _HELD_RECORD.size
            if end > _DATA:
                return False
            _HELD_RECORD.pack_into(region, pos, taskID, letter, seconds, 0)
        else:
            try:
                views = [memoryview(part).cast("B") for part in parts]
            except (TypeError, ValueError):
                return False  # (a buffer that is not one run of bytes: sent as it is)
            end = pos + _HELD_RECORD.size + sum(_HELD_PART.size + len(v) for v in views)
            if end > _DATA:
                return False
            _HELD_RECORD.pack_into(region, pos, taskID, letter, seconds, len(parts))
            pos += _HELD_RECORD.size
            for view in views:
                _HELD_PART.pack_into(region, pos, len(view))
                pos += _HELD_PART.size
                region[pos : pos + len(view)] = view
                pos += len(view)
        # The record counts once it is whole: a child that dies while
        # writing it leaves it out.
        self.heldUsed = end - _HELD
        _HELD_USED_SLOT.pack_into(region, _HELD_USED, end - _HELD)
        return True

    def dropHeld(self) -> None:
        """The child's side: the held results went out."""
        if self.heldUsed:
            self.heldUsed = 0
            _HELD_USED_SLOT.pack_into(self.map, _HELD_USED, 0)

    def heldResults(self) -> list[tuple[int, str, float, list[bytes]]]:
        """
        The parent's side, once its child is gone: the results it held
        back, ``(taskID, status, seconds, parts)`` each, in the order the
        calls ran.
        """
        region = self.map
        used = _HELD_USED_SLOT.unpack_from(region, _HELD_USED)[0]
        end = _HELD + used
        if not 0 < used <= _DATA - _HELD:
            return []
        results = []
        pos = _HELD
        try:
            while pos < end:
                taskID, letter, seconds, n = _HELD_RECORD.unpack_from(region, pos)
                pos += _HELD_RECORD.size
                parts = []
                for _ in range(n):
                    (size,) = _HELD_PART.unpack_from(region, pos)
                    pos += _HELD_PART.size
                    if pos + size > end:
                        raise ValueError("a held result runs past its records")
                    parts.append(region[pos : pos + size])
                    pos += size
                results.append((taskID, letter.decode(), seconds, parts))
        except (struct.error, ValueError, UnicodeDecodeError):
            pass  # (the records are the child's: keep the whole ones before)
        return results

    # ------------------------------------------------------------ the writer

    def reserve(self, parts: list[Any], minSize: int = ARENA_MIN) -> tuple[list[Any], Any] | None:
        """
        Take the arena for the parts of *minSize* bytes or more, if it is
        free and they fit: returns the parts with those left empty, and the
        description of where they go (for `fill` and `take`). None if not.
        """
        where = []
        pos = _DATA
        for index, part in enumerate(parts):
            size = nbytes(part)
            if size >= minSize:
                where.append((index, pos, size, memoryview(part).readonly))
                pos += -(-size // 64) * 64
        if not where or pos > self.size or self.map[0] != _FREE:
            return None  # (the usual case, for most calls: no part that large)
        self.map[0] = _TAKEN
        self.highWater = max(self.highWater, pos)
        out = list(parts)
        for index, _, _, _ in where:
            out[index] = b""
        return out, where

    def fill(self, parts: list[Any], where: Any, first: int = ARENA_MIN) -> Iterator[int]:
        """
        Copy the reserved parts in, in growing pieces (*first* bytes, then
        twice as many each time): yields how far the arena is written after
        each piece, so that the other side can start on what is there.
        """
        region = self.map
        piece = first
        for index, pos, size, _ in where:
            view = memoryview(parts[index])
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            done = 0
            while done < size:
                n = min(piece, size - done)
                region[pos + done : pos + done + n] = view[done : done + n]
                done += n
                if done < size:
                    yield pos + done
                    piece *= 2
        yield where[-1][1] + where[-1][2]

    # ------------------------------------------------------------ the reader

    def take(self, parts: list[Any], where: Any) -> tuple[list[Any], Filling]:
        """
        *parts* with the ones reserved in the arena (as `reserve` described
        them) filled in: views of the arena, read-only where the child's part
        was; and the `Filling` of those views, which the child's progress
        reports advance (see `fill`). The arena is free again once no view
        of it is left.
        """
        out, starts, end = self._views(parts, where)
        return out, Filling(end, _DATA, starts)

    def lend(self, parts: list[Any], where: Any) -> list[Any]:
        """
        *parts* with the reserved ones filled in, for a side that reads them
        once they are all written (a child reading its call's arguments): the
        arena is free again once no view of it is left.
        """
        return self._views(parts, where)[0]

    def _views(self, parts: list[Any], where: Any) -> tuple[list[Any], dict[int, Any], int]:
        for index, pos, size, _ in where:
            if not (0 <= index < len(parts) and pos >= _DATA and pos + size <= self.size):
                raise ValueError(f"no such part in the arena: {(index, pos, size)}")
        import ctypes

        end = where[-1][1] + where[-1][2]
        self.highWater = max(self.highWater, end)
        # An object of our own over the memory, which every view refers to
        # (a view of a view refers to the first exporter): when it dies, no
        # view is left, and its finalizer frees the arena.
        holder = (ctypes.c_char * (end - _DATA)).from_buffer(self.map, _DATA)
        weakref.finalize(holder, _free, self.map)
        whole = memoryview(holder).cast("B")
        del holder  # the views keep it alive, and nothing else does
        out = list(parts)
        starts: dict[int, tuple[memoryview, int]] = {}
        for index, pos, size, readonly in where:
            view = whole[pos - _DATA : pos - _DATA + size]
            if readonly:
                view = view.toreadonly()
            out[index] = view
            starts[id(view)] = (view, pos)
        return out, starts, end

    def taken(self) -> bool:
        """Whether a result (or a call's arguments) holds the arena."""
        return self.map[0] != _FREE


def _free(region: mmap.mmap) -> None:
    try:
        region[0] = _FREE
    except ValueError:  # the mapping was closed
        pass


def _sharedFile(name: str, size: int) -> int | None:
    """A new ``memfd`` of *size* bytes (close-on-exec), or None where there can be none."""
    memfdCreate = getattr(os, "memfd_create", None)
    if memfdCreate is None:
        return None
    try:
        fd = memfdCreate(name, os.MFD_CLOEXEC)
    except OSError:
        return None
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        return None
    return fd


# Children of one parent that can have a place on its `PollBoard`.
BOARD_SLOTS = 256
_STAMP = struct.Struct("=q")


class PollBoard:
    """
    Memory that the children of one parent all map, for them to poll only
    while that leaves the parent a CPU (see `asynqueue._process._child`,
    *Waiting*). Per child: a byte, 1 while it runs calls or polls for its
    next one, 0 while it blocks in a read; and when it last took calls in
    (``time.monotonic_ns``). Each child writes only its own; the parent
    clears them when the child has ended, and says how many places are in
    use (the first *extent* of them); readers take values that may be a
    moment old.
    """

    _EXTENT = BOARD_SLOTS  # (the extent, as an 8-byte number)
    _STAMPS = BOARD_SLOTS + _STAMP.size
    SIZE = _STAMPS + BOARD_SLOTS * _STAMP.size

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.map = mmap.mmap(fd, self.SIZE)
        self.stamps = memoryview(self.map)[self._STAMPS :].cast("q")

    @classmethod
    def create(cls) -> PollBoard | None:
        """A new board (the parent's side), or None where there can be none."""
        fd = _sharedFile("asynqueue-board", cls.SIZE)
        if fd is None:
            return None
        try:
            return cls(fd)
        except (OSError, ValueError):
            os.close(fd)
            return None

    def busy(self) -> int:
        """How many children are busy now."""
        return self.map[: _STAMP.unpack_from(self.map, self._EXTENT)[0]].count(1)

    def mark(self, slot: int, busy: bool) -> None:
        self.map[slot] = busy

    def stamp(self, slot: int, when: int) -> None:
        """The child at *slot* took calls in at *when*."""
        self.stamps[slot] = when

    def recent(self, slot: int, since: int) -> int:
        """How many children but the one at *slot* took calls in since *since*."""
        stamps = self.stamps
        n = 0
        for i in range(_STAMP.unpack_from(self.map, self._EXTENT)[0]):
            if stamps[i] > since and i != slot:
                n += 1
        return n

    def setExtent(self, extent: int) -> None:
        """(The parent) places from *extent* on are not in use."""
        _STAMP.pack_into(self.map, self._EXTENT, extent)

    def clear(self, slot: int) -> None:
        """(The parent) the child at *slot* has ended."""
        self.map[slot] = 0
        self.stamps[slot] = 0
