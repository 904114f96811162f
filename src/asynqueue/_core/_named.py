"""
`UniverseMethod`: a call of a worker server's universe method by its name.
Imports only `errors`, since a child process may unpickle one.
"""

from __future__ import annotations

from typing import Any, NoReturn

from .. import errors

__all__ = ["UniverseMethod"]


class UniverseMethod:
    """
    The callable for a call of a method of the server's `WireWorkerUniverse`,
    by name: ``q.call(UniverseMethod('add'), 1, 2)`` (a `RemoteQueue` makes
    one of a plain string). It runs only on a `WireServer`.
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"a universe method name must be a str, not {name!r}")
        self.name = name
        self.__name__ = self.__qualname__ = name

    def __call__(self, *args: Any, **kw: Any) -> NoReturn:
        raise errors.ImplementationError(
            f"{self.name!r} names a method of a WireServer's universe; it runs only on a WireWorker"
        )

    def __reduce__(self) -> tuple[type[UniverseMethod], tuple[str]]:
        return (UniverseMethod, (self.name,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UniverseMethod) and other.name == self.name

    def __hash__(self) -> int:
        return hash((UniverseMethod, self.name))

    def __repr__(self) -> str:
        return f"UniverseMethod({self.name!r})"
