"""The live dashboard: what ships in the package, how the metrics port serves it, and the
page itself in a real Chromium (Debian's, installed by .ci/run) driven by Playwright.

The browser tests run ``tickwire serve --demo ...`` as a subprocess on free ports of
127.0.0.1 and compare the page's table with what a Python tickwire client holds at the same
offset. Where Chromium is not installed they are skipped, and say so in capitals. Each
writes a screenshot to ``$TICKWIRE_ARTIFACTS`` (default ``build/artifacts``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

from tickwire.broadcast import Hub
from tickwire.dashboard import CONTENT_SECURITY_POLICY, VIEWS, Dashboard
from tickwire.metrics import MetricsEndpoint, _accepts_gzip, registry_for, serve_metrics
from tickwire.server import Server

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "src" / "tickwire" / "dashboard" / "assets"
JS = ROOT / "clients" / "js"
ARTIFACTS = Path(os.environ.get("TICKWIRE_ARTIFACTS", ROOT / "build" / "artifacts"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- what ships ------------------------------------------------------------------------------


def test_the_shipped_bundle_was_built_from_the_sources_in_the_repository() -> None:
    """Every input the manifest names is the file in the repository now, and every output
    is the file shipped: a source changed without rebuilding fails here (CI also rebuilds
    with esbuild and compares bytes: clients/js/dashboard/build.mjs --check)."""
    manifest = json.loads((ASSETS / "manifest.json").read_text())
    stale = [name for name, digest in manifest["inputs"].items() if _sha256(JS / name) != digest]
    assert not stale, f"rebuild the dashboard (cd clients/js && npm run build): {stale} changed"
    for name, output in manifest["outputs"].items():
        assert _sha256(ASSETS / name) == output["sha256"], name
    shipped = {p.name for p in ASSETS.iterdir()} - {"manifest.json"}
    assert shipped == set(manifest["outputs"])
    # Every source of the client and the dashboard is an input, so none can change unseen.
    sources = {
        str(p.relative_to(JS))
        for folder in ("src", "dashboard")
        for p in (JS / folder).iterdir()
        if p.suffix in (".js", ".mjs", ".css", ".html", ".wasm")
    }
    assert sources <= set(manifest["inputs"])


def test_the_wheel_ships_the_dashboard(tmp_path: Path) -> None:
    """`pip install tickwire` alone serves the page: the assets are in the wheel."""
    import zipfile

    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("tickwire-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("index.html", "dashboard.js", "dashboard.css", "zstd-decoder.wasm"):
        assert f"tickwire/dashboard/assets/{asset}" in names


# -- the HTTP answers -------------------------------------------------------------------------


def test_answers_without_a_network() -> None:
    dashboard = Dashboard(port=8765, view=VIEWS["ticker"])
    status, headers, body = dashboard.respond("/") or (0, [], b"")
    assert status == 200
    assert dict(headers)["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert b'<script type="module" src="assets/dashboard.js">' in body
    config = json.loads((dashboard.respond("/dashboard.json") or (0, [], b""))[2])
    assert config == {"scheme": "ws", "port": 8765, "path": "/", "view": dict(VIEWS["ticker"])}
    status, headers, body = dashboard.respond("/assets/zstd-decoder.wasm", accept_gzip=True) or (
        0,
        [],
        b"",
    )
    assert dict(headers)["content-type"] == "application/wasm"
    assert gzip.decompress(body) == (ASSETS / "zstd-decoder.wasm").read_bytes()
    for path in ("/assets/manifest.json", "/assets/../cli.py", "/assets/index.html", "/x"):
        assert dashboard.respond(path) is None, path


@pytest.mark.parametrize(
    ("value", "gzip_ok"),
    [
        (b"gzip, deflate, br", True),
        (b"br;q=1, gzip;q=0.5", True),
        (b"gzip;q=0", False),
        (b"*", True),
        (b"identity", False),
        (b"", False),
    ],
)
def test_accept_encoding(value: bytes, gzip_ok: bool) -> None:
    assert _accepts_gzip(value) is gzip_ok


async def test_the_metrics_port_serves_it_only_when_asked() -> None:
    server = Server(Hub())
    registry = registry_for(server)
    with_page = MetricsEndpoint(server, registry, dashboard=Dashboard(port=1234))
    without = MetricsEndpoint(server, registry)
    assert with_page.answer("GET", "/?topic=quotes")[0] == 200
    assert without.answer("GET", "/")[0] == 404
    assert with_page.answer("POST", "/")[0] == 405
    assert with_page.answer("GET", "/metrics")[0] == 200  # the rest as it was
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(
            lambda task_status: serve_metrics(
                server, "127.0.0.1", 0, dashboard=Dashboard(port=4321), task_status=task_status
            )
        )
        stream = await trio.open_tcp_stream("127.0.0.1", endpoint.port)
        await stream.send_all(
            b"GET /dashboard.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
        await stream.aclose()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["port"] == 4321
        nursery.cancel_scope.cancel()


# -- in a real Chromium ------------------------------------------------------------------------


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the dev extra installs it
        sync_playwright = None  # type: ignore[assignment]
    if executable is None or sync_playwright is None:
        why = (
            "CHROMIUM IS NOT INSTALLED: the dashboard's browser tests DID NOT RUN "
            "(.ci/run installs Debian's chromium; apt-get install chromium)"
        )
        warnings.warn(why, stacklevel=1)
        pytest.skip(why)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable,
            # As root on a machine without a display or a GPU, and with no network beyond
            # loopback: Chromium's own background connections would fail, loudly.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _serve(demo: str, port: int, metrics_port: int, *flags: str) -> Iterator[subprocess.Popen[str]]:
    """``tickwire serve --demo DEMO`` on these ports until the block ends (SIGTERM)."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "tickwire.cli", "serve", "--demo", demo),
            *("--port", str(port), "--metrics-port", str(metrics_port), *flags),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("dashboard on"):
                break
        else:
            raise AssertionError("tickwire serve ended without serving its dashboard")
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _plain(value: Any) -> Any:
    """A table value as the page's state() gives it: numbers and decimals as text."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float | Decimal):
        return str(value)
    return value


def _page_plain(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return value


class Follower:
    """A Python tickwire client in a thread of its own, recording the rows of one table
    topic at each offset it sees, as the server's state to compare the page with."""

    def __init__(self, url: str, topic: str) -> None:
        self.url = url
        self.topic = topic
        self.states: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: trio.run(self._run), daemon=True)

    def __enter__(self) -> Follower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    async def _run(self) -> None:
        from tickwire.client import open_client

        async with open_client(self.url) as client, client.subscribe(self.topic) as sub:
            while not self._stop.is_set():
                with trio.move_on_after(0.2):
                    await sub.receive()
                position = sub.position(self.topic)
                if position is None:
                    continue
                rows = {
                    str(key): {f: _plain(v) for f, v in row.items()}
                    for key, row in sub.table(self.topic).items()
                }
                with self._lock:
                    self.states[(position.epoch, position.offset)] = rows
                    while len(self.states) > 3000:
                        del self.states[next(iter(self.states))]

    def at(self, epoch: int, offset: int, timeout: float = 20.0) -> dict[str, dict[str, Any]]:
        """The rows at (epoch, offset), waiting for the follower to get there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if (epoch, offset) in self.states:
                    return self.states[(epoch, offset)]
                later = [o for e, o in self.states if e == epoch and o > offset]
            if later and min(later) > offset + 50:
                break  # went past it (merged): no state at exactly this offset
            time.sleep(0.05)
        raise LookupError(f"no state at {epoch}/{offset}")


def _wait(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _same_as_server(page: Any, follower: Follower, tries: int = 20) -> tuple[int, int]:
    """The page's table equals the follower's at the page's offset: returns (epoch, offset)."""
    for _ in range(tries):
        state = page.evaluate("() => window.tickwire.state()")
        try:
            server_rows = follower.at(state["epoch"], state["offset"])
        except LookupError:
            continue  # the follower merged past that offset: take another
        page_rows = {
            key: {f: _page_plain(v) for f, v in row.items()} for key, row in state["rows"].items()
        }
        assert page_rows == server_rows
        return state["epoch"], state["offset"]
    raise AssertionError("the page and the follower never held the same offset")


def _screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def test_ticker_dashboard_in_chromium(browser: Any) -> None:
    """The page loads and connects with zstd; after a few seconds its quote table equals
    the server's at the same offset, the chart moves and the figures count; the server is
    killed and started again on its ports, and the page comes back with the new server's
    table."""
    port, metrics_port = _free_port(), _free_port()
    flags = ("--rate", "500", "--symbols", "60")
    url = f"ws://127.0.0.1:{port}/"
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    with _serve("ticker", port, metrics_port, *flags) as process, Follower(url, "quotes") as f:
        page.goto(f"http://127.0.0.1:{metrics_port}/")
        _wait("the page to connect", lambda: page.evaluate("() => window.tickwire?.state?.()"))
        assert page.evaluate("() => window.tickwire.client.subprotocol") == "tickwire.v2+zstd"
        assert page.text_content("#status") == "connected (tickwire.v2+zstd)"
        # N seconds of live updates, counted in updates (the feed's 500 a second), not slept.
        _wait(
            "3 s of updates", lambda: page.evaluate("() => window.tickwire.state().offset") >= 1500
        )
        epoch, offset = _same_as_server(page, f)
        assert offset > 0
        # One HTML row per row of the table (symbols appear with their first quote).
        _wait(
            "the page's rows",
            lambda: (
                page.locator("table.rows tbody tr").count()
                == len(page.evaluate("() => window.tickwire.state().rows"))
                > 40
            ),
        )
        # The ticker's columns (dashboard.json's view): the key, then all but seq.
        header = page.locator("table.rows thead th").all_text_contents()
        assert header == ["symbol", "bid", "ask", "bid_size", "ask_size", "ts"]
        points = page.evaluate("() => window.tickwire.chart.points")
        _wait(
            "the chart to move",
            lambda: page.evaluate("() => window.tickwire.chart.points") > points,
        )
        _wait(
            "updates/s",
            lambda: (page.evaluate("() => window.tickwire.figures") or {}).get("updatesPerSecond"),
        )

        def with_latency() -> Any:
            figures = page.evaluate("() => window.tickwire.figures") or {}
            return figures if figures.get("latencyMs") is not None else None

        figures = _wait("a latency", with_latency)
        assert figures["ratio"] > 1  # zstd with the server's dictionary
        assert figures["gaps"] == 0
        # The same clock stamps the quotes and reads them: no quote arrives before its time.
        assert figures["latencyMs"] >= 0
        _wait("a marked cell", lambda: page.locator("td.mark-up, td.mark-down").count() > 0)
        _screenshot(page, "dashboard-ticker.png")
        process.kill()  # a crash: no goodbye to the page
        process.wait()
    _wait(
        "the page to see the server gone",
        lambda: page.evaluate("() => !window.tickwire.client.stats.connected"),
    )
    with _serve("ticker", port, metrics_port, *flags), Follower(url, "quotes") as f:
        _wait(
            "the page to reconnect",
            lambda: (
                page.evaluate("() => window.tickwire.client.stats.reconnects") >= 1
                and page.evaluate("() => window.tickwire.client.stats.connected")
            ),
        )
        new_epoch, _ = _wait(
            "the new server's table",
            lambda: (
                (s := page.evaluate("() => window.tickwire.state()"))["epoch"] != epoch
                and (s["epoch"], s["offset"])
            ),
        )
        assert _same_as_server(page, f)[0] == new_epoch
        figures = _wait(
            "the figures to count the reconnection",
            lambda: (page.evaluate("() => window.tickwire.figures") or {}).get("reconnects"),
        )
        assert figures == 1
        assert page.evaluate("() => window.tickwire.client.stats.gaps") >= 1  # said, not silent
        # The chart follows a symbol of the new server's (a new seed, other symbols).
        _wait(
            "the chart's symbol",
            lambda: (
                page.evaluate("() => document.querySelector('#symbol').value")
                in page.evaluate("() => window.tickwire.state().rows")
            ),
        )
        _screenshot(page, "dashboard-ticker-after-restart.png")
    assert errors == []


def test_game_dashboard_in_chromium(browser: Any) -> None:
    """--demo game draws the world on a canvas: every entity of the server's table, frame
    after frame."""
    port, metrics_port = _free_port(), _free_port()
    url = f"ws://127.0.0.1:{port}/"
    page = browser.new_page(viewport={"width": 900, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    with _serve("game", port, metrics_port, "--entities", "80"), Follower(url, "world") as f:
        page.goto(f"http://127.0.0.1:{metrics_port}/")
        _wait("the world", lambda: page.evaluate("() => window.tickwire?.world?.frames > 0"))
        frames = page.evaluate("() => window.tickwire.world.frames")
        _wait("more frames", lambda: page.evaluate("() => window.tickwire.world.frames") > frames)
        _same_as_server(page, f)
        # One frame drawn now, and the rows it was drawn from, in the same task.
        counts, rows = page.evaluate(
            """() => { window.tickwire.world.draw();
                 return [document.querySelector('.world .counts').textContent,
                         Object.keys(window.tickwire.state().rows).length]; }"""
        )
        assert sum(int(n) for n in re.findall(r"(\d+) \w+", counts)) == rows
        # Something other than the background was drawn.
        painted = page.evaluate(
            """() => { const c = document.querySelector('canvas#world');
                 const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                 let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 100) n++;
                 return n; }"""
        )
        assert painted > 80
        _wait(
            "updates/s",
            lambda: (page.evaluate("() => window.tickwire.figures") or {}).get("updatesPerSecond"),
        )
        _screenshot(page, "dashboard-game.png")
    assert errors == []


def test_origin_check_in_chromium(browser: Any) -> None:
    """A server that checks Origin serves the page when its allowed_origins lists the
    metrics port's origin, and the page says why when it does not."""
    port, metrics_port = _free_port(), _free_port()
    page_origin = f"http://127.0.0.1:{metrics_port}"
    page = browser.new_page()
    with _serve("game", port, metrics_port, "--allowed-origins", page_origin):
        page.goto(f"{page_origin}/")
        _wait("the page to connect", lambda: page.evaluate("() => window.tickwire?.state?.()"))
    port, metrics_port = _free_port(), _free_port()
    with _serve("game", port, metrics_port, "--allowed-origins", "https://app.example.com"):
        page.goto(f"http://127.0.0.1:{metrics_port}/")
        message = _wait(
            "the page to say why",
            lambda: (
                "allowed_origins" in (page.text_content("#message") or "")
                and page.text_content("#message")
            ),
        )
        assert f"http://127.0.0.1:{metrics_port}" in message
        assert page.evaluate("() => window.tickwire.client") is None  # never connected


def test_any_topic_in_chromium(browser: Any) -> None:
    """?topic= shows any topic: a stream pattern as its latest messages."""
    port, metrics_port = _free_port(), _free_port()
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    with _serve("ticker", port, metrics_port, "--rate", "500"):
        page.goto(f"http://127.0.0.1:{metrics_port}/?topic=trades.*")
        _wait("trades", lambda: page.locator("ol.stream li").count() >= 5)
        first = page.text_content("ol.stream li") or ""
        assert re.match(r"trades\.\w+ #\d+ \{", first), first
    assert errors == []
