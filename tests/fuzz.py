"""The long fuzz run: hostile clients against a real ``tickwire serve --demo ticker``.

Usage:
    python tests/fuzz.py                      # 100,000 inputs (a few minutes on 2 cores)
    python tests/fuzz.py --quick              # 3,000, for CI
    python tests/fuzz.py --inputs 500000 --seed 7 --connections 32

The server runs in its own process on 127.0.0.1 with its production defaults, but for
publishing allowed on ``chat`` and ``input.*`` (to reach the publish path) and a history
budget of 64 MiB in all. Hostile clients (the inputs of tests/fuzzing.py: mutated messages,
hostile payloads, decompression bombs, bad frames, JSON that msgpack could not carry) come
over many connections, reconnecting when closed; a bystander subscribed to the demo's
``quotes`` table and ``trades.*`` streams must see every message, with no loss.

It ends with exit status 0 only if the server never logged a traceback or an error, the
bystander saw no gap, the server is still ready, its history stayed within its budget and
its resident memory grew by less than the documented bound.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio
import wsproto.utilities
from wsproto.events import TextMessage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzzing import inputs
from tests.helpers import RawClient
from tickwire import Lost, Message, TableReset, open_client
from tickwire.sansio.negotiation import JSON, MSGPACK_ZSTD

HISTORY_BUDGET = 64 * 1024 * 1024
# What the server may grow by beyond its history budget: outboxes of the connections open at
# once (they read what they are sent), Python's arenas, zstd contexts, allocator slack.
SLACK = 96 * 1024 * 1024

CONFIG = f"""
client_publish = ["chat", "input.*"]
max_history_bytes = {HISTORY_BUDGET}
log_level = "warning"
"""


def rss(pid: int) -> int:
    """Resident bytes of process *pid* (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0  # pragma: no cover


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else -1.0


def lost(update: Any) -> bool:
    """A loss the bystander would see: Lost, or a table reset other than the first one and
    the keyframes."""
    if isinstance(update, Lost):
        return True
    return isinstance(update, TableReset) and update.reason not in ("subscribed", "keyframe")


class Run:
    def __init__(self, total: int, seed: int, connections: int) -> None:
        self.total = total
        self.seed = seed
        self.connections = connections
        self.sent = 0
        self.opened = 0
        self.closes: collections.Counter[int] = collections.Counter()
        self.gaps: list[str] = []
        self.bystander_updates = 0
        self.bystander_reconnects = 0
        self.peak_rss = 0
        self.source = inputs(seed)

    async def hostile(self, port: int, worker: int) -> None:
        """One hostile client after another, until the inputs are sent."""
        while self.sent < self.total:
            batch = list(itertools.islice(self.source, 50))
            text = batch[0][0] == "text"
            self.opened += 1
            try:
                async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                    raw = RawClient(stream)
                    with trio.move_on_after(10):
                        await raw.handshake([JSON] if text else [MSGPACK_ZSTD])
                        await raw.message(answer_pings=True)  # HELLO
                        code = await self._send(raw, batch)
                        self.closes[int(code)] += 1
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
                self.closes[1006] += 1

    async def _send(self, raw: RawClient, batch: list[tuple[str, bytes | str]]) -> int:
        try:
            for kind, data in batch:
                if self.sent >= self.total:
                    break
                self.sent += 1
                if kind == "raw":
                    assert isinstance(data, bytes)
                    await raw.stream.send_all(data)
                elif isinstance(data, str):
                    await raw.stream.send_all(raw.ws.send(TextMessage(data)))
                else:
                    await raw.send_bytes(data)
            await raw.send_bytes(b"")  # an empty message ends it (1007) if nothing else did
            return await raw.close_code(answer_pings=True)
        except (trio.BrokenResourceError, wsproto.utilities.LocalProtocolError):
            # Still sending on what the server closed: its close frame is there to read.
            try:
                return await raw.close_code(answer_pings=True)
            except (ConnectionError, EOFError, trio.BrokenResourceError):
                return 1006
        except (ConnectionError, EOFError, trio.ClosedResourceError):
            return 1006

    def start_bystander(self, url: str) -> subprocess.Popen[str]:
        """The bystander runs in a process of its own, so that the hostile clients' CPU
        (this process) cannot make it a slow consumer."""
        command = [sys.executable, __file__, "--bystander", url]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    def stop_bystander(self, process: subprocess.Popen[str]) -> None:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
        report = json.loads(out.strip().splitlines()[-1])
        self.bystander_updates = report["updates"]
        self.gaps = report["gaps"]
        self.bystander_reconnects = report["reconnects"]

    async def watch_memory(self, pid: int, done: trio.Event) -> None:
        while not done.is_set():
            self.peak_rss = max(self.peak_rss, rss(pid))
            with trio.move_on_after(0.2):
                await done.wait()


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "fuzz.toml"
        config.write_text(CONFIG)
        log = Path(tmp) / "server.log"
        command = [
            sys.executable,
            *("-m", "tickwire.cli", "serve", "--demo", "ticker", "--config", str(config)),
            *("--port", "0", "--metrics-port", "0"),
        ]
        with log.open("w") as errors:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            assert process.stdout is not None
            url = re.search(r"ws://127\.0\.0\.1:\d+/", process.stdout.readline()).group(0)  # type: ignore[union-attr]
            metrics_url = re.search(  # type: ignore[union-attr]
                r"http://127\.0\.0\.1:\d+/metrics", process.stdout.readline()
            ).group(0)
            port = int(url.rsplit(":", 1)[1].strip("/"))
            await trio.sleep(1.0)  # the demo's feed warms up
            start_rss = rss(process.pid)
            run = Run(args.inputs, args.seed, args.connections)
            done = trio.Event()
            begun = time.monotonic()
            bystander = run.start_bystander(url)
            await trio.sleep(1.0)  # subscribed
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run.watch_memory, process.pid, done)
                async with trio.open_nursery() as hostile:
                    for worker in range(args.connections):
                        hostile.start_soon(run.hostile, port, worker)
                await trio.sleep(1.0)  # the bystander reads what was sent last
                done.set()
            await trio.to_thread.run_sync(run.stop_bystander, bystander)
            seconds = time.monotonic() - begun
            scraped = await trio.to_thread.run_sync(
                lambda: urllib.request.urlopen(metrics_url, timeout=10).read().decode()
            )
            ready = await trio.to_thread.run_sync(
                lambda: (
                    urllib.request.urlopen(
                        metrics_url.replace("/metrics", "/readyz"), timeout=10
                    ).status
                )
            )
            end_rss = rss(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
        server_log = log.read_text()
    tracebacks = server_log.count("Traceback")
    errors = len(re.findall(r"\bERROR\b", server_log))
    history = metric(scraped, "tickwire_history_bytes")
    internal = metric(scraped, "tickwire_hub_internal_errors_total")
    growth = run.peak_rss - start_rss
    print(f"inputs sent          {run.sent:,} over {run.opened:,} connections in {seconds:.0f} s")
    print(f"close codes          {dict(sorted(run.closes.items()))}")
    print(f"server tracebacks    {tracebacks}, error lines {errors}")
    print(
        f"hub internal errors  {internal:.0f}, values refused "
        f"{metric(scraped, 'tickwire_values_refused_total'):.0f}"
    )
    print(
        f"bystander            {run.bystander_updates:,} updates, {len(run.gaps)} gaps, "
        f"{run.bystander_reconnects} reconnects"
    )
    print(f"server ready         {ready == 200}")
    print(f"history              {history / 2**20:.1f} MiB (budget {HISTORY_BUDGET / 2**20:.0f})")
    mib = 2**20
    print(
        f"server memory        {start_rss / mib:.1f} MiB at start, peak {run.peak_rss / mib:.1f},"
        f" end {end_rss / mib:.1f} (growth {growth / mib:.1f} MiB, bound "
        f"{(HISTORY_BUDGET + SLACK) / 2**20:.0f})"
    )
    for gap in run.gaps[:10]:
        print(f"  gap: {gap[:200]}")
    if tracebacks or errors:
        print(server_log[-4000:])
    ok = (
        not tracebacks
        and not errors
        and not run.gaps
        and ready == 200
        and internal == 0
        and 0 <= history <= HISTORY_BUDGET
        and growth <= HISTORY_BUDGET + SLACK
        and run.sent >= run.total
        and run.bystander_updates > 0
    )
    print("fuzz: OK" if ok else "fuzz: FAILED")
    return 0 if ok else 1


async def bystander(url: str) -> None:
    """Subscribed to the demo's table and streams until SIGINT; then one JSON line: updates,
    every loss seen (Lost, a reset that is not a keyframe, an offset jump), reconnects."""
    updates = 0
    gaps: list[str] = []

    async def follow(subscription: Any) -> None:
        nonlocal updates
        last: dict[str, int] = {}
        async for update in subscription:
            updates += 1
            if lost(update):
                gaps.append(
                    f"{type(update).__name__} {update.topic} {getattr(update, 'reason', '')}"
                )
            elif isinstance(update, Message):
                previous = last.get(update.topic)
                if previous is not None and update.offset != previous + 1:
                    gaps.append(f"{update.topic}: {previous} -> {update.offset}")
                last[update.topic] = update.offset

    async with open_client(url) as client:
        async with client.subscribe("trades.*") as trades, client.subscribe("quotes") as quotes:
            with trio.open_signal_receiver(signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(follow, trades)
                    nursery.start_soon(follow, quotes)
                    async for _ in signals:
                        break
                    nursery.cancel_scope.cancel()
        reconnects = client.statistics().reconnects
    print(json.dumps({"updates": updates, "gaps": gaps, "reconnects": reconnects}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="3,000 inputs, for CI")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--bystander", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bystander:
        trio.run(bystander, args.bystander)
        return 0
    if args.quick:
        args.inputs = 3000
    os.environ.setdefault("PYTHONHASHSEED", "0")
    return trio.run(main_async, args)


if __name__ == "__main__":
    sys.exit(main())
