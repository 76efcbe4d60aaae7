"""Fan-out: one publisher, many subscribers, three servers, one run.

Usage:
    python bench/fanout.py                  # 100 and 1,000 subscribers (a few minutes)
    python bench/fanout.py --quick          # seconds, for CI
    python bench/fanout.py --json out.json

Servers (each in its own process, on 127.0.0.1):
- tickwire: ``tickwire.open_server`` + ``Hub.publish_nowait`` (frames once, writes directly,
  one bounded outbox per subscriber; its slow-consumer policy is on);
- websockets: the ``websockets`` library's asyncio server and ``broadcast()``;
- trio-websocket: a task per connection draining a channel into ``send_message()``.

A separate load-generator process opens the subscribers: by default a small C program
(bench/support/fanout_load.c, compiled with the machine's cc on first use) on one epoll
loop, so that on a 2-core machine the server, not the generator, is what is measured;
``--generator python`` (or no C compiler) uses the asyncio one, which parses frames itself
but costs about as much CPU as the servers it loads. Each 100-byte payload ends with the
publish time (``time.monotonic_ns``, the same clock in both processes on Linux). Reported:

- saturation: a burst of messages published back to back (yielding to the event loop after
  each); deliveries a second from the first publish to the last delivery, and the CPU the
  server and the load generator each used over it (the one near 100% is the bottleneck);
- bursts: the same, ten messages between two yields (a tick that changes ten symbols);
  tickwire publishes each ten inside ``Hub.burst()`` (one write per subscriber per burst);
- stalled: 10% of the subscribers stop reading; the messages a second each of the others
  gets, against a run where none stalls;
- latency: messages at a fixed rate (20,000 deliveries a second in all); p50 and p99 of
  publish-to-receive;
- idle memory: the server's resident memory per connection with many idle connections.

Every run is bounded in count and time and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from support import progress, require_plotting, table

PAYLOAD = 100
SERVERS = ("tickwire", "websockets", "trio-websocket")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


SIZE = int(os.environ.get("FANOUT_SIZE", PAYLOAD))  # the payload size of this run


def payload() -> bytes:
    return os.urandom(SIZE - 8) + time.monotonic_ns().to_bytes(8, "big")


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# -- servers ---------------------------------------------------------------------------------


BURST = int(os.environ.get("FANOUT_BURST", 1))  # messages published between two yields


async def _publish(
    send: Any, wait: Any, count: int, rate: float | None, group: Any = contextlib.nullcontext
) -> None:
    """Publish *count* payloads: back to back (yielding after each group of BURST, published
    inside ``group()``) or at *rate* a second."""
    start = time.monotonic()
    for i in range(0, count, BURST):
        with group():
            for _ in range(min(BURST, count - i)):
                send(payload())
        if rate:
            await wait(max(0.0, start + (i + BURST) / rate - time.monotonic()))
        else:
            await wait(0)


def serve_tickwire(subscribers: int, count: int, rate: float | None) -> None:
    import trio

    import tickwire
    from tickwire.config import ServerConfig

    async def main() -> None:
        hub = tickwire.Hub(default_topic=tickwire.broadcast.TopicConfig(history_size=0))
        config = ServerConfig(  # default outbox limits: the slow-consumer policy is on
            max_connections_per_address=100_000, max_new_connections_per_second=100_000
        )
        before = rss_bytes()
        async with tickwire.open_server(hub, "127.0.0.1", 0, config=config) as server:
            emit(event="ready", port=server.port)
            topic = hub.topic("bench")
            while len(topic.subscribers) < subscribers:
                await trio.sleep(0.01)
            emit(event="subscribed", rss_per_connection=(rss_bytes() - before) / subscribers)
            await _publish(
                lambda p: hub.publish_nowait("bench", p),
                trio.sleep,
                count,
                rate,
                hub.burst if BURST > 1 else contextlib.nullcontext,  # one write per burst
            )
            await trio.sleep(1.0)  # let the writers work, then report memory
            emit(event="published", rss=rss_bytes(), peak_rss=peak_rss())
            await trio.sleep(3600)

    trio.run(main)


def serve_websockets(subscribers: int, count: int, rate: float | None) -> None:
    from websockets.asyncio.server import broadcast, serve

    connections: set[Any] = set()

    async def handler(ws: Any) -> None:
        connections.add(ws)
        try:
            await ws.wait_closed()
        finally:
            connections.discard(ws)

    async def main() -> None:
        before = rss_bytes()
        async with serve(handler, "127.0.0.1", 0, compression=None, max_queue=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            emit(event="ready", port=port)
            while len(connections) < subscribers:
                await asyncio.sleep(0.01)
            emit(event="subscribed", rss_per_connection=(rss_bytes() - before) / subscribers)
            await _publish(lambda p: broadcast(connections, p), asyncio.sleep, count, rate)
            await asyncio.sleep(1.0)
            emit(event="published", rss=rss_bytes(), peak_rss=peak_rss())
            await asyncio.sleep(3600)

    asyncio.run(main())


def serve_trio_websocket(subscribers: int, count: int, rate: float | None) -> None:
    import math

    import trio
    import trio_websocket

    channels: list[trio.MemorySendChannel[bytes]] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        send, receive = trio.open_memory_channel[bytes](math.inf)
        channels.append(send)
        try:
            async for message in receive:
                await ws.send_message(message)
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            channels.remove(send)

    def send_all(message: bytes) -> None:
        for channel in channels:
            channel.send_nowait(message)

    async def main() -> None:
        before = rss_bytes()
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
            )
            emit(event="ready", port=server.port)
            while len(channels) < subscribers:
                await trio.sleep(0.01)
            emit(event="subscribed", rss_per_connection=(rss_bytes() - before) / subscribers)
            await _publish(send_all, trio.sleep, count, rate)
            await trio.sleep(1.0)
            emit(event="published", rss=rss_bytes(), peak_rss=peak_rss())
            await trio.sleep(3600)

    trio.run(main)


# -- the load generator -----------------------------------------------------------------------


def subscribe_message() -> bytes:
    """SUBSCRIBE "bench" as a tickwire.v2 client sends it."""
    from tickwire.sansio import Subscribe, encode_message

    message = encode_message(Subscribe(0, "bench"))
    assert isinstance(message, bytes)
    return message


class Subscriber(asyncio.Protocol):
    """Reads unmasked server frames; counts them and keeps each one's latency."""

    def __init__(
        self, done: asyncio.Future[None], expected: int, tickwire: bool, stall: bool = False
    ) -> None:
        self.done, self.expected, self.tickwire, self.stall = done, expected, tickwire, stall
        self.buffer = b""
        self.upgraded = False
        self.received = 0
        self.latencies: list[int] = []
        self.first_sent = 0
        self.last = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        protocol = b"Sec-WebSocket-Protocol: tickwire.v2\r\n" if self.tickwire else b""
        transport.write(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n" + protocol + b"\r\n"
        )

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buffer = self.buffer + data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            assert buffer.startswith(b"HTTP/1.1 101"), buffer[:200]
            buffer = buffer[end + 4 :]
            self.upgraded = True
            if (self.expected == 0 or self.stall) and not self.done.done():
                self.done.set_result(None)  # idle or stalled: connected is all we want
            if self.tickwire:
                # A masked client frame carrying SUBSCRIBE (mask key 0: the bytes as they are).
                assert self.transport is not None
                message = subscribe_message()
                self.transport.write(bytes((0x82, 0x80 | len(message), 0, 0, 0, 0)) + message)
            if self.stall:  # from now on this client reads nothing: a frozen app
                assert self.transport is not None
                self.transport.pause_reading()
                return
        pos, size = 0, len(buffer)
        while size - pos >= 2:
            length = buffer[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            opcode = buffer[pos] & 0x0F
            if opcode == 2 and length >= SIZE:  # a bench message (tickwire: inside DATA)
                sent = int.from_bytes(buffer[end - 8 : end], "big")
                if not self.received:
                    self.first_sent = sent
                self.latencies.append(now - sent)
                self.received += 1
                self.last = now
            elif opcode == 9 and self.transport is not None:  # ping: answer it
                body = buffer[pos + head : end]
                self.transport.write(bytes((0x8A, 0x80 | len(body), 0, 0, 0, 0)) + body)
            pos = end
        self.buffer = buffer[pos:]
        if self.received >= self.expected and not self.done.done():
            self.done.set_result(None)


async def load(
    port: int, subscribers: int, expected: int, tickwire: bool, limit: float, stalled: int = 0
) -> None:
    loop = asyncio.get_running_loop()
    done: list[asyncio.Future[None]] = []
    clients: list[Subscriber] = []
    for i in range(subscribers):
        future: asyncio.Future[None] = loop.create_future()
        stall = i % 10 == 0 and i // 10 < stalled  # spread among the others
        _, client = await loop.create_connection(
            lambda f=future, s=stall: Subscriber(f, expected, tickwire, s), "127.0.0.1", port
        )
        done.append(future)
        clients.append(client)
    emit(event="connected")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*done), timeout=limit)
    clients = [c for c in clients if not c.stall]  # report the clients that read
    received = [c for c in clients if c.received]
    emit(
        event="result",
        delivered=sum(c.received for c in clients),
        first_sent=min((c.first_sent for c in received), default=0),
        last_receive=max((c.last for c in received), default=0),
        latencies_us=sorted(lat // 1000 for c in clients for lat in c.latencies),
    )
    await asyncio.sleep(3600)  # held open until the orchestrator stops this process
    for c in clients:
        if c.transport is not None:
            c.transport.close()


def run_load(args: argparse.Namespace) -> None:
    asyncio.run(
        load(args.port, args.subscribers, args.count, args.tickwire, args.limit, args.stalled)
    )


# -- the orchestrator -------------------------------------------------------------------------


C_SOURCE = Path(__file__).parent / "support" / "fanout_load.c"


def c_generator() -> Path | None:
    """The C load generator, compiled once per source version; None without a compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    digest = hashlib.sha256(C_SOURCE.read_bytes()).hexdigest()[:12]
    binary = Path(tempfile.gettempdir()) / f"tickwire-fanout-load-{digest}"
    if not binary.exists():
        partial = binary.with_suffix(f".{os.getpid()}")
        built = subprocess.run(
            [compiler, "-O2", "-o", str(partial), str(C_SOURCE)], capture_output=True, check=False
        )
        if built.returncode != 0:
            print(f"cannot build the C load generator: {built.stderr.decode()[:500]}")
            return None
        partial.replace(binary)
    return binary


GENERATOR: dict[str, Path | None] = {"c": None}  # set by bench() when the C one is used


def load_generator(
    port: int, subscribers: int, count: int, tickwire: bool, limit: float, stalled: int, size: int
) -> subprocess.Popen[str]:
    binary = GENERATOR["c"]
    if binary is None:
        return child(
            "--role", "load", "--port", str(port), "--subscribers", str(subscribers),
            "--count", str(count), *(["--tickwire"] if tickwire else []),
            "--limit", str(limit), "--stalled", str(stalled),
            size=size,
        )  # fmt: skip
    command = [str(binary), str(port), str(subscribers), str(count), str(limit), str(stalled)]
    command.append(str(size))
    if tickwire:
        command.append(subscribe_message().hex())
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def child(*extra: str, size: int = PAYLOAD, burst: int = 1) -> subprocess.Popen[str]:
    env = {**os.environ, "FANOUT_SIZE": str(size), "FANOUT_BURST": str(burst)}
    return subprocess.Popen(
        [sys.executable, __file__, *extra], stdout=subprocess.PIPE, text=True, env=env
    )


def expect(process: subprocess.Popen[str], event: str, timeout: float = 120) -> dict[str, Any]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"process ended before {event!r}")
        message = json.loads(line)
        if message.get("event") == event:
            return message  # type: ignore[no-any-return]
    raise TimeoutError(event)


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def one_run(
    server: str,
    subscribers: int,
    count: int,
    rate: float | None,
    stalled: int = 0,
    size: int = PAYLOAD,
    burst: int = 1,
) -> dict[str, Any]:
    """One server process and one load-generator process; both stopped at the end."""
    rate_args = ["--rate", str(rate)] if rate else []
    srv = child(
        "--role", server, "--subscribers", str(subscribers), "--count", str(count), *rate_args,
        size=size, burst=burst,
    )  # fmt: skip
    gen = None
    try:
        port = expect(srv, "ready")["port"]
        limit = 60 + count / (rate or 1e9)
        gen = load_generator(port, subscribers, count, server == "tickwire", limit, stalled, size)
        expect(gen, "connected")
        memory = expect(srv, "subscribed")["rss_per_connection"]
        cpu = (cpu_seconds(srv.pid), cpu_seconds(gen.pid), time.monotonic())
        result = expect(gen, "result", timeout=300)
        window = time.monotonic() - cpu[2]
        cpu = (cpu_seconds(srv.pid) - cpu[0], cpu_seconds(gen.pid) - cpu[1], window)
        memory_after = expect(srv, "published", timeout=300) if count else {}
        span = (result["last_receive"] - result["first_sent"]) / 1e9
        return {
            "server": server,
            "subscribers": subscribers,
            "messages": count,
            "delivered": result["delivered"],
            "expected": (subscribers - stalled) * count,
            "peak_rss": memory_after.get("peak_rss", 0),
            "per_second": result["delivered"] / span if span > 0 else 0.0,
            "latencies_us": result["latencies_us"],
            "rss_per_connection": memory,
            # The share of one core each process used from the subscriptions to the
            # result (the run, and the little before it): which one is the bottleneck.
            "cpu_server": cpu[0] / cpu[2],
            "cpu_generator": cpu[1] / cpu[2],
        }
    finally:
        stop(srv)
        if gen is not None:
            stop(gen)


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process *pid* so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    return float(values[min(len(values) - 1, int(q * len(values)))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="draw a PNG chart (plotting extra)")
    parser.add_argument(
        "--generator", choices=("c", "python"), default="c", help="the load generator"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--tickwire", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=60, help=argparse.SUPPRESS)
    parser.add_argument("--stalled", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    require_plotting(parser, args.plot)
    if args.role == "load":
        run_load(args)
        return 0
    if args.role in SERVERS:
        serve = {
            "tickwire": serve_tickwire,
            "websockets": serve_websockets,
            "trio-websocket": serve_trio_websocket,
        }[args.role]
        serve(args.subscribers, args.count, args.rate)
        return 0
    return bench(args)


def bench(args: argparse.Namespace) -> int:
    quick = args.quick
    if args.generator == "c":
        GENERATOR["c"] = c_generator()
    generator = "C (bench/support/fanout_load.c)" if GENERATOR["c"] else "Python (asyncio)"
    print(f"load generator: {generator}")
    sizes = [(20, 200)] if quick else [(100, 2000), (1000, 300)]
    repeats = 1 if quick else args.repeats
    latency_seconds = 1.0 if quick else 5.0
    idle = 200 if quick else 2000
    results: dict[str, Any] = {
        "quick": quick,
        "generator": "c" if GENERATOR["c"] else "python",
        "saturation": [],
        "latency": [],
        "burst": [],
        "stalled": [],
        "idle": [],
    }
    steps = len(sizes) * len(SERVERS) * (repeats + 1) + (3 + repeats) * len(SERVERS)
    with progress(steps, "fan-out") as step:

        def measure(server: str, subscribers: int, *rest: Any) -> dict[str, Any]:
            result = one_run(server, subscribers, *rest)
            step(f"{server}, {subscribers} subscribers")
            return result

        for subscribers, count in sizes:
            rows = []
            for server in SERVERS:
                runs = [measure(server, subscribers, count, None) for _ in range(repeats)]
                rates = [r["per_second"] for r in runs]
                complete = all(r["delivered"] == r["expected"] for r in runs)
                cpu = [
                    statistics.median(r[k] for r in runs) for k in ("cpu_server", "cpu_generator")
                ]
                results["saturation"].append(
                    {
                        "server": server,
                        "subscribers": subscribers,
                        "messages": count,
                        "per_second": rates,
                        "complete": complete,
                        "cpu_server": cpu[0],
                        "cpu_generator": cpu[1],
                    }
                )
                rows.append(
                    [
                        server,
                        f"{statistics.median(rates):,.0f}",
                        "all" if complete else "LOST SOME",
                        f"{cpu[0]:.0%}",
                        f"{cpu[1]:.0%}",
                    ]
                )
            base = statistics.median(results["saturation"][-2]["per_second"])
            print(
                f"\nsaturation: {count} messages of {PAYLOAD} B to {subscribers} subscribers "
                f"(median of {repeats}; CPU: of one core, over the run)"
            )
            print(
                table(
                    [[*r, f"{float(r[1].replace(',', '')) / base:.2f}x"] for r in rows],
                    [
                        "server",
                        "deliveries/s",
                        "delivered",
                        "server CPU",
                        "generator CPU",
                        "vs websockets",
                    ],
                )
            )
            rate = 20_000 / subscribers
            count = int(rate * latency_seconds)
            rows = []
            for server in SERVERS:
                run = measure(server, subscribers, count, rate)
                lat = run["latencies_us"]
                p50, p99 = percentile(lat, 0.50), percentile(lat, 0.99)
                results["latency"].append(
                    {
                        "server": server,
                        "subscribers": subscribers,
                        "p50_us": p50,
                        "p99_us": p99,
                        "delivered": run["delivered"],
                        "expected": run["expected"],
                    }
                )
                rows.append(
                    [server, f"{p50:,.0f}", f"{p99:,.0f}", f"{run['delivered']}/{run['expected']}"]
                )
            print(
                f"\nlatency at 20,000 deliveries/s to {subscribers} subscribers "
                f"({rate:g} messages/s for {latency_seconds:g} s), publish to receive"
            )
            print(table(rows, ["server", "p50 us", "p99 us", "delivered"]))
        # Bursts: 10 messages between two yields (a tick that changes 10 symbols); tickwire
        # publishes them inside Hub.burst(), the others as they would, back to back.
        subscribers, count, burst = (20, 200, 10) if quick else (100, 2000, 10)
        rows = []
        for server in SERVERS:
            runs = [
                measure(server, subscribers, count, None, 0, PAYLOAD, burst) for _ in range(repeats)
            ]
            rates = [r["per_second"] for r in runs]
            results["burst"].append(
                {"server": server, "subscribers": subscribers, "burst": burst, "per_second": rates}
            )
            rows.append([server, f"{statistics.median(rates):,.0f}"])
        base = statistics.median(results["burst"][-2]["per_second"])
        print(
            f"\nbursts: {count} messages of {PAYLOAD} B to {subscribers} subscribers, {burst} "
            f"between two yields (median of {repeats})"
        )
        print(
            table(
                [[*r, f"{float(r[1].replace(',', '')) / base:.2f}x"] for r in rows],
                ["server", "deliveries/s", "vs websockets"],
            )
        )
        subscribers, count = (20, 2000) if quick else (100, 4000)
        stalled = subscribers // 10
        rows = []
        for server in SERVERS:
            calm = measure(server, subscribers, count, None, 0, 1024)
            stall = measure(server, subscribers, count, None, stalled, 1024)
            p99 = [percentile(r["latencies_us"], 0.99) for r in (calm, stall)]
            # Each reading subscriber's rate: messages a second that reach it. (Total
            # deliveries/s would count the frozen ones' absence against the others.)
            each = [calm["per_second"] / subscribers, stall["per_second"] / (subscribers - stalled)]
            results["stalled"].append(
                {
                    "server": server,
                    "subscribers": subscribers,
                    "stalled": stalled,
                    "per_second": [calm["per_second"], stall["per_second"]],
                    "per_subscriber": each,
                    "p99_us": p99,
                    "peak_rss": [calm["peak_rss"], stall["peak_rss"]],
                    "delivered": [calm["delivered"], stall["delivered"]],
                    "expected": [calm["expected"], stall["expected"]],
                }
            )
            rows.append(
                [
                    server,
                    f"{each[0]:,.0f}",
                    f"{each[1]:,.0f}",
                    f"{each[1] / each[0]:.2f}",
                    f"{p99[0] / 1000:,.1f}",
                    f"{p99[1] / 1000:,.1f}",
                    f"{p99[1] / p99[0]:.2f}",
                    f"{calm['peak_rss'] / 2**20:,.0f}",
                    f"{stall['peak_rss'] / 2**20:,.0f}",
                ]
            )
        print(
            f"\n{stalled} of {subscribers} subscribers stalled (they stop reading): the others, "
            f"{count} messages of 1 KiB at saturation, the messages a second each reading "
            f"subscriber gets; server peak memory"
        )
        print(
            table(
                rows,
                [
                    "server",
                    "msg/s calm",
                    "msg/s stalled",
                    "ratio",
                    "p99 ms calm",
                    "p99 ms stalled",
                    "ratio",
                    "MiB calm",
                    "MiB stalled",
                ],
            )
        )
        rows = []
        for server in SERVERS:
            run = measure(server, idle, 0, None)
            results["idle"].append(
                {
                    "server": server,
                    "connections": idle,
                    "rss_per_connection": run["rss_per_connection"],
                }
            )
            rows.append([server, f"{run['rss_per_connection'] / 1024:.1f}"])
        print(f"\nidle: server memory per connection with {idle} idle connections")
        print(table(rows, ["server", "KiB/connection"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.plot:
        plot(results, args.plot)
    return 0


def plot(results: dict[str, Any], path: str) -> None:
    """Deliveries a second at saturation, and p99 latency with and without stalled
    subscribers, per server."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs the plotting extra: pip install -e '.[plot]'", file=sys.stderr)
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    groups = sorted({r["subscribers"] for r in results["saturation"]})
    width = 0.8 / len(SERVERS)
    for i, server in enumerate(SERVERS):
        rates = [
            statistics.median(r["per_second"])
            for g in groups
            for r in results["saturation"]
            if r["server"] == server and r["subscribers"] == g
        ]
        left.bar([x + i * width for x in range(len(groups))], rates, width, label=server)
    left.set_xticks([x + width for x in range(len(groups))], [f"{g} subscribers" for g in groups])
    left.set_title("saturation: deliveries/s (higher is better)")
    left.legend()
    names = [r["server"] for r in results["stalled"]]
    calm = [r["p99_us"][0] / 1000 for r in results["stalled"]]
    stalled = [r["p99_us"][1] / 1000 for r in results["stalled"]]
    xs = range(len(names))
    right.bar([x - 0.2 for x in xs], calm, 0.4, label="all reading")
    right.bar([x + 0.2 for x in xs], stalled, 0.4, label="10% stalled")
    right.set_xticks(list(xs), names)
    right.set_title("p99 latency, ms (lower is better)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart written to {path}")


if __name__ == "__main__":
    sys.exit(main())
