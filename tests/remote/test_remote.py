"""Remote workers: real WireServers and WireWorkers over TCP, UNIX sockets and TLS."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import logging
import operator
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import CancelledError, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from asynqueue import TaskQueue, ThreadWorker, errors
from asynqueue._iter._producers import ListConsumer
from asynqueue._remote._server import needsKey, resolveName
from asynqueue._wire import _auth
from asynqueue._wire._codec import AUTH, CALLS
from asynqueue._wire._framing import FrameDecoder, encodeBytes
from asynqueue.wire import RemoteQueue, WireServer, WireWorker, WireWorkerUniverse

from ..helpers import common as helpers
from ..helpers import process as hp
from ..helpers import remote as h
from ..helpers.common import collect, isGone, reap

ROOT = Path(__file__).resolve().parents[2]
KEY = b"a test key, not a secret"

# Servers and their children take longer than in-process workers: a longer limit.
waitUntil = functools.partial(helpers.waitUntil, limit=15.0)


class Universe(WireWorkerUniverse):
    """Methods remote callers may run by name (in the server's reactor)."""

    notCallable = 42

    def double(self, x: int) -> int:
        return 2 * x

    def later(self, x: int) -> Any:
        return deferLater(reactor, 0.01, lambda: x + 1)

    def countTo(self, n: int) -> Any:
        yield from range(n)

    def fail(self) -> None:
        raise ValueError("the universe says no")

    def noteLater(self, path: str, tag: str) -> Any:
        """Note *tag* in *path* a little later (in the server's reactor)."""

        def note() -> str:
            with open(path, "a") as f:
                f.write(f"u {tag}\n")
            return tag

        return deferLater(reactor, 0.05, note)

    def _secret(self) -> str:
        return "private"


class LogRecords(logging.Handler):
    """Collects the ``asynqueue`` logger's records during a test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


class RemoteTestCase(TestCase):
    timeout = 30

    def tmpdir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="aqr"))  # short: UNIX socket paths are limited
        self.addCleanup(shutil.rmtree, path, True)
        return path

    @inlineCallbacks
    def startServer(self, description: str = "tcp:0:interface=127.0.0.1", **kw: Any) -> Any:
        kw.setdefault("key", KEY)
        kw.setdefault("threads", True)
        kw.setdefault("workers", 2)
        server = WireServer(description, **kw)
        yield server.start()
        self.addCleanup(server.stop)
        return server

    @staticmethod
    def clientDescription(server: WireServer) -> str:
        address = server.address
        port = getattr(address, "port", None)
        if port is not None:
            return f"tcp:127.0.0.1:{port}"
        name = address.name
        return f"unix:{name.decode() if isinstance(name, bytes) else name}"

    def makeQueue(self, description: str, N: int = 1, **kw: Any) -> RemoteQueue:
        kw.setdefault("key", KEY)
        q = RemoteQueue(description, N, returnFailure=True, **kw)
        self.addCleanup(q.shutdown)
        return q

    @inlineCallbacks
    def callKeepingTheConnection(self, q: RemoteQueue, f: Any, *args: Any) -> Any:
        """``f(*args)`` on *q*'s one worker, whose connection must stay open throughout."""
        yield q.whenConnected()
        [worker] = q.workers()
        result = yield q.call(f, *args)
        self.assertTrue(worker.connected)
        return result

    def captureLogs(self) -> LogRecords:
        handler = LogRecords()
        log = logging.getLogger("asynqueue")
        log.addHandler(handler)
        level = log.level
        log.setLevel(logging.DEBUG)
        self.addCleanup(log.removeHandler, handler)
        self.addCleanup(log.setLevel, level)
        return handler

    @inlineCallbacks
    def spawnServer(self, description: str, *extra: str, flag: bool = False) -> Any:
        """
        ``python -m asynqueue serve`` (*description* positional, or after
        ``--listen`` with *flag*); fires with (process, client description).
        """
        tmp = self.tmpdir()
        keyFile = tmp / "key"
        keyFile.write_bytes(KEY)
        env = dict(os.environ)
        env.pop("ASYNQUEUE_KEY", None)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        with open(tmp / "stderr", "w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "asynqueue", "serve",
                 *(["--listen"] if flag else []), description,
                 "--workers", "1", "--key-file", str(keyFile), *extra],
                stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT, env=env,
            )  # fmt: skip
        self.addCleanup(reap, proc)
        assert proc.stdout is not None
        line = yield threads.deferToThread(proc.stdout.readline)
        if "listening on" not in line:
            raise AssertionError(f"no server: {line!r} {(tmp / 'stderr').read_text()}")
        listening = line.split("listening on ", 1)[1].strip()
        if listening.startswith("unix:"):
            return proc, listening
        return proc, f"tcp:127.0.0.1:{listening.split(':')[1]}"


class SeriesTest(RemoteTestCase):
    @inlineCallbacks
    def test_a_series_runs_in_sequence_and_other_calls_side_by_side(self) -> Any:
        server = yield self.startServer()  # two worker threads
        q = self.makeQueue(self.clientDescription(server))
        yield q.whenConnected()
        folder = self.tmpdir()
        # One client's plain calls run at once on the server's two workers:
        # each returns True only if the other started while it waited.
        met = yield gatherResults(
            [q.call(hp.meet, str(folder), me, other, 10) for me, other in ("ab", "ba")]
        )
        self.assertEqual(met, [True, True])
        log = str(folder / "log")
        yield gatherResults(
            [q.call(hp.logRun, log, f"s:{i}", 0.002, series="s") for i in range(20)]
        )
        # Each call began after the one before it had ended, in order.
        expected = [word for i in range(20) for word in ("b", f"s:{i}", "e", f"s:{i}")]
        self.assertEqual((folder / "log").read_text().split(), expected)


class LanesTest(RemoteTestCase):
    """A series' calls go to the server before the one running is done (lanes)."""

    @inlineCallbacks
    def connected(self, **serverKw: Any) -> Any:
        server = yield self.startServer(**serverKw)
        q = self.makeQueue(self.clientDescription(server))
        yield q.whenConnected()
        [worker] = q.workers()
        return q, worker

    @inlineCallbacks
    def test_a_series_is_sent_ahead_and_still_runs_in_sequence(self) -> Any:
        q, worker = yield self.connected(threads=False, workers=2)  # process workers
        self.assertTrue(worker.runsInOrder)
        folder = self.tmpdir()
        log = str(folder / "log")
        ds = [q.call(hp.logRun, log, f"s:{i}", 0.002, series="s") for i in range(20)]
        # Handed to the worker together, not one per round trip:
        self.assertGreater(len(worker._conn.inflight), 1)
        self.assertEqual((yield gatherResults(ds)), [f"s:{i}" for i in range(20)])
        expected = [word for i in range(20) for word in ("b", f"s:{i}", "e", f"s:{i}")]
        self.assertEqual((folder / "log").read_text().split(), expected)

    @inlineCallbacks
    def test_a_timeout_hands_back_the_calls_behind_it_to_run_after_the_retry(self) -> Any:
        q, _ = yield self.connected(threads=False, workers=2)
        folder = self.tmpdir()
        log = str(folder / "log")
        slow = q.call(hp.slowTheFirstTime, log, "slow", 20, series="s", timeout=1.0)
        after = [q.call(hp.logRun, log, tag, series="s") for tag in ("a", "b")]
        self.assertEqual((yield slow), "slow")  # its retry
        self.assertEqual((yield gatherResults(after)), ["a", "b"])
        # The first attempt began and was stopped; the retry ran, then the others.
        words = (folder / "log").read_text().split()
        self.assertEqual(
            words, ["b", "slow", "b", "slow", "e", "slow", "b", "a", "e", "a", "b", "b", "e", "b"]
        )

    @inlineCallbacks
    def test_a_universe_method_takes_its_turn_in_the_series(self) -> Any:
        server = yield self.startServer(universe=Universe())
        q = self.makeQueue(self.clientDescription(server))
        yield q.whenConnected()
        folder = self.tmpdir()
        log = str(folder / "log")
        ds = [
            q.call(hp.logRun, log, "a", 0.05, series="s"),
            q.call("noteLater", log, "u", series="s"),
            q.call(hp.logRun, log, "b", 0.05, series="s"),
        ]
        self.assertEqual((yield gatherResults(ds)), ["a", "u", "b"])
        self.assertEqual(
            (folder / "log").read_text().split(), ["b", "a", "e", "a", "u", "u", "b", "b", "e", "b"]
        )

    @inlineCallbacks
    def test_a_cancelled_call_is_dropped_and_its_series_goes_on(self) -> Any:
        server = yield self.startServer(threads=True, workers=2)
        q = self.makeQueue(self.clientDescription(server))
        yield q.whenConnected()
        folder = self.tmpdir()
        log = str(folder / "log")
        blocker = q.call(hp.meet, str(folder), "blocker", "go", 10, series="s")
        dropped = q.call(hp.logRun, log, "x", series="s")
        last = q.call(hp.logRun, log, "y", series="s")
        yield helpers.waitUntil(lambda: (folder / "blocker").exists())
        [session] = server._connections
        self.assertEqual(len(session.calls), 3)  # all three are on the server
        dropped.cancel()
        yield self.assertFailure(dropped, CancelledError)
        # The blocker goes on once the server has heard of the cancel (a
        # call already running there could not be stopped: it is a thread).
        yield helpers.waitUntil(lambda: len(session.calls) == 2)
        (folder / "go").write_text("")
        self.assertIs((yield blocker), True)
        self.assertEqual((yield last), "y")
        self.assertEqual((folder / "log").read_text().split(), ["b", "y", "e", "y"])


class CallsTest(RemoteTestCase):
    @inlineCallbacks
    def test_calls_results_and_errors_over_tcp_and_unix(self) -> Any:
        tcp = yield self.startServer()
        unix = yield self.startServer(f"unix:{self.tmpdir()}/s.sock")
        for server in (tcp, unix):
            q = self.makeQueue(self.clientDescription(server))
            info = yield q.whenConnected()
            self.assertEqual(info[0]["workers"], 2)
            self.assertEqual((yield q.call(h.add, 2, 3)), 5)
            self.assertEqual((yield q.call(lambda x: x * 3, 4)), 12)  # by value
            self.assertIsNone((yield q.call(h.echo, None)))
            self.assertEqual((yield q.call(h.echo, {"a": [1, 2]})), {"a": [1, 2]})
            failure = yield self.assertFailure(q.call(hp.raiseKeyError, "k"), KeyError)
            self.assertIn("raiseKeyError", failure.remoteTraceback)
            error = yield self.assertFailure(q.call(hp.raiseUnrebuildable), errors.WorkerError)
            self.assertEqual(error.typeName, "tests.helpers.process.Unrebuildable")
            yield self.assertFailure(q.call(hp.unpicklableResult), pickle.PicklingError)
            import threading

            yield self.assertFailure(q.call(h.echo, threading.Lock()), pickle.PicklingError)
            results = yield gatherResults([q.call(h.add, i, i) for i in range(300)])
            self.assertEqual(results, [2 * i for i in range(300)])

    @inlineCallbacks
    def test_process_workers_large_data_both_ways(self) -> Any:
        server = yield self.startServer(f"unix:{self.tmpdir()}/s.sock", threads=False, workers=1)
        q = self.makeQueue(self.clientDescription(server))
        size = 30 * 2**20
        self.assertEqual((yield q.call(hp.length, b"\x01" * size)), size)
        data = yield q.call(hp.makeBytes, size)
        self.assertEqual(len(data), size)
        self.assertEqual(data[:3] + data[-3:], b"\xab" * 6)
        pid = yield q.call(h.pid)
        self.assertNotEqual(pid, os.getpid())  # it ran in the server's child

    @inlineCallbacks
    def test_iterators_as_deferators_and_to_consumers(self) -> Any:
        server = yield self.startServer(threads=False, workers=1)
        q = self.makeQueue(self.clientDescription(server))
        dr = yield q.call(h.squares, 3000)  # several batches
        items = []
        for d in dr:
            items.append((yield d))
        self.assertEqual(items, [i * i for i in range(3000)])
        consumer = ListConsumer()
        result = yield q.call(h.squares, 50, consumer=consumer)
        self.assertIs(result, consumer)
        self.assertEqual((yield consumer()), [i * i for i in range(50)])
        self.assertEqual((yield q.call(h.squares, 0)), [])
        dr = yield q.call(hp.failingAfter, 3)
        got = []
        for d in dr:
            try:
                got.append((yield d))
            except ValueError as e:
                got.append(str(e))
        self.assertEqual(got, [0, 1, 2, "gave up after 3"])
        dr = yield q.call(h.squares, 10**9)  # abandoned unfinished: closed on the server
        self.assertEqual((yield next(dr)), 0)
        dr.stop()


class SecurityTest(RemoteTestCase):
    def test_a_key_is_needed_off_loopback(self) -> None:
        offLoopback = (
            "tcp:7341",
            "tcp:7341:interface=0.0.0.0",
            "ssl:7341",
            "tcp:7341:interface=10.1.2.3",
        )
        for description in offLoopback:
            self.assertTrue(needsKey(description), description)
            self.assertRaises(ValueError, WireServer, description)
        loopback = ("tcp:0:interface=127.0.0.1", "unix:/tmp/x.sock", "tcp:0:interface=\\:\\:1")
        for description in loopback:
            self.assertFalse(needsKey(description), description)

    def test_handshake_macs_are_mutual_directional_and_fresh(self) -> None:
        serverNonce, challenge = _auth.challenge()
        self.assertEqual(_auth.checkChallenge(challenge), serverNonce)
        clientNonce, response = _auth.respond(KEY, serverNonce)
        self.assertEqual(_auth.checkResponse(KEY, serverNonce, response), clientNonce)
        proof = _auth.proof(KEY, serverNonce, clientNonce)
        _auth.checkProof(KEY, serverNonce, clientNonce, proof)
        failed = errors.AuthenticationFailed
        self.assertRaises(failed, _auth.checkResponse, b"other key", serverNonce, response)
        self.assertRaises(failed, _auth.checkProof, b"other key", serverNonce, clientNonce, proof)
        # The client's own MAC reflected back is no proof that the server knows the key.
        self.assertRaises(failed, _auth.checkProof, KEY, serverNonce, clientNonce, [response[1]])
        # A response to an earlier challenge does not answer a new one.
        self.assertRaises(failed, _auth.checkResponse, KEY, _auth.challenge()[0], response)
        self.assertRaises(failed, _auth.checkProof, KEY, serverNonce, clientNonce, _auth.refused())
        self.assertRaises(failed, _auth.checkResponse, KEY, serverNonce, [b"short"])
        self.assertRaises(errors.WireError, _auth.checkChallenge, [b"other/1", serverNonce])
        keyFile = self.tmpdir() / "key"
        keyFile.write_bytes(b"  the key\n")
        self.assertEqual(_auth.loadKey(keyFile), b"the key")
        self.assertEqual(_auth.loadKey(environ={"ASYNQUEUE_KEY": "k"}), b"k")
        self.assertIsNone(_auth.loadKey(environ={}))
        keyFile.write_bytes(b"\n")
        self.assertRaises(ValueError, _auth.loadKey, keyFile)

    @inlineCallbacks
    def test_wrong_key_is_refused(self) -> Any:
        server = yield self.startServer()
        logs = self.captureLogs()
        for key in (b"wrong", b""):
            worker = WireWorker(self.clientDescription(server), key=key)
            self.addCleanup(worker.crash)
            failure = yield self.assertFailure(worker.whenConnected(), errors.AuthenticationFailed)
            self.assertIn("refused", str(failure))
        self.assertIn("wrong key", logs.text())
        q = self.makeQueue(self.clientDescription(server))
        self.assertEqual((yield q.call(h.add, 1, 1)), 2)

    @inlineCallbacks
    def test_a_server_of_another_wire_version_is_refused_clearly(self) -> Any:
        from asynqueue._remote import _session

        self.patch(_session, "PROTOCOL_VERSION", 1)
        server = yield self.startServer()
        worker = WireWorker(self.clientDescription(server), key=KEY)
        self.addCleanup(worker.crash)
        failure = yield self.assertFailure(worker.whenConnected(), errors.WorkerError)
        self.assertIn("wire protocol 1", str(failure))
        self.assertIn("same asynqueue version", str(failure))

    @inlineCallbacks
    def test_nothing_is_unpickled_before_authentication(self) -> Any:
        server = yield self.startServer()
        marker = self.tmpdir() / "marker"
        evil = pickle.dumps(h.Evil(str(marker)))
        self.assertLess(len(evil), 200)
        address = ("127.0.0.1", server.address.port)
        # The payload proves itself: unpickling it anywhere makes the marker.
        pickle.loads(evil)
        self.assertTrue(marker.exists())
        marker.unlink()
        evilCalls = encodeBytes(CALLS, [evil])
        oversized = bytearray(encodeBytes(CALLS, [evil]))
        oversized[8:16] = (10**7).to_bytes(8, "big")
        cases = [
            ("instead of the handshake", evilCalls, False),
            ("before reading the challenge", evilCalls, None),
            ("as the handshake's parts", encodeBytes(AUTH, [evil, evil]), False),
            ("after a wrong MAC", "wrong-mac", False),
            ("announcing 10 MB", bytes(oversized), False),
            ("as a HELLO", encodeBytes(16, [evil]), False),
        ]
        for label, payload, _ in cases:
            closed = yield threads.deferToThread(_sendRaw, address, payload, evilCalls)
            self.assertTrue(closed, label)
        self.assertFalse(marker.exists())
        q = self.makeQueue(self.clientDescription(server))
        self.assertEqual((yield q.call(h.add, 1, 2)), 3)
        self.assertFalse(marker.exists())

    @inlineCallbacks
    def test_oversized_frames_close_only_that_connection(self) -> Any:
        server = yield self.startServer(maxFrame=2**20)
        logs = self.captureLogs()
        q = self.makeQueue(self.clientDescription(server))
        other = self.makeQueue(self.clientDescription(server))
        yield gatherResults([q.whenConnected(), other.whenConnected()])
        yield self.assertFailure(q.call(h.echo, b"x" * 2**21), errors.WorkerLost)
        self.assertIn("more than the limit", logs.text())
        self.assertEqual((yield other.call(h.add, 1, 2)), 3)
        self.assertEqual((yield q.call(h.add, 2, 2)), 4)  # reconnected

    @inlineCallbacks
    def test_allow_list_and_universe(self) -> Any:
        server = yield self.startServer(
            universe=Universe(), allow=["operator.add", "tests.helpers.remote:add"]
        )
        q = self.makeQueue(self.clientDescription(server))
        info = yield q.whenConnected()
        self.assertTrue(info[0]["restricted"])
        self.assertEqual((yield q.call(operator.add, 1, 2)), 3)
        self.assertEqual((yield q.call(h.add, 1, 2)), 3)
        marker = self.tmpdir() / "ran"
        failure = yield self.assertFailure(q.call(h.touch, str(marker)), PermissionError)
        self.assertIn("not allowed", str(failure))
        self.assertFalse(marker.exists())  # refused before it ran
        self.assertEqual((yield q.call("double", 21)), 42)
        self.assertEqual((yield q.call("later", 1)), 2)
        dr = yield q.call("countTo", 4)
        self.assertEqual((yield collect(dr)), [0, 1, 2, 3])
        yield self.assertFailure(q.call("fail"), ValueError)
        for name in ("_secret", "notCallable", "nothing", "check", "method"):
            yield self.assertFailure(q.call(name), PermissionError)
        yield q.update("double", 1)  # a universe update runs once, on the server
        self.assertIs(server.universe.wireServer, server)
        self.assertRaises(TypeError, WireWorkerUniverse.check, object())
        self.assertRaises(ValueError, WireServer, "unix:/x", allow=["no.such.thing"])
        self.assertIs(resolveName("os.path:join"), os.path.join)

    @inlineCallbacks
    def test_universe_calls_need_a_universe(self) -> Any:
        server = yield self.startServer()
        q = self.makeQueue(self.clientDescription(server))
        failure = yield self.assertFailure(q.call("double", 2), PermissionError)
        self.assertIn("no universe", str(failure))


def _sendRaw(address: tuple[str, int], payload: Any, follow: bytes) -> bool:
    """Send *payload* to the server; True once it has closed the connection."""
    sock = socket.create_connection(address, timeout=5)
    try:
        if payload is None:
            return True
        decoder = FrameDecoder(_auth.HANDSHAKE_MAX)
        if payload == "wrong-mac":
            parts = _readMessage(sock, decoder).parts
            nonce = _auth.checkChallenge(parts)
            _, response = _auth.respond(b"not the key", nonce)
            sock.sendall(encodeBytes(AUTH, response) + follow)
        else:
            sock.sendall(payload)
        sock.settimeout(5)
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return True
            if not data:
                return True
    except TimeoutError:
        return False
    finally:
        sock.close()


def _readMessage(sock: socket.socket, decoder: FrameDecoder) -> Any:
    while True:
        messages = decoder.feed(sock.recv(4096))
        if messages:
            return messages[0]


class ResilienceTest(RemoteTestCase):
    @inlineCallbacks
    def test_server_killed_mid_task_reruns_it_then_worker_lost(self) -> Any:
        tmp = self.tmpdir()
        markers = tmp / "markers"
        markers.mkdir()
        procA, descA = yield self.spawnServer(f"unix:{tmp}/a.sock")
        procB, descB = yield self.spawnServer(f"unix:{tmp}/b.sock")
        workerA = WireWorker(descA, key=KEY)
        q = TaskQueue(workerA, returnFailure=True)
        self.addCleanup(q.shutdown)
        yield workerA.whenConnected()
        d = q.call(h.markThenSleep, str(markers), 20)
        yield waitUntil(lambda: len(list(markers.iterdir())) == 1)
        workerB = WireWorker(descB, key=KEY)
        q.attachWorker(workerB)
        yield workerB.whenConnected()
        procA.send_signal(signal.SIGKILL)
        yield waitUntil(lambda: len(list(markers.iterdir())) == 2)  # re-run on B
        procB.send_signal(signal.SIGKILL)
        failure = yield self.assertFailure(d, errors.WorkerLost)
        self.assertIn("lost 2 times", str(failure))
        children = [int(p.name) for p in markers.iterdir()]
        yield waitUntil(lambda: all(isGone(pid) for pid in children))
        yield q.shutdown()  # no hang, though both servers are gone

    @inlineCallbacks
    def test_reconnects_to_a_restarted_server_and_replays_updates(self) -> Any:
        description = f"unix:{self.tmpdir()}/s.sock"
        server = yield self.startServer(description, threads=False, workers=1)
        q = self.makeQueue(self.clientDescription(server))
        yield q.update(hp.setState, "color", "green")
        self.assertEqual((yield q.call(hp.getState, "color")), "green")
        firstPid = yield q.call(h.pid)
        yield server.stop()
        d = q.call(hp.getState, "color")  # waits for the server
        yield deferLater(reactor, 0.2, lambda: None)
        yield self.startServer(description, threads=False, workers=1)
        self.assertEqual((yield d), "green")  # a fresh child, the update replayed
        self.assertNotEqual((yield q.call(h.pid)), firstPid)
        # Same TCP port, thread workers.
        server = yield self.startServer()
        port = server.address.port
        q = self.makeQueue(self.clientDescription(server))
        self.assertEqual((yield q.call(h.add, 1, 1)), 2)
        yield server.stop()
        yield self.startServer(f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual((yield q.call(h.add, 2, 2)), 4)

    @inlineCallbacks
    def test_timeouts_abandon_the_task_on_the_server(self) -> Any:
        server = yield self.startServer(threads=False, workers=1)
        q = self.makeQueue(self.clientDescription(server))
        firstPid = yield q.call(h.pid)
        yield self.assertFailure(q.call(h.sleepy, 20, timeout=0.5), errors.TimeoutError)
        # The server cancelled the call in its own queue: its child was
        # interrupted (not killed), and serves the next call at once.
        self.assertEqual((yield q.call(h.pid)), firstPid)

    @inlineCallbacks
    def test_a_worker_without_server_never_hangs_the_queue(self) -> Any:
        description = f"unix:{self.tmpdir()}/nobody.sock"
        worker = WireWorker(description, key=KEY, giveUpAfter=0.3)
        q = TaskQueue(worker, returnFailure=True)
        d = q.call(h.add, 1, 2)
        # It gives up and resigns; it was the last worker, so the call fails.
        error = yield self.assertFailure(d, errors.WorkerError)
        self.assertIn("last worker gave up (could not connect to", str(error))
        self.assertEqual(len(q), 0)
        yield self.assertFailure(worker.whenConnected(), errors.WorkerError)
        yield self.assertFailure(q.call(h.add, 2, 2), errors.WorkerError)  # at once
        yield q.shutdown()
        other = WireWorker(description, key=KEY)
        yield other.stop()  # at once: nothing can finish without a server
        self.assertEqual(other.crash(), [])

    @inlineCallbacks
    def test_clients_share_the_server(self) -> Any:
        server = yield self.startServer(workers=1)
        first = self.makeQueue(self.clientDescription(server))
        second = self.makeQueue(self.clientDescription(server))
        yield gatherResults([first.whenConnected(), second.whenConnected()])
        order: list[str] = []
        ds = [first.call(h.tagAfter, "1", 0.002).addCallback(order.append) for _ in range(40)]
        yield deferLater(reactor, 0.01, lambda: None)
        ds += [second.call(h.tagAfter, "2", 0.002).addCallback(order.append) for _ in range(5)]
        yield gatherResults(ds)
        last = {tag: max(i for i, t in enumerate(order) if t == tag) for tag in "12"}
        self.assertLess(last["2"], last["1"])


class HeartbeatTest(RemoteTestCase):
    """A server that stops answering is given up on; a busy one is not."""

    @inlineCallbacks
    def test_a_frozen_server_is_given_up_on(self) -> Any:
        proc, description = yield self.spawnServer("tcp:0:interface=127.0.0.1")
        # (Cleanups run last first: the server runs on before it is reaped.)
        self.addCleanup(_resume, proc.pid)
        q = self.makeQueue(description, 1, heartbeat=0.1, giveUpAfter=1.0, handshakeTimeout=0.5)
        yield q.whenConnected()
        [remote] = q.workers()
        logs = self.captureLogs()
        folder = self.tmpdir()
        # (It waits for a file "go", which is written only once it runs here.)
        waiting = q.call(hp.meet, str(folder), "started", "go", 30)
        yield helpers.waitUntil(lambda: (folder / "started").exists())
        os.kill(proc.pid, signal.SIGSTOP)  # its kernel still acknowledges: TCP sees nothing wrong
        # It gives up, and resigns: the queue's last worker, so the call fails
        # rather than wait for ever.
        error = yield self.assertFailure(waiting, errors.WorkerError)
        self.assertNotIn(remote, q.workers())
        self.assertIn("the server did not answer for", logs.text())
        self.assertIn("last worker gave up", str(error))
        # Another worker attached: the queue runs calls again.
        (folder / "started").unlink()
        q.attachWorker(ThreadWorker())
        again = q.call(hp.meet, str(folder), "started", "go", 30)
        yield helpers.waitUntil(lambda: (folder / "started").exists())
        (folder / "go").write_text("")
        self.assertIs((yield again), True)

    @inlineCallbacks
    def keptThrough(self, heartbeat: float, f: Any, *args: Any) -> Any:
        """``f(*args)`` on an in-process server, with *heartbeat*; the connection must stay."""
        server = yield self.startServer()
        q = self.makeQueue(self.clientDescription(server), 1, heartbeat=heartbeat)
        return (yield self.callKeepingTheConnection(q, f, *args))

    @inlineCallbacks
    def test_a_busy_server_that_answers_is_kept(self) -> Any:
        # Many heartbeats long; the server's reactor answers meanwhile.
        self.assertEqual((yield self.keptThrough(0.05, h.sleepy, 0.6)), os.getpid())

    @inlineCallbacks
    def test_a_server_taking_a_large_call_is_kept(self) -> Any:
        # Our PING waits behind the call's bytes, so nothing comes back for
        # many heartbeats: the server is taking those bytes, so it is there.
        data = b"x" * (256 * 1024 * 1024)
        self.assertEqual((yield self.keptThrough(0.002, hp.length, data)), len(data))

    @inlineCallbacks
    def test_a_server_sending_a_large_result_is_kept(self) -> Any:
        # No whole message comes back for many heartbeats, but its bytes do.
        size = 256 * 1024 * 1024
        self.assertEqual(len((yield self.keptThrough(0.002, hp.makeBytes, size))), size)


def _resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


class CommandLineTest(RemoteTestCase):
    def test_help(self) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "asynqueue", "serve", "--help"],
            capture_output=True, text=True, cwd=ROOT, timeout=30,
        )  # fmt: skip
        self.assertEqual(proc.returncode, 0)
        self.assertIn("--key-file", proc.stdout)

    def test_refuses_to_listen_off_loopback_without_a_key(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "ASYNQUEUE_KEY"}
        proc = subprocess.run(
            [sys.executable, "-m", "asynqueue", "serve", "tcp:0:interface=0.0.0.0"],
            capture_output=True, text=True, cwd=ROOT, timeout=30, env=env,
        )  # fmt: skip
        self.assertEqual(proc.returncode, 2)
        self.assertIn("without a key", proc.stderr)
        self.assertNotIn("listening", proc.stdout)

    @inlineCallbacks
    def test_listen_takes_the_endpoint_as_twist_does(self) -> Any:
        proc, description = yield self.spawnServer(f"unix:{self.tmpdir()}/l.sock", flag=True)
        q = self.makeQueue(description)
        self.assertEqual((yield q.call(h.add, 2, 3)), 5)
        yield q.shutdown()
        proc.terminate()
        self.assertEqual((yield threads.deferToThread(proc.wait, 20)), 0)
        both = subprocess.run(
            [sys.executable, "-m", "asynqueue", "serve", "unix:a.sock", "--listen", "unix:b.sock"],
            capture_output=True, text=True, cwd=ROOT, timeout=30,
        )  # fmt: skip
        self.assertEqual(both.returncode, 2)
        self.assertIn("give the endpoint once", both.stderr)

    @inlineCallbacks
    def test_serve_stops_cleanly_on_sigterm_and_sigint(self) -> Any:
        for signum in (signal.SIGTERM, signal.SIGINT):
            proc, description = yield self.spawnServer(f"unix:{self.tmpdir()}/c.sock")
            q = self.makeQueue(description)
            child = yield q.call(h.pid)
            self.assertNotEqual(child, proc.pid)
            yield q.shutdown()
            proc.send_signal(signum)
            self.assertEqual((yield threads.deferToThread(proc.wait, 20)), 0)
            yield waitUntil(lambda child=child: isGone(child))  # its worker was reaped


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost and a client certificate, as PEM files."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise SkipTest("TLS tests need the cryptography package")
    now = datetime.datetime.now(datetime.UTC)
    one = datetime.timedelta(days=1)

    def name(text: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def builder(subject: str, issuer: Any, key: Any) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - one)
            .not_valid_after(now + one)
        )

    caKey = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("asynqueue test CA", name("asynqueue test CA"), caKey)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(caKey.public_key()), False)
        .sign(caKey, hashes.SHA256())
    )
    files: dict[str, Path] = {}
    trust = directory / "trust"
    trust.mkdir()
    files["trust"] = trust
    files["ca"] = trust / "ca.pem"
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            builder(f"asynqueue test {role}", ca.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()), False
            )
        )
        if role == "server":
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = b.sign(caKey, hashes.SHA256())
        files[f"{role}Key"] = directory / f"{role}.key"
        files[f"{role}Key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        files[f"{role}Cert"] = directory / f"{role}.pem"
        files[f"{role}Cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


class TLSTest(RemoteTestCase):
    def setUp(self) -> None:
        try:
            import OpenSSL  # noqa: F401
            import service_identity  # noqa: F401
        except ImportError:
            raise SkipTest("TLS tests need pyOpenSSL and service_identity (Twisted[tls])")

    @inlineCallbacks
    def test_tls_with_client_certificates(self) -> Any:
        tmp = self.tmpdir()
        pem = _certificates(tmp)
        server = yield self.startServer(
            f"ssl:0:interface=127.0.0.1:privateKey={pem['serverKey']}:certKey={pem['serverCert']}",
            clientCA=str(pem["ca"]),
        )
        base = (
            f"ssl:host=127.0.0.1:port={server.address.port}:caCertsDir={pem['trust']}"
            ":hostname=localhost"
        )
        q = self.makeQueue(f"{base}:certKey={pem['clientCert']}:privateKey={pem['clientKey']}")
        self.assertEqual((yield q.call(h.add, 20, 22)), 42)
        size = 5 * 2**20
        self.assertEqual((yield q.call(hp.length, b"\x02" * size)), size)
        self.assertEqual(len((yield q.call(hp.makeBytes, size))), size)
        dr = yield q.call(h.squares, 500)
        self.assertEqual((yield collect(dr)), [i * i for i in range(500)])
        # Without a client certificate, no connection.
        worker = WireWorker(base, key=KEY, giveUpAfter=0.5)
        self.addCleanup(worker.crash)
        yield self.assertFailure(worker.whenConnected(), errors.WorkerError)

    @inlineCallbacks
    def keptThroughTLS(self, heartbeat: float, f: Any, *args: Any) -> Any:
        """``f(*args)`` over TLS with *heartbeat*; the connection must stay."""
        pem = _certificates(self.tmpdir())
        server = yield self.startServer(
            f"ssl:0:interface=127.0.0.1:privateKey={pem['serverKey']}:certKey={pem['serverCert']}"
        )
        q = self.makeQueue(
            f"ssl:host=127.0.0.1:port={server.address.port}:caCertsDir={pem['trust']}"
            ":hostname=localhost",
            heartbeat=heartbeat,
        )
        return (yield self.callKeepingTheConnection(q, f, *args))

    @inlineCallbacks
    def test_a_server_sending_a_large_result_over_tls_is_kept(self) -> Any:
        # No whole message comes back for many heartbeats, but its bytes do
        # (counted as the TLS transport hands them over).
        size = 128 * 1024 * 1024
        self.assertEqual(len((yield self.keptThroughTLS(0.01, hp.makeBytes, size))), size)

    @inlineCallbacks
    def test_a_server_taking_a_large_call_over_tls_is_kept(self) -> Any:
        data = b"x" * (128 * 1024 * 1024)
        self.assertEqual((yield self.keptThroughTLS(0.01, hp.length, data)), len(data))

    @inlineCallbacks
    def test_tls_server_certificate_is_verified(self) -> Any:
        tmp = self.tmpdir()
        pem = _certificates(tmp)
        other = _certificates(self.tmpdir())  # a CA that did not sign the server's
        server = yield self.startServer(
            f"ssl:0:interface=127.0.0.1:privateKey={pem['serverKey']}:certKey={pem['serverCert']}"
        )
        port = server.address.port
        q = self.makeQueue(
            f"ssl:host=127.0.0.1:port={port}:caCertsDir={pem['trust']}:hostname=localhost"
        )
        self.assertEqual((yield q.call(h.add, 1, 2)), 3)
        worker = WireWorker(
            f"ssl:host=127.0.0.1:port={port}:caCertsDir={other['trust']}:hostname=localhost",
            key=KEY,
            giveUpAfter=0.5,
        )
        self.addCleanup(worker.crash)
        yield self.assertFailure(worker.whenConnected(), errors.WorkerError)
