"""The deployment of docs/scaling.md, for real: a redis-server, two `tickwire serve --redis`
processes behind examples/nginx.conf, a backend running examples/publisher.py; then one
server killed with SIGKILL mid-stream. Every client resumes on the other server: messages
lost and messages delivered twice are counted, and both must be 0. Also `--workers`."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import tickwire
from tests.realredis import RedisServer, free_port, needs_redis, redis_server
from tests.test_nginx import NGINX, configure, needs_nginx, tls, wait_for_port
from tickwire import ClientConfig, Reconnect

pytestmark = needs_redis

ROOT = Path(__file__).parent.parent
PUBLISHER = ROOT / "examples" / "publisher.py"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


class Serving:
    """A `tickwire serve` subprocess; its output is read (and kept) until it ends."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url = ""
        self._changed = trio.Event()

    async def wait_for(self, pattern: str, count: int = 1) -> list[str]:
        """The first *count* matches of *pattern*, once the process has said them."""
        while True:
            found = [m.group(0) for x in self.lines if (m := re.search(pattern, x))]
            if len(found) >= count:
                return found[:count]
            await self._changed.wait()

    async def read(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.process.stdout is not None
        buffer = b""
        started = False
        while chunk := await self.process.stdout.receive_some(65536):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                self._changed.set()
                self._changed = trio.Event()
                found = re.search(r"serving on (ws://\S+/)", line)
                if found and not started:
                    self.url = found.group(1)
                    started = True
                    task_status.started()
        if not started:
            raise AssertionError("tickwire serve ended first:\n" + "\n".join(self.lines))


async def serve(nursery: trio.Nursery, *flags: str) -> Serving:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tickwire", "serve", "--log-level", "warning", *flags],
        stdout=subprocess.PIPE,
    )
    serving = Serving(process)
    await nursery.start(serving.read)
    return serving


async def stop(process: trio.Process) -> None:
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(20):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


METRICS = r"http://127\.0\.0\.1:\d+/metrics"
COUNT = 1500  # messages the backend publishes, 300 a second


@needs_nginx
async def test_a_server_killed_behind_nginx_loses_and_duplicates_nothing(
    tmp_path: Path, redis: RedisServer
) -> None:
    assert NGINX is not None
    client_tls = tls(tmp_path)
    ports, listen = [free_port(), free_port()], free_port()
    fast = ClientConfig(reconnect=Reconnect(initial_delay=0.05, max_delay=0.5, max_attempts=100))
    flags = ["--redis", redis.url, "--metrics-port", "0", "--trusted-proxies", "127.0.0.1"]
    flags += ["--shutdown-timeout", "1"]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            one = await serve(nursery, "--port", str(ports[0]), *flags)
            two = await serve(nursery, "--port", str(ports[1]), *flags)
            conf = configure(tmp_path, listen, ports)
            nginx = await trio.lowlevel.open_process([NGINX, "-p", str(tmp_path), "-c", str(conf)])
            publisher: trio.Process | None = None
            try:
                await wait_for_port(listen)
                url = f"wss://localhost:{listen}/"
                got: dict[int, list[tickwire.Update]] = {}
                subscribed = [trio.Event() for _ in range(4)]
                received = [trio.Event() for _ in range(4)]
                reconnects = [0] * 4

                async def client(index: int) -> None:
                    updates = got.setdefault(index, [])
                    async with (
                        tickwire.open_client(url, ssl_context=client_tls, config=fast) as c,
                        c.subscribe("orders") as orders,
                    ):
                        subscribed[index].set()
                        while sum(isinstance(u, tickwire.Message) for u in updates) < COUNT:
                            updates.append(await orders.receive())
                            if len(updates) == 200:
                                received[index].set()
                        reconnects[index] = c.statistics().reconnects

                async with trio.open_nursery() as clients:
                    for index in range(4):
                        clients.start_soon(client, index)
                    for event in subscribed:  # before the first message
                        await event.wait()
                    publisher = await trio.lowlevel.open_process(
                        [
                            sys.executable,
                            str(PUBLISHER),
                            "--redis",
                            redis.url,
                            "--count",
                            str(COUNT),
                            "--rate",
                            "300",
                            "--run",
                            tmp_path.name,
                        ],
                        stdout=subprocess.PIPE,
                    )
                    for event in received:  # every client is mid-stream
                        await event.wait()
                    (metrics,) = await one.wait_for(METRICS)
                    on_one = await connections_open(metrics)
                    os.kill(one.process.pid, signal.SIGKILL)  # a crash: no close frame
                    await one.process.wait()
                assert publisher.stdout is not None
                said = b""
                while chunk := await publisher.stdout.receive_some(65536):
                    said += chunk
                assert said.startswith(f"published {COUNT} messages on orders".encode()), said
                assert await publisher.wait() == 0
                assert on_one == 2  # least_conn: two of the four clients were on it
                assert sorted(reconnects) == [0, 0, 1, 1]  # and they came back on two
            finally:
                for process in (publisher, nginx, one.process, two.process):
                    if process is not None:
                        await stop(process)
    for updates in got.values():
        messages = [u for u in updates if isinstance(u, tickwire.Message)]
        numbers = [m.payload["n"] for m in messages]  # type: ignore[index]
        lost = set(range(COUNT)) - set(numbers)
        duplicated = len(numbers) - len(set(numbers))
        assert (len(lost), duplicated) == (0, 0)
        assert numbers == list(range(COUNT))  # in order, too
        assert [m.offset for m in messages] == list(range(1, COUNT + 1))
        assert not [u for u in updates if isinstance(u, tickwire.Lost)]


async def test_workers_share_a_port_and_topics_and_drain_together_on_sigterm(
    redis: RedisServer,
) -> None:
    """`tickwire serve --workers 2 --demo ticker`: one port, two processes, the demo's
    trades from either (one feed for both); SIGTERM drains both and the status is 0."""
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            served = await serve(
                nursery, "--workers", "2", "--port", "0", "--metrics-port", "0",
                "--demo", "ticker", "--redis", redis.url,
            )  # fmt: skip
            try:
                await served.wait_for("2 workers serving on")
                assert sum("serving on" in x and "of 2)" in x for x in served.lines) == 2
                # Each worker on its own metrics port.
                metrics = await served.wait_for(METRICS, 2)
                assert len(set(metrics)) == 2
                async with contextlib.AsyncExitStack() as stack:
                    # 16 connections: the kernel spreads them over both workers (all on
                    # one would happen once in 2**15 runs).
                    for _ in range(16):
                        client = await stack.enter_async_context(tickwire.open_client(served.url))
                        trades = await stack.enter_async_context(client.subscribe("trades.*"))
                        update = await trades.receive()  # the feed reaches either worker
                        assert isinstance(update, tickwire.Message)
                    counts = [await connections_open(m) for m in metrics]
                    assert sum(counts) == 16
                    assert min(counts) > 0, counts
                served.process.send_signal(signal.SIGTERM)
                assert await served.process.wait() == 0
                assert served.lines[-1] == "tickwire: 2 workers shut down"
            finally:
                await stop(served.process)


async def connections_open(metrics: str) -> int:
    def get() -> str:
        with urllib.request.urlopen(metrics, timeout=10) as response:
            return response.read().decode()  # type: ignore[no-any-return]

    text = await trio.to_thread.run_sync(get)
    found = re.search(r"^tickwire_connections_open (\d+)", text, re.M)
    assert found is not None
    return int(found.group(1))
