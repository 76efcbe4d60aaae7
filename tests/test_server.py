"""The server end to end on loopback: real sockets, real clients (one not ours)."""

from __future__ import annotations

import random
import ssl
from typing import Any

import msgpack
import pytest
import trio
import trio_websocket
import trustme
import websockets.sync.client
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    TextMessage,
)

from tests.helpers import Client, RawClient, connect, handshake
from tickwire.broadcast import Hub, TopicConfig
from tickwire.config import Limits, ServerConfig
from tickwire.sansio import (
    Ack,
    Data,
    Error,
    Hello,
    Publish,
    Role,
    Session,
    Subscribe,
    Subscribed,
    client_offer,
)
from tickwire.sansio.fanout import Outbox
from tickwire.sansio.negotiation import (
    JSON,
    MSGPACK,
    MSGPACK_ZSTD,
    NO_COMMON_SUBPROTOCOL,
    Negotiated,
)
from tickwire.sansio.session import decode_message
from tickwire.server import HandshakeRequest, Refusal, Server, open_server


async def subscribe(client: Client, pattern: str, request_id: int = 1) -> list[Any]:
    await client.send(Subscribe(request_id, pattern))
    events = []
    while not isinstance(event := await client.receive(), Ack):
        events.append(event)
    return events


async def test_an_independent_client_negotiates_and_reads_hello() -> None:
    async with open_server(Hub(), "127.0.0.1", 0) as server:

        def with_websockets() -> tuple[str | None, bytes | str]:
            url = f"ws://127.0.0.1:{server.port}/"
            with websockets.sync.client.connect(url, subprotocols=[MSGPACK_ZSTD]) as ws:  # type: ignore[list-item]
                return ws.subprotocol, ws.recv(timeout=5)

        subprotocol, message = await trio.to_thread.run_sync(with_websockets)
    assert subprotocol == MSGPACK_ZSTD
    hello = decode_message(message, negotiated=Negotiated.of(MSGPACK_ZSTD), limits=Limits())
    assert isinstance(hello, Hello)
    assert hello.heartbeat_interval_ms == 20_000
    assert hello.compression_level == 3


@pytest.mark.parametrize("subprotocol", [MSGPACK_ZSTD, MSGPACK, JSON])
async def test_subscribe_and_receive_in_every_variant(subprotocol: str) -> None:
    hub = Hub()
    config = ServerConfig(client_publish=["quotes.*"])
    async with (
        open_server(hub, "127.0.0.1", 0, config=config) as server,
        connect(server.port, offer=[subprotocol]) as client,
    ):
        assert isinstance(await client.receive(), Hello)
        assert await subscribe(client, "quotes.*") == []
        payload = {"bid": 101.25, "ask": 101.27, "note": "x" * 200}
        hub.publish_nowait("quotes.AAPL", payload)
        subscribed = await client.receive()
        assert isinstance(subscribed, Subscribed)
        assert subscribed.topic == "quotes.AAPL"
        assert await client.receive() == Data(subscribed.topic_id, 1, payload)
        await client.send(Publish(9, "quotes.AAPL", {"bid": 1}))
        assert await client.receive() == Data(subscribed.topic_id, 2, {"bid": 1})
        assert await client.receive() == Ack(9, subscribed.topic_id, 2)


async def test_no_common_subprotocol_is_closed_with_4004() -> None:
    async with (
        open_server(Hub(), "127.0.0.1", 0) as server,
        trio_websocket.open_websocket(
            "127.0.0.1", server.port, "/", use_ssl=False, subprotocols=["graphql-ws"]
        ) as ws,
    ):
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await ws.get_message()
        await trio.aclose_forcefully(ws._stream)  # see tests/helpers.connect
    assert info.value.reason is not None
    assert info.value.reason.code == 4004
    assert "tickwire.v2+zstd" in (info.value.reason.reason or "")


async def test_a_bug_in_one_connection_leaves_fifty_others_receiving() -> None:
    def authorize(principal: Any, action: str, topic: str) -> bool:
        if topic == "boom":
            raise RuntimeError("a bug in the application's authorizer")
        return True

    hub = Hub()
    async with open_server(hub, "127.0.0.1", 0, authorize=authorize) as server:
        async with trio.open_nursery() as nursery:
            received: list[list[int]] = []
            ready = trio.Semaphore(0)

            async def follower() -> None:
                async with connect(server.port) as client:
                    await client.receive()
                    mine: list[int] = []
                    received.append(mine)
                    await subscribe(client, "ticks")
                    ready.release()
                    while len(mine) < 20:
                        event = await client.receive()
                        if isinstance(event, Data):
                            mine.append(event.payload)

            for _ in range(50):
                nursery.start_soon(follower)
            for _ in range(50):
                await ready.acquire()
            async with connect(server.port) as victim:
                await victim.receive()
                await victim.send(Subscribe(1, "boom"))
                assert await victim.close_code() == 1011
            for i in range(20):
                hub.publish_nowait("ticks", i)
        assert received == [list(range(20))] * 50


async def test_origin_allowlist_rejects_cross_site_handshakes() -> None:
    config = ServerConfig(allowed_origins=["https://app.example.com"], allow_missing_origin=False)
    async with open_server(Hub(), "127.0.0.1", 0, config=config) as server:
        evil = await handshake(server.port, headers=[(b"Origin", b"https://evil.com")])
        assert isinstance(evil, RejectConnection)
        assert evil.status_code == 403
        missing = await handshake(server.port)  # no Origin at all
        assert isinstance(missing, RejectConnection)
        assert missing.status_code == 403
        origin = [(b"Origin", b"https://app.example.com")]
        async with connect(server.port, extra_headers=origin) as client:
            assert isinstance(await client.receive(), Hello)


async def test_authentication_hook() -> None:
    seen: list[HandshakeRequest] = []

    async def authenticate(request: HandshakeRequest) -> Any:
        seen.append(request)
        if request.token == "good":
            return {"user": "ann"}
        if request.token == "banned":
            return Refusal(403, "banned")
        return None

    async with open_server(Hub(), "127.0.0.1", 0, authenticate=authenticate) as server:
        for headers, status in [
            ([], 401),
            ([(b"Authorization", b"Bearer wrong")], 401),
            ([(b"Authorization", b"Bearer banned")], 403),
        ]:
            answer = await handshake(server.port, headers=headers)
            assert isinstance(answer, RejectConnection)
            assert answer.status_code == status
        async with connect(server.port, extra_headers=[(b"Authorization", b"Bearer good")]) as c:
            assert isinstance(await c.receive(), Hello)
        async with connect(server.port, offer=client_offer(token="good")) as c:
            assert isinstance(await c.receive(), Hello)
            assert c.ws.subprotocol == MSGPACK_ZSTD  # never the credential offer
            # Open (the first one may be closing still): both are ann's.
            principals = [connection.principal for connection in server.connections]
            assert principals
            assert all(p == {"user": "ann"} for p in principals)
    assert seen[-1].remote == "127.0.0.1"
    assert seen[-1].path == "/"


def malformed_corpus(count: int) -> list[tuple[bytes | str, set[int]]]:
    """(message, acceptable close codes): hand-made cases, then seeded random ones."""
    rng = random.Random(1234)
    cases: list[tuple[bytes | str, set[int]]] = [
        (b"", {1007}),
        (b"\x20\x90", {1002}),  # reserved bit
        (b"\x02\x90", {1002}),  # dictionary without compression
        (b"\x03" + bytes.fromhex("e06c06060663636363"), {4002}),  # an unoffered dictionary
        (b"\x01" + bytes.fromhex("e06c06060663636363"), {1009}),  # the 13-byte bomb
        (b"\x01\x00", {1007}),
        (b"\x00\xc1", {1007}),
        (b"\x00\xd6\xff\x00\x00\x00\x01", {1007}),  # a timestamp ext
        (b"\x00\xdd\xff\xff\xff\xff", {1007}),  # a lying array header
        (b"\x00" + b"\x91" * 2000 + b"\x01", {1009}),  # nested too deep
        (b"\x00" + msgpack.packb([7, 1, 1, None]), {1002}),  # a server kind
        (b"\x00" + msgpack.packb([0]), {1002}),  # unknown kind
        (b"\x00" + msgpack.packb([12, "x", "t", 1, None]), {1007}),  # wrong type
        (b"\x00" + msgpack.packb([3, 1]), {1007}),  # too short
        (b"\x00" + msgpack.packb({"kind": 3}), {1007}),
        ('[12,null,"t",1,null]', {1003}),  # text on a binary subprotocol
    ]
    while len(cases) < count:
        size = rng.choice((1, 2, 5, 20, 100, 300))
        blob = bytes(rng.getrandbits(8) for _ in range(size))
        header = rng.choice((0x00, 0x00, 0x01, rng.getrandbits(8)))
        # Random bytes: any close code §6 gives bad input, or none (0) for the rare blob that
        # happens to be a valid message.
        cases.append((bytes([header]) + blob, {0, 1002, 1003, 1007, 1009, 4002}))
    return cases


async def test_hundreds_of_malformed_inputs_leave_the_server_serving() -> None:
    """Each bad input gets its close code; an observer connection notices nothing."""
    hub = Hub()
    corpus = malformed_corpus(300)
    outcomes: dict[int, int] = {}
    async with open_server(hub, "127.0.0.1", 0) as server, connect(server.port) as observer:
        await observer.receive()
        await subscribe(observer, "audit")
        for i, (message, codes) in enumerate(corpus):
            async with connect(server.port, offer=[MSGPACK_ZSTD]) as bad:
                await bad.receive()
                code = await bad.outcome_of(message)
            # 0: a random input that happened to be a valid request was answered.
            assert code in codes, (i, message, code)
            outcomes[code] = outcomes.get(code, 0) + 1
            hub.publish_nowait("audit", i)
        seen: list[int] = []
        while len(seen) < len(corpus):
            event = await observer.receive()
            if isinstance(event, Data):
                seen.append(event.payload)
            else:
                assert isinstance(event, Subscribed | Error)
        assert seen == list(range(len(corpus)))
        async with connect(server.port) as fresh:
            assert isinstance(await fresh.receive(), Hello)
    assert set(outcomes) >= {1002, 1003, 1007, 1009, 4002}


async def test_server_object_reports_readiness() -> None:
    hub = Hub()
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(Server(hub).run, "127.0.0.1", 0)
        assert server.ready
        await server.aclose()
        assert not server.ready


async def test_wss_with_real_certificates() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    hub = Hub()
    async with open_server(hub, "127.0.0.1", 0, ssl_context=server_context) as server:
        offer = client_offer()
        async with trio_websocket.open_websocket(
            "127.0.0.1", server.port, "/", use_ssl=client_context, subprotocols=offer
        ) as ws:
            try:
                client = Client(ws, offer)
                assert isinstance(await client.receive(), Hello)
                (subscribed,) = await subscribe(client, "secure")  # an exact name: before ACK
                assert isinstance(subscribed, Subscribed)
                hub.publish_nowait("secure", "over TLS")
                data = await client.receive()
                assert isinstance(data, Data)
                assert data.payload == "over TLS"
            finally:
                await trio.aclose_forcefully(ws._stream)
        # A client that does not trust the certificate never gets in.
        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", server.port, ssl_context=ssl.create_default_context()
        )
        with pytest.raises(trio.BrokenResourceError):
            await stream.do_handshake()
        await trio.aclose_forcefully(stream)


async def raw_tcp_client(port: int) -> RawClient:
    raw = RawClient(await trio.open_tcp_stream("127.0.0.1", port))
    assert isinstance(await raw.handshake([MSGPACK]), AcceptConnection)
    await raw.messages(1)  # HELLO
    return raw


async def test_a_half_open_peer_is_found_by_the_heartbeat() -> None:
    config = ServerConfig(heartbeat_interval=0.2, heartbeat_timeout=0.1)
    async with open_server(Hub(), "127.0.0.1", 0, config=config) as server:
        raw = await raw_tcp_client(server.port)  # then silent: no reads, no pongs
        (connection,) = server.connections
        with trio.fail_after(5):
            await connection.closed.wait()
        assert not server.connections
        await raw.stream.aclose()


async def test_a_peer_that_stops_reading_does_not_slow_the_others() -> None:
    config = ServerConfig(outbox_max_bytes=256 * 1024, send_timeout=2)
    hub = Hub()
    async with open_server(hub, "127.0.0.1", 0, config=config) as server:
        stalled = await raw_tcp_client(server.port)
        subscribe_message = Session(Role.CLIENT, Negotiated.of(MSGPACK)).send(
            Subscribe(1, "firehose")
        )
        assert isinstance(subscribe_message, bytes)
        await stalled.send_bytes(subscribe_message)
        await stalled.messages(2)  # SUBSCRIBED, ACK: subscribed, and from now on it reads nothing
        (slow_connection,) = server.connections
        async with connect(server.port) as fast:
            await fast.receive()
            await subscribe(fast, "firehose")
            block = "x" * 4096
            count = 0
            received = 0
            while not slow_connection.closed.is_set():  # bounded: the outbox holds 256 KiB
                count += 1
                assert count < 100_000
                hub.publish_nowait("firehose", block)
                event = await fast.receive()  # the fast one keeps up, message by message
                while not isinstance(event, Data):
                    event = await fast.receive()
                received += 1
            assert received == count
            assert slow_connection not in server.connections
        await stalled.stream.aclose()


async def _subscribed_raw(server: Server, pattern: str) -> tuple[RawClient, Any]:
    raw = await raw_tcp_client(server.port)
    subscribe_message = Session(Role.CLIENT, Negotiated.of(MSGPACK)).send(Subscribe(1, pattern))
    assert isinstance(subscribe_message, bytes)
    await raw.send_bytes(subscribe_message)
    session = Session(Role.CLIENT, Negotiated.of(MSGPACK))
    while True:
        session.receive_message(await raw.message())
        if any(isinstance(e, Ack) for e in session.events_received()):
            break
    (connection,) = server.connections
    return raw, connection


async def _payloads(raw: RawClient, count: int) -> list[Any]:
    client = Session(Role.CLIENT, Negotiated.of(MSGPACK))
    got: list[Any] = []
    with trio.fail_after(30):
        while len(got) < count:
            message = await raw.message()
            client.receive_message(message)
            got += [e.payload for e in client.events_received() if isinstance(e, Data)]
    return got


async def test_a_burst_reaches_each_subscriber_in_one_write() -> None:
    hub = Hub()
    for i in range(5):
        hub.publish_nowait(f"tick.{i}", -1)  # the topics exist before the subscription
    async with open_server(hub, "127.0.0.1", 0) as server:
        raw, connection = await _subscribed_raw(server, "tick.*")
        before, observed = connection.ws.writes, hub.publish_to_send.statistics().count
        with hub.burst():
            for i in range(50):  # 5 topics, 50 messages, not one checkpoint
                hub.publish_nowait(f"tick.{i % 5}", i)
            assert connection.ws.writes == before  # kept until the end of the block
        assert connection.ws.writes == before + 1
        assert hub.publish_to_send.statistics().count == observed + 50  # each one, at its write
        assert sorted(await _payloads(raw, 50)) == list(range(50))
        before = connection.ws.writes
        for i in range(50):  # no burst: a write each
            hub.publish_nowait(f"tick.{i % 5}", i)
        assert connection.ws.writes == before + 50
        assert sorted(await _payloads(raw, 50)) == list(range(50))
        await raw.stream.aclose()


async def test_a_large_burst_is_written_as_it_grows_and_arrives_whole() -> None:
    hub = Hub()
    hub.publish_nowait("big", b"")
    config = ServerConfig(outbox_max_bytes=32 * 1024 * 1024, outbox_max_messages=100_000)
    async with open_server(hub, "127.0.0.1", 0, config=config) as server:
        raw, connection = await _subscribed_raw(server, "big")
        before = connection.ws.writes
        with hub.burst():  # 8 MB: far more than one cork holds, and than the socket takes
            for i in range(2000):
                hub.publish_nowait("big", i.to_bytes(4, "big") * 1024)
        assert connection.ws.writes > before + 1
        assert await _payloads(raw, 2000) == [i.to_bytes(4, "big") * 1024 for i in range(2000)]
        await raw.stream.aclose()


async def test_batch_windows_that_end_together_are_one_write() -> None:
    hub = Hub()
    hub.configure("w.*", TopicConfig(batch_window=10.0))  # sent by flush() below
    async with open_server(hub, "127.0.0.1", 0) as server:
        for name in ("w.a", "w.b", "w.c"):
            hub.publish_nowait(name, 0)
        hub.flush()
        raw, connection = await _subscribed_raw(server, "w.*")
        for name in ("w.a", "w.b", "w.c"):
            hub.publish_nowait(name, name)
        before = connection.ws.writes
        hub.flush()  # three topics' windows at once
        assert connection.ws.writes == before + 1
        assert sorted(await _payloads(raw, 3)) == ["w.a", "w.b", "w.c"]
        await raw.stream.aclose()


async def test_partial_writes_never_corrupt_the_stream() -> None:
    """A direct write the kernel takes only in part leaves a tail that every sender must
    finish first: here the pong answering the client's ping, sent while the tail is owed."""
    config = ServerConfig(outbox_max_bytes=32 * 1024 * 1024, outbox_max_messages=100_000)
    hub = Hub()
    async with open_server(hub, "127.0.0.1", 0, config=config) as server:
        raw = await raw_tcp_client(server.port)
        subscribe_message = Session(Role.CLIENT, Negotiated.of(MSGPACK)).send(Subscribe(1, "big"))
        assert isinstance(subscribe_message, bytes)
        await raw.send_bytes(subscribe_message)
        await raw.messages(2)
        (connection,) = server.connections
        count = 2000
        for i in range(count):  # 8 MB without yielding: the socket fills mid-frame
            hub.publish_nowait("big", i.to_bytes(4, "big") * 1024)
        assert connection.ws.tail  # a frame is half-written
        client = Session(Role.CLIENT, Negotiated.of(MSGPACK))
        received: list[bytes] = []
        pongs: list[bytes] = []
        # A control frame while the tail is owed: the server's answer to this ping.
        await raw.stream.send_all(raw.ws.send(Ping(b"marker")))
        await _read_all(raw, client, received, pongs, count)
        assert received == [i.to_bytes(4, "big") * 1024 for i in range(count)]
        assert pongs == [b"marker"]
        await raw.stream.aclose()


async def _read_all(
    raw: RawClient, client: Session, received: list[bytes], pongs: list[bytes], count: int
) -> None:
    """Read *count* Data messages and at least one pong from *raw*, in wire order."""
    with trio.fail_after(30):
        while len(received) < count or not pongs:
            event = await raw.next_event()
            if isinstance(event, Pong):
                pongs.append(bytes(event.payload))
            elif isinstance(event, BytesMessage):
                parts = [bytes(event.data)]
                while not event.message_finished:
                    event = await raw.next_event()
                    parts.append(bytes(event.data))
                client.receive_message(b"".join(parts))
                received += [e.payload for e in client.events_received() if isinstance(e, Data)]


async def test_a_close_while_a_frame_is_half_written_finishes_the_frame_first() -> None:
    """The peer closes while the server is mid-frame (a tail owed, the writer waiting for
    room): the rest of that frame goes out, then the answering close frame, cleanly."""
    config = ServerConfig(outbox_max_bytes=32 * 1024 * 1024, outbox_max_messages=100_000)
    hub = Hub()
    async with open_server(hub, "127.0.0.1", 0, config=config) as server:
        raw = await raw_tcp_client(server.port)
        subscribe_message = Session(Role.CLIENT, Negotiated.of(MSGPACK)).send(Subscribe(1, "big"))
        assert isinstance(subscribe_message, bytes)
        await raw.send_bytes(subscribe_message)
        await raw.messages(2)
        (connection,) = server.connections
        for i in range(2000):  # 8 MB without yielding: the socket fills mid-frame
            hub.publish_nowait("big", i.to_bytes(4, "big") * 1024)
        assert connection.ws.tail
        client = Session(Role.CLIENT, Negotiated.of(MSGPACK))
        received: list[bytes] = []
        closing = False
        with trio.fail_after(30):
            while True:  # wsproto fails on a cut frame: every frame here is whole
                if len(received) == 10 and not closing:  # the writer is in a big write now
                    closing = True
                    await raw.stream.send_all(raw.ws.send(CloseConnection(1000)))
                event = await raw.next_event()
                if isinstance(event, CloseConnection):
                    break
                parts = [bytes(event.data)]
                while not event.message_finished:
                    event = await raw.next_event()
                    assert isinstance(event, BytesMessage), event  # not a cut-off frame
                    parts.append(bytes(event.data))
                client.receive_message(b"".join(parts))
                received += [e.payload for e in client.events_received() if isinstance(e, Data)]
        assert event.code == 1000
        assert received == [i.to_bytes(4, "big") * 1024 for i in range(len(received))]
        with trio.fail_after(5):
            await connection.closed.wait()
        assert connection.close_code == 1000
        await raw.stream.aclose()


async def test_behind_a_trusted_proxy_the_forwarded_client_is_the_one_limited() -> None:
    config = ServerConfig(max_connections_per_address=1, trusted_proxies=["127.0.0.1"])
    async with open_server(Hub(), "127.0.0.1", 0, config=config) as server:
        ann = [(b"X-Forwarded-For", b"198.51.100.7")]
        async with connect(server.port, extra_headers=ann) as first:
            assert isinstance(await first.receive(), Hello)
            (connection,) = server.connections
            assert connection.remote == "198.51.100.7"
            again = await handshake(server.port, headers=ann)  # ann's second: over her limit
            assert isinstance(again, RejectConnection)
            assert again.status_code == 503
            bob = [(b"X-Forwarded-For", b"203.0.113.9")]  # through the same proxy
            async with connect(server.port, extra_headers=bob) as second:
                assert isinstance(await second.receive(), Hello)
        assert server.statistics().handshakes_refused == {"per_address_limit": 1}


async def test_without_trusted_proxies_forwarded_for_is_ignored() -> None:
    config = ServerConfig(max_connections_per_address=1)
    async with open_server(Hub(), "127.0.0.1", 0, config=config) as server:
        async with connect(server.port, extra_headers=[(b"X-Forwarded-For", b"1.2.3.4")]) as c:
            assert isinstance(await c.receive(), Hello)
            assert next(iter(server.connections)).remote == "127.0.0.1"
            other = await handshake(server.port, headers=[(b"X-Forwarded-For", b"5.6.7.8")])
            assert isinstance(other, RejectConnection)  # both are 127.0.0.1 to this server


async def _until_closed(client: Client) -> None:
    while True:
        await client.receive()


class _Broken(dict[int, Any]):
    """A connection's subscription options that raise when read: a bug on the delivery
    path of that connection alone."""

    def get(self, *args: Any) -> Any:
        raise RuntimeError("injected delivery bug")


async def test_a_failure_delivering_to_one_subscriber_closes_it_alone_with_1011(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = Hub()
    hub.publish_nowait("t", 0)  # offset 1: the topic exists before the subscriptions
    async with open_server(hub, "127.0.0.1", 0) as server:
        async with connect(server.port) as broken, connect(server.port) as healthy:
            for client in (broken, healthy):
                await client.send(Subscribe(1, "t"))
                while not isinstance(await client.receive(), Ack):
                    pass
            victim, _ = list(server.connections)  # in the order they connected
            victim._custom = _Broken()  # type: ignore[assignment]
            hub.publish_nowait("t", 1)  # the publisher's task: it does not see the bug
            hub.publish_nowait("t", 2)
            got = [await healthy.receive(), await healthy.receive()]
            assert [e.offset for e in got if isinstance(e, Data)] == [2, 3]
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await _until_closed(broken)
            assert closed.value.reason.code == 1011
            await victim.closed.wait()
            assert victim.close_code == 1011
            hub.publish_nowait("t", 3)
            (event,) = [await healthy.receive()]
            assert isinstance(event, Data)
            assert event.offset == 4
    assert hub.internal_errors == 1
    assert "delivery to a subscriber failed; closing it with 1011" in caplog.text
    assert "injected delivery bug" in caplog.text


class _BrokenOutbox(Outbox):
    """An outbox whose writer side raises: a bug in that connection's writer task."""

    def take(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected writer bug")


async def test_a_failure_in_a_writer_closes_its_connection_alone_with_1011(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The writer runs in the server's connection nursery: its bug must stay its own (an
    escaping exception there would stop the server)."""
    hub = Hub()
    hub.publish_nowait("t", 0)
    async with open_server(hub, "127.0.0.1", 0) as server:
        async with connect(server.port) as broken, connect(server.port) as healthy:
            for client in (broken, healthy):
                await client.send(Subscribe(1, "t"))
                while not isinstance(await client.receive(), Ack):
                    pass
            victim, _ = list(server.connections)
            outbox = _BrokenOutbox(max_bytes=1 << 20, max_items=100)
            outbox.offer(b"\x82\x00")  # queued: the next message waits for a writer
            victim.outbox = outbox
            hub.publish_nowait("t", 1)
            assert isinstance(await healthy.receive(), Data)
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await _until_closed(broken)
            assert closed.value.reason.code == 1011
            assert victim.close_code == 1011
            hub.publish_nowait("t", 2)
            assert isinstance(await healthy.receive(), Data)
        async with connect(server.port) as later:  # the server still serves
            assert isinstance(await later.receive(), Hello)
    assert "failed in its writer; closing it with 1011" in caplog.text
    assert "injected writer bug" in caplog.text


async def test_the_echo_endpoint_is_off_by_default_and_echoes_when_on() -> None:
    async with open_server(Hub(), "127.0.0.1", 0) as server:
        raw = RawClient(await trio.open_tcp_stream("127.0.0.1", server.port))
        assert isinstance(await raw.handshake(["plain"], target="/echo"), AcceptConnection)
        assert await raw.close_code() == NO_COMMON_SUBPROTOCOL  # a tickwire endpoint
        await raw.stream.aclose()
    config = ServerConfig(echo_path="/echo")
    async with open_server(Hub(), "127.0.0.1", 0, config=config) as server:
        raw = RawClient(await trio.open_tcp_stream("127.0.0.1", server.port))
        accepted = await raw.handshake(["plain"], target="/echo?run=1")
        assert isinstance(accepted, AcceptConnection)
        assert accepted.subprotocol is None
        await raw.stream.send_all(raw.ws.send(TextMessage("héllo")))
        await raw.send_bytes(b"\x00\xff" * 300, fragments=3)
        assert await raw.messages(2) == ["héllo", b"\x00\xff" * 300]  # no HELLO first
        assert server.hub.subscriber_count() == 0
        tickwire = await raw_tcp_client(server.port)  # "/": tickwire's own, HELLO and all
        await raw.stream.send_all(raw.ws.send(CloseConnection(1000)))
        assert await raw.close_code() == 1000
        await raw.stream.aclose()
        await tickwire.stream.aclose()
