"""STYLE §1, §2 and §7: the sans-I/O core imports no I/O, the package has no import cycles,
and every exported name exists."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import tickwire
import tickwire.sansio

SANSIO = Path(tickwire.sansio.__file__).parent
PACKAGE = Path(tickwire.__file__).parent
FORBIDDEN = {"trio", "trio_websocket", "socket", "time", "asyncio", "select", "logging"}
IO_LAYER = {
    "tickwire.connection",
    "tickwire.server",
    "tickwire.client",
    "tickwire.broadcast",
    "tickwire.keepalive",
}


@pytest.mark.parametrize("path", sorted(SANSIO.glob("*.py")), ids=lambda p: p.name)
def test_sansio_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
            assert not any(name.startswith(m) for m in IO_LAYER), f"{path.name} imports {name}"


def test_every_module_imports_and_exports_what_it_names() -> None:
    for info in pkgutil.walk_packages(tickwire.__path__, "tickwire."):
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            assert hasattr(module, name), f"{info.name}.__all__ names missing {name}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imported(tree: ast.AST, package: str, modules: set[str]) -> set[str]:
    """The names *tree* imports anywhere (inside functions too), except under
    ``if TYPE_CHECKING:``; relative imports resolved against *package*."""
    found: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING"):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    up = parts[: len(parts) - (child.level - 1)]
                    base = ".".join([*up, base] if base else up)
                for alias in child.names:
                    name = f"{base}.{alias.name}"
                    found.add(name if name in modules else base)
            pending.append(child)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each tickwire module -> the tickwire modules it imports, anywhere in it (an import
    put off to run time still ties the two). ``from a.b import c`` counts as an import of
    ``a.b.c`` when that is a module, else of ``a.b``; a module's own packages are not
    counted (Python imports them first in any case)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found = _imported(ast.parse(path.read_text(), str(path)), package, modules)
        ancestors = {module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1)}
        graph[module] = {n for n in found if n in modules and n != module and n not in ancestors}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_package_has_no_import_cycles() -> None:
    graph = import_graph()
    assert graph["tickwire.server"] >= {"tickwire.auth", "tickwire.connection"}  # it sees
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
