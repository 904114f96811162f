"""
The worker interface.

A worker runs tasks that a `TaskQueue` hands it. It knows nothing of
scheduling: the queue decides which task runs next and where; the worker only
runs it and reports ``(status, result)`` through ``task.callback``.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface, invariant

from .errors import InvariantError

__all__ = ["IWorker"]


def _qualificationsAreLists(worker: object) -> None:
    for name in ("cQualified", "iQualified"):
        value = getattr(worker, name, None)
        if not isinstance(value, list):
            raise InvariantError(f"{worker!r}.{name} must be a list, not {value!r}")


class IWorker(Interface):
    """
    Provided by every worker that a `TaskQueue` can employ.

    Required
    --------
    ``cQualified``, ``iQualified``, ``setResignator``, ``run``, ``stop`` and
    ``crash``, as in the original AsynQueue.

    Optional
    --------
    A worker may also define, and the queue then uses:

    - ``timedOut(task)``: the task's time ran out. The queue discards any late
      result itself; the worker should free itself (a process worker kills
      its child, a thread worker abandons its stuck thread) so that it can
      take new work. Called in the reactor thread.
    - ``cancelled(task)``: the caller cancelled the task's call. The queue
      has dropped the task already; the worker should not run it if it has
      not started it, and stop it if it can (a process worker interrupts the
      call in its child). Without it, the queue calls ``timedOut(task)``.
      Called in the reactor thread.
    - ``reportsStart = True``: the worker calls ``task.started()`` when the
      task really starts (useful when it holds several tasks in flight), so a
      timeout counts from then rather than from when the task was handed
      over.
    - ``runsInOrder`` (True, or a property): a task it takes now will run
      after every task it holds, one at a time (or at least after every
      task of the same series it holds, as a remote worker whose server
      runs each series in sequence does). While true, the worker that
      runs a task of a series may take that series' next tasks too, to run
      right behind it (no other worker may start one before it finishes).
      Such a worker's ``timedOut(task)`` must hand back unrun (innocent
      ``Status.NOT_RUN``) the tasks of the same series that it holds behind it.
    - ``handBack()`` (with ``reportsStart``): hand back unrun (innocent
      ``Status.NOT_RUN``) every task it holds that has not started, keeping
      the running one. The queue calls it when the task running there (the
      oldest it handed over) has run for longer than a short patience
      (`asynqueue._core._dispatch.HANDBACK_PATIENCE`) with others waiting
      behind it, and another worker is attached: the first worker free then
      takes them. Thread and process workers have it. Called in the
      reactor thread. If the running task runs a batch of calls (its first
      argument is an `asynqueue._support._batch.Batch`), a worker that can
      stop it after its current call may do so and tell the batch's
      ``giveBack`` which calls it will not run; the queue also asks when
      nothing waits behind such a task. Process workers do, and thread
      workers for their own groups.
    - ``gaveUp``: why the worker resigned for good (a string), or None; see
      ``setResignator``.
    - ``groupLimit()``, with ``groupRunner``, ``groupOutcome(outcome)`` and,
      if it likes, ``groupRan(calls, seconds)`` and ``stopGroup(task)``: the
      worker takes plain calls of a backlog in *groups*, a task each (see
      `asynqueue._core._dispatch`, *Groups*). ``groupLimit()`` says how many
      calls it takes in one now (less than 2: none); the task runs
      ``groupRunner`` on a `asynqueue._support._batch.Batch` of ``(f, args,
      kw)``; its result is ``(outcomes, seconds)``, each outcome decoded by
      ``groupOutcome`` into a ``(status, result)`` as the call alone would
      have had, while the batch's ``giveBack(start, done, own=False)``
      takes outcomes sent ahead, the calls from *start* on it will not run,
      and (*own*) that the call before *start* has the task's own outcome.
      ``stopGroup`` stops a group one of whose calls was cancelled. Process
      and thread workers have them.
    """

    cQualified = Attribute(
        "A list of series that every instance of this class is qualified to run."
    )
    iQualified = Attribute("A list of series that this instance is qualified to run, in addition.")

    invariant(_qualificationsAreLists)

    def setResignator(callableObject):
        """
        Register a callable to call (with no arguments) when the worker quits
        on its own, e.g. after losing its connection. The queue then detaches
        it and reassigns its unfinished tasks.

        Optional: a worker that quits because it cannot work any more (its
        server is gone, its children die at start) may say why in a
        ``gaveUp`` attribute (a string; None otherwise), read when it
        resigns. If it was the queue's last worker, the queue's calls then
        fail with `asynqueue.errors.WorkerError` instead of waiting for a
        worker that may never come; new calls fail too until a worker is
        attached.
        """

    def run(task):
        """
        Start running *task* (a `asynqueue.tasks.Task`).

        Call ``task.callback((status, result))`` with the outcome, status being
        a member of `asynqueue.tasks.Status` (``Status.RESULT``,
        ``Status.ERROR``, ...), or its letter (``r e i c t n d``), in ``str``
        or, as the original's workers report it, in ``bytes``; see
        `asynqueue.base.TaskQueue.taskDone`.
        Keywords the queue consumes never appear in ``task.callTuple``; the
        per-call ``raw`` and ``consumer`` options are task attributes.

        Returns a Deferred that fires when the worker can accept another task
        (a pipelining worker may fire it before *task* finishes). Returning
        None instead means "ready for another task right now".
        """

    def stop():
        """
        Stop gracefully: finish the tasks in hand, then release resources.
        Returns a Deferred that fires when that is done.
        """

    def crash():
        """
        Stop at once. Returns the list of tasks the worker had not finished;
        their outcome from this worker is no longer awaited.
        """
