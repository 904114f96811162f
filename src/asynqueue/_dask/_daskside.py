"""
The Dask side: what runs on the Dask workers (or the scheduler).

Dask workers unpickle the call we submit (`_Submitted`) and friends from
here, so asynqueue must be installed there. It turns an exception into one
that survives the trip and an iterator result into its first chunk
(`_Chunk`); the rest of the iterator stays parked on that Dask worker.
"""

from __future__ import annotations

import pickle
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle
import distributed
from distributed.diagnostics.plugin import WorkerPlugin

from .. import errors
from .._iter._base import isIterator
from .._iter._deferator import _Puller


def _portable(exc: BaseException) -> BaseException:
    """
    *exc* with a ``remoteTraceback`` text, if it survives pickling as itself;
    otherwise a `errors.WorkerError` carrying its type name, message and text.
    """
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code is _Submitted._run.__code__:
        tb = tb.tb_next  # our own frame says nothing
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    typeName = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if isinstance(exc, Exception):
        try:
            exc.remoteTraceback = text  # type: ignore[attr-defined]
            clone = pickle.loads(cloudpickle.dumps(exc))
            if type(clone) is type(exc):
                return exc
        except Exception:
            pass
    return errors.WorkerError(f"{typeName}: {exc}", remoteTraceback=text, typeName=typeName)


class _Chunk:
    """Some items of an iterator result, and where to get the rest."""

    __slots__ = ("error", "items", "more", "token", "where")

    def __init__(
        self,
        items: list[Any],
        more: bool,
        error: BaseException | None,
        token: str | None = None,
        where: str | None = None,
    ) -> None:
        self.items = items
        self.more = more
        self.error = error
        self.token = token
        self.where = where

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.items, self.more, self.error, self.token, self.where)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.items, self.more, self.error, self.token, self.where = state


def _pullChunk(puller: _Puller, maxItems: int, maxSeconds: float) -> tuple[list[Any], bool, Any]:
    """``(items, more, error)`` of the iterator behind *puller*, the error in a
    form that survives the trip back (`_portable`)."""
    items, more, failure = puller.pull(maxItems, maxSeconds)
    return items, more, None if failure is None else _portable(failure.value)


# Iterators whose rest waits on this Dask worker process, by token.
_parked: dict[str, _Puller] = {}
_parkedLock = threading.Lock()


def _here() -> str:
    """The address of the Dask worker running the current task."""
    try:
        return distributed.get_worker().address
    except ValueError:
        return ""


def _funcName(f: Any) -> str:
    name = getattr(f, "__name__", None) or type(f).__name__
    return str(name)[:60]


class _Submitted:
    """
    The callable we submit for each task: the user's call, opaque to Dask's
    graph parsing (arguments are never taken for tasks or keys). Its result
    is ``(value, seconds)``: the call's result (or first chunk) and how long
    this Dask thread was busy with it, for `DaskWorker`'s automatic slots.
    """

    __slots__ = ("args", "chunk", "f", "kw", "seconds")

    def __init__(
        self,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kw: dict[str, Any],
        chunk: int,
        seconds: float,
    ) -> None:
        self.f = f
        self.args = args
        self.kw = kw
        self.chunk = chunk  # 0: raw
        self.seconds = seconds

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.f, self.args, self.kw, self.chunk, self.seconds)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.f, self.args, self.kw, self.chunk, self.seconds = state

    def __call__(self) -> tuple[Any, float]:
        start = time.perf_counter()
        value = self._run()
        return value, time.perf_counter() - start

    def _run(self) -> Any:
        try:
            result = self.f(*self.args, **self.kw)
            if not isIterator(result):
                return result
            if self.chunk <= 0:
                # raw: the iterator itself cannot travel; its items can.
                return iter(list(result))
        except BaseException as e:
            raise _portable(e) from None
        puller = _Puller(result)
        items, more, error = _pullChunk(puller, self.chunk, self.seconds)
        if not more:
            return _Chunk(items, False, error)
        token = uuid.uuid4().hex
        with _parkedLock:
            _parked[token] = puller
        return _Chunk(items, True, None, token, _here())

    def __repr__(self) -> str:
        return f"<asynqueue call of {_funcName(self.f)}>"


def _nextChunk(token: str, maxItems: int, maxSeconds: float) -> _Chunk:
    """The next chunk of a parked iterator (a small task on its Dask worker)."""
    with _parkedLock:
        puller = _parked.get(token)
    if puller is None:
        raise errors.WorkerLost(
            "the rest of the iterator is gone: its Dask worker was lost or restarted",
            reason="iterator lost",
        )
    items, more, error = _pullChunk(puller, maxItems, maxSeconds)
    if not more:
        with _parkedLock:
            _parked.pop(token, None)
    return _Chunk(items, more, error, token if more else None, _here())


def _closeParked(token: str) -> None:
    """Drop a parked iterator, closing it (runs its generator's cleanup)."""
    with _parkedLock:
        puller = _parked.pop(token, None)
    if puller is not None:
        puller.close()


def _runUpdateHere(
    f: Callable[..., Any],
    args: tuple[Any, ...],
    kw: dict[str, Any],
    dask_worker: Any = None,
) -> tuple[str, Any]:
    """Run an update on one Dask worker (through ``Client.run``)."""
    return getattr(dask_worker, "id", ""), f(*args, **kw)


def _workerProfiles(dask_worker: Any = None) -> bool:
    """Whether this Dask worker runs the profiler that can deadlock Python 3.11."""
    callbacks = getattr(dask_worker, "periodic_callbacks", {})
    return sys.version_info < (3, 12) and "profile" in callbacks


class _UpdatePlugin(WorkerPlugin):
    """Runs a persistent update on each Dask worker that joins later."""

    def __init__(
        self,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kw: dict[str, Any],
        skip: Iterable[str],
    ) -> None:
        self.f = f
        self.args = args
        self.kw = kw
        # Workers (by id, unique per worker process) that ran it already.
        self.skip = frozenset(skip)

    def setup(self, worker: Any) -> None:
        if getattr(worker, "id", None) not in self.skip:
            self.f(*self.args, **self.kw)
