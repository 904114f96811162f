"""
Dask futures as outcomes of our tasks: gathering a batch of finished
futures on the client's loop, and the status result of a failed one.
"""

from __future__ import annotations

import traceback
from typing import Any

from distributed.scheduler import KilledWorker
from twisted.python.failure import Failure

from .. import errors
from .._support._status import ERROR, RESULT, Status

# Dask's Future.status values that mean "done one way or another".
_CANCELLED = "cancelled"


async def _outcomes(batch: list[Any]) -> list[tuple[str, Status, Any]]:
    """On the client's loop: gather *batch*, ``(key, status, value)`` for each future."""
    client = batch[0].client
    finished = {f.key: f for f in batch if f.status == "finished"}
    values: dict[Any, Any] = {}
    gatherError: BaseException | None = None
    if finished:
        try:
            values = await client.gather(finished, errors="skip", asynchronous=True)
        except Exception as e:
            gatherError = e
    outcomes: list[tuple[str, Status, Any]] = []
    for future in batch:
        key, status = future.key, future.status
        if status == "finished":
            if gatherError is None and key in values:
                outcomes.append((key, RESULT, values[key]))
            else:
                outcomes.append(
                    (key, Status.NOT_RUN, f"its result could not be fetched: {gatherError!r}")
                )
        elif status == "error":
            try:
                exc = await future.exception(asynchronous=True)
                tb = await future.traceback(asynchronous=True)
            except Exception as e:
                exc, tb = e, None
            outcomes.append((key, ERROR, (exc, tb)))
        elif status == _CANCELLED:
            outcomes.append((key, Status.NOT_RUN, _cancelReason(future)))
        elif status == "pending":
            # Dask is computing it again (its result was lost while we
            # gathered): our rule says lost.
            outcomes.append((key, Status.NOT_RUN, "its result was lost before it was fetched"))
        else:
            outcomes.append((key, Status.NOT_RUN, f"its Dask future is {status}"))
    return outcomes


def _errorResult(exc: Any, tb: Any) -> tuple[Status, Any]:
    """The status result of a task whose future ended in *exc* (traceback *tb*)."""
    if isinstance(exc, Failure):
        return ERROR, exc
    if isinstance(exc, KilledWorker):
        where = getattr(getattr(exc, "last_worker", None), "address", "?")
        return Status.NOT_RUN, f"its Dask worker died ({where})"
    if not getattr(exc, "remoteTraceback", None):
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        try:
            exc.remoteTraceback = text
        except Exception:
            pass
    return ERROR, Failure(exc)


def _asFailure(statusResult: tuple[Status, Any]) -> Failure:
    status, value = statusResult
    if isinstance(value, Failure):
        return value
    if status == Status.NOT_RUN:
        return Failure(errors.WorkerLost(f"the Dask worker was lost: {value}", reason=str(value)))
    return Failure(errors.WorkerError(str(value)))


def _cancelReason(future: Any) -> str:
    state = getattr(future, "_state", None)
    exc = getattr(state, "exception", None)
    text = str(getattr(exc, "msg", "") or getattr(exc, "reason", "") or "")
    return f"its Dask future was cancelled{': ' + text if text else ''}"
