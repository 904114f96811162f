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
import importlib.util
import json
import os
import platform
import signal
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn

from .._support._system import cores

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
    "bench": ("pebble", "joblib"),
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
    from .._support._version import __version__

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
            " parses and passed as a string otherwise. Inputs are read as they"
            " come (a stream takes constant memory) and sent in batches: one input"
            " per call while calls are slow, more while they are fast (--chunksize"
            " fixes the size). Exit status: 0 if all succeeded, 1 if some failed,"
            " 2 for bad usage, 130 if interrupted."
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
        help="per input: retried once after a timeout, then an error line",
    )
    p.add_argument(
        "--ordered",
        action="store_true",
        help="print results in input order (default: as they complete)",
    )
    p.add_argument(
        "-c",
        "--chunksize",
        metavar="N",
        type=_positiveInt,
        help="send N inputs per call (default: adapt, from 1 for slow callables"
        " up to thousands for fast ones)",
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


def _inputFeed(args: argparse.Namespace, reactor: Any) -> tuple[Any, int | None]:
    """The inputs as a feed for `MapRun` (texts, not decoded yet), and their number if known."""
    from .._core._map import IteratorFeed

    if args.inputs:
        if args.input is not None:
            raise UsageError("give inputs as ARGs or with --input, not both")
        return IteratorFeed(iter(args.inputs)), len(args.inputs)
    if args.input in (None, "-"):
        if sys.stdin is None:
            return IteratorFeed(iter(())), 0
        if _isatty(sys.stdin):
            sys.stderr.write("asynqueue map: reading inputs, one per line (end with Ctrl-D)\n")
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):  # not a real file (tests, embedding)
            lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
            return IteratorFeed(iter(lines)), len(lines)
    else:
        try:
            fd = os.open(args.input, os.O_RDONLY)
        except OSError as e:
            raise UsageError(f"cannot read {args.input}: {e}")
    return LineFeed(fd, reactor), None


class LineFeed:
    """
    The non-blank lines of file descriptor *fd*, read by a thread of their own.

    A feed for `MapRun` (see `asynqueue._core._map.IteratorFeed`). The thread reads
    blocks of whatever is there and hands over their lines; it waits while
    `MAX_BLOCKS` blocks are not taken yet, so a long stream takes constant
    memory, and the reactor never waits for a slow writer.
    """

    MAX_BLOCKS = 8
    BLOCK_BYTES = 1 << 16

    def __init__(self, fd: int, reactor: Any) -> None:
        import queue
        import threading
        from collections import deque

        self._reactor = reactor
        self._blocks: queue.Queue[list[str] | None] = queue.Queue(self.MAX_BLOCKS)
        self._buffer: deque[str] = deque()
        self._eof = False
        self.count = 0  # lines taken so far
        self.error: Any = None
        self.onMore: Callable[[], None] | None = None
        threading.Thread(
            target=self._read, args=(fd,), name="asynqueue map: inputs", daemon=True
        ).start()

    @property
    def exhausted(self) -> bool:
        return self._eof and not self._buffer

    def take(self, n: int) -> list[str]:
        buffer = self._buffer
        while len(buffer) < n and not self._eof:
            try:
                block = self._blocks.get_nowait()
            except Exception:  # queue.Empty: nothing more yet
                break
            if block is None:
                self._eof = True
            else:
                buffer.extend(block)
        k = min(n, len(buffer))
        self.count += k
        return [buffer.popleft() for _ in range(k)]

    def _arrived(self) -> None:
        if self.onMore is not None:
            self.onMore()

    def _read(self, fd: int) -> None:
        rest = b""
        try:
            while True:
                data = os.read(fd, self.BLOCK_BYTES)
                if not data:
                    break
                *lines, rest = (rest + data).split(b"\n")
                self._hand([line for line in lines if line.strip()])
            if rest.strip():
                self._hand([rest])
        except OSError as e:
            sys.stderr.write(f"asynqueue map: reading inputs: {e}\n")
        finally:
            self._blocks.put(None)
            self._reactor.callFromThread(self._arrived)

    def _hand(self, lines: list[bytes]) -> None:
        if lines:
            self._blocks.put([line.decode("utf-8", "replace").rstrip("\r") for line in lines])
            self._reactor.callFromThread(self._arrived)


def _makeQueue(kind: str, workers: int | None) -> Any:
    """A queue of *workers* workers of *kind* (default: one per core)."""
    if kind == "processes":
        try:
            from .._process._parent import ProcessQueue
        except ImportError as e:
            raise UsageError(f"process workers are not available: {e}")
        return ProcessQueue() if workers is None else ProcessQueue(workers)
    n = workers or cores()
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


def describeException(exc: BaseException) -> str:
    """``"Type: message"``, the type qualified by its module unless built in."""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    return f"{name}: {text}" if text else name


class JsonLine:
    """
    The callable that ``asynqueue map`` sends to the workers: *func* applied
    to one input line, which it decodes first (`decodeInput`).

    It returns the JSON line of the outcome without its start (``{"index": I,``,
    which only the reader knows): a string if *func* succeeded, a 1-tuple of
    it if *func* raised. So the workers, not the reader, do the JSON work.
    With *awaits* (reactor workers), a Deferred or coroutine that *func*
    returns is waited for.
    """

    __slots__ = ("awaits", "func")

    def __init__(self, func: Callable[..., Any], awaits: bool = False) -> None:
        self.func = func
        self.awaits = awaits

    def __call__(self, text: str) -> Any:
        x = decodeInput(text)
        try:
            result = self.func(x)
        except Exception as e:
            return (_tail({"input": x, "error": describeException(e)}),)
        if self.awaits:
            from twisted.internet.defer import CancelledError, Deferred, ensureDeferred

            if not isinstance(result, Deferred) and hasattr(result, "__await__"):
                result = ensureDeferred(result)
            if isinstance(result, Deferred):

                def failed(failure: Any) -> Any:
                    if failure.check(CancelledError):
                        return failure  # a timeout: the batch stops here
                    return (_tail({"input": x, "error": describeException(failure.value)}),)

                return result.addCallbacks(lambda r: _tail({"input": x, "result": r}), failed)
        return _tail({"input": x, "result": result})


def _tail(record: dict[str, Any]) -> str:
    return _encode(record)[1:]


class _MapRun:
    """Feeds inputs to a queue through `MapRun` and writes each batch's outcomes."""

    def __init__(
        self,
        f: Callable[..., Any],
        feed: Any,
        total: int | None,
        queue: Any,
        *,
        kind: str,
        niceness: int,
        timeout: float | None,
        chunksize: int | None,
        ordered: bool,
        out: IO[str],
        bar: Any,
    ) -> None:
        from twisted.internet.defer import Deferred

        self.f = f
        self.feed = feed
        self.total = total
        self.queue = queue
        self.kind = kind
        self.niceness = niceness
        self.timeout = timeout
        self.chunksize = chunksize
        self.ordered = ordered
        self.out = out
        self.bar = bar
        self.run: Any = None
        self.done = 0
        self.failed = 0
        self.stopping = False
        self.brokenPipe = False
        self.finished: Deferred[None] = Deferred()
        self._writeThroughBar = not bar.disable and _isatty(out)

    def start(self) -> Any:
        """Start; returns a Deferred that fires once every input is done."""
        from .._core._map import MapRun

        kw: dict[str, Any] = {"niceness": self.niceness}
        if self.timeout is not None:
            kw["timeout"] = self.timeout
        self.run = MapRun(
            self.queue,
            JsonLine(self.f, awaits=self.kind == "async"),
            self.feed,
            chunksize=self.chunksize,
            ordered=self.ordered,
            callKeywords=kw,
            lengthHint=self.total,
            describe=self._describe,
        )
        self._pump()
        return self.finished

    def _describe(self, text: str) -> str:
        from .._core._calls import describeCall

        return describeCall(self.f, (decodeInput(text),), {})

    def _pump(self, batch: Any = None) -> None:
        """Write finished batches as they come, looping while they are there."""
        from twisted.python.failure import Failure

        while True:
            if batch is not None and not self._batchDone(batch):
                return
            if self.stopping:
                return
            d = self.run.next()
            if not d.called:  # not here yet: go on when it comes
                d.addCallbacks(self._pump, self._fail)
                return
            batch = d.result
            if isinstance(batch, Failure):
                d.addErrback(self._fail)
                return
            if batch is None:
                if not self.finished.called:
                    self.finished.callback(None)
                return

    def _fail(self, failure: Any) -> None:
        if not self.finished.called:
            self.finished.errback(failure)

    def _batchDone(self, batch: Any) -> bool:
        """Write *batch*'s lines; False if the reader went away."""
        if self.stopping:
            return False  # interrupted: batches cancelled on the way out say nothing
        from .._core._chunk import ItemError

        lines = []
        index = batch.start
        for text, outcome in zip(batch.inputs, batch.results, strict=True):
            if type(outcome) is str:
                lines.append(f'{{"index": {index}, {outcome}')
            elif isinstance(outcome, ItemError):  # failed around the callable
                self.failed += 1
                record = {"input": decodeInput(text), "error": describeError(outcome.exception)}
                lines.append(f'{{"index": {index}, {_tail(record)}')
            else:  # the callable raised
                self.failed += 1
                lines.append(f'{{"index": {index}, {outcome[0]}')
            index += 1
        self.done += len(lines)
        try:
            self._write("\n".join(lines))
        except BrokenPipeError:
            # The reader went away (e.g. "| head"): stop as after Ctrl-C.
            _silence(self.out)
            from twisted.internet import reactor

            reactor.callLater(0, reactor.stop)
            self.stopping = self.brokenPipe = True
            return False
        self.bar.update(len(lines))
        return True

    def _write(self, text: str) -> None:
        if self._writeThroughBar:  # both on a terminal: the lines go above the bar
            self.bar.clear()
            self.out.write(text + "\n")
            self.out.flush()
            self.bar.refresh()
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def abort(self) -> Any:
        """Stop now: crash the workers and shut the queue down (a Deferred)."""
        self.stopping = True
        if self.run is not None:
            self.run.close()
        for worker in list(self.queue.workers()):
            self.queue.detachWorker(worker, crash=True)
        return self.queue.shutdown()


class _NoBar:
    """The progress bar when stderr is not a terminal: it shows nothing, and
    saves loading tqdm (~25 ms of the command's start)."""

    disable = True

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progressBar(total: int | None) -> Any:
    """A tqdm bar on stderr if that is a terminal, else a `_NoBar`."""
    if not _isatty(sys.stderr):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="input", file=sys.stderr, dynamic_ncols=True, mininterval=0.2)


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
    from twisted.internet import reactor

    feed, total = _inputFeed(args, reactor)

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
    bar = _progressBar(total)
    run = state["run"] = _MapRun(
        f,
        feed,
        total,
        queue,
        kind=args.kind,
        niceness=args.niceness,
        timeout=args.timeout,
        chunksize=args.chunksize,
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
    if total is None and feed.exhausted:
        total = feed.count  # the whole stream was read
    ofTotal = "" if total is None else f" of {total}"
    if state["oops"]:
        sys.stderr.write(f"asynqueue map: internal error: {state['oops']}\n")
        return EXIT_FAILED
    if run.brokenPipe:
        return EXIT_BROKEN_PIPE
    if state["interrupted"]:
        sys.stderr.write(f"asynqueue map: interrupted after {run.done}{ofTotal} inputs\n")
        return EXIT_INTERRUPTED
    if run.failed:
        sys.stderr.write(f"asynqueue map: {run.failed} of {run.done} inputs failed\n")
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
    import importlib.metadata  # (~20 ms: only ``info`` needs it)

    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(_DISTRIBUTIONS.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return "installed"


def collectInfo() -> dict[str, Any]:
    """What ``asynqueue info`` shows, as a dict."""
    from .._support._version import __version__

    return {
        "asynqueue": __version__,
        "cores": os.cpu_count() or 1,
        "usable cores": cores(),
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
