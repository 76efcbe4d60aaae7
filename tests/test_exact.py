"""The exact wire: every value a program publishes arrives exactly as published, through a
real server and client on 127.0.0.1, or is refused at the call, changing nothing.

With and without batch windows; the ready-made schemas; values off a field's grid; values no
receiver could decode; a failure inside the hub's own timer; tables larger than a message;
every update delivered; and a cancellation-safe client.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tickwire
from tickwire import (
    CRYPTO_QUOTE_SCHEMA,
    ENTITY_SCHEMA,
    EQUITY_QUOTE_SCHEMA,
    FX_QUOTE_SCHEMA,
    ClientConfig,
    Field,
    Hub,
    InvalidValue,
    Message,
    Reconnect,
    Schema,
    ServerConfig,
    TableChanged,
    TableReset,
    TopicConfig,
    ValueTooLarge,
    open_client,
)
from tickwire.client import Lost, Subscription

FAST = ClientConfig(reconnect=Reconnect(initial_delay=0.01, max_delay=0.05), heartbeat_interval=5)
SERVER = ServerConfig(shutdown_timeout=1)
WINDOWS = [None, 0.005]


@contextlib.asynccontextmanager
async def served(hub: Hub) -> AsyncIterator[tickwire.Client]:
    async with tickwire.open_server(hub, "127.0.0.1", 0, config=SERVER) as server:
        async with open_client(f"ws://127.0.0.1:{server.port}/", config=FAST) as client:
            yield client


async def table_after(subscription: Subscription, count: int) -> dict[Any, Any]:
    """The subscriber's rows once *count* rows have changed after its snapshot."""
    changed = 0
    while changed < count:
        update = await subscription.receive()
        assert not isinstance(update, Lost), update
        if isinstance(update, TableChanged):
            changed += len(update.changes)
    return dict(subscription.table())


# -- the values of the issue: what a user published, and what arrived ------------------------

CENTS = Schema("symbol", [Field.fixed("bid", 2)])
QUOTES = [  # (schema, row as published, the fields as the subscriber must see them)
    (FX_QUOTE_SCHEMA, {"bid": 1.23456, "ask": 1.23458}, {"bid": Decimal("1.23456")}),
    (CRYPTO_QUOTE_SCHEMA, {"bid": 0.00001234, "bid_size": 0.5}, {"bid": Decimal("0.00001234")}),
    (EQUITY_QUOTE_SCHEMA, {"bid": 0.004, "ask": -0.004}, {"ask": Decimal("-0.004")}),
    (EQUITY_QUOTE_SCHEMA, {"bid_size": 37, "ask_size": 150}, {"bid_size": 37, "ask_size": 150}),
    (EQUITY_QUOTE_SCHEMA, {"bid_size": 1000050, "seq": 9}, {"bid_size": 1000050, "seq": 9}),
    (CENTS, {"bid": 12345678901234567}, {"bid": Decimal(12345678901234567)}),
    (CRYPTO_QUOTE_SCHEMA, {"bid": 493275071.9425646}, {"bid": Decimal("493275071.9425646")}),
    (
        CRYPTO_QUOTE_SCHEMA,
        {"ask": Decimal("493275071.94256467")},
        {"ask": Decimal("493275071.94256467")},
    ),
    (CRYPTO_QUOTE_SCHEMA, {"bid_size": Decimal("0.00000001")}, {"bid_size": Decimal("1E-8")}),
]


@pytest.mark.parametrize("window", WINDOWS)
async def test_quotes_of_every_market_arrive_exactly(window: float | None) -> None:
    hub = Hub()
    hub.configure("*", TopicConfig(batch_window=window))
    for i, (schema, _, _) in enumerate(QUOTES):
        hub.table(f"q{i}", schema)
    with trio.fail_after(10):
        async with served(hub) as client:
            for i, (_, published, seen) in enumerate(QUOTES):
                async with client.subscribe(f"q{i}") as quotes:
                    assert isinstance(await quotes.receive(), TableReset)
                    hub.upsert(f"q{i}", "SYM", published)
                    row = (await table_after(quotes, 1))["SYM"]
                    for name, value in seen.items():
                        assert row[name] == value
                        assert type(row[name]) is type(value)
                    for name, value in published.items():
                        assert (
                            row[name] == Decimal(repr(value))
                            if isinstance(value, float)
                            else (row[name] == value)
                        )


@pytest.mark.parametrize(
    ("schema", "row", "message"),
    [
        (EQUITY_QUOTE_SCHEMA, {"bid": 1.234567}, "bid: 1.234567 has more than 4 decimal places"),
        (EQUITY_QUOTE_SCHEMA, {"bid_size": 0.5}, "bid_size: 0.5 is not a whole number"),
        (EQUITY_QUOTE_SCHEMA, {"bid": 0.1 + 0.2}, "0.30000000000000004"),
        (EQUITY_QUOTE_SCHEMA, {"seq": 2**64}, "seq: 18446744073709551616 is outside"),
        (EQUITY_QUOTE_SCHEMA, {"bid": 12345678901234567}, "out of range for 4 decimals"),
        (EQUITY_QUOTE_SCHEMA, {"bid": math.nan}, "bid: nan is not a finite number"),
        (EQUITY_QUOTE_SCHEMA, {"venue": "X"}, "no field 'venue'"),
        (FX_QUOTE_SCHEMA, {"bid": "1.2"}, "expected an int, a Decimal or a float"),
    ],
)
@pytest.mark.parametrize("window", WINDOWS)
async def test_a_refused_row_changes_nothing_and_the_table_goes_on(
    schema: Schema, row: dict[str, Any], message: str, window: float | None
) -> None:
    hub = Hub()
    hub.configure("quotes", TopicConfig(batch_window=window))
    topic = hub.table("quotes", schema)
    hub.upsert("quotes", "A", {"bid": Decimal("1.5")})
    hub.flush()  # its window's delta, before anyone subscribes
    with trio.fail_after(10):
        async with served(hub) as client, client.subscribe("quotes") as quotes:
            assert isinstance(await quotes.receive(), TableReset)
            offset, snapshot = topic.offset, hub.snapshot(topic, client_variant())
            with pytest.raises((InvalidValue, KeyError), match=message):
                # Several rows at once: the good one before the bad one is not applied either.
                hub.update("quotes", {"B": {"ask": Decimal("2")}, "A": row})
            assert (topic.offset, hub.snapshot(topic, client_variant())) == (offset, snapshot)
            assert "B" not in topic.table  # type: ignore[operator]
            hub.upsert("quotes", "C", {"ask": 3})
            rows = await table_after(quotes, 1)
            assert set(rows) == {"A", "C"}
            assert rows["C"]["ask"] == 3


def client_variant() -> tickwire.sansio.Negotiated:
    return tickwire.sansio.Negotiated.of(tickwire.sansio.negotiation.MSGPACK_ZSTD)


@pytest.mark.parametrize("window", WINDOWS)
async def test_stream_values_arrive_as_published_or_are_refused_at_the_call(
    window: float | None, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub()
    hub.configure("s", TopicConfig(batch_window=window))
    good = [
        2**64 - 1,
        -(2**63),
        0.1,
        1e308,
        "\u00e9\U0001f600",
        b"\x00\xff",
        {"nested": [[[[{"deep": True}]]]]},
        {1: "int key", b"b": "bytes key"},
        nested(30),
    ]
    bad = [2**64, -(2**63) - 1, Decimal("1.1"), {1, 2}, math.nan, {"x": math.inf}, "\ud800"]
    with trio.fail_after(10):
        async with served(hub) as client, client.subscribe("s") as stream:
            for value in bad:
                with pytest.raises(InvalidValue):
                    hub.publish_nowait("s", value)
            with pytest.raises(ValueTooLarge):
                hub.publish_nowait("s", nested(40))
            assert hub.topic("s").offset == 0  # nothing was used up
            for value in good:
                hub.publish_nowait("s", value)
            got = [await stream.receive() for _ in good]
            assert got == [Message("s", i + 1, value) for i, value in enumerate(good)]
    assert hub.internal_errors == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prices=st.lists(
        st.decimals(allow_nan=False, allow_infinity=False, places=8, min_value=0, max_value=10**9),
        min_size=1,
        max_size=20,
    ),
    sizes=st.lists(st.integers(min_value=0, max_value=10**10), min_size=1, max_size=20),
    window=st.sampled_from(WINDOWS),
)
async def test_any_decimal_at_the_declared_places_arrives_exactly(
    prices: list[Decimal], sizes: list[int], window: float | None
) -> None:
    hub = Hub()
    hub.configure("quotes", TopicConfig(batch_window=window))
    hub.table("quotes", CRYPTO_QUOTE_SCHEMA)
    rows = {
        f"P{i}": {"bid": price, "bid_size": sizes[i % len(sizes)]} for i, price in enumerate(prices)
    }
    with trio.fail_after(20):
        async with served(hub) as client, client.subscribe("quotes") as quotes:
            assert isinstance(await quotes.receive(), TableReset)
            hub.update("quotes", rows)
            received = await table_after(quotes, len(rows))
    for key, row in rows.items():
        assert received[key]["bid"] == row["bid"]
        assert received[key]["bid_size"] == row["bid_size"]


@settings(max_examples=15, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=30,
    )
)
async def test_any_payload_the_gate_takes_arrives_equal(payload: Any) -> None:
    hub = Hub()
    with trio.fail_after(20):
        async with served(hub) as client, client.subscribe("s") as stream:
            hub.publish_nowait("s", payload)
            assert await stream.receive() == Message("s", 1, payload)


# -- what real feeds carry ----------------------------------------------------------------------


async def test_real_feeds_extra_fields_and_kinds() -> None:
    hub = Hub()
    hub.table("quotes", EQUITY_QUOTE_SCHEMA)
    hub.table("world", ENTITY_SCHEMA)
    with trio.fail_after(10):
        async with served(hub) as client:
            async with client.subscribe("world") as world:
                assert isinstance(await world.receive(), TableReset)
                hub.upsert("world", 7, {"kind": "vehicle", "x": 10.0005, "state": "parked"})
                row = (await table_after(world, 1))[7]
                assert (row["kind"], row["state"], row["x"]) == ("vehicle", "parked", 10.0)
            async with client.subscribe("quotes") as quotes:
                assert isinstance(await quotes.receive(), TableReset)
                hub.upsert("quotes", "AAPL", {"bid": Decimal("189.12"), "seq": 1_000_001})
                assert (await table_after(quotes, 1))["AAPL"]["seq"] == 1_000_001


# -- nothing accepted can stop the server -------------------------------------------------------


async def test_a_failure_in_the_hubs_timer_closes_at_most_that_topic(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub()
    hub.configure("*", TopicConfig(batch_window=0.005))
    real = Hub._batch_frame

    def broken(self: Hub, t: Any, entries: Any, variant: Any) -> bytes:
        if t.name == "bad":
            raise RuntimeError("an injected bug")
        return real(self, t, entries, variant)

    monkeypatch.setattr(Hub, "_batch_frame", broken)
    with trio.fail_after(10):
        async with served(hub) as client:
            async with client.subscribe("bad") as bad, client.subscribe("good") as good:
                for n in range(3):
                    hub.publish_nowait("bad", n)
                    hub.publish_nowait("good", n)
                lost = await bad.receive()
                assert lost == Lost("bad", 1, 3, "dropped by the server")
                got = [await good.receive() for _ in range(3)]
                assert [m.payload for m in got] == [0, 1, 2]  # type: ignore[union-attr]
                hub.publish_nowait("good", 3)  # the timer still runs
                assert (await good.receive()) == Message("good", 4, 3)
    assert hub.internal_errors == 1
    assert any("an injected bug" in str(r.exc_info) for r in caplog.records)


async def test_a_table_larger_than_a_message_arrives_in_parts() -> None:
    hub = Hub(limits=tickwire.Limits(max_message_bytes=64 * 1024))  # 8 KiB of rows a message
    topic = hub.table("big", Schema("id", [Field.string("name")], key_type=tickwire.FieldType.INT))
    hub.update("big", {i: {"name": f"entity number {i}"} for i in range(2000)})
    assert len(hub.snapshot(topic, client_variant())) > 3
    with trio.fail_after(10):
        async with served(hub) as client, client.subscribe("big") as big:
            reset = await big.receive()
            assert isinstance(reset, TableReset)
            assert len(reset.rows) == 2000
            assert reset.rows[1999]["name"] == "entity number 1999"


async def test_every_update_is_delivered_when_the_table_does_not_merge() -> None:
    hub = Hub()
    hub.configure("quotes", TopicConfig.every_update(batch_window=0.005))
    topic = hub.table("quotes", EQUITY_QUOTE_SCHEMA)
    with trio.fail_after(10):
        async with served(hub) as client, client.subscribe("quotes") as quotes:
            assert isinstance(await quotes.receive(), TableReset)
            for n in range(1, 51):
                hub.upsert("quotes", "AAPL", {"bid": Decimal(n), "seq": n})
            # The client's view applies every delta (the application reading it later sees
            # the changes it has not read yet merged, as for any table).
            while client.statistics().updates_received < 50:
                await quotes.receive()
            assert quotes.table()["AAPL"]["seq"] == 50
    assert topic.offset == 50  # fifty deltas, each its own offset
    assert len(topic.history) == 50


# -- a cancellation-safe client ----------------------------------------------------------------


async def test_receive_cancelled_never_loses_an_update(
    autojump_clock: trio.testing.MockClock,
) -> None:
    subscription = Subscription(
        None,  # type: ignore[arg-type]
        "fills",
        {},
        max_buffered=100,
        on_overflow="lose",
    )
    got: list[Any] = []

    async def reader(scope_box: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            got.append(await subscription.receive())

    # Cancelled while waiting, and the update arrives in the same scheduling round: either
    # it is returned, or it is still there for the next receive.
    for n in range(20):
        box: list[trio.CancelScope] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, box)
            await trio.testing.wait_all_tasks_blocked()
            subscription._push(Message("fills", n, n))
            if n % 2:
                box[0].cancel()
            else:
                await trio.lowlevel.checkpoint()
                box[0].cancel()
        if len(got) < n + 1:
            got.append(subscription.receive_nowait())
    assert got == [Message("fills", n, n) for n in range(20)]
    # Cancelled before it starts: nothing is taken.
    subscription._push(Message("fills", 20, 20))
    with trio.CancelScope() as scope:
        scope.cancel()
        await subscription.receive()
    assert subscription.receive_nowait() == Message("fills", 20, 20)
    # Inside move_on_after, as the issue found it.
    subscription._push(Message("fills", 21, 21))
    with trio.move_on_after(0):
        await subscription.receive()
    assert subscription.receive_nowait() == Message("fills", 21, 21)
