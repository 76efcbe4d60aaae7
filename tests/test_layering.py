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


# namedtuple's documented API, though spelled with an underscore
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def _own_private_names() -> set[str]:
    """Every underscored name tickwire itself defines: functions, attributes, fields, slots."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
                names.add(node.target.id.lstrip("_"))  # an attrs field's init argument
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)  # __slots__ entries
    return {n for n in names if n.startswith("_")}


def _foreign_private_names(tree: ast.AST, own: set[str], where: str) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("tickwire"):
            found += [
                f"{where}:{node.lineno} imports {a.name}" for a in node.names if a.name[0] == "_"
            ]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in own
        ):
            found.append(f"{where}:{node.lineno} reads {ast.unparse(node)}")
    return found


def test_no_private_names_of_other_libraries() -> None:
    """The package reads no underscored name it does not define itself (trio-websocket's
    and wsproto's internals above all: issue 12), and imports none."""
    own = _own_private_names() | NAMEDTUPLE_API
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += _foreign_private_names(ast.parse(path.read_text(), str(path)), own, path.name)
    assert not found, found


def test_the_private_name_check_sees_a_foreign_one() -> None:
    code = "from wsproto.frame_protocol import _XOR_TABLE\nif ws._wsproto.state: pass\n"
    found = _foreign_private_names(ast.parse(code), _own_private_names(), "x")
    assert found == ["x:1 imports _XOR_TABLE", "x:2 reads ws._wsproto"]
