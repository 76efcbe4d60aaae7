"""Every script in examples/ runs to completion (a smoke test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))
# examples/nginx.conf has its own test, with a real nginx: tests/test_nginx.py.


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_there_are_examples() -> None:
    assert EXAMPLES


def test_the_game_client_plays_against_the_game_server_in_another_process() -> None:
    """The README's two-terminal game: examples/game_server.py 0 PORT, then
    examples/game_client.py ws://127.0.0.1:PORT/."""
    import re
    import signal

    folder = Path(__file__).parent.parent / "examples"
    server = subprocess.Popen(
        [sys.executable, str(folder / "game_server.py"), "0", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        url = re.search(r"ws://127\.0\.0\.1:\d+/", line).group(0)  # type: ignore[union-attr]
        done = subprocess.run(
            [sys.executable, str(folder / "game_client.py"), url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "ann reached (70.0, 30.0)" in done.stdout
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
