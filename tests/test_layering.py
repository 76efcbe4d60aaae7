"""STYLE §1 and §7: the sans-I/O core imports no I/O, and every exported name exists."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import tickwire
import tickwire.sansio

SANSIO = Path(tickwire.sansio.__file__).parent
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
