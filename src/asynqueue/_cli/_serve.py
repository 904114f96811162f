"""
``asynqueue serve``: run a worker server (`asynqueue.wire.WireServer`).

::

    asynqueue serve [ENDPOINT | --listen ENDPOINT] [--workers N | --threads] [--key-file FILE]
                    [--allow NAME ...] [--universe MODULE:CLASS] [--client-ca FILE]

Prints ``asynqueue serve listening on ENDPOINT`` (with the port actually
bound) once it listens, logs connections and refusals on stderr, and stops
cleanly (its worker processes reaped) on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from ._main import _positiveInt

__all__ = ["registerServe", "runServe"]


def registerServe(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    # Constants only: the server and its TLS stack load when ``serve`` runs.
    from .._remote._defaults import DEFAULT_DESCRIPTION
    from .._wire._auth import HANDSHAKE_TIMEOUT

    p = subparsers.add_parser(
        "serve",
        help="run a worker server that remote queues attach as workers",
        description=(
            "Run a worker server: remote queues (asynqueue.wire.WireWorker,"
            " RemoteQueue) attach it as a worker, and their tasks run here. Every"
            " connection must prove it knows the shared key (--key-file, or the"
            " ASYNQUEUE_KEY environment variable) before anything else; without a"
            " key the server listens only on loopback addresses and UNIX sockets."
        ),
    )
    p.add_argument(
        "endpoint",
        nargs="?",
        metavar="ENDPOINT",
        help=(
            "a Twisted server endpoint: tcp:PORT:interface=HOST, unix:PATH,"
            " ssl:PORT:privateKey=KEY.pem:certKey=CERT.pem"
            f" (default {DEFAULT_DESCRIPTION})"
        ),
    )
    p.add_argument(
        "-l",
        "--listen",
        metavar="ENDPOINT",
        help="the endpoint to listen on, as with Twisted's twist command (or give it positionally)",
    )
    p.add_argument(
        "-w",
        "--workers",
        metavar="N",
        type=_positiveInt,
        help="how many local workers (default: one per core)",
    )
    p.add_argument(
        "--threads",
        action="store_true",
        help="run tasks in threads instead of worker processes",
    )
    p.add_argument(
        "--key-file",
        metavar="FILE",
        help="read the shared key from FILE (default: the ASYNQUEUE_KEY environment variable)",
    )
    p.add_argument(
        "--allow",
        metavar="NAME",
        action="append",
        help=(
            "allow only these callables (repeat, or separate with commas): dotted names"
            " like math.sqrt or pkg.mod:func. Arguments are still unpickled: not a sandbox"
        ),
    )
    p.add_argument(
        "--universe",
        metavar="MODULE:CLASS",
        help="a WireWorkerUniverse subclass whose public methods clients may call by name",
    )
    p.add_argument(
        "--client-ca",
        metavar="FILE",
        help="with ssl: require client certificates signed by a CA in this PEM file",
    )
    p.add_argument(
        "--max-frame",
        metavar="SIZE",
        default="1G",
        help="largest message accepted from an authenticated client (default 1G)",
    )
    p.add_argument(
        "--handshake-timeout",
        metavar="SECONDS",
        type=float,
        default=HANDSHAKE_TIMEOUT,
        help=f"seconds a new connection has to authenticate (default {HANDSHAKE_TIMEOUT:g})",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    p.set_defaults(run=runServe)


def _configureLogging(quiet: bool) -> None:
    log = logging.getLogger("asynqueue")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def runServe(args: argparse.Namespace) -> int:
    """The ``serve`` subcommand; returns the exit status."""
    from .._remote._server import DEFAULT_DESCRIPTION
    from .._support._system import parseSize
    from .._wire._auth import loadKey
    from ._main import EXIT_FAILED, EXIT_OK, UsageError

    if args.listen and args.endpoint and args.listen != args.endpoint:
        raise UsageError("give the endpoint once: positionally or with --listen")
    args.endpoint = args.listen or args.endpoint or DEFAULT_DESCRIPTION
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # as python -m does; worker processes get the same path
    try:
        key = loadKey(args.key_file)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the key: {e}")
    try:
        maxFrame = parseSize(args.max_frame)
    except ValueError as e:
        raise UsageError(str(e))
    allow = None
    if args.allow is not None:
        allow = [name.strip() for entry in args.allow for name in entry.split(",") if name.strip()]
    _configureLogging(args.quiet)

    from .._remote._server import WireServer

    try:
        server = WireServer(
            args.endpoint,
            args.universe,
            key=key,
            allow=allow,
            workers=args.workers,
            threads=args.threads,
            clientCA=args.client_ca,
            maxFrame=maxFrame or 1 << 30,
            handshakeTimeout=args.handshake_timeout,
        )
    except (ValueError, TypeError) as e:
        raise UsageError(str(e))

    from twisted.internet import reactor

    state = {"status": EXIT_OK}

    def started() -> None:
        def listening(_: Any) -> None:
            print(f"asynqueue serve listening on {server.listeningDescription()}", flush=True)

        def failed(failure: Any) -> None:
            sys.stderr.write(f"asynqueue serve: cannot listen on {args.endpoint}:")
            sys.stderr.write(f" {failure.value}\n")
            state["status"] = EXIT_FAILED
            reactor.stop()  # type: ignore[attr-defined]

        server.start().addCallbacks(listening, failed)

    reactor.callWhenRunning(started)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    sys.stderr.write("asynqueue serve: stopped\n")
    return state["status"]
