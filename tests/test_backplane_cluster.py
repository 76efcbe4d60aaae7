"""The Redis backplane over a real Redis Cluster: three ``redis-server --cluster-enabled yes``
processes joined by ``redis-cli --cluster create``, started here (docs/scaling.md,
"Sharding")."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import trio

import tickwire
from tests.realredis import RedisServer, needs_redis, redis_cluster
from tests.test_backplane import connected_server, resume_elsewhere, take, url
from tickwire.backplane import RedisBackplane, open_publisher
from tickwire.backplane.scripts import slot
from tickwire.client import Lost, Message, open_client

pytestmark = needs_redis

TOPICS = [f"fx.{n}" for n in range(12)]


@pytest.fixture
def cluster() -> Iterator[list[RedisServer]]:
    with redis_cluster(3) as nodes:
        yield nodes


def owner(nodes: list[RedisServer], key: str) -> RedisServer:
    """The node whose slots hold *key* (as the cluster itself says)."""
    where = slot(key)
    assert int(nodes[0].cli("CLUSTER", "KEYSLOT", key)) == where  # our CRC16 is Redis's
    for node in nodes:
        if node.cli("CLUSTER", "COUNTKEYSINSLOT", str(where)).strip() != "0":
            return node
    raise AssertionError(f"no node holds {key}")


async def test_topics_spread_over_the_cluster_s_primaries_and_every_server_shares_them(
    cluster: list[RedisServer],
) -> None:
    one_node, two_node, publisher_node = cluster
    for key in ("123456789", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap", "a{b}{c}"):
        assert slot(key) == int(one_node.cli("CLUSTER", "KEYSLOT", key))  # Redis's own
    async with (
        connected_server(one_node) as one,
        connected_server(two_node) as two,
        open_publisher(publisher_node.url) as publisher,
    ):
        async with (
            open_client(url(one)) as ann,
            open_client(url(two)) as bob,
            contextlib.AsyncExitStack() as stack,
        ):
            subscriptions = [
                (
                    await stack.enter_async_context(ann.subscribe(name)),
                    await stack.enter_async_context(bob.subscribe(name)),
                )
                for name in TOPICS
            ]
            for round_ in range(20):
                for name in TOPICS:
                    await publisher.publish(name, {"n": round_})
            for name, (on_one, on_two) in zip(TOPICS, subscriptions, strict=True):
                expected = [Message(name, i + 1, {"n": i}) for i in range(20)]
                assert await take(on_one, 20) == expected
                assert await take(on_two, 20) == expected
                assert on_one.position() == on_two.position()
            assert isinstance(publisher.backplane, RedisBackplane)
            keys = publisher.backplane.keys
            # Every topic's keys are on one primary (its hash tag), and all three hold some;
            # both servers listen to each topic's relays there, by sharded pub/sub.
            homes = set()
            for name in TOPICS:
                topic_id = publisher.backplane.topic_id(name) or 0
                home = owner(cluster, keys.history(topic_id))
                homes.add(home.port)
                listeners = home.cli("PUBSUB", "SHARDNUMSUB", keys.channel(topic_id)).split()
                assert int(listeners[1]) == 2
            assert homes == {node.port for node in cluster}
        for hub in (one.hub, two.hub, publisher):
            assert isinstance(hub.backplane, RedisBackplane)
            assert hub.backplane.statistics().cluster


async def test_a_client_resumes_on_another_server_over_the_cluster(
    cluster: list[RedisServer],
) -> None:
    await resume_elsewhere(*cluster)


@pytest.mark.parametrize("which", ["another primary", "the registry's primary"])
async def test_a_primary_killed_and_restarted_empty(cluster: list[RedisServer], which: str) -> None:
    """SIGKILL one primary (no replicas) and start it again, empty, with its slots. Another
    primary: the topics it held start a new epoch and their subscribers are told not
    recovered; the topics on the other primaries go on without a loss. The registry's
    primary: every topic starts again (its ids are given anew), every subscriber is told."""
    async with (
        connected_server(cluster[0]) as server,
        open_publisher(cluster[1].url, probe_interval=0.2, probe_timeout=1.0) as publisher,
    ):
        assert isinstance(publisher.backplane, RedisBackplane)
        async with open_client(url(server)) as client, contextlib.AsyncExitStack() as stack:
            subscriptions = {
                name: await stack.enter_async_context(client.subscribe(name)) for name in TOPICS
            }
            for i in range(5):
                for name in TOPICS:
                    await publisher.publish(name, i)
            for name in TOPICS:
                assert await take(subscriptions[name], 5) == [
                    Message(name, i + 1, i) for i in range(5)
                ]
            keys = publisher.backplane.keys
            registry = owner(cluster, keys.names)
            home = {
                name: owner(cluster, keys.history(publisher.backplane.topic_id(name) or 0))
                for name in TOPICS
            }
            if which == "the registry's primary":
                victim = registry
                lost = set(TOPICS)
            else:
                victim = next(n for n in cluster if n is not registry and n in home.values())
                lost = {name for name in TOPICS if home[name] is victim}
                assert len(lost) < len(TOPICS)  # the other primaries hold some
            victim.kill()
            victim.start()  # the same port and cluster configuration, no data
            victim.wait_logged("Cluster state changed: ok")
            for i in range(5, 10):
                for name in TOPICS:
                    await publisher.publish(name, i, timeout=30)
            for name in TOPICS:
                got = await until(subscriptions[name], 9)
                if name not in lost:
                    assert got == [Message(name, i + 1, i) for i in range(5, 10)]
                    continue
                # Told once; then the new epoch from its first offset. Messages published
                # before the publisher heard of the loss went to the old epoch, some maybe
                # after the server had left it: the Lost says so.
                losts = [n for n, u in enumerate(got) if isinstance(u, Lost)]
                assert len(losts) == 1, got
                (at,) = losts
                lost_update = got[at]
                assert isinstance(lost_update, Lost)
                assert lost_update.reason == "not recovered"
                before, after = got[:at], got[at + 1 :]
                assert before == [Message(name, 6 + k, 5 + k) for k in range(len(before))]
                first = 10 - len(after)
                assert after == [Message(name, n + 1, i) for n, i in enumerate(range(first, 10))]
                assert first >= 5 + len(before)  # none twice


async def until(subscription: tickwire.Subscription, last: object) -> list[tickwire.Update]:
    """What *subscription* receives up to a message whose payload is *last*."""
    got: list[tickwire.Update] = []
    with trio.fail_after(20):
        while not (got and isinstance(got[-1], Message) and got[-1].payload == last):
            got.append(await subscription.receive())
    return got


def move_slot(
    nodes: list[RedisServer], where: int, source: RedisServer, target: RedisServer
) -> None:
    """Reshard one slot, as ``redis-cli --cluster reshard`` does: IMPORTING, MIGRATING,
    MIGRATE of its keys, then SETSLOT NODE on every node."""
    ids = {node.port: node.cli("CLUSTER", "MYID").strip() for node in nodes}
    target.cli("CLUSTER", "SETSLOT", str(where), "IMPORTING", ids[source.port])
    source.cli("CLUSTER", "SETSLOT", str(where), "MIGRATING", ids[target.port])
    keys = source.cli("CLUSTER", "GETKEYSINSLOT", str(where), "1000").split()
    if keys:
        source.cli("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys)
    for node in (target, source, *nodes):
        node.cli("CLUSTER", "SETSLOT", str(where), "NODE", ids[target.port])


async def test_a_topic_whose_slot_moves_to_another_primary_loses_nothing(
    cluster: list[RedisServer],
) -> None:
    """Redis ends the shard subscriptions of a slot that leaves a primary (SUNSUBSCRIBE):
    the server reconnects, subscribes where the slot is now, and fetches what it missed."""
    async with (
        connected_server(cluster[0]) as server,
        open_publisher(cluster[1].url) as publisher,
    ):
        assert isinstance(publisher.backplane, RedisBackplane)
        assert isinstance(server.hub.backplane, RedisBackplane)
        async with open_client(url(server)) as client, client.subscribe("moving") as moving:
            for i in range(10):
                await publisher.publish("moving", i)
            got = await take(moving, 10)
            keys = publisher.backplane.keys
            history = keys.history(publisher.backplane.topic_id("moving") or 0)
            source = owner(cluster, history)
            target = next(node for node in cluster if node is not source)
            move_slot(cluster, slot(history), source, target)
            for i in range(10, 30):
                await publisher.publish("moving", i, timeout=30)
            got += await take(moving, 20)
            assert owner(cluster, history) is target
        assert got == [Message("moving", i + 1, i) for i in range(30)]  # none lost, none twice
        assert server.hub.backplane.statistics().sessions == 2  # it noticed, and came back
