"""
Calls and results that a remote server relays without unpickling them.

A worker server hands the calls it receives to its own local workers as
`PickledCall` objects. A `asynqueue.ProcessWorker` recognizes one and sends
its pickle to its child as it came off the wire; it reports the child's
pickled result as a `PickledResult` and its pickled error as a
`PickledError`, which the server sends on as they are. So over a process
server a call's arguments and result are pickled once, by the client and
the child, and never unpickled in the server's process. Other workers (a
thread worker, say) just call the object, which unpickles the call and runs
it.

A large result need not even be complete. Where the server's connection
can send parts still being filled, it marks the call ``early`` and gives it
``wireFlags`` for the child (large results through shared memory): the
process worker adds those flags, unread, to the call's own, and its `WireClient`
hands over the `PickledResult` as soon as the head of the child's message
is in, with the `Filling` of its parts, and the server sends it on as its
bytes arrive. So what the server wants stays the server's business: the
wire and the process worker only carry it (see `WireClient.submit`).

Standard library only.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["CancelledCall", "PickledCall", "PickledError", "PickledResult"]


class PickledCall:
    """
    A call ``(f, args, kw)`` as the parts of its pickle (see ``_codec.dumps``).

    Attributes:
        parts: the pickle and its out-of-band buffers.
        onStart: if set, called (in the reactor thread) with the worker's
            task, or None, when the call starts.
        cancelled: set True to have a worker that has not started the call
            yet report it failed instead of running it.
        name: a description of the callable, for reprs and logs.
        early: the result may be reported before all of it arrived (a
            `PickledResult` with a `Filling`).
        wireFlags: CALLS flags (`_codec`) for a worker that sends the call
            on as it is to add to its own, without reading them.
    """

    __slots__ = ("cancelled", "early", "name", "onStart", "parts", "reactor", "wireFlags")

    def __init__(
        self,
        parts: list[Any],
        name: str = "a relayed call",
        onStart: Callable[[Any], None] | None = None,
        reactor: Any = None,
    ) -> None:
        self.parts = parts
        self.name = name
        self.onStart = onStart
        self.cancelled = False
        self.reactor = reactor
        self.early = False
        self.wireFlags = 0

    def __repr__(self) -> str:
        return f"<PickledCall {self.name}>"

    def __call__(self) -> Any:
        """Unpickle and run the call, here (in whatever thread calls me)."""
        from ._codec import loads

        if self.cancelled:
            raise CancelledCall(f"{self.name} was given up on before it started")
        onStart, reactor = self.onStart, self.reactor
        if onStart is not None and reactor is not None:
            reactor.callFromThread(onStart, None)
        f, args, kw = loads(self.parts)
        self.parts = []  # drop the buffers as soon as they are not needed
        return f(*args, **kw)


class CancelledCall(Exception):
    """A relayed call was given up on before it started."""


class PickledResult:
    """
    A result as the parts of its pickle, to be sent on as it is; *filling*
    is the `Filling` of parts still arriving, if they may be.
    """

    __slots__ = ("filling", "parts")

    def __init__(self, parts: list[Any], filling: Any = None) -> None:
        self.parts = parts
        self.filling = filling

    def sendable(self) -> list[Any]:
        """The parts, for `encode`: those still arriving as `Filling.pending` placeholders."""
        filling = self.filling
        return self.parts if filling is None else filling.pending(self.parts)

    def __repr__(self) -> str:
        size = sum(memoryview(p).nbytes for p in self.parts)
        return f"<PickledResult {size} bytes>"


class PickledError(Exception):
    """An error as the parts of ``_codec.dumpsError``, to be sent on as it is."""

    def __init__(self, parts: list[Any]) -> None:
        super().__init__("a relayed error")
        self.parts = parts
