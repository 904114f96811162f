"""
Full garbage collections held off while a queue has a large backlog.

Queued calls stay alive until a worker takes them (the caller's Deferred,
the call, its arguments). CPython's collector counts such survivors, and
every few thousand of them runs a full collection that scans every object
in the process, the backlog included, and frees none of it: on a burst of
20,000 calls that was a fifth to a third of the reactor's time
(benchmarks/README.md). While any queue holds more than `BURST` queued
calls, the threshold of the oldest generation is raised, so that only the
young collections run (they still free short-lived cycles); it is put back
once every such queue is down to `LOW`, or when no queue has made progress
for `STALE` seconds (a queue dropped with its backlog must not leave the
collector held). A threshold that someone else changed meanwhile is left as
they set it.

Progress is polled, not reported: each holder gives a *progress* callable
whose value changes as its queue moves, and the collector's own callback
reads them at most every `POLL` seconds. The queue's hot path then pays
nothing per call for the watch.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BURST", "LOW", "POLL", "STALE", "hold", "isHeld", "release"]

#: More queued calls than this in one queue hold full collections off.
BURST = 2_000
#: A holding queue lets go once it is down to this many.
LOW = 200
#: Seconds without any holder's progress after which the hold ends anyway.
STALE = 10.0
#: Seconds between two looks at the holders' progress (at a collection's start).
POLL = 1.0
# The oldest generation's threshold while held (CPython 3.11-3.13: a full
# collection after this many collections of the middle generation; a
# collector that ignores the third threshold is simply not held).
_HELD_THRESHOLD = 1 << 30


class _Holder:
    """One holder's progress callable and the value it gave last."""

    __slots__ = ("last", "progress")

    def __init__(self, progress: Callable[[], object]) -> None:
        self.progress = progress
        self.last = progress()


_lock = threading.RLock()
# The holders of the current hold; a released or spent token is not in it.
_holders: dict[object, _Holder] = {}
_saved: tuple[int, ...] | None = None  # the thresholds before the hold
_ours: tuple[int, ...] | None = None  # the thresholds set by the hold
_renewed = 0.0  # when a holder was last seen to make progress
_polled = 0.0  # when their progress was last looked at
_watching = False


def hold(progress: Callable[[], object]) -> object:
    """
    Hold full collections off (one more holder); the token for `release`.
    *progress*: a cheap callable whose value changes while the holder's
    queue moves (called from the collector's callback, in any thread).
    """
    global _saved, _ours, _renewed, _polled, _watching
    with _lock:
        if not _holders:
            saved = gc.get_threshold()
            ours = (saved[0], saved[1], max(saved[2], _HELD_THRESHOLD))
            gc.set_threshold(*ours)
            _saved, _ours = saved, ours
            if not _watching:
                gc.callbacks.append(_watch)
                _watching = True
        token = object()
        _holders[token] = _Holder(progress)
        _renewed = _polled = time.monotonic()
        return token


def release(token: object) -> None:
    """One holder (whose `hold` gave *token*) lets go; a spent token is a no-op."""
    with _lock:
        if _holders.pop(token, None) is not None and not _holders:
            _end()


def isHeld() -> bool:
    """Whether full collections are held off now."""
    return bool(_holders)


def _end() -> None:
    global _saved, _ours
    _holders.clear()  # (every token is spent)
    if _saved is not None and gc.get_threshold() == _ours:
        gc.set_threshold(*_saved)
    _saved = _ours = None


def _watch(phase: str, info: dict[str, Any]) -> None:
    """(A gc callback, in whichever thread collects.) End a stale hold."""
    if phase != "start" or not _holders:
        return
    now = time.monotonic()
    if now - _polled < POLL and now - _renewed <= STALE:
        return
    if _lock.acquire(blocking=False):  # (never wait in the collector)
        try:
            _poll(now)
        finally:
            _lock.release()


def _poll(now: float) -> None:
    """Look at the holders' progress; end the hold if none moved for STALE s."""
    global _renewed, _polled
    _polled = now
    for holder in list(_holders.values()):
        try:
            value = holder.progress()
        except Exception:  # (a broken probe must not break the collector)
            continue
        if value != holder.last:
            holder.last = value
            _renewed = now
    if _holders and now - _renewed > STALE:
        _end()
