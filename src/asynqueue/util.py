"""Small tools: `DeferredTracker`, `DeferredLock`, `CallRunner` and helpers."""

from ._support._util import (
    CallRunner,
    DeferredLock,
    DeferredTracker,
    callAfterDeferred,
    killProcess,
    o2p,
    p2o,
)

__all__ = [
    "CallRunner",
    "DeferredLock",
    "DeferredTracker",
    "callAfterDeferred",
    "killProcess",
    "o2p",
    "p2o",
]
