"""
The client and the cluster: connecting (starting an embedded cluster),
running updates, closing; and coroutines on the client's event loop.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any

from distributed import Client
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from ._daskside import _runUpdateHere, _UpdatePlugin, _workerProfiles

log = logging.getLogger("asynqueue")

# Python 3.11 can deadlock a process whose Dask worker samples its threads
# (sys._current_frames) while the garbage collector runs: one thread holds the
# GIL and waits for the interpreter's thread-list lock, the other the reverse
# (CPython gh-106883, fixed in 3.12). Every thread of the process stops, the
# reactor's too, and no Deferred ever fires. Dask's statistical profiler is
# what samples, ten times a second; it only feeds the dashboard.
PROFILER_DEADLOCKS = sys.version_info < (3, 12)
PROFILER_KEY = "distributed.worker.profile.enabled"


def _warnIfProfilerCanDeadlock(client: Client) -> None:
    """Log a warning naming the Dask workers that run the 3.11 profiler."""
    try:
        risky = [address for address, on in client.run(_workerProfiles).items() if on]
    except Exception:  # an old or odd cluster: only a diagnosis was lost
        log.debug("Could not ask the Dask workers about their profiler", exc_info=True)
        return
    if risky:
        log.warning(
            "Dask workers %s run Dask's profiler on Python 3.11, which can deadlock"
            " their process (CPython gh-106883); start them with %s set to False",
            ", ".join(sorted(risky)),
            PROFILER_KEY,
        )


# ------------------------------------------------------------ blocking helpers
#
# Run in the reactor's thread pool, never in the reactor thread.


def _connect(
    address: Any,
    clusterOptions: dict[str, Any],
    allowedFailures: int | None,
    connectTimeout: float | None,
) -> tuple[Client, Any, bool, int]:
    """Connect (starting an embedded cluster if *address* is None)."""
    cluster = None
    own = True
    timeout = {} if connectTimeout is None else {"timeout": connectTimeout}
    if isinstance(address, Client):
        client, own = address, False
    elif address is None:
        from distributed import LocalCluster

        options: dict[str, Any] = {"dashboard_address": ":0"}
        options.update(clusterOptions)
        schedulerKw = dict(options.get("scheduler_kwargs") or {})
        schedulerKw.setdefault("allowed_failures", allowedFailures or 0)
        options["scheduler_kwargs"] = schedulerKw
        allowedFailures = None  # done
        cluster = _startLocalCluster(LocalCluster, options)
        try:
            client = Client(cluster, set_as_default=False, **timeout)
        except BaseException:
            cluster.close()
            raise
    elif isinstance(address, str) or hasattr(address, "scheduler_address"):
        client = Client(address, set_as_default=False, **timeout)
    else:
        raise TypeError(
            "DaskWorker needs a scheduler address, a distributed.Client,"
            f" a Dask cluster or None, not {address!r}"
        )
    try:
        if PROFILER_DEADLOCKS and cluster is None:
            _warnIfProfilerCanDeadlock(client)
        if allowedFailures is not None:
            n = int(allowedFailures)
            client.run_on_scheduler(
                lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", n)
            )
        threads = sum(client.nthreads().values())
    except BaseException:
        _closeAll(client if own else None, cluster, own, [], 10.0)
        raise
    return client, cluster, own, threads


def _startLocalCluster(factory: Any, options: dict[str, Any]) -> Any:
    """The embedded cluster, without the profiler where it can deadlock."""
    if not PROFILER_DEADLOCKS:
        return factory(**options)
    import dask

    # Workers read the setting as they start (a nanny passes it to its child).
    with dask.config.set({PROFILER_KEY: False}):
        return factory(**options)


def _applyUpdate(
    client: Client,
    f: Callable[..., Any],
    args: tuple[Any, ...],
    kw: dict[str, Any],
    pluginName: str | None,
) -> dict[str, Any]:
    """Run ``f`` on every Dask worker now; register it for joiners if named."""
    ran = client.run(_runUpdateHere, f, args, kw)
    if pluginName is not None:
        plugin = _UpdatePlugin(f, args, kw, skip=[wid for wid, _ in ran.values()])
        client.register_plugin(plugin, name=pluginName)
    return {address: result for address, (_, result) in ran.items()}


def _closeAll(
    client: Client | None,
    cluster: Any,
    ownClient: bool,
    plugins: list[str],
    timeout: float,
) -> None:
    """Unregister our plugins, then close our client and cluster."""
    if client is not None and client.status == "running":
        for name in plugins:
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(name)
    if client is not None and ownClient:
        try:
            client.close(timeout=timeout)
        except Exception as e:
            log.warning("Closing the Dask client failed: %s", e)
    if cluster is not None:
        cluster.close(timeout=timeout)


# ------------------------------------------------------------ the client's loop
#
# Coroutines on the client's event loop, and how the reactor runs one there.


async def _totalThreads(client: Client) -> int:
    return sum((await client.nthreads(asynchronous=True)).values())


def _onLoop(reactor: Any, client: Client, coroutineFunction: Any, *args: Any) -> Deferred[Any]:
    """Run a coroutine on the client's loop; a Deferred of its result, in the reactor."""
    d: Deferred[Any] = Deferred()

    async def runner() -> None:
        try:
            value = await coroutineFunction(*args)
        except BaseException as e:
            reactor.callFromThread(d.errback, Failure(e))
        else:
            reactor.callFromThread(d.callback, value)

    try:
        client.loop.add_callback(runner)
    except Exception as e:
        return fail(e)
    return d
