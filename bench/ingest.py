"""Ingestion from message brokers (docs/sources.md): how fast a ``tickwire bridge`` feeds
subscribers from each broker, the latency it adds, and the kill -9 proof of "at least once,
published once".

Every run starts its own redis-server for the backplane (and one more as the Redis Streams
broker) on free loopback ports, two ``tickwire serve --redis`` servers, a ``tickwire
bridge`` process and a producer process, with a subscriber on each server in this process;
NATS JetStream (127.0.0.1:4222) and RabbitMQ (127.0.0.1:5672) are the machine's, with
stream, queue and exchange names of the run's own, deleted after. Each run stops by itself.
For each broker:

- throughput: *count* messages on 10 topics, produced as fast as the broker takes them;
  messages a second from the first broker publish to the last delivery, at each
  subscriber (every message reaches both).
- latency: messages paced at a rate well under that, each stamped with its publish time
  (CLOCK_MONOTONIC); p50/p99 of publish -> tickwire client, against a plain consumer of
  the same broker in the same run (XREAD, a core NATS subscription, a queue of its own):
  what tickwire adds is the difference.
- kill -9: *count* messages (at 3,000 a second) while the bridge is killed with SIGKILL at
  a third of them and started again; then, at each subscriber: lost, duplicated, out of
  order per topic, and offsets that do not follow the producer's numbering (a message
  published twice into the cluster would take an offset of its own). The run ends on a
  last message per topic sent after the others: the bridge publishes in order, so once
  those arrive nothing earlier is still on its way.

    python bench/ingest.py [--quick] [--json PATH] [--brokers redis,nats,rabbitmq]

Exits 1 if any message is lost, duplicated or out of order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fanout
from scaleout import Redis
from support import progress, table

NATS_URL = "nats://127.0.0.1:4222"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
TOPICS = 10
# The kill run's pace: under every broker's throughput here, so that what it shows is the
# bridge's crash and restart, not subscribers that cannot keep up.
KILL_RATE = 3_000.0
BROKERS = ("redis", "nats", "rabbitmq")

emit = fanout.emit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subject(prefix: str, topic: int) -> str:
    return f"{prefix}.t{topic}"


def body(n: int, end: bool = False) -> bytes:
    message: dict[str, Any] = {"n": n, "t": time.monotonic_ns()}
    if end:
        message["end"] = True
    return json.dumps(message).encode()


def messages(count: int) -> list[tuple[int, int, bool]]:
    """(topic, number in its topic, last?) for *count* messages round-robin over the
    topics, then the last message of each topic."""
    out = [(i % TOPICS, i // TOPICS, False) for i in range(count)]
    per_topic = [sum(1 for t, _, _ in out if t == topic) for topic in range(TOPICS)]
    return out + [(topic, per_topic[topic], True) for topic in range(TOPICS)]


# -- child roles: the producer and the plain consumer -------------------------------------


def produce(args: argparse.Namespace) -> None:
    """Publish --count messages (then one last per topic) to --broker, at --rate or as
    fast as it takes them; say when it started and ended."""
    plan = messages(args.count)
    start = time.monotonic()
    if args.broker == "redis":
        import trio

        async def redis_main() -> None:
            import coredis

            client = coredis.Redis.from_url(args.url, decode_responses=False)
            async with client:
                emit(event="started", ns=time.monotonic_ns())
                chunk = 1 if args.rate else 200
                for at in range(0, len(plan), chunk):
                    async with client.pipeline(transaction=False) as pipe:
                        for topic, n, end in plan[at : at + chunk]:
                            pipe.xadd(subject(args.prefix, topic), {b"data": body(n, end)})
                    if args.rate:
                        await trio.sleep(max(0.0, start + at / args.rate - time.monotonic()))

        trio.run(redis_main)
    elif args.broker == "nats":

        async def nats_main() -> None:
            import nats

            nc = await nats.connect(NATS_URL)
            emit(event="started", ns=time.monotonic_ns())
            for i, (topic, n, end) in enumerate(plan):
                await nc.publish(subject(args.prefix, topic), body(n, end))
                if args.rate:
                    await nc.flush()
                    await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
            await nc.flush()
            await nc.close()

        asyncio.run(nats_main())
    else:

        async def amqp_main() -> None:
            import aio_pika

            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel(publisher_confirms=False)
                exchange = await channel.declare_exchange(
                    f"{args.prefix}.x", aio_pika.ExchangeType.TOPIC, durable=True
                )
                emit(event="started", ns=time.monotonic_ns())
                for i, (topic, n, end) in enumerate(plan):
                    message = aio_pika.Message(body(n, end), message_id=f"{topic}:{n}")
                    await exchange.publish(message, subject(args.prefix, topic))
                    if args.rate:
                        await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
                    elif i % 256 == 0:
                        await asyncio.sleep(0)

        asyncio.run(amqp_main())
    emit(event="produced", seconds=time.monotonic() - start)


def direct(args: argparse.Namespace) -> None:
    """A plain consumer of --broker, for comparison: say ready, then the latency of each
    of --count messages (and the last ones) as they arrive."""
    expected = len(messages(args.count))
    latencies: list[int] = []

    def got(data: bytes) -> bool:
        latencies.append(time.monotonic_ns() - json.loads(data)["t"])
        return len(latencies) >= expected

    if args.broker == "redis":
        import trio

        async def redis_main() -> None:
            import coredis

            client = coredis.Redis.from_url(args.url, decode_responses=False)
            async with client:
                # The run's streams are new (the bridge made them, empty): from the start.
                # ("$" would be "newer than this call" for each read, missing entries.)
                last = {subject(args.prefix, t): "0-0" for t in range(TOPICS)}
                emit(event="ready")
                with trio.move_on_after(args.limit):
                    while True:
                        reply = await client.xread(last, count=100, block=1000)
                        for stream, entries in (reply or {}).items():
                            for entry in entries:
                                last[stream.decode()] = entry.identifier.decode()
                                if got(entry.field_values[b"data"]):
                                    return

        trio.run(redis_main)
    elif args.broker == "nats":

        async def nats_main() -> None:
            import nats

            nc = await nats.connect(NATS_URL)
            done = asyncio.Event()

            async def on_message(message: Any) -> None:
                if got(message.data):
                    done.set()

            await nc.subscribe(f"{args.prefix}.>", cb=on_message)
            await nc.flush()
            emit(event="ready")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), args.limit)
            await nc.close()

        asyncio.run(nats_main())
    else:

        async def amqp_main() -> None:
            import aio_pika

            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                exchange = await channel.declare_exchange(
                    f"{args.prefix}.x", aio_pika.ExchangeType.TOPIC, durable=True
                )
                queue = await channel.declare_queue(exclusive=True, auto_delete=True)
                await queue.bind(exchange, f"{args.prefix}.*")
                emit(event="ready")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(args.limit), queue.iterator(no_ack=True) as it:
                        async for message in it:
                            if got(message.body):
                                break

        asyncio.run(amqp_main())
    emit(event="latencies", latencies=latencies)


def cleanup(args: argparse.Namespace) -> None:
    """Delete what a run made on the machine's NATS or RabbitMQ."""

    async def nats_main() -> None:
        import nats

        nc = await nats.connect(NATS_URL)
        with contextlib.suppress(Exception):  # not made: nothing to delete
            await nc.jetstream().delete_stream(args.prefix.upper())
        await nc.close()

    async def amqp_main() -> None:
        import aio_pika

        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            for queue in (f"{args.prefix}.q", f"{args.prefix}.q.dead"):
                await channel.queue_delete(queue)
            await channel.exchange_delete(f"{args.prefix}.x")

    asyncio.run(nats_main() if args.broker == "nats" else amqp_main())


# -- the bench -----------------------------------------------------------------------------


def bridge_config(broker: str, prefix: str, backplane: str, broker_url: str | None) -> str:
    sources = {
        "redis": (
            f'type = "redis_streams"\nurl = "{broker_url}"\nname = "{prefix}"\n'
            f"streams = {json.dumps([subject(prefix, t) for t in range(TOPICS)])}\n"
            "block = 0.1\n"
        ),
        "nats": (
            f'type = "nats_jetstream"\nurl = "{NATS_URL}"\nname = "{prefix}"\n'
            f'stream = "{prefix.upper()}"\nsubjects = ["{prefix}.>"]\nack_wait = 3.0\n'
        ),
        "rabbitmq": (
            f'type = "rabbitmq"\nurl = "{AMQP_URL}"\nname = "{prefix}"\nqueue = "{prefix}.q"\n'
            f'bindings = [["{prefix}.x", "{prefix}.*"]]\n'
        ),
    }[broker]
    # Redis keeps 20,000 messages a topic (the kill run's 10,000 and more): a subscriber
    # that falls behind and is dropped as a slow consumer resumes with nothing lost.
    return (
        f'[bridge]\nredis = "{backplane}"\n\n[[bridge.sources]]\n{sources}\n'
        f'[[bridge.routes]]\nmatch = "{prefix}.*"\ntopic = "ingest.{{2}}"\n\n'
        '[topics."ingest.*"]\nhistory_size = 20000\nhistory_bytes = 16777216\n'
    )


def start_bridge(config: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tickwire", "bridge", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    if not line.startswith("tickwire bridge:"):
        raise RuntimeError(f"the bridge did not start: {line}{process.stderr.read()}")
    return process


def start_server(backplane: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tickwire", "serve", "--redis", backplane, "--port", str(port),
         "--metrics-port", "off", "--log-level", "warning"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if "tickwire serving on" not in line:
        raise RuntimeError(f"the server did not start: {line!r}")
    return process, port


def child(*extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *extra], stdout=subprocess.PIPE, text=True)


def one_run(
    broker: str, count: int, *, rate: float | None = None, kill: bool = False, limit: float
) -> dict[str, Any]:
    """One run against *broker* (see the module's docstring); everything started is
    stopped at the end."""
    import trio

    prefix = f"twb{os.getpid()}x{time.monotonic_ns() % 10**9}"
    procs: list[subprocess.Popen[str]] = []  # all, stopped at the end
    finite: list[subprocess.Popen[str]] = []  # those that end by themselves
    redises = [Redis()]
    if broker == "redis":
        redises.append(Redis())
    backplane = redises[0].url
    broker_url = redises[-1].url if broker == "redis" else None
    common = ["--broker", broker, "--prefix", prefix, "--count", str(count)]
    common += ["--url", broker_url] if broker_url else []
    directory = Path(tempfile.mkdtemp(prefix="tickwire-bench-ingest-"))
    config = directory / "bridge.toml"
    config.write_text(bridge_config(broker, prefix, backplane, broker_url))
    result: dict[str, Any] = {"broker": broker, "messages": count, "rate": rate, "kill": kill}
    try:
        servers = [start_server(backplane) for _ in range(2)]
        procs += [process for process, _ in servers]
        plain = None
        if rate and not kill:
            plain = child("--role", "direct", *common, "--limit", str(limit))
            procs.append(plain)
            finite.append(plain)
            fanout.expect(plain, "ready")
        ports = [port for _, port in servers]
        run = functools.partial(
            subscribe_and_run, ports, count, rate, kill, config, common, procs, finite
        )
        received = trio.run(run, limit)
        result.update(received)
        if plain is not None:
            latencies = fanout.expect(plain, "latencies", timeout=limit)["latencies"]
            result["plain_p50_us"] = percentile_us(latencies, 0.50)
            result["plain_p99_us"] = percentile_us(latencies, 0.99)
    finally:
        for process in reversed(procs):
            if process in finite:  # the producer and the plain consumer end by themselves
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # processes this run started, by id
        for process in reversed(procs):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        for redis in redises:
            redis.close()
        if broker != "redis":
            subprocess.run([sys.executable, __file__, "--role", "cleanup", *common], check=True)
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()
    return result


async def subscribe_and_run(
    ports: list[int],
    count: int,
    rate: float | None,
    kill: bool,
    config: Path,
    common: list[str],
    procs: list[subprocess.Popen[str]],
    finite: list[subprocess.Popen[str]],
    limit: float,
) -> dict[str, Any]:
    """Subscribe on each server, start the bridge and the producer, receive everything
    (killing and restarting the bridge once, with *kill*), and count."""
    import trio

    import tickwire
    from tickwire.client import ClientConfig, Lost, Message

    expected = len(messages(count))
    names = [f"ingest.t{t}" for t in range(TOPICS)]
    seen: list[dict[str, Any]] = []
    lag = {"killed_at": None, "restarted": 0}
    done = [trio.Event() for _ in ports]
    progress_event = trio.Event()
    start_ns: list[int] = []

    async def subscriber(index: int, port: int, task_status: Any) -> None:
        record: dict[str, Any] = {
            "delivered": 0,
            "numbers": {name: [] for name in names},
            "bad_offsets": 0,
            "lost_events": 0,
            "lost_reasons": set(),
            "latencies": [],
            "last_ns": 0,
        }
        seen.append(record)
        ends = 0
        config_ = ClientConfig(max_buffered=1_000_000)
        url = f"ws://127.0.0.1:{port}/"
        async with (
            tickwire.open_client(url, config=config_) as client,
            contextlib.AsyncExitStack() as stack,
        ):
            subs = [await stack.enter_async_context(client.subscribe(n)) for n in names]
            task_status.started()
            async with trio.open_nursery() as nursery:

                async def read(subscription: Any) -> None:
                    nonlocal ends
                    async for update in subscription:
                        now = time.monotonic_ns()
                        if isinstance(update, Lost):
                            record["lost_events"] += 1
                            record["lost_reasons"].add(update.reason)
                            continue
                        if not isinstance(update, Message):
                            continue
                        payload = update.payload
                        record["delivered"] += 1
                        record["numbers"][update.topic].append(payload["n"])
                        record["bad_offsets"] += update.offset != payload["n"] + 1
                        record["latencies"].append(now - payload["t"])
                        record["last_ns"] = now
                        if index == 0:
                            progress_event.set()
                        if payload.get("end"):
                            ends += 1
                            if ends == TOPICS:
                                record["reconnects"] = client.statistics().reconnects
                                done[index].set()
                                nursery.cancel_scope.cancel()

                for subscription in subs:
                    nursery.start_soon(read, subscription)

    async def kill_and_restart(bridge: subprocess.Popen[str]) -> None:
        while seen[0]["delivered"] < count // 3:
            await progress_event.wait()
            progress_event_reset()
        os.kill(bridge.pid, signal.SIGKILL)  # the bridge this run started, by its id
        bridge.wait()
        lag["killed_at"] = seen[0]["delivered"]
        procs.append(start_bridge(config))
        lag["restarted"] = 1

    def progress_event_reset() -> None:
        nonlocal progress_event
        progress_event = trio.Event()

    with trio.move_on_after(limit) as deadline:  # then: what arrived, counted as lost
        async with trio.open_nursery() as nursery:
            for index, port in enumerate(ports):
                await nursery.start(subscriber, index, port)
            bridge = start_bridge(config)  # first: it makes the stream, the queue
            procs.append(bridge)
            pace = ["--rate", str(rate)] if rate else []
            producer = child("--role", "produce", *common, *pace)
            procs.append(producer)
            finite.append(producer)
            start_ns.append(fanout.expect(producer, "started")["ns"])
            if kill:
                nursery.start_soon(kill_and_restart, bridge)
            for event in done:
                await event.wait()
            nursery.cancel_scope.cancel()
    out: dict[str, Any] = {"killed_at": lag["killed_at"], "subscribers": []}
    out["timed_out"] = deadline.cancelled_caught
    for record in seen:
        numbers = record["numbers"]
        distinct = sum(len(set(v)) for v in numbers.values())
        disorder = sum(1 for v in numbers.values() for a, b in itertools.pairwise(v) if b <= a)
        span = (record["last_ns"] - start_ns[0]) / 1e9
        out["subscribers"].append(
            {
                "delivered": record["delivered"],
                "expected": expected,
                "lost": expected - distinct,
                "duplicated": record["delivered"] - distinct,
                "out_of_order": disorder,
                "bad_offsets": record["bad_offsets"],
                "lost_events": record["lost_events"],
                "lost_reasons": sorted(record["lost_reasons"]),
                "reconnects": record.get("reconnects", 0),
                "per_second": record["delivered"] / span if span > 0 else 0.0,
                "p50_us": percentile_us(record["latencies"], 0.50),
                "p99_us": percentile_us(record["latencies"], 0.99),
            }
        )
    return out


def percentile_us(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def reachable(broker: str) -> bool:
    port = {"redis": None, "nats": 4222, "rabbitmq": 5672}[broker]
    if port is None:
        return True
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def bench(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger("tickwire").setLevel(logging.ERROR)  # "no topic ... yet" at the start
    quick = args.quick
    repeats = 1 if quick else args.repeats
    flood = 1_000 if quick else 20_000
    paced = (200.0, 1.0) if quick else (1_000.0, 5.0)  # messages/s, seconds
    proof = 2_000 if quick else 100_000
    limit = 120.0 if quick else 600.0
    brokers = [b for b in args.brokers.split(",") if b]
    missing = [b for b in brokers if not reachable(b)]
    for broker in missing:
        print(f"!! {broker} is not reachable on 127.0.0.1: its runs are SKIPPED", file=sys.stderr)
    brokers = [b for b in brokers if b not in missing]
    results: dict[str, Any] = {"quick": quick, "runs": []}
    with progress(len(brokers) * (2 * repeats + 1), "ingest") as step:
        for broker in brokers:
            for _ in range(repeats):
                r = one_run(broker, flood, limit=limit)
                results["runs"].append({"kind": "throughput", **r})
                step(f"{broker}: throughput")
                count = int(paced[0] * paced[1])
                r = one_run(broker, count, rate=paced[0], limit=limit)
                results["runs"].append({"kind": "latency", **r})
                step(f"{broker}: latency")
            r = one_run(broker, proof, rate=KILL_RATE, kill=True, limit=limit)
            results["runs"].append({"kind": "kill", **r})
            step(f"{broker}: kill -9")
    report(results, brokers, repeats, flood, paced, proof)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    wrong = [
        s
        for r in results["runs"]
        for s in r["subscribers"]
        if s["lost"] or s["duplicated"] or s["out_of_order"] or s["bad_offsets"]
    ]
    wrong += [r for r in results["runs"] if r.get("timed_out")]
    if wrong:
        print("MESSAGES WERE LOST, DUPLICATED OR OUT OF ORDER (or a run timed out)")
        return 1
    return 0


def report(
    results: dict[str, Any],
    brokers: list[str],
    repeats: int,
    flood: int,
    paced: tuple[float, float],
    proof: int,
) -> None:
    med = statistics.median
    runs = results["runs"]
    print(f"\nthroughput: {flood:,} messages on {TOPICS} topics to 2 subscribers on 2 servers "
          f"(median of {repeats})")  # fmt: skip
    rows = []
    for broker in brokers:
        subs = [s for r in runs if r["broker"] == broker and r["kind"] == "throughput"
                for s in r["subscribers"]]  # fmt: skip
        rows.append([broker, f"{med(s['per_second'] for s in subs):,.0f}"])
    print(table(rows, ["broker", "messages/s at each subscriber"]))
    print(f"\nlatency, broker publish -> delivery, at {paced[0]:,.0f} messages/s "
          f"(median of {repeats})")  # fmt: skip
    rows = []
    for broker in brokers:
        mine = [r for r in runs if r["broker"] == broker and r["kind"] == "latency"]
        subs = [s for r in mine for s in r["subscribers"]]
        p50, p99 = med(s["p50_us"] for s in subs), med(s["p99_us"] for s in subs)
        q50, q99 = med(r["plain_p50_us"] for r in mine), med(r["plain_p99_us"] for r in mine)
        rows.append(
            [broker, f"{q50 / 1000:.2f}", f"{q99 / 1000:.2f}", f"{p50 / 1000:.2f}",
             f"{p99 / 1000:.2f}", f"{(p50 - q50) / 1000:.2f}", f"{(p99 - q99) / 1000:.2f}"]
        )  # fmt: skip
    header = ["broker", "plain p50 ms", "p99", "tickwire p50 ms", "p99", "added p50", "p99"]
    print(table(rows, header))
    print(f"\nkill -9 of the bridge at a third of {proof:,} messages ({KILL_RATE:,.0f}/s), "
          "restarted")  # fmt: skip
    rows = []
    for r in runs:
        if r["kind"] != "kill":
            continue
        for i, s in enumerate(r["subscribers"]):
            rows.append(
                [f"{r['broker']} (server {i + 1})", f"{r['killed_at']:,}", f"{s['delivered']:,}",
                 f"{s['lost']}", f"{s['duplicated']}", f"{s['out_of_order']}",
                 f"{s['bad_offsets']}", f"{s['reconnects']}"]
            )  # fmt: skip
    header = ["broker", "killed at", "delivered", "lost", "duplicated", "out of order"]
    header += ["offsets", "reconnects"]
    print(table(rows, header))
    print(f"\nmachine: {os.cpu_count()} cores; brokers, servers, bridge and clients share them")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small, as CI runs it")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--brokers", default=",".join(BROKERS))
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    role = {"produce": produce, "direct": direct, "cleanup": cleanup}.get(args.role)
    if role is not None:
        try:
            role(args)
        except KeyboardInterrupt:  # stopped by the bench
            return 130
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
