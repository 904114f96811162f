"""Smoke tests: every script under ``examples/`` runs, and says what it should."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from asynqueue.examples import demo, mandelbrot

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def runExample(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def readPNG(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw scanlines) of an 8-bit RGB PNG; checks every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    assert b"IEND" in chunks
    return width, height, zlib.decompress(chunks[b"IDAT"])


def test_examples_are_all_covered() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == {"mandelbrot.py", "thread_demo.py", "niceness_demo.py"}


def test_mandelbrot_with_process_workers(tmp_path: Path) -> None:
    out = runExample("mandelbrot.py", "--width", "60", "-o", str(tmp_path / "m.png"))
    assert "60 x 40 pixels" in out and "processes" in out
    width, height, raw = readPNG((tmp_path / "m.png").read_bytes())
    assert (width, height) == (60, 40)
    assert len(raw) == height * (1 + 3 * width)


def test_mandelbrot_with_threads(tmp_path: Path) -> None:
    path = str(tmp_path / "t.png")
    out = runExample("mandelbrot.py", "--threads", "--width", "30", "--workers", "2", "-o", path)
    assert "30 x 20 pixels, 20 rows on 2 threads" in out
    assert readPNG((tmp_path / "t.png").read_bytes())[:2] == (30, 20)


def test_mandelbrot_rows_match_the_serial_image() -> None:
    rows = [mandelbrot.row(y, 24, 16, 50) for y in range(16)]
    width, height, raw = readPNG(mandelbrot.pngBytes(24, 16, rows))
    assert (width, height) == (24, 16)
    assert raw == b"".join(b"\x00" + r for r in rows)
    # The centre row crosses the main cardioid (black) and the outside (not).
    middle = rows[8]
    assert b"\x00\x00\x00" in middle and middle[:3] != b"\x00\x00\x00"


def test_pngBytes_checks_its_rows() -> None:
    with pytest.raises(ValueError, match="bytes"):
        mandelbrot.pngBytes(2, 1, [b"\x00" * 5])
    with pytest.raises(ValueError, match="rows"):
        mandelbrot.pngBytes(1, 2, [b"\x00" * 3])


def test_the_readme_image_is_a_valid_png() -> None:
    width, height, raw = readPNG((ROOT / "docs" / "mandelbrot.png").read_bytes())
    assert len(raw) == height * (1 + 3 * width)


def test_thread_demo() -> None:
    out = runExample("thread_demo.py")
    assert f"squares: {[x * x for x in range(20)]}" in out
    assert re.search(r"heartbeat \d+ times", out)


def test_niceness_demo_shows_the_two_to_one_rate() -> None:
    out = runExample("niceness_demo.py")
    assert "first job: NEXT" in out
    assert "next 30 jobs: 20 urgent, 10 background" in out
    assert "each series in queued order: True" in out


def test_demo_callables() -> None:
    assert [demo.collatz(n) for n in (1, 2, 27, "6")] == [0, 1, 111, 8]
    for bad in (0, -3, 1.5, True, "x", None):
        with pytest.raises(ValueError):
            demo.collatz(bad)  # type: ignore[arg-type]
    assert demo.nap(0) == 0
