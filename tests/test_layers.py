"""
The package's layers (ARCHITECTURE.md): imports point down, never up, and no
two modules import each other, however indirectly.

Every import counts: at module level, inside functions and under
``TYPE_CHECKING`` alike, since each of them ties one module to another.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "asynqueue"

# The layers, lowest first. A module may import its own layer and lower ones.
# Layers on one rank know nothing of each other.
RANKS: dict[str, int] = {
    "errors": 0,
    "interfaces": 1,
    "_iter": 2,
    "_support": 3,
    "_core": 4,
    "_threads": 5,
    "_wire": 5,
    "_dask": 5,
    "_process": 6,
    "_remote": 7,
    "_cli": 8,
    "_futures": 8,
}
PUBLIC_RANK = 9  # the public modules at the top, examples, __main__


def moduleName(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layerOf(module: str) -> str:
    """The layer of ``asynqueue.X...``: X for a layer folder, else "public"."""
    parts = module.split(".")
    if len(parts) == 1:
        return "public"
    return parts[1] if parts[1] in RANKS else "public"


def rankOf(module: str) -> int:
    return RANKS.get(layerOf(module), PUBLIC_RANK)


def importsOf(path: Path) -> set[str]:
    """Every asynqueue module that *path* imports, resolved to a module name."""
    me = moduleName(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "asynqueue")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.split(".")[0] == "asynqueue":
                target = node.module
            else:
                continue
            for alias in node.names:
                # ``from pkg import mod`` imports the module pkg.mod
                candidate = f"{target}.{alias.name}"
                found.add(candidate if isModule(candidate) else target)
    found.discard(me)
    return found


def isModule(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (
        PACKAGE / relative / "__init__.py"
    ).exists()


def graph() -> dict[str, set[str]]:
    return {moduleName(p): importsOf(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_folder_is_a_known_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name.startswith("_")}
    folders.discard("__pycache__")
    assert folders == {name for name in RANKS if not name[0].isalpha()}


def test_imports_point_down() -> None:
    upward = [
        f"{module} ({layerOf(module)}) imports {target} ({layerOf(target)})"
        for module, targets in graph().items()
        for target in targets
        if rankOf(target) > rankOf(module)
        or (rankOf(target) == rankOf(module) and layerOf(target) != layerOf(module))
    ]
    assert upward == []


def test_no_import_circles() -> None:
    imports = graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(imports.get(module, ())):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(imports):
        if module not in state:
            visit(module)
    assert circles == []


@pytest.mark.parametrize(
    ("source", "imported", "allowed"),
    [
        ("_core/_queue.py", "from .._iter._base import isIterator", True),
        ("_core/_queue.py", "from .._process._parent import cores", False),
        ("_wire/_codec.py", "from .._threads._worker import ThreadQueue", False),
        ("_process/_parent.py", "from .._wire import _auth", True),
    ],
)
def test_the_rule_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, imported: str, allowed: bool
) -> None:
    """The checker catches an upward import (a copy of the tree with one planted)."""
    import shutil

    copy = tmp_path / "asynqueue"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / source
    target.write_text(target.read_text() + "\n" + imported + "\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "PACKAGE", copy)
    if allowed:
        test_imports_point_down()
    else:
        with pytest.raises(AssertionError):
            test_imports_point_down()
