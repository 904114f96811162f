"""
`DaskWorker` and `DaskQueue`, in parts (see `asynqueue._dask` for the design).

`_daskside` runs on the Dask workers: the call we submit, the iterators
parked there, updates. The rest runs where the queue is: `_cluster`
(connecting to and closing the client and cluster, updates, the client's
loop), `_futures` (finished Dask futures as outcomes of our tasks),
`_iterators` (the caller's end of an iterator result), `_worker` (the
`DaskWorker`) and `_queue` (the `DaskQueue`).

Every module here imports Dask distributed, so this ``__init__`` checks that
it is installed, once, for a clear error.
"""

try:
    import cloudpickle  # noqa: F401
    import distributed  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"asynqueue's Dask worker needs Dask distributed ({e}): pip install 'asynqueue[dask]'"
    ) from e
