"""
A WireServer under fire: random, truncated and oversized frames, garbage
handshakes, slow and surplus clients. It must close each bad connection,
never unpickle anything before a handshake succeeded, and go on serving good
clients. A seeded random loop, bounded in count and time.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from asynqueue._wire import _auth
from asynqueue._wire._codec import ABANDON, AUTH, CALLS, CLOSE, EXIT, NEXT
from asynqueue._wire._framing import (
    BYTES_BIT,
    FLAG_BYTES,
    HEADER,
    SMALL_MESSAGE,
    FrameDecoder,
    encodeBytes,
)
from asynqueue.wire import RemoteQueue, WireServer

from ..helpers import remote as h

KEY = b"fuzzing key"
SEED = 20240611
CASES = 240
MAX_FRAME = 256 * 1024  # above SMALL_MESSAGE: large frames are read in pieces
KINDS = [AUTH, CALLS, NEXT, CLOSE, EXIT, ABANDON, 0, 16, 17, 18, 19, 255]


def _frame(rng: random.Random, kind: int, parts: list[bytes]) -> bytes:
    data = encodeBytes(kind, parts)
    roll = rng.random()
    if roll < 0.2:  # truncated
        return data[: rng.randrange(len(data) + 1)]
    if roll < 0.3:  # a lying header
        nparts = rng.choice([0, 1, len(parts), 2**32 - 1])
        length = rng.choice([0, 7, MAX_FRAME + 1, 2**40, 2**64 - 1, len(data) - 16])
        return HEADER.pack(kind, rng.randrange(256), nparts, max(0, length)) + data[16:]
    if roll < 0.4:  # parts marked immutable, honestly or not, some of them large
        parts = parts + [os.urandom(SMALL_MESSAGE + rng.randrange(1000))] * rng.randrange(2)
        marked = [len(p) | (BYTES_BIT if rng.random() < 0.5 else 0) for p in parts]
        if marked and rng.random() < 0.3:
            marked[rng.randrange(len(marked))] += rng.choice([-1, 1, 2**40])  # wrong sum
        table = struct.pack(f"!{len(parts)}Q", *[m % 2**64 for m in marked])
        body = table + b"".join(parts)
        return (
            HEADER.pack(kind, FLAG_BYTES, len(parts), 8 * len(parts) + sum(map(len, parts))) + body
        )
    return data


def _junk(rng: random.Random, evil: bytes) -> bytes:
    return rng.choice([evil, os.urandom(rng.randrange(0, 64)), pickle.dumps(rng.random())])


def makeCase(rng: random.Random, evil: bytes) -> tuple[str, bool, list[bytes]]:
    """(label, authenticate first?, chunks to send)."""
    kind = rng.choice(["garbage", "frame", "auth", "wrong-mac", "authed"])
    if kind == "garbage":
        data = os.urandom(rng.randrange(0, 600))
        if rng.random() < 0.3:
            data = evil + data
        return kind, False, [data]
    if kind == "frame":
        parts = [_junk(rng, evil) for _ in range(rng.randrange(0, 4))]
        return kind, False, [_frame(rng, rng.choice(KINDS), parts)]
    if kind == "auth":
        sizes = [rng.choice([0, 1, 31, 32, 33, 200]) for _ in range(rng.randrange(0, 4))]
        return kind, False, [_frame(rng, AUTH, [os.urandom(n) for n in sizes])]
    if kind == "wrong-mac":
        return kind, False, ["wrong-mac", _frame(rng, CALLS, [evil])]
    chunks: list[Any] = []
    for _ in range(rng.randrange(1, 4)):
        frameKind = rng.choice(KINDS)
        if frameKind == CALLS and rng.random() < 0.5:
            envelope = pickle.dumps(rng.choice([[(1, 5, 0)], [(1, 1, 0)], [("x", 1, 0)], [], None]))
            parts = [envelope, *[_junk(rng, b"") for _ in range(rng.randrange(0, 3))]]
        elif frameKind in (NEXT, CLOSE, ABANDON) and rng.random() < 0.5:
            parts = [pickle.dumps(rng.choice([(1, 10), [1, 2], (None, None), "x"]))]
        else:
            parts = [os.urandom(rng.randrange(0, 100)) for _ in range(rng.randrange(0, 3))]
        chunks.append(_frame(rng, frameKind, parts))
    return kind, True, chunks


def runCases(address: tuple[str, int], cases: list[Any], deadline: float) -> int:
    """Play every case on its own connection; returns how many were played."""
    played = 0
    for _, authenticate, chunks in cases:
        if time.monotonic() > deadline:
            break
        sock = socket.create_connection(address, timeout=2)
        try:
            decoder = FrameDecoder(_auth.HANDSHAKE_MAX)
            nonce = b""
            if authenticate or "wrong-mac" in chunks:
                nonce = _auth.checkChallenge(_read(sock, decoder).parts)
            if authenticate:
                clientNonce, parts = _auth.respond(KEY, nonce)
                sock.sendall(encodeBytes(AUTH, parts))
                _auth.checkProof(KEY, nonce, clientNonce, _read(sock, decoder).parts)
            for chunk in chunks:
                if chunk == "wrong-mac":
                    chunk = encodeBytes(AUTH, _auth.respond(b"not the key", nonce)[1])
                try:
                    sock.sendall(chunk)
                except OSError:
                    break  # closed by the server already
            _drain(sock, 0.2)
        finally:
            sock.close()
        played += 1
    return played


def _read(sock: socket.socket, decoder: FrameDecoder) -> Any:
    while True:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed")
        messages = decoder.feed(data)
        if messages:
            return messages[0]


def _drain(sock: socket.socket, seconds: float) -> bool:
    """Read until the server closes (True) or *seconds* pass (False)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


class FuzzTest(TestCase):
    timeout = 30

    @inlineCallbacks
    def startServer(self, **kw: Any) -> Any:
        server = WireServer(
            "tcp:0:interface=127.0.0.1",
            key=KEY,
            threads=True,
            workers=1,
            maxFrame=MAX_FRAME,
            handshakeTimeout=1.0,
            **kw,
        )
        yield server.start()
        self.addCleanup(server.stop)
        return server

    @inlineCallbacks
    def assertServes(self, server: WireServer) -> Any:
        q = RemoteQueue(f"tcp:127.0.0.1:{server.address.port}", 1, KEY, returnFailure=True)
        try:
            self.assertEqual((yield q.call(h.add, 20, 22)), 42)
        finally:
            yield q.shutdown()

    def marker(self) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="aqfuzz"))
        self.addCleanup(shutil.rmtree, directory, True)
        return directory / "unpickled"

    @inlineCallbacks
    def test_random_and_truncated_frames_and_garbage_handshakes(self) -> Any:
        server = yield self.startServer()
        marker = self.marker()
        evil = pickle.dumps(h.Evil(str(marker)))
        rng = random.Random(SEED)
        cases = [makeCase(rng, evil) for _ in range(CASES)]
        address = ("127.0.0.1", server.address.port)
        for start in range(0, len(cases), 60):
            played = yield threads.deferToThread(
                runCases, address, cases[start : start + 60], time.monotonic() + 8
            )
            self.assertGreater(played, 0)
            yield self.assertServes(server)  # still up after every batch
            preauth = [c for c in cases[: start + 60] if not c[1]]
            self.assertTrue(preauth)
            self.assertFalse(marker.exists(), "something was unpickled before authentication")
        yield waitUntil(lambda: server.connections == 0)

    @inlineCallbacks
    def test_slow_loris_is_cut_off(self) -> Any:
        server = yield self.startServer()
        address = ("127.0.0.1", server.address.port)

        def dribble() -> bool:
            sock = socket.create_connection(address, timeout=5)
            try:
                nonce = _auth.checkChallenge(_read(sock, FrameDecoder(256)).parts)
                response = encodeBytes(AUTH, _auth.respond(KEY, nonce)[1])
                for byte in response[:-1]:  # never quite finishes
                    try:
                        sock.sendall(bytes([byte]))
                    except OSError:
                        return True
                    if _drain(sock, 0.1):
                        return True
                return False
            finally:
                sock.close()

        self.assertTrue((yield threads.deferToThread(dribble)))
        yield self.assertServes(server)

    @inlineCallbacks
    def test_surplus_unauthenticated_connections_are_closed(self) -> Any:
        server = yield self.startServer(maxUnauthenticated=4)
        address = ("127.0.0.1", server.address.port)

        def crowd() -> int:
            socks = [socket.create_connection(address, timeout=5) for _ in range(10)]
            try:
                time.sleep(0.2)
                return sum(_closedWithoutChallenge(s) for s in socks)
            finally:
                for s in socks:
                    s.close()

        refused = yield threads.deferToThread(crowd)
        self.assertEqual(refused, 6)
        yield waitUntil(lambda: server.connections == 0)
        yield self.assertServes(server)


def _closedWithoutChallenge(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@inlineCallbacks
def waitUntil(predicate: Callable[[], bool], limit: float = 10.0) -> Any:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {predicate}")
        yield deferLater(reactor, 0.01, lambda: None)
