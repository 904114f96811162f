"""
Codec: Python objects to message parts and back, and the message kinds.

Standard library only (cloudpickle is imported the first time it is needed),
because child interpreters load this file without asynqueue or Twisted.

Objects travel as pickle protocol 5 with out-of-band buffers: ``dumps``
returns ``[pickle, buffer, ...]``, the buffers being the memory of objects
that offer it (NumPy arrays, ``pickle.PickleBuffer``), sent without a copy.
Plain pickle copies ``bytes`` objects into the pickle; those of `OOB_MIN`
bytes or more are sent out of band too when they are the object itself, an
item of a list or tuple (of at most `OOB_SCAN` items) that is, or an
argument or keyword argument of a call. The receiver makes them again with
``bytes(buffer)``; the framing marks such a buffer immutable, and a receiver
reads one of `_framing.BYTES_MIN` bytes or more straight into a ``bytes``
object, which ``bytes()`` returns as it is: a large bytes result or argument
is copied by the kernel only, never into a pickle nor out of a receive
buffer. (Only immutable ``bytes``: a buffer is sent as it is when it is
written, possibly later than `dumps` returned.)

Plain ``pickle`` is tried first (fast, C). cloudpickle takes over for what
plain pickle refuses, or would pickle by a reference the other side cannot
resolve: lambdas, closures, local classes and functions, and anything
defined in ``__main__`` (a child's ``__main__`` is not the parent's).

A call to a process's child of a module's function with a few plain
arguments goes *by name* (`dumpsCallByName`, ``FLAG_BYNAME``): its one
part names the function, and only the arguments are pickled. Pickling a
function by reference (a lookup of its module and name) was two thirds of
such a call's pickle, and unpickling it most of the child's work on it.
(Remote calls are pickled whole: a server may pass them to its children
unread.)

Errors raised by a call travel as `dumpsError` parts: the exception itself
when it survives a pickle round trip, and always its type name, message and
formatted traceback, so that the receiver can rebuild the exception or
report it by name.
"""

from __future__ import annotations

import io
import pickle
import sys
from collections import namedtuple
from types import BuiltinFunctionType, FunctionType

from .._support._status import ERROR, ITERATOR, NONE, NOT_RUN, RESULT
from ._framing import BYTES_MIN

TYPE_CHECKING = False
if TYPE_CHECKING:  # the child must not pay for importing typing
    from typing import Any

__all__ = [
    "ABANDON",
    "AUTH",
    "CALLS",
    "CLOSE",
    "EXIT",
    "HANDBACK",
    "HELLO",
    "INIT",
    "ITEMS",
    "LANE_SHIFT",
    "MEMBER_STATUS",
    "NEXT",
    "PING",
    "PLACED",
    "PLAIN_TYPES",
    "PONG",
    "PROTOCOL",
    "REST",
    "RESULTS",
    "STARTED",
    "STATUS_OF_MEMBER",
    "WIRE_VERSION",
    "RemoteError",
    "dumps",
    "dumpsCall",
    "dumpsCallByName",
    "dumpsError",
    "dumpsSmall",
    "loads",
    "loadsCallByName",
    "loadsError",
    "resultPicklingError",
]

# Values that pickle by value with nothing inside them to check or to take
# out of band: the C pickler alone sends them (`dumps`, `dumpsCall`).
PLAIN_TYPES = frozenset({int, float, complex, str, bool, type(None)})

PROTOCOL = 5

# The wire protocol (framing and messages) a worker server announces in its
# HELLO; a client refuses another. 2: immutable parts marked in the part
# table (`_framing.FLAG_BYTES`).
WIRE_VERSION = 2

# bytes objects of at least this size travel out of band.
OOB_MIN = 64 * 1024
# Lists and tuples of at most this many items are searched for such objects.
OOB_SCAN = 1024

# Message kinds. Parent (or client) to child (or server):
INIT = 1  # [config]: first message; sys.path, limits
CALLS = 2  # [envelope, call parts...]: envelope = [(taskID, nparts, flags)]
NEXT = 3  # [envelope]: (iterID, maxItems), answered by ITEMS
CLOSE = 4  # [envelope]: [iterID, ...], no answer
EXIT = 5  # []: finish and exit
ABANDON = 6  # [envelope]: [taskID, ...] the client gave up on (remote only), no answer
# [envelope]: [taskID, ...] to give back unrun if not started yet (process
# children only), answered in RESULTS with status WIRE_NOT_RUN
HANDBACK = 7
# Child (or server) to parent (or client):
HELLO = 16  # [info]: the child is up; {'pid': ...}
# RESULTS: [envelope, result parts...];
#   envelope = ([(taskID, status, nparts, dt, extra)], retire)
RESULTS = 17
# A RESULTS entry's status: the letter of its `Status`, a plain str (pickled,
# a member would name its class in every entry). The receiver compares it
# with the members, which equal their letters.
WIRE_RESULT, WIRE_NONE, WIRE_ERROR, WIRE_ITERATOR, WIRE_NOT_RUN = (
    RESULT.value,
    NONE.value,
    ERROR.value,
    ITERATOR.value,
    NOT_RUN.value,
)

# A RESULTS entry of a call of a group task (`_group.runCalls`) has the
# call's own status in upper case (held by the child as it ran, see
# `_process._child`), and the group task's own entry comes after them all.
MEMBER_STATUS = {WIRE_RESULT: "R", WIRE_NONE: "N", WIRE_ERROR: "E"}
STATUS_OF_MEMBER = {v: k for k, v in MEMBER_STATUS.items()}

# ITEMS: [envelope, item parts..., error parts...];
#   envelope = (iterID, nItemParts, more, nErrorParts)
ITEMS = 18
STARTED = 19  # [envelope]: [taskID, ...] that started (remote only, FLAG_STARTED calls)
# PLACED: [envelope]: the arena is written up to this offset (child only; see _arena)
PLACED = 20
# PING: [] (remote only, client to server): are you there? Answered by PONG: [],
# from the server's reactor at once, whatever its workers are doing.
PING = 21
PONG = 22
# REST: [envelope, outcome...]: envelope = (taskID, index, own): the running
# task's batch (`_support._batch`) stops after its current call; its calls
# from index on will not run, and the outcomes (each pickled) are those of
# its first calls not yet sent, which its result leaves out. A child's answer
# to a HANDBACK naming the task it runs, or (own: True) a batch that ends
# itself after call index - 1, whose outcome is the task's own result
# (`_support._batch.endWithOwnOutcome`). Process children only.
REST = 23
# The shared-secret handshake of remote connections (raw bytes, never pickles):
# see `asynqueue._wire._auth`.
AUTH = 32

# CALLS flags. A child looks at FLAG_RAW, FLAG_STARTED, FLAG_SHARED_RESULT,
# FLAG_INBOX and FLAG_BYNAME; the others are for a remote server.
FLAG_RAW = 1
# A server sends STARTED when the call starts; a child holds no result
# around it (the results before it go out before it starts, its own at once).
FLAG_STARTED = 2
FLAG_UPDATE = 4  # an update: run it on every worker, and on later ones
FLAG_EPHEMERAL = 8  # (with FLAG_UPDATE) an update not to remember
FLAG_UNIVERSE = 16  # the callable is the name of a method of the server's universe
# (to a child) large parts of the result may come back through the child's
# arena (see `_arena`): the result is then reported while they are written
FLAG_SHARED_RESULT = 32
# (to a child) large parts of the call are in the child's inbox arena: the
# call's first part says where (see `_arena`), the others follow.
FLAG_INBOX = 64
# (to a child) the call's one part names its callable instead of pickling
# it, and pickles only its arguments (`dumpsCallByName`).
FLAG_BYNAME = 128
# (to a server that says ``"lanes": True`` in its HELLO) the bits from
# LANE_SHIFT up: the call's *lane*, a number the client chose for its series
# (0: none). The server runs the calls of one lane one at a time, in the
# order they came, so a client may send a series' next calls before the
# one running is done (see `asynqueue._remote._session`).
LANE_SHIFT = 16


class _ByValue(Exception):
    """Raised inside the plain pickler: this object needs cloudpickle."""


def _onlyByValue(module: object, qualname: str) -> bool:
    """
    Whether a function or class of *module* named *qualname* must travel by
    value: the other side cannot import it by name (``__main__``'s, a local
    one, a lambda).
    """
    return module is None or module == "__main__" or "<" in qualname


class _Pickler(pickle.Pickler):
    """
    Plain pickle that gives up on functions and classes that only cloudpickle
    can send faithfully: those of ``__main__`` and local or lambda ones.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (FunctionType, type)):
            module = getattr(obj, "__module__", None)
            if _onlyByValue(module, obj.__qualname__):
                raise _ByValue
        return NotImplemented


class _OutOfBand:
    """Pickles a bytes object as an out-of-band buffer (``bytes(buffer)`` unpickles it)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return bytes, (pickle.PickleBuffer(self.data),)


def _outOfBand(obj: Any, wrapped: dict[int, Any] | None = None) -> Any:
    """
    *obj*, with large bytes objects (itself, or its items) made out of band.
    *wrapped* maps the ``id`` of objects wrapped so far to their wrapper: the
    same object twice is one buffer, and one object again when unpickled.
    """
    cls = type(obj)
    if cls is bytes:
        if len(obj) < OOB_MIN:
            return obj
        if wrapped is None:
            return _OutOfBand(obj)
        return wrapped.setdefault(id(obj), _OutOfBand(obj))
    if (cls is tuple or cls is list) and 0 < len(obj) <= OOB_SCAN:
        if bytes not in set(map(type, obj)):
            return obj
        if wrapped is None:
            wrapped = {}
        items = [_outOfBand(item, wrapped) if type(item) is bytes else item for item in obj]
        return cls(items) if cls is tuple else items
    return obj


def _cloudpickle() -> Any:
    import cloudpickle

    return cloudpickle


def dumps(obj: Any) -> list[Any]:
    """
    Pickle *obj*: returns ``[pickle, buffer, ...]``.

    Raises whatever the pickler raised (``pickle.PicklingError``, ``TypeError``,
    ``AttributeError``, ...) if neither pickle nor cloudpickle can do it.
    """
    if type(obj) in PLAIN_TYPES:
        # A number, flag or string: the C pickler alone (nothing in it for
        # cloudpickle, nor to take out of band), unless it is large.
        data = pickle.dumps(obj, PROTOCOL)
        if len(data) < BYTES_MIN:
            return [data]
    buffers: list[Any] = [None]
    obj = _outOfBand(obj)

    def outOfBand(pb: pickle.PickleBuffer) -> bool:
        try:
            buffers.append(pb.raw())
        except BufferError:  # not contiguous: keep it in the pickle
            return True
        return False

    stream = io.BytesIO()
    try:
        _Pickler(stream, PROTOCOL, buffer_callback=outOfBand).dump(obj)
    except Exception:
        del buffers[1:]
        buffers[0] = _cloudpickle().dumps(obj, PROTOCOL, buffer_callback=outOfBand)
    else:
        # A small pickle as the BytesIO's own bytes (no copy, and no view of it
        # left to be caught in a reference cycle, which the garbage collector
        # then reports); a large one as a writable view, so that the receiver
        # reads it into a pooled buffer (a bytes part would be marked immutable
        # and read into fresh memory: see `_framing`).
        if stream.tell() < BYTES_MIN:
            buffers[0] = stream.getvalue()
        else:
            buffers[0] = stream.getbuffer()
    return buffers


def dumpsSmall(obj: Any) -> bytes:
    """Plain pickle of a small envelope of builtins (ints, strings, tuples)."""
    return pickle.dumps(obj, PROTOCOL)


def loads(parts: list[Any]) -> Any:
    """Inverse of `dumps`."""
    return pickle.loads(parts[0], buffers=parts[1:])


# Callables and argument types that `dumpsCall` pickles the quick way:
# builtin functions, and module functions (checked further there).
_PLAIN_CALLABLES = frozenset({FunctionType, BuiltinFunctionType})


def dumpsCall(f: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> list[Any]:
    """
    `dumps` of ``(f, args, kw)``; on failure raises ``pickle.PicklingError``
    saying which of the callable, arguments or keywords could not be pickled.
    """
    if type(f) in _PLAIN_CALLABLES and not kw and PLAIN_TYPES.issuperset(map(type, args)):
        # The common call, a module's function of a few plain values: the C
        # pickler alone, which sees no object that `_Pickler` would have
        # given to cloudpickle once the function itself was checked.
        module = getattr(f, "__module__", None)
        if not _onlyByValue(module, f.__qualname__):
            try:
                data = pickle.dumps((f, args, kw), PROTOCOL)
            except Exception:
                pass  # (the full way below says why, or uses cloudpickle)
            else:
                if len(data) < BYTES_MIN:
                    return [data]
    wrapped: dict[int, Any] = {}
    args = _outOfBand(args, wrapped)
    if kw:
        kw = {k: _outOfBand(v, wrapped) if type(v) is bytes else v for k, v in kw.items()}
    try:
        return dumps((f, args, kw))
    except Exception as e:
        raise pickle.PicklingError(_whatFailed(f, args, kw, e)) from e


# Callables sent by name so far (`dumpsCallByName`): the callable -> (its
# module's namespace, its name there, the part's head). Cleared when full.
_byName: dict[Any, tuple[dict[str, Any], str, bytes]] = {}
BYNAME_CACHE = 1024
_NO_ARGS = pickle.dumps((), PROTOCOL)


def dumpsCallByName(f: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> bytes | None:
    """
    The one part of ``f(*args)`` sent by name (`FLAG_BYNAME`), or None if it
    cannot go so: *f* must be a function of a module other than ``__main__``
    that the module holds under its own name (now: one rebound since is
    pickled as usual), the arguments a few plain values, and no keywords.

    Pickling the function by reference costs two thirds of a small call's
    pickle, and unpickling it (an import lookup) most of the child's; here
    the head is made once per function, and the child keeps the namespace.
    The part is a byte that says how long the *head* is, the head (the
    module's name and the function's, a NUL byte between them), then the
    pickle of *args*.
    """
    if kw or type(f) not in _PLAIN_CALLABLES:
        return None
    entry = _byName.get(f)
    if entry is None:
        entry = _nameEntry(f)
        if entry is None:
            return None
    namespace, name, head = entry
    if namespace.get(name) is not f:
        return None
    if not args:
        return head + _NO_ARGS
    if not PLAIN_TYPES.issuperset(map(type, args)):
        return None
    data = pickle.dumps(args, PROTOCOL)
    if len(data) >= BYTES_MIN:
        return None  # (a large string: a part of its own, as `dumpsCall` sends it)
    return head + data


def _nameEntry(f: Any) -> tuple[dict[str, Any], str, bytes] | None:
    """Make and remember `dumpsCallByName`'s entry for *f*, if it may go by name."""
    module = getattr(f, "__module__", None)
    name = getattr(f, "__qualname__", None)
    if not isinstance(name, str) or not module or _onlyByValue(module, name):
        return None
    if "." in name or "\0" in module or "\0" in name:
        return None  # (a method, or a name the part could not carry)
    namespace = getattr(sys.modules.get(module), "__dict__", None)
    if namespace is None or namespace.get(name) is not f:
        return None
    head = f"{module}\0{name}".encode()
    if len(head) > 255:
        return None  # (its length must fit in the part's first byte)
    if len(_byName) >= BYNAME_CACHE:
        _byName.clear()
    entry = _byName[f] = (namespace, name, bytes([len(head)]) + head)
    return entry


# The child's side: a part's head -> (the module's namespace, the name, the module).
_byHead: dict[bytes, tuple[dict[str, Any], str, Any]] = {}


def loadsCallByName(part: Any) -> tuple[Any, tuple[Any, ...]]:
    """
    Inverse of `dumpsCallByName`: ``(f, args)``. The callable is looked up
    in its module for every call (a module attribute rebound in this
    process since is the one called, as unpickling would find it).
    """
    if type(part) is not bytes:
        part = bytes(part)
    end = part[0] + 1
    head = part[1:end]
    found = _byHead.get(head)
    if found is None:
        import importlib

        moduleName, name = head.decode().split("\0")
        module = importlib.import_module(moduleName)
        found = (module.__dict__, name, module)
        if len(_byHead) >= BYNAME_CACHE:
            _byHead.clear()
        _byHead[head] = found
    namespace, name, module = found
    try:
        f = namespace[name]
    except KeyError:
        # Not (yet) in the module's namespace: a module's own __getattr__
        # (lazy loading) may give it, as it would to unpickling.
        f = getattr(module, name)
    return f, pickle.loads(part[end:])


def _whatFailed(f: Any, args: tuple[Any, ...], kw: dict[str, Any], error: Exception) -> str:
    name = getattr(f, "__qualname__", None) or repr(f)
    suspects: list[tuple[str, Any]] = [(f"the callable {name!r}", f)]
    suspects += [(f"argument {i} ({type(a).__qualname__})", a) for i, a in enumerate(args)]
    suspects += [(f"keyword {k!r} ({type(v).__qualname__})", v) for k, v in kw.items()]
    for label, obj in suspects:
        try:
            dumps(obj)
        except Exception as e:
            return f"cannot pickle {label} of a call to {name}: {type(e).__name__}: {e}"
    return f"cannot pickle a call to {name}: {type(error).__name__}: {error}"


# An error reported by the other side: ``exception`` (rebuilt, or None if it
# did not unpickle), ``typeName`` (module.qualname of its type), ``message``
# and ``traceback`` (the formatted text).
RemoteError = namedtuple("RemoteError", "exception typeName message traceback")


def _typeName(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def resultPicklingError(f: Any, result: Any, error: Exception) -> pickle.PicklingError:
    """What a call's caller gets when its result cannot travel back pickled."""
    name = getattr(f, "__qualname__", None) or repr(f)
    return pickle.PicklingError(
        f"cannot pickle the result of {name} ({type(result).__qualname__}):"
        f" {type(error).__name__}: {error}"
    )


def dumpsError(
    exc: BaseException, note: str = "", text: str | None = None, typeName: str | None = None
) -> list[Any]:
    """
    Parts describing *exc* (with its traceback text), for `loadsError`.

    *text* replaces the traceback formatted from ``exc.__traceback__`` and
    *typeName* the name of its type: a server relaying an error that it got
    from elsewhere passes on the original traceback and type name.
    """
    if text is None:
        import traceback

        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if note:
        text = f"{note}\n{text}"
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__}>"
    try:
        excParts = dumps(exc)
        loads(excParts)  # some exceptions pickle but do not unpickle
    except Exception:
        excParts = []
    name = typeName or _typeName(exc)
    return [dumpsSmall((name, message, text, len(excParts))), *excParts]


def loadsError(parts: list[Any]) -> RemoteError:
    """Inverse of `dumpsError`; ``exception`` is None if it cannot be rebuilt."""
    typeName, message, text, n = pickle.loads(parts[0])
    exception = None
    if n:
        try:
            exception = loads(parts[1 : 1 + n])
        except Exception:
            exception = None
        if not isinstance(exception, BaseException):
            exception = None
    return RemoteError(exception, typeName, message, text)
