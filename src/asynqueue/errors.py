"""
Every exception asynqueue raises, in one tree.

::

    AsynQueueError
    ├── QueueRunError            the queue is not running (call after shutdown,
    │                            or a task still queued when shutdown finished)
    ├── WrongThreadError         a queue was called from a thread other than
    │                            its reactor's (also a ``RuntimeError``)
    ├── ImplementationError      an object does not implement what it must
    │   └── NotReadyError        a Deferator was advanced before its last item
    ├── TaskError                a task could not produce its result
    │   ├── TimeoutError         the task timed out on its first try and its retry
    │   ├── TaskCancelled        the task was taken off the queue unrun
    │   └── WorkerError          the worker reported a failure; ``remoteTraceback``
    │       │                    holds the worker's traceback text
    │       ├── ThreadError      ... from a thread worker
    │       ├── ProcessError     ... from a process worker
    │       └── WorkerLost       the worker died (process exit, signal, lost
    │                            connection) while running the task, twice
    └── WireError                a wire connection broke its protocol
        ├── AuthenticationFailed the peer failed the shared-secret handshake
        └── FrameTooLarge        a frame exceeded the configured size limit

    InvariantError               (a ``zope.interface.Invalid``) a worker breaks
                                 the ``IWorker`` invariant

The names ``QueueRunError``, ``ImplementationError``, ``NotReadyError``,
``InvariantError``, ``TimeoutError``, ``WorkerError``, ``ThreadError`` and
``ProcessError`` are those of the original AsynQueue. ``TimeoutError`` also
derives from the builtin ``TimeoutError`` so ``except TimeoutError`` catches
it either way.
"""

from __future__ import annotations

import builtins

from zope.interface import Invalid

__all__ = [
    "AsynQueueError",
    "AuthenticationFailed",
    "FrameTooLarge",
    "ImplementationError",
    "InvariantError",
    "NotReadyError",
    "ProcessError",
    "QueueRunError",
    "TaskCancelled",
    "TaskError",
    "ThreadError",
    "TimeoutError",
    "WireError",
    "WorkerError",
    "WorkerLost",
    "WrongThreadError",
]


class AsynQueueError(Exception):
    """Base of every asynqueue error."""


class QueueRunError(AsynQueueError):
    """The queue is not running: it was shut down, or never started."""


class WrongThreadError(AsynQueueError, RuntimeError):
    """
    A queue was used (a call, map, update, shutdown, or a change of its
    workers) from a thread other than the one running its reactor.
    A queue, like Twisted, belongs to the reactor's thread; from another
    thread, use ``reactor.callFromThread`` (or ``blockingCallFromThread`` for
    the result), or an executor (`asynqueue.futures`).
    """


class ImplementationError(AsynQueueError):
    """An object lacks an interface or attribute that asynqueue needs."""


class NotReadyError(ImplementationError):
    """A Deferator was asked for its next item before the last one arrived."""


class InvariantError(Invalid):
    """A worker violates an ``IWorker`` invariant (e.g. qualifications not lists)."""


class TaskError(AsynQueueError):
    """A task did not produce a result."""


class TimeoutError(TaskError, builtins.TimeoutError):
    """The task timed out twice: once on its first try and once on its retry."""


class TaskCancelled(TaskError):
    """The task was removed from the queue before it ran."""


class WorkerError(TaskError):
    """
    A worker reported that the task failed.

    Raised as-is when the original exception cannot be rebuilt (e.g. it does not
    unpickle). ``remoteTraceback`` holds the worker's formatted traceback text
    and ``typeName`` the qualified name of the original exception type.
    """

    def __init__(self, *args: object, remoteTraceback: str = "", typeName: str = ""):
        super().__init__(*args)
        self.remoteTraceback = remoteTraceback
        self.typeName = typeName


class ThreadError(WorkerError):
    """A task failed in a thread worker."""


class ProcessError(WorkerError):
    """A task failed in, or could not be sent to, a process worker."""


class WorkerLost(WorkerError):
    """
    The worker died or disconnected while running the task, and so did the
    worker that re-ran it. ``reason`` says how (exit code, signal, lost link).
    """

    def __init__(self, *args: object, reason: str = ""):
        super().__init__(*args)
        self.reason = reason


class WireError(AsynQueueError):
    """A peer broke the wire protocol; the connection is closed."""


class AuthenticationFailed(WireError):
    """The peer did not prove it knows the shared secret."""


class FrameTooLarge(WireError):
    """A frame announced a length above the connection's limit."""
