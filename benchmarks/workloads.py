"""
The workloads, each written once per contender family (async, sync, floor).

A workload's ``rep`` functions do one repetition and return ``{metric: value}``;
a value that is a string is a reason why that figure is "n/a". The drivers in
`benchmarks.run` start the contender, warm it up, run the repetitions and take
the median of each figure.

``sizes`` (a dict, see `benchmarks.run.SIZES`) holds every size, so that the
full, ``--quick`` and ``--smoke`` modes run the same code.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import payloads
from .contenders import Contender, NotApplicable

Sizes = dict[str, Any]
Figures = dict[str, Any]

# Trivial calls that reach every worker (each takes a few at most).
FLUSH_CALLS = 16

NO_STREAMING = "no streaming: a call's result comes back whole"
NO_PRIORITIES = "no niceness or series: tasks start first in, first out"


def percentile(samples: list[float], p: float) -> float:
    """The *p*-th percentile (0-100) of *samples*, nearest rank."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latencyFigures(samplesNs: list[int]) -> Figures:
    micros = [s / 1000 for s in samplesNs]
    return {"p50": statistics.median(micros), "p99": percentile(micros, 99)}


def startRatio(results: list[tuple[str, int]], busyEnd: int | None, skip: int = 0) -> float | str:
    """
    Starts of series A per start of series B while both were backlogged.

    Counted over the starts after the first *skip* (the tasks that were handed
    to workers as they were submitted, before the scheduler saw both series),
    before series A ran out of tasks and, for pooled contenders, before the
    busy worker came free.
    """
    cut = max(t for tag, t in results if tag == "A")
    if busyEnd is not None:
        cut = min(cut, busyEnd)
    starts = sorted(results, key=lambda r: r[1])[skip:]
    a = sum(1 for tag, t in starts if tag == "A" and t < cut)
    b = sum(1 for tag, t in starts if tag == "B" and t < cut)
    if b == 0:
        # B starved while A was backlogged: say so with an infinite ratio.
        return math.inf if a else "n/a: no starts while both series were backlogged"
    return a / b


class GatePath:
    """A context manager: a fresh path for `payloads.gate`, removed afterwards."""

    def __enter__(self) -> str:
        import tempfile

        self.directory = tempfile.mkdtemp(prefix="asynqueue-bench-")
        return os.path.join(self.directory, "gate")

    def __exit__(self, *exc: Any) -> None:
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


class CountingConsumer:
    """An IConsumer that counts what is written to it."""

    def __init__(self) -> None:
        self.count = 0
        self.producer: Any = None
        self.streaming = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.streaming = streaming
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: Any) -> None:
        self.count += 1
        if not self.streaming and self.producer is not None:
            self.producer.resumeProducing()


def _interfaces() -> None:
    """Declare CountingConsumer an IConsumer (needs zope, imported lazily)."""
    from twisted.internet.interfaces import IConsumer
    from zope.interface import classImplements

    if not IConsumer.implementedBy(CountingConsumer):
        classImplements(CountingConsumer, IConsumer)


# ====================================================================== async


def collect(ds: list[Any]) -> Any:
    """
    A Deferred that fires (with None) once every Deferred in *ds* has.

    One ``addBoth`` per Deferred and a countdown: the least a Twisted caller
    pays to wait for many calls (``gatherResults`` costs several µs a call,
    which would dwarf the queues' own costs). The first failure wins.
    """
    from twisted.internet.defer import Deferred

    done: Deferred[None] = Deferred()
    left = [len(ds)]

    def one(result: Any) -> None:
        from twisted.python.failure import Failure

        if isinstance(result, Failure):
            if not done.called:
                done.errback(result)
            return
        left[0] -= 1
        if not left[0] and not done.called:
            done.callback(None)

    if not ds:
        done.callback(None)
    for d in ds:
        d.addBoth(one)
    return done


def asyncDispatch(ad: Any, sz: Sizes, rep: int) -> Any:
    n = sz["dispatch"]
    t0 = time.perf_counter()
    d = collect([ad.call(payloads.noop) for _ in range(n)])
    d.addCallback(lambda _: {"calls/s": n / (time.perf_counter() - t0)})
    return d


def asyncLatency(ad: Any, sz: Sizes, rep: int) -> Any:
    from twisted.internet.defer import inlineCallbacks

    @inlineCallbacks
    def go() -> Any:
        samples = []
        clock = time.perf_counter_ns
        noop = payloads.noop
        for _ in range(sz["latency"]):
            t0 = clock()
            yield ad.call(noop)
            samples.append(clock() - t0)
        return latencyFigures(samples)

    return go()


def asyncCpu(ad: Any, sz: Sizes, rep: int) -> Any:
    from twisted.internet.defer import gatherResults

    serial = serialCpu(sz)
    t0 = time.perf_counter()
    d = gatherResults(
        [ad.call(payloads.spin, sz["cpuIters"]) for _ in range(sz["cpuCalls"])],
        consumeErrors=True,
    )
    d.addCallback(lambda _: cpuFigures(time.perf_counter() - t0, serial))
    return d


def serialCpu(sz: Sizes) -> float:
    """The same loops run one after another right here: the speed-up's baseline.

    Measured next to each parallel run, so that both see the same machine load.
    """
    t0 = time.perf_counter()
    for _ in range(sz["cpuCalls"]):
        payloads.spin(sz["cpuIters"])
    return time.perf_counter() - t0


def cpuFigures(wall: float, serial: float) -> Figures:
    return {"wall": wall * 1000, "speedup": serial / wall}


def asyncLarge(ad: Any, sz: Sizes, rep: int) -> Any:
    from twisted.internet.defer import gatherResults, inlineCallbacks

    def flush() -> Any:
        # A round of trivial calls on every worker, untimed: a thread worker
        # that still holds its last big result frees it now, not in the
        # next timed call (see benchmarks/README.md).
        return gatherResults([ad.call(payloads.noop) for _ in range(FLUSH_CALLS)])

    @inlineCallbacks
    def go() -> Any:
        t0 = time.perf_counter()
        result = yield ad.call(payloads.bigBytes, sz["bytes"])
        tBytes = time.perf_counter() - t0
        assert len(result) == sz["bytes"]
        del result
        yield flush()
        t0 = time.perf_counter()
        result = yield ad.call(payloads.bigList, sz["ints"])
        tList = time.perf_counter() - t0
        assert len(result) == sz["ints"]
        del result
        yield flush()
        return largeFigures(tBytes, tList, sz)

    return go()


def largeFigures(tBytes: float, tList: float, sz: Sizes) -> Figures:
    return {"bytes": sz["bytes"] / 1e6 / tBytes, "list": sz["listBytes"] / 1e6 / tList}


def asyncStreaming(ad: Any, sz: Sizes, rep: int) -> Any:
    from twisted.internet.defer import inlineCallbacks

    if not ad.streams:
        raise NotApplicable(NO_STREAMING)
    _interfaces()

    @inlineCallbacks
    def go() -> Any:
        n = sz["items"]
        figures: Figures = {}
        # 1. A Deferator, iterated by the caller: ``for d in dr: item = yield d``.
        try:
            t0 = time.perf_counter()
            dr = yield ad.call(payloads.items, n)
            count = 0
            if isinstance(dr, list):  # an empty or eagerly collected result
                count = len(dr)
            else:
                for d in dr:
                    yield d
                    count += 1
            if count != n:
                raise AssertionError(f"got {count} items, not {n}")
            figures["deferator"] = n / (time.perf_counter() - t0)
        except Exception as e:
            figures["deferator"] = f"error: {type(e).__name__}: {e}"
        # 2. A consumer that the queue writes each item to.
        try:
            consumer = CountingConsumer()
            t0 = time.perf_counter()
            yield ad.call(payloads.items, n, consumer=consumer)
            if consumer.count != n:
                raise AssertionError(f"got {consumer.count} items, not {n}")
            figures["consumer"] = n / (time.perf_counter() - t0)
        except Exception as e:
            figures["consumer"] = f"error: {type(e).__name__}: {e}"
        return figures

    return go()


def asyncStartup(ad: Any, sz: Sizes, rep: int) -> Any:
    t0 = time.perf_counter()
    d = ad.startupOnce()
    d.addCallback(lambda _: {"ms": (time.perf_counter() - t0) * 1000})
    return d


def asyncScheduling(ad: Any, sz: Sizes, rep: int) -> Any:
    from twisted.internet.defer import gatherResults, inlineCallbacks

    @inlineCallbacks
    def go() -> Any:
        figures: Figures = {}
        if ad.hasPriorities:
            busyD = ad.busyCall(sz["schedBusy"])
            # "One worker busy": let its long task get going before the two
            # series arrive, as it would be in a running application.
            from twisted.internet import reactor
            from twisted.internet.task import deferLater

            yield deferLater(reactor, 0.02, lambda: None)
            ds = []
            for _ in range(sz["schedN"]):
                for tag, niceness in (("A", 0), ("B", 10)):
                    ds.append(
                        ad.call(
                            payloads.sleepStamp,
                            tag,
                            sz["schedTask"],
                            series=f"{tag}{rep}",
                            niceness=niceness,
                        )
                    )
            dispatched = max(0, len(ds) - ad.queued())
            busyEnd = yield busyD
            results = yield gatherResults(ds, consumeErrors=True)
            figures["ratio"] = startRatio(
                results, None if ad.busyBlocksAll else busyEnd, dispatched
            )
        else:
            figures["ratio"] = f"n/a: {NO_PRIORITIES}"
        with GatePath() as path:
            gates = ad.gateCalls(path)
            kw: dict[str, Any] = {"series": f"bulk{rep}"} if ad.hasPriorities else {}
            bulk = [ad.call(payloads.noop, **kw) for _ in range(sz["backlog"])]
            if ad.hasPriorities:
                kw = {"series": f"new{rep}"}
            newD = ad.call(payloads.stamp, "new", **kw)
            ad.openGate(path)
            _, started = yield newD
            freed = yield gatherResults(gates, consumeErrors=True)
            yield gatherResults(bulk, consumeErrors=True)
        figures["delay"] = (started - min(freed)) / 1e6
        return figures

    return go()


# ====================================================================== sync

# The timing loops of the sync workloads that the floors share (both block for a result).


def timedRoundTrips(roundTrip: Callable[[], Any], sz: Sizes) -> Figures:
    """Latency figures of ``sz["latency"]`` calls of *roundTrip*, each timed alone."""
    samples = []
    clock = time.perf_counter_ns
    for _ in range(sz["latency"]):
        t0 = clock()
        roundTrip()
        samples.append(clock() - t0)
    return latencyFigures(samples)


def timedLarge(
    fetch: Callable[[Callable[..., Any], Any], Any],
    sz: Sizes,
    settle: Callable[[], None] | None = None,
) -> Figures:
    """
    Large-result figures: ``fetch(f, arg)`` calls ``f(arg)`` remotely and
    returns its result, timed once for bytes and once for a list, with an
    untimed *settle()* (if any) after each.
    """
    timings = []
    for f, arg in ((payloads.bigBytes, sz["bytes"]), (payloads.bigList, sz["ints"])):
        t0 = time.perf_counter()
        result = fetch(f, arg)
        timings.append(time.perf_counter() - t0)
        assert len(result) == arg
        del result
        if settle is not None:
            settle()
    return largeFigures(*timings, sz)


def syncDispatch(ad: Any, sz: Sizes, rep: int) -> Figures:
    n = sz["dispatch"]
    t0 = time.perf_counter()
    futures = [ad.submit(payloads.noop) for _ in range(n)]
    for f in futures:
        f.result()
    return {"calls/s": n / (time.perf_counter() - t0)}


def syncLatency(ad: Any, sz: Sizes, rep: int) -> Figures:
    noop = payloads.noop
    return timedRoundTrips(lambda: ad.submit(noop).result(), sz)


def syncCpu(ad: Any, sz: Sizes, rep: int) -> Figures:
    serial = serialCpu(sz)
    t0 = time.perf_counter()
    futures = [ad.submit(payloads.spin, sz["cpuIters"]) for _ in range(sz["cpuCalls"])]
    for f in futures:
        f.result()
    return cpuFigures(time.perf_counter() - t0, serial)


def syncLarge(ad: Any, sz: Sizes, rep: int) -> Figures:
    def flush() -> None:
        for f in [ad.submit(payloads.noop) for _ in range(FLUSH_CALLS)]:
            f.result()

    return timedLarge(lambda f, arg: ad.submit(f, arg).result(), sz, flush)


def syncStreaming(ad: Any, sz: Sizes, rep: int) -> Figures:
    raise NotApplicable(NO_STREAMING)


def syncStartup(ad: Any, sz: Sizes, rep: int) -> Figures:
    t0 = time.perf_counter()
    ad.startupOnce()
    return {"ms": (time.perf_counter() - t0) * 1000}


def syncScheduling(ad: Any, sz: Sizes, rep: int) -> Figures:
    with GatePath() as path:
        gates = ad.gateCalls(path)
        bulk = [ad.submit(payloads.noop) for _ in range(sz["backlog"])]
        new = ad.submit(payloads.stamp, "new")
        ad.openGate(path)
        _, started = new.result()
        freed = [f.result() for f in gates]
        for f in bulk:
            f.result()
    return {"ratio": f"n/a: {NO_PRIORITIES}", "delay": (started - min(freed)) / 1e6}


# ====================================================================== floors


def floorDispatch(fl: Any, sz: Sizes, rep: int) -> Figures:
    """Pipelined: every request sent (from a second thread), every reply read."""
    import threading

    n = sz["dispatch"]
    noop = payloads.noop

    def sendAll() -> None:
        for _ in range(n):
            fl.send(noop)

    t0 = time.perf_counter()
    sender = threading.Thread(target=sendAll)
    sender.start()
    for _ in range(n):
        fl.receive()
    sender.join()
    return {"calls/s": n / (time.perf_counter() - t0)}


def floorLatency(fl: Any, sz: Sizes, rep: int) -> Figures:
    """Ping-pong: one request, one reply."""
    noop = payloads.noop

    def pingPong() -> None:
        fl.send(noop)
        fl.receive()

    return timedRoundTrips(pingPong, sz)


def floorLarge(fl: Any, sz: Sizes, rep: int) -> Figures:
    def fetch(f: Callable[..., Any], arg: Any) -> Any:
        fl.send(f, arg)
        return fl.receive()

    return timedLarge(fetch, sz)


def floorStreaming(fl: Any, sz: Sizes, rep: int) -> Figures:
    """One message per item, no acknowledgement."""
    from .contenders import _STREAM_END

    n = sz["items"]
    t0 = time.perf_counter()
    fl.send(payloads.items, n, streaming=True)
    count = 0
    while fl.receive() != _STREAM_END:
        count += 1
    assert count == n
    rate = n / (time.perf_counter() - t0)
    return {"deferator": rate, "consumer": rate}


def floorStartup(fl: Any, sz: Sizes, rep: int) -> Figures:
    t0 = time.perf_counter()
    fresh = type(fl)()
    fresh.start()
    fresh.send(payloads.noop)
    fresh.receive()
    fresh.stop()
    return {"ms": (time.perf_counter() - t0) * 1000}


# ====================================================================== registry


@dataclass(frozen=True)
class Workload:
    """A group of rows of the table."""

    key: str
    title: str
    asyncRep: Callable[..., Any]
    syncRep: Callable[..., Figures]
    floorRep: Callable[..., Figures] | None
    needsPool: bool = True
    notFor: dict[str, str] = field(default_factory=dict)  # contender key -> reason

    def applies(self, contender: Contender) -> str | None:
        """None if I apply to *contender*, else why not."""
        if contender.key in self.notFor:
            return self.notFor[contender.key]
        if contender.only and self.key not in contender.only:
            return f"measured for {' and '.join(contender.only)} only"
        if contender.family == "floor" and self.floorRep is None:
            return "no transport floor for this workload"
        return None


WORKLOADS: dict[str, Workload] = {
    w.key: w
    for w in [
        Workload("dispatch", "dispatch", asyncDispatch, syncDispatch, floorDispatch),
        Workload("latency", "latency", asyncLatency, syncLatency, floorLatency),
        Workload(
            "cpu",
            "CPU-bound",
            asyncCpu,
            syncCpu,
            None,
            notFor={"aq-null": "runs in the reactor thread: nothing to run in parallel"},
        ),
        Workload(
            "large",
            "large result",
            asyncLarge,
            syncLarge,
            floorLarge,
            notFor={"aq-null": "no transport: the result is handed over by reference"},
        ),
        Workload("streaming", "streaming", asyncStreaming, syncStreaming, floorStreaming),
        Workload("startup", "startup", asyncStartup, syncStartup, floorStartup, needsPool=False),
        Workload("scheduling", "scheduling", asyncScheduling, syncScheduling, None),
    ]
}


def aggregate(reps: list[Figures]) -> Figures:
    """The median of each figure over the repetitions (a reason wins over numbers)."""
    out: Figures = {}
    for key in reps[0]:
        values = [r.get(key) for r in reps]
        reasons = [v for v in values if isinstance(v, str)]
        if reasons:
            out[key] = reasons[0]
        else:
            out[key] = statistics.median(v for v in values if v is not None)
    return out
