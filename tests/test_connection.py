"""The server's connection logic over in-memory streams, with trio's autojump clock.

Timeouts here are virtual seconds: nothing sleeps for real.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from wsproto.events import BytesMessage, CloseConnection, RejectConnection

from tests.helpers import RawClient, decode, encode, open_raw, start_memory_server
from tickwire.broadcast import TopicConfig
from tickwire.config import ServerConfig
from tickwire.sansio import (
    Batch,
    Data,
    Error,
    Gap,
    Outcome,
    Position,
    Publish,
    Resync,
    Subscribe,
    Subscribed,
)
from tickwire.sansio.events import Ack
from tickwire.sansio.fanout import Overflow
from tickwire.server import Server
from tickwire.testing import MemoryListener


async def start(
    nursery: trio.Nursery, config: ServerConfig | None = None, *, lockstep: bool = False
) -> tuple[Server, MemoryListener]:
    return await start_memory_server(nursery, config, lockstep=lockstep)


async def test_a_silent_peer_is_dropped_after_interval_plus_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        _, listener = await start(nursery)
        raw = await open_raw(listener)
        start_time = trio.current_time()
        assert await raw.close_code() == 4007  # it never answered the ping
        assert trio.current_time() - start_time == pytest.approx(30, abs=0.5)  # 20 s + 10 s
        nursery.cancel_scope.cancel()


async def test_a_peer_that_answers_pings_stays(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        _, listener = await start(nursery)
        raw = await open_raw(listener)
        with trio.move_on_after(200) as scope:
            await raw.close_code(answer_pings=True)
        assert scope.cancelled_caught
        nursery.cancel_scope.cancel()


async def test_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        _, listener = await start(nursery, ServerConfig(idle_timeout=45))
        raw = await open_raw(listener)
        assert await raw.close_code(answer_pings=True) == 4006
        assert trio.current_time() == pytest.approx(45, abs=0.5)  # its own deadline
        nursery.cancel_scope.cancel()


async def test_a_peer_that_stops_reading_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(send_timeout=5, outbox_max_bytes=10_000_000)
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery, config, lockstep=True)
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Subscribe(1, "feed")))
        await raw.messages(2)  # SUBSCRIBED, ACK
        (connection,) = server.connections
        for i in range(100):
            server.hub.publish_nowait("feed", "x" * 1000 + str(i))
        # The client reads nothing more: the writer blocks, then the send times out.
        with trio.fail_after(10):
            await connection.closed.wait()
        assert not server.connections
        assert server.hub.topic("feed").subscribers == {}
        nursery.cancel_scope.cancel()


async def test_a_full_outbox_makes_a_slow_consumer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(outbox_max_messages=10)
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery, config, lockstep=True)
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Subscribe(1, "feed")))
        await raw.messages(2)
        for i in range(50):  # published all at once: more than the outbox holds
            server.hub.publish_nowait("feed", i)
        assert await raw.close_code() == 4000
        nursery.cancel_scope.cancel()


async def test_graceful_shutdown_is_bounded_and_says_1001(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(shutdown_timeout=5, send_timeout=60)
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery, config, lockstep=True)
        reader = await open_raw(listener)
        stalled = await open_raw(listener)
        await stalled.send_bytes(encode(Subscribe(1, "feed")))
        await stalled.messages(2)
        for i in range(200):
            server.hub.publish_nowait("feed", "y" * 500 + str(i))  # stuck in its writer
        codes: list[int] = []
        read = trio.Event()

        async def read_close() -> None:
            codes.append(await reader.close_code(answer_pings=True))
            read.set()

        nursery.start_soon(read_close)
        begun = trio.current_time()
        await server.aclose()
        took = trio.current_time() - begun
        assert took <= 5 + 0.1  # the shutdown deadline, not the 60 s send timeout
        with trio.fail_after(5):
            await read.wait()
        assert codes == [1001]
        assert not server.ready
        nursery.cancel_scope.cancel()


async def test_slowloris_handshake_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        _, listener = await start(nursery, ServerConfig(handshake_timeout=3))
        stream = await listener.connect()
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        assert await stream.receive_some(100) == b""
        assert trio.current_time() == pytest.approx(3, abs=0.1)
        nursery.cancel_scope.cancel()


async def test_the_message_after_rate_limit_strikes_dropped_ones_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(
        messages_per_second=5, rate_burst_seconds=1, rate_limit_strikes=3, client_publish=["chat"]
    )
    async with trio.open_nursery() as nursery:
        _, listener = await start(nursery, config)
        raw = await open_raw(listener)
        for i in range(5 + 3):  # the burst, then three over the limit: answered, not closed
            await raw.send_bytes(encode(Publish(i, "chat", "hi")))
        answers = [decode(m) for m in await raw.messages(6)]
        assert [type(a) for a in answers] == [Ack] * 5 + [Error]
        assert (answers[5].request_id, answers[5].code) == (None, 429)
        await raw.send_bytes(encode(Publish(99, "chat", "hi")))  # the fourth: it closes
        assert await raw.close_code() == 1008
        nursery.cancel_scope.cancel()


async def test_flooding_gets_429_then_1008(autojump_clock: trio.testing.MockClock) -> None:
    config = ServerConfig(messages_per_second=5, rate_burst_seconds=1, client_publish=["chat"])
    async with trio.open_nursery() as nursery:
        _, listener = await start(nursery, config)
        raw = await open_raw(listener)
        for i in range(100):
            await raw.send_bytes(encode(Publish(i, "chat", "hi")))
        events = []
        while True:
            event = await raw.next_event()
            if isinstance(event, CloseConnection):
                break
            if isinstance(event, BytesMessage):
                events.append(decode(bytes(event.data)))
        acks = [e for e in events if isinstance(e, Ack)]
        errors = [e for e in events if isinstance(e, Error)]
        assert len(acks) == 5  # the burst
        assert [(e.request_id, e.code) for e in errors] == [(None, 429)]  # warned once
        assert event.code == 1008
        nursery.cancel_scope.cancel()


async def test_too_many_fragments_is_1009(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        _, listener = await start(nursery, ServerConfig(max_fragments=8))
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Publish(None, "t", "z" * 100)), fragments=50)
        assert await raw.close_code() == 1009
        nursery.cancel_scope.cancel()


async def test_oversized_message_is_1009(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        _, listener = await start(nursery)
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Publish(None, "t", "z" * 70_000)))
        assert await raw.close_code() == 1009
        nursery.cancel_scope.cancel()


async def test_refused_when_full_with_503_and_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        _, listener = await start(nursery, ServerConfig(max_connections=1, retry_after=7))
        await open_raw(listener)
        second = RawClient(await listener.connect())
        refused = await second.handshake()
        assert isinstance(refused, RejectConnection)
        assert refused.status_code == 503
        assert (b"retry-after", b"7") in [(k.lower(), v) for k, v in refused.headers]
        nursery.cancel_scope.cancel()


async def test_data_reaches_a_subscriber(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery)
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Subscribe(1, "feed.*")))
        (ack,) = await raw.messages(1)
        assert decode(ack) == Ack(1)
        server.hub.publish_nowait("feed.a", {"v": 1})
        _subscribed, data = await raw.messages(2)
        assert decode(data) == Data(server.hub.topic("feed.a").topic_id, 1, {"v": 1})
        nursery.cancel_scope.cancel()


def count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


async def test_nothing_is_leaked_when_connections_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery)
        await trio.testing.wait_all_tasks_blocked()
        baseline = count_tasks()
        clients = [await open_raw(listener) for _ in range(10)]
        for i, raw in enumerate(clients):
            await raw.send_bytes(encode(Subscribe(1, f"room.{i % 3}")))
            await raw.messages(2)
        assert server.hub.subscriber_count() == 10
        # An idle connection is one task: its handler, which reads and keeps the heartbeat
        # (a writer exists only while there is a backlog).
        await trio.testing.wait_all_tasks_blocked()
        assert count_tasks() == baseline + 10
        connections = list(server.connections)
        for raw in clients:
            await raw.stream.aclose()  # abruptly, without a close frame
        for connection in connections:
            with trio.fail_after(5):
                await connection.closed.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert server.hub.subscriber_count() == 0
        assert all(not t.subscribers for t in server.hub.topics)
        assert not server.connections
        assert server.admission.open == 0
        assert count_tasks() == baseline
        nursery.cancel_scope.cancel()


async def test_subscription_limit(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        _, listener = await start(nursery, ServerConfig(max_subscriptions=2))
        raw = await open_raw(listener)
        for i in range(3):
            await raw.send_bytes(encode(Subscribe(i, f"t.{i}.*")))
        replies = [decode(m) for m in await raw.messages(3)]
        assert replies[:2] == [Ack(0), Ack(1)]
        assert isinstance(replies[2], Error)
        assert (replies[2].request_id, replies[2].code) == (2, 413)
        nursery.cancel_scope.cancel()


async def test_resume_replays_what_was_missed_then_goes_live(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery)
        hub = server.hub
        for i in range(5):
            hub.publish_nowait("fills", i)  # offsets 1-5
        topic = hub.topic("fills")
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Subscribe(1, "fills", Position(topic.epoch, 2))))
        subscribed, *replay, ack = [decode(m) for m in await raw.messages(5)]
        assert subscribed == Subscribed(
            1, topic.topic_id, "fills", topic.epoch, 2, Outcome.RECOVERED
        )
        assert replay == [Data(topic.topic_id, o, o - 1) for o in (3, 4, 5)]
        assert ack == Ack(1)
        hub.publish_nowait("fills", 5)
        assert decode((await raw.messages(1))[0]) == Data(topic.topic_id, 6, 5)
        nursery.cancel_scope.cancel()


async def test_resume_from_another_epoch_is_not_recovered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery)
        server.hub.publish_nowait("fills", "a")
        topic = server.hub.topic("fills")
        raw = await open_raw(listener)  # as if the server had restarted since
        await raw.send_bytes(encode(Subscribe(1, "fills", Position(topic.epoch + 1, 40))))
        subscribed, ack = [decode(m) for m in await raw.messages(2)]
        assert subscribed.outcome is Outcome.NOT_RECOVERED
        assert subscribed.offset == 1  # live from offset 2, nothing replayed
        assert ack == Ack(1)
        nursery.cancel_scope.cancel()


async def test_resync_after_a_gap_and_the_errors(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery)
        hub = server.hub
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Subscribe(1, "fills")))
        subscribed, _ack = [decode(m) for m in await raw.messages(2)]
        for i in range(4):
            hub.publish_nowait("fills", i)
        await raw.messages(4)
        # The client says it holds up to offset 2: offsets 3 and 4 come again.
        await raw.send_bytes(encode(Resync(2, subscribed.topic_id, 2)))
        again = [decode(m) for m in await raw.messages(3)]
        assert again[0].outcome is Outcome.RECOVERED
        assert [d.offset for d in again[1:]] == [3, 4]
        await raw.send_bytes(encode(Resync(3, 999, 0)))
        error = decode((await raw.messages(1))[0])
        assert (error.request_id, error.code) == (3, 404)
        await raw.send_bytes(encode(Subscribe(4, "other.*", Position(1, 1))))
        error = decode((await raw.messages(1))[0])
        assert (error.request_id, error.code) == (4, 400)
        nursery.cancel_scope.cancel()


async def test_drop_oldest_announces_a_gap(autojump_clock: trio.testing.MockClock) -> None:
    config = ServerConfig(outbox_max_messages=5)
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery, config, lockstep=True)
        server.hub.configure("ticks", TopicConfig(overflow=Overflow.DROP_OLDEST))
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Subscribe(1, "ticks")))
        subscribed, _ack = [decode(m) for m in await raw.messages(2)]
        for i in range(50):  # all at once, into a lockstep stream: the outbox fills
            server.hub.publish_nowait("ticks", i)
        events: list[Any] = []
        while not events or not isinstance(events[-1], Data) or events[-1].offset < 50:
            events.append(decode((await raw.messages(1))[0]))
        gaps = [e for e in events if isinstance(e, Gap)]
        data = [e.offset for e in events if isinstance(e, Data)]
        assert gaps
        assert all(g.topic_id == subscribed.topic_id for g in gaps)
        missing = {o for g in gaps for o in range(g.first, g.last + 1)}
        assert sorted(missing | set(data)) == list(range(1, 51))  # every offset accounted for
        assert not missing & set(data)
        assert data == sorted(data)
        assert len(server.connections) == 1  # still connected
        nursery.cancel_scope.cancel()


async def test_publish_with_backpressure_is_lossless(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(outbox_max_messages=10, send_timeout=60)
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery, config, lockstep=True)
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Subscribe(1, "orders")))
        await raw.messages(2)
        received: list[int] = []
        done = trio.Event()

        async def slow_reader() -> None:
            while len(received) < 200:
                await trio.sleep(0.01)  # virtual: a client that reads slowly but steadily
                event = decode((await raw.messages(1))[0])
                assert isinstance(event, Data), event
                received.append(event.payload)
            done.set()

        nursery.start_soon(slow_reader)
        for i in range(200):
            await server.hub.publish("orders", i, timeout=5)
        await done.wait()
        assert received == list(range(200))  # nothing dropped, nothing lost
        assert len(server.connections) == 1
        nursery.cancel_scope.cancel()


async def test_backpressure_gives_up_on_a_stalled_subscriber(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(outbox_max_messages=10, send_timeout=600)
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery, config, lockstep=True)
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Subscribe(1, "orders")))
        await raw.messages(2)
        (connection,) = server.connections
        begun = trio.current_time()
        for i in range(30):  # the client reads nothing at all
            await server.hub.publish("orders", i, timeout=5)
        assert trio.current_time() - begun == pytest.approx(5, abs=0.5)  # waited once
        with trio.fail_after(5):
            await connection.closed.wait()
        assert connection._close is not None
        assert connection._close[0] == 4000
        nursery.cancel_scope.cancel()


async def test_a_batch_window_sends_one_batch(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery)
        hub = server.hub
        hub.configure("quotes.*", TopicConfig(batch_window=0.010))
        early = await open_raw(listener)
        await early.send_bytes(encode(Subscribe(1, "quotes.X")))
        subscribed, _ack = [decode(m) for m in await early.messages(2)]
        assert subscribed.offset == 0
        begun = trio.current_time()
        for i in range(5):
            hub.publish_nowait("quotes.X", {"bid": i})
        late = await open_raw(listener)  # joins inside the window
        await late.send_bytes(encode(Subscribe(1, "quotes.X")))
        late_subscribed, _ack = [decode(m) for m in await late.messages(2)]
        assert late_subscribed.offset == 0  # nothing sent yet: the pending batch comes whole
        for i in range(5, 8):
            hub.publish_nowait("quotes.X", {"bid": i})
        for client in (early, late):
            batch = decode((await client.messages(1))[0])
            assert batch == Batch(subscribed.topic_id, 1, tuple({"bid": i} for i in range(8)))
        assert trio.current_time() - begun == pytest.approx(0.010, abs=0.002)
        hub.publish_nowait("quotes.X", {"bid": 8})
        assert decode((await early.messages(1))[0]).offset == 9  # a window of one: DATA
        nursery.cancel_scope.cancel()


async def test_shutdown_sends_the_pending_batch(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery)
        server.hub.configure("slow", TopicConfig(batch_window=5))
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Subscribe(1, "slow")))
        await raw.messages(2)
        server.hub.publish_nowait("slow", "last words")
        nursery.start_soon(server.aclose)
        pending = decode((await raw.messages(1))[0])
        assert pending.payload == "last words"  # a window of one: DATA
        assert await raw.close_code(answer_pings=True) == 1001
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("config_rate", "target", "rate"),
    [
        (20_000, "/", 20_000),
        (None, "/?max_bandwidth=10000", 10_000),
        (20_000, "/?max_bandwidth=x", 20_000),
    ],
)
async def test_a_bandwidth_cap_paces_what_a_connection_is_sent(
    autojump_clock: trio.testing.MockClock, config_rate: float | None, target: str, rate: float
) -> None:
    config = ServerConfig(send_bytes_per_second=config_rate, send_burst_bytes=10_000)
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery, config)
        raw = await open_raw(listener, target=target)
        await raw.send_bytes(encode(Subscribe(1, "video")))
        await raw.messages(2)
        begun = trio.current_time()
        for i in range(100):
            server.hub.publish_nowait("video", bytes([i]) * 1000)  # 100 kB in all
        received = [decode(m) for m in await raw.messages(100)]
        assert [d.offset for d in received] == list(range(1, 101))  # nothing lost
        elapsed = trio.current_time() - begun
        expected = (100 * 1010 - 10_000) / rate  # what the burst does not cover
        assert elapsed == pytest.approx(expected, rel=0.15)
        nursery.cancel_scope.cancel()


async def test_a_repeated_idempotency_key_gets_the_original_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start(nursery, ServerConfig(client_publish=["*"]))
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Publish(1, "orders", {"qty": 5}, "ord-1")))
        first = decode((await raw.messages(1))[0])
        await raw.send_bytes(encode(Publish(2, "orders", {"qty": 5}, "ord-1")))
        again = decode((await raw.messages(1))[0])
        assert (first.offset, again.offset) == (1, 1)
        assert again == Ack(2, first.topic_id, 1)
        await raw.send_bytes(encode(Publish(3, "orders", {"qty": 6}, "ord-1")))
        conflict = decode((await raw.messages(1))[0])
        assert (conflict.request_id, conflict.code) == (3, 409)
        assert server.hub.topic("orders").offset == 1
        nursery.cancel_scope.cancel()
