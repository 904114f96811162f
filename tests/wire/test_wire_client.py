"""A WireClient over a real socketpair: the results of one read, reported together."""

from __future__ import annotations

import itertools
import pickle
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from asynqueue._core._task import Task
from asynqueue._iter._deferator import Deferator
from asynqueue._wire._channel import SocketChannel
from asynqueue._wire._client import WireClient
from asynqueue._wire._codec import (
    CALLS,
    ITEMS,
    RESULTS,
    WIRE_ITERATOR,
    WIRE_RESULT,
    dumps,
    dumpsSmall,
)
from asynqueue._wire._framing import FrameDecoder, encode


class _Worker:
    """What a WireClient asks of its worker; it notes when it is told it has room."""

    batchItems = 10

    def __init__(self) -> None:
        self._taskIDs = itertools.count(1)
        self.events: list[Any] = []

    def _noteRuns(self, runs: list[tuple[float, float]], now: float) -> None:
        pass

    def _checkReady(self) -> None:
        self.events.append("room")


class _Client(WireClient):
    """A WireClient as its subclasses make it a channel's receiver."""

    def messageReceived(self, message: Any) -> None:
        self.handleMessage(message)

    def channelLost(self, reason: Any) -> None:
        pass


def _results(taskID: int, value: Any) -> bytes:
    parts = dumps(value)
    envelope = dumpsSmall(([(taskID, WIRE_RESULT, len(parts), 0.0, None)], False))
    return b"".join(bytes(b) for b in encode(RESULTS, [envelope, *parts]))


class ReadResultsTest(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.peer, side = socket.socketpair()
        self.addCleanup(self.peer.close)
        self.worker = _Worker()
        self.client = _Client(self.worker, reactor)
        self.client.channel = SocketChannel(side, self.client, reactor)
        self.addCleanup(self.client.channel.loseConnection)

    def _submit(self, n: int) -> list[Task]:
        tasks = []
        for i in range(n):
            task = Task(abs, (i,))
            task.d.addCallback(lambda report, i=i: self.worker.events.append(report[1]))
            self.client.submit(task, dumps((abs, (i,), {})), 0)
            tasks.append(task)
        return tasks

    @inlineCallbacks
    def test_one_reads_results_follow_one_notice_of_room(self) -> Any:
        tasks = self._submit(5)
        # Five RESULTS messages in one write arrive in one read.
        self.peer.sendall(b"".join(_results(i + 1, f"r{i}") for i in range(5)))
        yield gatherResults([t.d for t in tasks])
        events = self.worker.events
        self.assertEqual(events[:6], ["room", "r0", "r1", "r2", "r3", "r4"])
        self.assertNotIn("room", events[1:6])
        self.assertEqual(self.client.inflight, {})

    @inlineCallbacks
    def test_results_and_an_iterator_are_reported_in_the_order_they_came(self) -> Any:
        tasks = self._submit(3)
        # Task 2 returns an iterator, reported with its first ITEMS batch,
        # which comes after task 3's result, all in one read: still 1, 2, 3.
        iterEntry = dumpsSmall(([(2, WIRE_ITERATOR, 0, 0.0, 7)], False))
        itemParts = dumps(["a"])
        items = encode(ITEMS, [dumpsSmall((7, len(itemParts), False, 0)), *itemParts])
        data = [_results(1, "r0"), b"".join(bytes(b) for b in encode(RESULTS, [iterEntry]))]
        data += [_results(3, "r2"), b"".join(bytes(b) for b in items)]
        self.peer.sendall(b"".join(data))
        yield gatherResults([t.d for t in tasks])
        reported = [e for e in self.worker.events if e != "room"]
        self.assertEqual(reported[0], "r0")
        self.assertEqual(reported[1], "r2")
        self.assertIsInstance(reported[2], Deferator)
        self.assertEqual((yield next(iter(reported[2]))), "a")

    def _callsSent(self) -> list[int]:
        """The task IDs of the calls the client sent to the peer since last asked."""
        self.peer.setblocking(False)
        data = b""
        while True:
            try:
                data += self.peer.recv(65536)
            except BlockingIOError:
                break
        ids = []
        for message in FrameDecoder().feed(data):
            if message.kind == CALLS:
                ids.extend(taskID for taskID, _, _ in pickle.loads(message.parts[0]))
        return ids

    @inlineCallbacks
    def test_a_call_made_by_a_results_callback_goes_out_before_it_returns(self) -> Any:
        (first,) = self._submit(1)
        self.assertEqual(self._callsSent(), [1])
        yield deferLater(reactor, 0.002, lambda: None)  # a pause since that send
        seen: list[list[int]] = []

        def callMore(report: Any) -> None:
            self._submit(1)
            seen.append(self._callsSent())  # what the peer got meanwhile

        first.d.addCallback(callMore)
        self.peer.sendall(_results(1, "r0"))
        yield first.d
        self.assertEqual(seen, [[2]])
