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


def test_every_python_block_in_the_readme_compiles() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(blocks) >= 4
    for block in blocks:
        compile(block, "README.md", "exec")


def test_the_quick_start_serve_tail_and_scrape() -> None:
    """The README's quick start, as a new user types it (with free ports): serve the demo,
    watch it with tickwire tail, scrape /metrics and /readyz, then Ctrl+C."""
    import json
    import signal
    import subprocess
    import sys
    import urllib.request

    from .helpers import tickwire_serve

    text = README.read_text()
    assert "tickwire serve --demo ticker" in text
    assert "tickwire tail ws://127.0.0.1:8765/ quotes 'trades.*' --count 20" in text
    assert "curl -s http://127.0.0.1:8766/metrics" in text
    cli = [sys.executable, "-m", "tickwire.cli"]
    with tickwire_serve("--demo", "ticker", metrics=True) as served:
        assert served.metrics is not None
        tail = subprocess.run(
            [*cli, "tail", served.url, "quotes", "trades.*", "--count", "20"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert tail.returncode == 0, tail.stderr
        lines = tail.stdout.splitlines()
        assert len(lines) == 20
        assert any(" quotes #" in line for line in lines)
        assert "compression" in tail.stderr
        as_json = subprocess.run(
            [*cli, "tail", served.url, "trades.*", "--json", "--count", "3", "--no-stats"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert [json.loads(line)["type"] for line in as_json.stdout.splitlines()] == ["message"] * 3
        with urllib.request.urlopen(served.metrics, timeout=10) as response:
            scraped = response.read().decode()
        opened = re.search(r"^tickwire_connections_opened_total (\S+)", scraped, re.M)
        assert opened is not None
        assert float(opened.group(1)) == 2  # the two tails
        readyz = served.metrics.replace("/metrics", "/readyz")
        with urllib.request.urlopen(readyz, timeout=10) as r:
            assert r.read() == b"ready\n"
        served.process.send_signal(signal.SIGINT)
        assert served.process.wait(timeout=30) == 0
