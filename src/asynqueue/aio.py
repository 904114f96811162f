"""
asyncio on Twisted's asyncio reactor: await our Deferreds.

Code that runs Twisted's ``AsyncioSelectorReactor`` (reactor and asyncio on
one event loop, one thread) can await a queue's calls directly::

    result = await aio.call(queue, f, *args)

Elsewhere (plain asyncio, no Twisted reactor in the loop), use an executor of
`asynqueue.futures` with ``loop.run_in_executor`` instead: its Futures cross
threads safely, which a Deferred does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

__all__ = ["asFuture", "call"]


def asFuture(d: Deferred[Any]) -> asyncio.Future[Any]:
    """
    An asyncio Future of *d* on the running loop (``Deferred.asFuture``).

    Raises:
        RuntimeError: no asyncio loop runs here, or the running reactor is
            not Twisted's asyncio reactor on this loop (then *d* would fire
            in another thread than the Future's).
    """
    loop = asyncio.get_running_loop()
    from twisted.internet import reactor

    if getattr(reactor, "_asyncioEventloop", None) is not loop:
        raise RuntimeError(
            "asynqueue.aio needs Twisted's asyncio reactor running on this event loop"
            " (twisted.internet.asyncioreactor.install(loop)); from plain asyncio, use"
            " loop.run_in_executor with an asynqueue.futures executor"
        )
    return d.asFuture(loop)


async def call(queue: Any, f: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Await ``queue.call(f, *args, **kw)`` (queue keywords work as in `TaskQueue.call`)."""
    return await asFuture(queue.call(f, *args, **kw))
