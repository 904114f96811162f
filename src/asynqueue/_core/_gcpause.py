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
once every such queue is down to `LOW`, or when no queue has reported
progress for `STALE` seconds (a queue dropped with its backlog must not
leave the collector held). A threshold that someone else changed meanwhile
is left as they set it.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

__all__ = ["BURST", "LOW", "STALE", "hold", "isHeld", "release", "renew"]

#: More queued calls than this in one queue hold full collections off.
BURST = 2_000
#: A holding queue lets go once it is down to this many.
LOW = 200
#: Seconds without any holder's progress after which the hold ends anyway.
STALE = 10.0
# The oldest generation's threshold while held (CPython 3.11-3.13: a full
# collection after this many collections of the middle generation; a
# collector that ignores the third threshold is simply not held).
_HELD_THRESHOLD = 1 << 30

_lock = threading.RLock()
_holders = 0
_generation = 0  # bumped when the hold ends: older tokens are spent
_saved: tuple[int, ...] | None = None  # the thresholds before the hold
_ours: tuple[int, ...] | None = None  # the thresholds set by the hold
_renewed = 0.0
_watching = False


def hold() -> int:
    """Hold full collections off (one more holder); the token for `release`."""
    global _holders, _saved, _ours, _renewed, _watching
    with _lock:
        if not _holders:
            saved = gc.get_threshold()
            ours = (saved[0], saved[1], max(saved[2], _HELD_THRESHOLD))
            gc.set_threshold(*ours)
            _saved, _ours = saved, ours
            if not _watching:
                gc.callbacks.append(_watch)
                _watching = True
        _holders += 1
        _renewed = time.monotonic()
        return _generation


def renew() -> None:
    """A holder made progress: the hold is not stale."""
    global _renewed
    _renewed = time.monotonic()


def release(token: int) -> None:
    """One holder (whose `hold` gave *token*) lets go."""
    global _holders
    with _lock:
        if token != _generation or not _holders:
            return  # the hold ended already (stale)
        _holders -= 1
        if not _holders:
            _end()


def isHeld() -> bool:
    """Whether full collections are held off now."""
    return _holders > 0


def _end() -> None:
    global _holders, _generation, _saved, _ours
    _generation += 1
    _holders = 0
    if _saved is not None and gc.get_threshold() == _ours:
        gc.set_threshold(*_saved)
    _saved = _ours = None


def _watch(phase: str, info: dict[str, Any]) -> None:
    """(A gc callback, in whichever thread collects.) End a stale hold."""
    if phase != "start" or not _holders or time.monotonic() - _renewed <= STALE:
        return
    if _lock.acquire(blocking=False):  # (never wait in the collector)
        try:
            if _holders and time.monotonic() - _renewed > STALE:
                _end()
        finally:
            _lock.release()
