"""
The shared-secret handshake that opens every remote connection.

Both sides prove that they know the key, with HMAC-SHA256 over fresh random
nonces from both sides (in the manner of ``multiprocessing.connection``'s
authkey), before anything else is sent. Three AUTH frames, whose parts are
raw bytes, never pickles::

    server -> client   CHALLENGE  [VERSION, nonceS]
    client -> server   RESPONSE   [nonceC, HMAC(key, "client" + nonceS + nonceC)]
    server -> client   PROOF      [HMAC(key, "server" + nonceC + nonceS)]
                  or   REFUSED    [b"refused"], then the server closes

The labels keep a MAC of one direction from being replayed in the other,
and each side's fresh nonce keeps an old exchange from being replayed at
all. Until a side has verified the other's MAC it accepts only frames of at
most `HANDSHAKE_MAX` bytes, and it unpickles nothing.

An empty key (no key configured) still runs the handshake; it then proves
nothing, which a server allows only on loopback addresses and UNIX sockets.
"""

from __future__ import annotations

import hmac
import os
from hashlib import sha256
from pathlib import Path
from typing import Any

from ..errors import AuthenticationFailed, WireError

__all__ = [
    "HANDSHAKE_MAX",
    "HANDSHAKE_TIMEOUT",
    "KEY_ENVIRONMENT",
    "VERSION",
    "challenge",
    "checkChallenge",
    "checkProof",
    "checkResponse",
    "loadKey",
    "proof",
    "refused",
    "respond",
    "toKey",
]

#: Protocol name and version, the first part of the server's challenge.
VERSION = b"asynqueue-wire/1"
NONCE_SIZE = 32
MAC_SIZE = 32
REFUSED = b"refused"
#: The longest frame (after its 16-byte header) accepted before the peer
#: has proved it knows the key.
HANDSHAKE_MAX = 256
#: Seconds either side gives the other to complete the handshake.
HANDSHAKE_TIMEOUT = 10.0
#: The environment variable a key is read from when none is given.
KEY_ENVIRONMENT = "ASYNQUEUE_KEY"


def toKey(key: bytes | str | None) -> bytes:
    """A key as bytes (a str is UTF-8 encoded; None is the empty key)."""
    if key is None:
        return b""
    if isinstance(key, str):
        return key.encode("utf-8")
    return bytes(key)


def loadKey(keyFile: str | os.PathLike[str] | None = None, environ: Any = None) -> bytes | None:
    """
    The shared key: the contents of *keyFile* (surrounding whitespace
    removed), else the ``ASYNQUEUE_KEY`` environment variable, else None.

    Raises:
        ValueError: *keyFile* is empty.
        OSError: *keyFile* cannot be read.
    """
    if keyFile is not None:
        key = Path(keyFile).read_bytes().strip()
        if not key:
            raise ValueError(f"the key file {keyFile} is empty")
        return key
    environ = os.environ if environ is None else environ
    value = environ.get(KEY_ENVIRONMENT)
    return value.encode("utf-8") if value else None


def _mac(key: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(key, label + first + second, sha256).digest()


def _parts(parts: list[Any], sizes: tuple[int, ...], what: str) -> list[bytes]:
    if len(parts) != len(sizes):
        raise AuthenticationFailed(f"malformed {what}: {len(parts)} parts")
    out = [bytes(p) for p in parts]
    for part, size in zip(out, sizes, strict=True):
        if len(part) != size:
            raise AuthenticationFailed(f"malformed {what}: a part of {len(part)} bytes")
    return out


def challenge() -> tuple[bytes, list[bytes]]:
    """Server: a fresh nonce and the CHALLENGE parts."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce, [VERSION, nonce]


def checkChallenge(parts: list[Any]) -> bytes:
    """Client: the server's nonce from its CHALLENGE."""
    if parts and bytes(parts[0]) != VERSION:
        raise WireError(
            f"the server speaks {bytes(parts[0])[:40]!r}, not {VERSION.decode()}"
            " (a different asynqueue version, or not an asynqueue server)"
        )
    return _parts(parts, (len(VERSION), NONCE_SIZE), "challenge")[1]


def respond(key: bytes, serverNonce: bytes) -> tuple[bytes, list[bytes]]:
    """Client: a fresh nonce and the RESPONSE parts."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce, [nonce, _mac(key, b"client", serverNonce, nonce)]


def checkResponse(key: bytes, serverNonce: bytes, parts: list[Any]) -> bytes:
    """Server: the client's nonce, if its RESPONSE proves it knows *key*."""
    nonce, mac = _parts(parts, (NONCE_SIZE, MAC_SIZE), "response")
    if not hmac.compare_digest(mac, _mac(key, b"client", serverNonce, nonce)):
        raise AuthenticationFailed("wrong key: the client does not know the key")
    return nonce


def proof(key: bytes, serverNonce: bytes, clientNonce: bytes) -> list[bytes]:
    """Server: the PROOF parts."""
    return [_mac(key, b"server", clientNonce, serverNonce)]


def refused() -> list[bytes]:
    """Server: the REFUSED parts."""
    return [REFUSED]


def checkProof(key: bytes, serverNonce: bytes, clientNonce: bytes, parts: list[Any]) -> None:
    """Client: raises unless the server's PROOF shows that it knows *key*."""
    if len(parts) == 1 and bytes(parts[0]) == REFUSED:
        raise AuthenticationFailed("the server refused the key")
    (mac,) = _parts(parts, (MAC_SIZE,), "proof")
    if not hmac.compare_digest(mac, _mac(key, b"server", clientNonce, serverNonce)):
        raise AuthenticationFailed("the server does not know the key")
