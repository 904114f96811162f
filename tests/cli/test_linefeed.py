"""The command's input reader: lines from a pipe, a bounded way ahead."""

from __future__ import annotations

import os
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from asynqueue._cli._main import LineFeed

from ..helpers.common import waitUntil


class LineFeedTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_reads_ahead_only_so_far_then_gives_every_line(self) -> Any:
        readEnd, writeEnd = os.pipe()
        lines = 400_000  # ~2.7 MB: far more than the feed may hold untaken
        written = [0]

        def write() -> None:
            with os.fdopen(writeEnd, "wb") as f:
                for i in range(lines):
                    f.write(b"%d\n\n" % i if i % 5 == 0 else b"%d\n" % i)  # blank lines too
                    written[0] += 1

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        feed = LineFeed(readEnd, reactor)
        arrived = []
        feed.onMore = lambda: arrived.append(1)
        yield waitUntil(lambda: arrived)
        yield deferLater(reactor, 0.5, lambda: None)  # time to read all, were it unbounded
        self.assertTrue(writer.is_alive(), "the reader read everything without being asked")
        self.assertLess(written[0], lines)
        got: list[str] = []
        while not feed.exhausted:
            taken = feed.take(10_000)
            if taken:
                got.extend(taken)
            else:
                yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(got, [str(i) for i in range(lines)])
        self.assertEqual(feed.count, lines)
        writer.join(5)
