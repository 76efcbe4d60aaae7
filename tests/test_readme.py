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


def test_every_python_snippet_runs_as_written(tmp_path: Path) -> None:
    """Each block as a user pastes it: the embedded server (on the ports it names) serves
    quotes and /metrics; the client, run against it, prints what it receives; the others
    run in-process."""
    import subprocess
    import sys
    import time
    import urllib.request

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    servers = [b for b in blocks if "open_server" in b and "trio.run(main)" in b]
    clients = [b for b in blocks if "open_client" in b and "trio.run(main)" in b]
    others = [b for b in blocks if b not in servers and b not in clients]
    assert (len(servers), len(clients), len(others)) == (1, 1, 2)
    for i, block in enumerate(others):
        exec(compile(block, f"README.md block {i}", "exec"), {})
    (tmp_path / "server.py").write_text(servers[0])
    (tmp_path / "client.py").write_text(clients[0])
    server = subprocess.Popen([sys.executable, str(tmp_path / "server.py")])
    client = None
    try:
        deadline = time.monotonic() + 30
        while True:  # the snippet's own ports, once it listens (a real wait on a real process)
            try:
                with urllib.request.urlopen("http://127.0.0.1:8766/metrics", timeout=5) as r:
                    assert b"tickwire_connections_open" in r.read()
                break
            except OSError:
                assert server.poll() is None, "the server snippet exited"
                assert time.monotonic() < deadline, "the server snippet never listened"
                time.sleep(0.1)
        client = subprocess.Popen(
            [sys.executable, str(tmp_path / "client.py")], stdout=subprocess.PIPE, text=True
        )
        assert client.stdout is not None
        first = client.stdout.readline()
        assert first.startswith(("TableReset 1 symbols", "TableChanged 1 symbols")), first
    finally:
        for process in (client, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
                if process.stdout is not None:
                    process.stdout.close()
