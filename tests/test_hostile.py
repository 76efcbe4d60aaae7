"""Hostile clients: each defect an attacker found, with the answer it gets now.

Against real servers on 127.0.0.1 (the attacks that stopped a server or made silent gaps),
and in memory on trio's virtual clock (budgets, permissions, revocation, frames).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import jwt
import pytest
import trio
import trio.testing

from tests.helpers import (
    Client,
    RawClient,
    connect,
    decode,
    encode,
    open_raw,
    start_memory_server,
)
from tickwire.auth import JWTAuth
from tickwire.broadcast import Hub, TopicConfig
from tickwire.config import KiB, ServerConfig
from tickwire.sansio import (
    Ack,
    Auth,
    Data,
    Error,
    Publish,
    Role,
    Session,
    Subscribe,
    Subscribed,
    Unsubscribed,
)
from tickwire.sansio.events import Outcome, Position
from tickwire.sansio.negotiation import JSON, MSGPACK, MSGPACK_ZSTD, Negotiated
from tickwire.server import open_server

CONFIG = ServerConfig(client_publish=["trades.*", "chat"], shutdown_timeout=1)


async def subscribed(client: Client, request_id: int, pattern: str) -> Subscribed | None:
    """SUBSCRIBE; the SUBSCRIBED for an exact name (None for a pattern), after its ACK."""
    await client.send(Subscribe(request_id, pattern))
    first = await client.receive()
    if isinstance(first, Ack):
        return None
    assert isinstance(first, Subscribed), first
    assert await client.receive() == Ack(request_id)
    return first


# -- 1, 2: values the server cannot re-encode ------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '[12,1,"trades.ZZZ",1e400,null]',  # infinity
        '[12,1,"trades.ZZZ",18446744073709551616,null]',  # 2**64
        '[12,1,"trades.ZZZ","\\ud800",null]',  # a lone surrogate
        '[12,18446744073709551616,"trades.ZZZ",1,null]',  # a request id of 2**64
    ],
)
async def test_values_no_receiver_could_get_close_the_sender_with_1007_and_nothing_else(
    text: str, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub()
    hub.configure("trades.*", TopicConfig(batch_window=0.010))
    async with open_server(hub, "127.0.0.1", 0, config=CONFIG) as server:
        async with connect(server.port, offer=[MSGPACK]) as bystander:
            await bystander.receive()  # HELLO
            watched = await subscribed(bystander, 1, "trades.ZZZ")
            assert watched is not None
            async with connect(server.port, offer=[JSON]) as attacker:
                await attacker.receive()
                assert await subscribed(attacker, 1, "trades.ZZZ") is not None
                assert await attacker.outcome_of(text) == 1007
            hub.publish_nowait("trades.ZZZ", {"px": "1.25"})  # the program goes on
            # A window holding one message sends it as a DATA.
            assert await bystander.receive() == Data(watched.topic_id, 1, {"px": "1.25"})
            assert server.ready
    assert hub.internal_errors == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("window", [None, 0.010])
async def test_a_refused_publish_uses_no_offset_and_stores_nothing(window: float | None) -> None:
    hub = Hub()
    hub.configure("trades.*", TopicConfig(batch_window=window))
    async with open_server(hub, "127.0.0.1", 0, config=CONFIG) as server:
        async with connect(server.port, offer=[MSGPACK]) as client:
            await client.receive()
            watched = await subscribed(client, 1, "trades.X")
            assert watched is not None
            for i, (bad, code) in enumerate(
                [(math.nan, 400), ({"px": math.inf}, 400), (nested(40), 413)]  # 413: too deep
            ):
                await client.send(Publish(10 + i, "trades.X", bad))
                error = await client.receive()
                assert isinstance(error, Error)
                assert (error.request_id, error.code) == (10 + i, code)
            await client.send(Publish(20, "trades.X", {"px": 1}))
            received = [await client.receive(), await client.receive()]
            assert Ack(20, watched.topic_id, 1) in received  # offset 1: nothing was used up
        topic = hub.topic("trades.X")
        assert [e.offset for e in topic.history] == [1]
        assert topic.recover(Position(topic.epoch, 0), hub.clock())[0] is Outcome.RECOVERED


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# -- 3: memory amplification --------------------------------------------------------------


async def test_a_small_compressed_publish_cannot_become_a_large_stored_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery, CONFIG)
        raw = await open_raw_zstd(listener)
        message = raw_session_publish(Publish(1, "chat", "x" * 255_000))
        assert len(message) < 100  # 45-odd bytes on the wire, 255 KB once decompressed
        for _ in range(5):
            await raw.send_bytes(message)
            error = decode_zstd((await raw.messages(1))[0])
            assert (error.request_id, error.code) == (1, 413)
        assert server.hub.history_bytes == 0
        assert server.hub.topic_by_name("chat") is None  # nothing created either
        nursery.cancel_scope.cancel()


async def test_history_is_bounded_in_bytes_per_topic_and_in_all() -> None:
    hub = Hub(max_history_bytes=300 * KiB)
    hub.configure("big.*", TopicConfig(history_bytes=100 * KiB, history_size=10_000))
    for i in range(200):
        hub.publish_nowait(f"big.{i % 5}", "x" * 4000)
    per_topic = [t.history_bytes for t in hub.topics]
    assert max(per_topic) <= 100 * KiB
    assert hub.history_bytes == sum(per_topic) <= 300 * KiB
    assert all(t.history for t in hub.topics)  # the newest of each topic is kept


async def test_client_created_topics_are_capped_and_freed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(max_topics_per_connection=5)
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery, config)
        server.hub.max_client_topics = 8
        first = await open_raw(listener)
        codes = []
        for i in range(7):
            await first.send_bytes(encode(Subscribe(i, f"made.up{i}")))
            answer = decode((await first.messages(1))[0])
            if isinstance(answer, Subscribed):
                answer = decode((await first.messages(1))[0])
            codes.append(answer.code if isinstance(answer, Error) else 0)
        assert codes == [0, 0, 0, 0, 0, 429, 429]  # five per connection
        second = await open_raw(listener)
        for i in range(4):
            await second.send_bytes(encode(Subscribe(i, f"other{i}")))
            answer = decode((await second.messages(1))[0])
            if isinstance(answer, Subscribed):
                answer = decode((await second.messages(1))[0])
            codes.append(answer.code if isinstance(answer, Error) else 0)
        assert codes[7:] == [0, 0, 0, 503]  # eight in all
        assert server.hub.client_topics == 8
        await first.stream.aclose()
        await second.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert (server.hub.client_topics, server.hub.topics) == (0, [])  # freed: unused
        nursery.cancel_scope.cancel()


# -- 4, 5: authorisation per concrete topic, and revocation ---------------------------------


def deny_secret_keys(principal: Any, action: str, topic: str) -> bool:
    return topic != "secret.keys"


async def test_a_pattern_never_reaches_past_a_denied_topic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery, authorize=deny_secret_keys)
        hub = server.hub
        hub.publish_nowait("secret.keys", "before")  # exists before the subscription
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Subscribe(1, "secret.*")))
        await raw.send_bytes(encode(Subscribe(2, "*.keys")))
        assert [decode(m) for m in await raw.messages(2)] == [Ack(1), Ack(2)]
        await raw.send_bytes(encode(Subscribe(3, "secret.keys")))
        error = decode((await raw.messages(1))[0])
        assert (error.request_id, error.code) == (3, 403)
        for topic in ("secret.keys", "secret.plans", "public.keys", "secret.keys"):
            hub.publish_nowait(topic, topic)  # secret.plans and public.keys: created now
        received = [decode(m) for m in await raw.messages(4)]
        names = [e.topic for e in received if isinstance(e, Subscribed)]
        payloads = [e.payload for e in received if isinstance(e, Data)]
        assert (sorted(names), sorted(payloads)) == (
            ["public.keys", "secret.plans"],
            ["public.keys", "secret.plans"],
        )
        nursery.cancel_scope.cancel()


SECRET = "s3cret-for-tests-only-0123456789abcdef"


def token(subscribe: list[str]) -> str:
    claims = {"sub": "ann", "exp": int(time.time()) + 3600, "tickwire": {"subscribe": subscribe}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_a_refreshed_token_with_fewer_permissions_ends_what_it_no_longer_allows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery, authenticate=JWTAuth(key=SECRET))
        hub = server.hub
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Auth(1, token(["quotes.*", "secret.*"]))))
        await raw.send_bytes(encode(Subscribe(2, "quotes.*")))
        await raw.send_bytes(encode(Subscribe(3, "secret.*")))
        assert [decode(m) for m in await raw.messages(3)] == [Ack(1), Ack(2), Ack(3)]
        hub.publish_nowait("secret.plan", 1)
        assert [type(decode(m)) for m in await raw.messages(2)] == [Subscribed, Data]
        await raw.send_bytes(encode(Auth(4, token(["quotes.*"]))))
        ack, ended = [decode(m) for m in await raw.messages(2)]
        assert ack == Ack(4)
        assert ended == Unsubscribed(None, "secret.*", 403, "forbidden: secret.*")
        hub.publish_nowait("secret.plan", 2)  # no longer sent
        hub.publish_nowait("quotes.A", 3)
        received = [decode(m) for m in await raw.messages(2)]
        assert [e.payload for e in received if isinstance(e, Data)] == [3]
        nursery.cancel_scope.cancel()


# -- 6: publishing is a permission ----------------------------------------------------------


async def test_with_no_authentication_nobody_publishes_unless_told_where(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery)  # the defaults
        server.hub.publish_nowait("trades.AAPL", {"price": "189.12"})
        raw = await open_raw(listener)
        forged = {"price": 0.01, "size": 1_000_000}
        await raw.send_bytes(encode(Publish(1, "trades.AAPL", forged)))
        error = decode((await raw.messages(1))[0])
        assert (error.request_id, error.code, error.text) == (1, 403, "forbidden: trades.AAPL")
        assert server.hub.topic("trades.AAPL").offset == 1
        nursery.cancel_scope.cancel()


# -- 7, 8: frames, handshakes and logs ------------------------------------------------------


@pytest.mark.parametrize("fragments", [9, 65, 200])
async def test_too_many_fragments_close_once_with_1009_and_log_no_traceback(
    fragments: int, caplog: pytest.LogCaptureFixture
) -> None:
    config = ServerConfig(max_fragments=8, shutdown_timeout=1)
    async with open_server(Hub(), "127.0.0.1", 0, config=config) as server:
        for _ in range(3):
            async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
                raw = RawClient(stream)
                await raw.handshake([MSGPACK])
                await raw.messages(1)  # HELLO
                message = encode(Publish(None, "chat", "x" * 400))
                await raw.send_bytes(message, fragments=fragments)
                assert await raw.close_code() == 1009
        await trio.testing.wait_all_tasks_blocked()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_a_frame_level_protocol_error_gets_a_close_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        _, listener = await start_memory_server(nursery)
        raw = await open_raw(listener)
        # FIN + RSV1 (no extension was negotiated) + binary, masked, empty.
        await raw.stream.send_all(b"\xc2\x80\x00\x00\x00\x00")
        assert await raw.close_code() == 1002
        nursery.cancel_scope.cancel()


HEAD = (
    "GET / {version}\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: tickwire.v2\r\n\r\n"
)


@pytest.mark.parametrize(
    ("version", "key", "why"),
    [
        ("HTTP/1.0", "dGhlIHNhbXBsZSBub25jZQ==", b"needs HTTP/1.1"),
        ("HTTP/1.1", "abc", b"not base64"),
        ("HTTP/1.1", "c2hvcnQ=", b"must be 16 bytes"),
    ],
)
async def test_handshakes_rfc_6455_refuses_get_400(version: str, key: str, why: bytes) -> None:
    async with open_server(Hub(), "127.0.0.1", 0) as server:
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
            await stream.send_all(HEAD.format(version=version, key=key).encode())
            answer = b""
            while chunk := await stream.receive_some(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert why in answer


async def test_slow_handshakes_do_not_keep_clients_out_of_a_server_with_room() -> None:
    config = ServerConfig(max_connections=20, handshake_timeout=60)
    async with open_server(Hub(), "127.0.0.1", 0, config=config) as server:
        slow = []
        for _ in range(20):  # slowloris: half a request head each, never finished
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            slow.append(stream)
        await trio.testing.wait_all_tasks_blocked()
        assert server.admission.handshaking == 20
        async with trio.open_nursery() as nursery:
            accepted = []

            async def one() -> None:
                async with connect(server.port, offer=[MSGPACK_ZSTD]) as client:
                    accepted.append(await client.receive())

            for _ in range(20):
                nursery.start_soon(one)
        assert len(accepted) == 20
        for stream in slow:
            await stream.aclose()


# -- helpers for a compressing raw client -----------------------------------------------------

ZSTD_CLIENT = Session(Role.CLIENT, Negotiated.of(MSGPACK_ZSTD))


def raw_session_publish(event: Publish) -> bytes:
    message = ZSTD_CLIENT.send(event)
    assert isinstance(message, bytes)
    return message


def decode_zstd(message: bytes | str) -> Any:
    ZSTD_CLIENT.receive_message(message)
    (event,) = ZSTD_CLIENT.events_received()
    return event


async def open_raw_zstd(listener: Any) -> RawClient:
    raw = RawClient(await listener.connect())
    await raw.handshake([MSGPACK_ZSTD])
    decode_zstd((await raw.messages(1))[0])  # HELLO
    return raw
