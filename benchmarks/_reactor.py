"""Run the global reactor until one measurement is done (not ``task.react``: it exits)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def runUntilDone(main: Callable[[], Any]) -> None:
    """Run the reactor, call *main* (returns a Deferred), stop when it fires; re-raise its error."""
    from twisted.internet import reactor

    failures: list[Any] = []

    def start() -> None:
        d = main()
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if failures:
        failures[0].raiseException()
