"""The client against the real server on loopback: subscribe, publish, reconnect, recover.

Every test runs real sockets on 127.0.0.1 under ``fail_after``; servers restart on the same
port; the client's backoff is seeded and short.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio

import tickwire
from tickwire import (
    ClientConfig,
    ConnectionClosed,
    ConnectionRefused,
    Hub,
    JWTAuth,
    Lost,
    Message,
    NegotiationError,
    PublishError,
    Reconnect,
    ServerConfig,
    TableChanged,
    TableReset,
    TopicConfig,
    open_client,
)
from tickwire.sansio.negotiation import JSON, NegotiationPolicy
from tickwire.sansio.table import Field, Schema
from tickwire.server import Server

FAST = ClientConfig(reconnect=Reconnect(initial_delay=0.01, max_delay=0.05), heartbeat_interval=5)
SERVER = ServerConfig(retry_after=0.05, shutdown_timeout=1, client_publish=["*", "*.*"])
QUOTES = Schema("symbol", [Field.fixed("bid", 2), Field.integer("n")])


@contextlib.asynccontextmanager
async def running(
    hub: Hub, port: int = 0, config: ServerConfig = SERVER, **kwargs: Any
) -> AsyncIterator[Server]:
    async with tickwire.open_server(hub, "127.0.0.1", port, config=config, **kwargs) as server:
        yield server


def url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/"


async def wait_until(condition: Any) -> None:
    """Wait, checking at each scheduling round, until *condition()* holds (no real sleeps
    beyond what the I/O itself takes)."""
    while not condition():
        await trio.sleep(0.001)


async def messages(subscription: tickwire.Subscription, count: int) -> list[Any]:
    out: list[Any] = []
    while len(out) < count:
        out.append(await subscription.receive())
    return out


async def test_stream_subscribe_publish_and_statistics() -> None:
    hub = Hub()
    with trio.fail_after(10):
        async with running(hub) as server, open_client(url(server), config=FAST) as client:
            async with client.subscribe("fills") as fills:
                for i in range(5):
                    hub.publish_nowait("fills", {"i": i})
                got = await messages(fills, 5)
                assert got == [Message("fills", i + 1, {"i": i}) for i in range(5)]
                ack = await client.publish("fills", {"i": 5})
                assert ack.offset == 6
                assert await fills.receive() == Message("fills", 6, {"i": 5})
                assert fills.position() == tickwire.sansio.Position(hub.topic("fills").epoch, 6)
            stats = client.statistics()
            assert stats.connected
            assert stats.subprotocol == "tickwire.v2+zstd"
            assert stats.updates_received == 6
            assert stats.bytes_received > 0
            assert stats.bytes_decoded >= stats.bytes_received - stats.messages_received


async def test_a_refused_publish_and_an_idempotent_one() -> None:
    hub = Hub()
    hub.table("quotes", QUOTES)
    with trio.fail_after(10):
        async with running(hub) as server, open_client(url(server), config=FAST) as client:
            with pytest.raises(PublishError) as info:
                await client.publish("quotes", {"symbol": "X"})
            assert info.value.code == 400
            first = await client.publish("orders", {"qty": 1}, key="k1")
            again = await client.publish("orders", {"qty": 1}, key="k1")
            assert first == again
            assert hub.topic("orders").offset == 1


async def test_a_table_arrives_as_a_reset_then_changes() -> None:
    hub = Hub()
    hub.table("quotes", QUOTES)
    hub.upsert("quotes", "AAPL", {"bid": 189.12, "n": 1})
    with trio.fail_after(10):
        async with running(hub) as server, open_client(url(server), config=FAST) as client:
            async with client.subscribe("quotes") as quotes:
                reset = await quotes.receive()
                assert isinstance(reset, TableReset)
                assert reset.reason == "subscribed"
                assert reset.rows == {"AAPL": {"symbol": "AAPL", "bid": Decimal("189.12"), "n": 1}}
                hub.upsert("quotes", "AAPL", {"n": 2})
                changed = await quotes.receive()
                assert isinstance(changed, TableChanged)
                (change,) = changed.changes
                assert (change.key, change.changed) == ("AAPL", ("n",))
                assert quotes.table() == {
                    "AAPL": {"symbol": "AAPL", "bid": Decimal("189.12"), "n": 2}
                }


async def test_a_server_restart_loses_nothing_inside_the_history() -> None:
    hub = Hub()
    with trio.fail_after(15):
        async with running(hub) as first:
            port = first.port
            client_cm = open_client(url(first), config=FAST)
            client = await client_cm.__aenter__()
            try:
                async with client.subscribe("fills") as fills:
                    hub.publish_nowait("fills", 0)
                    assert await fills.receive() == Message("fills", 1, 0)
                    await first.aclose()  # graceful: 1001 with retry-after
                    for i in range(1, 11):  # published while the server is down
                        hub.publish_nowait("fills", i)
                    async with running(hub, port):
                        hub.publish_nowait("fills", 11)
                        got = await messages(fills, 11)
                assert [m.payload for m in got] == list(range(1, 12))  # in order, once
                assert all(isinstance(m, Message) for m in got)
                assert client.statistics().reconnects == 1
            finally:
                await client_cm.__aexit__(None, None, None)


async def test_a_restart_with_a_new_hub_says_what_was_lost() -> None:
    old = Hub()
    old.table("quotes", QUOTES)
    with trio.fail_after(15):
        async with running(old) as first:
            port = first.port
            async with open_client(url(first), config=FAST) as client:
                async with client.subscribe("fills") as fills, client.subscribe("quotes") as quotes:
                    old.publish_nowait("fills", "a")
                    assert await fills.receive() == Message("fills", 1, "a")
                    assert isinstance(await quotes.receive(), TableReset)  # an empty table
                    await first.aclose()
                    new = Hub()  # another process: new epochs, no history
                    new.table("quotes", QUOTES)
                    new.upsert("quotes", "IBM", {"n": 7})
                    new.publish_nowait("fills", "b")  # before the client is back: never seen
                    async with running(new, port):
                        lost = await fills.receive()
                        assert lost == Lost("fills", None, None, "not recovered")  # new epoch
                        new.publish_nowait("fills", "c")
                        assert (await fills.receive()) == Message("fills", 2, "c")
                        table_events = await messages(quotes, 2)
                        assert isinstance(table_events[0], Lost)
                        assert isinstance(table_events[1], TableReset)
                        assert table_events[1].reason == "not recovered"
                        assert quotes.table() == {"IBM": {"symbol": "IBM", "bid": None, "n": 7}}


async def test_beyond_the_history_window_is_an_explicit_loss() -> None:
    hub = Hub(default_topic=TopicConfig(history_size=5))
    with trio.fail_after(15):
        async with running(hub) as first:
            port = first.port
            async with open_client(url(first), config=FAST) as client:
                async with client.subscribe("fills") as fills:
                    hub.publish_nowait("fills", 0)
                    await fills.receive()
                    await first.aclose()
                    for i in range(1, 21):
                        hub.publish_nowait("fills", i)
                    async with running(hub, port):
                        lost = await fills.receive()
                        assert lost == Lost("fills", 2, 21, "not recovered")
                        hub.publish_nowait("fills", 21)
                        assert await fills.receive() == Message("fills", 22, 21)


async def test_a_pattern_resynchronises_its_topics_after_a_reset_connection() -> None:
    hub = Hub()
    with trio.fail_after(15):
        async with running(hub) as server, open_client(url(server), config=FAST) as client:
            async with client.subscribe("ticks.*") as ticks:
                hub.publish_nowait("ticks.A", 1)
                hub.publish_nowait("ticks.B", 1)
                await messages(ticks, 2)
                (connection,) = server.connections
                await trio.aclose_forcefully(connection.ws._stream)  # an abrupt TCP reset
                for i in range(2, 6):
                    hub.publish_nowait("ticks.A", i)
                await wait_until(lambda: client.statistics().reconnects == 1)
                hub.publish_nowait("ticks.B", 2)
                got = await messages(ticks, 5)
                by_topic: dict[str, list[int]] = {}
                for m in got:
                    assert isinstance(m, Message), m
                    by_topic.setdefault(m.topic, []).append(m.payload)
                assert by_topic == {"ticks.A": [2, 3, 4, 5], "ticks.B": [2]}


async def test_a_503_with_retry_after_is_respected() -> None:
    hub = Hub()
    config = ServerConfig(max_connections=1, retry_after=0.3)
    with trio.fail_after(15):
        async with running(hub, config=config) as server:
            async with open_client(url(server), config=FAST) as holder:
                begun = trio.current_time()
                async with trio.open_nursery() as nursery:

                    async def second() -> None:
                        async with open_client(url(server), config=FAST) as late:
                            assert late.statistics().failed_attempts >= 1
                            nursery.cancel_scope.cancel()

                    nursery.start_soon(second)
                    await wait_until(lambda: len(server.connections) >= 1)
                    await trio.sleep(0.05)  # let the second one be refused once
                    await holder.aclose()
                assert trio.current_time() - begun >= 0.3  # it waited as told


async def test_an_authentication_failure_is_not_retried() -> None:
    hub = Hub()
    auth = JWTAuth(key="secret-for-tests-only-32-bytes!!")
    with trio.fail_after(10):
        async with running(hub, authenticate=auth) as server:
            config = ClientConfig(reconnect=Reconnect(initial_delay=0.01))
            with pytest.raises(ConnectionRefused) as info:
                async with open_client(url(server), token="not-a-jwt", config=config):
                    pass  # pragma: no cover
            assert info.value.status == 401
            claims = {"sub": "ann", "exp": int(time.time()) + 3600}
            good = jwt.encode(claims, "secret-for-tests-only-32-bytes!!", algorithm="HS256")
            async with open_client(url(server), token=good, config=config) as client:
                assert client.statistics().failed_attempts == 0


async def test_no_common_subprotocol_is_a_clear_error() -> None:
    hub = Hub()
    policy = NegotiationPolicy(preference=(JSON,), json=True)

    async def connect() -> None:
        async with running(hub, negotiation=policy) as server:
            async with open_client(url(server), config=FAST):
                pass  # pragma: no cover

    with trio.fail_after(10), pytest.raises(NegotiationError, match="server supports"):
        await connect()


async def test_a_dictionary_rotation_mid_stream_is_fetched_and_cached(tmp_path: Path) -> None:
    hub = Hub()
    feed = tickwire.MarketFeed(seed=5)
    config = ClientConfig(dictionary_cache=tmp_path, reconnect=FAST.reconnect)
    with trio.fail_after(15):
        async with running(hub) as server, open_client(url(server), config=config) as client:
            async with client.subscribe("quotes.*") as quotes:
                sent = feed.take(400)
                for update in sent[:200]:
                    hub.publish_nowait(f"quotes.{update['symbol'][0]}", update)
                await messages(quotes, 200)
                dictionary = hub.rotate_dictionary(hub.train_dictionary(size=4096))
                for update in sent[200:]:
                    hub.publish_nowait(f"quotes.{update['symbol'][0]}", update)
                got = await messages(quotes, 200)
                assert [m.payload for m in got] == sent[200:]
                assert (tmp_path / f"{dictionary.sha256.hex()}.zdict").read_bytes() == (
                    dictionary.data
                )
                stats = client.statistics()
                assert stats.compression_ratio > 1.2  # the dictionary pays


async def test_a_slow_application_loses_old_stream_updates_explicitly_and_conflates_tables() -> (
    None
):
    hub = Hub()
    hub.table("quotes", QUOTES)
    with trio.fail_after(15):
        async with running(hub) as server, open_client(url(server), config=FAST) as client:
            async with (
                client.subscribe("fills", max_buffered=10) as fills,
                client.subscribe("quotes") as quotes,
            ):
                assert isinstance(await quotes.receive(), TableReset)
                for i in range(100):
                    hub.publish_nowait("fills", i)
                    hub.upsert("quotes", f"S{i % 5}", {"n": i})
                await wait_until(lambda: client.statistics().updates_received >= 200)
                lost = await fills.receive()
                assert lost == Lost("fills", 1, 90, "the application fell behind")
                rest = await messages(fills, 10)
                assert [m.payload for m in rest] == list(range(90, 100))
                changed = await quotes.receive()
                assert isinstance(changed, TableChanged)
                assert sorted(c.key for c in changed.changes) == [f"S{i}" for i in range(5)]
                assert quotes.receive_nowait() is None  # one merged update for all 100
                assert quotes.table()["S4"]["n"] == 99
                stats = client.statistics()
                assert (stats.dropped, stats.conflated) == (90, 95)


async def test_a_slow_application_may_ask_for_an_error_instead() -> None:
    hub = Hub()
    with trio.fail_after(10):
        async with running(hub) as server, open_client(url(server), config=FAST) as client:
            async with client.subscribe("fills", max_buffered=3, on_overflow="raise") as fills:
                for i in range(5):
                    hub.publish_nowait("fills", i)
                await wait_until(lambda: client.statistics().updates_received >= 4)
                with pytest.raises(tickwire.SlowConsumer):
                    await messages(fills, 5)


async def test_an_expired_token_ends_the_client_without_retrying() -> None:
    hub = Hub()
    auth = JWTAuth(key="secret-for-tests-only-32-bytes!!", leeway=0)
    with trio.fail_after(10):
        async with running(hub, authenticate=auth) as server:
            # Expires 1-2 s from now (whole seconds): valid at the handshake, then not.
            token = jwt.encode(
                {"sub": "ann", "exp": math.ceil(time.time()) + 1},
                "secret-for-tests-only-32-bytes!!",
                algorithm="HS256",
            )
            async with open_client(url(server), token=token, config=FAST) as client:
                with pytest.raises(ConnectionClosed) as info:  # while subscribing, or after
                    async with client.subscribe("fills") as fills:
                        await fills.receive()
                assert info.value.code == 4001
                assert client.statistics().reconnects == 0


async def test_a_keyed_publish_survives_a_restart_and_an_unkeyed_one_times_out() -> None:
    hub = Hub()
    with trio.fail_after(15):
        async with running(hub) as first:
            port = first.port
            async with open_client(url(first), config=FAST) as client:
                await first.aclose()
                with pytest.raises(TimeoutError):
                    await client.publish("orders", {"qty": 1}, timeout=0.2)
                results: list[Any] = []
                async with trio.open_nursery() as nursery:

                    async def order() -> None:
                        results.append(await client.publish("orders", {"qty": 2}, key="o-2"))

                    nursery.start_soon(order)
                    await trio.sleep(0.05)  # the publish waits for a connection meanwhile
                    async with running(hub, port):
                        await wait_until(lambda: bool(results))
                assert results[0].offset == 1
                assert hub.topic("orders").offset == 1  # published once


class SilentServer:
    """Accepts WebSocket upgrades, sends HELLO, then neither reads nor answers pings."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        import wsproto
        from wsproto.events import AcceptConnection, BytesMessage, Request

        from tickwire.sansio import Hello, Negotiated, Role, Session

        async def handle(stream: trio.SocketStream) -> None:
            self.connections += 1
            ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
            hello = Session(Role.SERVER, Negotiated.of("tickwire.v2")).send(
                Hello("s", 0, 200, 1 << 20, 1 << 22, 1024, 1024, 32, 16)
            )
            assert isinstance(hello, bytes)
            try:
                while True:
                    ws.receive_data(await stream.receive_some(65536))
                    requests = [e for e in ws.events() if isinstance(e, Request)]
                    if requests:
                        break
                await stream.send_all(ws.send(AcceptConnection(subprotocol="tickwire.v2")))
                await stream.send_all(ws.send(BytesMessage(hello)))
            except trio.BrokenResourceError:  # the client gave up on us first: fine
                return
            await trio.sleep_forever()  # a frozen server: no pongs

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(handle, listeners)


async def test_a_server_that_stops_answering_is_left_and_reconnected() -> None:
    silent = SilentServer()
    config = ClientConfig(
        heartbeat_interval=0.1,
        heartbeat_timeout=0.1,
        reconnect=Reconnect(initial_delay=0.01, max_delay=0.02),
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(silent.run)
            async with open_client(f"ws://127.0.0.1:{silent.port}/", config=config) as client:
                await wait_until(lambda: silent.connections >= 3)
                assert client.statistics().reconnects >= 1
            nursery.cancel_scope.cancel()


async def test_the_client_answers_the_servers_heartbeat() -> None:
    hub = Hub()
    config = ServerConfig(heartbeat_interval=0.05, heartbeat_timeout=0.04)
    with trio.fail_after(10):
        async with running(hub, config=config) as server:
            async with open_client(url(server), config=FAST) as client:
                await trio.sleep(0.5)  # ten of the server's heartbeats go by
                stats = client.statistics()
                assert (stats.connected, stats.reconnects) == (True, 0)
                assert len(server.connections) == 1
