"""
`ServerManager`: the original's helper that spawns local wire servers on UNIX
sockets, kept for code written against AsynQueue 0.9.x. Each server is an
``asynqueue serve`` child process.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from .. import errors

__all__ = ["ServerManager"]


class _ServerProtocol(ProcessProtocol):
    """Fires ``ready`` with the pid once the server says it listens."""

    def __init__(self) -> None:
        self.ready: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self._out = b""
        self._err = b""

    def outReceived(self, data: bytes) -> None:
        self._out += data
        if not self.ready.called and b"listening on" in self._out:
            self.ready.callback(self.transport.pid)

    def errReceived(self, data: bytes) -> None:
        self._err = (self._err + data)[-4096:]

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            text = self._err.decode("utf-8", "replace").strip()
            self.ready.errback(errors.WorkerError(f"the wire server did not start: {text}"))
        self.ended.callback(None)


class ServerManager:
    """
    Spawns wire servers (``asynqueue serve``) that offer *universeSpec* (the
    dotted name of a `WireWorkerUniverse` subclass), each on its own UNIX
    socket in a private temporary directory. Without a key (the
    ``ASYNQUEUE_KEY`` environment variable) a server accepts only such local
    connections.

    ``spawn(newSocket())`` fires with the server's pid once it listens;
    `done` stops every server and removes the directory.
    """

    def __init__(self, universeSpec: str | None = None) -> None:
        self.universeSpec = universeSpec
        self._dir = tempfile.mkdtemp(prefix="asynqueue-servers-")
        self._count = 0
        self._servers: dict[int, tuple[Any, _ServerProtocol]] = {}

    def newSocket(self) -> str:
        """A new ``unix:`` endpoint description in my directory."""
        path = os.path.join(self._dir, f"worker-{self._count:03d}.sock")
        self._count += 1
        return f"unix:{path}"

    def spawn(self, description: str, stdio: bool = False) -> Deferred[int]:
        """
        Start a server listening on *description*; fires with its pid.
        (*stdio* is accepted for the original's signature: tasks always
        travel over the socket.)
        """
        from twisted.internet import reactor

        args = [sys.executable, "-m", "asynqueue", "serve", description, "--threads", "-q"]
        if self.universeSpec:
            args += ["--universe", self.universeSpec]
        protocol = _ServerProtocol()
        transport = reactor.spawnProcess(protocol, sys.executable, args, env=dict(os.environ))
        self._servers[transport.pid] = (transport, protocol)
        protocol.ended.addCallback(lambda _: self._servers.pop(transport.pid, None))
        return protocol.ready

    def done(self) -> Deferred[None]:
        """Stop every server I started; fires when they have all exited."""
        ended = []
        for transport, protocol in list(self._servers.values()):
            ended.append(protocol.ended)
            try:
                transport.signalProcess("TERM")
            except Exception:  # already gone; its end is on the way
                pass

        def cleanUp(_: Any) -> None:
            shutil.rmtree(self._dir, ignore_errors=True)

        return gatherResults(ended).addCallback(cleanUp)
