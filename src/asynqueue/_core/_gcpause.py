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

After the hold
--------------

The count that triggers a full collection (collections of the middle
generation since the last full one) went on rising during the hold, so a
plain restore runs the full collection the hold put off at the next young
collection: with bursts one after another, at the start of the next burst,
every burst (~7 ms for a process of 40,000 objects on our 2-core VM, about
a twentieth of a 20,000-call burst; more in a larger program). If a full
collection ran less than `SPACING` seconds ago, the hold ends with a *grace*
instead: the oldest threshold is set to the count now plus its usual value,
so the next full collection comes a usual cycle later, as if the hold's
collections had not counted, and the usual threshold is put back when that
collection (or anyone's ``gc.collect()``) has run. So back-to-back bursts
get at most one full collection per `SPACING` seconds from us, and cycles
that outlived the young collections are still freed that often.

A long hold
-----------

A backlog that never drains to `LOW` would hold full collections off for
as long as it lasts, and garbage cycles in the oldest generation (objects
that lived through the young collections, then were dropped) would never
be freed. So a hold lets one full collection through every `MAX_DEFER`
seconds (counted from its start, or from the last full collection): at the
first look at the holders after that, the oldest threshold goes down to 0,
so that the collector's next automatic choice is a full collection (when
CPython deems one worth it), and back up once one has run.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BURST", "LOW", "MAX_DEFER", "POLL", "SPACING", "STALE", "hold", "isHeld", "release"]

#: More queued calls than this in one queue hold full collections off.
BURST = 2_000
#: A holding queue lets go once it is down to this many.
LOW = 200
#: Seconds without any holder's progress after which the hold ends anyway.
STALE = 10.0
#: Seconds between two looks at the holders' progress (at a collection's start).
POLL = 1.0
#: A hold ends with a grace (see "After the hold") if the last full collection
#: ran less than this many seconds ago.
SPACING = 1.0
#: A hold lets a full collection through once this many seconds passed
#: without one (see "A long hold").
MAX_DEFER = 60.0
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
# The thresholds before the hold (or grace), while ours are set; else None.
_saved: tuple[int, ...] | None = None
_ours: tuple[int, ...] | None = None  # the thresholds set by the hold or grace
_renewed = 0.0  # when a holder was last seen to make progress
_polled = 0.0  # when their progress was last looked at
_lastFull = float("-inf")  # when the last full collection ended (seen since the watch began)
_heldSince = 0.0  # when the current hold began
_fullDue = False  # the hold lets a full collection through (see "A long hold")
_watching = False


def hold(progress: Callable[[], object]) -> object:
    """
    Hold full collections off (one more holder); the token for `release`.
    *progress*: a cheap callable whose value changes while the holder's
    queue moves (called from the collector's callback, in any thread).
    """
    global _renewed, _polled, _watching, _heldSince, _fullDue
    with _lock:
        if not _holders:
            usual = _usual()
            _setOurs((usual[0], usual[1], max(usual[2], _HELD_THRESHOLD)), usual)
            _heldSince = time.monotonic()
            _fullDue = False
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


def _usual() -> tuple[int, ...]:
    """The thresholds to go back to: those before ours, unless changed since."""
    current = gc.get_threshold()
    if _saved is not None and current == _ours:
        return _saved
    return current  # (not ours, or someone else's since: theirs)


def _setOurs(thresholds: tuple[int, ...], usual: tuple[int, ...]) -> None:
    """Set *thresholds* (the hold's, or a grace's), to go back to *usual* later."""
    global _saved, _ours
    gc.set_threshold(*thresholds)
    _saved, _ours = usual, gc.get_threshold()


def _restore() -> None:
    """Put the usual thresholds back (unless someone else set theirs meanwhile)."""
    global _saved, _ours
    if _saved is not None and gc.get_threshold() == _ours:
        gc.set_threshold(*_saved)
    _saved = _ours = None


def _end() -> None:
    """The hold ends: restore, or a grace if a full collection ran lately."""
    global _fullDue
    _holders.clear()  # (every token is spent)
    _fullDue = False
    usual = _saved
    if usual is not None and gc.get_threshold() == _ours and time.monotonic() - _lastFull < SPACING:
        # A usual cycle from now: as many collections of the middle
        # generation as the usual threshold says (see "After the hold").
        _setOurs((usual[0], usual[1], gc.get_count()[2] + usual[2]), usual)
    else:
        _restore()  # (a threshold someone else set meanwhile is kept)


def _watch(phase: str, info: dict[str, Any]) -> None:
    """
    (A gc callback, in whichever thread collects.) Note when full
    collections end (which ends a grace, or the full collection a long hold
    let through); look at the holders now and then (see `_poll`).
    """
    global _lastFull
    if phase != "start":
        if info.get("generation") == 2:
            _lastFull = time.monotonic()
            if (_fullDue or not _holders) and _saved is not None and _lock.acquire(blocking=False):
                try:
                    _fullDone()
                finally:
                    _lock.release()
        return
    if not _holders:
        return
    now = time.monotonic()
    if now - _polled < POLL and now - _renewed <= STALE:
        return
    if _lock.acquire(blocking=False):  # (never wait in the collector)
        try:
            _poll(now)
        finally:
            _lock.release()


def _fullDone() -> None:
    """A full collection has run: a grace is over; a long hold holds again."""
    global _fullDue
    if not _holders:
        _restore()
    elif _fullDue:
        _fullDue = False
        usual = _saved
        if usual is not None and gc.get_threshold() == _ours:
            _setOurs((usual[0], usual[1], max(usual[2], _HELD_THRESHOLD)), usual)


def _poll(now: float) -> None:
    """
    Look at the holders' progress; end the hold if none moved for STALE s,
    else let a full collection through if none ran for MAX_DEFER s.
    """
    global _renewed, _polled, _fullDue
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
    elif (
        _holders
        and not _fullDue
        and now - max(_lastFull, _heldSince) > MAX_DEFER
        and _saved is not None
        and gc.get_threshold() == _ours
    ):
        _fullDue = True
        _setOurs((_saved[0], _saved[1], 0), _saved)
