"""
``python -m asynqueue`` and the ``asynqueue`` command: see `asynqueue._cli._main`.

::

    asynqueue map asynqueue.examples.demo:collatz 27 97 871
    asynqueue info
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asynqueue`` command with *argv*; returns the exit status."""
    from ._cli._main import main as cliMain

    return cliMain(argv)


if __name__ == "__main__":
    sys.exit(main())
