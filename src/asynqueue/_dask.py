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

The code lives in the private package `asynqueue._daskq`, one job a module
(its docstring lists them); this module gathers the names. The Dask workers
import `asynqueue._daskq._daskside` (to unpickle `_Submitted` and friends),
so asynqueue must be installed there.
"""

# Every name the module had before it was split, where it lives now.
from ._daskq._cluster import _applyUpdate as _applyUpdate
from ._daskq._cluster import _closeAll as _closeAll
from ._daskq._cluster import _connect as _connect
from ._daskq._cluster import _onLoop as _onLoop
from ._daskq._cluster import _totalThreads as _totalThreads
from ._daskq._daskside import _NOTHING as _NOTHING
from ._daskq._daskside import _Chunk as _Chunk
from ._daskq._daskside import _closeParked as _closeParked
from ._daskq._daskside import _funcName as _funcName
from ._daskq._daskside import _here as _here
from ._daskq._daskside import _nextChunk as _nextChunk
from ._daskq._daskside import _parked as _parked
from ._daskq._daskside import _parkedLock as _parkedLock
from ._daskq._daskside import _portable as _portable
from ._daskq._daskside import _Puller as _Puller
from ._daskq._daskside import _runUpdateHere as _runUpdateHere
from ._daskq._daskside import _Submitted as _Submitted
from ._daskq._daskside import _UpdatePlugin as _UpdatePlugin
from ._daskq._futures import _CANCELLED as _CANCELLED
from ._daskq._futures import _asFailure as _asFailure
from ._daskq._futures import _cancelReason as _cancelReason
from ._daskq._iterators import _RemoteIterator as _RemoteIterator
from ._daskq._queue import DaskQueue
from ._daskq._worker import ITER_CHUNK, ITER_SECONDS, DaskWorker
from ._daskq._worker import REFRESH_INTERVAL as REFRESH_INTERVAL
from ._daskq._worker import RESTRICTION_KEYS as RESTRICTION_KEYS
from ._daskq._worker import _checkRestrictions as _checkRestrictions
from ._daskq._worker import _Pending as _Pending
from ._daskq._worker import log as log

__all__ = ["ITER_CHUNK", "ITER_SECONDS", "DaskQueue", "DaskWorker"]
