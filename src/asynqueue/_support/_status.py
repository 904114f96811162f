"""
`Status`: what a worker reports about a task, as the first item of the
``(status, result)`` pair it fires the task's Deferred with.

The values are the original's one-letter codes, and `Status` is a ``str``
enum: a member equals its letter (``Status.RESULT == "r"``), so workers that
report plain letters, and code that compares with them, keep working. Only the
standard library is imported here: the lean process child loads this module
by path.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["STATUS_BY_CODE", "Status", "asStatus"]


class Status(StrEnum):
    """A worker's report on one task."""

    # It ran and returned a value: the result is that value.
    RESULT = "r"
    # It ran and returned None (a shortcut of the wire: no result to send).
    NONE = "n"
    # It raised: the result is the formatted error text (or a Failure).
    ERROR = "e"
    # It returned an iterator: the result delivers its items (a Deferator,
    # or a producer when the call gave a consumer).
    ITERATOR = "i"
    # Its result was too large for one message and came in chunks; the
    # worker reassembled it: the result is the value.
    CHUNKED = "c"
    # It did not finish within its timeout.
    TIMEOUT = "t"
    # It did not run (the worker could not take it): try it elsewhere.
    NOT_RUN = "d"


# Each status by its letter (equal to its member, so found by either) and
# by its bytes: for `asStatus`, and for hot paths that index it directly.
STATUS_BY_CODE: dict[object, Status] = {
    code: status for status in Status for code in (status.value, status.value.encode())
}


def asStatus(code: object) -> Status | None:
    """
    The `Status` of *code*: a member, its letter, or the letter as bytes (as
    the original's workers report it); None for anything else.
    """
    try:
        return STATUS_BY_CODE.get(code)
    except TypeError:  # unhashable
        return None


# The members most reported, as module constants for the hot paths: on
# Python 3.11 a member looked up on its class goes through
# ``EnumType.__getattr__``, a module global is a plain dictionary lookup.
RESULT, NONE, ERROR, ITERATOR = Status.RESULT, Status.NONE, Status.ERROR, Status.ITERATOR
TIMEOUT, NOT_RUN = Status.TIMEOUT, Status.NOT_RUN
