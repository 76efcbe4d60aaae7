"""The Redis backplane end to end: real redis-server processes started here, real servers
and clients on 127.0.0.1 (docs/scaling.md)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
import trio

import tickwire
from tests.realredis import Proxy, RedisServer, needs_redis, redis_server
from tickwire.backplane import RedisBackplane, open_publisher
from tickwire.broadcast import Hub
from tickwire.client import Lost, Message, open_client
from tickwire.errors import BackplaneUnavailable
from tickwire.server import Server, open_server

pytestmark = needs_redis


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def backplane(redis: RedisServer, **options: object) -> RedisBackplane:
    return RedisBackplane(redis.url, probe_interval=0.2, probe_timeout=1.0, **options)  # type: ignore[arg-type]


async def connected(hub: Hub) -> None:
    assert isinstance(hub.backplane, RedisBackplane)
    with trio.fail_after(10):
        await hub.backplane.wait_connected()


@contextlib.asynccontextmanager
async def connected_server(redis: RedisServer, **options: Any) -> AsyncIterator[Server]:
    """A server on 127.0.0.1 sharing its topics through *redis* (any node of a cluster),
    once its backplane is connected."""
    async with open_server(Hub(backplane=backplane(redis)), "127.0.0.1", 0, **options) as server:
        await connected(server.hub)
        yield server


def url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def take(subscription: tickwire.Subscription, count: int) -> list[tickwire.Update]:
    got: list[tickwire.Update] = []
    with trio.fail_after(10):
        while len(got) < count:
            got.append(await subscription.receive())
    return got


async def test_two_servers_deliver_one_publisher_s_messages_with_the_same_offsets(
    redis: RedisServer,
) -> None:
    async with (
        connected_server(redis) as one,
        connected_server(redis) as two,
        open_publisher(redis.url) as publisher,
    ):
        async with (
            open_client(url(one)) as ann,
            open_client(url(two)) as bob,
            ann.subscribe("prices") as on_one,
            bob.subscribe("prices") as on_two,
        ):
            offsets = [await publisher.publish("prices", {"n": i}) for i in range(100)]
            assert offsets == list(range(1, 101))  # one sequence for the whole cluster
            got_one = await take(on_one, 100)
            got_two = await take(on_two, 100)
            assert got_one == got_two == [Message("prices", i + 1, {"n": i}) for i in range(100)]
            assert on_one.position() == on_two.position()  # the same epoch everywhere


async def test_publish_nowait_hands_over_and_the_cluster_gives_the_offsets(
    redis: RedisServer,
) -> None:
    async with (
        open_server(Hub(backplane=backplane(redis)), "127.0.0.1", 0) as server,
        open_publisher(redis.url) as publisher,
    ):
        await connected(server.hub)
        async with open_client(url(server)) as client, client.subscribe("ticks") as ticks:
            for i in range(250):
                assert publisher.publish_nowait("ticks", i) is None
            # The first call on a topic new to the publisher cannot guess its offsets; from
            # the second on, each message is encoded once and every server forwards it.
            assert await publisher.publish("ticks", 250) == 251
            for i in range(251, 500):
                assert publisher.publish_nowait("ticks", i) is None
            got = await take(ticks, 500)
            assert got == [Message("ticks", i + 1, i) for i in range(500)]
            assert isinstance(publisher.backplane, RedisBackplane)
            stats = publisher.backplane.statistics()
            assert stats.published == 500
            assert stats.round_trips < 500  # what waited went together
            # The publisher encoded each message; the server forwarded those bytes.
            assert isinstance(server.hub.backplane, RedisBackplane)
            assert server.hub.backplane.statistics().forwarded > 0


async def test_a_client_resumes_on_another_server_without_loss_or_duplicate(
    redis: RedisServer,
) -> None:
    await resume_elsewhere(redis, redis, redis)


async def resume_elsewhere(
    one_node: RedisServer, two_node: RedisServer, publisher_node: RedisServer
) -> None:
    """A client leaves server one at offset 30 and resumes on server two, which never saw
    the 20 messages published meanwhile: none lost, none twice."""
    async with (
        connected_server(one_node) as one,
        connected_server(two_node) as two,
        open_publisher(publisher_node.url) as publisher,
    ):
        async with open_client(url(one)) as client, client.subscribe("orders") as orders:
            for i in range(30):
                await publisher.publish("orders", i)
            first = await take(orders, 30)
            position = orders.position()
        assert position is not None
        assert position.offset == 30
        for i in range(30, 50):  # while the client is away (server two never saw them)
            await publisher.publish("orders", i)
        async with (
            open_client(url(two)) as client,
            client.subscribe("orders", resume=position) as orders,
        ):
            rest = await take(orders, 20)
            await publisher.publish("orders", 50)
            rest += await take(orders, 1)
        payloads = [u.payload for u in first + rest if isinstance(u, Message)]
        assert payloads == list(range(51))  # none lost, none twice
        assert not [u for u in first + rest if isinstance(u, Lost)]


async def test_a_client_s_publish_is_acknowledged_once_redis_has_it(redis: RedisServer) -> None:
    config = tickwire.ServerConfig(client_publish=["chat.*"])
    async with (
        open_server(Hub(backplane=backplane(redis)), "127.0.0.1", 0, config=config) as one,
        open_server(Hub(backplane=backplane(redis)), "127.0.0.1", 0, config=config) as two,
    ):
        await connected(one.hub)
        await connected(two.hub)
        async with (
            open_client(url(one)) as ann,
            open_client(url(two)) as bob,
            bob.subscribe("chat.room") as room,
        ):
            result = await ann.publish("chat.room", "hello")
            assert result.offset == 1
            assert await take(room, 1) == [Message("chat.room", 1, "hello")]
            again = await ann.publish("chat.room", "hello", key="k1")
            assert (await ann.publish("chat.room", "hello", key="k1")).offset == again.offset


async def test_with_redis_unreachable_publishing_fails_with_a_typed_error() -> None:
    from tests.realredis import free_port

    hub = Hub(backplane=RedisBackplane(f"redis://127.0.0.1:{free_port()}", command_timeout=0.5))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(BackplaneUnavailable):
            hub.publish_nowait("x", 1)
        with pytest.raises(BackplaneUnavailable):
            await hub.publish("x", 1, timeout=0.2)
        nursery.cancel_scope.cancel()


async def test_redis_killed_and_restarted_empty_every_subscriber_is_told_not_recovered(
    redis: RedisServer,
) -> None:
    async with (
        open_server(Hub(backplane=backplane(redis)), "127.0.0.1", 0) as server,
        open_publisher(redis.url, probe_interval=0.2, probe_timeout=1.0) as publisher,
    ):
        await connected(server.hub)
        async with open_client(url(server)) as client, client.subscribe("fx") as fx:
            for i in range(10):
                await publisher.publish("fx", i)
            before = await take(fx, 10)
            old = fx.position()
            redis.kill()  # SIGKILL: no goodbye to anyone, and nothing kept
            redis.start()  # the same port, empty
            # publish() waits for the backplane to reconnect (its timeout is the bound).
            offsets = [await publisher.publish("fx", i, timeout=30) for i in range(10, 15)]
            after = await take(fx, 6)
        assert before == [Message("fx", i + 1, i) for i in range(10)]
        lost, *rest = after
        assert isinstance(lost, Lost)
        assert lost.reason == "not recovered"
        new = fx.position()
        assert old is not None
        assert new is not None
        assert new.epoch != old.epoch  # a new epoch: the old offsets mean nothing now
        assert offsets == [1, 2, 3, 4, 5]
        assert rest == [Message("fx", i - 9, i) for i in range(10, 15)]
        assert isinstance(server.hub.backplane, RedisBackplane)
        stats = server.hub.backplane.statistics()
        assert stats.restarts == 1
        assert stats.sessions == 2


async def test_a_silent_pub_sub_connection_is_found_and_what_it_missed_is_fetched(
    redis: RedisServer,
) -> None:
    proxy = Proxy(redis.port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        hub = Hub(backplane=RedisBackplane(proxy.url, probe_interval=0.2, probe_timeout=1.0))
        async with (
            open_server(hub, "127.0.0.1", 0) as server,
            open_publisher(redis.url) as publisher,
            open_client(url(server)) as client,
        ):
            await connected(hub)
            async with client.subscribe("book") as book:
                for i in range(5):
                    await publisher.publish("book", i)
                got = await take(book, 5)
                assert proxy.freeze_pubsub() == 1  # the server's subscriber connection
                for i in range(5, 25):  # into Redis, but the server hears nothing of them
                    await publisher.publish("book", i)
                got += await take(book, 20)  # the probe finds the silence, then a fetch
        nursery.cancel_scope.cancel()
    assert got == [Message("book", i + 1, i) for i in range(25)]  # none lost, none twice
    assert isinstance(hub.backplane, RedisBackplane)
    stats = hub.backplane.statistics()
    assert stats.silent == 1
    assert stats.fetched == 20
    assert stats.sessions == 2


async def test_readyz_says_not_ready_while_redis_is_unreachable(redis: RedisServer) -> None:
    hub = Hub(backplane=backplane(redis))
    async with open_server(hub, "127.0.0.1", 0) as server:
        endpoint = tickwire.MetricsEndpoint(server, tickwire.metrics.registry_for(server))
        await connected(hub)
        assert endpoint.respond("GET", "/readyz")[0] == 200
        redis.kill()
        assert isinstance(hub.backplane, RedisBackplane)
        with trio.fail_after(10):
            await hub.backplane.wait_disconnected()  # the probe's next round finds it gone
        status, _, body = endpoint.respond("GET", "/readyz")
        assert (status, body) == (503, b"not ready: the backplane is not connected to Redis\n")
        metrics = endpoint.respond("GET", "/metrics")[2].decode()
        assert "tickwire_backplane_connected 0.0" in metrics
        assert "tickwire_backplane_sessions_total 1.0" in metrics
        with pytest.raises(BackplaneUnavailable):
            hub.publish_nowait("anything", 1)


async def test_a_table_written_by_one_process_is_the_same_on_every_server(
    redis: RedisServer,
) -> None:
    writer = Hub(backplane=backplane(redis))
    writer.table("quotes", tickwire.EQUITY_QUOTE_SCHEMA)
    async with (
        open_publisher(hub=writer) as writer,
        open_server(Hub(backplane=backplane(redis)), "127.0.0.1", 0) as one,
        open_server(Hub(backplane=backplane(redis)), "127.0.0.1", 0) as two,
    ):
        await writer.join("quotes")  # followed: the table has its cluster id and rows
        for i in range(40):
            quote = {"bid": Decimal(f"{i}.25"), "ask": Decimal(f"{i}.5"), "bid_size": i}
            writer.upsert("quotes", f"S{i}", quote)
        await connected(one.hub)
        await connected(two.hub)
        async with (
            open_client(url(one)) as ann,
            open_client(url(two)) as bob,
            ann.subscribe("quotes") as on_one,
            bob.subscribe("quotes") as on_two,
        ):
            await take(on_one, 1)  # the snapshot (TableReset)
            await take(on_two, 1)
            for i in range(0, 40, 2):  # every other row changes, ten rows go
                writer.upsert("quotes", f"S{i}", {"bid": Decimal(f"{i}.75")})
            writer.update("quotes", deletes=[f"S{i}" for i in range(30, 40)])
            done = writer.topic_by_name("quotes")
            assert done is not None
            assert done.table is not None
            want = {r["symbol"]: r for r in done.table.rows()}
            with trio.fail_after(10):
                while on_one.table() != want or on_two.table() != want:
                    await on_one.receive() if on_one.table() != want else await on_two.receive()
            t1, t2 = one.hub.topic_by_name("quotes"), two.hub.topic_by_name("quotes")
            assert t1 is not None
            assert t2 is not None
            assert (t1.epoch, t1.offset) == (t2.epoch, t2.offset)
            variant = tickwire.sansio.Negotiated.of("tickwire.v2")
            # Keyframes agree: the same snapshot bytes on both servers at the same offset.
            assert one.hub.snapshot(t1, variant) == two.hub.snapshot(t2, variant)
        # A server that starts now gets the table from Redis, at the same offset.
        async with open_server(Hub(backplane=backplane(redis)), "127.0.0.1", 0) as three:
            await connected(three.hub)
            async with open_client(url(three)) as cy, cy.subscribe("quotes") as on_three:
                reset = (await take(on_three, 1))[0]
                assert isinstance(reset, tickwire.TableReset)
                assert reset.rows == want
                assert reset.offset == t1.offset


async def test_a_table_s_writer_publishes_its_rows_again_when_redis_lost_them(
    redis: RedisServer,
) -> None:
    writer = Hub(backplane=backplane(redis))
    writer.table("world", tickwire.GAME_ENTITY_SCHEMA)
    async with (
        open_publisher(hub=writer) as writer,
        open_server(Hub(backplane=backplane(redis)), "127.0.0.1", 0) as server,
    ):
        await writer.join("world")
        rows = {i: {"kind": "player", "x": float(i), "y": 0.0} for i in range(1, 21)}
        writer.update("world", rows)
        await connected(server.hub)
        async with open_client(url(server)) as client, client.subscribe("world") as world:
            await take(world, 1)
            redis.kill()
            redis.start()  # empty: the rows are gone from Redis
            got = await take(world, 2)
            assert isinstance(got[0], Lost)
            assert got[0].reason == "not recovered"
            assert isinstance(got[1], tickwire.TableReset)
            with trio.fail_after(10):  # the writer's rows come back, then its changes
                while len(world.table()) < 20:
                    await world.receive()
            writer.upsert("world", 1, {"x": 100.0})
            with trio.fail_after(10):
                while world.table()[1]["x"] != 100.0:
                    await world.receive()
            local = writer.topic_by_name("world")
            assert local is not None
            assert local.table is not None
            assert world.table() == {r["id"]: r for r in local.table.rows()}


async def test_scripts_flushed_from_redis_are_loaded_again_and_nothing_is_published_twice(
    redis: RedisServer,
) -> None:
    async with (
        open_server(Hub(backplane=backplane(redis)), "127.0.0.1", 0) as server,
        open_publisher(redis.url) as publisher,
    ):
        await connected(server.hub)
        async with open_client(url(server)) as client, client.subscribe("flushed") as updates:
            assert await publisher.publish("flushed", "before") == 1
            redis.cli("SCRIPT", "FLUSH")  # as after a failover to a replica without them
            assert await publisher.publish("flushed", "after") == 2
            got = await take(updates, 2)
            assert got == [Message("flushed", 1, "before"), Message("flushed", 2, "after")]


async def test_publish_many_shares_round_trips_keeps_order_and_answers_each(
    redis: RedisServer,
) -> None:
    from tickwire.errors import InvalidValue

    async with open_publisher(redis.url) as publisher:
        assert isinstance(publisher.backplane, RedisBackplane)
        await publisher.backplane.wait_connected()
        items: list[tuple[str, Any, str | None]] = []
        for i in range(300):
            items.append((f"t{i % 3}", i, f"key{i}"))
        items.insert(150, ("t0", float("inf"), None))  # refused, the rest goes on
        before = publisher.backplane.statistics().round_trips
        answers = await publisher.publish_many(items)
        trips = publisher.backplane.statistics().round_trips - before
        assert isinstance(answers.pop(150), InvalidValue)
        assert answers == [i // 3 + 1 for i in range(300)]  # each topic's offsets, in order
        assert trips < 30  # not one round trip per message
        # Published again (a redelivery): the original offsets, nothing new.
        again = await publisher.publish_many([(f"t{i % 3}", i, f"key{i}") for i in range(300)])
        assert again == answers
        assert await publisher.publish("t0", "next") == 101


async def test_publish_many_refuses_the_tail_it_cannot_queue(redis: RedisServer) -> None:
    from tests.realredis import free_port

    nowhere = RedisBackplane(f"redis://127.0.0.1:{free_port()}", reconnect_interval=0.05)
    hub = Hub(backplane=nowhere)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        answers = await hub.publish_many([("t", 1, None), ("t", 2, None)], timeout=0.05)
        nursery.cancel_scope.cancel()
    assert [type(a) for a in answers] == [BackplaneUnavailable, BackplaneUnavailable]
    assert nowhere.statistics().published == 0
