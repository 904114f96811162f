"""
The child side of a process worker: a lean interpreter that runs calls.

`asynqueue._process._parent` starts it as ``python -c BOOTSTRAP <package dir> <fd>
<parent pid> code``. BOOTSTRAP loads this module and the lean wire modules
(`LEAN_MODULES`) under their package names, without running
``asynqueue/__init__.py``: compiled by the parent, which writes them to the
socket before anything else (`leanCode`), or from their files without
``code``. So the child imports the standard library and, only when a
pickle needs it, cloudpickle: never Twisted.

Loop
====

The child reads frames from the socket on file descriptor *fd* (blocking),
and:

- INIT: takes the parent's ``sys.path`` and limits, maps the shared-memory
  arenas it passed (`asynqueue._process._arena`); answers HELLO, saying whether
  its inbox can be used.
- CALLS: queues the calls; runs them one at a time, first in first out, and
  answers with RESULTS messages (see *Results* below). A call flagged
  ``FLAG_BYNAME`` names its function (looked up in its module for each
  call) and pickles only its arguments; one flagged
  ``FLAG_INBOX`` has its large parts in the inbox; one flagged
  ``FLAG_SHARED_RESULT`` has the large parts of its result copied into the
  arena when it is free, the RESULTS message saying where, and PLACED
  messages how far the copy got.
- NEXT: answers with the next batch of an iterator result (ITEMS), before
  the next queued call. CLOSE forgets iterators.
- ABANDON (a cancelled call): a queued call is dropped unrun, and answered
  with status ``n``. The parent follows it with SIGUSR1: if the call is the
  one running, the signal handler reads the ABANDON and raises
  `CallCancelled` inside it (a BaseException, so that ``except Exception``
  in user code lets it through); its answer is an error, which the parent
  ignores. The parent waits for an answer, and kills the child if none comes.
- HANDBACK (calls waiting behind one that runs long): those still queued
  are dropped unrun, and answered with status ``d`` (the parent gives them
  to another worker); one running or done is left alone (its result comes
  as usual). The parent follows it with SIGUSR1, so that a child inside a
  long call reads it (the handler drops and answers, and the call goes on).
  If it names the running task, and that task runs a batch of calls
  (`asynqueue._support._batch`), the batch ends after its current call and
  a REST message says where the calls it will not run begin. (A batch may
  also end itself so, its last call's outcome then being its own result:
  REST says that too.)
- EXIT, or end of file on the socket (the parent is gone): exits.

Results
=======

A result goes out at once when nothing else is queued (a lone call waits
for no one), and so does one flagged ``FLAG_STARTED`` (the parent times it:
the results before it go out before it starts, its own as soon as it is
done, so a timeout counts from its real start). Otherwise the results of
short calls are *held* while calls are queued behind them, and go out
together in one RESULTS message: a write per batch instead of one per
call, and one message for the parent to read. A batch goes out when it
holds as many results as calls remain queued (half the window: the parent
refills the child long before it runs dry), before the child waits to
read, before a call once the oldest held result is `HOLD_SECONDS` old, and
with any other message. A call that runs long does not keep them: a timer
(SIGALRM, armed once per batch) sends them from inside the call after
`HOLD_SECONDS`. Code that installs its own SIGALRM handler gets every
result at once, as before: the child holds none while the handler is not
its own. (A handler runs between Python instructions: a call stuck in C
code that keeps the GIL keeps the held results until it returns. A timed
call holds none, so its timeout still counts from its start.) The child
notes in its arena which call it started last, and the results it holds:
if it dies, the parent blames that call, and the calls before it get
their results as if they had been sent (`Arena.holdResult`; a result that
does not fit in the arena's first page goes out at once, with those held).

Waiting
=======

With nothing queued, the child waits for the parent's next call. On a
machine with idle cores, a process blocked in a read gets its core back
only after the kernel wakes that core from its idle state: 20-25 µs per
hop on our 2-core VM, twice per round trip. So the child first polls its
socket for up to ``spin`` seconds (`SPIN_SECONDS` by default, the
parent's to choose in INIT; 0: never) and blocks only after. Polling
children must leave the parent a CPU to answer them: the children of one
parent mark on a shared `PollBoard` whether they are busy (running calls
or polling), and a child polls only while at most ``pollers`` of them are,
itself included (the parent's CPUs less one); it stops polling as soon
as more are. Polling pays only while no more children than that are in
play: in rounds of calls at once, one per child, a polling child takes the
CPU that the others, woken by the round's next calls, need. So each child
also stamps on the board when it last took calls in, and a child does not
poll while ``pollers`` others did within `IN_PLAY_SECONDS`. (Without a
board, where there is no ``memfd``, the child does not poll.) A poll that
outlasts its time costs that much CPU for nothing, so it backs off: after
a miss the child blocks at once for the next wait, after a second miss in
a row for the next two, and so on up to `MAX_SPIN_SKIP` waits; a hit, or
a blocking wait shorter than ``spin``, starts over. A steady caller
awaiting each result gets its next call taken at once; a child whose
calls come now and then polls after fewer and fewer of them, down to one
in `MAX_SPIN_SKIP`.

On Linux the child also asks the kernel to kill it if its parent dies
(``PR_SET_PDEATHSIG``), in case it is busy in a long call when that happens.
SIGINT is ignored: a Ctrl-C in a terminal is the parent's business.

This module also defines `ProcessBase`, which objects sent to process
workers may inherit, so it must stay importable without Twisted.
"""

from __future__ import annotations

import _signal
import os
import pickle
import select
import sys
from collections import deque
from itertools import count
from time import monotonic_ns, perf_counter

from .._support._batch import BatchRun, stopRunningBatch
from .._support._batch import onOutcome as outcomeHooks
from .._support._batch import onOwnEnd as ownEnds
from .._support._batch import onStart as batchStarts
from .._wire._codec import (
    ABANDON,
    CALLS,
    CLOSE,
    EXIT,
    FLAG_BYNAME,
    FLAG_INBOX,
    FLAG_RAW,
    FLAG_SHARED_RESULT,
    FLAG_STARTED,
    HANDBACK,
    HELLO,
    INIT,
    MEMBER_STATUS,
    NEXT,
    PLACED,
    PLAIN_TYPES,
    PROTOCOL,
    REST,
    RESULTS,
    WIRE_ERROR,
    WIRE_ITERATOR,
    WIRE_NONE,
    WIRE_NOT_RUN,
    WIRE_RESULT,
    dumps,
    dumpsError,
    dumpsSmall,
    loadsCallByName,
    resultPicklingError,
)
from .._wire._framing import MAX_IOVECS, FrameDecoder, Message, SendQueue, encode, nbytes
from .._wire._streams import IteratorTable, encodeItems, isIterator
from ._arena import Arena, PollBoard

TYPE_CHECKING = False
if TYPE_CHECKING:  # the child must not pay for importing typing
    from typing import Any, ClassVar

__all__ = ["BOOTSTRAP", "LEAN_MODULES", "CallCancelled", "ProcessBase", "leanCode", "main"]

# The keywords of a call sent by name (it has none; ``**`` copies it anyway).
_NO_KEYWORDS: dict[str, Any] = {}

# Modules the child loads by path, in this order: (name, path relative to
# the package directory). Each may import only the standard library and the
# modules before it.
LEAN_MODULES = (
    ("asynqueue._wire._framing", "_wire/_framing.py"),
    ("asynqueue._process._arena", "_process/_arena.py"),
    ("asynqueue._support._status", "_support/_status.py"),
    ("asynqueue._support._batch", "_support/_batch.py"),
    ("asynqueue._wire._codec", "_wire/_codec.py"),
    ("asynqueue._wire._streams", "_wire/_streams.py"),
    ("asynqueue._wire._group", "_wire/_group.py"),
    ("asynqueue._process._child", "_process/_child.py"),
)

BOOTSTRAP = f"""\
import _signal, sys
_signal.signal(_signal.SIGUSR1, _signal.SIG_IGN)
from importlib.machinery import ModuleSpec, SourceFileLoader
def load(name, path, code):
    loader = SourceFileLoader(name, path)
    spec = ModuleSpec(name, loader, origin=path)
    spec.has_location = True
    module = type(sys)(name)
    module.__spec__, module.__loader__, module.__file__ = spec, loader, path
    module.__package__ = name.rpartition(".")[0]
    sys.modules[name] = module
    if code is None:
        loader.exec_module(module)
    else:
        exec(code, module.__dict__)
    return module
codes = {{}}
if sys.argv[4:5] == ["code"]:
    import marshal, os
    def read(n):
        data = b""
        while len(data) < n:
            chunk = os.read(int(sys.argv[2]), n - len(data))
            if not chunk:
                sys.exit(0)
            data += chunk
        return data
    codes = marshal.loads(read(int.from_bytes(read(8), "big")))
for name, path in {LEAN_MODULES!r}:
    module = load(name, sys.argv[1] + "/" + path, codes.get(name))
sys.exit(module.main(sys.argv[2:]))
"""

_leanCode: dict[str, bytes] = {}


def leanCode(packageDir: str) -> bytes:
    """
    The `LEAN_MODULES` of *packageDir*, compiled, for a child to read first
    (length-prefixed ``marshal`` of ``{name: code}``): with ``code`` after
    its other arguments, BOOTSTRAP reads them from its socket instead of
    compiling them itself. Where bytecode is not cached (read-only
    installs, ``PYTHONDONTWRITEBYTECODE``) that saves each child about a
    third of its start. Compiled once per process.
    """
    blob = _leanCode.get(packageDir)
    if blob is None:
        import marshal

        codes = {}
        for name, path in LEAN_MODULES:
            full = f"{packageDir}/{path}"
            with open(full, "rb") as f:
                codes[name] = compile(f.read(), full, "exec", dont_inherit=True, optimize=0)
        data = marshal.dumps(codes)
        blob = _leanCode[packageDir] = len(data).to_bytes(8, "big") + data
    return blob


# Defaults the parent may override in INIT.
FIRST_BATCH = 256  # items sent with an iterator result
BATCH_SECONDS = 0.01  # stop filling a batch after this long
# Results of short calls wait at most about this long for others (see *Results*).
HOLD_SECONDS = 0.001
# How long an idle child polls for the next call before it blocks (*Waiting*).
SPIN_SECONDS = 0.0001
# The longest run of waits without polling after polls that came to nothing.
MAX_SPIN_SKIP = 1024
# A child that took calls in this recently is in play (see *Waiting*).
IN_PLAY_SECONDS = 0.01
IN_PLAY_NS = int(IN_PLAY_SECONDS * 1e9)


class ProcessBase:
    """
    Mix-in for objects sent to process workers: per-process private data.

    ``data`` is a dict private to this object *in the current process*:
    every copy of the object that reaches the same process (each call
    pickles it anew) sees the same dict, and no process sees another's.
    Attributes not found the normal way are looked up in ``data``. ``pid``
    is the current process ID.
    """

    _pbStore: ClassVar[dict[tuple[int, int], dict[str, Any]]] = {}

    def __new__(cls, *args: Any, **kw: Any) -> Any:
        self = super().__new__(cls)
        # Identifies the object and its copies (unpickling restores it).
        self.__dict__["_pb_key"] = int.from_bytes(os.urandom(8), "big")
        return self

    @property
    def data(self) -> dict[str, Any]:
        return self._pbStore.setdefault((os.getpid(), self.__dict__["_pb_key"]), {})

    @property
    def pid(self) -> int:
        return os.getpid()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_pb_key":
            raise AttributeError(name)
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}"
            ) from None


def _rssBytes() -> int:
    """This process's resident set size now (Linux), else its peak."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _mapArena(setting: Any) -> Arena | None:
    """The arena the parent passed as ``(fd, size)``, mapped (None if none, or if it fails)."""
    if setting is None:
        return None
    fd, size = setting
    try:
        return Arena(fd, size)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _mapBoard(setting: Any) -> tuple[PollBoard | None, int]:
    """The poll board the parent passed as ``(fd, slot)``, mapped, and my slot (None if none)."""
    if setting is None:
        return None, 0
    fd, slot = setting
    try:
        return PollBoard(fd), slot
    except (OSError, ValueError):
        return None, 0
    finally:
        os.close(fd)


def _dieWithParent(parentPid: int) -> None:
    """Linux: have the kernel SIGKILL us when the parent dies."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
        except Exception:
            pass
    if parentPid and os.getppid() != parentPid:
        os._exit(0)  # the parent died before we asked


class CallCancelled(BaseException):
    """Raised inside a running call that the parent cancelled (see ABANDON)."""


class ChildLoop:
    """Serves one parent over the socket on *fd* until EXIT or end of file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.decoder = FrameDecoder()
        self.calls: deque[tuple[int, list[Any], int]] = deque()
        self.controls: deque[Message] = deque()
        self.iterators = IteratorTable()
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.maxRSS: int | None = None
        self.firstBatch = FIRST_BATCH
        self.batchSeconds = BATCH_SECONDS
        self.exiting = False
        self.spinSeconds = SPIN_SECONDS
        self.pollers = 1  # how many children of the parent may be busy while one polls
        self.board: PollBoard | None = None
        self.slot = 0  # my place on the board
        self.spinSkip = 0  # waits left to block in without polling first
        self.spinMisses = 0  # polls in a row that came to nothing (then, the skip doubled)
        self.ids = count(1)
        self.arena: Arena | None = None
        self.inbox: Arena | None = None
        self.drained = False  # the last read emptied the socket
        self.current: int | None = None  # the task ID of the call in user code
        self.cancelCurrent = False  # an ABANDON came for it
        # The running call whose batch is to stop as it begins (see `_batchStarted`).
        self.stopPending: int | None = None
        self.interrupting = False  # in a signal handler of mine
        self.missedSignal = False  # one came while `interrupting` (see _holdOutcomes)
        # Results held for one RESULTS message: envelope entries, their parts.
        self.held: list[tuple[int, str, int, float, Any]] = []
        self.heldParts: list[Any] = []
        self.heldSince = 0.0
        self.alarmSet = False
        # The SIGALRM handler that sends held results, once installed (`main`).
        self.alarmHandler: Any = None
        # The arena's started-call slot: the parent reads it if I die, to
        # know which call was running (the held results' calls were done).
        self.startedSlot: Any = None

    # ---------------------------------------------------------- I/O

    def _read(self) -> bool:
        """Read once (blocking) and dispatch messages; False at end of file."""
        buf = self.decoder.getBuffer()
        want = len(buf)
        try:
            n = os.readv(self.fd, [buf])
        except OSError:
            return False
        del buf  # (it may be a view of a bytes object being read into)
        if not n:
            return False
        # A short read took all there was: no need to ask (poll) before the next call.
        self.drained = n < want
        for message in self.decoder.bufferUpdated(n):
            self._dispatch(message)
        return True

    def _waitAndRead(self) -> bool:
        """
        Wait for input, polling for a while first if lately that paid and no
        more children are in play than leaves the parent a CPU (see
        *Waiting*), then read it; False at end of file.
        """
        board = self.board
        seconds = self.spinSeconds
        if board is None or not seconds:
            return self._read()
        if self.spinSkip:
            self.spinSkip -= 1
            return self._blockAndRead(board, seconds, counts=True)
        pollers = self.pollers
        if (
            board.busy() > pollers
            or board.recent(self.slot, monotonic_ns() - IN_PLAY_NS) >= pollers
        ):
            return self._blockAndRead(board, seconds, counts=False)
        poll = self.poller.poll
        end = perf_counter() + seconds
        while not poll(0):
            if perf_counter() > end:
                self.spinMisses = self.spinSkip = min(2 * self.spinMisses or 1, MAX_SPIN_SKIP)
                break
            if board.busy() > pollers:
                break  # (another child got busy: leave the CPUs to them)
        else:
            self.spinMisses = 0
            board.stamp(self.slot, monotonic_ns())
            return self._read()  # (at once: not blocking)
        return self._blockAndRead(board, seconds, counts=False)

    def _blockAndRead(self, board: PollBoard, seconds: float, counts: bool) -> bool:
        """
        Block in a read, marked idle on the board meanwhile; if *counts*, a
        wait shorter than *seconds* ends the back-off (polling would have paid).
        """
        slot = self.slot
        board.mark(slot, False)
        blocked = perf_counter()
        try:
            if not self._read():
                return False
        finally:
            board.mark(slot, True)
        board.stamp(slot, monotonic_ns())
        if counts and perf_counter() - blocked < seconds:
            self.spinSkip = self.spinMisses = 0
        return True

    def _readable(self) -> bool:
        return bool(self.poller.poll(0))

    def _write(self, buffers: list[Any]) -> None:
        """
        Write encoded messages (a header first), after the held results: at
        once, or in pieces if the kernel wants.
        """
        held = bool(self.held)
        if held:
            buffers = self._heldMessage() + buffers
        n, size = 0, -1
        if len(buffers) <= MAX_IOVECS:
            n = os.writev(self.fd, buffers)
            size = 0
            for buf in buffers:
                size += len(buf) if type(buf) is bytes else nbytes(buf)
        if n != size:  # (the kernel took part of it, or there were too many buffers)
            queue = SendQueue()
            queue.append(buffers)
            queue.advance(n)
            while queue:
                queue.advance(os.writev(self.fd, queue.peek()))
        if held and self.arena is not None:
            # Only now: had I died before, the parent would have found them
            # in the arena (or read them too: it keeps the first it gets).
            self.arena.dropHeld()

    def _flushHeld(self) -> None:
        """Send the held results now, if any."""
        if self.held:
            self._write([])

    def _heldMessage(self) -> list[Any]:
        """The held results as one RESULTS message; none are held after."""
        if self.alarmSet:
            self.alarmSet = False
            _signal.setitimer(_signal.ITIMER_REAL, 0)
        entries, parts = self.held, self.heldParts
        self.held, self.heldParts = [], []
        retire = self.maxRSS is not None and self._memory() > self.maxRSS
        return encode(RESULTS, [pickle.dumps((entries, retire), PROTOCOL), *parts])

    def _mayHold(self, taskID: int, status: str, dt: float, parts: list[Any], flags: int) -> bool:
        """
        Whether the result just added to the held ones may wait for others
        (see *Results*): if so, it is noted in the arena too, and the first
        of a batch arms the timer.
        """
        if flags & FLAG_STARTED or len(self.held) >= len(self.calls):
            return False
        handler = self.alarmHandler
        if handler is None or _signal.getsignal(_signal.SIGALRM) is not handler:
            return False  # (not installed, or replaced by code in a call)
        arena = self.arena
        if arena is None or not arena.holdResult(taskID, status, dt, parts):
            return False  # (no arena, or its page of held results is full)
        if len(self.held) == 1:
            self.heldSince = perf_counter()
            self.alarmSet = True
            _signal.setitimer(_signal.ITIMER_REAL, HOLD_SECONDS)
        return True

    def onAlarm(self, signum: int, frame: Any) -> None:
        """
        SIGALRM: a call runs while results are held; send them from inside it.
        Outside a call (the loop sends them itself soon), or inside my other
        handler, try again a little later.
        """
        self.alarmSet = False
        if not self.held:
            return
        if self.current is None or self.interrupting:
            self.alarmSet = True
            _signal.setitimer(_signal.ITIMER_REAL, HOLD_SECONDS / 4)
            return
        # SIGUSR1's handler must not run in the middle of this write.
        blocked = _signal.pthread_sigmask(_signal.SIG_BLOCK, [_signal.SIGUSR1])
        self.interrupting = True
        try:
            self._flushHeld()
        except OSError:
            pass  # (the parent is gone: the loop finds out when it reads)
        finally:
            self.interrupting = False
            _signal.pthread_sigmask(_signal.SIG_SETMASK, blocked)

    # ---------------------------------------------------------- loop

    def serve(self) -> int:
        while not self.exiting:
            if self.controls:
                self._control(self.controls.popleft())
            elif self.calls:
                if not self.drained and self._readable() and not self._read():
                    return 0
                # (What was read may have dropped the calls: ABANDON, HANDBACK.)
                if not self.controls and self.calls:
                    call = self.calls.popleft()
                    if self.held and (
                        call[2] & FLAG_STARTED or perf_counter() - self.heldSince > HOLD_SECONDS
                    ):
                        self._flushHeld()
                    self._runCall(*call)
                    self.drained = False  # more may have come meanwhile
            else:
                self._flushHeld()  # (before waiting to read)
                if not self._waitAndRead():
                    return 0
        self._flushHeld()
        return 0

    def _dispatch(self, message: Message) -> None:
        kind, parts = message.kind, message.parts
        if kind == CALLS:
            envelope = pickle.loads(parts[0])
            pos = 1
            for taskID, nparts, flags in envelope:
                self.calls.append((taskID, parts[pos : pos + nparts], flags))
                pos += nparts
        elif kind == INIT:
            config = pickle.loads(parts[0])
            sys.path[:] = config["path"]
            self.maxRSS = config.get("maxRSS")
            self.firstBatch = config.get("firstBatch", FIRST_BATCH)
            self.batchSeconds = config.get("batchSeconds", BATCH_SECONDS)
            self.spinSeconds = config.get("spin", SPIN_SECONDS)
            self.pollers = config.get("pollers", 1)
            self.board, self.slot = _mapBoard(config.get("board"))
            if self.board is not None:
                self.board.mark(self.slot, True)
            self.arena = _mapArena(config.get("arena"))
            if self.arena is not None:
                self.startedSlot = self.arena.startedSlot()
            self.inbox = _mapArena(config.get("inbox"))
            hello = {"pid": os.getpid(), "inbox": self.inbox is not None}
            self._write(encode(HELLO, [dumpsSmall(hello)]))
        elif kind == ABANDON:
            self._abandon(pickle.loads(parts[0]))
        elif kind == HANDBACK:
            wanted = set(pickle.loads(parts[0]))
            current = self.current
            if current is not None and current in wanted and not self._stopBatch(current):
                # Its batch has not begun (the call is still being unpickled:
                # a module imported on first use, say): stop it as it begins
                # (`_batchStarted`).
                self.stopPending = current
            self._drop(wanted, WIRE_NOT_RUN)  # (answered ``d``: not run)
        else:
            self.controls.append(message)

    def _abandon(self, taskIDs: list[int]) -> None:
        """Drop the queued calls among *taskIDs* (answered ``n``); mark the running one."""
        wanted = set(taskIDs)
        if self.current in wanted:
            self.cancelCurrent = True
        self._drop(wanted, WIRE_NONE)

    def _stopBatch(self, taskID: int) -> bool:
        """
        (Inside the running task *taskID*) if it runs a batch, end it after
        its current call; tell the parent where the rest begins, with the
        outcomes of the calls done (REST). False if no batch runs.
        """
        stopped = stopRunningBatch()
        if stopped is None:
            return False
        start, run = stopped
        self._sendRest(taskID, start, run, own=False)
        return True

    def _holdOutcomes(self, run: BatchRun) -> None:
        """
        (`outcomeReady`) The running batch has new outcomes: each is held as
        a result of its task (status letter in upper case: a call of its
        batch, see `MEMBER_STATUS`), in the arena too where it can be, and
        sent with the other held results; else at once. A signal meanwhile
        waits until the held results are whole again.
        """
        taskID = self.current
        if taskID is None or self.interrupting:
            return  # (left in the batch's outcomes: its result carries them)
        outcomes = run.outcomes
        new = outcomes[run.sent :]
        run.sent = len(outcomes)
        self.interrupting = True  # (my handlers must not send half a record)
        try:
            arena = self.arena
            hold = (
                arena is not None
                and self.alarmHandler is not None
                and _signal.getsignal(_signal.SIGALRM) is self.alarmHandler
            )
            for status, parts in new:
                letter = MEMBER_STATUS[status]
                self.held.append((taskID, letter, len(parts), 0.0, None))
                self.heldParts.extend(parts)
                if hold and not arena.holdResult(taskID, letter, 0.0, parts):  # type: ignore[union-attr]
                    hold = False
            if not hold:
                self._write([])
            elif not self.alarmSet:
                self.heldSince = perf_counter()
                self.alarmSet = True
                _signal.setitimer(_signal.ITIMER_REAL, HOLD_SECONDS)
        finally:
            self.interrupting = False
        if self.missedSignal:
            self.missedSignal = False
            self.interrupt(_signal.SIGUSR1, None)  # (what it would have done)

    def _endedWithOwnOutcome(self, start: int, run: BatchRun) -> None:
        """(`endWithOwnOutcome`) The running batch ends itself after call ``start - 1``."""
        if self.current is not None:
            self._sendRest(self.current, start, run, own=True)

    def _sendRest(self, taskID: int, start: int, run: BatchRun, own: bool) -> None:
        """REST: the calls of *taskID*'s batch from *start* on will not run here."""
        outcomes = []
        for outcome in run.unsent():
            try:
                part = pickle.dumps(outcome, PROTOCOL)
                pickle.loads(part)
            except Exception:
                break  # (it and those after it stay for the result, which reports it)
            outcomes.append(part)
        if start == run.n and not outcomes and not own:
            return  # (nothing to give back, nothing to send ahead)
        run.sent += len(outcomes)
        self._write(encode(REST, [dumpsSmall((taskID, start, own)), *outcomes]))

    def _batchStarted(self) -> None:
        """(`runningBatch`) A batch begins: stop it now if asked to already."""
        if self.stopPending is not None and self.stopPending == self.current:
            self.stopPending = None
            self._stopBatch(self.current)

    def _drop(self, wanted: set[int], status: str) -> None:
        """Drop the queued calls in *wanted*, each answered with *status*."""
        dropped = [call for call in self.calls if call[0] in wanted]
        if not dropped:
            self._flushHeld()  # (the call given up on may be among them)
            return
        for call in dropped:
            self.calls.remove(call)
            if call[2] & FLAG_INBOX and self.inbox is not None:
                # Its large arguments wait in the inbox: views made and
                # dropped at once free it (see `_arena`).
                try:
                    self.inbox.lend(call[1][1:], pickle.loads(call[1][0]))
                except Exception:
                    pass
        envelope = dumpsSmall(([(taskID, status, 0, 0.0, None) for taskID, _, _ in dropped], False))
        self._write(encode(RESULTS, [envelope]))

    def interrupt(self, signum: int, frame: Any) -> None:
        """
        SIGUSR1: the parent sent an ABANDON (a call cancelled) or a HANDBACK.
        While a call runs (or is unpickled): read what came, and raise
        `CallCancelled` in the call if it is the one given up on. Between
        calls the loop reads it itself, before the next call.
        """
        if self.current is None:
            # Between calls: the loop reads the message itself before the
            # next call, even if its last read emptied the socket (the
            # message came after it).
            self.drained = False
            return
        if self.interrupting:
            # A second signal during the first one's reads (those reads
            # suffice), or one while held results are being added to.
            self.missedSignal = True
            return
        self.interrupting = True
        try:
            while self._readable() and self._read():
                pass
        except Exception:
            pass  # never into a call that was not cancelled; the loop reads on later
        finally:
            self.interrupting = False
        if self.current is not None and self.cancelCurrent:
            self.current, self.cancelCurrent = None, False
            raise CallCancelled("the call was cancelled")

    def _control(self, message: Message) -> None:
        kind = message.kind
        if kind == NEXT:
            iterID, maxItems = pickle.loads(message.parts[0])
            self._write(self._items(iterID, maxItems))
        elif kind == CLOSE:
            for iterID in pickle.loads(message.parts[0]):
                self.iterators.close(iterID)
        elif kind == EXIT:
            self.iterators.closeAll()
            self.exiting = True

    # ---------------------------------------------------------- calls

    def _runCall(self, taskID: int, parts: list[Any], flags: int) -> None:
        t0 = perf_counter()
        slot = self.startedSlot
        if slot is not None:
            slot[0] = taskID
        payload: list[Any]
        extra: Any = None
        following: list[Any] = []
        # The call counts as running from here: unpickling it may take long
        # (a module imported on first use), and a signal meanwhile must read
        # what came, as it does inside the call (see `interrupt`).
        self.cancelCurrent = False  # (before current: the handler reads both)
        self.current = taskID
        try:
            if flags & FLAG_BYNAME:
                f, args = loadsCallByName(parts[0])
                kw = _NO_KEYWORDS
            else:
                if flags & FLAG_INBOX:
                    # Large parts are in the inbox: unpickling copies them out (or
                    # keeps views, which keep the inbox taken while they live).
                    parts = self.inbox.lend(parts[1:], pickle.loads(parts[0]))  # type: ignore[union-attr]
                f, args, kw = pickle.loads(parts[0], buffers=parts[1:])  # (`loads`, inlined)
        except BaseException as e:
            self.current = None
            status, payload = (
                WIRE_ERROR,
                dumpsError(e, "The call could not be unpickled in the child:"),
            )
        else:
            del parts
            try:
                try:
                    result = f(*args, **kw)
                finally:
                    self.current = None
            except BaseException as e:
                status, payload = WIRE_ERROR, dumpsError(e)
            else:
                if result is None:
                    status, payload = WIRE_NONE, []  # (the first case of `_classify`)
                elif type(result) in PLAIN_TYPES:
                    status, payload = WIRE_RESULT, dumps(result)  # (no iterator to check)
                else:
                    status, payload, extra, following = self._classify(f, result, flags)
        placed = None
        if status == WIRE_RESULT and flags & FLAG_SHARED_RESULT and self.arena is not None:
            placed = self.arena.reserve(payload)
        if placed is not None:
            parts, extra = placed
        else:
            parts = payload
        dt = perf_counter() - t0
        self._flushStdio()
        self.held.append((taskID, status, len(parts), dt, extra))
        self.heldParts.extend(parts)
        if placed is None and not following and self._mayHold(taskID, status, dt, parts, flags):
            return
        self._write(following)
        if placed is not None:
            # The parent sends on what is in the arena while the rest goes in.
            for filled in self.arena.fill(payload, extra):  # type: ignore[union-attr]
                self._write(encode(PLACED, [dumpsSmall(filled)]))

    def _memory(self) -> int:
        """Resident memory, not counting the arenas' pages (the parent's as much as mine)."""
        shared = sum(a.highWater for a in (self.arena, self.inbox) if a is not None)
        return _rssBytes() - shared

    def _classify(self, f: Any, result: Any, flags: int) -> tuple[str, list[Any], Any, list[Any]]:
        if result is None:
            return WIRE_NONE, [], None, []
        if not flags & FLAG_RAW and isIterator(result):
            iterID = self.iterators.add(result)
            return WIRE_ITERATOR, [], iterID, self._items(iterID, self.firstBatch)
        try:
            return WIRE_RESULT, dumps(result), None, []
        except Exception as e:
            return WIRE_ERROR, dumpsError(resultPicklingError(f, result, e)), None, []

    def _items(self, iterID: int, maxItems: int) -> list[Any]:
        """An encoded ITEMS message with the next batch of iterator *iterID*."""
        items, more, error = self.iterators.batch(iterID, maxItems, self.batchSeconds)
        message, more = encodeItems(iterID, items, more, error)
        if not more:
            self.iterators.close(iterID)
        self._flushStdio()
        return message

    @staticmethod
    def _flushStdio() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:
                pass


def main(argv: list[str]) -> int:
    """Child entry point: ``argv = [fd, parentPid]``."""
    try:
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    except Exception:
        pass
    fd = int(argv[0])
    _dieWithParent(int(argv[1]) if len(argv) > 1 else 0)
    loop = ChildLoop(fd)
    try:
        _signal.signal(_signal.SIGUSR1, loop.interrupt)
    except Exception:
        pass
    batchStarts.append(loop._batchStarted)
    ownEnds.append(loop._endedWithOwnOutcome)
    outcomeHooks.append(loop._holdOutcomes)
    try:
        handler = loop.onAlarm  # (one bound method: `_mayHold` compares it)
        _signal.signal(_signal.SIGALRM, handler)
        _signal.siginterrupt(_signal.SIGALRM, False)  # (system calls in a call go on)
        loop.alarmHandler = handler
    except Exception:
        pass
    try:
        return loop.serve()
    except BrokenPipeError:
        return 0
    finally:
        # Results held when the loop broke (an exception outside any call)
        # leave the timer armed: its SIGALRM would kill the exiting child,
        # whose exit would then read as a signal, not as its error.
        try:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
        except Exception:
            pass
