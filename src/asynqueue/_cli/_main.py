"""
The ``asynqueue`` command line (also ``python -m asynqueue``).

Subcommands::

    asynqueue map MODULE:CALLABLE [ARG ...]   apply a callable to inputs in parallel
    asynqueue info                           versions, cores and installed extras

``map`` prints one JSON object per input on stdout, one line each, as the
results arrive (or in input order with ``--ordered``)::

    {"index": 0, "input": 27, "result": 111}
    {"index": 2, "input": "x", "error": "ValueError: not a positive integer: 'x'"}

``index`` is the input's position (from 0), ``input`` the input as the
callable got it, then either ``result`` (the return value; a value JSON cannot
hold is written as its ``repr``) or ``error`` (the exception's type and
message). What the callables print goes to stderr, so stdout holds only
these lines. Exit status: 0 if every input succeeded, 1 if some failed, 2 for
bad usage, 130 after Ctrl-C (or SIGTERM), 141 when stdout's reader went away.

Adding a subcommand: write a *registrar*, a function ``register(subparsers)``
that adds a parser with ``subparsers.add_parser(NAME, help=...)`` and sets
``run=function(args) -> int`` on it with ``set_defaults``. Name it in
`SUBCOMMANDS` as ``"module:function"``, or call `addSubcommand` before
`main`. A registrar's module is imported only when the command line is
built, and one that cannot be imported (say, its extra is not installed) is
left out.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "SUBCOMMANDS",
    "UsageError",
    "addSubcommand",
    "buildParser",
    "decodeInput",
    "main",
    "resolveCallable",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # as a shell reports death by SIGPIPE

#: Subcommand name -> ``"module:function"`` of its registrar, in help order.
SUBCOMMANDS: dict[str, str] = {
    "map": "asynqueue._cli._main:registerMap",
    "info": "asynqueue._cli._main:registerInfo",
    "serve": "asynqueue._cli._serve:registerServe",
}

#: Optional extras of the project -> the top-level modules each one installs.
EXTRAS: dict[str, tuple[str, ...]] = {
    "dask": ("dask", "distributed"),
    "bench": ("pebble",),
    "docs": ("pydoctor",),
    "tls": ("OpenSSL", "service_identity"),
    "test": ("pytest", "pytest_timeout", "hypothesis"),
}

# Import name -> distribution name, where they differ (for version look-ups).
_DISTRIBUTIONS = {
    "pytest_timeout": "pytest-timeout",
    "pebble": "Pebble",
    "OpenSSL": "pyOpenSSL",
    "service_identity": "service-identity",
}


class UsageError(Exception):
    """Bad usage: `main` prints the message on one line and exits with 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, without the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def addSubcommand(name: str, registrar: str | Callable[[Any], None]) -> None:
    """
    Add (or replace) subcommand *name*.

    Args:
        name: the subcommand, e.g. ``"serve"``.
        registrar: ``register(subparsers)`` itself, or its ``"module:function"``.
    """
    SUBCOMMANDS[name] = registrar  # type: ignore[assignment]


def buildParser() -> argparse.ArgumentParser:
    """The ``asynqueue`` parser, with every subcommand whose registrar imports."""
    from .. import __version__

    parser = _Parser(
        prog="asynqueue",
        description="Run callables in parallel on asynqueue workers.",
    )
    parser.add_argument("--version", action="version", version=f"asynqueue {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for registrar in SUBCOMMANDS.values():
        if isinstance(registrar, str):
            moduleName, _, attribute = registrar.partition(":")
            try:
                register = getattr(importlib.import_module(moduleName), attribute)
            except ImportError:
                continue  # an optional subcommand whose dependencies are missing
        else:
            register = registrar
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (``sys.argv[1:]`` by default); the exit status."""
    try:
        parser = buildParser()
        args = parser.parse_args(argv)
        try:
            return int(args.run(args))
        except UsageError as e:
            sys.stderr.write(f"asynqueue {args.command}: error: {e}\n")
            return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C before the reactor took over
        sys.stderr.write("asynqueue: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away ("| head")
        _silence(sys.stdout)
        return EXIT_BROKEN_PIPE


# ---------------------------------------------------------------- map


def registerMap(subparsers: Any) -> None:
    """Add the ``map`` subcommand."""
    p = subparsers.add_parser(
        "map",
        help="apply a callable to each input in parallel, one JSON line per result",
        description=(
            "Apply MODULE:CALLABLE to each input in parallel and print one JSON line"
            ' per input: {"index": I, "input": X, "result": R} or {"index": I,'
            ' "input": X, "error": "Type: message"}. Inputs are the ARGs, or else'
            " the lines of --input FILE or of stdin; each is decoded as JSON if it"
            " parses and passed as a string otherwise. Exit status: 0 if all"
            " succeeded, 1 if some failed, 2 for bad usage, 130 if interrupted."
        ),
    )
    p.add_argument("callable", metavar="MODULE:CALLABLE", help="e.g. json:dumps")
    p.add_argument("inputs", metavar="ARG", nargs="*", help="inputs (default: read lines)")
    p.add_argument(
        "-i",
        "--input",
        metavar="FILE",
        help="read inputs from FILE, one per line ('-' for stdin; the default without ARGs)",
    )
    p.add_argument(
        "-w",
        "--workers",
        metavar="N",
        type=_positiveInt,
        help="how many workers (default: one per core)",
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument(
        "--processes",
        dest="kind",
        action="store_const",
        const="processes",
        help="run in worker processes (the default)",
    )
    kind.add_argument(
        "--threads",
        dest="kind",
        action="store_const",
        const="threads",
        help="run in threads (for blocking I/O)",
    )
    kind.add_argument(
        "--async",
        dest="kind",
        action="store_const",
        const="async",
        help="run in the reactor thread (callables returning Deferreds or coroutines)",
    )
    p.add_argument(
        "-n",
        "--niceness",
        metavar="N",
        type=_niceness,
        default=0,
        help="queue niceness of the calls, -20 to 20 (default 0)",
    )
    p.add_argument(
        "-t",
        "--timeout",
        metavar="SECONDS",
        type=_positiveFloat,
        help="per call: retried once after a timeout, then an error",
    )
    p.add_argument(
        "--ordered",
        action="store_true",
        help="print results in input order (default: as they complete)",
    )
    p.set_defaults(run=runMap, kind="processes")


def _positiveInt(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positiveFloat(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _niceness(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    if not -20 <= value <= 20:
        raise argparse.ArgumentTypeError(f"must be from -20 to 20, not {value}")
    return value


def resolveCallable(spec: str) -> Callable[..., Any]:
    """
    Import ``MODULE:CALLABLE`` (the name may be dotted: ``pkg.mod:Class.method``).

    The current directory is searched first, as with ``python -m`` (worker
    processes get the same ``sys.path``).

    Raises:
        UsageError: bad spec, the module does not import, or no such callable.
    """
    moduleName, colon, name = spec.partition(":")
    if not colon or not moduleName or not name:
        raise UsageError(f"expected MODULE:CALLABLE, not {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(moduleName)
    except Exception as e:
        raise UsageError(f"cannot import {moduleName!r}: {type(e).__name__}: {e}")
    obj: Any = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {moduleName!r} has no attribute {name!r}")
    if not callable(obj):
        raise UsageError(f"{spec} is not callable")
    return obj  # type: ignore[no-any-return]


def decodeInput(text: str) -> Any:
    """One input: its JSON value if *text* is JSON, else *text* itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _readInputs(args: argparse.Namespace) -> list[Any]:
    if args.inputs:
        if args.input is not None:
            raise UsageError("give inputs as ARGs or with --input, not both")
        return [decodeInput(text) for text in args.inputs]
    if args.input in (None, "-"):
        if _isatty(sys.stdin):
            sys.stderr.write("asynqueue map: reading inputs, one per line (end with Ctrl-D)\n")
        lines: Sequence[str] = sys.stdin.read().splitlines() if sys.stdin else []
    else:
        try:
            lines = Path(args.input).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read {args.input}: {e}")
    return [decodeInput(line) for line in lines if line.strip()]


def _makeQueue(kind: str, workers: int | None) -> Any:
    """A queue of *workers* workers of *kind* (default: one per core)."""
    if kind == "processes":
        try:
            from .._process._parent import ProcessQueue
        except ImportError as e:
            raise UsageError(f"process workers are not available: {e}")
        return ProcessQueue() if workers is None else ProcessQueue(workers)
    n = workers or _usableCores()
    if kind == "threads":
        from .._threads._worker import ThreadQueue

        return ThreadQueue(n)
    from .._core._asyncworker import AsyncWorker
    from .._core._queue import TaskQueue

    return TaskQueue(*[AsyncWorker() for _ in range(n)])


def _jsonable(value: Any) -> Any:
    """What JSON writes for *value* that it cannot write itself."""
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        try:
            return tolist()
        except Exception:
            pass
    return repr(value)


def _encode(record: dict[str, Any]) -> str:
    try:
        return json.dumps(record, ensure_ascii=False, default=_jsonable)
    except (TypeError, ValueError):  # e.g. non-string dict keys, cycles
        return json.dumps(
            {k: v if k in ("index", "error") else repr(v) for k, v in record.items()},
            ensure_ascii=False,
        )


def describeError(failure: Any) -> str:
    """``"Type: message"`` for a Failure (or exception), from a worker's traceback if any."""
    exc = getattr(failure, "value", failure)
    remote = getattr(exc, "remoteTraceback", "")
    if remote:
        lines = [line.strip() for line in str(remote).splitlines() if line.strip()]
        if lines:
            return lines[-1]
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class _MapRun:
    """Feeds inputs to a queue, a window at a time, and writes each outcome."""

    def __init__(
        self,
        f: Callable[..., Any],
        inputs: list[Any],
        queue: Any,
        *,
        niceness: int,
        timeout: float | None,
        ordered: bool,
        out: IO[str],
        bar: Any,
    ) -> None:
        from twisted.internet.defer import Deferred

        self.f = f
        self.inputs = inputs
        self.queue = queue
        self.niceness = niceness
        self.timeout = timeout
        self.ordered = ordered
        self.out = out
        self.bar = bar
        # Enough calls in flight to fill every worker's own pipeline (a process
        # worker takes up to 32 tiny tasks at once), few enough that --ordered
        # buffers little and huge inputs do not all sit in the queue at once.
        self.window = 32 * (1 + max(1, len(queue)))
        self.submitted = 0
        self.done = 0
        self.failed = 0
        self.stopping = False
        self.brokenPipe = False
        self.finished: Deferred[None] = Deferred()
        self._held: dict[int, str] = {}
        self._nextOut = 0
        self._filling = False
        self._refill = False
        self._writeThroughBar = not bar.disable and _isatty(out)

    def start(self) -> Any:
        """Start; returns a Deferred that fires once every input is done."""
        if not self.inputs:
            self.finished.callback(None)
        else:
            self._fill()
        return self.finished

    def _fill(self) -> None:
        if self._filling:  # a call finished synchronously: loop, don't recurse
            self._refill = True
            return
        self._filling = True
        try:
            self._refill = True
            while self._refill:
                self._refill = False
                while (
                    not self.stopping
                    and self.submitted < len(self.inputs)
                    and self.submitted - self.done < self.window
                ):
                    i = self.submitted
                    self.submitted += 1
                    kw: dict[str, Any] = {"niceness": self.niceness, "returnFailure": True}
                    if self.timeout is not None:
                        kw["timeout"] = self.timeout
                    d = self.queue.call(self.f, self.inputs[i], **kw)
                    d.addCallbacks(
                        self._succeeded, self._failed, callbackArgs=(i,), errbackArgs=(i,)
                    )
        finally:
            self._filling = False

    def _succeeded(self, result: Any, i: int) -> None:
        self._finished(i, {"index": i, "input": self.inputs[i], "result": result})

    def _failed(self, failure: Any, i: int) -> None:
        self._finished(i, {"index": i, "input": self.inputs[i], "error": describeError(failure)})

    def _finished(self, i: int, record: dict[str, Any]) -> None:
        if self.stopping:
            return  # interrupted: calls cancelled on the way out say nothing
        self.done += 1
        if "error" in record:
            self.failed += 1
        line = _encode(record)
        try:
            if self.ordered:
                self._held[i] = line
                while self._nextOut in self._held:
                    self._write(self._held.pop(self._nextOut))
                    self._nextOut += 1
            else:
                self._write(line)
        except BrokenPipeError:
            # The reader went away (e.g. "| head"): stop as after Ctrl-C.
            _silence(self.out)
            from twisted.internet import reactor

            reactor.callLater(0, reactor.stop)
            self.stopping = self.brokenPipe = True
            return
        self.bar.update(1)
        if self.done == len(self.inputs):
            if not self.finished.called:
                self.finished.callback(None)
        else:
            self._fill()

    def _write(self, line: str) -> None:
        if self._writeThroughBar:  # both on a terminal: the line goes above the bar
            self.bar.clear()
            self.out.write(line + "\n")
            self.out.flush()
            self.bar.refresh()
        else:
            self.out.write(line + "\n")
            self.out.flush()

    def abort(self) -> Any:
        """Stop now: crash the workers and shut the queue down (a Deferred)."""
        self.stopping = True
        for worker in list(self.queue.workers()):
            self.queue.detachWorker(worker, crash=True)
        return self.queue.shutdown()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _claimStdout() -> IO[str]:
    """
    A private stream to the real stdout, for the JSON lines only.

    File descriptor 1 then points at stderr, so whatever the callables print
    (in this process or in worker processes, which inherit it) cannot mix
    with the results.
    """
    sys.stdout.flush()
    try:
        fd = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError):
        return sys.stdout
    return os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace")


def _silence(stream: IO[str]) -> None:
    """Point *stream* at /dev/null, so a flush after a broken pipe cannot raise."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def runMap(args: argparse.Namespace) -> int:
    """The ``map`` subcommand; returns the exit status."""
    f = resolveCallable(args.callable)
    inputs = _readInputs(args)

    from tqdm import tqdm
    from twisted.internet import reactor

    state: dict[str, Any] = {"run": None, "completed": False, "interrupted": False, "oops": ""}

    def beforeShutdown() -> Any:
        if state["completed"]:
            return None
        # Stopped from outside (SIGINT, SIGTERM) or by a broken pipe.
        state["interrupted"] = True
        try:
            # A second Ctrl-C while the workers are being stopped quits at once.
            signal.signal(signal.SIGINT, lambda *_: os._exit(EXIT_INTERRUPTED))
        except ValueError:
            pass
        return None if state["run"] is None else state["run"].abort()

    # Registered before the workers register theirs, so that on Ctrl-C the
    # queue detaches its workers before they are stopped under it.
    reactor.addSystemEventTrigger("before", "shutdown", beforeShutdown)  # type: ignore[attr-defined]
    out = _claimStdout()  # before the workers start: they inherit stdout
    queue = _makeQueue(args.kind, args.workers)
    bar = tqdm(
        total=len(inputs),
        unit="input",
        file=sys.stderr,
        disable=not _isatty(sys.stderr),
        dynamic_ncols=True,
        mininterval=0.2,
    )
    run = state["run"] = _MapRun(
        f,
        inputs,
        queue,
        niceness=args.niceness,
        timeout=args.timeout,
        ordered=args.ordered,
        out=out,
        bar=bar,
    )

    def started() -> None:
        def allDone(_: Any) -> Any:
            state["completed"] = True
            return queue.shutdown()

        def oops(failure: Any) -> None:
            state["oops"] = describeError(failure)

        d = run.start()
        d.addCallback(allDone)
        d.addErrback(oops)
        d.addBoth(lambda _: reactor.stop() if reactor.running else None)  # type: ignore[attr-defined]

    reactor.callWhenRunning(started)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    bar.close()
    try:
        out.flush()
    except OSError:
        pass
    total = len(inputs)
    if state["oops"]:
        sys.stderr.write(f"asynqueue map: internal error: {state['oops']}\n")
        return EXIT_FAILED
    if run.brokenPipe:
        return EXIT_BROKEN_PIPE
    if state["interrupted"]:
        sys.stderr.write(f"asynqueue map: interrupted after {run.done} of {total} inputs\n")
        return EXIT_INTERRUPTED
    if run.failed:
        sys.stderr.write(f"asynqueue map: {run.failed} of {total} inputs failed\n")
        return EXIT_FAILED
    return EXIT_OK


# ---------------------------------------------------------------- info


def registerInfo(subparsers: Any) -> None:
    """Add the ``info`` subcommand."""
    p = subparsers.add_parser(
        "info",
        help="show versions, core count and installed extras",
        description="Show asynqueue's version, the core count, Python and Twisted"
        " versions and which optional extras are installed.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=runInfo)


def _version(module: str) -> str | None:
    """The installed version of top-level *module*, or None; imports nothing."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(_DISTRIBUTIONS.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return "installed"


def _usableCores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def collectInfo() -> dict[str, Any]:
    """What ``asynqueue info`` shows, as a dict."""
    from .. import __version__

    return {
        "asynqueue": __version__,
        "cores": os.cpu_count() or 1,
        "usable cores": _usableCores(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "executable": sys.executable,
        "platform": platform.platform(),
        "twisted": _version("twisted"),
        "extras": {
            extra: {module: _version(module) for module in modules}
            for extra, modules in EXTRAS.items()
        },
    }


def runInfo(args: argparse.Namespace) -> int:
    """The ``info`` subcommand."""
    info = collectInfo()
    if args.json:
        print(json.dumps(info))
        return EXIT_OK
    for key, value in info.items():
        if key != "extras":
            print(f"{key}: {value}")
    print("extras:")
    for extra, modules in info["extras"].items():
        parts = [f"{m} {v}" if v else f"{m} not installed" for m, v in modules.items()]
        mark = "yes" if all(modules.values()) else "no "
        print(f"  {extra:6} {mark}  ({', '.join(parts)})")
    return EXIT_OK
