"""The fuzz suite, briefly: hostile input against the sans-I/O core and the server's inbound
path, with a bystander that must see every message of its feed. The long run is
``python tests/fuzz.py --inputs 100000`` (a real ``tickwire serve`` over loopback)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pytest
import trio
import trio.testing
import wsproto.utilities
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.events import TextMessage

from tests.fuzzing import inputs
from tests.helpers import RawClient, decode, encode, open_raw, start_memory_server
from tickwire.broadcast import Hub, TopicConfig
from tickwire.config import ServerConfig
from tickwire.errors import InvalidValue, RemoteProtocolError
from tickwire.sansio import Batch, Data, Publish, Role, Session, Snapshot, Subscribe, TableView
from tickwire.sansio.negotiation import JSON, MSGPACK_ZSTD, Negotiated
from tickwire.schemas import EQUITY_QUOTE_SCHEMA
from tickwire.server import Server

CONFIG = ServerConfig(client_publish=["chat", "input.*"], max_fragments=8, shutdown_timeout=1)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_the_core_answers_hostile_input_with_protocol_errors_only(seed: int) -> None:
    """Whatever a client sends, decoding raises a RemoteProtocolError (a close code) or
    gives events; a published payload is then either accepted by the value gate, or
    refused with InvalidValue."""
    hub = Hub()
    sessions = {
        "binary": Session(Role.SERVER, Negotiated.of(MSGPACK_ZSTD)),
        "text": Session(Role.SERVER, Negotiated.of(JSON)),
    }
    codes = set()
    for _, (kind, data) in zip(range(200), inputs(seed), strict=False):
        if kind == "raw":
            continue
        session = sessions[kind]
        try:
            session.receive_message(data)
        except RemoteProtocolError as exc:
            codes.add(exc.close_code)
            continue
        for event in session.events_received():
            if isinstance(event, Publish):
                with contextlib.suppress(InvalidValue):
                    hub.check_payload(event.payload)
    assert codes <= {1002, 1003, 1007, 1009, 4002}


async def hostile_connection(listener: Any, batch: list[tuple[str, bytes | str]]) -> None:
    """One hostile client: a handshake, its inputs, then whatever the server answers, for a
    few (virtual) seconds."""
    raw = RawClient(await listener.connect())
    text = batch[0][0] == "text"
    with trio.move_on_after(5):
        await raw.handshake([JSON] if text else [MSGPACK_ZSTD])
        try:
            await raw.message(answer_pings=True)  # HELLO
            for kind, data in batch:
                if kind == "raw":
                    assert isinstance(data, bytes)
                    await raw.stream.send_all(data)
                elif isinstance(data, str):
                    await raw.stream.send_all(raw.ws.send(TextMessage(data)))
                else:
                    await raw.send_bytes(data)
            while True:
                await raw.message(answer_pings=True)
        except (
            ConnectionError,
            EOFError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            wsproto.utilities.LocalProtocolError,  # what a client may not send any more
        ):
            pass
    await raw.stream.aclose()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_hostile_clients_leave_the_server_and_a_bystander_untouched(
    seed: int, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery, CONFIG)
        hub = server.hub
        hub.configure("feed", TopicConfig(batch_window=0.01))
        hub.table("quotes", EQUITY_QUOTE_SCHEMA)
        bystander = await open_raw(listener)
        await bystander.send_bytes(encode(Subscribe(1, "feed")))
        await bystander.send_bytes(encode(Subscribe(2, "quotes")))
        seen: dict[str, Any] = {}
        nursery.start_soon(watch, bystander, server, seen)
        source = inputs(seed)
        published = 0
        for _ in range(40):
            batch: list[tuple[str, bytes | str]] = []
            for kind, data in source:
                if batch and (kind == "text") != (batch[0][0] == "text") and kind != "raw":
                    continue
                batch.append((kind, data))
                if len(batch) == 25:
                    break
            await hostile_connection(listener, batch)
            published += 1
            hub.publish_nowait("feed", published)
            hub.upsert("quotes", "AAPL", {"seq": published})
        with trio.fail_after(60):
            while len(seen.get("feed", ())) < published or seen.get("seq") != published:
                await trio.sleep(0.1)
        feed, quotes = seen["feed"], seen["seq"]
        assert feed == list(range(1, published + 1))  # every message, in order, no gap
        assert quotes == published
        assert hub.internal_errors == 0
        assert server.ready
        nursery.cancel_scope.cancel()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def watch(raw: RawClient, server: Server, seen: dict[str, Any]) -> None:
    """The bystander: reads all along (answering pings), checks that the feed's offsets
    have no gap, and keeps the table's rows."""
    feed: list[int] = seen.setdefault("feed", [])
    offsets: list[int] = []
    quotes = TableView(EQUITY_QUOTE_SCHEMA)
    quotes_id = server.hub.topic("quotes").topic_id
    while True:
        event = decode(await raw.message(answer_pings=True))
        if isinstance(event, Snapshot):
            quotes.apply_snapshot(event.offset, event.payload, more=event.more)
        elif isinstance(event, Data) and event.topic_id == quotes_id:
            quotes.apply_delta(event.offset, event.payload)
        elif isinstance(event, Data | Batch):
            payloads = [event.payload] if isinstance(event, Data) else list(event.payloads)
            first = event.offset if isinstance(event, Data) else event.first_offset
            offsets.extend(range(first, first + len(payloads)))
            feed.extend(payloads)
            assert offsets == list(range(1, len(offsets) + 1)), "a gap in the feed"
        seen["seq"] = quotes.rows.get("AAPL", {}).get("seq")
