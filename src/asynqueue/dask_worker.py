"""
Dask workers (``pip install "asynqueue[dask]"``): `DaskWorker` runs tasks on a
Dask distributed cluster, `DaskQueue` is a `TaskQueue` with one. Importing
this module imports Dask; ``import asynqueue`` alone does not.
"""

from ._dask import ITER_CHUNK, DaskQueue, DaskWorker

__all__ = ["ITER_CHUNK", "DaskQueue", "DaskWorker"]
