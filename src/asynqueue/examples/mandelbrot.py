"""
Mandelbrot rows and a PNG writer, in pure Python and the standard library.

`row` computes one row of pixels, so rows can be rendered in parallel by
process workers; `pngBytes` and `writePNG` put the rows together as an RGB
PNG (zlib and struct, nothing else). ``examples/mandelbrot.py`` drives them
with a ``ProcessQueue``.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["pngBytes", "row", "writePNG"]

# The part of the complex plane shown: real from X0 to X1; the imaginary
# range is centred on 0 and follows the image's aspect ratio.
X0, X1 = -2.25, 0.75
LOG2 = math.log(2.0)


def row(y: int, width: int = 480, height: int = 320, maxIter: int = 200) -> bytes:
    """
    Pixel row *y* (0 at the top) of a *width* x *height* image, as RGB bytes.

    Points inside the set are black; the others are coloured by a smoothed
    escape count.
    """
    scale = (X1 - X0) / width
    ci = (height / 2 - y - 0.5) * scale
    out = bytearray(3 * width)
    for x in range(width):
        cr = X0 + (x + 0.5) * scale
        zr = zi = 0.0
        n = 0
        zr2 = zi2 = 0.0
        while n < maxIter and zr2 + zi2 <= 256.0:
            zi = 2.0 * zr * zi + ci
            zr = zr2 - zi2 + cr
            zr2 = zr * zr
            zi2 = zi * zi
            n += 1
        if n < maxIter:
            smooth = n + 1 - math.log(math.log(zr2 + zi2) / 2.0 / LOG2) / LOG2
            out[3 * x : 3 * x + 3] = _colour(smooth)
    return bytes(out)


# A colour gradient, as (position in [0, 1], RGB) stops; it wraps around.
_STOPS = (
    (0.0, (0, 7, 100)),
    (0.16, (32, 107, 203)),
    (0.42, (237, 255, 255)),
    (0.6425, (255, 170, 0)),
    (0.8575, (0, 2, 0)),
    (1.0, (0, 7, 100)),
)


def _colour(escape: float) -> bytes:
    """The RGB colour of a point that escaped after *escape* (smoothed) steps."""
    t = (math.sqrt(max(escape, 0.0)) * 0.2 - 0.3) % 1.0
    for (t0, c0), (t1, c1) in itertools.pairwise(_STOPS):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return bytes(int(a + (b - a) * f) for a, b in zip(c0, c1, strict=True))
    return bytes(_STOPS[-1][1])


def pngBytes(width: int, height: int, rows: Iterable[bytes]) -> bytes:
    """
    An 8-bit RGB PNG image made of *rows* (each ``3 * width`` bytes).

    Raises:
        ValueError: a row has the wrong length, or there are not *height* rows.
    """
    raw = bytearray()
    count = 0
    for pixels in rows:
        if len(pixels) != 3 * width:
            raise ValueError(f"row {count} has {len(pixels)} bytes, not {3 * width}")
        raw += b"\x00"  # filter type 0: the row as it is
        raw += pixels
        count += 1
    if count != height:
        raise ValueError(f"got {count} rows, not {height}")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(bytes(raw), 9)),
            _chunk(b"IEND", b""),
        ]
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def writePNG(path: str | Path, width: int, height: int, rows: Iterable[bytes]) -> Path:
    """Write *rows* as a PNG file at *path*; returns the path."""
    path = Path(path)
    path.write_bytes(pngBytes(width, height, rows))
    return path
