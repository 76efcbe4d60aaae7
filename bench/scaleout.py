"""What the Redis backplane costs and carries: latency added over the in-process hub,
Redis round trips per message, one publisher's publishes a second, and the CPU per delivery
of one server against two sharing the subscribers (docs/scaling.md).

Every run starts its own redis-server on a free loopback port (never the one on 6379), its
own tickwire servers and publisher as subprocesses, and the fan-out bench's load generator
(bench/support/fanout_load.c) for the subscribers; each stops by itself. Side by side in
one run, medians of the repeats:

- latency: the same 20,000 deliveries a second (1,000 messages/s to 20 subscribers), the
  publisher inside the server (no backplane) against a backend process publishing through
  Redis; what Redis adds is the difference of the two at p50 and p99.
- publisher: one process publishing stream messages (history on) as fast as Redis takes
  them; messages a second and pipelined round trips per message.
- two servers: the same messages to the same subscribers, all on one server or split over
  two; the servers' CPU seconds per delivery, and deliveries a second.

    python bench/scaleout.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fanout
from support import progress, table

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SIZE = fanout.SIZE  # bytes of each message's payload; its last 8 are the publish time
TICK = os.sysconf("SC_CLK_TCK")


emit = fanout.emit
stamp = fanout.payload  # SIZE bytes ending with the publish time (CLOCK_MONOTONIC ns)


# -- child roles ---------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """A tickwire server (with a backplane when --redis is given); with --publish, it
    publishes the messages itself, in process."""
    import trio

    import tickwire
    from tickwire.backplane import RedisBackplane

    async def main() -> None:
        backplane = RedisBackplane(args.redis) if args.redis else None
        hub = tickwire.Hub(
            default_topic=tickwire.TopicConfig(history_size=0 if backplane is None else 1000),
            backplane=backplane,
        )
        config = tickwire.ServerConfig(
            max_connections_per_address=100_000, max_new_connections_per_second=100_000
        )
        async with tickwire.open_server(hub, "127.0.0.1", 0, config=config) as server:
            if backplane is None:
                hub.topic("bench")
            else:  # the publisher registered it: a subscribe follows it
                await backplane.wait_connected()
            emit(event="ready", port=server.port)
            while True:
                topic = hub.topic_by_name("bench")
                if topic is not None and len(topic.subscribers) >= args.subscribers:
                    break
                await trio.sleep(0.01)
            emit(event="subscribed")
            if args.publish:
                start = time.monotonic()
                for i in range(args.count):
                    hub.publish_nowait("bench", stamp())
                    await trio.sleep(max(0.0, start + (i + 1) / args.rate - time.monotonic()))
            await trio.sleep(3600)  # until killed

    trio.run(main)


def publish(args: argparse.Namespace) -> None:
    """A backend process: register the topic, say ready, wait for "go" on standard input,
    then publish --count messages at --rate (or as fast as Redis takes them)."""
    import trio

    from tickwire.backplane import RedisBackplane, open_publisher
    from tickwire.errors import BackplaneUnavailable

    async def main() -> None:
        async with open_publisher(args.redis) as hub:
            backplane = hub.backplane
            assert isinstance(backplane, RedisBackplane)
            # Registers the topic (a publisher need not follow it: it gets its offsets in
            # the answers); nobody is subscribed yet, so this message reaches nobody.
            await hub.publish("bench", stamp())
            emit(event="ready")
            await trio.to_thread.run_sync(sys.stdin.readline)
            before = backplane.statistics()
            start = time.monotonic()
            i = 0
            while i < args.count:
                try:
                    hub.publish_nowait("bench", stamp())
                    i += 1
                except BackplaneUnavailable:  # max_pending wait for Redis: let it drain
                    await trio.sleep(0.001)
                    continue
                if args.rate:
                    await trio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
                elif i % 64 == 0:
                    await trio.sleep(0)
            await backplane.flushed(60.0)
            elapsed = time.monotonic() - start
            after = backplane.statistics()
            emit(
                event="published",
                seconds=elapsed,
                published=after.published - before.published,
                round_trips=after.round_trips - before.round_trips,
                failed=after.failed - before.failed,
            )
            await trio.sleep(3600)

    trio.run(main)


def floor(args: argparse.Namespace) -> None:
    """The floor under any backplane on coredis: PUBLISH from one process to a pub/sub
    subscriber in another, no tickwire (role floor-sub, then floor-pub)."""
    import coredis
    import trio

    async def subscriber() -> None:
        client = coredis.Redis.from_url(args.redis, decode_responses=False)
        async with client, client.pubsub(channels=["floor"]) as pubsub:
            emit(event="ready")
            latencies: list[int] = []
            async for message in pubsub:
                if message["type"] != "message":
                    continue
                sent = int.from_bytes(message["data"][-8:], "big")
                latencies.append((time.monotonic_ns() - sent) // 1000)
                if len(latencies) == args.count:
                    break
            emit(event="result", latencies_us=sorted(latencies))

    async def publisher() -> None:
        client = coredis.Redis.from_url(args.redis, decode_responses=False)
        async with client:
            start = time.monotonic()
            for i in range(args.count):
                await client.publish("floor", stamp())
                await trio.sleep(max(0.0, start + (i + 1) / args.rate - time.monotonic()))
            emit(event="published")

    trio.run(subscriber if args.role == "floor-sub" else publisher)


def run_floor(redis: Redis, count: int, rate: float) -> dict[str, Any]:
    common = ["--redis", redis.url, "--count", str(count), "--rate", str(rate)]
    sub = child("--role", "floor-sub", *common)
    pub = None
    try:
        fanout.expect(sub, "ready")
        pub = child("--role", "floor-pub", *common)
        latencies = fanout.expect(sub, "result", timeout=120)["latencies_us"]
        return {
            "mode": "coredis alone",
            "p50_us": fanout.percentile(latencies, 0.50),
            "p99_us": fanout.percentile(latencies, 0.99),
        }
    finally:
        fanout.stop(sub)
        if pub is not None:
            fanout.stop(pub)


# -- the bench -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Redis:
    """A redis-server of its own, without persistence, on a free port."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="tickwire-bench-redis-")
        self.port = free_port()
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.directory],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError("redis-server ended before it was ready")
        self.url = f"redis://127.0.0.1:{self.port}"

    def close(self) -> None:
        fanout.stop(self.process)  # type: ignore[arg-type]
        shutil.rmtree(self.directory, ignore_errors=True)


def child(*extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process *pid* so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run(
    redis: Redis | None, servers: int, subscribers: int, count: int, rate: float | None
) -> dict[str, Any]:
    """*subscribers* split over *servers* tickwire servers; the messages published in the
    server (redis None) or by a backend process through Redis."""
    procs: list[subprocess.Popen[str]] = []
    try:
        publisher = None
        if redis is not None:
            rate_args = ["--rate", str(rate)] if rate else []
            publisher = child(
                "--role", "publish", "--redis", redis.url, "--count", str(count), *rate_args
            )
            procs.append(publisher)
            fanout.expect(publisher, "ready")
        each = subscribers // servers
        srvs = []
        for _ in range(servers):
            extra = ["--redis", redis.url] if redis is not None else ["--publish"]
            srv = child(
                "--role", "serve", "--subscribers", str(each), "--count", str(count),
                "--rate", str(rate or 1000.0), *extra,
            )  # fmt: skip
            procs.append(srv)
            srvs.append(srv)
        gens = []
        for srv in srvs:
            port = fanout.expect(srv, "ready")["port"]
            limit = 60 + count / (rate or 1e9)
            gen = fanout.load_generator(port, each, count, True, limit, 0, SIZE)
            procs.append(gen)
            gens.append(gen)
        for gen in gens:
            fanout.expect(gen, "connected")
        for srv in srvs:
            fanout.expect(srv, "subscribed")
        cpu_before = [cpu_seconds(s.pid) for s in srvs]
        if publisher is not None:
            assert publisher.stdin is not None
            publisher.stdin.write("go\n")
            publisher.stdin.flush()
        results = [fanout.expect(gen, "result", timeout=300) for gen in gens]
        cpu = sum(cpu_seconds(s.pid) - b for s, b in zip(srvs, cpu_before, strict=True))
        published = fanout.expect(publisher, "published", timeout=120) if publisher else {}
        delivered = sum(r["delivered"] for r in results)
        first = min(r["first_sent"] for r in results)
        last = max(r["last_receive"] for r in results)
        latencies = sorted(x for r in results for x in r["latencies_us"])
        return {
            "servers": servers,
            "subscribers": subscribers,
            "messages": count,
            "delivered": delivered,
            "expected": each * servers * count,
            "per_second": delivered / ((last - first) / 1e9) if last > first else 0.0,
            "cpu_us_per_delivery": cpu / delivered * 1e6 if delivered else float("nan"),
            "p50_us": fanout.percentile(latencies, 0.50),
            "p99_us": fanout.percentile(latencies, 0.99),
            "published": published,
        }
    finally:
        for process in procs:
            fanout.stop(process)


def bench(args: argparse.Namespace) -> int:
    quick = args.quick
    fanout.GENERATOR["c"] = fanout.c_generator()
    repeats = 1 if quick else args.repeats
    seconds = 1.0 if quick else 5.0
    rate = 1000.0
    count = int(rate * seconds)
    flood = 5_000 if quick else 100_000
    split = (20, 200) if quick else (200, 2000)  # subscribers, messages (as fast as possible)
    results: dict[str, Any] = {
        "quick": quick, "latency": [], "floor": [], "publisher": [], "servers": []
    }  # fmt: skip
    steps = repeats * 6
    redis = Redis()
    try:
        with progress(steps, "scale-out") as step:
            for _ in range(repeats):
                for mode in ("in-process", "redis"):
                    r = run(redis if mode == "redis" else None, 1, 20, count, rate)
                    results["latency"].append({"mode": mode, **r})
                    step(f"latency, {mode}")
                results["floor"].append(run_floor(redis, count, rate))
                step("coredis alone")
                r = run_publisher(redis, flood)
                results["publisher"].append(r)
                step("publisher")
                for servers in (1, 2):
                    r = run(redis, servers, split[0], split[1], None)
                    results["servers"].append(r)
                    step(f"{servers} server(s)")
    finally:
        redis.close()
    report(results, repeats, rate)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    lost = [
        r for k in ("latency", "servers") for r in results[k] if r["delivered"] != r["expected"]
    ]
    failed = [r for r in results["publisher"] if r["failed"] or r["published"] != flood]
    if lost or failed:
        print("SOME MESSAGES WERE NOT DELIVERED")
        return 1
    return 0


def run_publisher(redis: Redis, count: int) -> dict[str, Any]:
    publisher = child("--role", "publish", "--redis", redis.url, "--count", str(count))
    try:
        fanout.expect(publisher, "ready")
        assert publisher.stdin is not None
        publisher.stdin.write("go\n")
        publisher.stdin.flush()
        done = fanout.expect(publisher, "published", timeout=300)
        return {**done, "per_second": done["published"] / done["seconds"]}
    finally:
        fanout.stop(publisher)


def report(results: dict[str, Any], repeats: int, rate: float) -> None:
    med = statistics.median
    print(f"\nlatency at {rate * 20:,.0f} deliveries/s (1 server, 20 subscribers, "
          f"{rate:,.0f} messages/s; median of {repeats})")  # fmt: skip
    rows = []
    by_mode: dict[str, dict[str, float]] = {}
    for mode in ("in-process", "redis"):
        runs = [r for r in results["latency"] if r["mode"] == mode]
        p50, p99 = med(r["p50_us"] for r in runs), med(r["p99_us"] for r in runs)
        by_mode[mode] = {"p50": p50, "p99": p99}
        rows.append([mode, f"{p50 / 1000:.2f}", f"{p99 / 1000:.2f}"])
    added = {q: by_mode["redis"][q] - by_mode["in-process"][q] for q in ("p50", "p99")}
    rows.append(["added by Redis", f"{added['p50'] / 1000:.2f}", f"{added['p99'] / 1000:.2f}"])
    runs = results["floor"]
    p50, p99 = med(r["p50_us"] for r in runs), med(r["p99_us"] for r in runs)
    rows.append(
        ["coredis alone (PUBLISH to a subscriber)", f"{p50 / 1000:.2f}", f"{p99 / 1000:.2f}"]
    )
    print(table(rows, ["publisher", "p50 ms", "p99 ms"]))
    runs = results["publisher"]
    per_second = med(r["per_second"] for r in runs)
    trips = med(r["round_trips"] / r["published"] for r in runs)
    print(f"\none publisher process, history on (median of {repeats})")
    print(table([[f"{per_second:,.0f}", f"{trips:.4f}"]], ["publishes/s", "round trips/message"]))
    print(f"\none server or two, the same subscribers split (median of {repeats})")
    rows = []
    base: dict[str, float] = {}
    for servers in (1, 2):
        runs = [r for r in results["servers"] if r["servers"] == servers]
        cpu = med(r["cpu_us_per_delivery"] for r in runs)
        rate_ = med(r["per_second"] for r in runs)
        base.setdefault("cpu", cpu)
        base.setdefault("rate", rate_)
        rows.append(
            [
                f"{servers}",
                f"{rate_:,.0f}",
                f"{rate_ / base['rate']:.2f}x",
                f"{cpu:.2f}",
                f"{cpu / base['cpu']:.2f}x",
            ]
        )
    print(table(rows, ["servers", "deliveries/s", "vs one", "server CPU µs/delivery", "vs one"]))
    print(f"\nmachine: {os.cpu_count()} cores; the load generator and Redis share them")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small, as CI runs it")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--publish", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "serve":
        serve(args)
        return 0
    if args.role == "publish":
        publish(args)
        return 0
    if args.role in ("floor-sub", "floor-pub"):
        floor(args)
        return 0
    if not os.access(REDIS_SERVER, os.X_OK):
        print("bench/scaleout.py needs redis-server (apt-get install redis-server)")
        return 2
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
