"""The pure scheduler: ordering, fairness, doNext/doLast, qualifications."""

from __future__ import annotations

import collections
import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from asynqueue._core._scheduler import Entry, Scheduler, checkNiceness, weight

niceness = st.integers(min_value=-20, max_value=20)


def popAll(s: Scheduler, qualified=None) -> list:
    out = []
    while True:
        item = s.pop(qualified)
        if item is None:
            return out
        out.append(item)


# ------------------------------------------------------------------ niceness


@pytest.mark.parametrize("bad", [21, -21, 1.5, "0", None, True, 100])
def test_bad_niceness_is_refused(bad):
    with pytest.raises(ValueError):
        checkNiceness(bad)


def test_weight_halves_every_ten():
    for n in range(-20, 11):
        assert weight(n + 10) == pytest.approx(weight(n) / 2)


# ------------------------------------------------------------------ series order


@given(st.lists(st.tuples(st.sampled_from("ABC"), niceness), max_size=80))
def test_each_series_starts_in_submission_order(pushes):
    s = Scheduler()
    for i, (series, nice) in enumerate(pushes):
        s.push((series, i), series=series, niceness=nice)
    out = popAll(s)
    assert sorted(out, key=lambda x: x[1]) == sorted(out, key=lambda x: x[1])
    assert len(out) == len(pushes)
    for series in "ABC":
        seen = [i for ser, i in out if ser == series]
        assert seen == sorted(seen)


@given(st.lists(niceness, max_size=60))
def test_plain_calls_at_one_niceness_are_fifo(nicenesses):
    s = Scheduler()
    for i, n in enumerate(nicenesses):
        s.push((n, i), niceness=n)
    out = popAll(s)
    for n in set(nicenesses):
        seen = [i for m, i in out if m == n]
        assert seen == sorted(seen)


# ------------------------------------------------------------------ fairness


def startRatio(niceA: int, niceB: int, count: int = 300) -> list[str]:
    s = Scheduler()
    for _ in range(count):
        s.push("A", series="A", niceness=niceA)
        s.push("B", series="B", niceness=niceB)
    return [s.pop() for _ in range(count)]


@pytest.mark.parametrize("base", range(-20, 11))
def test_niceness_plus_ten_runs_at_half_rate_in_every_window_of_30(base):
    order = startRatio(base, base + 10)
    for start in range(len(order) - 30):
        window = order[start : start + 30]
        ratio = window.count("A") / window.count("B")
        assert 2 * 0.85 <= ratio <= 2 * 1.15, (start, window)


@given(niceness, niceness)
@settings(max_examples=60)
def test_long_run_ratio_follows_weights(a, b):
    order = startRatio(a, b, count=2000)
    expected = weight(a) / weight(b)
    got = order.count("A") / max(1, order.count("B"))
    if order.count("B") >= 20 and order.count("A") >= 20:
        assert got == pytest.approx(expected, rel=0.15)
    else:
        # Extreme ratios: the light series still gets its share, within one task.
        share = order.count("B") / len(order)
        assert abs(share - weight(b) / (weight(a) + weight(b))) * len(order) <= 2


def test_equal_niceness_alternates():
    assert startRatio(0, 0, 10) == ["A", "B"] * 5


def test_late_series_interleaves_at_once_behind_a_backlog():
    s = Scheduler()
    for i in range(10_000):
        s.push(("A", i), series="A")
    for _ in range(500):
        s.pop()
    for i in range(5):
        s.push(("B", i), series="B")
    nxt = [s.pop() for _ in range(10)]
    assert nxt[:2].count(("B", 0)) == 1
    assert [x for x in nxt if x[0] == "B"] == [("B", i) for i in range(5)]


def test_series_that_empties_and_refills_gains_nothing():
    s = Scheduler()
    for _ in range(40):
        s.push("A", series="A")
    s.push("B", series="B")
    out = []
    for _ in range(40):
        out.append(s.pop())
        if out[-1] == "B":
            s.push("B", series="B")  # B refills only once its one task has gone
    assert abs(out.count("B") - out.count("A")) <= 1


# ------------------------------------------------------------------ doNext / doLast


@given(st.lists(st.sampled_from(["next", "last", "plain"]), max_size=60))
def test_donext_first_dolast_after_everything_each_fifo(kinds):
    s = Scheduler()
    for i, kind in enumerate(kinds):
        s.push(
            (kind, i),
            series=f"s{i % 3}",
            niceness=(i * 7) % 41 - 20,
            doNext=kind == "next",
            doLast=kind == "last",
        )
    out = popAll(s)
    kindsOut = [k for k, _ in out]
    nNext, nLast = kinds.count("next"), kinds.count("last")
    assert kindsOut[:nNext] == ["next"] * nNext
    assert kindsOut[len(kindsOut) - nLast :] == ["last"] * nLast
    for kind in ("next", "last"):
        seen = [i for k, i in out if k == kind]
        assert seen == sorted(seen)


def test_dolast_waits_no_matter_how_long():
    s = Scheduler()
    s.push("last", doLast=True)
    for i in range(1000):
        s.push(i, niceness=20)
    out = popAll(s)
    assert out[-1] == "last"


def test_pushfront_goes_before_donext():
    s = Scheduler()
    s.push("next", doNext=True)
    s.pushFront("retry")
    assert popAll(s) == ["retry", "next"]


# ------------------------------------------------------------------ qualifications


def test_unrestricted_series_runs_anywhere():
    s = Scheduler()
    s.push("x", series="nobody")
    assert s.pop({None}) == "x"


def test_restricted_series_only_on_qualified_workers_and_never_blocks_others():
    s = Scheduler()
    s.setRestricted({"gpu"})
    s.push("g1", series="gpu")
    s.push("p1")
    s.push("g2", series="gpu")
    assert s.pop({None}) == "p1"
    assert s.pop({None}) is None
    assert s.pop({None, "gpu"}) == "g1"
    s.setRestricted(set())
    assert s.pop({None}) == "g2"


@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.booleans()), max_size=50),
    st.sets(st.sampled_from(["a", "b", "c"])),
    st.sets(st.sampled_from(["a", "b", "c"])),
)
def test_pop_respects_qualifications(pushes, restricted, qualified):
    s = Scheduler()
    s.setRestricted(restricted)
    for i, (series, special) in enumerate(pushes):
        s.push((series, i), series=series, doLast=special)
    quals = {None, *qualified}
    out = popAll(s, quals)
    for series, _ in out:
        assert series is None or series in quals or series not in restricted
    # Nothing the worker could run is left behind.
    left = list(s)
    for series, _ in left:
        assert series is not None and series in restricted and series not in quals
    # mayRun (the queue's test for a call that skips the queue) agrees with pop.
    for series in ["a", "b", "c", None]:
        s2 = Scheduler()
        s2.setRestricted(restricted)
        s2.push("x", series=series)
        assert s2.mayRun(series, quals) == (s2.pop(quals) == "x")


# ------------------------------------------------------------------ model-based


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["push", "pop", "remove", "front", "hold", "release", "popMine", "popHold"]
            ),
            st.sampled_from(["A", "B", None]),
            niceness,
        ),
        max_size=120,
    )
)
@example(  # a retry of a held series goes before the series' next task, even for its holder
    [("push", "A", 0), ("push", "A", 0), ("hold", "A", 0), ("front", "A", 0), ("popMine", "A", 0)]
)
def test_every_item_comes_out_exactly_once(ops):
    """And no pop gives an item of a held series, but to its holder (mine)."""
    s = Scheduler()
    counter = itertools.count()
    entries = {}
    kinds = {}  # item -> (series, "push" or "front")
    live = set()
    holder = {}  # the scheduler's count of the worker's tasks in flight, by series
    counts = collections.Counter()  # the model's
    out = []
    for op, series, nice in ops:
        held = {k for k, n in counts.items() if n}
        if op == "push":
            i = next(counter)
            entries[i] = s.push(i, series=series, niceness=nice)
        elif op == "front":
            i = next(counter)
            entries[i] = s.pushFront(i, series=series)
        elif op == "hold" and series is not None:
            s.hold(series, holder)
            counts[series] += 1
        elif op == "release":
            s.release(series, holder)
            if counts[series]:
                counts[series] -= 1
        elif op in ("pop", "popMine", "popHold"):
            mine = [series] if op != "pop" and series in held else []
            # popHold: a pop that holds the series of what it takes, as a
            # worker that runs it would (see hold).
            item = s.pop(None, (), mine, holder if op == "popHold" else None)
            ready = {i for i in live if kinds[i][0] not in held}
            if item is None:
                assert not ready
            else:
                assert item in live
                itemSeries, kind = kinds[item]
                if itemSeries in held:
                    # Only the holder's normal tasks, and none while a retry waits.
                    assert itemSeries in mine and kind == "push"
                    assert not [i for i in live if kinds[i] == (itemSeries, "front")]
                live.discard(item)
                out.append(item)
                if op == "popHold" and itemSeries is not None:
                    counts[itemSeries] += 1
        elif op == "remove" and live:
            victim = sorted(live)[nice % len(live)]  # the head of its flow, or behind it
            assert s.remove(entries[victim])
            assert not s.remove(entries[victim])
            live.discard(victim)
        if op in ("push", "front"):
            kinds[i] = (series, op)
            live.add(i)
        assert len(s) == len(live)
        assert holder == {k: n for k, n in counts.items() if n}
    rest = s.drain()
    assert set(rest) == live
    assert len(rest) == len(live)
    assert len(s) == 0 and s.pop() is None


def test_a_held_series_costs_a_pop_nothing():
    """A thousand held series with work queued: each pop meets none of them."""
    s = Scheduler()
    holder = {}
    for k in range(1000):
        s.push(("held", k), series=k)
        s.push(("held", k, 2), series=k)
        s.hold(k, holder)
    for i in range(100):
        s.push(i)
    # The rows of the held heads are dropped once, on the first pop.
    assert s.pop() == 0
    assert len(s._heads) + len(s._run) == 1
    assert [s.pop() for _ in range(99)] == list(range(1, 100))
    assert s.pop() is None
    s.release(7, holder)
    assert s.pop() == ("held", 7)
    s.hold(7, holder)  # as the dispatcher does: its task is in flight now
    assert s.pop() is None
    assert s.pop(None, (), [7]) == ("held", 7, 2)  # for the worker that holds it


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["push", "push", "hold", "release", "pop", "popOne", "popAll", "remove"]
            ),
            st.sampled_from(["A", "B", "C", "D", None]),
            st.sampled_from([0, 0, 5, 10]),
            st.booleans(),
        ),
        max_size=150,
    ),
    st.sets(st.sampled_from(["A", "B"])),
)
@example(  # the tail withdrawn, then one more queued behind the new tail, and all popped
    [("push", "A", 0, False)] * 2
    + [("remove", "A", 5, False), ("push", "A", 0, False)]
    + [("pop", None, 0, False)] * 3,
    set(),
)
@example(  # a flow emptied by a withdrawal and refilled
    [("push", "A", 0, False), ("remove", "A", 0, False), ("push", "A", 0, False)]
    + [("pop", None, 0, False)] * 2,
    set(),
)
@example(  # a tie of finish tags between a held head and a ready one
    [("push", "A", 0, False), ("push", "B", 0, False)] * 2
    + [("pop", None, 0, False)] * 2
    + [("hold", "A", 0, False), ("popOne", "A", 0, False)],
    set(),
)
@example(  # a held head put aside by one pop, then the best for its holder
    [("push", "A", 0, False), ("push", "B", 0, False)] * 2
    + [("push", "B", 0, False)]
    + [("pop", None, 0, False)] * 2
    + [("hold", "A", 0, False), ("pop", None, 0, False), ("popOne", "A", 0, False)],
    set(),
)
@example(  # the same for a restricted series
    [("push", "A", 0, True), ("push", "B", 0, True)] * 2
    + [("pop", None, 0, True)] * 2
    + [("hold", "A", 0, True), ("popOne", "A", 0, True)],
    {"A"},
)
def test_a_pop_takes_the_best_head_it_may_run(ops, restricted):
    """
    Held series left out, but those the pop's *mine* names, and restricted
    series the worker is not qualified for: the head with the smallest finish
    tag (ties: the first queued) of the rest, checked against every flow's
    head, however the pop finds it.
    """
    s = Scheduler()
    s.setRestricted(restricted)
    counter = itertools.count()
    queued = {}  # item -> (its entry, its flow's key)
    holder = {}
    counts = collections.Counter()
    for op, series, nice, anyWorker in ops:
        held = {k for k, n in counts.items() if n}
        if op == "push":
            i = next(counter)
            queued[i] = (s.push(i, series=series, niceness=nice), series or ("plain", nice))
        elif op == "hold" and series is not None:
            s.hold(series, holder)
            counts[series] += 1
        elif op == "release":
            s.release(series, holder)
            if counts[series]:
                counts[series] -= 1
        elif op == "remove":
            # One of the flow's items: its head, the second or the third
            # (withdrawn from the middle or the tail of the flow's chain).
            inFlow = sorted(i for i, (_, key) in queued.items() if key == (series or ("plain", 0)))
            if inFlow:
                victim = inFlow[(nice // 5) % len(inFlow)]
                assert s.remove(queued.pop(victim)[0])
        elif op.startswith("pop"):
            mine = {"pop": [], "popOne": [series] if series in held else [], "popAll": held}[op]
            qualified = None if anyWorker else {None, series}
            heads = {}
            for entry, key in queued.values():
                if key not in heads or entry.seq < heads[key].seq:
                    heads[key] = entry
            mayRun = [
                e
                for e in heads.values()
                if (e.series not in held or e.series in mine)
                and (qualified is None or e.series not in restricted or e.series in qualified)
            ]
            best = min(mayRun, key=lambda e: (e.finish, e.seq), default=None)
            item = s.pop(qualified, (), list(mine))
            assert item == (None if best is None else best.item)
            queued.pop(item, None)


def test_held_heads_stay_bounded():
    """The index of held heads does not grow with the tasks that pass through it."""
    s = Scheduler()
    s.push("first", series="long")
    s.push("second", series="long")
    assert s.pop() == "first"
    holder = {}
    s.hold("long", holder)  # its head stays on top of the held index throughout
    for k in range(20_000):
        s.push(k, series="x")
        s.hold("x", holder)
        assert s.pop(None, (), ["x"]) == k
        s.release("x", holder)
    assert len(s._heldHeads) < 100
    s.release("long", holder)
    assert s.pop() == "second"


def test_many_one_shot_series_do_not_leak():
    s = Scheduler()
    for i in range(5000):
        s.push(i, series=("one-shot", i))
        assert s.pop() == i
    assert len(s._flows) < 600


def test_requeued_items_keep_their_relative_places():
    s = Scheduler()
    entries = [s.push(i, series="s") for i in range(4)]
    popped = [s.pop() for _ in range(4)]
    assert popped == [0, 1, 2, 3]
    for i in (2, 0, 3, 1):  # re-queued in a scrambled order
        s.pushFront(i, series="s", seq=entries[i].seq)
    s.push("new", doNext=True)
    assert popAll(s) == [0, 1, 2, 3, "new"]


class SelfEntry(Entry):
    """An item that is its own scheduler entry, as the queue's calls are."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def test_an_entry_item_is_its_own_entry():
    s = Scheduler()
    a, b, c, d = (SelfEntry(name) for name in "abcd")
    assert s.push(a) is a
    assert s.push(b, niceness=10) is b
    assert s.push(c, series="s") is c
    assert s.push(d, doLast=True) is d
    assert [x.seq for x in (a, b, c, d)] == sorted(x.seq for x in (a, b, c, d))
    assert set(s) == {a, b, c, d}
    assert s.remove(c) and not s.remove(c)
    assert s.peek() is a
    assert popAll(s) == [a, b, d]


def test_a_requeued_entry_item_keeps_its_first_place():
    s = Scheduler()
    items = [SelfEntry(str(i)) for i in range(3)]
    for item in items:
        s.push(item, series="s")
    assert popAll(s) == items
    seqs = [item.seq for item in items]
    for item in reversed(items):
        entry = s.pushFront(item, series="s", seq=item.seq)
        assert entry is not item  # boxed: the item's own fields stay as they were
    assert [item.seq for item in items] == seqs
    assert popAll(s) == items


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", None]), st.sampled_from(["", "next", "last"])),
        max_size=40,
    ),
    st.sets(st.sampled_from(["a", "b"])),
)
def test_excluded_series_are_skipped_not_lost(pushes, exclude):
    s = Scheduler()
    for i, (series, kind) in enumerate(pushes):
        s.push((series, i), series=series, doNext=kind == "next", doLast=kind == "last")
    out = popAll_ex(s, exclude)
    assert all(series is None or series not in exclude for series, _ in out)
    rest = popAll(s)
    assert sorted(out + rest, key=lambda x: x[1]) == [(ser, i) for i, (ser, _) in enumerate(pushes)]
    plain = {i for i, (_, kind) in enumerate(pushes) if not kind}
    for series in ("a", "b"):
        seen = [i for ser, i in out + rest if ser == series and i in plain]
        assert seen == sorted(seen)


def popAll_ex(s: Scheduler, exclude) -> list:
    out = []
    while (item := s.pop(None, exclude)) is not None:
        out.append(item)
    return out


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["push", "push", "push", "next", "last", "front", "pop", "remove"]),
            st.sampled_from(["a", "b", None, None]),
            niceness,
            st.sets(st.sampled_from(["a", "b"])),
        ),
        max_size=150,
    ),
    st.sets(st.sampled_from(["a", "b"])),
)
def test_pop_takes_exactly_what_peek_shows(ops, restricted):
    # pop has a shortcut for the usual case; peek always takes the long way.
    s = Scheduler()
    s.setRestricted(restricted)
    counter = itertools.count()
    entries = []
    for op, series, nice, qualifiedOrExcluded in ops:
        i = next(counter)
        if op in ("push", "next", "last"):
            entries.append(
                s.push(i, series=series, niceness=nice, doNext=op == "next", doLast=op == "last")
            )
        elif op == "front":
            entries.append(s.pushFront(i, series=series))
        elif op == "remove" and entries:
            s.remove(entries[len(entries) // 2])
        else:
            for qualified, exclude in (
                (None, ()),
                ({None, *qualifiedOrExcluded}, ()),
                (None, qualifiedOrExcluded),
            ):
                expected = s.peek(qualified, exclude)
                assert s.pop(qualified, exclude) == expected
    left = len(s)
    assert len(s.drain()) == left


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["push", "push", "push", "next", "front", "hold", "release", "popHolding", "take"]
            ),
            st.sampled_from(["a", "b", None, None, None]),
            niceness,
            st.integers(0, 6),
        ),
        max_size=150,
    ),
    st.sets(st.sampled_from(["a", "b"])),
)
def test_pop_if_takes_only_what_pop_would_and_only_if_accepted(ops, restricted):
    # Two schedulers fed the same: one popped, one asked with popIf first
    # (what a group takes). Each item popIf gives is the one pop gives, its
    # series held alike; it takes none that accept refuses, and none while
    # retries, doNext items or restricted series call for pop's other rules.
    a, b = Scheduler(), Scheduler()
    a.setRestricted(restricted)
    b.setRestricted(restricted)
    holderA: dict = {}
    holderB: dict = {}
    counter = itertools.count()
    for op, series, nice, k in ops:
        i = next(counter)
        if op in ("push", "next"):
            for s in (a, b):
                s.push(i, series=series, niceness=nice, doNext=op == "next")
        elif op == "front":
            for s in (a, b):
                s.pushFront(i, series=series)
        elif op == "hold" and series is not None:
            a.hold(series, holderA)
            b.hold(series, holderB)
        elif op == "release" and series is not None and holderA.get(series):
            a.release(series, holderA)
            b.release(series, holderB)
        elif op == "popHolding":  # (holds the series of the item it takes)
            assert a.pop(holder=holderA) == b.pop(holder=holderB)
        elif op == "take":
            # Up to k items: popIf while it gives one (odd items refused),
            # each checked against pop on the other scheduler.
            # As a worker that holds series and runs in order asks (mine:
            # the series it holds; it holds the series of what it takes).
            special = bool(b._retry or b._special[0] or b._restrictedFlows)
            for _ in range(k):
                wanted = a.peek(None, (), holderA)
                got = b.popIf(lambda item: item % 2 == 0, holderB, holderB)
                if got is None:
                    # Nothing taken; and with no other rules in play (no
                    # retries, doNext, restrictions, held series of its
                    # own) only because accept refused it.
                    assert len(b) == len(a)
                    assert wanted is None or wanted % 2 or special or holderB
                    break
                assert not special
                assert got == wanted == a.pop(None, (), holderA, holderA)
                assert holderA == holderB
    assert sorted(a.drain()) == sorted(b.drain())
