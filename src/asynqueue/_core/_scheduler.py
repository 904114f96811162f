"""
The scheduler: which queued task a worker should run next.

Pure, synchronous code with no reactor and no Twisted import, so that every
ordering rule can be tested exhaustively.

Ordering rules
==============

A task belongs to one of three classes, tried in this order:

1. **doNext** tasks, first in, first out among themselves;
2. **normal** tasks, shared fairly between *flows* (below);
3. **doLast** tasks, first in, first out among themselves, run only when no
   normal task can run on the worker asking.

A *flow* is a series: all tasks submitted with the same ``series`` value. Tasks
without a series (``series=None``) form one flow per niceness level, so plain
calls at the same niceness run first in, first out, and plain calls at
different niceness share the worker by weight just like two series do.

Within a flow, tasks are handed out strictly in submission order. Plain
calls of one flow may then run side by side; a series runs in sequence:

A series runs in sequence
-------------------------

The dispatcher *holds* a series while one of its tasks is in flight on a
worker (``hold`` / ``release``, or a ``pop`` given the worker's *holder*,
which holds the series of the task it returns), so that no other worker can
start its next task before the running one has finished. The one exception is the worker
that holds the series, if it runs its tasks one at a time in the order given
(a pipelining thread or process worker): ``pop(..., mine=...)`` lets it take
the series' next task too, to run right behind the one it holds. A retried
or doNext/doLast task of a held series waits until the series is released,
and while a retried task waits, so does the rest of its series: the retry
goes first then, on any worker. The scheduler counts each worker's tasks in
flight by series in that worker's *holder* dict (its *mine* too, for a worker
that runs its tasks in order): one call each way per task.

Holding costs little: a held series' head stays in the ready heap until it
comes to the top; only then is it put aside (*parked*) until release, and
most series are released long before. With a thousand held series a pop
still looks only at the ready ones, and at its own held ones (*mine*) only
when the best parked head could beat the best ready one.

Between flows: start-time fair queuing
--------------------------------------

Each task of niceness *n* has weight ``w = 2 ** (-n / 10)``: niceness N+10 gets
half the rate of niceness N, at every level. When a task is queued it is
stamped with a virtual start tag ``S = max(V, F_prev)`` and a finish tag
``F = S + stride``, the stride being proportional to ``1 / w`` (exact
integers, so that ties are true ties), where ``F_prev`` is the finish tag of the previous task of
the same flow and ``V`` is the scheduler's virtual time, the start tag of the
task dispatched last. The next task is the flow head with the smallest finish
tag; ties go to the task queued first.

So two backlogged flows at niceness 0 and 10 dispatch exactly A A B A A B ...,
and a flow that arrives behind a large backlog of another is stamped from the
*current* virtual time, not from the end of that backlog: it starts
interleaving at once. (The original AsynQueue stamped new series after the
highest serial ever used, so a late batch waited behind the whole backlog.)

Qualifications
--------------

Workers are qualified for some series. A task of series S may run on a worker
qualified for S; if *no* attached worker is qualified for S (S is not
*restricted*), any worker may run it. The caller tells the scheduler which
series are restricted, and each ``pop`` says which series the asking worker is
qualified for, so a task that one worker cannot run never blocks a task that
it can.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterator
from typing import Any, Final, Generic, TypeVar

__all__ = [
    "MAX_NICENESS",
    "MIN_NICENESS",
    "Entry",
    "Scheduler",
    "checkNiceness",
    "weight",
]

MIN_NICENESS: Final = -20
MAX_NICENESS: Final = 20

# Idle flows are swept once there are more than this many.
_IDLE_SWEEP: Final = 256

RETRY: Final = -1
NEXT: Final = 0
NORMAL: Final = 1
LAST: Final = 2


def checkNiceness(niceness: object) -> int:
    """Return *niceness* if it is an int in -20..20, else raise ValueError."""
    if isinstance(niceness, bool) or not isinstance(niceness, int):
        raise ValueError(f"niceness must be an int from -20 to 20, not {niceness!r}")
    if not MIN_NICENESS <= niceness <= MAX_NICENESS:
        raise ValueError(f"niceness must be from -20 to 20, not {niceness}")
    return niceness


def weight(niceness: int) -> float:
    """The scheduling weight of *niceness*: halves with every +10."""
    return 2.0 ** (-niceness / 10.0)


# Virtual time is kept in exact integers so that ties are real ties, broken by
# submission order, and niceness N+10 has exactly twice the stride of N.
_STRIDE_BASE: Final = tuple(round(2 ** (r / 10) * 2**40) for r in range(10))


def stride(niceness: int) -> int:
    """The virtual time one task of *niceness* takes: proportional to 1/weight."""
    shift, r = divmod(niceness - MIN_NICENESS, 10)
    return _STRIDE_BASE[r] << shift


# stride(n) is _STRIDES[n - MIN_NICENESS]: a lookup instead of a call per push.
_STRIDES: Final = tuple(stride(n) for n in range(MIN_NICENESS, MAX_NICENESS + 1))


class _PlainFlowKey:
    """The flow key of plain calls at one niceness: equal to no series value."""

    __slots__ = ("niceness",)

    def __init__(self, niceness: int) -> None:
        self.niceness = niceness

    def __repr__(self) -> str:
        return f"<plain calls at niceness {self.niceness}>"


# A series' flow is keyed by the series itself (no key object per push, and
# hold / release find it without building one); plain calls by these.
_PLAIN_KEYS: Final = tuple(_PlainFlowKey(n) for n in range(MIN_NICENESS, MAX_NICENESS + 1))

T = TypeVar("T")


class Entry:
    """
    A queued item's place in the scheduler. Identity-compared.

    An item that is itself an Entry (an instance of a subclass) is pushed as
    its own entry: one object fewer per queued item for the garbage collector
    to count and scan (a burst of queued calls triggers full collections).
    Other items are boxed in a `_Boxed` entry.
    """

    __slots__ = ("finish", "flow", "klass", "next", "seq", "series", "start")

    # False: its series only shares the workers fairly with other series, its
    # tasks may run side by side (a pop with a holder does not hold it).
    inSequence = True

    # Set by push / pushFront.
    series: Hashable
    flow: _Flow | None  # its flow (normal entries only)
    # RETRY, NEXT, NORMAL or LAST; None once it has left the queue.
    klass: int | None
    seq: int  # submission number: ties go to the lower
    start: int  # virtual start and finish tags (normal entries only)
    finish: int
    # The entry behind it in its flow (normal entries only): a flow is a
    # chain of its entries, not a container of its own (see _Flow).
    next: Entry | None

    @property
    def item(self) -> Any:
        return self


class _Boxed(Entry):
    """The entry of an item that is not an `Entry` itself."""

    __slots__ = ("_item",)

    def __init__(self, item: object) -> None:
        self._item = item

    @property
    def item(self) -> Any:
        return self._item

    @property
    def inSequence(self) -> bool:  # type: ignore[override]
        return getattr(self._item, "inSequence", True)

    def __repr__(self) -> str:
        return (
            f"<Entry {self.item!r} series={self.series!r} class={self.klass}"
            f" F={self.finish} seq={self.seq}>"
        )


def _retryKey(row: tuple[int, int, Entry]) -> tuple[int, int]:
    return row[0], row[1]


class _Flow:
    """
    The FIFO of one flow and the finish tag of its newest task.

    Its entries are chained through their ``next`` field, from ``head`` to
    ``tail`` (both None when it is empty): a thousand series with ten calls
    each cost no container per series (a deque takes ~760 bytes).
    """

    __slots__ = ("head", "held", "key", "lastFinish", "parked", "series", "tail")

    def __init__(self, key: Hashable, series: Hashable) -> None:
        self.key = key
        self.series = series
        self.head: Entry | None = None
        self.tail: Entry | None = None
        self.lastFinish = 0
        self.held = False  # a task of the series is in flight
        self.parked = False  # its head's row is in _heldHeads, not in _heads

    def headRow(self) -> tuple[int, int, _Flow]:
        """The heap row of its head (it has one): (finish tag, seq, the flow)."""
        head = self.head
        assert head is not None
        return head.finish, head.seq, self

    def __iter__(self) -> Iterator[Entry]:
        entry = self.head
        while entry is not None:
            yield entry
            entry = entry.next


class Scheduler(Generic[T]):
    """
    Queued items in scheduling order; see the module docstring for the rules.

    Items (of type T) are opaque. ``push`` returns an `Entry` that ``remove``
    accepts.
    """

    def __init__(self) -> None:
        self._seq = itertools.count()
        self._vtime = 0
        # Flows by key: the series, or _PLAIN_KEYS[niceness] for plain calls.
        self._flows: dict[Hashable, _Flow] = {}
        # Heads of non-empty flows whose series is unrestricted: rows
        # (F, seq, flow), in two parts: _run, in ascending order, takes every
        # row that comes after its last one; the heap _heads takes the rest.
        # The best row is the smaller of their two tops. Flows served in turn
        # (many series, or one flow of plain calls) each get their next row
        # after all the others: those go to _run, at O(1) instead of a heap
        # operation of O(log flows).
        # Stale rows (head changed, flow became restricted) are skipped lazily.
        # A held flow's row stays until it comes to the top: then, unless the
        # pop may take it (mine), it is *parked* in _heldHeads until release.
        # Most held series are released before their row comes up, so holding
        # and releasing a series costs no heap operation.
        self._heads: list[tuple[int, int, _Flow]] = []
        self._run: deque[tuple[int, int, _Flow]] = deque()
        # The rows of parked flows (held, and their head came up, or held and
        # restricted): with the rest of the held heads below the top of
        # _heads, its top bounds what a pop's *mine* could offer, so a pop
        # looks at its held series only when one of them could beat the best
        # ready head (see _mineMayWin).
        self._heldHeads: list[tuple[int, int, _Flow]] = []
        # Restricted series -> keys of its non-empty flows (one, or one per
        # niceness for series None, which is never restricted).
        self._restricted: frozenset[Hashable] = frozenset()
        self._restrictedFlows: dict[Hashable, _Flow] = {}
        self._special: dict[int, deque[Entry]] = {NEXT: deque(), LAST: deque()}
        # Retried items, ahead of everything, in the order first submitted.
        self._retry: list[tuple[int, int, Entry]] = []
        # How many items are queued (read-only outside; ``len`` says the same,
        # but the dispatcher checks it on every call, and an attribute costs
        # no Python frame).
        self.count = 0
        # Empty flows whose last finish tag is still ahead of the virtual time.
        self._idle: set[Hashable] = set()
        self._sweepAt = _IDLE_SWEEP
        # Series with a task in flight (see hold) -> its flow (None if it had
        # none; push gives it its new one): release finds it without a lookup.
        self._held: dict[Hashable, _Flow | None] = {}
        # Series -> how many of its items wait in _retry.
        self._retrySeries: dict[Hashable, int] = {}

    # ---------------------------------------------------------------- state

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    @property
    def virtualTime(self) -> int:
        return self._vtime

    def vacant(self) -> bool:
        """Nothing queued and no flow remembered: a pushed item would be popped next."""
        return not self.count and not self._flows

    def mayRun(self, series: Hashable, qualified: Collection[Hashable]) -> bool:
        """True if a worker qualified for *qualified* may run a task of *series*."""
        return series is None or series not in self._restricted or series in qualified

    def ticket(self) -> int:
        """A submission number, as `push` would give (for items that skip the queue)."""
        return next(self._seq)

    def __iter__(self) -> Iterator[T]:
        """Every queued item, in no promised order."""
        for _, _, e in self._retry:
            yield e.item
        for klass in (NEXT, LAST):
            for e in self._special[klass]:
                yield e.item
        for flow in self._flows.values():
            for e in flow:
                yield e.item

    # ---------------------------------------------------------------- input

    def push(
        self,
        item: T,
        series: Hashable = None,
        niceness: int = 0,
        doNext: bool = False,
        doLast: bool = False,
    ) -> Entry:
        """
        Queue *item*; returns its `Entry`: *item* itself if it is one (it must
        not be queued already), else a new box.
        """
        entry = item if isinstance(item, Entry) else _Boxed(item)
        entry.seq = next(self._seq)
        entry.series = series
        if doNext or doLast:
            klass = entry.klass = NEXT if doNext else LAST
            entry.flow = None
            entry.start = entry.finish = 0
            self._special[klass].append(entry)
        else:
            key = _PLAIN_KEYS[niceness - MIN_NICENESS] if series is None else series
            entry.klass = NORMAL
            flow = self._flows.get(key)
            if flow is None:
                flow = self._flows[key] = _Flow(key, series)
                if series in self._held:
                    flow.held = True
                    self._held[series] = flow
            elif self._idle:
                self._idle.discard(key)
            entry.flow = flow
            start = flow.lastFinish
            if start < self._vtime:
                start = self._vtime
            entry.start = start
            entry.finish = flow.lastFinish = start + _STRIDES[niceness - MIN_NICENESS]
            entry.next = None
            tail = flow.tail
            flow.tail = entry
            if tail is None:
                flow.head = entry
                self._index(flow)
            else:
                tail.next = entry
        self.count += 1
        return entry

    def pushFront(self, item: T, series: Hashable = None, seq: int | None = None) -> Entry:
        """
        Queue *item* ahead of everything, even doNext tasks (for retries).

        Such items come out in the order of *seq*, the sequence number of their
        first `Entry` (so re-queued tasks keep their relative places), or last
        if *seq* is None.
        """
        # Always boxed, even an Entry: its own fields keep its first place.
        mine = next(self._seq)
        entry = _Boxed(item)
        entry.series = series
        entry.flow = None
        entry.klass = RETRY
        entry.seq = mine
        entry.start = entry.finish = 0
        bisect.insort(self._retry, (mine if seq is None else seq, mine, entry), key=_retryKey)
        retrySeries = self._retrySeries
        retrySeries[series] = retrySeries.get(series, 0) + 1
        self.count += 1
        return entry

    def remove(self, entry: Entry) -> bool:
        """
        Take *entry* off the queue; False if it was no longer queued. (A
        normal entry behind its flow's head is found by walking the flow.)
        """
        klass = entry.klass
        if klass is None:
            return False
        entry.klass = None
        self.count -= 1
        if klass == NORMAL:
            flow = entry.flow
            assert flow is not None
            nxt = entry.next
            entry.next = None
            if flow.head is entry:
                flow.head = nxt
                if nxt is None:
                    flow.tail = None
                self._headChanged(flow)
            else:
                prev = flow.head
                assert prev is not None
                while prev.next is not entry:
                    prev = prev.next
                    assert prev is not None
                prev.next = nxt
                if nxt is None:
                    flow.tail = prev
            if not self.count:
                self._forgetRows()
        elif klass == RETRY:
            self._removeRetry(entry)
        else:
            self._special[klass].remove(entry)
        return True

    def _removeRetry(self, entry: Entry) -> None:
        for i, row in enumerate(self._retry):
            if row[2] is entry:
                del self._retry[i]
                retrySeries = self._retrySeries
                n = retrySeries[entry.series] - 1
                if n:
                    retrySeries[entry.series] = n
                else:
                    del retrySeries[entry.series]
                return

    def drain(self) -> list[T]:
        """Remove and return every queued item, in scheduling order."""
        out: list[T] = []
        while True:
            entry = self._best(None, (), self._held, True)
            if entry is None:
                return out
            self._take(entry)
            out.append(entry.item)

    def setRestricted(self, series: Collection[Hashable]) -> None:
        """Declare the series that at least one attached worker is qualified for."""
        restricted = frozenset(s for s in series if s is not None)
        if restricted == self._restricted:
            return
        self._restricted = restricted
        self._restrictedFlows = {}
        self._heads = []
        self._run = deque()
        self._heldHeads = []
        for flow in self._flows.values():
            flow.parked = False
            if flow.head is not None:
                self._index(flow)

    def hold(self, series: Hashable, holder: dict[Hashable, int]) -> None:
        """
        A task of *series* is in flight on the worker whose held series are
        *holder* (series -> tasks in flight, kept here; a pop's *mine*): none
        of its tasks may start elsewhere until `release` (only
        ``pop(mine=holder)`` takes its head).
        """
        n = holder.get(series)
        if n:
            holder[series] = n + 1
            return
        holder[series] = 1
        flow = self._held[series] = self._flows.get(series)
        if flow is not None:
            flow.held = True
            # Its row in _heads, if any, stays (see _heads); a restricted one
            # is parked.
            if self._restrictedFlows and self._restrictedFlows.get(series) is flow:
                del self._restrictedFlows[series]
                self._park(flow)

    def release(self, series: Hashable, holder: dict[Hashable, int]) -> None:
        """
        A task of *series* held by *holder* (see `hold`) is no longer in
        flight; with the last one, the series' head is ready again.
        """
        n = holder.pop(series, None)
        if n is None:
            return
        if n > 1:
            holder[series] = n - 1
            return
        flow = self._held.pop(series, None)
        if flow is not None:
            flow.held = False
            if flow.parked:
                flow.parked = False
                if flow.head is not None:
                    self._index(flow)

    def isHeld(self, series: Hashable) -> bool:
        """Whether *series* is held (a task of it is in flight)."""
        return series in self._held

    # ---------------------------------------------------------------- output

    def peek(
        self,
        qualified: Collection[Hashable] | None = None,
        exclude: Collection[Hashable] = (),
        mine: Collection[Hashable] = (),
    ) -> T | None:
        """The item ``pop(qualified, exclude, mine)`` would return, left queued (or None)."""
        entry = self._best(qualified, exclude, mine)
        return None if entry is None else entry.item

    def pop(
        self,
        qualified: Collection[Hashable] | None = None,
        exclude: Collection[Hashable] = (),
        mine: Collection[Hashable] = (),
        holder: dict[Hashable, int] | None = None,
    ) -> T | None:
        """
        Remove and return the best item for a worker qualified for the series
        in *qualified* (None: a worker that may run anything), skipping the
        series in *exclude*; None if there is none. *mine*: held series whose
        next task this worker may take (it holds their running task and runs
        its tasks in order). *holder*: hold the item's series for it, as
        ``hold(series, holder)`` would (unless the item's series is None or
        its entry's ``inSequence`` is False), at less cost.
        """
        heads = self._heads
        if (self._run or heads) and not (
            self._retry or self._special[NEXT] or exclude or self._restrictedFlows
        ):
            head = self._usualHead(mine)
            if head is not None:
                self._takeHead(head, holder)
                # (head.item, without a property call for an item that is its own entry)
                return head._item if head.__class__ is _Boxed else head  # type: ignore[return-value]
        entry = self._best(qualified, exclude, mine)
        if entry is None:
            return None
        self._take(entry)
        if holder is not None and entry.series is not None and entry.inSequence:
            self.hold(entry.series, holder)
        return entry.item

    def popIf(
        self,
        accept: Callable[[T], bool],
        mine: Collection[Hashable] = (),
        holder: dict[Hashable, int] | None = None,
    ) -> T | None:
        """
        The item that ``pop(None, (), mine, holder)`` would return next,
        taken (its series held for *holder*, as pop would) only if
        ``accept(item)``; else None, leaving it queued. Also None whenever
        the next pick takes more than the usual rules (a retry or doNext
        item is queued, a series is restricted, or a held series of *mine*
        may have a better head): a caller that takes several items at once
        (a group, see `asynqueue._core._dispatch`) stops there, and each
        item it took is one that ``pop`` would have returned.
        """
        if self._retry or self._special[NEXT] or self._restrictedFlows:
            return None
        head = self._usualHead(mine)
        if head is None:
            return None
        item: T = head._item if head.__class__ is _Boxed else head  # type: ignore[assignment]
        if not accept(item):
            return None
        self._takeHead(head, holder)
        return item

    # ---------------------------------------------------------------- internals

    def _eligible(
        self,
        series: Hashable,
        qualified: Collection[Hashable] | None,
        exclude: Collection[Hashable],
        anyway: bool = False,
    ) -> bool:
        if series is None:
            return True
        if exclude and series in exclude:
            return False
        if series in self._held and not anyway:
            return False  # waits until its series' running task has finished
        return qualified is None or series not in self._restricted or series in qualified

    def _best(
        self,
        qualified: Collection[Hashable] | None,
        exclude: Collection[Hashable],
        mine: Collection[Hashable] = (),
        anyway: bool = False,
    ) -> Entry | None:
        if self._retry:
            for _, _, e in self._retry:
                if self._eligible(e.series, qualified, exclude, anyway):
                    return e
        special = self._special
        if special[NEXT]:
            for e in special[NEXT]:
                if self._eligible(e.series, qualified, exclude, anyway):
                    return e
        best = self._bestNormal(qualified, exclude, mine)
        if best is not None:
            return best
        for e in special[LAST]:
            if self._eligible(e.series, qualified, exclude, anyway):
                return e
        return None

    def _bestNormal(
        self,
        qualified: Collection[Hashable] | None,
        exclude: Collection[Hashable],
        mine: Collection[Hashable],
    ) -> Entry | None:
        flows = self._flows
        best: Entry | None = None
        skipped: list[tuple[int, int, _Flow]] | None = None
        while True:
            row = self._top()
            if row is None:
                break
            flow = row[2]
            if flow.head is None or flow.head.seq != row[1]:
                self._dropTop()  # stale row
                continue
            if flow.held and (flow.series not in mine or flow.series in self._retrySeries):
                self._dropTop()
                self._park(flow)
                continue
            if exclude and flow.series is not None and flow.series in exclude:
                if skipped is None:
                    skipped = []
                skipped.append(row)
                self._dropTop()
                continue
            best = flow.head
            break
        if skipped is not None:
            for row in skipped:
                self._addRow(row)
        if self._restrictedFlows:
            if qualified is None:
                candidates: Collection[Hashable] = list(self._restrictedFlows)
            else:
                candidates = [s for s in qualified if s in self._restrictedFlows]
            for s in candidates:
                if exclude and s in exclude:
                    continue
                e = self._restrictedFlows[s].head
                assert e is not None
                if best is None or (e.finish, e.seq) < (best.finish, best.seq):
                    best = e
        if not mine or (best is not None and not self._mineMayWin(best.finish, best.seq)):
            return best
        for s in mine:
            # Held series this worker may go on with (their rows may be
            # parked, or anywhere in the ready index). Not while a retried
            # task of the series waits: it goes first.
            heldFlow = flows.get(s)
            if heldFlow is None or heldFlow.head is None or (exclude and s in exclude):
                continue
            if s in self._retrySeries:
                continue
            if qualified is not None and s in self._restricted and s not in qualified:
                continue
            e = heldFlow.head
            if best is None or (e.finish, e.seq) < (best.finish, best.seq):
                best = e
        return best

    def _usualHead(self, mine: Collection[Hashable]) -> Entry | None:
        """
        (No retries, doNext items, exclusions or restricted series queued.)
        The best entry, the flow head of the top row once stale rows are
        dropped and held flows not of *mine* parked: what `_best` would
        find, sooner. None: the long way must decide (nothing indexed, or a
        held series of *mine* may have a better head).
        """
        run = self._run
        heads = self._heads
        while True:
            if run and (not heads or run[0] < heads[0]):
                row = run[0]
            elif heads:
                row = heads[0]
            else:
                return None
            flow = row[2]
            head = flow.head
            if head is None or head.seq != row[1]:
                self._dropTop()  # stale row
                continue
            if flow.held and not (mine and flow.series in mine):
                self._dropTop()
                self._park(flow)
                continue
            if mine and self._heldHeads and self._mineMayWin(row[0], row[1]):
                return None
            return head

    def _takeHead(self, head: Entry, holder: dict[Hashable, int] | None) -> None:
        """Take *head*, found by `_usualHead`; hold its series for *holder*, as pop does."""
        self._take(head)
        flow = head.flow
        series = flow.series  # type: ignore[union-attr]
        if series is not None and holder is not None and head.inSequence:
            # hold, inlined, with the flow at hand (not restricted, or its
            # row would not be in the index).
            n = holder.get(series)
            if n:
                holder[series] = n + 1
            else:
                holder[series] = 1
                self._held[series] = flow
                flow.held = True  # type: ignore[union-attr]

    def _take(self, entry: Entry) -> None:
        """Take *entry*, a flow's head or a special one, off the queue."""
        klass = entry.klass
        entry.klass = None
        self.count -= 1
        if klass == NORMAL:
            flow = entry.flow
            assert flow is not None
            head = flow.head = entry.next
            if head is None:
                flow.tail = None
            else:
                entry.next = None  # (a finished call holds on to no queued one)
            if entry.start > self._vtime:
                self._vtime = entry.start
            # The usual case: the row of the entry just taken is a top row;
            # drop it now (instead of meeting it as a stale row later).
            run = self._run
            if run and run[0][1] == entry.seq:
                run.popleft()
            elif self._heads and self._heads[0][1] == entry.seq:
                heapq.heappop(self._heads)
            if head is not None and (
                flow.series is None or not self._restricted or flow.series not in self._restricted
            ):
                # _index, inlined: the row of the flow's new head.
                flow.parked = False
                row = (head.finish, head.seq, flow)
                if not run or run[-1] < row:
                    run.append(row)
                else:
                    heapq.heappush(self._heads, row)
            else:
                self._headChanged(flow)
            idle = self._idle
            if idle and (len(idle) > self._sweepAt or len(idle) == len(self._flows)):
                self._sweepIdle()
            if not self.count:
                self._forgetRows()
        elif klass == RETRY:
            self._removeRetry(entry)
        else:
            self._special[klass].remove(entry)  # type: ignore[index]

    def _forgetRows(self) -> None:
        """Nothing is queued, so every index row is stale: drop them at once."""
        self._heads.clear()
        self._run.clear()
        self._heldHeads.clear()

    def _headChanged(self, flow: _Flow) -> None:
        if flow.head is not None:
            self._index(flow)
        else:
            self._dropFlow(flow)

    def _index(self, flow: _Flow) -> None:
        """Index the (new) head of non-empty *flow*."""
        if flow.series is not None and flow.series in self._restricted:
            if flow.held:
                self._park(flow)  # in _restrictedFlows again on release
            else:
                flow.parked = False
                self._restrictedFlows[flow.series] = flow
        else:
            flow.parked = False
            self._addRow(flow.headRow())

    def _addRow(self, row: tuple[int, int, _Flow]) -> None:
        """Add a row of an unrestricted flow's head (see _heads)."""
        run = self._run
        if not run or run[-1] < row:
            run.append(row)
        else:
            heapq.heappush(self._heads, row)

    def _top(self) -> tuple[int, int, _Flow] | None:
        """The smallest row of _run and _heads (None if both are empty)."""
        run = self._run
        heads = self._heads
        if run and (not heads or run[0] < heads[0]):
            return run[0]
        return heads[0] if heads else None

    def _dropTop(self) -> None:
        """Remove the row that `_top` returns."""
        run = self._run
        heads = self._heads
        if run and (not heads or run[0] < heads[0]):
            run.popleft()
        else:
            heapq.heappop(heads)

    def _park(self, flow: _Flow) -> None:
        """Put the row of held, non-empty *flow* in _heldHeads until release."""
        flow.parked = True
        heldHeads = self._heldHeads
        if len(heldHeads) > 2 * len(self._held) + 64:
            # Stale rows under a current top are never met: rebuild now and
            # then (amortised), so the heap stays as big as the parked flows.
            heldHeads[:] = [
                f.headRow()
                for f in self._held.values()
                if f is not None and f.parked and f.head is not None
            ]
            heapq.heapify(heldHeads)
            return
        heapq.heappush(heldHeads, flow.headRow())

    def _mineMayWin(self, finish: int, seq: int) -> bool:
        """
        Whether some held flow's head comes before (*finish*, *seq*): if none
        does, no series a pop's *mine* names can, and the pop need not look.
        """
        heldHeads = self._heldHeads
        while heldHeads:
            row = heldHeads[0]
            flow = row[2]
            head = flow.head
            if flow.parked and flow.held and head is not None and head.seq == row[1]:
                return row[0] < finish or (row[0] == finish and row[1] < seq)
            heapq.heappop(heldHeads)  # stale: released, emptied or moved on
        return False

    def _dropFlow(self, flow: _Flow) -> None:
        # An empty flow is forgotten once the virtual time has passed its last
        # finish tag; until then it is kept (idle), so that a flow cannot jump
        # ahead of its fair share by emptying and refilling.
        if self._restrictedFlows.get(flow.series) is flow:
            del self._restrictedFlows[flow.series]
        if flow.lastFinish <= self._vtime:
            del self._flows[flow.key]
            self._idle.discard(flow.key)
        else:
            self._idle.add(flow.key)

    def _sweepIdle(self) -> None:
        vtime = self._vtime
        if len(self._idle) == len(self._flows):
            # Nothing queued in any flow: nobody to be unfair to, forget them all.
            vtime = max([vtime, *(self._flows[k].lastFinish for k in self._idle)])
            self._vtime = vtime
        for key in [k for k in self._idle if self._flows[k].lastFinish <= vtime]:
            del self._flows[key]
            self._idle.discard(key)
        # Amortised: the next sweep waits until the idle set has doubled.
        self._sweepAt = max(_IDLE_SWEEP, 2 * len(self._idle))
