"""
The allow-list side of a `WireServer`: `WireWorkerUniverse`, whose public
methods remote callers may run by name, and `resolveName`, which finds a
universe class or an allowed callable by its dotted name.

See `asynqueue._remote._server` for the design of the server.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["WireWorkerUniverse", "resolveName"]


class WireWorkerUniverse:
    """
    The methods that remote callers may run by name.

    Subclass it and give it public methods; a client calls one with its name
    as the callable (``RemoteQueue.call('add', 1, 2)``, or
    ``WireWorker.universeMethod('add')`` with any queue). The method runs in
    the server's reactor thread: it must not block, and may return a
    Deferred or be a coroutine. Names starting with ``_`` and attributes
    that are not callable cannot be called.

    Args:
        wireServer: the `WireServer` serving me (also set by the server when
            it starts, if None).
    """

    def __init__(self, wireServer: Any = None) -> None:
        self.wireServer = wireServer

    @classmethod
    def check(cls, instance: Any) -> None:
        """Raise ``TypeError`` unless *instance* is a `WireWorkerUniverse`."""
        if not isinstance(instance, WireWorkerUniverse):
            raise TypeError(f"{instance!r} is not a WireWorkerUniverse")

    def method(self, name: Any) -> Callable[..., Any]:
        """
        The public method called *name*.

        Raises:
            PermissionError: no such public, callable attribute.
        """
        if not isinstance(name, str) or not name or name.startswith("_"):
            raise PermissionError(f"Couldn't run call {name!r}: not a public method name")
        f = getattr(self, name, None)
        if f is None or not callable(f) or name in _UNIVERSE_PRIVATE:
            raise PermissionError(
                f"Couldn't run call {name!r}: {type(self).__qualname__} has no such method"
            )
        return f  # type: ignore[no-any-return]


# Attributes of the base class that are not remote methods.
_UNIVERSE_PRIVATE = frozenset({"check", "method", "wireServer"})


def resolveName(name: str) -> Any:
    """
    The object named *name*: ``"package.module:attr.attr"`` or, without a
    colon, ``"package.module.attr"`` (the longest importable module wins).

    Raises:
        ValueError: nothing by that name.
    """
    moduleName, colon, attrs = name.partition(":")
    candidates: list[tuple[str, list[str]]]
    if colon:
        candidates = [(moduleName, attrs.split("."))]
    else:
        bits = name.split(".")
        candidates = [(".".join(bits[:i]), bits[i:]) for i in range(len(bits) - 1, 0, -1)]
    for modName, path in candidates:
        try:
            obj: Any = importlib.import_module(modName)
        except ImportError:
            continue
        try:
            for attr in path:
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"nothing importable is called {name!r}")
