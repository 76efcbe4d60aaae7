"""The self-contained Python examples in docs/ run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"


def blocks() -> list[tuple[str, str]]:
    found = []
    for path in sorted(DOCS.glob("*.md")):
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL)):
            if (
                block.startswith(("from tickwire", "import tickwire"))
                and "async " not in block
                and "await" not in block
            ):
                found.append((f"{path.name}#{i}", block))
    return found


@pytest.mark.parametrize(("where", "code"), blocks(), ids=[w for w, _ in blocks()])
def test_doc_example_runs(where: str, code: str) -> None:
    exec(compile(code, where, "exec"), {})


def test_the_table_example_is_among_them() -> None:
    assert any("hub.table(" in code for _, code in blocks())
