"""
Process workers (original module path ``asynqueue.process``).

`ProcessBase` is importable without Twisted (objects that inherit it are
unpickled in lean child interpreters); `ProcessWorker` and `ProcessQueue`
are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._process._child import ProcessBase

__all__ = ["ProcessBase", "ProcessQueue", "ProcessWorker"]


def __getattr__(name: str) -> Any:
    if name in ("ProcessWorker", "ProcessQueue"):
        from ._process import _parent as _process

        return getattr(_process, name)
    raise AttributeError(f"module 'asynqueue.process' has no attribute {name!r}")


if TYPE_CHECKING:
    from ._process._parent import ProcessQueue as ProcessQueue
    from ._process._parent import ProcessWorker as ProcessWorker
