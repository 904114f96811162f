"""
Remote workers benchmark: a `RemoteQueue` over loopback TCP to an
``asynqueue serve`` process running 2 process workers (and, to show the
network path alone, to one running 2 threads).

- **dispatch**: N trivial calls submitted at once, until the last result;
  calls per second. ``ProcessQueue(2)`` in the client's own process is the
  reference row (no network hop).
- **dispatch, one series**: as many calls in one series (they run one at a
  time, in order), calls/s: what a series costs per call. A remote worker
  sends a series' calls ahead, and its server runs them in order (lanes).
- **latency**: sequential round trips of a trivial call; p50 and p99, µs.
- **10 MB result** / **10 MB argument**: MB/s of a call returning (taking)
  10 MB of bytes, next to the same 10 MB over a bare loopback TCP socket
  between two processes: ``vs_floor`` is our rate over the bare socket's.
  The floor's sender is another process that answers each one-byte request
  with one ``sendall`` of a ready-made 10 MB bytes object; the floor's
  receiver sends the request and receives a new ``bytes`` object of 10 MB
  with one blocking ``recv(n, MSG_WAITALL)``, which the kernel fills
  straight from the socket. That is what our client must do at the least
  (a result arrives as a new bytes object), without pickling, framing, a
  reactor, a server or a worker process. The receiver is a third process,
  not this one: here, its 10 MB allocations would change which memory
  malloc hands our client (fresh pages, about 7 ms of page faults per
  10 MB, instead of reused ones). Both figures are medians of `BIG_REPS`
  transfers after `BIG_WARM` untimed ones: on the 2-core development VM a
  loopback transfer of 10 MB takes either about 3 ms or, now and then, half
  that (the scheduler's luck), so a best-of figure measures the luck. A bare
  transfer runs right before each of ours, and ``vs_floor`` compares the
  medians of the two series: both saw the same machine, however busy.
- **streaming**: a generator of small ints iterated here as a Deferator,
  items/s.

Figures are printed, never asserted. Standalone::

    python benchmarks/bench_remote.py [--quick] [--json]

``run(quick)`` measures in a fresh subprocess (the reactor cannot be
restarted) and returns the rows as dicts with ``workload, contender, value,
unit`` (plus ``p99`` for latency and ``vs_floor`` where there is a floor).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVER_WORKERS = 2
KEY = "bench-remote-key"
# Timed and untimed (warm-up) transfers of the 10 MB workloads and the floor.
BIG_REPS = 25
BIG_WARM = 3


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"dispatch": 10_000, "series": 2_000, "latency": 500, "bytes": 10_000_000,
                "items": 50_000, "reps": 3, "warm": 200}  # fmt: skip
    return {"dispatch": 20_000, "series": 5_000, "latency": 2_000, "bytes": 10_000_000,
            "items": 100_000, "reps": 5, "warm": 500}  # fmt: skip


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure in a subprocess; the rows."""
    return runScript(__file__, quick, 600)


def runScript(path: str, quick: bool, timeout: float) -> list[dict[str, Any]]:
    """The rows that benchmark script *path* prints with ``--json``, run in a subprocess."""
    command = [sys.executable, str(Path(path).resolve()), "--json"]
    if quick:
        command.append("--quick")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    )
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        name = Path(path).stem
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    return json.loads(lines[-1]) if lines else []


def row(workload: str, contender: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    return {"workload": workload, "contender": contender, "value": value, "unit": unit, **extra}


# ---------------------------------------------------------------- the server


class Server:
    """``python -m asynqueue serve`` on an ephemeral loopback port."""

    def __init__(self, *extra: str) -> None:
        self.dir = tempfile.TemporaryDirectory()
        keyFile = Path(self.dir.name) / "key"
        keyFile.write_text(KEY)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asynqueue", "serve", "tcp:0:interface=127.0.0.1",
             "--workers", str(SERVER_WORKERS), "--key-file", str(keyFile), "--quiet", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.close()
            raise RuntimeError(f"the server did not start: {line!r}")
        port = line.split("listening on ", 1)[1].split(":")[1]
        self.client = f"tcp:127.0.0.1:{port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()


# ---------------------------------------------------------------- floor


# The floor's sender: another process that answers each request byte with
# the payload (argv: payload size). It prints its port, then serves one
# connection.
_FLOOR_SENDER = """
import socket, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
payload = b"\\xab" * int(sys.argv[1])
conn, _ = listener.accept()
listener.close()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
with conn:
    while conn.recv(1):
        conn.sendall(payload)
"""


# The floor's receiver: a third process (argv: port, payload size) that, for
# each line on its stdin, sends a request byte and receives the payload into
# a new bytes object, then prints the seconds that took. (A process of its
# own, so that its 10 MB allocations do not change what malloc hands ours.)
_FLOOR_RECEIVER = """
import socket, sys, time
nbytes = int(sys.argv[2])
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in sys.stdin:
    start = time.perf_counter()
    sock.sendall(b"x")
    data = sock.recv(nbytes, socket.MSG_WAITALL)
    elapsed = time.perf_counter() - start
    if len(data) != nbytes:
        sys.exit(f"the floor's sender sent {len(data)} bytes, not {nbytes}")
    del data
    print(elapsed, flush=True)
"""


class Floor:
    """
    The floor's sender and receiver, two other processes: `transfer` has the
    receiver move *nbytes* from the sender into a new bytes object and
    returns the seconds it took.
    """

    def __init__(self, nbytes: int) -> None:
        self.sender = subprocess.Popen(
            [sys.executable, "-c", _FLOOR_SENDER, str(nbytes)], stdout=subprocess.PIPE, text=True
        )
        assert self.sender.stdout is not None
        port = self.sender.stdout.readline().strip()
        self.receiver = subprocess.Popen(
            [sys.executable, "-c", _FLOOR_RECEIVER, port, str(nbytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        for _ in range(BIG_WARM):
            self.transfer()

    def transfer(self) -> float:
        receiver = self.receiver
        assert receiver.stdin is not None and receiver.stdout is not None
        receiver.stdin.write("go\n")
        receiver.stdin.flush()
        line = receiver.stdout.readline()
        if not line:
            raise RuntimeError(f"the floor's receiver failed (exit code {receiver.wait()})")
        return float(line)

    def close(self) -> None:
        for proc in (self.receiver, self.sender):
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in (self.receiver, self.sender):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------- ours


def measure(quick: bool) -> list[dict[str, Any]]:
    from twisted.internet import defer

    sys.path.insert(0, str(ROOT))
    from asynqueue.process import ProcessQueue
    from asynqueue.wire import RemoteQueue
    from benchmarks import payloads

    n = sizes(quick)
    rows: list[dict[str, Any]] = []
    server = Server()
    threadServer = Server("--threads")
    floor = Floor(n["bytes"])
    floorTimes: list[float] = []
    blob = b"\xab" * n["bytes"]
    mb = n["bytes"] / 1e6

    @defer.inlineCallbacks
    def main() -> Any:
        for label, makeQueue in (
            ("ProcessQueue(2), local", lambda: ProcessQueue(2, returnFailure=True)),
            (
                "RemoteQueue(N=2) -> serve --workers 2",
                lambda: RemoteQueue(server.client, N=2, key=KEY, returnFailure=True),
            ),
            (
                "RemoteQueue(N=2) -> serve --threads",
                lambda: RemoteQueue(threadServer.client, N=2, key=KEY, returnFailure=True),
            ),
        ):
            q = makeQueue()
            if isinstance(q, RemoteQueue):
                yield q.whenConnected()
            yield defer.gatherResults([q.call(payloads.noop) for _ in range(n["warm"])])
            rates = []
            for _ in range(n["reps"]):
                start = time.perf_counter()
                yield defer.gatherResults([q.call(payloads.noop) for _ in range(n["dispatch"])])
                rates.append(n["dispatch"] / (time.perf_counter() - start))
            rows.append(row("dispatch", label, statistics.median(rates), "calls/s"))
            # The same calls as one series: they run one at a time, in order.
            rates = []
            for _ in range(n["reps"]):
                start = time.perf_counter()
                calls = [q.call(payloads.noop, series="lane") for _ in range(n["series"])]
                yield defer.gatherResults(calls)
                rates.append(n["series"] / (time.perf_counter() - start))
            rows.append(row("dispatch, one series", label, statistics.median(rates), "calls/s"))
            samples = []
            for _ in range(n["latency"]):
                start = time.perf_counter()
                yield q.call(payloads.noop)
                samples.append(time.perf_counter() - start)
            samples.sort()
            rows.append(
                row("latency p50", label, statistics.median(samples) * 1e6, "µs",
                    p99=samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))] * 1e6)
            )  # fmt: skip
            for workload, call in (
                ("10 MB result", lambda q=q: q.call(payloads.bigBytes, n["bytes"])),
                ("10 MB argument", lambda q=q: q.call(len, blob)),
            ):
                for _ in range(BIG_WARM):
                    yield call()
                    yield defer.gatherResults([q.call(payloads.noop) for _ in range(20)])
                times, floors = [], []
                for _ in range(BIG_REPS):
                    # A bare transfer right before each of ours: both see the same machine.
                    floors.append(floor.transfer())
                    start = time.perf_counter()
                    yield call()
                    times.append(time.perf_counter() - start)
                    yield defer.gatherResults([q.call(payloads.noop) for _ in range(20)])
                floorTimes.extend(floors)
                elapsed = statistics.median(times)
                ratio = statistics.median(floors) / elapsed
                rows.append(row(workload, label, mb / elapsed, "MB/s", vs_floor=round(ratio, 3)))
            rates = []
            for _ in range(n["reps"]):
                start = time.perf_counter()
                dr = yield q.call(payloads.items, n["items"])
                count = 0
                for d in dr:
                    yield d
                    count += 1
                rates.append(count / (time.perf_counter() - start))
            rows.append(row("streaming", label, statistics.median(rates), "items/s"))
            yield q.shutdown()
        bare = statistics.median(floorTimes)
        rows.append(row("10 MB, bare socket", "loopback TCP floor", mb / bare, "MB/s"))

    from benchmarks._reactor import runUntilDone

    try:
        runUntilDone(main)
    finally:
        server.close()
        threadServer.close()
        floor.close()
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"Remote workers over loopback TCP; servers: asynqueue serve --workers {SERVER_WORKERS}"
        " (processes) or --threads",
        "",
        "| workload | contender | value | unit | p99 µs | vs bare socket |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        p99 = f"{r['p99']:,.0f}" if "p99" in r else ""
        floor = f"{r['vs_floor']:.0%}" if "vs_floor" in r else ""
        lines.append(
            f"| {r['workload']} | {r['contender']} | {r['value']:,.0f} | {r['unit']}"
            f" | {p99} | {floor} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line")
    args = parser.parse_args(argv)
    rows = measure(args.quick)
    print(json.dumps(rows) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
