"""
Large payloads: pooled receive buffers, out-of-band bytes, and results
relayed by a worker server as they arrive.
"""

from __future__ import annotations

import gc
import mmap
import os
import pickle
import socket
import struct
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from asynqueue import ProcessQueue, errors
from asynqueue._process._arena import ARENA_MIN, Arena
from asynqueue._wire import _codec, _framing
from asynqueue._wire._channel import RelayCutShort, SocketChannel
from asynqueue._wire._framing import (
    BYTES_MIN,
    POOL_GRAIN,
    POOL_MIN,
    SMALL_MESSAGE,
    BufferPool,
    FrameDecoder,
    FramingError,
    SendQueue,
    encode,
    encodeBytes,
)
from asynqueue._wire._relay import PickledCall, PickledResult
from asynqueue.process import ProcessWorker
from asynqueue.tasks import Status, Task
from asynqueue.wire import RemoteQueue, WireServer

from ..helpers import common as helpers
from ..helpers import large as hl

BIG = 2 * POOL_MIN + 12345


def _feed(decoder: FrameDecoder, data: bytes, step: int) -> list[Any]:
    out = []
    for pos in range(0, len(data), step):
        out.extend(decoder.feed(data[pos : pos + step]))
    return out


# ------------------------------------------------------------------ buffer pool


def test_pool_reuses_a_buffer_only_once_nothing_refers_to_it() -> None:
    pool = BufferPool(keep=8 * POOL_GRAIN)
    first = pool.get(BIG)
    assert len(first) == BIG and not first.readonly
    first[:3] = b"abc"
    held = first[:3]  # a slice outlives the view it came from
    del first
    second = pool.get(BIG)
    second[:3] = b"xyz"
    assert bytes(held) == b"abc"  # a busy buffer is never handed out again
    assert pool.size == 2 * POOL_GRAIN
    del held, second
    third = pool.get(BIG - 1000)  # any free buffer large enough will do
    assert pool.size == 2 * POOL_GRAIN
    del third


def test_pool_keeps_at_most_keep_bytes() -> None:
    pool = BufferPool(keep=2 * POOL_GRAIN)
    views = [pool.get(POOL_GRAIN) for _ in range(3)]
    assert pool.size == 2 * POOL_GRAIN  # the third buffer is not pooled
    assert all(len(v) == POOL_GRAIN for v in views)
    del views
    # Free smaller buffers make room for a larger one.
    big = pool.get(2 * POOL_GRAIN)
    assert pool.size == 2 * POOL_GRAIN
    assert len(big) == 2 * POOL_GRAIN
    # Small sizes are not pooled at all.
    assert len(pool.get(100)) == 100
    assert pool.size == 2 * POOL_GRAIN


def test_decoded_large_parts_are_never_overwritten_while_held() -> None:
    pool = BufferPool()
    decoder = FrameDecoder(pool=pool)
    one = hl.pattern(BIG, 1)
    (first,) = _feed(decoder, encodeBytes(7, [b"head", one]), 100_000)
    part = first.parts[1]
    del first
    (second,) = _feed(decoder, encodeBytes(7, [b"head", hl.pattern(BIG, 2)]), 100_000)
    assert bytes(part) == one
    assert bytes(second.parts[1]) == hl.pattern(BIG, 2)
    size = pool.size
    del part, second
    (third,) = _feed(decoder, encodeBytes(7, [b"head", hl.pattern(BIG, 3)]), 100_000)
    assert bytes(third.parts[1]) == hl.pattern(BIG, 3)
    assert pool.size == size  # a released buffer was used again


def test_zero_copy_unpickled_objects_keep_their_buffer() -> None:
    pool = BufferPool()
    decoder = FrameDecoder(pool=pool)
    results = []
    for fill in (1, 2, 3):
        parts = _codec.dumps(hl.view(BIG, fill))
        (message,) = _feed(decoder, encodeBytes(17, parts), 65536)
        results.append(_codec.loads(message.parts))
        del message
    for fill, result in enumerate(results, 1):
        assert bytes(result.data) == bytes([fill]) * BIG


# ------------------------------------------------------------------ out-of-band bytes


def test_large_bytes_travel_out_of_band_and_come_back_as_bytes() -> None:
    data = hl.pattern(_codec.OOB_MIN, 5)
    parts = _codec.dumps(data)
    assert len(parts) == 2 and memoryview(parts[1]).obj is data  # not copied
    assert len(bytes(parts[0])) < 100
    back = _codec.loads([bytes(p) for p in parts])
    assert type(back) is bytes and back == data
    # A bytes buffer comes back as itself.
    assert _codec.loads([parts[0], data]) is data
    # Small ones stay in the pickle.
    assert len(_codec.dumps(b"x" * 100)) == 1


def test_items_of_lists_tuples_and_call_arguments_go_out_of_band() -> None:
    result = hl.blobs(_codec.OOB_MIN, 1)
    parts = _codec.dumps(result)
    assert len(parts) == 2  # the same object twice is one buffer
    back = _codec.loads([bytes(p) for p in parts])
    assert back == result and back[0] is back[2]
    listed = _codec.loads(_codec.dumps([b"a", result[0]]))
    assert listed == [b"a", result[0]]
    data = hl.pattern(_codec.OOB_MIN, 2)
    call = _codec.dumpsCall(hl.pattern, (data, 3), {"key": data, "small": b"s"})
    assert len(call) == 2
    f, args, kw = _codec.loads([bytes(p) for p in call])
    assert f is hl.pattern and args == (data, 3) and kw == {"key": data, "small": b"s"}
    assert args[0] is kw["key"]
    # bytearrays are mutable: they stay in the pickle (a snapshot).
    assert len(_codec.dumps(bytearray(_codec.OOB_MIN))) == 1


# ------------------------------------------------------------------ immutable parts


def test_large_immutable_parts_are_marked_and_arrive_as_bytes() -> None:
    frozen = hl.pattern(BYTES_MIN, 1)
    mutable = bytearray(hl.pattern(BYTES_MIN + 5, 2))
    readonly = memoryview(hl.pattern(BYTES_MIN + 9, 3)).toreadonly()
    parts = [b"envelope", frozen, mutable, b"small", readonly]
    buffers = encode(17, parts)
    _, flags, nparts, _ = _framing.HEADER.unpack_from(buffers[0])
    assert flags == _framing.FLAG_BYTES
    table = struct.unpack_from(f"!{nparts}Q", buffers[0], _framing.HEADER_SIZE)
    assert [bool(size & _framing.BYTES_BIT) for size in table] == [False, True, False, False, True]
    for step in (1000, 65536, 300_001):
        (message,) = _feed(FrameDecoder(), encodeBytes(17, parts), step)
        got = message.parts
        assert [bytes(p) for p in got] == [bytes(p) for p in parts]
        assert type(got[1]) is bytes and type(got[4]) is bytes
        assert type(got[2]) is memoryview and not got[2].readonly  # still writable
    # Small immutable parts and mutable ones leave the header flag clear.
    assert _framing.HEADER.unpack_from(encode(17, [b"x" * 100, mutable])[0])[1] == 0


def test_a_large_bytes_result_is_the_very_bytes_it_was_read_into() -> None:
    data = hl.pattern(3 * BYTES_MIN, 4)
    stream = encodeBytes(17, [b"envelope", *_codec.dumps(data)])
    decoder = FrameDecoder(early=lambda m: False)  # asked, declined: read as bytes anyway
    (message,) = _feed(decoder, stream, 77_777)
    result = _codec.loads(message.parts[1:])
    assert result == data and result is message.parts[2]  # no copy after the kernel's


def test_relayed_immutable_parts_stay_marked() -> None:
    data = hl.pattern(2 * BYTES_MIN + 7, 5)
    stream = encodeBytes(17, [b"env", b"pickle", data])
    decoder = FrameDecoder(early=lambda m: True)
    (message,) = decoder.feed(stream[:100_000])
    assert message.filling is not None and message.parts[2].readonly
    queue = SendQueue()
    queue.append(encode(17, message.filling.pending(message.parts)))
    sent = b""
    for pos in range(100_000, len(stream) + 50_000, 50_000):
        decoder.feed(stream[pos : pos + 50_000])
        while buffers := queue.peek():
            chunk = b"".join(bytes(b) for b in buffers)
            queue.advance(len(chunk))
            sent += chunk
    assert sent == stream  # the mark included: the next receiver reads it as bytes


def test_a_bad_table_of_marked_parts_is_a_framing_error() -> None:
    header = _framing.HEADER.pack(17, _framing.FLAG_BYTES, 2, 16 + SMALL_MESSAGE * 2)
    table = struct.pack("!2Q", 5, (SMALL_MESSAGE * 3) | _framing.BYTES_BIT)  # sums too much
    with pytest.raises(FramingError):
        FrameDecoder().feed(header + table + b"x" * 1000)
    # A marked empty part is just empty.
    header = _framing.HEADER.pack(17, _framing.FLAG_BYTES, 2, 16 + SMALL_MESSAGE * 2)
    table = struct.pack("!2Q", _framing.BYTES_BIT, SMALL_MESSAGE * 2)
    (message,) = FrameDecoder().feed(header + table + b"y" * SMALL_MESSAGE * 2)
    assert [bytes(p) for p in message.parts] == [b"", b"y" * SMALL_MESSAGE * 2]


# ------------------------------------------------------------------ the arena


def _arenaPair(size: int = 8 * ARENA_MIN) -> tuple[Arena, Arena]:
    """A parent's arena and the child's view of it (in this one process)."""
    parent = Arena.create(size)
    if parent is None:
        pytest.skip("no memfd_create here: process workers run without an arena")
    child = Arena(os.dup(parent.fd), size)
    parent.close()
    return parent, child


def test_an_arena_result_goes_out_as_it_is_written_and_frees_the_arena() -> None:
    parent, child = _arenaPair()
    frozen = hl.pattern(3 * ARENA_MIN + 5, 1)
    mutable = bytearray(hl.pattern(ARENA_MIN, 2))
    parts = [b"pickle", frozen, b"small", mutable]
    placed = child.reserve(parts)
    assert placed is not None
    out, where = placed
    assert [bytes(p) for p in out] == [b"pickle", b"", b"small", b""]  # sent by the socket
    assert child.reserve(parts) is None  # taken: one result at a time
    views, filling = parent.take(out, where)
    assert views[1].readonly and not views[3].readonly
    queue = SendQueue()
    queue.append(encode(17, filling.pending(views)))
    sent = b""
    for progress in child.fill(parts, where):
        while buffers := queue.peek():
            chunk = b"".join(bytes(b) for b in buffers)
            queue.advance(len(chunk))
            sent += chunk
        assert queue  # the rest waits for the child
        if progress < filling.size:
            filling._progress(progress)
        else:
            filling._complete()
    while buffers := queue.peek():
        chunk = b"".join(bytes(b) for b in buffers)
        queue.advance(len(chunk))
        sent += chunk
    assert sent == encodeBytes(17, parts)  # marks included
    assert parent.taken()
    del views, out, filling, buffers, queue
    gc.collect()
    assert not parent.taken()  # the last view is gone: free again
    assert child.reserve(parts) is not None


def test_the_arena_takes_only_what_fits_and_checks_what_it_is_told() -> None:
    parent, child = _arenaPair(4 * ARENA_MIN)
    assert child.reserve([b"pickle", b"x" * 1000]) is None  # nothing large
    assert child.reserve([b"p", hl.pattern(5 * ARENA_MIN, 3)]) is None  # too large
    assert not parent.taken()
    with pytest.raises(ValueError):
        parent.take([b"p", b""], [(1, 0, 10, True)])  # over the flag page
    with pytest.raises(ValueError):
        parent.take([b"p", b""], [(1, 4096, 8 * ARENA_MIN, True)])  # past the end
    with pytest.raises(ValueError):
        parent.take([b"p"], [(3, 4096, 10, True)])  # no such part


def test_held_results_noted_in_the_arena_are_read_back_in_order() -> None:
    parent, child = _arenaPair()
    assert parent.heldResults() == []
    big = pickle.PickleBuffer(bytearray(b"xy" * 10))
    assert child.holdResult(7, "r", 0.5, [b"\x80\x05K\x02."])
    assert child.holdResult(8, "n", 0.25, [])
    assert child.holdResult(9, "e", 1.0, [b"ab", memoryview(b"cdef"), big])
    assert parent.heldResults() == [
        (7, "r", 0.5, [b"\x80\x05K\x02."]),
        (8, "n", 0.25, []),
        (9, "e", 1.0, [b"ab", b"cdef", b"xy" * 10]),
    ]
    child.dropHeld()  # (sent)
    assert parent.heldResults() == []
    assert child.holdResult(10, "r", 0.0, [b"again"])
    assert parent.heldResults() == [(10, "r", 0.0, [b"again"])]


def test_held_results_fill_one_page_at_most() -> None:
    parent, child = _arenaPair()
    assert not child.holdResult(1, "r", 0.0, [b"x" * mmap.PAGESIZE])  # never fits
    strided = memoryview(bytearray(range(20)))[::2]
    assert not child.holdResult(1, "r", 0.0, [b"p", strided])  # (not one run of bytes)
    kept = 0
    while child.holdResult(kept + 1, "r", 0.0, [b"y" * 100]):
        kept += 1
    assert 0 < kept < mmap.PAGESIZE // 100
    assert [r[0] for r in parent.heldResults()] == list(range(1, kept + 1))
    # The large parts of a result still have the rest of the arena.
    assert child.reserve([b"p", hl.pattern(ARENA_MIN, 5)]) is not None


def test_a_torn_or_garbled_held_record_is_left_out() -> None:
    parent, child = _arenaPair()
    assert child.holdResult(1, "r", 0.0, [b"whole"])
    used = child.heldUsed
    # A record written, its count not yet updated (the child died in between).
    struct.pack_into("=qcdHI", child.map, 24 + used, 2, b"r", 0.0, 1, 3)
    assert parent.heldResults() == [(1, "r", 0.0, [b"whole"])]
    # A count that runs past the last record: the whole ones before still come.
    struct.pack_into("=q", child.map, 16, used + 12)
    assert parent.heldResults() == [(1, "r", 0.0, [b"whole"])]
    struct.pack_into("=q", child.map, 16, 1 << 40)  # nonsense
    assert parent.heldResults() == []


# ------------------------------------------------------------------ early messages


def test_early_message_is_handed_over_with_its_filling() -> None:
    asked = []

    def early(message: Any) -> bool:
        asked.append(bytes(message.parts[0]))
        return message.kind == 17

    decoder = FrameDecoder(early=early)
    body = hl.pattern(BIG, 4)
    stream = encodeBytes(17, [b"envelope", body]) + encodeBytes(8, [b"after"])
    out = decoder.feed(stream[:1000])
    assert asked == [b"envelope"] and len(out) == 1
    message = out[0]
    filling = message.filling
    assert filling is not None and not filling.done
    assert filling.size == len(stream) - 16 - len(encodeBytes(8, [b"after"]))
    assert bytes(message.parts[0]) == b"envelope"
    woken = []
    filling.notify(lambda: woken.append(filling.filled))
    out = decoder.feed(stream[1000:5000])
    assert out == [] and woken == [5000 - 16]
    out = _feed(decoder, stream[5000:], 70_000)
    assert filling.done and bytes(message.parts[1]) == body
    assert len(out) == 1 and out[0].filling is None
    assert (out[0].kind, [bytes(p) for p in out[0].parts]) == (8, [b"after"])
    # Declined: the message comes whole, once.
    decoder = FrameDecoder(early=lambda m: False)
    out = _feed(decoder, encodeBytes(17, [b"envelope", body]), 1000)
    assert len(out) == 1 and out[0].filling is None and bytes(out[0].parts[1]) == body


def test_send_queue_sends_pending_parts_as_they_arrive() -> None:
    decoder = FrameDecoder(early=lambda m: True)
    body = hl.pattern(BIG, 6)
    stream = encodeBytes(17, [b"env", body])
    (message,) = decoder.feed(stream[:300_000])
    filling = message.filling
    queue = SendQueue()
    queue.append(encode(18, [b"new envelope", *filling.pending(message.parts[1:])]))
    queue.append([b"next message"])
    sent = b""
    for piece in range(300_000, len(stream) + 100_000, 100_000):
        while True:
            buffers = queue.peek()
            if not buffers:
                break
            chunk = b"".join(bytes(b) for b in buffers)[:77_777]
            queue.advance(len(chunk))
            sent += chunk
        assert queue.stalledOn() is (filling if piece < len(stream) else None)
        decoder.feed(stream[piece : piece + 100_000])
    while queue:
        chunk = b"".join(bytes(b) for b in queue.peek())
        queue.advance(len(chunk))
        sent += chunk
    assert sent == encodeBytes(18, [b"new envelope", body]) + b"next message"


def test_a_lost_stream_fails_the_early_message() -> None:
    decoder = FrameDecoder(early=lambda m: True)
    (message,) = decoder.feed(encodeBytes(17, [b"env", hl.pattern(BIG, 7)])[:100_000])
    woken = []
    message.filling.notify(lambda: woken.append(message.filling.error))
    decoder.close(ConnectionError("gone"))
    assert isinstance(message.filling.error, ConnectionError) and woken == [message.filling.error]
    # After a failure or the end, notify calls back at once.
    message.filling.notify(lambda: woken.append("again"))
    assert woken[-1] == "again"


# ------------------------------------------------------------------ channels and workers


class _Sink:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.lost: list[Any] = []
        self.done: Deferred[None] = Deferred()

    def messageReceived(self, message: Any) -> None:
        self.messages.append((message.kind, [bytes(p) for p in message.parts]))
        if not self.done.called:
            self.done.callback(None)

    def channelLost(self, reason: Any) -> None:
        self.lost.append(reason)
        if not self.done.called:
            self.done.callback(None)


class _Relay(_Sink):
    """Sends every message on to *dest* as it arrives (early)."""

    dest: SocketChannel

    def wantsEarly(self, message: Any) -> bool:
        return True

    def messageReceived(self, message: Any) -> None:
        filling = message.filling
        parts = message.parts if filling is None else filling.pending(message.parts)
        self.dest.send(encode(message.kind, parts))


class ChannelRelayTest(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.feeder, sourceSide = socket.socketpair()
        destSide, sinkSide = socket.socketpair()
        self.relay = _Relay()
        self.source = SocketChannel(sourceSide, self.relay, reactor)
        self.relay.dest = SocketChannel(destSide, _Sink(), reactor)
        self.sink = _Sink()
        self.sinkChannel = SocketChannel(sinkSide, self.sink, reactor, maxLength=None)
        for channel in (self.source, self.relay.dest, self.sinkChannel):
            self.addCleanup(channel.loseConnection)
        self.addCleanup(self.feeder.close)
        self.feeder.setblocking(False)

    @inlineCallbacks
    def feed(self, data: bytes, step: int = 100_000) -> Any:
        for pos in range(0, len(data), step):
            self.feeder.sendall(data[pos : pos + step])
            yield deferLater(reactor, 0.002, lambda: None)

    @inlineCallbacks
    def test_a_message_goes_on_while_it_arrives(self) -> Any:
        body = hl.pattern(4 * POOL_MIN, 8)
        stream = encodeBytes(17, [b"env", body])
        yield self.feed(stream[: len(stream) // 2])
        # Half of it is through already.
        self.assertGreater(self.sinkChannel._decoder.pending(), len(stream) // 3)
        self.assertEqual(self.sink.messages, [])
        yield self.feed(stream[len(stream) // 2 :] + encodeBytes(9, [b"small"]))
        yield self.sink.done
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.sink.messages, [(17, [b"env", body]), (9, [b"small"])])

    @inlineCallbacks
    def test_a_message_cut_short_closes_the_relaying_channel(self) -> Any:
        stream = encodeBytes(17, [b"env", hl.pattern(4 * POOL_MIN, 9)])
        yield self.feed(stream[: len(stream) // 2])
        self.feeder.close()
        yield self.sink.done
        self.assertEqual(self.sink.messages, [])
        self.assertEqual(len(self.sink.lost), 1)
        self.assertIn("middle of a message", str(self.sink.lost[0].value))
        self.assertFalse(self.relay.dest.connected)
        self.assertTrue(self.relay.dest._receiver.lost[0].check(RelayCutShort))


class ChannelSendTest(TestCase):
    """A message the kernel takes only in part is finished from the send queue, in order."""

    timeout = 20

    def tcpPair(self) -> tuple[socket.socket, socket.socket]:
        """Both ends of a loopback TCP connection."""
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        return client, server

    @inlineCallbacks
    def test_partial_writes_are_finished_in_order(self) -> Any:
        senderSide, sinkSide = socket.socketpair()
        yield self.checkPartialWrites(senderSide, sinkSide)

    @inlineCallbacks
    def test_partial_writes_over_tcp(self) -> Any:
        # Over TCP the receiver also asks the kernel to wake it only once a
        # good piece of a large message is in (SO_RCVLOWAT), and must drop
        # that again for the small messages that follow.
        senderSide, sinkSide = self.tcpPair()
        yield self.checkPartialWrites(senderSide, sinkSide)

    @inlineCallbacks
    def test_a_low_water_mark_never_reached_only_stalls(self) -> Any:
        # A sender that stops short of the mark (as a kernel that fails to
        # wake us would look): the watchdog reads what is there, and the
        # socket goes on without a mark.
        sender, sinkSide = self.tcpPair()
        self.addCleanup(sender.close)
        sink = _Sink()
        receiver = SocketChannel(sinkSide, sink, reactor, maxLength=None)
        self.addCleanup(receiver.loseConnection)
        body = hl.pattern(3 * POOL_MIN, 6)
        stream = encodeBytes(31, [body])
        first, second = 100_000, 400_000
        sender.sendall(stream[:first])
        yield helpers.waitUntil(lambda: receiver._decoder.pending() >= first)
        sender.sendall(stream[first:second])  # less than the mark asks for
        yield helpers.waitUntil(lambda: receiver._decoder.pending() >= second, limit=2)
        sender.sendall(stream[second:] + encodeBytes(32, [b"after"]))
        yield helpers.waitUntil(lambda: len(sink.messages) == 2)
        self.assertEqual(sink.messages, [(31, [body]), (32, [b"after"])])

    @inlineCallbacks
    def checkPartialWrites(self, senderSide: socket.socket, sinkSide: socket.socket) -> Any:
        senderSide.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sink = _Sink()
        sender = SocketChannel(senderSide, _Sink(), reactor)
        receiver = SocketChannel(sinkSide, sink, reactor, maxLength=None)
        self.addCleanup(sender.loseConnection)
        self.addCleanup(receiver.loseConnection)
        big = hl.pattern(3 * POOL_MIN, 5)
        sender.send(encode(21, [b"first", big]))
        self.assertGreater(sender.bufferedBytes, 0)  # the kernel took only part of it
        sender.send(encode(22, [b"second"]))  # queued behind the rest
        yield helpers.waitUntil(lambda: len(sink.messages) == 2)
        self.assertEqual(sender.bufferedBytes, 0)
        sender.send(encode(23, [b"third"]))  # nothing queued: written at once
        self.assertEqual(sender.bufferedBytes, 0)
        yield helpers.waitUntil(lambda: len(sink.messages) == 3)
        self.assertEqual(
            sink.messages, [(21, [b"first", big]), (22, [b"second"]), (23, [b"third"])]
        )
        # Again, with the small message a moment after the large one.
        sender.send(encode(24, [big]))
        yield helpers.waitUntil(lambda: len(sink.messages) == 4)
        yield deferLater(reactor, 0.01, lambda: None)
        sender.send(encode(25, [b"fifth"]))
        yield helpers.waitUntil(lambda: len(sink.messages) == 5, limit=5)
        self.assertEqual(sink.messages[3:], [(24, [big]), (25, [b"fifth"])])


class WorkerTest(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_messages_of_more_buffers_than_one_write_takes(self) -> Any:
        # Each View is an out-of-band buffer of its own: 700 of them make
        # messages of more parts than one scatter/gather write may carry.
        q = ProcessQueue(1, returnFailure=True)
        self.addCleanup(q.shutdown)
        count = _framing.MAX_IOVECS + 188
        views = yield q.call(hl.manyViews, count, 100)
        self.assertEqual(
            [bytes(v.data) for v in views], [bytes(v.data) for v in hl.manyViews(count, 100)]
        )
        self.assertEqual((yield q.call(len, hl.manyViews(count, 100))), count)
        self.assertEqual((yield q.call(len, b"abc")), 3)  # the stream is still in step
        # An iterator's first batch: 256 items of three buffers each, in one write.
        items = yield helpers.collect((yield q.call(hl.viewTriples, 300, 10)))
        self.assertEqual(
            [[bytes(v.data) for v in item] for item in items],
            [[bytes(v.data) for v in item] for item in hl.viewTriples(300, 10)],
        )

    @inlineCallbacks
    def test_results_held_by_the_caller_are_never_overwritten(self) -> Any:
        q = ProcessQueue(1, returnFailure=True)
        self.addCleanup(q.shutdown)
        size = 3 * POOL_MIN
        held = []
        for fill in range(1, 6):
            held.append((yield q.call(hl.view, size, fill)))
            data = yield q.call(hl.pattern, size, fill)  # and plain bytes in between
            self.assertEqual(data, hl.pattern(size, fill))
        for fill, result in enumerate(held, 1):
            self.assertIsInstance(result.data, memoryview)  # no copy was made
            self.assertFalse(result.data.readonly)  # sent writable, received writable
            self.assertEqual(bytes(result.data), bytes([fill]) * size)
        del held, result
        gc.collect()
        pooled = _framing.POOL.size
        for fill in range(3):
            self.assertEqual((yield q.call(hl.pattern, size, fill)), hl.pattern(size, fill))
        self.assertEqual(_framing.POOL.size, pooled)  # released buffers were used again

    @inlineCallbacks
    def test_a_relayed_call_gets_what_its_relay_asks_for_and_no_more(self) -> Any:
        # The worker passes a relayed call's wire flags on unread, and hands
        # its result over pickled, early only if the relay is `early`.
        worker = ProcessWorker()
        self.addCleanup(worker.stop)
        size = 3 * ARENA_MIN + 17

        def relayed(seed: int, early: bool, flags: int) -> Deferred[Any]:
            pc = PickledCall(_codec.dumpsCall(hl.pattern, (size, seed), {}), "pattern")
            pc.early, pc.wireFlags = early, flags
            task = Task(pc)
            worker.run(task)
            return task.d

        status, plain = yield relayed(1, False, 0)
        self.assertIs(status, Status.RESULT)
        self.assertIsInstance(plain, PickledResult)
        self.assertIsNone(plain.filling)  # read whole before it was handed over
        self.assertEqual(_codec.loads(plain.parts), hl.pattern(size, 1))
        (child,) = worker._children
        if child.arena is None:
            raise SkipTest("no memfd_create here: process workers run without an arena")
        status, shared = yield relayed(2, True, _codec.FLAG_SHARED_RESULT)
        self.assertIs(status, Status.RESULT)
        self.assertIsNotNone(shared.filling)  # handed over while the child wrote it
        yield helpers.waitUntil(lambda: shared.filling.done)
        self.assertEqual(_codec.loads(shared.parts), hl.pattern(size, 2))
        start = mmap.PAGESIZE
        self.assertEqual(child.arena.map[start : start + size], hl.pattern(size, 2))
        shared.parts = []  # (frees the arena)

    @inlineCallbacks
    def test_large_arguments_go_through_the_inbox_and_are_never_overwritten(self) -> Any:
        q = ProcessQueue(1, returnFailure=True)
        self.addCleanup(q.shutdown)
        self.assertEqual((yield q.call(len, b"up")), 2)
        (worker,) = q.workers()
        (child,) = worker._children
        if child.inbox is None:
            raise SkipTest("no memfd_create here: process workers run without an inbox")
        inbox = child.inbox
        size = 2 * ARENA_MIN + 5
        start = mmap.PAGESIZE
        data = hl.pattern(size, 3)
        self.assertEqual((yield q.call(len, data)), size)
        self.assertEqual(inbox.map[start : start + size], data)  # it came this way
        yield helpers.waitUntil(lambda: not inbox.taken())  # and the child let go of it
        # A View unpickles without a copy: kept, it keeps the inbox taken...
        self.assertEqual((yield q.call(hl.keep, hl.view(size, 1))), 1)
        self.assertTrue(inbox.taken())
        # ...so the next large argument goes by the socket, and the first stays intact.
        self.assertEqual((yield q.call(hl.keep, hl.view(size, 2))), 2)
        self.assertEqual((yield q.call(hl.kept)), [b"\x01" * size, b"\x02" * size])
        yield q.call(hl.release)
        yield helpers.waitUntil(lambda: not inbox.taken())
        self.assertEqual((yield q.call(len, hl.pattern(size, 4))), size)
        self.assertEqual(inbox.map[start : start + size], hl.pattern(size, 4))
        # Once the child is gone, its shared memory goes too (not at the next
        # garbage collection).
        yield q.shutdown()
        self.assertTrue(inbox.map.closed)
        self.assertIsNone(child.inbox)

    @inlineCallbacks
    def test_a_process_server_hands_large_arguments_to_its_child_through_the_inbox(
        self,
    ) -> Any:
        server, q = yield self.remoteQueue(1)
        self.assertEqual((yield q.call(len, b"up")), 2)
        (worker,) = server.queue.workers()
        (child,) = worker._children
        if child.inbox is None:
            raise SkipTest("no memfd_create here: process workers run without an inbox")
        size = 3 * ARENA_MIN + 1
        for seed in range(3):
            data = hl.pattern(size, seed)
            self.assertEqual((yield q.call(hl.checksum, data)), hl.checksum(data))
            start = mmap.PAGESIZE
            self.assertEqual(child.inbox.map[start : start + size], data)

    @inlineCallbacks
    def remoteQueue(self, n: int) -> Any:
        """A process server of *n* workers here, and a queue of *n* connections to it."""
        server = WireServer("tcp:0:interface=127.0.0.1", workers=n)
        yield server.start()
        self.addCleanup(server.stop)
        q = RemoteQueue(f"tcp:127.0.0.1:{server.address.port}", N=n, returnFailure=True)
        self.addCleanup(q.shutdown)
        yield q.whenConnected()
        return server, q

    @inlineCallbacks
    def test_a_process_server_relays_large_results_through_the_arena(self) -> Any:
        server, q = yield self.remoteQueue(1)
        size = 3 * ARENA_MIN + 17
        # One child: while one result holds the arena, the next go by the socket.
        results = yield gatherResults([q.call(hl.pattern, size, seed) for seed in range(4)])
        for seed, result in enumerate(results):
            self.assertEqual(result, hl.pattern(size, seed))
            self.assertIs(type(result), bytes)
        (worker,) = server.queue.workers()
        (child,) = [c for c in worker._children if c.arena is not None]
        arena = child.arena
        yield helpers.waitUntil(lambda: not arena.taken())  # sent: free again
        result = yield q.call(hl.pattern, size, 9)
        self.assertEqual(result, hl.pattern(size, 9))
        # It came through the arena: its bytes are still there.
        start = mmap.PAGESIZE
        self.assertEqual(arena.map[start : start + size], result)
        yield helpers.waitUntil(lambda: not arena.taken())

    @inlineCallbacks
    def test_a_child_dying_as_it_returns_a_large_result_never_hangs(self) -> Any:
        # Wherever the kill lands (before the result, while the arena is being
        # written, after it was sent), the call ends: with the whole, right
        # result or with a worker error; and the server lives on.
        _, q = yield self.remoteQueue(1)
        size = 20 * ARENA_MIN
        for delay in (0.0, 0.001, 0.002, 0.004):
            try:
                outcome = yield q.call(hl.bigThenDie, size, delay)
            except errors.WorkerError:
                pass  # lost, twice: the server's child died each time
            else:
                self.assertTrue(outcome == hl.pattern(size, 1), "a wrong result")
            self.assertEqual((yield q.call(len, b"abc")), 3)

    @inlineCallbacks
    def test_a_server_lets_go_of_a_finished_calls_arguments(self) -> Any:
        # Without the garbage collector: what a finished call still holds
        # through reference cycles stays held (and a large argument would
        # keep its receive buffer busy).
        _, q = yield self.remoteQueue(1)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        blob = hl.pattern(3 * ARENA_MIN, 3)
        for _ in range(2):
            self.assertEqual((yield q.call(len, blob)), len(blob))
        held = [o for o in gc.get_objects() if type(o) is PickledCall and o.parts]
        self.assertEqual(held, [])

    @inlineCallbacks
    def test_a_server_relays_large_results_as_they_come(self) -> Any:
        _, q = yield self.remoteQueue(2)
        sizes = [3 * 2**20 + 17, 5 * POOL_MIN, 1000, 2 * 2**20]
        calls = [q.call(hl.pattern, size, seed) for seed, size in enumerate(sizes)]
        calls.append(q.call(hl.blobs, POOL_MIN, 9))
        calls.append(q.call(hl.view, POOL_MIN, 7))
        results = yield gatherResults(calls)
        for seed, size in enumerate(sizes):
            self.assertEqual(results[seed], hl.pattern(size, seed))
            self.assertIs(type(results[seed]), bytes)
        self.assertEqual(results[4], hl.blobs(POOL_MIN, 9))
        self.assertEqual(bytes(results[5].data), bytes([7]) * POOL_MIN)
        self.assertFalse(results[5].data.readonly)
        # The relayed calls' buffers are free again on the server (the same process here).
        self.assertEqual(len(q.workers()), 2)
        self.assertEqual((yield q.call(pickle.dumps, 1)), pickle.dumps(1))
