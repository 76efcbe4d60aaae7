"""The live dashboard: a page that shows a topic as it changes, served by tickwire itself.

Imports: stdlib, attrs.

``tickwire serve --demo ticker`` serves it on its metrics port (``http://127.0.0.1:8766/``):
the quote table with changed cells marked, a live chart of one symbol and the
connection's own figures; ``--demo game`` draws the world on a canvas; any server shows a
topic with ``--dashboard on`` and ``/?topic=NAME``. The page is tickwire's JavaScript
client (``clients/js``) and the dashboard's sources (``clients/js/dashboard``), bundled by
``clients/js/dashboard/build.mjs`` into ``assets/``, which ships in this package: nothing
needs Node.js where tickwire is installed. ``assets/manifest.json`` records the SHA-256 of
every source the bundle was built from; tests/test_dashboard.py checks them against the
repository, and CI builds the bundle again and compares (docs/javascript.md).

The page is on the metrics port rather than the WebSocket port so that the port clients
connect to speaks nothing but WebSocket. The page then connects to the WebSocket port from
the metrics port's origin: a server with ``allowed_origins`` must list that origin.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any, Final

import attrs

__all__ = ["VIEWS", "Dashboard"]

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
}

# What the page may do, and nothing else: its own scripts and styles, WebAssembly for the
# zstd decoder ('wasm-unsafe-eval'), and WebSocket connections (to the server named by
# dashboard.json or ?url=). A page of yours that embeds the client needs the same three.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

VIEWS: Final[Mapping[str, Mapping[str, Any]]] = {
    # The quote table without seq, which the demo's quotes do not carry.
    "ticker": {
        "kind": "ticker",
        "topic": "quotes",
        "chart": ["bid", "ask"],
        "columns": ["bid", "ask", "bid_size", "ask_size", "ts"],
    },
    "game": {"kind": "world", "topic": "world"},
}
"""What the dashboard shows for each demo (``view`` in ``/dashboard.json``)."""


@attrs.frozen
class _Asset:
    content_type: str
    body: bytes
    gzipped: bytes


def _load_assets() -> dict[str, _Asset]:
    folder = resources.files(__package__) / "assets"
    assets = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.name == "manifest.json" or suffix not in CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        assets[entry.name] = _Asset(CONTENT_TYPES[suffix], body, gzip.compress(body, mtime=0))
    return assets


@attrs.define(eq=False, kw_only=True)
class Dashboard:
    """The dashboard's HTTP answers, for the metrics endpoint to serve.

    Attributes:
        port: the WebSocket server's port, which the page connects to (on the host it was
            loaded from).
        scheme: ``ws`` or ``wss``.
        view: what to show (:data:`VIEWS`), or None to let the page's ``?topic=`` choose.
    """

    port: int
    scheme: str = attrs.field(default="ws", validator=attrs.validators.in_(("ws", "wss")))
    view: Mapping[str, Any] | None = None
    _assets: dict[str, _Asset] = attrs.field(init=False, factory=_load_assets)

    def config(self) -> bytes:
        """``/dashboard.json``: where the server is and what to show."""
        return json.dumps(
            {"scheme": self.scheme, "port": self.port, "path": "/", "view": self.view}
        ).encode()

    def respond(
        self, path: str, *, accept_gzip: bool = False
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """(status, headers, body) for *path*, or None when it is not the dashboard's."""
        if path == "/dashboard.json":
            headers = [("content-type", "application/json"), ("cache-control", "no-store")]
            return 200, headers, self.config()
        if path in ("/", "/index.html"):
            name = "index.html"
        elif path.startswith("/assets/"):
            name = path.removeprefix("/assets/")
        else:
            return None
        asset = self._assets.get(name)
        if asset is None or (name == "index.html" and path.startswith("/assets/")):
            return None
        headers = [
            ("content-type", asset.content_type),
            ("cache-control", "no-cache"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ]
        if name == "index.html":
            headers.append(("content-security-policy", CONTENT_SECURITY_POLICY))
        if accept_gzip:
            headers += [("content-encoding", "gzip"), ("vary", "accept-encoding")]
            return 200, headers, asset.gzipped
        headers.append(("vary", "accept-encoding"))
        return 200, headers, asset.body
