"""tickwire.sources: routes (pure), and the Redis Streams source end to end against a real
redis-server of the test's own, into a real server's subscribers."""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import re
from decimal import Decimal
from typing import Any

import msgpack
import pytest
import trio

from tests.helpers import connect
from tests.realredis import needs_redis, redis_server
from tickwire.broadcast import Hub
from tickwire.sansio.events import Ack, Data, Subscribe
from tickwire.sansio.table import Field, Schema
from tickwire.server import open_server
from tickwire.sources import (
    Bridge,
    Dead,
    DeadLetter,
    Delivery,
    Published,
    Route,
    Routing,
    ToStream,
    ToTable,
)
from tickwire.sources.redis_streams import RedisStreamSource

ROUTES = Routing.from_config(
    [
        {"match": "quotes.*", "topic": "quotes", "key": "symbol"},
        {"match": "trades.*", "topic": "trades.{2}"},
        {"match": "game.>", "topic": "{subject}", "format": "msgpack"},
    ]
)


@pytest.mark.parametrize(
    ("subject", "payload", "expected"),
    [
        ("trades.ACME", b'{"px": 101.25}', ToStream("trades.ACME", {"px": 101.25})),
        ("quotes.ACME", b'{"symbol": "ACME", "bid": 1}', ToTable("quotes", "ACME", {"bid": 1})),
        ("game.world.7", msgpack.packb([1, 2]), ToStream("game.world.7", [1, 2])),
        ("orders.ACME", b"{}", DeadLetter("no route for subject 'orders.ACME'")),
        ("trades.ACME.x", b"{}", DeadLetter("no route for subject 'trades.ACME.x'")),
        ("game", b"", DeadLetter("no route for subject 'game'")),  # '>' is one or more
        ("quotes.ACME", b'{"bid": 1}', DeadLetter("no key field 'symbol' in the row")),
        ("quotes.ACME", b"[1]", DeadLetter("a row must be an object, not list")),
    ],
)
def test_routes(subject: str, payload: bytes, expected: Any) -> None:
    assert ROUTES.decide(subject, payload) == expected


def test_a_payload_that_is_not_json_is_a_dead_letter_with_the_reason() -> None:
    decision = ROUTES.decide("trades.ACME", b"{not json")
    assert isinstance(decision, DeadLetter)
    assert decision.reason.startswith("not json: ")
    decision = ROUTES.decide("game.x", b"\xc1")  # never used in msgpack
    assert isinstance(decision, DeadLetter)
    assert decision.reason.startswith("not msgpack: ")


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"match": "a..b", "topic": "t"}, "not a subject pattern"),
        ({"match": "a.>.b", "topic": "t"}, "not a subject pattern"),
        ({"match": "a.*", "topic": "t.{3}"}, "{3} but the pattern 'a.*' has 2 segments"),
        ({"match": "a.*", "topic": "t.{symbol}"}, "only {subject} and {1}"),
        ({"match": "a.*", "topic": "t", "format": "xml"}, "format"),
        ({"match": "a.*", "topic": "t", "colour": "red"}, "unknown settings: colour"),
    ],
)
def test_a_bad_route_is_refused_naming_it(route: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match="route 1: ") as refused:
        Routing.from_config([route])
    assert message in str(refused.value)


# -- the bridge, on a hub ------------------------------------------------------------------


async def test_a_redelivered_message_is_published_once() -> None:
    hub = Hub()
    bridge = Bridge(hub, Routing([Route(match="t.*", topic="{subject}")]))
    first = Delivery("src", "s:1-0", "t.a", b'{"n": 1}')
    assert await bridge.handle(first) == Published("t.a", 1)
    again = Delivery("src", "s:1-0", "t.a", b'{"n": 1}', redelivered=True)
    assert await bridge.handle(again) == Published("t.a", 1)  # the original offset
    assert hub.topic("t.a").offset == 1
    assert await bridge.handle(Delivery("src", "s:2-0", "t.a", b'{"n": 1}')) == Published("t.a", 2)
    stats = bridge.statistics["src"]
    assert (stats.consumed, stats.published, stats.redelivered) == (3, 3, 1)


async def test_what_the_hub_refuses_is_a_dead_letter_and_changes_nothing() -> None:
    hub = Hub()
    hub.table("quotes", Schema("symbol", [Field.fixed("bid", 2)]))
    routing = Routing(
        [Route(match="quotes.*", topic="quotes", key="symbol"), Route(match="t.*", topic="t")]
    )
    bridge = Bridge(hub, routing)
    refused = await bridge.handle(Delivery("s", "1", "quotes.X", b'{"symbol": "X", "bid": 1.001}'))
    assert isinstance(refused, Dead)
    assert "InvalidValue" in refused.reason
    nan = await bridge.handle(Delivery("s", "2", "t.x", json.dumps({"v": float("nan")}).encode()))
    assert isinstance(nan, Dead)
    unknown = await bridge.handle(Delivery("s", "3", "quotes.X", b'{"symbol": "X", "ask": 1}'))
    assert isinstance(unknown, Dead)
    assert hub.topic("quotes").offset == 0
    assert hub.topic_by_name("t") is None or hub.topic("t").offset == 0
    assert bridge.statistics["s"].dead_lettered == 3


# -- Redis Streams, end to end -------------------------------------------------------------


async def _stream_entries(url: str, stream: str) -> list[dict[bytes, bytes]]:
    import coredis

    client = coredis.Redis.from_url(url, decode_responses=False)
    async with client:
        return [dict(e.field_values) for e in await client.xrange(stream)]


async def _add(url: str, stream: str, payloads: list[bytes]) -> None:
    import coredis

    client = coredis.Redis.from_url(url, decode_responses=False)
    async with client:
        for payload in payloads:
            await client.xadd(stream, {b"data": payload})


async def _unread(url: str, stream: str, group: str) -> int:
    """Entries of *stream* that *group* has not read yet (Redis 7's lag)."""
    import coredis

    client = coredis.Redis.from_url(url, decode_responses=True)
    async with client:
        (info,) = await client.xinfo_groups(stream)
        return int(info["lag"])


async def _pending(url: str, stream: str, group: str) -> int:
    import coredis

    client = coredis.Redis.from_url(url, decode_responses=False)
    async with client:
        summary = await client.xpending(stream, group)
        return int(summary.pending)


async def _subscribe(client: Any, pattern: str) -> None:
    await client.send(Subscribe(1, pattern))
    while not isinstance(await client.receive(), Ack):
        pass


@needs_redis
async def test_redis_stream_entries_reach_subscribers_in_order_and_are_acknowledged() -> None:
    with redis_server() as redis:
        hub = Hub()
        bridge = Bridge(hub, Routing([Route(match="trades.*", topic="{subject}")]))
        source = RedisStreamSource(redis.url, ["trades.ACME"], block=0.05, name="rs")
        async with open_server(hub, "127.0.0.1", 0) as server, connect(server.port) as client:
            await _subscribe(client, "trades.ACME")
            await _add(redis.url, "trades.ACME", [json.dumps({"n": i}).encode() for i in range(50)])
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run_source, source)
                got = []
                with trio.fail_after(10):
                    while len(got) < 50:
                        event = await client.receive()
                        if isinstance(event, Data):
                            got.append(event.payload["n"])
                assert got == list(range(50))
                with trio.fail_after(10):
                    await source.wait_acknowledged(50)
                nursery.cancel_scope.cancel()
        assert await _pending(redis.url, "trades.ACME", "tickwire") == 0
        assert bridge.statistics["rs"].published == 50


@needs_redis
async def test_a_bad_entry_goes_to_the_dead_letter_stream_with_its_reason() -> None:
    with redis_server() as redis:
        hub = Hub()
        bridge = Bridge(hub, Routing([Route(match="in", topic="out")]))
        source = RedisStreamSource(redis.url, ["in"], block=0.05)
        await _add(redis.url, "in", [b"{broken", json.dumps({"ok": 1}).encode()])
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run_source, source)
            with trio.fail_after(10):
                await source.wait_acknowledged(2)
            nursery.cancel_scope.cancel()
        assert hub.topic("out").offset == 1
        (dead,) = await _stream_entries(redis.url, "in.dead")
        assert dead[b"data"] == b"{broken"
        assert dead[b"reason"].startswith(b"not json")
        assert dead[b"stream"] == b"in"
        assert await _pending(redis.url, "in", "tickwire") == 0


class _DiesOnce:
    """A bridge killed in the middle of its work: acknowledges *count* messages' worth of
    batches, then dies with the next batch unacknowledged, after publishing it (or, not
    *publish_last*, before); from then on it fails at once (a source's supervisor may
    retry it)."""

    def __init__(self, bridge: Bridge, count: int, *, publish_last: bool = True) -> None:
        self.bridge, self.left, self.dead = bridge, count, trio.Event()
        self.publish_last = publish_last

    async def __call__(self, deliveries: Any) -> list[Published | Dead]:
        if self.dead.is_set():
            raise RuntimeError("dead")
        last = self.left < len(deliveries)
        outcomes = (
            [] if last and not self.publish_last else await self.bridge.handle_many(deliveries)
        )
        if last:
            self.dead.set()
            raise RuntimeError("killed after publishing, before the acknowledgement")
        self.left -= len(deliveries)
        return outcomes


@needs_redis
async def test_a_bridge_that_dies_before_acknowledging_loses_and_duplicates_nothing() -> None:
    with redis_server() as redis:
        hub = Hub()
        routing = Routing([Route(match="t", topic="t")])
        await _add(redis.url, "t", [json.dumps(i).encode() for i in range(30)])
        first = Bridge(hub, routing)
        source = RedisStreamSource(redis.url, ["t"], block=0.05, batch=10, consumer="b1")
        died: list[BaseException] = []
        try:
            await source.run(_DiesOnce(first, 10))  # 20 published, 10 acknowledged
        except* RuntimeError as group:  # through coredis's task group
            died += group.exceptions
        assert [str(e) for e in died] == ["killed after publishing, before the acknowledgement"]
        assert hub.topic("t").offset == 20
        assert await _pending(redis.url, "t", "tickwire") == 10  # its second batch
        # The same consumer, restarted: its pending entries first, as redeliveries.
        second = Bridge(hub, routing)
        again = RedisStreamSource(redis.url, ["t"], block=0.05, batch=10, consumer="b1")
        async with trio.open_nursery() as nursery:
            await nursery.start(second.run_source, again)
            with trio.fail_after(10):
                await again.wait_acknowledged(10 + 10)  # its pending entries, then the unread
            nursery.cancel_scope.cancel()
        assert await _pending(redis.url, "t", "tickwire") == 0
        topic = hub.topic("t")
        assert topic.offset == 30  # 30 entries, 30 messages: none twice, none lost
        assert [e.offset for e in topic.history] == list(range(1, 31))
        assert second.statistics["redis"].redelivered == 10


@needs_redis
async def test_rows_from_a_stream_update_a_table_topic_exactly() -> None:
    with redis_server() as redis:
        hub = Hub()
        hub.table("quotes", Schema("symbol", [Field.fixed("bid", 2), Field.fixed("ask", 2)]))
        bridge = Bridge(hub, Routing([Route(match="quotes.*", topic="quotes", key="symbol")]))
        source = RedisStreamSource(redis.url, ["quotes.ACME"], block=0.05)
        rows = [{"symbol": "ACME", "bid": 101.25, "ask": 101.5}, {"symbol": "ACME", "bid": 101.3}]
        await _add(redis.url, "quotes.ACME", [json.dumps(r).encode() for r in rows])
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run_source, source)
            with trio.fail_after(10):
                await source.wait_acknowledged(2)
            nursery.cancel_scope.cancel()
        table = hub.topic("quotes").table
        assert table is not None
        row = table.get("ACME")
        assert row is not None
        assert (row["bid"], row["ask"]) == (Decimal("101.30"), Decimal("101.50"))


# -- NATS JetStream, end to end (the machine's NATS on 127.0.0.1:4222) -----------------------

NATS_URL = "nats://127.0.0.1:4222"


def _reachable(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


needs_nats = pytest.mark.skipif(not _reachable(4222), reason="no NATS on 127.0.0.1:4222")


async def _nats(work: Any) -> Any:
    """Run *work(js)* with nats-py, on its own asyncio loop (as the source does)."""
    import nats

    from tickwire.sources._asyncio import run_in_asyncio

    async def main() -> Any:
        nc = await nats.connect(NATS_URL)
        try:
            return await work(nc, nc.jetstream())
        finally:
            await nc.close()

    return await run_in_asyncio(main)


@pytest.fixture
async def jetstream() -> Any:
    """A stream of this test's own, deleted afterwards: (stream name, subject prefix)."""
    name = f"tw{os.getpid()}x{next(_streams)}"
    yield name, name.lower()

    async def delete(nc: Any, js: Any) -> None:
        import nats.js.errors

        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(name)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(f"{name}dead")

    await _nats(delete)


_streams = itertools.count()


async def _publish_nats(subject_values: list[tuple[str, bytes]]) -> None:
    async def work(nc: Any, js: Any) -> None:
        for subject, payload in subject_values:
            await js.publish(subject, payload)

    await _nats(work)


@needs_nats
async def test_jetstream_messages_reach_subscribers_in_order_and_are_acknowledged(
    jetstream: tuple[str, str],
) -> None:
    from tickwire.sources.nats_jetstream import NatsJetStreamSource

    stream, prefix = jetstream
    hub = Hub()
    bridge = Bridge(hub, Routing([Route(match=f"{prefix}.trades.*", topic="trades.{3}")]))
    source = NatsJetStreamSource(NATS_URL, stream, [f"{prefix}.>"], batch=20)
    async with open_server(hub, "127.0.0.1", 0) as server, connect(server.port) as client:
        await _subscribe(client, "trades.ACME")
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run_source, source)  # creates the stream
            values = [(f"{prefix}.trades.ACME", json.dumps({"n": i}).encode()) for i in range(50)]
            await _publish_nats(values)
            got = []
            with trio.fail_after(20):
                while len(got) < 50:
                    event = await client.receive()
                    if isinstance(event, Data):
                        got.append(event.payload["n"])
                await source.wait_acknowledged(50)
            nursery.cancel_scope.cancel()
    assert got == list(range(50))
    assert bridge.statistics["nats"].published == 50


@needs_nats
async def test_a_bad_jetstream_message_is_dead_lettered_with_its_reason(
    jetstream: tuple[str, str],
) -> None:
    from tickwire.sources.nats_jetstream import NatsJetStreamSource

    stream, prefix = jetstream
    hub = Hub()
    bridge = Bridge(hub, Routing([Route(match=f"{prefix}.in", topic="out")]))
    source = NatsJetStreamSource(
        NATS_URL, stream, [f"{prefix}.in"], dead_letters=f"{prefix}dead.{{subject}}"
    )

    async def dead_stream(nc: Any, js: Any) -> None:
        await js.add_stream(name=f"{stream}dead", subjects=[f"{prefix}dead.>"])

    await _nats(dead_stream)
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run_source, source)
        await _publish_nats([(f"{prefix}.in", b"{broken"), (f"{prefix}.in", b'{"ok": 1}')])
        with trio.fail_after(20):
            await source.wait_acknowledged(2)
        nursery.cancel_scope.cancel()
    assert hub.topic("out").offset == 1

    async def read_dead(nc: Any, js: Any) -> Any:
        return await js.get_last_msg(f"{stream}dead", f"{prefix}dead.{prefix}.in")

    dead = await _nats(read_dead)
    assert dead.data == b"{broken"
    assert dead.headers["Tickwire-Reason"].startswith("not json")


@needs_nats
async def test_a_jetstream_bridge_that_dies_before_acknowledging_publishes_once(
    jetstream: tuple[str, str],
) -> None:
    from tickwire.sources.nats_jetstream import NatsJetStreamSource

    stream, prefix = jetstream
    hub = Hub()
    routing = Routing([Route(match=f"{prefix}.t", topic="t")])
    first = Bridge(hub, routing)
    dying = NatsJetStreamSource(NATS_URL, stream, [f"{prefix}.t"], batch=10, ack_wait=1.0)

    async def create(nc: Any, js: Any) -> None:
        await js.add_stream(name=stream, subjects=[f"{prefix}.t"])

    await _nats(create)
    await _publish_nats([(f"{prefix}.t", json.dumps(i).encode()) for i in range(25)])
    handler = _DiesOnce(first, 20, publish_last=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(dying.run, handler))
        with trio.fail_after(20):
            await handler.dead.wait()
        nursery.cancel_scope.cancel()  # killed: its last batch read, neither published nor
    assert hub.topic("t").offset == 20  # acknowledged
    assert dying.acknowledged == 20
    # Newer messages arrive while the last batch waits out its ack wait: they must not be
    # published before it.
    await _publish_nats([(f"{prefix}.t", json.dumps(i).encode()) for i in range(25, 30)])
    second = Bridge(hub, routing)
    again = NatsJetStreamSource(NATS_URL, stream, [f"{prefix}.t"], batch=10, ack_wait=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run_source, again)
        with trio.fail_after(30):
            await again.wait_acknowledged(10)  # the 5 redelivered, then the 5 new
        nursery.cancel_scope.cancel()
    topic = hub.topic("t")
    assert topic.offset == 30  # none lost, none twice
    assert [e.offset for e in topic.history] == list(range(1, 31))
    assert [e.payload for e in topic.history] == list(range(30))  # in order
    assert second.statistics["nats"].redelivered >= 1


# -- RabbitMQ, end to end (the machine's RabbitMQ on 127.0.0.1:5672, guest/guest) -----------

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


needs_rabbitmq = pytest.mark.skipif(not _reachable(5672), reason="no RabbitMQ on 127.0.0.1:5672")


async def _amqp(work: Any) -> Any:
    """Run *work(channel)* with aio-pika, on its own asyncio loop (as the source does)."""
    import aio_pika

    from tickwire.sources._asyncio import run_in_asyncio

    async def main() -> Any:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            return await work(await connection.channel())

    return await run_in_asyncio(main)


@pytest.fixture
async def amqp_names() -> Any:
    """A queue and an exchange of this test's own, deleted afterwards."""
    name = f"tw{os.getpid()}x{next(_streams)}"
    yield name, f"{name}.x"

    async def delete(channel: Any) -> None:
        for queue in (name, f"{name}.dead"):
            await channel.queue_delete(queue)
        await channel.exchange_delete(f"{name}.x")

    await _amqp(delete)


async def _publish_amqp(exchange: str, messages: list[tuple[str, bytes, str | None]]) -> None:
    import aio_pika

    async def work(channel: Any) -> None:
        target = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        for routing_key, body, message_id in messages:
            await target.publish(aio_pika.Message(body, message_id=message_id), routing_key)

    await _amqp(work)


@needs_rabbitmq
async def test_rabbitmq_messages_reach_subscribers_in_order_and_bad_ones_are_dead_lettered(
    amqp_names: tuple[str, str],
) -> None:
    from tickwire.sources.rabbitmq import RabbitMqSource

    queue, exchange = amqp_names
    hub = Hub()
    bridge = Bridge(hub, Routing([Route(match="trades.*", topic="{subject}")]))
    source = RabbitMqSource(AMQP_URL, queue, [(exchange, "trades.#")], prefetch=10)
    async with open_server(hub, "127.0.0.1", 0) as server, connect(server.port) as client:
        await _subscribe(client, "trades.ACME")
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run_source, source)  # declares and binds the queue
            messages = [("trades.ACME", json.dumps({"n": i}).encode(), f"m{i}") for i in range(50)]
            messages.insert(10, ("trades.ACME", b"{broken", "bad"))
            await _publish_amqp(exchange, messages)
            got = []
            with trio.fail_after(20):
                while len(got) < 50:
                    event = await client.receive()
                    if isinstance(event, Data):
                        got.append(event.payload["n"])
                await source.wait_acknowledged(51)
            nursery.cancel_scope.cancel()
    assert got == list(range(50))
    assert bridge.statistics["rabbitmq"].dead_lettered == 1

    async def read_dead(channel: Any) -> Any:
        dead = await channel.declare_queue(f"{queue}.dead", durable=True)
        letter = await dead.get(timeout=5)
        await letter.ack()
        return letter

    letter = await _amqp(read_dead)
    assert letter.body == b"{broken"
    assert letter.headers["tickwire-reason"].startswith("not json")
    assert letter.headers["tickwire-routing-key"] == "trades.ACME"


@needs_rabbitmq
async def test_a_rabbitmq_bridge_that_dies_before_acknowledging_publishes_once(
    amqp_names: tuple[str, str],
) -> None:
    from tickwire.sources.rabbitmq import RabbitMqSource

    queue, exchange = amqp_names
    hub = Hub()
    routing = Routing([Route(match="t", topic="t")])
    first = Bridge(hub, routing)
    import aio_pika

    async def declare(channel: Any) -> None:  # bound before anything is published to it
        target = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await (await channel.declare_queue(queue, durable=True)).bind(target, "t")

    await _amqp(declare)
    await _publish_amqp(exchange, [("t", json.dumps(i).encode(), f"m{i}") for i in range(30)])
    dying = RabbitMqSource(AMQP_URL, queue, [(exchange, "t")], prefetch=10)
    handler = _DiesOnce(first, 14)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(dying.run, handler))
        with trio.fail_after(20):
            await handler.dead.wait()
        nursery.cancel_scope.cancel()  # killed: its last batch published, not acknowledged
    assert hub.topic("t").offset > dying.acknowledged
    second = Bridge(hub, routing)
    again = RabbitMqSource(AMQP_URL, queue, [(exchange, "t")], prefetch=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run_source, again)
        with trio.fail_after(20):  # RabbitMQ put back what was not acknowledged
            await again.wait_acknowledged(30 - dying.acknowledged)
        nursery.cancel_scope.cancel()
    topic = hub.topic("t")
    assert topic.offset == 30  # none lost, none twice
    assert [e.offset for e in topic.history] == list(range(1, 31))
    assert [e.payload for e in topic.history] == list(range(30))  # in order
    assert second.statistics["rabbitmq"].redelivered >= 1


@needs_redis
async def test_each_source_has_its_figures_and_lag_on_metrics() -> None:
    from tickwire.metrics import BridgeCollector, MetricsEndpoint, registry_for

    with redis_server() as redis:
        hub = Hub()
        bridge = Bridge(hub, Routing([Route(match="in", topic="out")]))
        source = RedisStreamSource(redis.url, ["in"], block=0.05, batch=2, name="orders")
        await _add(redis.url, "in", [b'{"n": 1}', b"{broken", b'{"n": 2}'])
        async with open_server(hub, "127.0.0.1", 0) as server:
            registry = registry_for(server)
            registry.register(BridgeCollector(bridge, [source]))
            endpoint = MetricsEndpoint(server, registry)
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run_source, source)
                with trio.fail_after(10):
                    await source.wait_acknowledged(3)  # the last batch's lag: nothing left
                nursery.cancel_scope.cancel()
            status, _, body = endpoint.respond("GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert 'tickwire_source_consumed_total{source="orders"} 3.0' in text
    assert 'tickwire_source_published_total{source="orders"} 2.0' in text
    assert 'tickwire_source_dead_lettered_total{source="orders"} 1.0' in text
    assert 'tickwire_source_lag{source="orders",stream="in"} 0.0' in text


# -- tickwire bridge --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("", "no [bridge] table"),
        ('[bridge]\nredis = "x"', "bridge.redis: the backplane's redis:// URL is needed"),
        ('[bridge]\nredis = "redis://h"\nroutes = [{match="a", topic="a"}]', "bridge.sources"),
        (
            '[bridge]\nredis = "redis://h"\n[[bridge.sources]]\ntype = "mqtt"\n'
            '[[bridge.routes]]\nmatch = "a"\ntopic = "a"',
            "bridge.sources[0].type: one of redis_streams, nats_jetstream, rabbitmq, kafka",
        ),
        (
            '[bridge]\nredis = "redis://h"\n[[bridge.sources]]\ntype = "redis_streams"\n'
            'url = "redis://h"\nstreams = ["s"]\nstream = "s"\n'
            '[[bridge.routes]]\nmatch = "a"\ntopic = "a"',
            "bridge.sources[0]: unknown settings for redis_streams: stream",
        ),
        (
            '[bridge]\nredis = "redis://h"\n[[bridge.sources]]\ntype = "redis_streams"\n'
            'url = "redis://h"\nstreams = ["s"]\n[[bridge.routes]]\nmatch = "a"\ntopic = "a"\n'
            'key = "id"',
            "table routes through a backplane are not supported yet",
        ),
        ('[bridge]\nredis = "redis://h"\nworkers = 2', "bridge: unknown settings: workers"),
    ],
)
def test_bridge_settings_are_checked_naming_what_is_wrong(toml: str, message: str) -> None:
    import tomllib

    from tickwire.sources.config import load_bridge

    with pytest.raises(ValueError, match=re.escape(message)):
        load_bridge(tomllib.loads(toml))


async def _line(stream: Any) -> str:
    """The first line a process writes on *stream*."""
    data = b""
    with trio.fail_after(60):
        while b"\n" not in data:
            chunk = await stream.receive_some(4096)
            assert chunk, f"the process ended having said {data!r}"
            data += chunk
    return data.decode().splitlines()[0]


async def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await trio.to_thread.run_sync(get)


@needs_redis
async def test_tickwire_bridge_feeds_the_cluster_from_a_redis_stream(tmp_path: Any) -> None:
    import subprocess
    import sys

    from tickwire.backplane import RedisBackplane

    with redis_server() as redis:
        config = tmp_path / "bridge.toml"
        config.write_text(
            f'[bridge]\nredis = "{redis.url}"\nmetrics_port = 0\n\n[[bridge.sources]]\n'
            f'type = "redis_streams"\nurl = "{redis.url}"\nstreams = ["feed.ACME"]\n'
            'block = 0.05\n\n[[bridge.routes]]\nmatch = "feed.*"\ntopic = "trades.{2}"\n'
        )
        hub = Hub(backplane=RedisBackplane(redis.url))
        async with open_server(hub, "127.0.0.1", 0) as server:
            assert isinstance(hub.backplane, RedisBackplane)
            with trio.fail_after(10):
                await hub.backplane.wait_connected()
            async with connect(server.port) as client:
                await _subscribe(client, "trades.ACME")
                bridge = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "tickwire", "bridge", "--config", str(config)],
                    stderr=subprocess.PIPE,
                )
                try:
                    assert bridge.stderr is not None
                    said = await _line(bridge.stderr)
                    metrics = re.search(r"metrics on (http://\S+)/metrics", said)
                    assert metrics, said
                    await _add(redis.url, "feed.ACME", [json.dumps(i).encode() for i in range(20)])
                    got = []
                    with trio.fail_after(30):
                        while len(got) < 20:
                            event = await client.receive()
                            if isinstance(event, Data):
                                got.append(event.payload)
                    assert got == list(range(20))
                    status, text = await _get(metrics[1] + "/metrics")
                    assert status == 200
                    assert 'tickwire_source_published_total{source="redis"} 20.0' in text
                    assert 'tickwire_source_lag{source="redis",stream="feed.ACME"} 0.0' in text
                    assert await _get(metrics[1] + "/readyz") == (200, "ready\n")
                finally:
                    bridge.terminate()  # the process this test started, by its id
                    await bridge.wait()
    assert said.startswith("tickwire bridge: redis -> redis://")


@needs_redis
async def test_tickwire_serve_runs_the_sources_of_its_own_file(tmp_path: Any) -> None:
    import subprocess
    import sys

    with redis_server() as redis:
        config = tmp_path / "serve.toml"
        config.write_text(
            'unknown_topics = "wait"\n\n[[bridge.sources]]\ntype = "redis_streams"\n'
            f'url = "{redis.url}"\nstreams = ["feed.ACME"]\nblock = 0.05\nname = "feed"\n\n'
            '[[bridge.routes]]\nmatch = "feed.*"\ntopic = "trades.{2}"\n'
        )
        serve = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tickwire", "serve", "--config", str(config), "--port", "0",
             "--metrics-port", "0"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert serve.stdout is not None
            said = ""
            with trio.fail_after(60):
                while "feeding topics from feed" not in said:
                    said += (await serve.stdout.receive_some(4096)).decode()
            port = int(re.search(r"serving on ws://127\.0\.0\.1:(\d+)/", said)[1])  # type: ignore[index]
            metrics = re.search(r"metrics on (http://\S+)/metrics", said)[1]  # type: ignore[index]
            async with connect(port) as client:
                await _subscribe(client, "trades.ACME")
                await _add(redis.url, "feed.ACME", [json.dumps(i).encode() for i in range(5)])
                got = []
                with trio.fail_after(30):
                    while len(got) < 5:
                        event = await client.receive()
                        if isinstance(event, Data):
                            got.append(event.payload)
            assert got == list(range(5))
            _status, text = await _get(metrics + "/metrics")
            assert 'tickwire_source_published_total{source="feed"} 5.0' in text
            assert "tickwire_connections_opened" in text  # the server's own, beside
        finally:
            serve.terminate()  # the process this test started, by its id
            await serve.wait()


def test_a_bridge_table_in_the_serve_file_is_checked(tmp_path: Any) -> None:
    from tickwire.settings import SettingsError, load

    config = tmp_path / "serve.toml"
    config.write_text('[bridge]\nredis = "redis://127.0.0.1:1"\n')
    with pytest.raises(SettingsError, match="bridge: unknown settings: redis"):
        load(argparse.Namespace(config=str(config)), environ={})


def test_tickwire_bridge_refuses_a_bad_file_with_status_2(tmp_path: Any) -> None:
    import subprocess
    import sys

    config = tmp_path / "bridge.toml"
    config.write_text('[bridge]\nredis = "nope"\n')
    done = subprocess.run(
        [sys.executable, "-m", "tickwire", "bridge", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "bridge.redis: the backplane's redis:// URL is needed" in done.stderr


# -- Kafka: no broker runs on this machine (none in Debian's packages or on PyPI); what can
# be tested without one is: the records to deliveries and the offsets committed after them,
# the settings, and the real client against a closed port, retried, never a crash.


def _record(topic: str, partition: int, offset: int, value: bytes) -> Any:
    from aiokafka.structs import ConsumerRecord

    return ConsumerRecord(topic, partition, offset, 0, 0, None, value, None, 0, len(value), [])


def test_kafka_records_become_deliveries_and_commit_the_offset_after_the_last() -> None:
    from aiokafka.structs import TopicPartition

    from tickwire.sources.kafka import deliveries_of, in_partition_order, offsets_to_commit

    got = {
        TopicPartition("ticks", 1): [_record("ticks", 1, 7, b"c"), _record("ticks", 1, 8, b"d")],
        TopicPartition("ticks", 0): [_record("ticks", 0, 41, b"a"), _record("ticks", 0, 42, b"b")],
    }
    records = in_partition_order(got)
    assert [(r.partition, r.offset) for r in records] == [(0, 41), (0, 42), (1, 7), (1, 8)]
    assert deliveries_of("k", records)[:2] == [
        Delivery("k", "ticks:0:41", "ticks", b"a"),
        Delivery("k", "ticks:0:42", "ticks", b"b"),
    ]
    # Kafka's committed offset is the next one to read: after a crash before this commit,
    # the group reads 41.. again, and the keys above publish each record once.
    assert offsets_to_commit(records) == {("ticks", 0): 43, ("ticks", 1): 9}


def test_a_kafka_source_is_configured_like_the_others() -> None:
    import tomllib

    from tickwire.sources.config import load_bridge
    from tickwire.sources.kafka import KafkaSource

    settings = load_bridge(
        tomllib.loads(
            '[bridge]\nredis = "redis://127.0.0.1:6379"\n[[bridge.sources]]\ntype = "kafka"\n'
            'bootstrap_servers = "127.0.0.1:9092"\ntopics = ["ticks"]\ngroup = "ws"\n'
            '[[bridge.routes]]\nmatch = "ticks"\ntopic = "ticks"\n'
        )
    )
    (source,) = settings.sources
    assert isinstance(source, KafkaSource)
    assert (source.topics, source.group, source.batch, source.name) == (
        ("ticks",),
        "ws",
        500,
        "kafka",
    )
    with pytest.raises(ValueError, match=r"start.*'newest'"):
        KafkaSource("127.0.0.1:9092", ["ticks"], start="newest")


async def test_a_kafka_source_retries_an_unreachable_broker_without_crashing() -> None:
    import logging

    from tests.realredis import free_port
    from tickwire.sources.kafka import KafkaSource

    failures: list[str] = []
    twice = trio.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Kafka failed" in record.getMessage():
                failures.append(record.getMessage())
                if len(failures) == 2:
                    twice.set()

    handler = Seen()
    logging.getLogger("tickwire.sources").addHandler(handler)
    try:
        source = KafkaSource(f"127.0.0.1:{free_port()}", ["ticks"], retry_delay=0.01)
        bridge = Bridge(Hub(), Routing([Route(match="ticks", topic="ticks")]))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bridge.run, source)
            with trio.fail_after(30):
                await twice.wait()
            nursery.cancel_scope.cancel()
    finally:
        logging.getLogger("tickwire.sources").removeHandler(handler)
    assert "Unable to bootstrap" in failures[0]
    assert source.acknowledged == 0


@needs_redis
async def test_while_the_backplane_is_down_the_bridge_stops_consuming_and_loses_nothing() -> None:
    import logging

    from tickwire.backplane import open_publisher

    waiting = trio.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting to publish" in record.getMessage():
                waiting.set()

    handler = Seen()
    logger = logging.getLogger("tickwire.sources")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # "waiting to publish" is said at INFO
    outcomes: list[Any] = []
    try:
        with redis_server() as broker, redis_server() as backplane_redis:
            async with open_publisher(
                backplane_redis.url, probe_interval=0.2, probe_timeout=1.0
            ) as hub:
                bridge = Bridge(
                    hub, Routing([Route(match="t", topic="t")]), publish_timeout=0.2,
                    retry_delay=0.05, max_retry_delay=0.2,
                )  # fmt: skip
                source = RedisStreamSource(broker.url, ["t"], batch=10, block=0.05)

                async def handle(deliveries: Any) -> Any:
                    done = await bridge.handle_many(deliveries)
                    outcomes.extend(done)
                    return done

                async with trio.open_nursery() as nursery:
                    await nursery.start(source.run, handle)
                    await _add(broker.url, "t", [json.dumps(i).encode() for i in range(5)])
                    with trio.fail_after(20):
                        await source.wait_acknowledged(5)
                    backplane_redis.kill()  # Redis down, with no goodbye
                    await _add(broker.url, "t", [json.dumps(i).encode() for i in range(5, 50)])
                    with trio.fail_after(20):
                        await waiting.wait()
                    # One batch held, unacknowledged; the rest not even read.
                    assert source.acknowledged == 5
                    held = await _pending(broker.url, "t", "tickwire")
                    assert 1 <= held <= 10
                    assert await _unread(broker.url, "t", "tickwire") == 45 - held
                    backplane_redis.start()  # back (empty: a new epoch for the topic)
                    with trio.fail_after(30):
                        await source.wait_acknowledged(50)
                    nursery.cancel_scope.cancel()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert all(isinstance(o, Published) for o in outcomes)
    offsets = [o.offset for o in outcomes]
    assert offsets[:5] == [1, 2, 3, 4, 5]
    assert offsets[5:] == list(range(offsets[5], offsets[5] + 45))  # none lost, in order
    assert bridge.statistics["redis"].retries >= 1
