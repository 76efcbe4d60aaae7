"""The README's Python example runs as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    codec = [b for b in blocks if "client.events_received()" in b]
    assert codec, "the README lost its codec example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(codec[0], "README.md", "exec"), {})
    assert out.getvalue().startswith("[Data(topic_id=7, offset=1, payload={")
