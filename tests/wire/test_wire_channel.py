"""A channel over a real socketpair: what a receiver sends in answer to one read."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import TestCase

from asynqueue._wire._channel import SocketChannel
from asynqueue._wire._client import BurstSender
from asynqueue._wire._framing import FrameDecoder, encode


class _Answerer(BurstSender):
    """
    Answers every message it gets with its parts, through `sendSoon` (as
    `WireClient` does). ``allIn`` fires a reactor turn after the *expected*
    number of messages came in; ``leftAfterRead`` says whether answers were
    still waiting when the last read ended (None: no read ended).
    """

    def __init__(self, expected: int) -> None:
        self.reactor = reactor
        self.channel: SocketChannel | None = None
        self.outbox: list[bytes] = []
        self.received = 0
        self.expected = expected
        self.allIn: Deferred[None] = Deferred()
        self.leftAfterRead: bool | None = None

    def flush(self) -> None:
        self.unscheduleSend()
        outbox, self.outbox = self.outbox, []
        if outbox and self.channel is not None:
            self.channel.send(encode(7, outbox))

    def messageReceived(self, message: Any) -> None:
        self.outbox.extend(bytes(p) for p in message.parts)
        self.sendSoon(self.flush)
        self.received += 1
        if self.received == self.expected:
            reactor.callLater(0, self.allIn.callback, None)

    def holdSends(self, hold: bool) -> None:
        BurstSender.holdSends(self, hold)
        if not hold:
            self.leftAfterRead = self._sendCall is not None or bool(self.outbox)

    def channelLost(self, reason: Any) -> None:
        pass


class HeldSendsTest(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.peer, side = socket.socketpair()
        self.addCleanup(self.peer.close)
        self.answerer = _Answerer(5)
        self.channel = self.answerer.channel = SocketChannel(side, self.answerer, reactor)
        self.addCleanup(self.channel.loseConnection)

    def _answers(self) -> list[list[bytes]]:
        """Every message the channel sent to the peer so far."""
        self.peer.setblocking(False)
        data = b""
        while True:
            try:
                chunk = self.peer.recv(65536)
            except BlockingIOError:
                break
            data += chunk
        return [[bytes(p) for p in m.parts] for m in FrameDecoder().feed(data)]

    @inlineCallbacks
    def test_answers_to_one_read_go_out_as_one_message(self) -> Any:
        # Five messages in one write arrive in one read: although the first
        # comes after a pause, its answer waits for the other four.
        self.peer.sendall(b"".join(b"".join(encode(3, [b"m%d" % i])) for i in range(5)))
        yield self.answerer.allIn
        self.assertEqual(self._answers(), [[b"m0", b"m1", b"m2", b"m3", b"m4"]])

    @inlineCallbacks
    def test_a_lone_answer_goes_out_within_the_read(self) -> Any:
        self.answerer.expected = 1
        self.peer.sendall(b"".join(encode(3, [b"alone"])))
        yield self.answerer.allIn
        # Sent when the read ended, not at a later reactor turn.
        self.assertIs(self.answerer.leftAfterRead, False)
        self.assertEqual(self._answers(), [[b"alone"]])


class _Recorder:
    """Records the messages it gets and how the channel ended."""

    def __init__(self) -> None:
        self.messages: list[list[bytes]] = []
        self.reason: Any = None
        self.lost: Deferred[None] = Deferred()

    def messageReceived(self, message: Any) -> None:
        self.messages.append([bytes(p) for p in message.parts])

    def channelLost(self, reason: Any) -> None:
        self.reason = reason
        self.lost.callback(None)


class PeerGoneTest(TestCase):
    """The peer sent its last messages and went: none of them is lost."""

    timeout = 20

    def setUp(self) -> None:
        self.peer, side = socket.socketpair()
        self.addCleanup(self.peer.close)
        self.recorder = _Recorder()
        self.channel = SocketChannel(side, self.recorder, reactor)
        self.addCleanup(self.channel.loseConnection)

    def _lastWords(self) -> None:
        self.peer.sendall(b"".join(b"".join(encode(3, [b"last%d" % i])) for i in range(3)))
        self.peer.close()

    @inlineCallbacks
    def test_a_failed_write_still_reads_what_the_peer_sent_before(self) -> Any:
        # Paused, so the reactor does not read them first: the write fails
        # (the peer is gone) with its messages still unread.
        self.channel.pauseReading()
        self._lastWords()
        self.channel.send(encode(4, [b"too late"]))
        self.assertTrue(self.channel.connected)  # (it reads before it closes)
        self.channel.send(encode(4, [b"nothing more goes out"]))
        yield self.recorder.lost
        self.assertEqual(self.recorder.messages, [[b"last0"], [b"last1"], [b"last2"]])
        # (It read up to the end of file: the peer closed after its messages.)
        self.assertIsInstance(self.recorder.reason.value, ConnectionDone)
        self.assertFalse(self.channel.connected)

    @inlineCallbacks
    def test_read_last_takes_what_is_unread_even_while_paused(self) -> Any:
        self.channel.pauseReading()
        self._lastWords()
        self.channel.readLast()
        self.assertEqual(self.recorder.messages, [[b"last0"], [b"last1"], [b"last2"]])
        yield self.recorder.lost  # (and the end of file after them)
        self.assertIsInstance(self.recorder.reason.value, ConnectionDone)

    @inlineCallbacks
    def test_the_end_met_in_a_read_is_told_after_that_read_was_handled(self) -> Any:
        # (A receiver that holds what one read brings, as WireClient does its
        # results, reports it before it hears that the peer is gone.)
        events: list[Any] = []
        peer, side = socket.socketpair()
        self.addCleanup(peer.close)
        recorder = _Recorder()
        recorder.holdSends = lambda hold: events.append("hold" if hold else "release")
        recorder.messageReceived = lambda m: events.append(bytes(m.parts[0]))
        channel = SocketChannel(side, recorder, reactor)
        self.addCleanup(channel.loseConnection)
        recorder.lost.addCallback(lambda _: events.append("lost"))
        channel.pauseReading()
        peer.sendall(b"".join(encode(3, [b"last"])))
        peer.close()
        channel.readLast()
        yield recorder.lost
        # Whichever read met the end of file, its end comes after its release.
        self.assertEqual(events[:3], ["hold", b"last", "release"])
        self.assertEqual(events[-2:], ["release", "lost"])

    def test_read_last_with_nothing_there_leaves_the_channel_open(self) -> None:
        self.channel.readLast()
        self.assertTrue(self.channel.connected)
        self.assertEqual(self.recorder.messages, [])
