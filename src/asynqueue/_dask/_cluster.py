"""
The client and the cluster: connecting (starting an embedded cluster),
running updates, closing; and coroutines on the client's event loop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from distributed import Client
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from ._daskside import _runUpdateHere, _UpdatePlugin

log = logging.getLogger("asynqueue")


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
        cluster = LocalCluster(**options)
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
