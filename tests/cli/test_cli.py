"""The ``asynqueue`` command, end to end, in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from asynqueue._cli import _main as _cli

CLI = [sys.executable, "-m", "asynqueue"]
# The CLI as a terminal's foreground job starts it: with SIGINT at its default.
# (A shell starts background jobs with SIGINT ignored, and children inherit
# that: run from such a job, the Ctrl-C tests would test nothing.)
INTERRUPTIBLE_CLI = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL);"
    " os.execv(sys.executable, [sys.executable, '-m', 'asynqueue', *sys.argv[1:]])",
]
needsProc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

# A module the tests import from the current directory, as users would.
HELPERS = """
from twisted.internet import reactor, task


def noisy(x):
    print(f"noise-{x}")
    return x


def describe(x):
    return {"type": type(x).__name__, "value": x}


def failOnOdd(n):
    if n % 2:
        raise RuntimeError(f"odd: {n}")
    return n


async def double(x):
    await task.deferLater(reactor, 0.01, lambda: None)
    return 2 * x


notCallable = 42
"""


def run(
    *args: str, stdin: str | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m asynqueue ARGS``; returns the finished process."""
    return subprocess.run(
        [*CLI, *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "helpers_mod.py").write_text(HELPERS)
    return tmp_path


# ---------------------------------------------------------------- map


def test_success_with_process_workers() -> None:
    result = run("map", "asynqueue.examples.demo:collatz", "27", "97", "871")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    got = {r["input"]: r["result"] for r in records(result.stdout)}
    assert got == {27: 111, 97: 118, 871: 178}
    assert sorted(r["index"] for r in records(result.stdout)) == [0, 1, 2]


def test_map_loads_neither_the_server_nor_the_progress_bar_off_a_terminal(tmp_path: Path) -> None:
    # Start-up time: ``map`` builds the whole parser (``serve`` included) but
    # must not import the worker server, nor tqdm when stderr is no terminal.
    (tmp_path / "inputs.txt").write_text("4\n")
    probe = textwrap.dedent(
        """
        import sys
        from asynqueue._cli import _main
        status = _main.main(["map", "--threads", "-i", "inputs.txt", "math:sqrt"])
        loaded = [m for m in ("asynqueue._remote._server", "tqdm") if m in sys.modules]
        print(status, *loaded, file=sys.stderr)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == "0"  # the exit status, and nothing loaded
    assert records(result.stdout) == [{"index": 0, "input": 4, "result": 2.0}]


def test_partial_failure_reports_each_input_and_goes_on() -> None:
    result = run("map", "--threads", "asynqueue.examples.demo:collatz", "27", "x", "0", "1")
    assert result.returncode == 1
    byIndex = {r["index"]: r for r in records(result.stdout)}
    assert set(byIndex) == {0, 1, 2, 3}
    assert byIndex[0] == {"index": 0, "input": 27, "result": 111}
    assert byIndex[3]["result"] == 0
    assert byIndex[1]["input"] == "x"
    assert byIndex[1]["error"] == "ValueError: not a positive integer: 'x'"
    assert byIndex[2]["error"].startswith("ValueError")
    assert "2 of 4 inputs failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_failure_in_a_worker_process(workdir: Path) -> None:
    result = run("map", "helpers_mod:failOnOdd", "1", "2", "3", cwd=workdir)
    assert result.returncode == 1, result.stderr
    byInput = {r["input"]: r for r in records(result.stdout)}
    assert byInput[2]["result"] == 2
    assert "RuntimeError" in byInput[1]["error"] and "odd: 1" in byInput[1]["error"]
    assert "odd: 3" in byInput[3]["error"]


@pytest.mark.parametrize(
    "args",
    [
        ["map", "no_such_module_here:f", "1"],
        ["map", "asynqueue.examples.demo:nope", "1"],
        ["map", "helpers_mod:notCallable", "1"],
        ["map", "broken_mod:f", "1"],
        ["map", "asynqueue.examples.demo.collatz", "1"],
        ["map", "--workers", "0", "asynqueue.examples.demo:collatz", "1"],
        ["map", "--timeout", "-1", "asynqueue.examples.demo:collatz", "1"],
        ["map", "--niceness", "21", "asynqueue.examples.demo:collatz", "1"],
        ["map", "--threads", "--async", "asynqueue.examples.demo:collatz", "1"],
        ["map", "--input", "no-such-file.txt", "asynqueue.examples.demo:collatz"],
        ["map", "--input", "-", "asynqueue.examples.demo:collatz", "1"],
        ["map", "--no-such-option", "asynqueue.examples.demo:collatz", "1"],
        ["map"],
        ["frobnicate"],
        [],
    ],
    ids=lambda args: " ".join(args) or "no-args",
)
def test_bad_usage_is_one_line_and_exit_2(workdir: Path, args: list[str]) -> None:
    (workdir / "broken_mod.py").write_text("raise RuntimeError('broken at import')\n")
    result = run(*args, cwd=workdir)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]
    assert "Traceback" not in result.stderr


def test_ordered_output_follows_input_order() -> None:
    # The first inputs sleep longest, so they finish last on four threads.
    naps = ["0.4", "0.3", "0.2", "0.1", "0", "0"]
    result = run("map", "--threads", "-w", "4", "--ordered", "asynqueue.examples.demo:nap", *naps)
    assert result.returncode == 0, result.stderr
    got = records(result.stdout)
    assert [r["index"] for r in got] == list(range(len(naps)))
    assert [r["result"] for r in got] == [0.4, 0.3, 0.2, 0.1, 0, 0]


def test_stdin_lines_are_json_or_strings(workdir: Path) -> None:
    stdin = '3\n\nhello world\n[1, "a"]\n{"k": null}\n"7"\n  \n'
    result = run("map", "--threads", "--ordered", "helpers_mod:describe", stdin=stdin, cwd=workdir)
    assert result.returncode == 0, result.stderr
    got = [(r["input"], r["result"]) for r in records(result.stdout)]
    assert got == [
        (3, {"type": "int", "value": 3}),
        ("hello world", {"type": "str", "value": "hello world"}),
        ([1, "a"], {"type": "list", "value": [1, "a"]}),
        ({"k": None}, {"type": "dict", "value": {"k": None}}),
        ("7", {"type": "str", "value": "7"}),
    ]


def test_input_file_with_process_workers_and_a_module_from_cwd(workdir: Path) -> None:
    (workdir / "inputs.txt").write_text("1\nfoo\n")
    result = run("map", "--input", "inputs.txt", "--ordered", "helpers_mod:describe", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert [r["result"]["type"] for r in records(result.stdout)] == ["int", "str"]


@pytest.mark.parametrize("kind", ["--processes", "--threads"])
def test_what_callables_print_goes_to_stderr(workdir: Path, kind: str) -> None:
    result = run("map", kind, "--ordered", "helpers_mod:noisy", "1", "2", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert [r["result"] for r in records(result.stdout)] == [1, 2]
    assert "noise-1" in result.stderr and "noise-2" in result.stderr


def test_timeout_is_retried_once_then_an_error() -> None:
    result = run("map", "--threads", "--timeout", "0.2", "asynqueue.examples.demo:nap", "30", "0")
    assert result.returncode == 1, result.stderr
    byInput = {r["input"]: r for r in records(result.stdout)}
    assert byInput[0]["result"] == 0
    assert byInput[30]["error"].startswith("TimeoutError")
    assert "2 times" in byInput[30]["error"]


def test_a_timeout_inside_a_batch_fails_only_the_slow_input() -> None:
    naps = ["0", "30", "0", "0"]
    args = ["--threads", "--chunksize", "4", "--timeout", "0.2", "asynqueue.examples.demo:nap"]
    result = run("map", *args, *naps)
    assert result.returncode == 1, result.stderr
    byIndex = {r["index"]: r for r in records(result.stdout)}
    assert [byIndex[i].get("result") for i in (0, 2, 3)] == [0, 0, 0]
    assert byIndex[1]["error"].startswith("TimeoutError")
    assert "nap(30)" in byIndex[1]["error"] and "2 times" in byIndex[1]["error"]
    assert "1 of 4 inputs failed" in result.stderr


@pytest.mark.parametrize("kind", ["--processes", "--threads", "--async"])
def test_a_long_stream_from_stdin_in_batches(kind: str) -> None:
    n = 20_000
    lines = "".join(f"{i}\n" if i % 7 else f"{i}\n\n" for i in range(n))  # blank lines skipped
    result = run("map", kind, "--ordered", "-w", "2", "builtins:abs", stdin=lines)
    assert result.returncode == 0, result.stderr
    got = records(result.stdout)
    assert [r["index"] for r in got] == list(range(n))
    assert [r["result"] for r in got] == list(range(n))


def test_chunksize_and_per_input_errors_in_a_batch(workdir: Path) -> None:
    inputs = [str(i) for i in range(1, 11)]
    result = run("map", "--chunksize", "3", "helpers_mod:failOnOdd", *inputs, cwd=workdir)
    assert result.returncode == 1, result.stderr
    byInput = {r["input"]: r for r in records(result.stdout)}
    assert sorted(byInput) == list(range(1, 11))
    assert [byInput[i]["result"] for i in range(2, 11, 2)] == [2, 4, 6, 8, 10]
    assert byInput[3]["error"] == "RuntimeError: odd: 3"
    assert "5 of 10 inputs failed" in result.stderr
    result = run("map", "--chunksize", "0", "builtins:abs", "1")
    assert result.returncode == 2


def test_async_workers_await_coroutines(workdir: Path) -> None:
    result = run("map", "--async", "--ordered", "helpers_mod:double", "1", "2", "3", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert [r["result"] for r in records(result.stdout)] == [2, 4, 6]


def test_a_reader_that_goes_away_ends_the_run_quietly() -> None:
    proc = subprocess.Popen(
        [*CLI, "map", "--threads", "asynqueue.examples.demo:collatz", *map(str, range(1, 5001))],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["result"] >= 0
    proc.stdout.close()  # as "| head -1" does
    try:
        stderr = proc.stderr.read()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == _cli.EXIT_BROKEN_PIPE
    assert stderr == ""


def test_no_inputs_is_success() -> None:
    result = run("map", "--threads", "asynqueue.examples.demo:collatz", stdin="")
    assert (result.returncode, result.stdout) == (0, "")


def test_unjsonable_results_are_written_as_repr(workdir: Path) -> None:
    result = run("map", "--threads", "builtins:frozenset", '"ba"', cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert records(result.stdout)[0]["result"] == ["a", "b"]
    result = run("map", "--threads", "builtins:object", "1", cwd=workdir)
    assert result.returncode == 1  # object(1) raises TypeError
    result = run("map", "--threads", "builtins:bytes", "2", cwd=workdir)
    assert records(result.stdout)[0]["result"] == repr(b"\x00\x00")


@needsProc
def test_progress_bar_on_a_terminal() -> None:
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.Popen(
            [*CLI, "map", "--threads", "asynqueue.examples.demo:collatz", "1", "2", "3"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        stdout, _ = proc.communicate(timeout=60)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert proc.returncode == 0
    assert len(stdout.splitlines()) == 3
    bar = b"".join(chunks).decode(errors="replace")
    assert "3/3" in bar and "input" in bar


# ---------------------------------------------------------------- Ctrl-C


def _procTable() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) for every process we can see."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set[int]:
    table = _procTable()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _interruptWhileBusy(toGroup: bool) -> tuple[subprocess.Popen[str], set[int], str, str]:
    proc = subprocess.Popen(
        [*INTERRUPTIBLE_CLI, "map", "-w", "2", "asynqueue.examples.demo:nap", *["30"] * 5],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        children: set[int] = set()
        while time.monotonic() < deadline:
            children = _descendants(proc.pid)
            if len(children) >= 2:
                break
            time.sleep(0.05)
        assert len(children) >= 2, "the worker processes never started"
        time.sleep(0.5)  # let the workers take their (30 s) tasks
        children |= _descendants(proc.pid)
        if toGroup:
            os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
        else:
            proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc, children, stdout, stderr


@needsProc
@pytest.mark.parametrize("toGroup", [False, True], ids=["cli-only", "process-group"])
def test_ctrl_c_stops_cleanly_and_leaves_no_child_processes(toGroup: bool) -> None:
    proc, children, stdout, stderr = _interruptWhileBusy(toGroup)
    try:
        assert proc.returncode == _cli.EXIT_INTERRUPTED, stderr
        assert stdout == ""
        assert "interrupted" in stderr
        assert "Traceback" not in stderr, stderr
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if _alive(pid)], "orphaned child processes"
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_ctrl_c_with_thread_workers() -> None:
    naps = ["0", "30", "30", "30"]
    proc = subprocess.Popen(
        [*INTERRUPTIBLE_CLI, "map", "--threads", "-w", "2", "asynqueue.examples.demo:nap", *naps],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        assert json.loads(first)["result"] == 0
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == _cli.EXIT_INTERRUPTED
    assert stdout == ""
    assert stderr.strip() == "asynqueue map: interrupted after 1 of 4 inputs"


# ---------------------------------------------------------------- info, help, hooks


def test_info() -> None:
    result = run("info")
    assert result.returncode == 0, result.stderr
    assert "asynqueue: " in result.stdout
    assert "twisted: " in result.stdout
    assert "dask" in result.stdout and "pydoctor" in result.stdout
    info = json.loads(run("info", "--json").stdout)
    assert info["cores"] >= 1
    assert set(info["extras"]) >= {"dask", "bench", "docs"}


def test_info_never_imports_optional_extras() -> None:
    code = (
        "import sys; from asynqueue._cli._main import main; main(['info']);"
        "sys.exit(sorted(m for m in ('dask', 'distributed', 'pebble', 'joblib', 'pydoctor')"
        " if m in sys.modules) or 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_help_lists_the_subcommands() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "map" in result.stdout and "info" in result.stdout
    result = run("map", "--help")
    assert result.returncode == 0
    assert "--ordered" in result.stdout and "--timeout" in result.stdout
    assert "--chunksize" in result.stdout


def test_console_script() -> None:
    script = Path(sys.executable).with_name("asynqueue")
    if not script.exists():
        pytest.skip("the asynqueue console script is not installed next to python")
    result = subprocess.run(
        [str(script), "map", "--threads", "asynqueue.examples.demo:collatz", "6"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert records(result.stdout) == [{"index": 0, "input": 6, "result": 8}]


def test_subcommands_can_be_added_from_another_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_cli, "SUBCOMMANDS", dict(_cli.SUBCOMMANDS))

    def registerHello(subparsers: Any) -> None:
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("name")
        p.set_defaults(run=lambda args: print(f"hello {args.name}") or 7)

    _cli.addSubcommand("hello", registerHello)
    _cli.addSubcommand("ghost", "asynqueue._no_such_module:register")  # skipped
    assert _cli.main(["hello", "world"]) == 7
    assert capsys.readouterr().out == "hello world\n"
    helpText = _cli.buildParser().format_help()
    assert "hello" in helpText and "ghost" not in helpText


def test_decodeInput() -> None:
    assert _cli.decodeInput("12") == 12
    assert _cli.decodeInput("1.5") == 1.5
    assert _cli.decodeInput('"12"') == "12"
    assert _cli.decodeInput("[1, 2]") == [1, 2]
    assert _cli.decodeInput("null") is None
    assert _cli.decodeInput("hello") == "hello"
    assert _cli.decodeInput("{oops") == "{oops"


def test_describeError_uses_the_last_line_of_a_remote_traceback() -> None:
    class Remote(Exception):
        remoteTraceback = textwrap.dedent(
            """\
            Traceback (most recent call last):
              File "x.py", line 1, in f
            KeyError: 'k'
            """
        )

    assert _cli.describeError(Remote("whatever")) == "KeyError: 'k'"
    assert _cli.describeError(ValueError("bad")) == "ValueError: bad"
    assert _cli.describeError(KeyboardInterrupt()) == "KeyboardInterrupt"
