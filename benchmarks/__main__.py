"""``python -m benchmarks``: the whole suite, one table."""

from __future__ import annotations

from .run import main

raise SystemExit(main())
