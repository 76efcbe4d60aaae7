"""The client against the real server: subscribe, publish, reconnect, recover.

Most tests run real sockets on 127.0.0.1 under ``fail_after``; servers restart on the same
port; the client's backoff is seeded and short. Those that are about time (backoff, retry
hints, heartbeats, expiry, closing) run the server on memory streams
(``open_client(open_stream=listener.open_stream)``) on trio's autojump clock: virtual time,
no real waiting, nothing left to chance.
"""

from __future__ import annotations

import contextlib
import functools
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
from tickwire.client import Attempt
from tickwire.sansio.negotiation import JSON, NegotiationPolicy
from tickwire.sansio.table import Field, Schema
from tickwire.server import Server
from tickwire.testing import MemoryListener

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
    """Wait until *condition()* holds, looking again each virtual millisecond: only in tests
    on trio's autojump clock, where no real time passes."""
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


# -- on trio's virtual clock: a server on memory streams -----------------------------------


class Memory:
    """A server on a :class:`MemoryListener`, restartable as a server on the same port is:
    the client's ``open_stream`` always reaches the current one."""

    def __init__(self, nursery: trio.Nursery, hub: Hub, config: ServerConfig, **kwargs: Any):
        self.nursery, self.hub, self.config, self.kwargs = nursery, hub, config, kwargs
        self.listener = MemoryListener()
        self.server: Server | None = None
        self.scope: trio.CancelScope | None = None

    async def start(self) -> Server:
        self.listener = MemoryListener()
        self.server = Server(self.hub, config=self.config, **self.kwargs)
        self.scope = trio.CancelScope()

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            assert self.scope is not None
            assert self.server is not None
            with self.scope:
                await self.server.serve_listeners([self.listener], task_status=task_status)

        await self.nursery.start(serve)
        return self.server

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.aclose()
        await self.listener.aclose()

    async def open_stream(self, url: str) -> trio.abc.Stream:
        return await self.listener.connect()

    def client(self, config: ClientConfig = FAST, **kwargs: Any) -> Any:
        return open_client("ws://memory/", config=config, open_stream=self.open_stream, **kwargs)


@contextlib.asynccontextmanager
async def memory(
    hub: Hub | None = None, config: ServerConfig = SERVER, **kwargs: Any
) -> AsyncIterator[Memory]:
    async with trio.open_nursery() as nursery:
        served = Memory(nursery, hub or Hub(), config, **kwargs)
        await served.start()
        yield served
        nursery.cancel_scope.cancel()


async def test_closing_a_client_takes_no_time(autojump_clock: trio.testing.MockClock) -> None:
    """It waits for the server's answering close frame, not for a timeout (it used to take
    exactly 2.0 s: its reader was cancelled before that frame came)."""
    async with memory() as served:
        for _ in range(3):
            async with served.client() as client:
                assert client.statistics().connected
                begun = trio.current_time()
            assert trio.current_time() == begun
        await trio.testing.wait_all_tasks_blocked()
        assert served.server is not None
        assert served.server.statistics().connections_closed == {1000: 3}


async def test_a_pattern_resynchronises_its_topics_after_a_reset_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub()
    async with memory(hub) as served, served.client() as client:
        async with client.subscribe("ticks.*") as ticks:
            hub.publish_nowait("ticks.A", 1)
            hub.publish_nowait("ticks.B", 1)
            await messages(ticks, 2)
            assert served.server is not None
            (connection,) = served.server.connections
            await connection.ws.aclose()  # an abrupt reset
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


async def test_a_503_with_retry_after_is_respected(autojump_clock: trio.testing.MockClock) -> None:
    config = ServerConfig(max_connections=1, retry_after=3)
    async with memory(config=config) as served, served.client() as holder:
        refused = trio.Event()
        attempts: list[Attempt] = []

        def told(attempt: Attempt) -> None:
            attempts.append(attempt)
            refused.set()

        begun = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def second() -> None:
                late_config = attrs_evolve(FAST, on_retry=told)
                async with served.client(late_config) as late:
                    assert late.statistics().failed_attempts == 1
                    nursery.cancel_scope.cancel()

            nursery.start_soon(second)
            await refused.wait()  # the second client was refused once, with a hint
            await holder.aclose()
        assert attempts[0].reason.startswith("HTTP 503")
        assert attempts[0].delay is not None
        assert 3 <= attempts[0].delay <= 4.5
        assert trio.current_time() - begun >= 3  # it waited as told


def attrs_evolve(config: ClientConfig, **changes: Any) -> ClientConfig:
    import attrs

    return attrs.evolve(config, **changes)


async def test_a_slow_application_loses_old_stream_updates_explicitly_and_conflates_tables(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub()
    hub.table("quotes", QUOTES)
    async with memory(hub) as served, served.client() as client:
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


async def test_a_slow_application_may_ask_for_an_error_instead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub()
    async with memory(hub) as served, served.client() as client:
        async with client.subscribe("fills", max_buffered=3, on_overflow="raise") as fills:
            for i in range(5):
                hub.publish_nowait("fills", i)
            await wait_until(lambda: client.statistics().updates_received >= 4)
            with pytest.raises(tickwire.SlowConsumer):
                await messages(fills, 5)


async def test_an_expired_token_ends_the_client_without_retrying(
    autojump_clock: trio.testing.MockClock,
) -> None:
    auth = JWTAuth(key="secret-for-tests-only-32-bytes!!", leeway=0)
    # Valid for 100 wall-clock seconds at the handshake; the server's deadline is on trio's
    # clock, which the autojump clock reaches at once.
    token = jwt.encode(
        {"sub": "ann", "exp": int(time.time()) + 100},
        "secret-for-tests-only-32-bytes!!",
        algorithm="HS256",
    )
    async with memory(authenticate=auth) as served, served.client(token=token) as client:
        begun = trio.current_time()
        with pytest.raises(ConnectionClosed) as info:
            async with client.subscribe("fills") as fills:
                await fills.receive()
        assert info.value.code == 4001
        assert 98 <= trio.current_time() - begun <= 101
        assert client.statistics().reconnects == 0


async def test_a_keyed_publish_survives_a_restart_and_an_unkeyed_one_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub()
    async with memory(hub) as served, served.client() as client:
        await served.stop()
        with pytest.raises(TimeoutError):
            await client.publish("orders", {"qty": 1}, timeout=0.2)
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def order() -> None:
                results.append(await client.publish("orders", {"qty": 2}, key="o-2"))

            nursery.start_soon(order)
            await trio.testing.wait_all_tasks_blocked()  # it waits for a connection
            assert not results
            await served.start()  # the same hub again: the publish goes out once
        assert results[0].offset == 1
        assert hub.topic("orders").offset == 1


async def test_a_server_that_stops_answering_is_left_and_reconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server that sends HELLO, then neither reads nor answers pings (frozen)."""
    import wsproto
    from wsproto.events import AcceptConnection, BytesMessage, Request

    from tickwire.sansio import Hello, Negotiated, Role, Session

    listener = MemoryListener()
    connections = 0
    third = trio.Event()

    async def frozen(stream: trio.abc.Stream) -> None:
        nonlocal connections
        connections += 1
        if connections == 3:
            third.set()
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        hello = Session(Role.SERVER, Negotiated.of("tickwire.v2")).send(
            Hello("s", 0, 200, 1 << 20, 1 << 22, 1024, 1024, 32, 16)
        )
        assert isinstance(hello, bytes)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while not any(isinstance(e, Request) for e in ws.events()):
                ws.receive_data(await stream.receive_some(65536))
            await stream.send_all(ws.send(AcceptConnection(subprotocol="tickwire.v2")))
            await stream.send_all(ws.send(BytesMessage(hello)))
            await trio.sleep_forever()

    config = ClientConfig(
        heartbeat_interval=1,
        heartbeat_timeout=1,
        reconnect=Reconnect(initial_delay=0.1, max_delay=0.2),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(trio.serve_listeners, frozen, [listener]))
        async with open_client(
            "ws://frozen/", config=config, open_stream=lambda url: listener.connect()
        ) as client:
            await third.wait()
            assert client.statistics().reconnects >= 1
        nursery.cancel_scope.cancel()


async def test_the_client_answers_the_servers_heartbeat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(heartbeat_interval=5, heartbeat_timeout=4)
    async with memory(config=config) as served, served.client() as client:
        await trio.sleep(50)  # ten of the server's heartbeats go by, in virtual time
        stats = client.statistics()
        assert (stats.connected, stats.reconnects) == (True, 0)
        assert served.server is not None
        assert len(served.server.connections) == 1
        assert served.server.statistics().heartbeat_rtt.count >= 9


# -- first contact: what a client is told when it cannot connect ---------------------------


async def test_failed_attempts_are_told_as_they_happen_then_the_client_gives_up() -> None:
    with socket_bound() as port:  # a port nothing listens on
        attempts: list[Attempt] = []
        config = ClientConfig(
            reconnect=Reconnect(initial_delay=0.01, max_delay=0.02, max_attempts=2),
            on_retry=attempts.append,
        )
        with pytest.raises(ConnectionRefused, match="gave up after 3 attempts: connection refused"):
            async with open_client(f"ws://127.0.0.1:{port}/", config=config):
                pass  # pragma: no cover
    assert [(a.failures, a.permanent, a.delay is None) for a in attempts] == [
        (1, False, False),
        (2, False, False),
        (3, False, True),
    ]
    assert all(a.reason == "connection refused (nothing listening?)" for a in attempts)


async def test_no_retries_means_the_first_failure_ends_it() -> None:
    with socket_bound() as port:
        config = ClientConfig(reconnect=Reconnect(max_attempts=0))
        with pytest.raises(ConnectionRefused, match="gave up after 1 attempt: connection refused"):
            async with open_client(f"ws://127.0.0.1:{port}/", config=config):
                pass  # pragma: no cover


@contextlib.contextmanager
def socket_bound() -> Any:
    """A loopback port bound but not listening: connecting to it is refused."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    ("target", "reason", "status"),
    [
        ("ws://no-such-host.invalid/", "the name does not resolve", None),
        ("metrics:/nothing", "HTTP 404", 404),
        ("wss:", "TLS handshake failed", None),
    ],
)
async def test_what_retrying_cannot_fix_ends_the_client_at_once(
    target: str, reason: str, status: int | None
) -> None:
    hub = Hub()
    attempts: list[Attempt] = []
    config = ClientConfig(reconnect=Reconnect(initial_delay=5), on_retry=attempts.append)
    async with running(hub) as server, trio.open_nursery() as nursery:
        metrics = await nursery.start(tickwire.serve_metrics, server, "127.0.0.1", 0)
        address = {
            "metrics:/nothing": f"ws://127.0.0.1:{metrics.port}/nothing",
            "wss:": f"wss://127.0.0.1:{server.port}/",
        }.get(target, target)
        with trio.fail_after(4):  # under the first backoff: no retry happened
            with pytest.raises(ConnectionRefused, match=reason) as info:
                async with open_client(address, config=config):
                    pass  # pragma: no cover
        assert info.value.status == status
        assert [(a.failures, a.permanent, a.delay) for a in attempts] == [(1, True, None)]
        nursery.cancel_scope.cancel()


async def test_a_permanent_failure_may_be_retried_when_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[Attempt] = []
    config = ClientConfig(
        reconnect=Reconnect(initial_delay=1, max_attempts=2, retry_permanent=True),
        on_retry=attempts.append,
    )

    async def not_found(url: str) -> trio.abc.Stream:
        raise OSError(0, "Name or service not known")

    with pytest.raises(ConnectionRefused, match="gave up after 3 attempts"):
        async with open_client("ws://x/", config=config, open_stream=not_found):
            pass  # pragma: no cover
    assert len(attempts) == 3


async def test_a_topic_that_does_not_exist_is_said_so_with_what_it_looks_like(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub()
    hub.table("quotes", QUOTES)
    async with memory(hub) as served, served.client() as client:
        async with client.subscribe("quote") as typo:
            note = typo.notes["quote"]
            assert "no topic 'quote' on this server; did you mean 'quotes'?" in note
            hub.publish_nowait("quote", 1)  # it appears: delivered, and the note goes
            assert await typo.receive() == Message("quote", 1, 1)
            assert typo.notes == {}
    refusing = attrs_evolve_server(SERVER, unknown_topics="refuse")
    fresh = Hub()
    fresh.table("quotes", QUOTES)
    async with memory(fresh, config=refusing) as served, served.client() as client:
        with pytest.raises(tickwire.SubscriptionError) as info:
            async with client.subscribe("quote"):
                pass  # pragma: no cover
        assert info.value.code == 404
        assert "did you mean 'quotes'?" in info.value.text


def attrs_evolve_server(config: ServerConfig, **changes: Any) -> ServerConfig:
    import attrs

    return attrs.evolve(config, **changes)
