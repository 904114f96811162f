"""
Remote workers: tasks that run on other hosts.

A machine runs a worker server (``asynqueue serve``, or a `WireServer`);
a queue elsewhere attaches `WireWorker` workers connected to it, or is a
`RemoteQueue`. Every connection starts with a mutual challenge-response on
a shared key, before anything is unpickled: only holders of the key can run
code on the server. See ``docs/remote.md``.

::

    # on the server host
    $ ASYNQUEUE_KEY=... asynqueue serve tcp:7341:interface=10.0.0.5 --workers 8

    # elsewhere
    q = RemoteQueue("tcp:10.0.0.5:7341", N=2, key=...)
    result = yield q.call(math.factorial, 50)
"""

from __future__ import annotations

from ._remote._client import RemoteQueue, UniverseMethod, WireWorker
from ._remote._server import WireServer, WireWorkerUniverse

__all__ = ["RemoteQueue", "UniverseMethod", "WireServer", "WireWorker", "WireWorkerUniverse"]
