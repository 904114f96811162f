"""TaskQueue.map: results, order, batching, errors, early stops, every worker kind."""

from __future__ import annotations

import itertools
import math
import pickle
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from asynqueue import AsyncWorker, TaskQueue, ThreadQueue, errors
from asynqueue._core._map import MAX_CHUNK, WINDOW_PER_WORKER, MapRun, SequenceFeed
from asynqueue.process import ProcessQueue

from ..helpers import map as hm
from ..helpers.common import collect, waitUntil


class Counting:
    """Counts the queue's calls (each batch is one) and notes the type of each batch."""

    calls = 0

    def call(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        self.batchTypes = getattr(self, "batchTypes", set()) | {type(args[2])}
        return super().call(*args, **kw)  # type: ignore[misc]


class CountingThreadQueue(Counting, ThreadQueue):
    pass


class CountingTaskQueue(Counting, TaskQueue):
    pass


class Pulls:
    """An iterator over *iterable* that counts the items taken from it."""

    def __init__(self, iterable: Any) -> None:
        self.iterator = iter(iterable)
        self.pulled = 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item = next(self.iterator)
        self.pulled += 1
        return item


async def take(dr: Any, n: int | None = None) -> list[Any]:
    """The first *n* items of *dr* (all without *n*), then stop it."""
    items = []
    async for item in dr:
        items.append(item)
        if n is not None and len(items) == n:
            dr.stop()
            break
    return items


def run(coroutine: Any) -> Any:
    return defer.ensureDeferred(coroutine)


class MapBase(TestCase):
    timeout = 30

    def threadQueue(self, n: int = 2, **kw: Any) -> CountingThreadQueue:
        q = CountingThreadQueue(n, returnFailure=True, **kw)
        self.addCleanup(q.shutdown)
        return q

    def asyncQueue(self, n: int = 2) -> CountingTaskQueue:
        q = CountingTaskQueue(*[AsyncWorker() for _ in range(n)], returnFailure=True)
        self.addCleanup(q.shutdown)
        return q


class ResultTests(MapBase):
    @inlineCallbacks
    def test_results_in_input_order_like_builtin_map(self) -> Any:
        for q in (self.asyncQueue(), self.threadQueue()):
            got = yield run(take(q.map(hm.square, range(3000))))
            self.assertEqual(got, [x * x for x in range(3000)])
            # Several iterables are zipped, the shortest ends it.
            got = yield run(take(q.map(pow, [2, 3, 4], itertools.count(1))))
            self.assertEqual(got, [2, 9, 64])

    @inlineCallbacks
    def test_as_completed(self) -> Any:
        q = self.threadQueue()
        # The first input is slow: unordered, a result that finished first comes first.
        got = yield run(take(q.map(hm.nap, [0.3, 0, 0, 0], chunksize=1, ordered=False)))
        self.assertEqual(sorted(got), [0, 0, 0, 0.3])
        self.assertEqual(got[0], 0)
        got = yield run(take(q.map(hm.nap, [0.3, 0, 0, 0], chunksize=1)))
        self.assertEqual(got, [0.3, 0, 0, 0])

    @inlineCallbacks
    def test_the_old_iteration_protocol_works_too(self) -> Any:
        q = self.asyncQueue()
        self.assertEqual((yield collect(q.map(abs, [-1, -2]))), [1, 2])
        self.assertEqual((yield collect(q.map(abs, []))), [])
        self.assertEqual((yield run(take(q.map(abs, iter(()))))), [])

    @inlineCallbacks
    def test_coroutines_and_deferreds_are_awaited_one_after_another(self) -> Any:
        q = self.asyncQueue(1)
        running = []
        seen = []

        async def slowDouble(x: int) -> int:
            running.append(x)
            seen.append(len(running))
            await deferLater(reactor, 0.001, lambda: None)
            running.remove(x)
            return 2 * x

        got = yield run(take(q.map(slowDouble, range(50), chunksize=10)))
        self.assertEqual(got, [2 * x for x in range(50)])
        self.assertEqual(set(seen), {1})  # never two at once on one worker
        got = yield run(take(q.map(lambda x: deferLater(reactor, 0, lambda: -x), [1, 2])))
        self.assertEqual(got, [-1, -2])


class BatchingTests(MapBase):
    @inlineCallbacks
    def test_trivial_inputs_go_in_growing_batches(self) -> Any:
        q = self.threadQueue()
        n = 50_000
        got = yield run(take(q.map(hm.square, range(n))))
        self.assertEqual(got, [x * x for x in range(n)])
        self.assertLess(q.calls, n // 20)

    @inlineCallbacks
    def test_a_list_tuple_or_range_goes_in_slices(self) -> Any:
        # A lone list, tuple or range is sliced (a range's slice is a range);
        # other iterables are pulled input by input into lists.
        inputs = range(-5000, 5000, 3)
        for given, batchType in (
            (list(inputs), list),
            (tuple(inputs), tuple),
            (inputs, range),
            (iter(inputs), list),
        ):
            q = self.threadQueue()
            got = yield run(take(q.map(abs, given)))
            self.assertEqual(got, [abs(x) for x in inputs])
            self.assertEqual(q.batchTypes, {batchType})
            self.assertGreater(q.calls, 1)

    def test_the_fixed_part_of_a_batch_is_not_counted_per_input(self) -> None:
        # Inputs of 50 ns in batches that cost 10 µs each besides: the first
        # batches, of one input, take 10 µs; batches of 8 then count their
        # inputs' 0.4 µs, not 10.4 µs over 8 inputs.
        run = MapRun(self.asyncQueue(), abs, SequenceFeed([]))
        for _ in range(3):
            run._measured(1, 10e-6)
        self.assertAlmostEqual(run._perItem, 10e-6)  # one input: counted whole
        for _ in range(6):
            run._measured(8, 10e-6 + 8 * 50e-9)
        self.assertLess(run._perItem, 0.2e-6)  # (whole, it would be ~1.3 µs)
        # Slow inputs, one per batch: counted whole, they stay one per batch.
        run = MapRun(self.asyncQueue(), abs, SequenceFeed([]))
        for _ in range(3):
            run._measured(1, 0.005)
        self.assertEqual(run._size(), 1)

    @inlineCallbacks
    def test_long_inputs_go_one_per_call(self) -> Any:
        q = self.threadQueue()
        got = yield run(take(q.map(hm.nap, [0.02] * 12)))
        self.assertEqual(got, [0.02] * 12)
        self.assertEqual(q.calls, 12)

    @inlineCallbacks
    def test_a_fixed_chunksize(self) -> Any:
        q = self.threadQueue()
        got = yield run(take(q.map(hm.square, range(100), chunksize=7)))
        self.assertEqual(got, [x * x for x in range(100)])
        self.assertEqual(q.calls, 15)

    @inlineCallbacks
    def test_an_endless_generator_is_read_a_bounded_way_ahead(self) -> Any:
        q = self.threadQueue()
        inputs = Pulls(itertools.count())
        got = yield run(take(q.map(hm.square, inputs), 30_000))
        self.assertEqual(got, [x * x for x in range(30_000)])
        # Ahead of the reader: a window of batches out, one batch taken and
        # not yet iterated, and the feed's one input of lookahead.
        window = WINDOW_PER_WORKER * len(q) + 1
        self.assertLessEqual(inputs.pulled, 30_000 + (window + 1) * MAX_CHUNK + 1)
        pulled = inputs.pulled
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(inputs.pulled, pulled)  # stopped: nothing more is read

    @inlineCallbacks
    def test_stopping_early_withdraws_batches_not_started(self) -> Any:
        q = self.threadQueue(1)
        ran = []

        def record(x: int) -> int:
            ran.append(x)
            return hm.nap(0.02)

        got = yield run(take(q.map(record, range(40)), 2))
        self.assertEqual(len(got), 2)
        yield waitUntil(lambda: q.counts()["pending"] == 0)
        self.assertLess(len(ran), 40)
        self.assertLessEqual(len(ran), 2 + WINDOW_PER_WORKER + 1)

    @inlineCallbacks
    def test_breaking_out_of_async_for_withdraws_them_too(self) -> Any:
        q = self.threadQueue(1)
        ran = []

        def record(x: int) -> int:
            ran.append(x)
            return hm.nap(0.02)

        async def firstTwo() -> list[int]:
            got = []
            async for x in q.map(record, range(40)):
                got.append(x)
                if len(got) == 2:
                    break
            return got

        self.assertEqual(len((yield run(firstTwo()))), 2)
        yield waitUntil(lambda: q.counts()["pending"] == 0)
        self.assertLessEqual(len(ran), 2 + WINDOW_PER_WORKER + 1)

    @inlineCallbacks
    def test_a_kept_map_resumes_after_a_break_inside_a_batch(self) -> Any:
        # Breaking out of one ``async for`` inside a batch of 50 and going on
        # with another over the same Deferator loses and repeats nothing.
        q = self.threadQueue(2)

        async def inTwoLoops() -> tuple[list[int], list[int]]:
            dr = q.map(abs, range(-300, 0), chunksize=50)
            first: list[int] = []
            async for x in dr:
                first.append(x)
                if len(first) == 75:
                    break
            second = [x async for x in dr]
            return first, second

        first, second = yield run(inTwoLoops())
        self.assertEqual(first + second, list(range(300, 0, -1)))

    @inlineCallbacks
    def test_every_way_to_take_items_goes_on_where_async_for_left(self) -> Any:
        # ``async for`` hands out a batch's items from the batch itself; the
        # old protocol, moreLeft and stop() all see what it left.
        q = self.threadQueue(2)
        dr = q.map(abs, range(-100, 0), chunksize=50)

        async def firstOf(dr: Any, n: int) -> list[int]:
            got: list[int] = []
            async for x in dr:
                got.append(x)
                if len(got) == n:
                    break
            return got

        self.assertEqual((yield run(firstOf(dr, 10))), list(range(100, 90, -1)))
        self.assertEqual((yield next(dr)), 90)
        self.assertEqual((yield run(firstOf(dr, 2))), [89, 88])
        self.assertTrue(dr.moreLeft)

        async def stopInside(dr: Any) -> list[int]:
            got: list[int] = []
            async for x in dr:
                got.append(x)
                if x == 85:
                    dr.stop()
            return got

        self.assertEqual((yield run(stopInside(dr))), [87, 86, 85])
        self.assertFalse(dr.moreLeft)
        self.assertFalse((yield dr.d))


class ErrorTests(MapBase):
    @inlineCallbacks
    def test_an_input_error_arrives_at_its_item_with_its_type(self) -> Any:
        for ordered in (True, False):
            q = self.threadQueue()
            got: list[Any] = []

            async def consume(q: Any = q, got: list[Any] = got, ordered: bool = ordered) -> None:
                async for x in q.map(hm.failAt, range(10), chunksize=3, ordered=ordered):
                    got.append(x)

            with self.assertRaises(KeyError) as ctx:
                yield run(consume())
            self.assertEqual(ctx.exception.args, (5,))
            if ordered:
                self.assertEqual(got, [0, 1, 2, 3, 4])
            else:  # whatever came first, but all of 5's batch before it
                self.assertTrue({3, 4} <= set(got) and 5 not in got)

    @inlineCallbacks
    def test_an_error_of_the_inputs_iterable(self) -> Any:
        q = self.asyncQueue()

        def inputs() -> Iterator[int]:
            yield from range(4)
            raise LookupError("no more")

        got: list[Any] = []

        async def consume() -> None:
            async for x in q.map(abs, inputs()):
                got.append(x)

        with self.assertRaises(LookupError):
            yield run(consume())
        self.assertEqual(got, [0, 1, 2, 3])

    @inlineCallbacks
    def test_timeout_is_per_input_and_only_the_slow_one_fails(self) -> Any:
        q = self.asyncQueue()

        def slow(x: float) -> Any:
            return deferLater(reactor, x, lambda: x)

        got: list[Any] = []

        async def consume() -> None:
            async for x in q.map(slow, [0, 0, 0, 30, 0, 0], chunksize=6, timeout=0.1):
                got.append(x)

        with self.assertRaises(errors.TimeoutError) as ctx:
            yield run(consume())
        self.assertEqual(got, [0, 0, 0])
        self.assertIn("slow(30)", str(ctx.exception))

    def test_bad_arguments_fail_at_the_call(self) -> None:
        q = self.asyncQueue()
        self.assertRaises(TypeError, q.map, 42, [1])
        self.assertRaises(TypeError, q.map, abs)
        self.assertRaises(TypeError, q.map, abs, 42)
        self.assertRaises(ValueError, q.map, abs, [1], chunksize=0)
        self.assertRaises(ValueError, q.map, abs, [1], chunksize=1.5)
        self.assertRaises(TypeError, q.map, abs, [1], consumer=object())
        self.assertRaises(TypeError, q.map, abs, [1], base=2)
        self.assertRaises(ValueError, q.map, abs, [1], niceness=99)
        self.assertRaises(ValueError, q.map, abs, [1], timeout=-1)

    @inlineCallbacks
    def test_a_shut_down_queue(self) -> Any:
        q = self.asyncQueue()
        yield q.shutdown()
        self.assertRaises(errors.QueueRunError, q.map, abs, [1])


class ProcessTests(TestCase):
    timeout = 60

    def queue(self, n: int = 2) -> ProcessQueue:
        q = ProcessQueue(n, returnFailure=True)
        self.addCleanup(q.shutdown)
        return q

    @inlineCallbacks
    def test_results_and_errors_keep_their_type(self) -> Any:
        q = self.queue()
        got = yield run(take(q.map(math.sqrt, range(20_000))))
        self.assertEqual(got, [math.sqrt(x) for x in range(20_000)])
        got = []

        async def consume() -> None:
            async for x in q.map(hm.failAt, range(100), chunksize=10):
                got.append(x)

        with self.assertRaises(KeyError) as ctx:
            yield run(consume())
        self.assertEqual(got, [0, 1, 2, 3, 4])
        self.assertIn("failAt", ctx.exception.remoteTraceback)  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_an_exception_that_does_not_unpickle_becomes_a_worker_error(self) -> Any:
        q = self.queue(1)
        with self.assertRaises(errors.WorkerError) as ctx:
            yield run(take(q.map(hm.raiseUnrebuildable, range(5), chunksize=5)))
        self.assertIn("Unrebuildable", str(ctx.exception))
        self.assertIn("2/2", str(ctx.exception))

    @inlineCallbacks
    def test_a_batch_that_fails_whole_is_rerun_one_input_per_call(self) -> Any:
        q = self.queue(1)
        # Input 3's result does not pickle: only input 3 fails.
        got = []

        async def consume(f: Any) -> None:
            async for x in q.map(f, range(8), chunksize=8):
                got.append(x)

        with self.assertRaises(pickle.PicklingError):
            yield run(consume(hm.lockAt))
        self.assertEqual(got, [0, 1, 2])
        # Input 5 kills its worker process (twice, as a batch; then on its own).
        got.clear()
        with self.assertRaises(errors.WorkerLost):
            yield run(consume(hm.exitAt))
        self.assertEqual(got, [0, 1, 2, 3, 4])
        self.assertEqual((yield run(take(q.map(abs, [-1])))), [1])


class RemoteTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_map_over_a_remote_queue(self) -> Any:
        from asynqueue.wire import RemoteQueue, WireServer

        key = b"k" * 32
        server = WireServer("tcp:0:interface=127.0.0.1", key=key, threads=False, workers=1)
        yield server.start()
        self.addCleanup(server.stop)
        q = RemoteQueue(f"tcp:127.0.0.1:{server.address.port}", 2, key=key, returnFailure=True)
        self.addCleanup(q.shutdown)
        got = yield run(take(q.map(hm.square, range(5000))))
        self.assertEqual(got, [x * x for x in range(5000)])
        with self.assertRaises(KeyError):
            yield run(take(q.map(hm.failAt, range(10))))


class DaskTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_map_on_a_dask_cluster(self) -> Any:
        try:
            import distributed
        except ImportError:
            raise self.skipTest("dask is not installed") from None
        from asynqueue.dask_worker import DaskWorker

        cluster = distributed.LocalCluster(
            processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0"
        )
        client = distributed.Client(cluster, set_as_default=False)
        self.addCleanup(cluster.close)
        self.addCleanup(client.close)
        q = TaskQueue(DaskWorker(client), returnFailure=True)
        self.addCleanup(q.shutdown)
        got = yield run(take(q.map(hm.square, range(5000))))
        self.assertEqual(got, [x * x for x in range(5000)])
        with self.assertRaises(KeyError):
            yield run(take(q.map(hm.failAt, range(10))))


def test_the_chunk_helper_imports_no_twisted() -> None:
    # The chunk helper runs in lean child processes: no Twisted at import.
    import subprocess
    import sys

    code = "import sys, asynqueue._core._chunk; print('twisted' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
