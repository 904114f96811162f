"""
The record of a call, and helpers that describe calls and read results.

- `_Call`: one ``TaskQueue.call`` from its submission until it has fired (it
  *is* the caller's Deferred).
- `_Slot`: an attached worker, as the dispatcher sees it.
- `QUEUE_KEYWORDS` and `takeQueueOptions`: the keywords that the queue takes
  out of a call's own, validated.
- `describeCall`, `tracebackText`, `errorText`, `toFailure`, `_unpackStatus`: text for
  messages and logs, and what a worker reported, in usable form.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall
from twisted.python.failure import Failure

from .. import errors
from .._support._status import Status, asStatus
from ..interfaces import IWorker
from ._scheduler import Entry, checkNiceness

if TYPE_CHECKING:
    from ._task import Task

# Keywords that TaskQueue.call consumes; they never reach the callable.
QUEUE_KEYWORDS = frozenset(
    {
        "niceness",
        "series",
        "doNext",
        "doLast",
        "timeout",
        "consumer",
        "returnFailure",
        "raw",
    }
)


def describeCall(f: object, args: tuple[object, ...], kw: dict[str, object]) -> str:
    """A one-line ``name(arg, k=v)`` description of a call, for messages and logs."""
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or repr(f)
    module = getattr(f, "__module__", None)
    if module and module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    parts = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kw.items()]
    return f"{name}({', '.join(parts)})"


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tracebackText(failure: Failure) -> str:
    """The traceback text of *failure*, including a worker's remote traceback."""
    remote = getattr(failure.value, "remoteTraceback", "")
    if remote:
        return str(remote)
    try:
        return failure.getTraceback()
    except Exception:  # a Failure rebuilt from a remote report may lack frames
        return f"{failure.type.__name__}: {failure.value}"


def errorText(failure: Failure, description: str) -> str:
    """
    The text a caller gets for a failed call (the original's form): what was
    raised, by which call, then the traceback (a worker's, for an exception
    raised in another process or host). A worker's report that is only
    words (a text, not an exception) comes as it is.
    """
    value = failure.value
    remote = getattr(value, "remoteTraceback", "")
    typeName = getattr(value, "typeName", "")
    message = failure.getErrorMessage()
    if remote and type(value) is errors.WorkerError and not typeName:
        return str(remote)  # a worker's report in words: it says what it has to say
    if typeName and message.startswith(f"{typeName}: "):
        # An exception that could not travel as itself: say what it was.
        message = message[len(typeName) + 2 :]
    name = typeName.rpartition(".")[2] or failure.type.__name__
    return f"Exception '{message}' ({name})\n doing call '{description}'\n{tracebackText(failure)}"


def toFailure(result: object, errorType: type[errors.WorkerError] = errors.WorkerError) -> Failure:
    """Turn what a worker reported with status ``e`` into a Failure."""
    if isinstance(result, Failure):
        return result
    if isinstance(result, BaseException):
        return Failure(result)
    text = result.decode("utf-8", "replace") if isinstance(result, bytes) else str(result)
    return Failure(errorType(text, remoteTraceback=text))


class _Call(Deferred[Any], Entry):
    """
    One ``call`` from its submission until it has fired: the caller's
    Deferred, carrying the record of the call, and its own scheduler `Entry`
    while it is queued (``series`` and ``seq`` are the entry's fields).
    """

    # Class-level defaults: most calls set none of the options, and an
    # instance only stores what differs (cheaper than setting every field).
    attempt: Task | None = None
    slot: _Slot | None = None
    entry: Entry | None = None
    timer: IDelayedCall | None = None
    # The Deferred of a result still arriving (chunks, a consumer being fed)
    # once the call is done: cancelling the call cancels it.
    chained: Deferred[Any] | None = None
    done = False
    timeouts = 0
    losses = 0
    callID = 0
    niceness = 0
    doNext = False
    doLast = False
    timeout: float | None = None
    consumer: IConsumer | None = None
    returnFailure = False
    raw: bool | None = None
    # False for a call whose series only shares the workers fairly with
    # other series, its tasks running side by side (see TaskQueue._callInFlow).
    inSequence = True
    # False once a queue keyword other than series, raw or returnFailure was
    # given: its attempts need the full Task.
    plain = True
    # The group it runs in (see Dispatcher, *Groups*), while it does.
    group: Any = None
    # True once a group it was in failed as a whole: it runs alone.
    alone = False

    def __init__(
        self,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kw: dict[str, Any] | None,
        canceller: Callable[[_Call], None] | None = None,
    ) -> None:
        # (A Deferred's canceller gets that Deferred: this _Call.)
        Deferred.__init__(self, canceller)  # type: ignore[arg-type]
        self.series: Hashable = None
        self.f = f
        self.args = args
        # None for no keywords: a waiting call then holds no empty dict (one
        # object fewer per queued call for the garbage collector to count).
        self._kw = kw

    @property
    def kw(self) -> dict[str, Any]:
        """The keywords for *f*; a fresh empty dict when there are none."""
        return {} if self._kw is None else self._kw

    def describe(self) -> str:
        return describeCall(self.f, self.args, self.kw)


def takeQueueOptions(call: _Call, kw: dict[str, Any], returnFailure: bool) -> None:
    """
    Take the queue's keywords out of *kw* (the call's own), validating each.

    *returnFailure* is the queue's setting, for a call that gives none. Only
    the options that differ from `_Call`'s defaults are stored on the call,
    and *kw* is dropped if nothing else is left in it: a queued call with a
    series costs as little memory as a plain one (a call's instance dict
    grows past its shared layout with each extra attribute, ~460 bytes).
    """
    series = kw.pop("series", None)
    if series is not None:
        hash(series)  # TypeError at the call site for an unhashable series
        call.series = series
    if not kw:
        # The usual case, a series and nothing else: every other option
        # keeps its default (the queue's returnFailure is set already).
        call._kw = None
        return
    niceness = checkNiceness(kw.pop("niceness", 0))
    doNext = bool(kw.pop("doNext", False))
    doLast = bool(kw.pop("doLast", False))
    timeout = kw.pop("timeout", None)
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
    consumer = kw.pop("consumer", None)
    if consumer is not None and not callable(getattr(consumer, "write", None)):
        raise TypeError(f"consumer {consumer!r} does not provide IConsumer")
    if bool(kw.pop("returnFailure", returnFailure)) != call.returnFailure:
        call.returnFailure = not call.returnFailure
    raw = kw.pop("raw", None)
    if raw is not None:
        call.raw = bool(raw)
    if niceness or doNext or doLast or timeout is not None or consumer is not None:
        call.niceness = niceness
        call.doNext = doNext
        call.doLast = doLast
        call.timeout = timeout
        call.consumer = consumer
        call.plain = False
    if not kw:
        call._kw = None


def _unpackStatus(statusResult: object) -> tuple[Status | str, Any]:
    """
    A worker's report as ``(status, result)``: the status a `Status` if it
    is one (a member, its letter, or the letter as bytes, as the original's
    workers report it), else the code as text (``"?"`` if not a pair).
    """
    code: object
    result: Any
    try:
        code, result = statusResult  # type: ignore[misc]
    except (TypeError, ValueError):
        return "?", statusResult
    status = asStatus(code)
    if status is not None:
        return status, result
    return (code.decode("ascii", "replace") if isinstance(code, bytes) else str(code)), result


class _Slot:
    """An attached worker, as the dispatcher sees it."""

    __slots__ = (
        "ID",
        "attached",
        "bounced",
        "groupLimit",
        "handBack",
        "held",
        "inOrder",
        "inflight",
        "qualified",
        "ready",
        "reportsStart",
        "rest",
        "stopping",
        "worker",
    )

    def __init__(self, worker: IWorker, ID: int) -> None:
        self.worker = worker
        self.ID = ID
        self.qualified: frozenset[Hashable] = frozenset()
        self.inflight: dict[Task, _Call] = {}
        # series -> how many of its tasks are in flight here
        self.held: dict[Hashable, int] = {}
        self.ready = False
        self.attached = True
        self.stopping = False
        self.bounced = False
        self.rest: IDelayedCall | None = None  # the delayed call that ends a refusal pause
        self.reportsStart = bool(getattr(worker, "reportsStart", False))
        # The worker's optional handBack(): give back the tasks waiting
        # behind its running one (see Dispatcher._checkStalls).
        self.handBack: Callable[[], object] | None = getattr(worker, "handBack", None)
        # The worker's optional groupLimit(): how many plain calls of a
        # backlog it takes as one task (see Dispatcher, *Groups*).
        self.groupLimit: Callable[[], int] | None = getattr(worker, "groupLimit", None)
        # The worker's runsInOrder if it is a constant, None if it is a
        # property (asked on every task handed out while it holds a series).
        inOrder = getattr(type(worker), "runsInOrder", None)
        self.inOrder = (
            None if isinstance(inOrder, property) else bool(getattr(worker, "runsInOrder", False))
        )

    def refreshQualifications(self) -> None:
        self.qualified = frozenset([None, *self.worker.cQualified, *self.worker.iQualified])
