"""
`WireRunner`: the original wire server's call runner and its response
format, kept for code written against AsynQueue 0.9.x. Our `WireServer`
does not use it (its protocol is another, authenticated one).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.python.failure import Failure

from .._iter._base import isIterator
from .._support._compat import ChunkyString
from .._support._info import Info
from .._support._status import Status, asStatus
from .._support._util import o2p, whenFired

__all__ = ["WireRunner"]


class WireRunner:
    """
    Runs calls and answers in the original's response dicts, whose statuses
    are the bytes of a `Status`'s letter.

    ``call(f, *args, **kw)`` fires with ``{"status": s, "result": r}``:
    ``b"r"`` and the pickled result; ``b"n"`` and ``b""`` for None;
    ``b"e"`` and the error text; ``b"i"`` and the ID of an iterator result;
    ``b"c"`` and the ID of a pickle too big for one message (more than
    ``ChunkyString.chunkSize`` bytes), to fetch in chunks. ``raw=True``
    keeps an iterator whole; ``thread=True`` runs the call in a thread of
    mine (one, calls in order) instead of the reactor thread.

    ``getNext(ID)`` fires with ``{"value": v, "isValid": ok, "isRaw": raw}``
    for the next item of that iterator: bytes as they are (``isRaw``),
    anything else pickled; at the end (or for an unknown ID) ``isValid`` is
    False and the value ``b""`` (or the error text, if the iterator raised).

    Attributes:
        iterators: the iterators waiting to be fetched, by ID.
    """

    def __init__(self) -> None:
        self.iterators: dict[bytes, Any] = {}
        self._IDs = itertools.count(1)
        self._pending: set[Deferred[Any]] = set()
        self._looper: Any = None

    def call(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[dict[str, Any]]:
        raw = kw.pop("raw", False)
        if kw.pop("thread", False):
            d = self._inThread(f, args, kw)
        else:
            d = maybeDeferred(f, *args, **kw).addCallbacks(
                lambda r: (Status.RESULT, r), lambda f_: (Status.ERROR, f_)
            )
        d.addCallback(self._respond, Info().setCall(f, args, kw), raw)
        self._pending.add(d)
        return d.addBoth(self._forget, d)

    def _forget(self, result: Any, d: Deferred[Any]) -> Any:
        self._pending.discard(d)
        return result

    def _inThread(self, f: Callable[..., Any], args: Any, kw: Any) -> Deferred[Any]:
        if self._looper is None:
            from .._threads._looper import ThreadLooper

            self._looper = ThreadLooper(raw=True)
        return self._looper.call(f, *args, **kw)

    def _respond(self, statusResult: tuple[Any, Any], info: Info, raw: bool) -> dict[str, Any]:
        """The response dict; *statusResult* from a call or, in bytes, from a `ThreadLooper`."""
        status, result = statusResult
        if asStatus(status) is Status.ERROR:
            status = Status.ERROR
            if isinstance(result, Failure):
                result = info.aboutFailure(result)
        elif result is None:
            status, result = Status.NONE, b""
        elif not raw and isIterator(result):
            status, result = Status.ITERATOR, self._save(result)
        else:
            status, result = Status.RESULT, o2p(result)
            if len(result) > ChunkyString.chunkSize:
                status, result = Status.CHUNKED, self._save(ChunkyString(result))
        return {"status": status.encode(), "result": result}

    def _save(self, iterator: Any) -> bytes:
        ID = b"%d" % next(self._IDs)
        self.iterators[ID] = iterator
        return ID

    def getNext(self, ID: bytes) -> Deferred[dict[str, Any]]:
        iterator = self.iterators.get(ID)
        if iterator is None:
            return succeed({"value": b"", "isValid": False, "isRaw": False})
        try:
            value = next(iterator)
        except StopIteration:
            del self.iterators[ID]
            return succeed({"value": b"", "isValid": False, "isRaw": False})
        except Exception:
            del self.iterators[ID]
            text = Info().setCall("getNext", [ID], {}).aboutFailure(Failure())
            return succeed({"value": text, "isValid": False, "isRaw": False})
        if isinstance(value, bytes):
            return succeed({"value": value, "isValid": True, "isRaw": True})
        return succeed({"value": o2p(value), "isValid": True, "isRaw": False})

    def shutdown(self) -> Deferred[Any]:
        """
        Fires once every call in progress has finished, callbacks attached
        so far included (and my thread has ended).
        """
        # A notice added now runs after the callers' callbacks already there.
        d = gatherResults([whenFired(p) for p in self._pending])
        if self._looper is not None:
            looper, self._looper = self._looper, None
            d.addCallback(lambda _: looper.stop())
        return d
