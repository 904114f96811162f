"""
Process workers: `ProcessWorker`, `ProcessQueue` (and `ProcessBase`).

A ProcessWorker runs tasks in a child interpreter of its own: a fresh
``python`` (not a fork of this threaded reactor process) that imports only
the standard library, cloudpickle when a pickle needs it, and the user's
modules (`asynqueue._process._child`).

Data flow
=========

::

    TaskQueue ─run(task)─► ProcessWorker ─► _Child ══ CALLS ══► child interpreter
        ▲                   pickles the call now:       (batched per       │ runs calls one at a
        │                   a bad argument fails         reactor turn)     │ time, in order
        │                   this call alone ('e')                          ▼
    task.callback ◄── _Child ◄══ RESULTS (those of a run of short calls together)
                             ◄══ ITEMS (iterator batches, answering NEXT)

``══`` is one socketpair per child, read and written by a `SocketChannel`: a
reactor file descriptor, so nothing polls, and payloads of any size go in
as many reads and writes as the kernel likes (`asynqueue._wire`). The
conversation itself (calls in flight, results, iterator batches) is a
`WireClient`, shared with remote workers; `_Child` adds the process.

Large payloads
--------------
A 10 MB ``bytes`` result is copied once on its way, by the kernel: from the
result's own memory (it travels out of band, not copied into the pickle:
`asynqueue._wire._codec`) straight into the memory of the new ``bytes``
object that the caller gets (the framing marks it immutable:
`asynqueue._wire._framing`). Other large parts (a NumPy array's buffer, a
pickle) go into a pooled receive buffer that is already faulted in. The
socketpair gets 4 MiB buffers, so such a result goes in a few large writes.
Fresh memory is what costs: faulting in the pages of a large new buffer
takes several times as long as the transfer itself, and without these
measures a child faulted in a new pickle buffer for every such result, and
this process a new receive buffer and (malloc having given the pair back to
the system) a new result (figures: benchmarks/README.md, "Measurements
behind the design"). The large parts of a call's arguments (1 MiB or
more) go through shared memory when the child's *inbox* is free: copied in
here, read there (`asynqueue._process._arena`), two ``memcpy`` instead of the
kernel's copy into the socket and out of it; otherwise through the socket,
like a result the other way.

Pipelining: a worker keeps up to a *window* of tasks in its child, so that
the child never waits a round trip for its next task. The window adapts to
how long tasks take: up to `PROCESS_MAX_WINDOW` for tiny tasks, one for tasks of
more than a few milliseconds (which gain nothing from queueing in one child
while another might be idle; a map's batches of up to 20 ms go two at a time,
see `asynqueue._core._window`). The child runs its tasks in order, so when a
result comes back the next task has started: the worker then calls its
``task.started()`` (``reportsStart``), and a timeout counts from there.
When one runs long with others waiting behind it in the child, the queue
asks for those back (`ProcessWorker.handBack`): the child answers each it
has not started as not run (a HANDBACK message, read inside the long call
on SIGUSR1), and the first worker free takes them. A long batch task
(an executor's group of calls) is asked too: the child stops it after its
current call and answers REST (the calls it will not run, and the outcomes
of those it ran), which the batch's owner takes. The
child may hold the results of short calls for up to a millisecond, to send
them together (`asynqueue._process._child`, *Results*), but never around a
task with a timeout (``FLAG_STARTED``): its start is known when it starts.
With nothing queued, the child polls its socket for up to ``spin`` seconds
(100 µs where two CPUs or more may run this process) before it blocks, so
that a caller awaiting each result does not wait for an idle core to wake,
while few children are in play: all of this process's children share a
`PollBoard` (`_Board`) to know (`asynqueue._process._child`, *Waiting*).

Faults
------

- The child dies (exit, signal, crash, OOM kill): seen at once as end of
  file on the socket, reported when the process has been reaped (with the
  exit code or signal). The task it was running gets `Status.NOT_RUN` (the
  queue re-runs it once, then fails it with `errors.WorkerLost`); the tasks
  queued behind it are *innocent* (``task.innocent = True``, `Status.NOT_RUN`), and the
  queue requeues them free of charge. The tasks it had done whose results
  it still held get those results: the child notes them in its arena
  (`_arena.Arena.holdResult`) as it holds them, with the task it started
  last (`_arena.Arena.startedSlot`), on which the crash is blamed.
  Iterators of that child fail with `errors.ProcessError`. A new child replaces it.
- The child closes its socket but runs on (code that closes every file
  descriptor): killed `LOST_GRACE` seconds after the end of file, and
  reported as above.
- A timeout: the queue calls ``timedOut(task)``; the child is killed
  (SIGTERM, then SIGKILL after `KILL_GRACE` seconds) and replaced; the
  other tasks in its window are innocent.
- A cancel: the queue calls ``cancelled(task)``. The child drops the call
  if it has not started it, or has it raise `asynqueue.process.CallCancelled`
  if it is running (an ABANDON message, then SIGUSR1); either way it
  answers, and goes on with its next call. A child that does not answer
  within `KILL_GRACE` seconds (stuck in C code that ignores signals) is
  killed and replaced like one that timed out.
- Children that die before running anything (`MAX_FRUITLESS` times in a
  row) mean the worker cannot work: it resigns.
- Persistent updates (``task.update == "persistent"``) are replayed to every
  new child before its first task.
- Recycling: after ``maxTasks`` tasks, or once its resident memory exceeds
  ``maxRSS`` bytes, a child gets no new tasks; a fresh one takes over and
  the old one exits when its tasks and iterators are done.

Shutdown: ``stop()`` lets the children finish the tasks in hand, closes
their iterators, tells them to exit and fires once every child has been
reaped. ``crash()`` kills them at once and returns the unfinished tasks.
A child whose parent dies exits by itself: end of file on its socket, and on
Linux ``PR_SET_PDEATHSIG``.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import pickle
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionLost, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import errors
from .._core._queue import TaskQueue
from .._core._task import Task
from .._core._window import GROUP_WINDOW, PipelineWindow, groupSizeFor, smoothed, smoothedOver
from .._iter._base import BATCH_ITEMS, BATCH_SECONDS
from .._support._batch import isBatch
from .._support._status import Status
from .._support._system import cores, cpuBudget, parseSize
from .._support._util import dropTrigger
from .._wire._channel import SocketChannel
from .._wire._client import WireClient, settleMembers, statusResult
from .._wire._codec import (
    ABANDON,
    EXIT,
    FLAG_BYNAME,
    FLAG_INBOX,
    FLAG_RAW,
    FLAG_STARTED,
    HANDBACK,
    HELLO,
    INIT,
    RESULTS,
    STATUS_OF_MEMBER,
    dumpsCall,
    dumpsCallByName,
    dumpsSmall,
)
from .._wire._framing import Filling, Message, encode
from .._wire._group import runCalls
from .._wire._relay import PickledCall
from ..interfaces import IWorker
from ._arena import ARENA_MIN, BOARD_SLOTS, Arena, PollBoard
from ._child import BOOTSTRAP, FIRST_BATCH, SPIN_SECONDS, ProcessBase, leanCode

__all__ = ["ProcessBase", "ProcessQueue", "ProcessWorker"]

log = logging.getLogger("asynqueue")

# The asynqueue package directory (this module is in its _process folder).
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Most tasks a worker keeps in its child at once (the pipelining window).
PROCESS_MAX_WINDOW = 32
# Seconds between SIGTERM and SIGKILL when killing a child.
KILL_GRACE = 1.0
# Seconds a child has to exit after being told to, before SIGKILL.
EXIT_GRACE = 5.0
# A child that closed its socket but has not exited is killed after this.
LOST_GRACE = 3.0
# Consecutive children dying before they ran a task: the worker gives up.
MAX_FRUITLESS = 3
# Bytes asked for the send and receive buffers of a child's socket (Linux
# caps them at net.core.wmem_max and rmem_max, 4 MiB by default).
SOCKET_BUFFER = 4 * 1024 * 1024


def _describeEnd(pid: int | None, reason: Failure) -> str:
    value = reason.value
    sig = getattr(value, "signal", None)
    code = getattr(value, "exitCode", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "unknown"
        return f"child process {pid} was killed by signal {sig} ({name})"
    return f"child process {pid} exited with code {code}"


def _reactorReapsChildren() -> bool:
    """
    Whether a SIGCHLD handler is installed (the reactor's, when it runs with
    its signal handlers): then an ended child is reaped as soon as it ends,
    and nobody needs to ask again later.
    """
    try:
        return signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    except (AttributeError, ValueError):
        return False


class ChildState(enum.StrEnum):
    """Where a `_Child` is in its life; only the child object moves it on."""

    STARTING = "starting"  # spawned, no HELLO yet: takes tasks (they wait for it)
    READY = "ready"  # said HELLO: takes tasks
    RETIRING = "retiring"  # takes no new tasks; exits once its own are done
    EXITING = "exiting"  # told to exit (killed if it does not in time)
    KILLED = "killed"  # signalled (TERM, then KILL)
    LOST = "lost"  # its channel ended unexpectedly: being reaped
    ENDED = "ended"  # reaped


_TAKES_TASKS = (ChildState.STARTING, ChildState.READY)


class _Child(WireClient, ProcessProtocol):
    """
    One child interpreter, as its worker sees it: the process, and the
    conversation with it (`WireClient`), in which the child runs its calls
    one at a time, in order.
    """

    errorType = errors.ProcessError
    orderedStart = True

    def __init__(self, worker: ProcessWorker) -> None:
        WireClient.__init__(self, worker, worker._reactor)
        self.state = ChildState.STARTING
        self.expected = False  # its end needs no reporting
        self.ended = False
        self.pid: int | None = None
        self.process: Any = None
        self.channel: SocketChannel | None = None
        self._timers: list[Any] = []
        # Shared memory for the large results of the calls whose flags ask for
        # it (see `asynqueue._process._arena`), and the Filling of the result
        # being written there.
        self.arena: Arena | None = None
        self._placing: Filling | None = None
        # The task ID of the call it started last, once it ended (from the
        # arena; 0 if unknown): the one a crash is blamed on.
        self.lastStarted = 0
        # The results it held back when it ended, from the arena (see
        # `Arena.heldResults`): calls that were done, whose results it had
        # not sent yet.
        self.heldResults: list[tuple[int, str, float, list[bytes]]] = []
        # Shared memory for the large arguments of its calls (the arena the
        # other way round), once the child said it mapped it.
        self.inbox: Arena | None = None
        self._inboxOffered: Arena | None = None
        self.boardSlot: int | None = None  # its place on the `PollBoard`
        # Task IDs cancelled and not yet answered: the timer that kills me.
        self.cancelling: dict[int, Any] = {}
        # SIGUSR1 is due once what is queued on my channel is written (see
        # `_interruptOnceSent`).
        self._interruptWhenSent = False
        # Calls asked back (`handBack`) and not yet answered: asked once.
        self.askedBack: set[int] = set()

    def __repr__(self) -> str:
        return f"<_Child pid={self.pid} {self.state} inflight={len(self.inflight)}>"

    # ------------------------------------------------------------ process

    def spawn(self, config: dict[str, Any]) -> None:
        parentSock, childSock = socket.socketpair()
        for sock in (parentSock, childSock):
            _bigBuffers(sock)
        devnull = os.open(os.devnull, os.O_RDWR)
        arena = self.arena = Arena.create()
        inbox = self._inboxOffered = Arena.create()
        try:
            childFDs = {
                0: devnull,
                1: 1 if _isOpen(1) else devnull,
                2: 2 if _isOpen(2) else devnull,
                3: childSock.fileno(),
            }
            if arena is not None:
                childFDs[4] = arena.fd
                config = {**config, "arena": (4, arena.size)}
            if inbox is not None:
                childFDs[5] = inbox.fd
                config = {**config, "inbox": (5, inbox.size)}
            if config.get("spin"):
                slot = self.boardSlot = _Board.take()
                if slot is not None:
                    assert _Board.board is not None
                    childFDs[6] = _Board.board.fd
                    config = {**config, "board": (6, slot)}
            args = [sys.executable, "-c", BOOTSTRAP, PACKAGE_DIR, "3", str(os.getpid()), "code"]
            self.process = self.reactor.spawnProcess(
                self, sys.executable, args, env=dict(os.environ), childFDs=childFDs
            )
        except BaseException:
            parentSock.close()
            self._leaveBoard()
            raise
        finally:
            os.close(devnull)
            childSock.close()
            for shared in (arena, inbox):
                if shared is not None:
                    shared.close()  # the child has its copy; the mapping stays
        self.pid = self.process.pid
        self.channel = SocketChannel(parentSock, self, self.reactor)
        self.channel.sendPreamble(leanCode(PACKAGE_DIR))  # read by BOOTSTRAP, before any frame
        self.channel.send(encode(INIT, [dumpsSmall(config)]))

    def _leaveBoard(self) -> None:
        """Give my place on the `PollBoard` back, if I had one."""
        if self.boardSlot is not None:
            _Board.give(self.boardSlot)
            self.boardSlot = None

    def processEnded(self, reason: Failure) -> None:
        if self.ended:
            return
        if self.channel is not None and self.channel.connected:
            # Reaped before its socket said end of file: what it sent last
            # may be unread yet (results of calls it did). Read it now, with
            # no new task sent its way meanwhile.
            if self.takesTasks:
                self.state = ChildState.LOST
            self.channel.readLast()
        self.ended = True
        self.state = ChildState.ENDED
        self._cancelTimers()
        text = _describeEnd(self.pid, reason)
        if self.channel is not None and self.channel.connected:
            self.channel.loseConnection()
        if self.arena is not None:
            self.lastStarted = self.arena.lastStarted()
            self.heldResults = self.arena.heldResults()
        # The shared memory, now (this object may wait for the garbage
        # collector, and each arena holds up to ARENA_SIZE bytes).
        for shared in (self.arena, self.inbox, self._inboxOffered):
            if shared is not None:
                shared.unmap()
        self.arena = self.inbox = self._inboxOffered = None
        self._leaveBoard()
        self.worker._childEnded(self, text)

    def sendSignal(self, name: str | int) -> None:
        if self.ended or self.process is None:
            return
        try:
            self.process.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            pass

    def terminate(self, grace: float = KILL_GRACE) -> None:
        """Close the channel and kill: SIGTERM, SIGKILL after *grace* seconds."""
        self.expected = True
        self.state = ChildState.KILLED
        self._closeChannel()
        if grace <= 0:
            self.sendSignal("KILL")
        else:
            self.sendSignal("TERM")
            self._later(grace, self.sendSignal, "KILL")

    def exit(self) -> None:
        """Tell the child to exit; SIGKILL if it has not after `EXIT_GRACE`."""
        if self.state in (ChildState.EXITING, ChildState.KILLED, ChildState.ENDED):
            return
        self.expected = True
        self.state = ChildState.EXITING
        self.flush()
        if self.channel is not None and self.channel.connected:
            self.channel.send(encode(EXIT))
            self._later(EXIT_GRACE, self.terminate, 0)
        else:
            self.terminate(0)

    def _later(self, delay: float, f: Callable[..., Any], *args: Any) -> None:
        self._timers = [t for t in self._timers if t.active()]
        self._timers.append(self.reactor.callLater(delay, f, *args))

    def _cancelTimers(self) -> None:
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        self.unscheduleSend()

    def _closeChannel(self) -> None:
        self.unscheduleSend()
        if self.channel is not None and self.channel.connected:
            self.channel.loseConnection()

    # ------------------------------------------------------------ channel

    def channelLost(self, reason: Failure) -> None:
        placing, self._placing = self._placing, None
        if placing is not None:
            placing._fail(ConnectionLost(f"child process {self.pid} was lost"))
        if self.ended:
            return
        if self.expected:
            self._reap()  # without the reactor's SIGCHLD handling, nothing else would
            return
        # End of file: the child is exiting or dead. It is reported once
        # reaped (processEnded, with its exit status); make sure it will be.
        self.state = ChildState.LOST
        self._reap()
        if not self.ended:
            self._later(LOST_GRACE, self._killLost)

    def _killLost(self) -> None:
        """
        Its socket ended `LOST_GRACE` seconds ago, yet it was not reaped
        (its code closed the socket and runs on): kill it. Its end is still
        reported as a death, the calls in hand with it (not as a kill of
        ours, whose calls were reported already).
        """
        if self.ended:
            return
        log.warning("Child process %s closed its socket but did not exit: killing it", self.pid)
        self.sendSignal("KILL")
        self._reap()

    def _reap(self, delay: float = 0.01) -> None:
        # Normally SIGCHLD makes the reactor reap the child at once. Without
        # the reactor's signal handling, try now and a few times later.
        if self.ended or self.process is None:
            return
        if self.process.pid is None:
            # Reaped already (by the reactor's SIGCHLD handling), its end not
            # yet reported: Twisted's reapProcess would log a TypeError from
            # os.waitpid(None) (Twisted issue 9778).
            return
        try:
            self.process.reapProcess()
        except Exception:
            pass
        if not self.ended and delay < LOST_GRACE and not _reactorReapsChildren():
            self._later(delay, self._reap, delay * 4)

    def messageReceived(self, message: Message) -> None:
        if message.kind == RESULTS:  # (the usual one, without handleMessage's dispatch)
            self._results(message.parts, message.filling)
            return
        if self.handleMessage(message):
            return
        if message.kind == HELLO:
            self.helloed = True
            if pickle.loads(message.parts[0]).get("inbox"):
                self.inbox = self._inboxOffered
            self._inboxOffered = None
            if self.state is ChildState.STARTING:
                self.state = ChildState.READY
            self._startHead()
        else:
            log.error("Process worker: unknown message kind %r from %r", message.kind, self)

    # ------------------------------------------------------------ WireClient hooks

    def settle(self) -> None:
        if self.state is ChildState.RETIRING:
            self.maybeExit()
        worker = self.worker
        worker._checkReady()
        if worker._stopping:
            worker._checkStop()

    def retireRequested(self) -> None:
        if self.takesTasks:
            self.worker._retire(self, "its memory use exceeded maxRSS")

    def placedParts(self, payload: list[Any], where: Any) -> tuple[list[Any], Any]:
        if self.arena is None:
            return WireClient.placedParts(self, payload, where)
        parts, filling = self.arena.take(payload, where)
        self._placing = filling
        return parts, filling

    def placedProgress(self, filled: int) -> None:
        filling = self._placing
        if filling is None:
            return
        if filled >= filling.size:
            self._placing = None
            filling._complete()
        else:
            filling._progress(filled)

    def forgottenAnswered(self, taskID: int, status: str, extra: Any) -> None:
        WireClient.forgottenAnswered(self, taskID, status, extra)
        timer = self.cancelling.pop(taskID, None)
        if timer is not None:
            if timer.active():
                timer.cancel()
            self._startHead()  # the next call has started
            self.maybeExit()

    def attemptOf(self, task: Task) -> int | None:
        """The task ID under which *task* was sent to me, if I hold it."""
        for attempt in self.inflight.values():
            if attempt.task is task:
                return attempt.taskID
        for attempt, _ in self.firstBatch.values():
            if attempt.task is task:
                return attempt.taskID
        return None

    def withdraw(self, taskID: int) -> None:
        """
        Give up on the call *taskID*: the child drops it if it has not
        started it, or interrupts it (see the module docstring).
        """
        if self.inflight.get(taskID) is None:
            self.forget(taskID)  # done: its iterator is closed
            return
        self.forget(taskID)
        self.flush()  # the call itself first, if it was still in the outbox
        if self.channel is None or not self.channel.connected:
            return
        self.channel.send(encode(ABANDON, [dumpsSmall([taskID])]))
        if self.helloed:  # (before HELLO it might not be handled yet)
            self._interruptOnceSent()
        timer = self.reactor.callLater(KILL_GRACE, self._cancelTooSlow, taskID)
        self._timers.append(timer)
        self.cancelling[taskID] = timer

    def handBack(self) -> None:
        """
        Have the child give back, unrun, the calls waiting behind the one it
        runs (see `ProcessWorker.handBack`): it answers each it had not
        started with status ``d``; one it started comes back as usual. If
        the one it runs is a batch (`asynqueue._support._batch`), the calls
        of the batch it has not started go back to their owner (REST).
        """
        if self.channel is None or not self.channel.connected or not self.helloed:
            return
        asked = self.askedBack
        asked.intersection_update(self.inflight)
        waiting = [
            taskID
            for taskID, attempt in itertools.islice(self.inflight.items(), 1, None)
            # An update replayed here must run; one asked already is on its
            # way. A task of a series stays: the answer comes later, and the
            # series' next task may come here meanwhile and run before it.
            if attempt.task is not None and attempt.task.series is None and taskID not in asked
        ]
        # The running task itself, if it runs a batch whose owner takes back
        # the calls it has not started (the child answers REST).
        for taskID, attempt in itertools.islice(self.inflight.items(), 1):
            task = attempt.task
            if task is not None and taskID not in asked and task.series is None:
                args = task.callTuple[1]
                if isBatch(args) and args[0].giveBack is not None:
                    waiting.insert(0, taskID)
        if not waiting:
            return  # (a child whose code took SIGUSR1 for itself is not asked again)
        self._askBack(waiting)

    def stopBatch(self, taskID: int) -> None:
        """
        Have the child stop the batch of task *taskID* after its current
        call (REST), or hand the task back unrun if it has not started: a
        HANDBACK naming it alone.
        """
        if self.channel is None or not self.channel.connected or not self.helloed:
            return
        asked = self.askedBack
        if taskID in asked:
            return
        asked.intersection_update(self.inflight)  # (forget those answered)
        self._askBack([taskID])

    def _askBack(self, taskIDs: list[int]) -> None:
        """HANDBACK for *taskIDs* (noted as asked), then SIGUSR1 once it is written."""
        self.askedBack.update(taskIDs)
        self.flush()  # (the calls themselves first, if still in the outbox)
        self.channel.send(encode(HANDBACK, [dumpsSmall(taskIDs)]))  # type: ignore[union-attr]
        self._interruptOnceSent()  # (a child inside a long call reads it there)

    def _interruptOnceSent(self) -> None:
        """
        SIGUSR1, for a message just sent that a child inside a long call must
        read from its signal handler (ABANDON, HANDBACK): at once if the
        message is in the child's socket, else once my channel has written
        it. A signal ahead of its message finds nothing to read, and the
        message would wait for the end of the call it was about.
        """
        channel = self.channel
        if channel is not None and channel.bufferedBytes:
            self._interruptWhenSent = True  # (see channelDrained)
        else:
            self.sendSignal(signal.SIGUSR1)

    def channelDrained(self) -> None:
        """(My channel) Everything queued was written."""
        if self._interruptWhenSent:
            self._interruptWhenSent = False
            self.sendSignal(signal.SIGUSR1)

    def _cancelTooSlow(self, taskID: int) -> None:
        if self.cancelling.pop(taskID, None) is not None and self.state is not ChildState.ENDED:
            self.worker._kill(self, f"child process {self.pid} did not stop a cancelled call", None)

    def location(self) -> str:
        return f"in process {self.pid}"

    @property
    def takesTasks(self) -> bool:
        """Whether new tasks may go to me (starting or ready)."""
        return self.state in _TAKES_TASKS

    def retire(self) -> None:
        """Take no new tasks; exit once mine are done (see `maybeExit`)."""
        if self.takesTasks:
            self.state = ChildState.RETIRING

    def maybeExit(self) -> None:
        """A retiring child exits once no task or iterator needs it."""
        if (
            self.state is ChildState.RETIRING
            and not self.inflight
            and not self.cancelling
            and not self.firstBatch
            and (not self.sources or self.worker._stopping)
        ):
            self.failIterators("the process worker stopped")
            self.exit()


def _placeInInbox(inbox: Arena, parts: list[Any], flags: int) -> tuple[list[Any], int]:
    """
    A call's parts, with its large ones copied into the child's inbox if it
    is free (one ``memcpy`` instead of a trip through the socket: the
    kernel's copy in and the child's copy out); else as they are.
    """
    placed = inbox.reserve(parts)
    if placed is None:
        return parts, flags
    sent, where = placed
    for _ in inbox.fill(parts, where, first=1 << 62):
        pass  # all at once: the child reads the parts when the call comes
    return [dumpsSmall(where), *sent], flags | FLAG_INBOX


def _bigBuffers(sock: socket.socket) -> None:
    """
    Socket buffers of `SOCKET_BUFFER` bytes (as far as the system allows):
    a large result then goes in a few big writes and reads, not in hundreds
    of the default 208 KiB.
    """
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            pass


def _isOpen(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _spinSeconds(spin: float | str | None) -> float:
    """
    *spin* checked: seconds, 0 for None. ``"auto"``: `SPIN_SECONDS` where
    this process may use two CPUs at once or more, else 0 (on one CPU the
    parent cannot run while the child polls, and under a container's CPU
    quota the polling would use up the parent's time).
    """
    if spin is None:
        return 0.0
    if spin == "auto":
        return SPIN_SECONDS if cpuBudget() >= 2 else 0.0
    if isinstance(spin, bool) or not isinstance(spin, int | float):
        raise TypeError(f"spin must be a number of seconds, 'auto' or None, not {spin!r}")
    if not 0 <= spin < 1:  # (NaN fails too)
        raise ValueError(f"spin must be at least 0 and under a second, not {spin!r}")
    return float(spin)


class _Board:
    """
    This process's `PollBoard`, made when a first child may poll, and which
    places on it children have.
    """

    board: PollBoard | None = None
    made = False
    used: set[int] = set()

    @classmethod
    def take(cls) -> int | None:
        """A place for a new child (None if there is no board, or no place left)."""
        if not cls.made:
            cls.made = True
            cls.board = PollBoard.create()
        board = cls.board
        if board is None or len(cls.used) >= BOARD_SLOTS:
            return None
        slot = min(set(range(len(cls.used) + 1)) - cls.used)  # (the lowest free one)
        cls.used.add(slot)
        board.clear(slot)
        board.setExtent(max(cls.used) + 1)
        return slot

    @classmethod
    def give(cls, slot: int) -> None:
        """The child at *slot* ended: it is not busy, and its place is free."""
        board = cls.board
        if board is not None and slot in cls.used:
            cls.used.discard(slot)
            board.clear(slot)
            board.setExtent(max(cls.used) + 1 if cls.used else 0)


class ChildProcess:
    """
    A `ProcessWorker`'s children seen as the original's one child process
    (``ProcessWorker.process``): alive while any of them is not yet reaped.
    """

    def __init__(self, worker: ProcessWorker) -> None:
        self._worker = worker

    @property
    def pid(self) -> int | None:
        """Process ID of the child that takes new tasks, if any."""
        return self._worker.pid

    def is_alive(self) -> bool:  # (the name of multiprocessing.Process's method)
        return bool(self._worker.pids)

    def __repr__(self) -> str:
        return f"<ChildProcess pid={self.pid} alive={self.is_alive()}>"


@implementer(IWorker)
class ProcessWorker(PipelineWindow):
    """
    A worker that runs tasks in a child interpreter of its own.

    Callables and arguments are pickled (cloudpickle for lambdas, closures
    and ``__main__`` functions); so are results. An iterator result stays in
    the child and is streamed back in batches as a `Deferator` (unless
    ``raw``, when the iterator itself is pickled back).

    Args:
        series: series this worker is qualified for, besides
            ``cQualified = ['process', 'local']``.
        raw: return iterator results as-is (they must then pickle).
        callStats: record ``(round trip, time in child)`` of every call,
            for `stats`.
        maxTasks: replace the child after it has run this many tasks.
        maxRSS: replace the child once its resident memory exceeds this
            many bytes (an int) or a size like ``"500M"`` or ``"2G"``.
        maxWindow: most tasks queued in the child at once.
        spin: seconds an idle child polls for its next call before it
            blocks; 0 or None: never. Spares a steady caller two wake-ups
            per round trip on a machine with idle cores, for at most that
            much CPU per wait; the child backs off while polls come to
            nothing (`asynqueue._process._child`, *Waiting*). The default,
            ``"auto"``, is `SPIN_SECONDS` (100 µs) where this process may
            use two CPUs at once or more (`cpuBudget`: cores, and a
            container's CPU quota), else 0. Whatever the setting, a child
            polls only while no more of this process's children are in play
            than its CPUs less one (`asynqueue._process._arena.PollBoard`).
        reactor: the reactor (the global one by default).

    The child starts at once, in the background; calls made meanwhile wait
    in its socket.
    """

    cQualified = ["process", "local"]
    reportsStart = True
    # Items sent with an iterator result, and asked for per later batch.
    firstBatchItems = FIRST_BATCH
    batchItems = BATCH_ITEMS

    def __init__(
        self,
        series: list[Hashable] | tuple[Hashable, ...] = (),
        raw: bool = False,
        callStats: bool = False,
        *,
        maxTasks: int | None = None,
        maxRSS: int | float | str | None = None,
        maxWindow: int = PROCESS_MAX_WINDOW,
        spin: float | str | None = "auto",
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if maxTasks is not None and maxTasks < 1:
            raise ValueError(f"maxTasks must be at least 1, not {maxTasks!r}")
        self.spin = _spinSeconds(spin)
        self.iQualified = list(series)
        self.raw = raw
        self.callStats = callStats
        self.maxTasks = maxTasks
        self.maxRSS = parseSize(maxRSS)
        self.maxWindow = max(1, maxWindow)
        self._reactor = reactor
        self._taskIDs = itertools.count(1)
        self._children: list[_Child] = []
        self._current: _Child | None = None
        self._updates: list[tuple[list[Any], int]] = []
        self._readyWaiters: deque[Deferred[None]] = deque()
        self._exitWaiters: list[Deferred[None]] = []
        self._avgRun: float | None = None
        # Seconds per call of the groups run (None: none yet; see groupLimit).
        self._avgCall: float | None = None
        self._sentGroup = False  # (the last task sent was a group: see _hasRoom)
        self._callTimes: list[tuple[float, float]] = []
        self._resignator: Callable[[], Any] | None = None
        self._stopping = False
        self._stopD: Deferred[None] | None = None
        self._broken: str | None = None
        self._fruitless = 0
        # While a dead or killed child's tasks are handed back (each report
        # may let the queue dispatch at once), I do not run in order: a later
        # task of a series must not go to the new child before the earlier
        # ones are back in the queue.
        self._handingBack = 0
        self._trigger: Any = None
        self._current = self._spawn()

    def __repr__(self) -> str:
        return f"<ProcessWorker pids={self.pids}>"

    @property
    def runsInOrder(self) -> bool:
        """
        True while a task I take now goes to the child that holds all my
        unfinished tasks (it runs them one at a time, in order): not while
        a retiring child still works, nor when the next task starts a new one.
        """
        current = self._current
        if self._handingBack or current is None or current.state not in _TAKES_TASKS:
            return False
        if self.maxTasks is not None and current.sent >= self.maxTasks:
            return False
        children = self._children
        if len(children) == 1 and children[0] is current:
            return True  # (the usual case, asked once per task of a series)
        return all(c is current or not (c.inflight or c.firstBatch) for c in children)

    # ------------------------------------------------------------ IWorker

    def setResignator(self, callableObject: Callable[[], Any]) -> None:
        self._resignator = callableObject

    def run(self, task: Task) -> Deferred[None] | None:
        """
        Send *task* to the child. Returns None while I can take another at
        once (no Deferred made per call), else a Deferred that fires when I can.
        """
        if self._stopping or self._broken is not None:
            return self._refuse(task, self._broken or "the process worker is stopping")
        f, args, kw = task.callTuple
        relay = None
        flags = 0
        if type(f) is PickledCall:
            # A call relayed by a worker server: its pickle goes as it came,
            # with the server's flags, and its result goes back pickled.
            if f.cancelled:
                task.callback((Status.ERROR, Failure(CancelledError(f"{f.name} was given up on"))))
                return None
            parts, relay = f.parts, f
        else:
            named = dumpsCallByName(f, args, kw)
            if named is not None:
                parts, flags = [named], FLAG_BYNAME
            else:
                try:
                    parts = dumpsCall(f, args, kw)
                except Exception:
                    task.callback((Status.ERROR, Failure()))
                    return None
        raw = self.raw if task.raw is None else task.raw
        if raw:
            flags |= FLAG_RAW
        if relay is not None:
            flags |= relay.wireFlags
        if task.timeout is not None:
            flags |= FLAG_STARTED  # (its start and end reported promptly: see `_child`)
        child = self._current
        if child is None or child.state not in _TAKES_TASKS or self.maxTasks is not None:
            child = self._childForTask()  # (else the current child, as it would say)
        if child is None:
            return self._refuse(task, self._broken or "the process worker has no child process")
        if task.update == "persistent":
            # Replayed to every later child (not to this one: it has it now).
            self._updates.append((parts, flags))
        if child.inbox is not None and (
            len(parts) > 1 or type(parts[0]) is not bytes or len(parts[0]) >= ARENA_MIN
        ):
            parts, flags = _placeInInbox(child.inbox, parts, flags)
        child.submit(task, parts, flags, relay)
        self._sentGroup = f is runCalls
        if not self._sentGroup or len(child.inflight) < GROUP_WINDOW:
            # (Else enough groups are in flight: wait for one to end.)
            if child is self._current and not child.firstBatch:
                # What `_hasRoom` would say, in fewer calls: the window computed
                # last, unless a result has moved the average since.
                key = self._windowKey
                window = (
                    self._windowSize
                    if key is not None and key[0] is self._avgRun
                    else self._window()
                )
                if len(child.inflight) < window:
                    return None
            if self._hasRoom():
                return None
        d: Deferred[None] = Deferred()
        self._readyWaiters.append(d)
        return d

    # ------------------------------------------------------------ groups

    # The runner of a group task: plain calls of a backlog as one task, each
    # with its own outcome (see `asynqueue._core._dispatch`, *Groups*).
    groupRunner = staticmethod(runCalls)

    def groupLimit(self) -> int:
        """
        How many plain calls of a backlog I take as one task now
        (`groupSizeFor` the calls run so far; 1, no group, with
        ``callStats`` or ``maxTasks``).
        """
        if self.callStats or self.maxTasks is not None:
            # (callStats: the times of each call; maxTasks counts calls.)
            return 1
        return groupSizeFor(self._avgCall if self._avgCall is not None else self._avgRun)

    def groupOutcome(self, outcome: Any) -> tuple[Status, Any]:
        """``(status, result)`` of one call of a group, from its outcome (`runCalls`)."""
        status, parts = outcome
        return statusResult(status, parts, errors.ProcessError)

    def stopGroup(self, task: Task) -> None:
        """
        A call of group task *task* was cancelled: the group stops after the
        call it runs, or comes back unrun, and its calls not run go back to
        the queue (the cancelled one does not run).
        """
        for child in self._children:
            taskID = child.attemptOf(task)
            if taskID is not None:
                child.stopBatch(taskID)
                return

    def _hasRoom(self) -> bool:
        """As any pipelining worker's, but at most `GROUP_WINDOW` tasks while groups come."""
        if self._sentGroup:
            child = self._current
            if child is not None and len(child.inflight) >= GROUP_WINDOW:
                return False
        return PipelineWindow._hasRoom(self)

    def groupRan(self, calls: int, seconds: float) -> None:
        """A group ran *calls* calls in *seconds* (in its child)."""
        if calls:
            self._avgCall = smoothed(self._avgCall, seconds / calls)

    def _refuse(self, task: Task, why: str) -> Deferred[None]:
        """
        Hand *task* back unrun (innocent, `Status.NOT_RUN`). The Deferred
        returned never fires: a worker that cannot run tasks must not look
        ready for more, or a queue would hand the same task back and forth
        forever.
        """
        task.innocent = True
        task.callback((Status.NOT_RUN, why))
        return Deferred()

    def timedOut(self, task: Task) -> None:
        """The queue gave up on *task*: kill its child and start another."""
        for child in self._children:
            if any(a.task is task for a in child.inflight.values()) or any(
                a.task is task for a, _ in child.firstBatch.values()
            ):
                self._kill(child, f"a task timed out in child process {child.pid}", task)
                return

    def cancelled(self, task: Task) -> None:
        """The caller cancelled *task*: withdraw it from its child, or stop it there."""
        for child in self._children:
            taskID = child.attemptOf(task)
            if taskID is not None:
                child.withdraw(taskID)
                self._checkReady()
                return

    def stop(self) -> Deferred[None]:
        """
        Finish the tasks in hand, close iterators, let the children exit.
        Fires once every child process has been reaped.
        """
        if self._stopD is None:
            self._stopping = True
            self._stopD = Deferred()
            self._current = None
            self._checkStop()
            self._checkReady()
        d: Deferred[None] = Deferred()
        self._stopD.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def handBack(self) -> None:
        """
        Hand back, unrun, the tasks waiting in my children behind a running
        one: the queue asks when that one takes long and another worker
        could run them (see `IWorker`). The children answer: each task not
        started comes back as not run (innocent), and the queue gives it to
        the first worker free; one that started meanwhile runs here. Tasks
        of a series stay, to run in order (the answer is not at once: a
        series' next task could reach the child before it). A running batch
        (`asynqueue._support._batch`) stops after its current call, and its
        owner gets back the calls it did not start.
        """
        for child in list(self._children):
            child.handBack()

    def crash(self) -> list[Task]:
        """Kill every child now; returns the tasks not finished."""
        self._stopping = True
        self._current = None
        unfinished: list[Task] = []
        for child in list(self._children):
            unfinished.extend(a.task for a in child.abandon() if a.task is not None)
            child.failIterators("the process worker crashed")
            child.terminate(0)
        self._checkReady()
        self._checkStop()
        return unfinished

    # ------------------------------------------------------------ public extras

    @property
    def pids(self) -> list[int]:
        """Process IDs of the children not yet reaped."""
        return [c.pid for c in self._children if c.pid is not None]

    @property
    def pid(self) -> int | None:
        """Process ID of the child that takes new tasks, if any."""
        child = self._current
        return None if child is None else child.pid

    def waitForExit(self) -> Deferred[None]:
        """Fires once no child process of mine is left (all reaped)."""
        if not self._children:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._exitWaiters.append(d)
        return d

    def stats(self) -> Deferred[list[tuple[float, float]]]:
        """``(round trip, time in child)`` of each call so far (needs ``callStats``)."""
        return succeed(list(self._callTimes))

    @property
    def process(self) -> ChildProcess:
        """
        The original's ``process`` (its child, a ``multiprocessing.Process``),
        as far as code used it: ``is_alive()`` and ``pid``.
        """
        return ChildProcess(self)

    def memUsage(self) -> int | None:
        """
        The current child's virtual memory size in KiB (``VmSize``, as the
        original gave it), or None if there is no child, or no /proc to ask.
        """
        pid = self.pid
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmSize:"):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return None

    @staticmethod
    def cores() -> int:
        return cores()

    # ------------------------------------------------------------ children

    def _config(self) -> dict[str, Any]:
        return {
            "path": list(sys.path),
            "maxRSS": self.maxRSS,
            "firstBatch": self.firstBatchItems,
            "batchSeconds": BATCH_SECONDS,
            "spin": self.spin,
            # Children that may be busy while one polls: one CPU is left to me.
            "pollers": max(1, int(cpuBudget()) - 1),
        }

    def _spawn(self) -> _Child | None:
        child = _Child(self)
        try:
            child.spawn(self._config())
        except Exception as e:
            log.error("Could not start a worker process: %s", e)
            self._giveUp(f"could not start a child process: {e}")
            return None
        self._children.append(child)
        if self._trigger is None:
            self._trigger = self._reactor.addSystemEventTrigger(
                "before", "shutdown", self._reactorShutdown
            )
        for parts, flags in self._updates:
            child.submit(None, parts, flags)
        return child

    def _childForTask(self) -> _Child | None:
        child = self._current
        if child is None or not child.takesTasks:
            child = self._current = None if self._broken else self._spawn()
        if child is not None and self.maxTasks is not None and child.sent >= self.maxTasks:
            self._retire(child, "it ran maxTasks tasks")
            child = self._current
        return child

    def _retire(self, child: _Child, why: str) -> None:
        """Give *child* no new tasks; it exits when done. A new one takes over."""
        if not child.takesTasks:
            return
        log.debug("Replacing %r: %s", child, why)
        child.retire()
        if child is self._current:
            self._current = None if self._stopping or self._broken else self._spawn()
        child.maybeExit()

    def _kill(self, child: _Child, why: str, culprit: Task | None) -> None:
        """Kill *child*; its tasks other than *culprit* are innocent."""
        self._handingBack += 1
        try:
            self._killAndReport(child, why, culprit)
        finally:
            self._handingBack -= 1
        self._checkReady()
        self._checkStop()

    def _killAndReport(self, child: _Child, why: str, culprit: Task | None) -> None:
        attempts = child.abandon()
        child.failIterators(f"the worker's {why}")
        child.terminate()
        if child is self._current:
            self._current = None if self._stopping or self._broken else self._spawn()
        for attempt in attempts:
            task = attempt.task
            if task is not None and task is not culprit:
                task.innocent = True
                task.callback((Status.NOT_RUN, why))

    def _childEnded(self, child: _Child, text: str) -> None:
        """*child* was reaped (processEnded)."""
        if child in self._children:
            self._children.remove(child)
        if not child.expected:
            self._childDied(child, text)
        self._checkReady()
        self._checkStop()
        if not self._children:
            waiters, self._exitWaiters = self._exitWaiters, []
            for d in waiters:
                d.callback(None)
            if self._stopping:
                self._removeTrigger()

    def _childDied(self, child: _Child, text: str) -> None:
        """*child* died on its own: report its tasks, replace it."""
        self._handingBack += 1
        try:
            self._reportDeath(child, text)
        finally:
            self._handingBack -= 1

    def _reportDeath(self, child: _Child, text: str) -> None:
        attempts = child.abandon()
        iterating = bool(child.itemWaiters)
        child.failIterators(f"the worker's {text}")
        # Calls it had done, their results held back (see `_child`,
        # *Results*) and left in the arena: reported as if it had sent them.
        held = {}
        members: dict[Task, list[Any]] = {}  # (outcomes of calls of group tasks)
        byID = {a.taskID: a for a in attempts}
        for taskID, status, dt, parts in child.heldResults:
            if status in STATUS_OF_MEMBER:
                attempt = byID.get(taskID)
                if attempt is not None and attempt.task is not None:
                    outcome = (STATUS_OF_MEMBER[status], parts)
                    members.setdefault(attempt.task, []).append(outcome)
            else:
                held[taskID] = (status, dt, parts)
        for task, outcomes in members.items():
            settleMembers(task, outcomes)  # (before their groups are reported)
        done = [a for a in attempts if a.taskID in held]
        if done:
            attempts = [a for a in attempts if a.taskID not in held]
        head = None
        if attempts and child.helloed:
            # The call it was running: the one it started last, if still in
            # hand, else the oldest.
            running = child.lastStarted
            head = next((a for a in attempts if a.taskID == running), attempts[0])
        if (head is None or head.task is None) and not iterating and not done:
            self._fruitless += 1
        if self._fruitless >= MAX_FRUITLESS and self._broken is None:
            self._giveUp(f"{MAX_FRUITLESS} child processes in a row died before running a task")
        if child is self._current:
            self._current = None if self._stopping or self._broken else self._spawn()
        log.warning("Process worker: %s", text)
        now = self._reactor.seconds()
        for attempt in done:
            status, dt, parts = held[attempt.taskID]
            task = attempt.task
            if task is None:
                continue  # (a replayed update: the next child replays it anyway)
            self._noteRuns([(dt, attempt.sentAt)], now)
            task.callback(statusResult(status, parts, child.errorType, attempt.relay is not None))
        for attempt in attempts:
            task = attempt.task
            if task is None:
                continue
            if attempt is not head:
                task.innocent = True
            task.callback((Status.NOT_RUN, text))

    def _giveUp(self, why: str) -> None:
        if self._broken is not None:
            return
        self._broken = why
        log.error("Process worker %r gives up: %s", self, why)
        if self._resignator is not None:
            self._reactor.callLater(0, self._resignator)

    def _noteRuns(self, runs: list[tuple[float, float]], now: float) -> None:
        """The calls of one read ran: ``(seconds in the child, sent at)`` each."""
        self._fruitless = 0
        self._avgRun = smoothedOver(self._avgRun, runs)
        if self.callStats:
            self._callTimes.extend((now - sentAt, dt) for dt, sentAt in runs)

    def _activeClient(self) -> _Child | None:
        return self._current

    def _checkStop(self) -> None:
        if not self._stopping:
            return
        for child in list(self._children):
            if child.takesTasks:
                child.retire()
            child.maybeExit()
        if not self._children and self._stopD is not None and not self._stopD.called:
            self._removeTrigger()
            self._stopD.callback(None)

    def _removeTrigger(self) -> None:
        self._trigger = dropTrigger(self._reactor, self._trigger)

    def _reactorShutdown(self) -> Deferred[None]:
        """The reactor is stopping: kill the children and wait (briefly) for them."""
        self._trigger = None
        if not self._stopping and self._resignator is not None:
            # The queue detaches (and crashes) me, and keeps my tasks.
            self._resignator()
        if not self._stopping:
            self.crash()
        d = self.waitForExit()
        d.addTimeout(KILL_GRACE * 2, self._reactor)
        d.addErrback(lambda _: None)
        return d


class ProcessQueue(TaskQueue):
    """
    A `TaskQueue` with *N* `ProcessWorker` workers (one per core by default).

    Args:
        N: how many workers (child processes); None for `cores()`.
        callStats: have the workers record call statistics (see `stats`).
        raw, maxTasks, maxRSS, spin: passed to each `ProcessWorker`.
        **kw: `TaskQueue` keywords (``timeout``, ``returnFailure``, ...).
    """

    def __init__(
        self,
        N: int | None = None,
        callStats: bool = False,
        *,
        raw: bool = False,
        maxTasks: int | None = None,
        maxRSS: int | float | str | None = None,
        spin: float | str | None = "auto",
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if N is None:
            N = cores()
        if N < 1:
            raise ValueError(f"a ProcessQueue needs at least one worker, not {N!r}")
        reactor = self._reactor if hasattr(self._reactor, "spawnProcess") else None
        for _ in range(N):
            self.attachWorker(
                ProcessWorker(
                    raw=raw,
                    callStats=callStats,
                    maxTasks=maxTasks,
                    maxRSS=maxRSS,
                    spin=spin,
                    reactor=reactor,
                )
            )

    @staticmethod
    def cores() -> int:
        """How many CPU cores this process may use."""
        return cores()

    def _processWorkers(self) -> list[ProcessWorker]:
        return [w for w in self.workers() if isinstance(w, ProcessWorker)]

    def stats(self) -> Deferred[list[tuple[float, float]]]:  # type: ignore[override]
        """
        Call statistics of all process workers (as the original): a Deferred
        list of ``(round trip, time in child)`` seconds, one per call, for
        queues made with ``callStats=True``.
        """
        ds = [w.stats() for w in self._processWorkers()]
        return DeferredList(ds, consumeErrors=True).addCallback(
            lambda results: [item for ok, value in results if ok for item in value]
        )

    def crashWorkers(self) -> Deferred[list[list[Task]]]:
        """Detach every process worker, crashing it; fires with their unfinished tasks."""
        ds = [self.detachWorker(w, crash=True) for w in self._processWorkers()]
        return DeferredList(ds, consumeErrors=True).addCallback(
            lambda results: [value if ok else [] for ok, value in results]
        )
