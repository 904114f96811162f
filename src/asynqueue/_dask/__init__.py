"""
`DaskWorker` and `DaskQueue`: tasks run on a Dask distributed cluster.

Who decides what
----------------
Our queue keeps scheduling: niceness, series order and fairness, doNext and
doLast, qualifications. A DaskWorker only takes as many tasks as it has
*slots* (by default, per cluster thread, enough to cover about one Dask round
trip of work: one for long tasks, up to 16 for trivial ones): its ``run``
Deferred fires again only while fewer than that many tasks are in flight. So
Dask never holds more than about a round trip of work of ours, and what starts
next on the cluster is what our scheduler picked. Dask's own ``priority=``
gets ``-niceness`` as a hint, nothing more.

Data flow
---------
``run(task)`` submits the call from the reactor thread (``Client.submit`` does
not block) under a unique key, with ``retries=0``. Dask runs the done callback
of each future in its callback thread; those collect the futures in a batch and
one coroutine on the client's event loop gathers the results of the whole
batch, then wakes the reactor once (``callFromThread``) to report them. The
reactor never waits on the cluster.

On the Dask workers, `_Submitted` runs the call. It turns an exception into one
that survives the trip (original type, plus a ``remoteTraceback`` text
attribute) and an iterator result into its first chunk (`_Chunk`); the rest
stays on that Dask worker and comes in further chunks when the caller's
`Deferator` asks for it.

Faults
------
- A task whose Dask worker dies is reported lost (status ``d``); the queue re-runs
  it once, then fails it with `errors.WorkerLost`. Dask must not re-run it by
  itself: an embedded cluster is made with ``allowed_failures=0``, so the
  scheduler gives up at once (``KilledWorker``); for an existing cluster pass
  ``allowedFailures=0``.
- When the connection to the scheduler is lost, the client cancels every
  future; those tasks are reported lost, and so is every task run until the
  client is connected again, so no call waits forever.
- A timeout cancels the Dask future. Dask cannot stop a thread that is running
  user code: that thread stays busy until the call returns.

The parts, one job a module: `_daskside` runs on the Dask workers (the call
we submit, the iterators parked there, updates); the Dask workers import it to
unpickle `_Submitted` and friends, so asynqueue must be installed there. The
rest runs where the queue is: `_cluster` (connecting to and closing the client
and cluster, updates, the client's loop), `_futures` (finished Dask futures as
outcomes of our tasks), `_iterators` (the caller's end of an iterator result),
`_worker` (the `DaskWorker`) and `_queue` (the `DaskQueue`).

This package is the one door: the public `asynqueue.dask_worker` and the
package's lazy names import from here. Every module here imports Dask
distributed, so this ``__init__`` checks, once, that it is installed.
"""

from typing import Any

try:
    import cloudpickle  # noqa: F401
    import distributed  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"asynqueue's Dask worker needs Dask distributed ({e}): pip install 'asynqueue[dask]'"
    ) from e

__all__ = ["ITER_CHUNK", "ITER_SECONDS", "DaskQueue", "DaskWorker"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: the Dask workers import `_daskside` through this
    # package and should not pay for the queue side (Twisted, our core).
    if name == "DaskQueue":
        from ._queue import DaskQueue

        return DaskQueue
    if name in ("ITER_CHUNK", "ITER_SECONDS", "DaskWorker"):
        from . import _worker

        return getattr(_worker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
