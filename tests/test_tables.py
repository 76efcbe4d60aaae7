"""Table topics through the server, over memory streams on the autojump clock (§9)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import trio
import trio.testing

from tests.helpers import RawClient, decode, encode, open_raw, start_memory_server
from tickwire.broadcast import Hub, TopicConfig
from tickwire.config import ServerConfig
from tickwire.sansio import (
    Ack,
    Data,
    Error,
    Outcome,
    Position,
    Publish,
    Resync,
    Snapshot,
    Subscribe,
    Subscribed,
)
from tickwire.sansio.fanout import Overflow
from tickwire.sansio.negotiation import MSGPACK, Negotiated
from tickwire.sansio.table import Field, FieldType, Schema, TableView

QUOTES = Schema(
    "symbol",
    [Field.fixed("bid", 2), Field.fixed("ask", 2), Field.fixed("size", -2), Field.integer("n")],
)


class Viewer:
    """A raw client that keeps a TableView per table topic it hears of."""

    def __init__(self, raw: RawClient) -> None:
        self.raw = raw
        self.views: dict[int, TableView] = {}
        self.received: list[Any] = []

    async def next(self) -> Any:
        event = decode((await self.raw.messages(1))[0])
        self.received.append(event)
        if isinstance(event, Subscribed) and event.info is not None:
            self.views[event.topic_id] = TableView(Schema.from_info(event.info))
        elif isinstance(event, Snapshot):
            self.views[event.topic_id].apply_snapshot(event.offset, event.payload)
        elif isinstance(event, Data) and event.topic_id in self.views:
            self.views[event.topic_id].apply_delta(event.offset, event.payload)
        return event

    async def until(self, kind: type, **match: Any) -> Any:
        while True:
            event = await self.next()
            if isinstance(event, kind) and all(getattr(event, k) == v for k, v in match.items()):
                return event


def rows(hub: Hub, name: str) -> dict[Any, Any]:
    table = hub.topic(name).table
    assert table is not None
    return {row["symbol"]: row for row in table.rows()}


async def test_a_subscriber_gets_the_schema_a_snapshot_then_deltas(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery)
        hub = server.hub
        topic = hub.table("quotes", QUOTES)
        hub.upsert("quotes", "AAPL", {"bid": 189.12, "ask": 189.13, "size": 300})
        hub.upsert("quotes", "MSFT", {"bid": 420.5, "ask": 420.51})
        viewer = Viewer(await open_raw(listener))
        await viewer.raw.send_bytes(encode(Subscribe(1, "quotes")))
        subscribed = await viewer.next()
        assert subscribed == Subscribed(
            1, topic.topic_id, "quotes", topic.epoch, 2, Outcome.NEW, QUOTES.info()
        )
        snapshot = await viewer.next()
        assert isinstance(snapshot, Snapshot)
        assert snapshot.offset == 2
        assert await viewer.next() == Ack(1)
        view = viewer.views[topic.topic_id]
        assert view.rows == rows(hub, "quotes")
        assert view.rows["AAPL"] == {
            "symbol": "AAPL",
            "bid": Decimal("189.12"),
            "ask": Decimal("189.13"),
            "size": 300,
            "n": None,
        }
        assert hub.upsert("quotes", "AAPL", {"ask": 189.14}) == 3
        delta = await viewer.next()
        assert delta == Data(topic.topic_id, 3, ["AAPL", 0b0010, 18914])  # only what changed
        hub.delete("quotes", "MSFT")
        await viewer.until(Data, offset=4)
        assert view.rows == rows(hub, "quotes")
        assert list(view.rows) == ["AAPL"]
        nursery.cancel_scope.cancel()


async def test_a_batch_window_merges_each_row_and_a_late_joiner_converges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery)
        hub = server.hub
        hub.configure("quotes", TopicConfig(batch_window=0.010))
        topic = hub.table("quotes", QUOTES)
        early = Viewer(await open_raw(listener))
        await early.raw.send_bytes(encode(Subscribe(1, "quotes")))
        await early.until(Ack)
        for n in range(10):
            assert hub.upsert("quotes", "AAPL", {"bid": 100 + n, "n": n}) == 1
        late = Viewer(await open_raw(listener))  # joins inside the window
        await late.raw.send_bytes(encode(Subscribe(1, "quotes")))
        await late.until(Ack)
        hub.upsert("quotes", "AAPL", {"ask": 200})
        hub.upsert("quotes", "IBM", {"bid": 1})
        for viewer in (early, late):
            delta = await viewer.until(Data)
            assert delta.offset == 1  # the whole window is one delta
            assert viewer.views[topic.topic_id].rows == rows(hub, "quotes")
        assert early.received[-1].payload == [
            "AAPL",
            0b1111,
            10900,
            20000,
            None,
            9,
            "IBM",
            0b1111,
            100,
            None,
            None,
            None,
        ]
        nursery.cancel_scope.cancel()


async def test_table_recovery_replays_deltas_or_sends_a_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery)
        hub = server.hub
        hub.configure("quotes", TopicConfig(history_size=3))
        topic = hub.table("quotes", QUOTES)
        for n in range(1, 6):
            hub.upsert("quotes", f"S{n}", {"n": n})  # offsets 1-5; history keeps 3-5
        recovering = Viewer(await open_raw(listener))
        await recovering.raw.send_bytes(encode(Subscribe(1, "quotes", Position(topic.epoch, 3))))
        subscribed = await recovering.next()
        assert (subscribed.outcome, subscribed.offset) == (Outcome.RECOVERED, 3)
        replay = [await recovering.next() for _ in range(2)]
        assert [d.offset for d in replay] == [4, 5]
        assert [d.payload[0] for d in replay] == ["S4", "S5"]
        assert await recovering.next() == Ack(1)

        too_old = Viewer(await open_raw(listener))
        await too_old.raw.send_bytes(encode(Subscribe(1, "quotes", Position(topic.epoch, 1))))
        subscribed = await too_old.next()
        assert (subscribed.outcome, subscribed.offset) == (Outcome.NOT_RECOVERED, 5)
        snapshot = await too_old.next()
        assert isinstance(snapshot, Snapshot)
        assert too_old.views[topic.topic_id].rows == rows(hub, "quotes")

        # RESYNC without an offset: the current state, as a snapshot.
        await too_old.raw.send_bytes(encode(Resync(2, topic.topic_id, None)))
        again = await too_old.until(Subscribed, request_id=2)
        assert again.outcome is Outcome.NOT_RECOVERED
        assert isinstance(await too_old.next(), Snapshot)
        nursery.cancel_scope.cancel()


async def test_a_slow_subscriber_gets_conflated_deltas_and_the_right_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ServerConfig(outbox_max_messages=20, send_timeout=600)
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery, config, lockstep=True)
        hub = server.hub
        hub.configure("quotes", TopicConfig(overflow=Overflow.CONFLATE))
        topic = hub.table("quotes", QUOTES)
        slow = Viewer(await open_raw(listener))
        await slow.raw.send_bytes(encode(Subscribe(1, "quotes")))
        await slow.until(Ack)
        for n in range(1000):  # the client reads nothing meanwhile
            hub.upsert("quotes", f"S{n % 7}", {"bid": n, "n": n})
        (connection,) = server.connections
        assert connection.outbox.conflated > 900
        assert len(connection.outbox) <= 10  # half the outbox, never more
        while slow.views[topic.topic_id].offset < 1000:
            await slow.next()
        deltas = [e for e in slow.received if isinstance(e, Data)]
        assert len(deltas) < 30
        assert [d.offset for d in deltas] == sorted(d.offset for d in deltas)
        assert slow.views[topic.topic_id].rows == rows(hub, "quotes")
        assert len(server.connections) == 1  # conflated, never disconnected
        nursery.cancel_scope.cancel()


async def test_a_subscription_may_choose_conflation_and_a_maximum_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery)
        hub = server.hub
        topic = hub.table("quotes", QUOTES)
        mobile = Viewer(await open_raw(listener))
        await mobile.raw.send_bytes(encode(Subscribe(1, "quotes", None, {"max_rate": 4})))
        await mobile.until(Ack)
        full = Viewer(await open_raw(listener))
        await full.raw.send_bytes(encode(Subscribe(1, "quotes")))
        await full.until(Ack)
        begun = trio.current_time()
        for n in range(1, 101):  # 100 updates over one second
            hub.upsert("quotes", "AAPL", {"n": n})
            await trio.sleep(0.01)
        while mobile.views[topic.topic_id].offset < 100:
            await mobile.next()
        assert trio.current_time() - begun <= 1.3  # the last one within an interval
        deltas = [e for e in mobile.received if isinstance(e, Data)]
        assert 4 <= len(deltas) <= 6  # at most 4 a second, the first at once
        assert mobile.views[topic.topic_id].rows == rows(hub, "quotes")
        while full.views[topic.topic_id].offset < 100:
            await full.next()
        assert len([e for e in full.received if isinstance(e, Data)]) == 100
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"policy": "sometimes"}, "policy must be one of"),
        ({"policy": 1}, "policy must be one of"),
        ({"max_rate": 0}, "max_rate"),
        ({"max_rate": "4"}, "max_rate"),
        ({"max_rate": 1e9}, "max_rate"),
        ({"max_rte": 4}, "unknown options: max_rte"),
    ],
)
async def test_bad_subscription_options_get_400(
    autojump_clock: trio.testing.MockClock, options: dict[str, Any], message: str
) -> None:
    async with trio.open_nursery() as nursery:
        _, listener = await start_memory_server(nursery)
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Subscribe(1, "quotes", None, options)))
        error = decode((await raw.messages(1))[0])
        assert isinstance(error, Error)
        assert (error.request_id, error.code) == (1, 400)
        assert message in error.text
        nursery.cancel_scope.cancel()


async def test_a_rate_limit_on_a_stream_topic_is_refused_and_clients_cannot_write_tables(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery, ServerConfig(client_publish=["*"]))
        server.hub.publish_nowait("trades", 1)
        server.hub.table("quotes", QUOTES)
        raw = await open_raw(listener)
        await raw.send_bytes(encode(Subscribe(1, "trades", None, {"max_rate": 4})))
        error = decode((await raw.messages(1))[0])
        assert (error.code, error.text) == (
            400,
            "max_rate applies to table topics; this is a stream",
        )
        await raw.send_bytes(encode(Publish(2, "quotes", {"symbol": "X"})))
        error = decode((await raw.messages(1))[0])
        assert (error.request_id, error.code) == (2, 400)
        assert "table topic" in error.text
        nursery.cancel_scope.cancel()


async def test_keyframes_resend_the_table_to_subscribers_that_keep_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery)
        hub = server.hub
        hub.configure("quotes", TopicConfig(keyframe_interval=5))
        topic = hub.table("quotes", QUOTES)
        viewer = Viewer(await open_raw(listener))
        await viewer.raw.send_bytes(encode(Subscribe(1, "quotes")))
        await viewer.until(Ack)
        begun = trio.current_time()
        hub.upsert("quotes", "AAPL", {"n": 1})
        await viewer.until(Data)
        keyframe = await viewer.until(Snapshot)
        assert keyframe.offset == 1
        assert trio.current_time() - begun == pytest.approx(5, abs=0.1)
        # Nothing changed since: no keyframe in the next interval.
        with trio.move_on_after(12):
            await viewer.until(Snapshot)
        assert topic.keyframe_offset == 1
        nursery.cancel_scope.cancel()


async def test_a_table_declared_after_a_subscription_is_announced_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery)
        viewer = Viewer(await open_raw(listener))
        await viewer.raw.send_bytes(encode(Subscribe(1, "quotes")))
        first = await viewer.next()
        assert first.info is None  # a stream, for now
        await viewer.until(Ack)
        topic = server.hub.table("quotes", QUOTES)
        again = await viewer.until(Subscribed)
        assert (again.request_id, again.topic_id, again.info) == (1, topic.topic_id, QUOTES.info())
        assert isinstance(await viewer.next(), Snapshot)
        server.hub.upsert("quotes", "A", {"n": 1})
        await viewer.until(Data)
        assert viewer.views[topic.topic_id].rows == rows(server.hub, "quotes")
        nursery.cancel_scope.cancel()


def test_the_hub_refuses_to_mix_streams_and_tables() -> None:
    hub = Hub()
    hub.publish_nowait("trades", 1)
    with pytest.raises(ValueError, match="stream topic with messages"):
        hub.table("trades", QUOTES)
    hub.table("quotes", QUOTES)
    assert hub.table("quotes", QUOTES) is hub.topic("quotes")
    with pytest.raises(ValueError, match="another schema"):
        hub.table("quotes", Schema("id", [], key_type=FieldType.INT))
    with pytest.raises(ValueError, match="is a table topic"):
        hub.publish_nowait("quotes", 1)
    with pytest.raises(KeyError, match="no table topic 'trades'"):
        hub.upsert("trades", "A", {})
    with pytest.raises(ValueError, match="not a table topic"):
        hub.snapshot(hub.topic("trades"), Negotiated.of(MSGPACK))
    assert hub.update("quotes", {"A": {"n": 1}, "B": {"n": 2}}, deletes=["A"]) == 1
    assert rows(hub, "quotes").keys() == {"B"}
    assert hub.update("quotes", {"B": {"n": 2}}) == 1  # no change, no delta
