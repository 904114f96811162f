"""
Describing calls for logs: `Info`, `InfoHolder`, `showResult`, `whichThread`,
and `hashIt`.

`Info` keeps a "current call" (``setCall``) and turns it into short text:
``aboutCall`` gives ``name(arg, key=value)``, ``aboutException`` and
``aboutFailure`` add what went wrong and a short traceback. Each call gets a
unique ID from a counter (the original hashed the arguments, so ``f(1, 2)``
and ``f(2, 1)`` collided); with ``remember=True`` the call is kept under its
ID until ``forgetID``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import itertools
import pickle
import sys
import threading
import traceback
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["Info", "InfoHolder", "hashIt", "showResult", "whichThread"]

# Longest repr of one argument in a call description.
ARG_REPR_MAX = 60
# Most traceback entries in aboutException / aboutFailure text.
TRACEBACK_ENTRIES = 8
# Longest divider line.
DIVIDER_MAX = 79

_ids = itertools.count(1)
_idLock = threading.Lock()
_showThread = False


def _nextID() -> int:
    with _idLock:
        return next(_ids)


def _shortRepr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<unrepresentable {type(obj).__name__}>"
    return text if len(text) <= ARG_REPR_MAX else text[: ARG_REPR_MAX - 3] + "..."


def hashIt(*args: Any) -> int:
    """
    A hash of *args* by value, whatever they are: equal values hash alike,
    lists, dicts and sets included (which ``hash`` refuses). Unlike the
    original's (a sum of hashes), order and kind count: ``[1, 2]``,
    ``[2, 1]`` and ``(1, 2)`` hash apart, as do ``{"a": 1, "b": 2}`` and
    ``{"a": 2, "b": 1}``. An object neither hashable nor picklable counts
    by its identity.
    """
    return hash(_byValue(args))


def _byValue(obj: Any) -> Hashable:
    """A hashable stand-in for *obj* that is equal for equal values."""
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_byValue(x) for x in obj))
    if isinstance(obj, dict):
        return ("dict", frozenset((_byValue(k), _byValue(v)) for k, v in obj.items()))
    if isinstance(obj, (set, frozenset)):
        return ("set", frozenset(_byValue(x) for x in obj))
    try:
        hash(obj)
        return obj
    except TypeError:
        pass
    try:
        return ("pickle", pickle.dumps(obj))
    except Exception:
        return ("id", id(obj))


def _funcText(f: Any) -> str:
    """What the original called a call's ``fs``: the callable's name, or what is wrong."""
    if isinstance(f, str) or callable(f):
        return _callableName(f)
    return f"{_shortRepr(f)}[Not Callable!]"


def _callableName(f: Any) -> str:
    if isinstance(f, str):
        return f
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None)
    if name is None:
        return _shortRepr(f)
    return str(name)


def _fqn(obj: Any) -> str | None:
    """The importable dotted name of *obj*, or None."""
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None)
    if not module or not name or "<" in name:
        return None
    return f"{module}.{name}"


def _resolvesTo(fqn: str) -> Any:
    """The object the dotted name *fqn* refers to; raises if none."""
    parts = fqn.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ValueError(f"{fqn!r} is not an importable name")


def _processObject(obj: Any) -> bytes | str | None:
    """A pickle of *obj* if it round-trips, else its dotted name, else None."""
    try:
        data = pickle.dumps(obj)
        pickle.loads(data)
        return data
    except Exception:
        return _fqn(obj)


def _divider(lines: list[str]) -> str:
    width = max((len(line) for line in lines), default=0) + 1
    return "-" * min(width, DIVIDER_MAX)


class Info:
    """
    Information about calls, for error messages and logs.

    Args:
        remember: keep each call (under its ID) until `forgetID`.
        whichThread: append the current thread's name to call descriptions.
    """

    def __init__(self, remember: bool = False, whichThread: bool = False) -> None:
        self.remember = remember
        self.whichThread = whichThread
        self.pastInfo: dict[int, dict[str, Any]] = {}
        self._current: dict[str, Any] | None = None
        self._currentID: int | None = None

    # ------------------------------------------------------------ the call

    def setCall(self, *metaArgs: Any, **kw: Any) -> Info:
        """
        Set the current call, and return myself.

        ``setCall(f)``, ``setCall(f, arg)`` or ``setCall(f, [args])``,
        ``setCall(f, args, kw)``. Keywords ``args``, ``kw`` and ``instance``
        amend the current call instead (ValueError if there is none).
        """
        if len(metaArgs) > 3:
            raise TypeError("setCall takes f, args and kw at most")
        if metaArgs:
            f = metaArgs[0]
            args: tuple[Any, ...] = ()
            fkw: dict[str, Any] = {}
            if len(metaArgs) >= 2:
                a = metaArgs[1]
                args = tuple(a) if isinstance(a, (list, tuple)) else (a,)
            if len(metaArgs) == 3:
                fkw = dict(metaArgs[2] or {})
            instance = f.__self__ if inspect.ismethod(f) else None
            self._current = {
                "f": f,
                "fs": _funcText(f),
                "args": args,
                "kw": fkw,
                "instance": instance,
            }
            self._currentID = None
        if kw:
            if self._current is None:
                raise ValueError("There is no call to amend")
            unknown = set(kw) - {"args", "kw", "instance"}
            if unknown:
                raise TypeError(f"setCall cannot amend {sorted(unknown)}")
            if "args" in kw:
                kw["args"] = tuple(kw["args"])
            self._current = {**self._current, **kw}
            if self._currentID is not None and self.remember:
                self.pastInfo.setdefault(self._currentID, {})["callDict"] = self._current
                self.pastInfo[self._currentID].pop("aboutCall", None)
        return self

    @property
    def ID(self) -> int | None:
        """The current call's unique ID (None if no call is set)."""
        if self._current is None:
            return None
        if self._currentID is None:
            self._currentID = _nextID()
            if self.remember:
                self.pastInfo[self._currentID] = {"callDict": self._current}
        return self._currentID

    def forgetID(self, ID: int | None) -> None:
        """Forget what was remembered about call *ID*."""
        self.pastInfo.pop(ID, None)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def context(self, *metaArgs: Any) -> Iterator[InfoHolder]:
        """``with info.context(f, args, kw) as holder:`` -- forgotten on exit."""
        self.setCall(*metaArgs)
        ID = self.ID
        assert ID is not None
        self.pastInfo.setdefault(ID, {"callDict": self._current})
        try:
            yield InfoHolder(self, ID)
        finally:
            self.forgetID(ID)

    def _callDict(self, ID: int | None) -> dict[str, Any] | None:
        if ID is None or self._currentID == ID:
            return self._current
        entry = self.pastInfo.get(ID)
        return None if entry is None else entry.get("callDict")

    def getInfo(self, ID: int | None, name: str, nowForget: bool = False) -> Any:
        """
        What is known as *name* about call *ID*: ``"callDict"`` (f, its name
        ``fs``, args, kw, instance), ``"aboutCall"``, or anything stored with
        `saveInfo`.
        """
        if name == "callDict":
            value: Any = self._callDict(ID)
        elif name == "aboutCall":
            value = self.aboutCall(ID)
        else:
            entry = self.pastInfo.get(ID)  # type: ignore[arg-type]
            value = None if entry is None else entry.get(name)
        if nowForget:
            self.forgetID(ID)
        return value

    def saveInfo(self, name: str, x: Any, ID: int | None = None) -> int | None:
        """Store *x* as *name* for call *ID* (default: the current call)."""
        if ID is None:
            ID = self.ID
            if ID is None:
                raise ValueError("There is no call to save information for")
        entry = self.pastInfo.setdefault(ID, {})
        if "callDict" not in entry and self._currentID == ID:
            entry["callDict"] = self._current
        entry[name] = x
        return ID

    def nn(self, ID: int | None = None, raw: bool = False) -> tuple[Any, Any]:
        """
        ``(namespace, name)`` for shipping the call's callable elsewhere.

        A dotted-name string gives ``(None, name)`` (``(None, None)`` if it
        does not import); a bound method gives (its instance, the method
        name); anything else ``(None, callable)``. Unless *raw*, instances
        and callables are given as a pickle if they round-trip, else as a
        dotted name.
        """
        callDict = self._callDict(ID)
        if callDict is None:
            return None, None
        f = callDict["f"]
        if isinstance(f, str):
            try:
                _resolvesTo(f)
            except Exception:
                return None, None
            return None, f
        if inspect.ismethod(f):
            instance = f.__self__
            return (instance if raw else _processObject(instance)), f.__name__
        return None, (f if raw else _processObject(f))

    # -------------------------------------------------------------- texts

    def aboutCall(self, ID: int | None = None, nowForget: bool = False) -> str:
        """``[instance.]name(arg, key=value)`` for call *ID* (default: current)."""
        entry = self.pastInfo.get(ID) if ID is not None else None
        if entry is not None and "aboutCall" in entry:
            text = entry["aboutCall"]
        else:
            callDict = self._callDict(ID)
            text = "<no call>" if callDict is None else self._describe(callDict)
            if entry is not None:
                entry["aboutCall"] = text
        if nowForget:
            self.forgetID(ID)
        return text

    def _describe(self, callDict: dict[str, Any]) -> str:
        f = callDict["f"]
        name = _funcText(f)
        instance = callDict.get("instance")
        if instance is not None and not inspect.ismethod(f):
            name = f"{type(instance).__name__}.{name}"
        parts = [_shortRepr(a) for a in callDict.get("args", ())]
        parts += [f"{k}={_shortRepr(v)}" for k, v in (callDict.get("kw") or {}).items()]
        text = f"{name}({', '.join(parts)})"
        if self.whichThread or _showThread:
            text += f" <Thread: {threading.current_thread().name}>"
        return text

    def aboutException(
        self, ID: int | None = None, exception: BaseException | None = None, nowForget: bool = False
    ) -> str:
        """
        What went wrong in call *ID*: the message, the call, a divider and a
        short traceback. *exception* defaults to the one being handled.
        """
        if exception is None:
            exception = sys.exc_info()[1]
        if exception is None:
            lines = ["Exception '<none>'"]
            tb: list[str] = []
        else:
            lines = [f"Exception '{_message(exception)}' ({type(exception).__name__})"]
            tb = traceback.format_exception(
                type(exception), exception, exception.__traceback__, limit=-TRACEBACK_ENTRIES
            )
        return self._report(lines, tb, ID, nowForget)

    def aboutFailure(self, failure: Failure, ID: int | None = None, nowForget: bool = False) -> str:
        """Like `aboutException`, for a Failure."""
        lines = [f"Failure '{_message(failure.value)}' ({failure.type.__name__})"]
        remote = getattr(failure.value, "remoteTraceback", "")
        if remote:
            tb = [str(remote)]
        else:
            try:
                tb = [failure.getTraceback()]
            except Exception:
                tb = []
        return self._report(lines, tb, ID, nowForget)

    def _report(self, lines: list[str], tb: list[str], ID: int | None, nowForget: bool) -> str:
        if self._callDict(ID) is not None:
            lines.append(f" doing call '{self.aboutCall(ID)}'")
        text = "\n".join(lines)
        tbText = "".join(tb).rstrip()
        if tbText:
            text += "\n" + _divider(lines) + "\n" + tbText
        if nowForget:
            self.forgetID(ID)
        return text


def _message(exception: BaseException) -> str:
    text = str(exception)
    return text if text else type(exception).__name__


class InfoHolder:
    """`Info` methods bound to one call ID (what `Info.context` yields)."""

    def __init__(self, info: Info, ID: int) -> None:
        self.info = info
        self.ID = ID

    def getInfo(self, name: str) -> Any:
        return self.info.getInfo(self.ID, name)

    def nn(self, raw: bool = False) -> tuple[Any, Any]:
        return self.info.nn(self.ID, raw)

    def aboutCall(self) -> str:
        return self.info.aboutCall(self.ID)

    def aboutException(self, exception: BaseException | None = None) -> str:
        if exception is None:
            exception = sys.exc_info()[1]
        return self.info.aboutException(self.ID, exception)

    def aboutFailure(self, failure: Failure) -> str:
        return self.info.aboutFailure(failure, self.ID)


# ---------------------------------------------------------------- debugging


def whichThread(f: Any = None) -> Any:
    """Make `showResult` also name the thread; usable as a decorator."""
    global _showThread
    _showThread = True
    return f


def showResult(f: Callable[..., Any]) -> Callable[..., Any]:
    """
    Decorator for debugging: print ``call -> result`` after each call of *f*.

    If *f* returns a Deferred, the line is printed when it fires (the result,
    or the failure, passes on unchanged). An exception is printed and
    re-raised.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kw: Any) -> Any:
        text = Info(whichThread=_showThread).setCall(f, args, kw).aboutCall()
        try:
            result = f(*args, **kw)
        except BaseException as e:
            _show(f"{text} -> raised {type(e).__name__}: {_message(e)}")
            raise
        if isinstance(result, Deferred):

            def show(value: Any) -> Any:
                if isinstance(value, Failure):
                    _show(f"{text} -> Failure {value.type.__name__}: {_message(value.value)}")
                else:
                    _show(f"{text} -> {_shortRepr(value)}")
                return value

            return result.addBoth(show)
        _show(f"{text} -> {_shortRepr(result)}")
        return result

    return wrapper


def _show(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
