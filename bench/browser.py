"""The JavaScript client in Chromium: what it costs a page to download, and to decode each
update, against plain JSON over WebSocket on the same feed.

What it measures, in one run:

- **bundle size**: the client alone (``clients/js/src``, bundled and minified by esbuild,
  with its zstd decoder), and the whole dashboard page, gzipped; plain JSON needs no
  library (0 bytes).
- **decode cost per update**: the page records the live ``quotes`` table of ``tickwire
  serve --demo ticker`` as its WebSocket receives it, once with ``tickwire.v2+zstd`` (the
  server's trained dictionary) and once with ``tickwire.v2`` (msgpack alone), then replays
  the recordings into fresh clients through a stand-in WebSocket, timing everything from
  the message event to the table's rows updated and the application called. The same
  updates, as a JSON feed would send them (an array of changed fields with the key per
  window, prices as exact decimal strings, nanosecond timestamps as strings), are replayed
  as text messages to a handler that parses them and applies them to a plain-object table.
  Each is divided by the updates delivered; the report is the median of the replays.

Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright; the server runs as a
subprocess on free ports of 127.0.0.1. Without Chromium the bench says so and exits 0.

    python bench/browser.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "clients" / "js"
ASSETS = ROOT / "src" / "tickwire" / "dashboard" / "assets"

RECORD = """async ([seconds, compression]) => {
  const Client = window.tickwire.client.constructor;
  const recorded = [];
  let protocol = null;
  class Recording extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      this.addEventListener("open", () => { protocol = this.protocol; });
      this.addEventListener("message", (event) => recorded.push(event.data));
    }
  }
  const client = new Client(window.tickwire.url, { WebSocket: Recording, compression });
  await client._first;
  await client.subscribe("quotes", () => {});
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  client.close();
  window.recordings ??= {};
  window.recordings[compression ? "zstd" : "msgpack"] = { protocol, messages: recorded };
  return { protocol, messages: recorded.length,
           bytes: recorded.reduce((n, m) => n + m.byteLength, 0) };
}"""

REPLAY = """async ([which, skip]) => {
  const Client = window.tickwire.client.constructor;
  const feed = (target, list) => {
    for (const data of list) target.dispatchEvent(new MessageEvent("message", { data }));
  };
  const plain = (v) => (typeof v === "bigint" ? v.toString() : v);
  const { protocol, messages } = window.recordings[which];
  let socket = null;
  class Replay extends EventTarget {
    constructor() { super(); this.protocol = protocol; this.readyState = 1; socket = this; }
    send() {}
    close() {}
  }
  const json = [];
  const client = new Client("ws://replay/", { WebSocket: Replay, reconnect: false,
                                                compression: which === "zstd" });
  client.subscribe("quotes", () => {});
  while (socket === null) await new Promise((resolve) => setTimeout(resolve, 1));
  socket.dispatchEvent(new Event("open"));
  feed(socket, messages.slice(0, skip));
  const before = client.stats.updates;
  const start = performance.now();
  feed(socket, messages.slice(skip));
  const elapsed = performance.now() - start;
  const updates = client.stats.updates - before;
  // The same updates as a JSON feed's messages, once, for the JSON replays.
  if (which === "zstd" && !window.jsonFeed) {
    const again = new Client("ws://replay/", { WebSocket: Replay, reconnect: false });
    socket = null;
    again.subscribe("quotes", (update) => {
      if (update.type === "changed") {
        const batch = [];
        for (const { key, row, fields } of update.changes) {
          const change = { symbol: key };
          for (const f of fields) change[f] = plain(row[f]);
          batch.push(change);
        }
        json.push(JSON.stringify(batch));
      }
    });
    while (socket === null) await new Promise((resolve) => setTimeout(resolve, 1));
    socket.dispatchEvent(new Event("open"));
    feed(socket, messages.slice(0, skip));
    json.length = 0;
    feed(socket, messages.slice(skip));
    window.jsonFeed = json.slice();
  }
  client.close();
  const bytes = messages.slice(skip).reduce((n, m) => n + m.byteLength, 0);
  return { updates, ms: elapsed, bytes };
}"""

REPLAY_JSON = """() => {
  const feed = window.jsonFeed;
  const socket = new EventTarget();
  const rows = Object.create(null);
  let updates = 0;
  socket.addEventListener("message", (event) => {
    for (const change of JSON.parse(event.data)) {
      Object.assign((rows[change.symbol] ??= {}), change);
      updates++;
    }
  });
  const start = performance.now();
  for (const data of feed) socket.dispatchEvent(new MessageEvent("message", { data }));
  const elapsed = performance.now() - start;
  const bytes = feed.reduce((n, m) => n + new TextEncoder().encode(m).length, 0);
  return { updates, ms: elapsed, bytes };
}"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bundle_sizes() -> dict[str, Any]:
    """Gzipped bytes (level 9) of the client alone and of the dashboard page."""
    sizes: dict[str, Any] = {}
    wasm = gzip.compress((JS / "src" / "zstd-decoder.wasm").read_bytes(), 9)
    sizes["zstd_decoder_wasm_gzipped"] = len(wasm)
    esbuild = JS / "node_modules" / "esbuild"
    if esbuild.exists() and shutil.which("node"):
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "tickwire.js"
            script = (
                "require('esbuild').buildSync({entryPoints: ['src/index.js'], bundle: true, "
                "format: 'esm', platform: 'browser', minify: true, external: ['node:*'], "
                f"outfile: {json.dumps(str(out))}, logLevel: 'error'}})"
            )
            subprocess.run(["node", "-e", script], cwd=JS, check=True)
            client = gzip.compress(out.read_bytes(), 9)
        sizes["client_js_gzipped"] = len(client)
        sizes["client_total_gzipped"] = len(client) + len(wasm)
    else:
        print("bundle: clients/js/node_modules is missing (npm ci): the client alone not measured")
    page = sum(
        len(gzip.compress((ASSETS / name).read_bytes(), 9))
        for name in ("index.html", "dashboard.js", "dashboard.css", "zstd-decoder.wasm")
    )
    sizes["dashboard_page_gzipped"] = page
    return sizes


def decode_costs(seconds: float, replays: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    port, metrics_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "tickwire.cli", "serve", "--demo", "ticker"),
            *("--port", str(port), "--metrics-port", str(metrics_port)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if line.startswith("dashboard on"):
                break
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium"),
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{metrics_port}/")
            page.wait_for_function("() => window.tickwire?.client?.stats?.connected")
            # The page's own view costs nothing to what follows: it is closed.
            page.evaluate("() => window.tickwire.client.close()")
            recorded = {
                "zstd": page.evaluate(RECORD, [seconds, True]),
                "msgpack": page.evaluate(RECORD, [seconds, False]),
            }
            version = browser.version
            runs: dict[str, list[dict[str, float]]] = {"zstd": [], "msgpack": [], "json": []}
            for i in range(replays + 2):  # the first two warm the JIT up
                for which in ("zstd", "msgpack"):
                    run = page.evaluate(REPLAY, [which, 10])
                    if i >= 2:
                        runs[which].append(run)
                run = page.evaluate(REPLAY_JSON)
                if i >= 2:
                    runs["json"].append(run)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stdout is not None:
            server.stdout.close()
    out: dict[str, Any] = {"chromium": version, "recorded": recorded}
    for which, results in runs.items():
        per_update = [r["ms"] * 1000 / r["updates"] for r in results if r["updates"]]
        out[which] = {
            "us_per_update_median": statistics.median(per_update),
            "us_per_update_runs": [round(x, 3) for x in per_update],
            "updates": results[0]["updates"],
            "bytes_per_update": results[0]["bytes"] / results[0]["updates"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short recording, for CI")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"bundle": bundle_sizes()}
    for name, value in results["bundle"].items():
        print(f"bundle: {name} = {value:,} bytes")
    if shutil.which("chromium") is None:
        print("CHROMIUM IS NOT INSTALLED: the decode cost in the browser was NOT measured")
    else:
        seconds, replays = (1.0, 3) if args.quick else (5.0, 15)
        costs = decode_costs(seconds, replays)
        results["decode"] = costs
        print(f"Chromium {costs['chromium']}: quotes of tickwire serve --demo ticker")
        json_cost = costs["json"]["us_per_update_median"]
        for which, label in (
            ("zstd", "tickwire.v2+zstd (dictionary)"),
            ("msgpack", "tickwire.v2 (msgpack)"),
            ("json", "JSON over WebSocket"),
        ):
            c = costs[which]
            print(
                f"  {label:32} {c['us_per_update_median']:6.3f} us/update "
                f"({c['us_per_update_median'] / json_cost:4.2f}x JSON), "
                f"{c['bytes_per_update']:5.1f} B/update, {c['updates']:,} updates a replay"
            )
        if min(costs[w]["updates"] for w in ("zstd", "msgpack", "json")) == 0:
            print("no updates were replayed")
            return 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
