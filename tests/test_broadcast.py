"""The hub: patterns, topic creation, encode once per variant, removal."""

from __future__ import annotations

import attrs
import pytest
import trio

from tickwire.broadcast import (
    MIN_KEYS,
    DuplicateKey,
    Hub,
    Topic,
    TopicConfig,
    pattern_matches,
    valid_pattern,
)
from tickwire.sansio.events import Outcome, Position
from tickwire.sansio.fanout import Overflow
from tickwire.sansio.negotiation import JSON, MSGPACK, MSGPACK_ZSTD, Negotiated
from tickwire.sansio.table import Changes


@attrs.define(eq=False)
class Recorder:
    variant: Negotiated = attrs.field(factory=lambda: Negotiated.of(MSGPACK))
    frames: list[bytes] = attrs.field(factory=list)
    added: list[tuple[str, int]] = attrs.field(factory=list)
    forbidden: set[str] = attrs.field(factory=set)

    def deliver_nowait(
        self,
        framed: bytes,
        *,
        topic_id: int = 0,
        first: int = 0,
        last: int = 0,
        overflow: Overflow | None = None,
        delta: Changes | None = None,
        optional: bool = False,
        published_at: float | None = None,
    ) -> bool:
        self.frames.append(framed)
        return False

    def may_receive(self, topic: Topic) -> bool:
        return topic.name not in self.forbidden

    def busy(self) -> bool:
        return False

    def has_room(self) -> bool:
        return True

    async def wait_for_room(self) -> None:
        await trio.lowlevel.checkpoint()

    def slow_consumer(self) -> None:
        raise AssertionError("never slow")

    def failed(self, exc: BaseException) -> None:
        raise AssertionError("never failed") from exc

    def topic_added(self, topic: Topic, request_id: int) -> None:
        self.added.append((topic.name, request_id))


@pytest.mark.parametrize(
    ("pattern", "ok"),
    [
        ("quotes.AAPL", True),
        ("quotes.*", True),
        ("*.*", True),
        ("a-b:c_d.9", True),
        ("", False),
        ("quotes.", False),
        ("quotes.**", False),
        ("quo tes", False),
        ("a" * 300, False),
    ],
)
def test_valid_patterns(pattern: str, ok: bool) -> None:
    assert valid_pattern(pattern) is ok


def test_pattern_matching_is_by_whole_segments() -> None:
    assert pattern_matches("quotes.*", "quotes.AAPL")
    assert not pattern_matches("quotes.*", "quotes.US.AAPL")
    assert not pattern_matches("quotes.*", "quotesX.AAPL")


def test_an_exact_subscription_reports_its_topic_once() -> None:
    hub, sub = Hub(), Recorder()
    (topic,) = hub.subscribe(sub, "news", 1)
    assert topic.name == "news"
    assert sub.added == []  # returned, not announced a second time


def test_a_pattern_learns_of_new_topics() -> None:
    hub, sub = Hub(), Recorder()
    assert hub.subscribe(sub, "quotes.*", 7) == []
    hub.publish_nowait("quotes.AAPL", 1)
    hub.publish_nowait("trades.AAPL", 1)
    assert sub.added == [("quotes.AAPL", 7)]
    assert len(sub.frames) == 1
    with pytest.raises(ValueError, match="already"):
        hub.subscribe(sub, "quotes.*", 8)


def test_one_encoding_per_variant_shared_by_all() -> None:
    hub = Hub()
    subs = [Recorder(Negotiated.of(v)) for _ in range(10) for v in (MSGPACK, MSGPACK_ZSTD, JSON)]
    for sub in subs:
        hub.subscribe(sub, "t", 1)
    hub.publish_nowait("t", {"text": "tick " * 100})
    frames = [sub.frames[0] for sub in subs]
    assert len({id(f) for f in frames}) == 3  # the very same bytes objects, three variants
    assert frames[0][4] == 0x00  # plain: the envelope, after a 4-byte frame header
    assert frames[1][4] == 0x01  # zstd: after a 4-byte frame header (126+ bytes)
    assert frames[2][0] == 0x81  # JSON: a text frame


def test_unsubscribe_and_remove() -> None:
    hub, sub = Hub(), Recorder()
    hub.subscribe(sub, "a.*", 1)
    hub.subscribe(sub, "a.b", 2)
    assert hub.unsubscribe(sub, "a.*")
    hub.publish_nowait("a.b", 1)  # still held by the exact pattern
    hub.publish_nowait("a.c", 1)
    assert len(sub.frames) == 1
    assert not hub.unsubscribe(sub, "a.*")
    hub.remove(sub)
    hub.publish_nowait("a.b", 2)
    assert len(sub.frames) == 1
    assert hub.subscriber_count() == 0
    with pytest.raises(ValueError, match="invalid topic name"):
        hub.publish_nowait("a.*", 1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_history_is_bounded_by_count_and_age() -> None:
    clock = FakeClock()
    hub = Hub(default_topic=TopicConfig(history_size=5, history_seconds=10), clock=clock)
    for i in range(8):
        clock.now = i
        hub.publish_nowait("t", i)
    topic = hub.topic("t")
    assert [e.offset for e in topic.history] == [4, 5, 6, 7, 8]
    clock.now = 15.5
    topic.trim(clock())
    assert [e.offset for e in topic.history] == [7, 8]  # stamped 6 and 7: within 10 s


def test_recovery_is_all_or_nothing() -> None:
    clock = FakeClock()
    hub = Hub(default_topic=TopicConfig(history_size=3), clock=clock)
    for i in range(10):
        hub.publish_nowait("t", i)
    topic = hub.topic("t")
    epoch = topic.epoch
    outcome, offset, replay = topic.recover(Position(epoch, 7), clock())
    assert (outcome, offset) == (Outcome.RECOVERED, 7)
    assert [e.payload for e in replay] == [7, 8, 9]  # offsets 8, 9, 10
    assert topic.recover(Position(epoch, 10), clock()) == (Outcome.RECOVERED, 10, [])
    # Offset 7 itself is gone: resuming after 6 would need it.
    assert topic.recover(Position(epoch, 6), clock()) == (Outcome.NOT_RECOVERED, 10, [])
    assert topic.recover(Position(epoch + 1, 9), clock()) == (Outcome.NOT_RECOVERED, 10, [])
    assert topic.recover(Position(epoch, 11), clock()) == (Outcome.NOT_RECOVERED, 10, [])


def test_configure_by_pattern_and_no_history() -> None:
    hub = Hub()
    hub.configure("chat.*", TopicConfig(history_size=0))
    hub.publish_nowait("chat.lobby", "hi")
    hub.publish_nowait("trades.X", "fill")
    assert not hub.topic("chat.lobby").history
    assert len(hub.topic("trades.X").history) == 1
    assert hub.topic_by_id(hub.topic("trades.X").topic_id) is hub.topic("trades.X")
    with pytest.raises(ValueError, match="invalid topic pattern"):
        hub.configure("a..b", TopicConfig())


def test_replayed_frames_are_encoded_once_per_variant() -> None:
    hub, live = Hub(), Recorder()
    hub.subscribe(live, "t", 1)
    hub.publish_nowait("t", {"x": 1})
    topic = hub.topic("t")
    (entry,) = topic.history
    assert hub.frames(topic, entry, live.variant) is live.frames[0]  # the live bytes, reused
    json_frame = hub.frames(topic, entry, Negotiated.of(JSON))
    assert hub.frames(topic, entry, Negotiated.of(JSON)) is json_frame


def test_an_idempotency_key_publishes_once() -> None:
    hub, sub = Hub(), Recorder()
    hub.subscribe(sub, "orders", 1)
    assert hub.publish_nowait("orders", {"qty": 1}, key="a") == 1
    assert hub.publish_nowait("orders", {"qty": 2}, key="b") == 2
    assert hub.publish_nowait("orders", {"qty": 1}, key="a") == 1  # the original offset
    assert len(sub.frames) == 2
    with pytest.raises(DuplicateKey, match="another payload"):
        hub.publish_nowait("orders", {"qty": 3}, key="a")
    assert hub.topic("orders").offset == 2


def test_idempotency_keys_are_bounded() -> None:
    hub = Hub(default_topic=TopicConfig(history_size=10))
    for i in range(MIN_KEYS + 5):
        hub.publish_nowait("orders", i, key=f"k{i}")
    keys = hub.topic("orders").keys
    assert len(keys) == MIN_KEYS
    assert "k0" not in keys
    assert f"k{MIN_KEYS + 4}" in keys


@attrs.define(eq=False)
class FailsWhenTold(Recorder):
    """A subscriber with a bug in what the hub tells it of a new topic."""

    failures: list[BaseException] = attrs.field(factory=list)

    def topic_added(self, topic: Topic, request_id: int) -> None:
        raise RuntimeError("injected bug")

    def failed(self, exc: BaseException) -> None:
        self.failures.append(exc)


def test_a_subscriber_that_fails_when_told_of_a_topic_is_dropped_alone() -> None:
    hub = Hub()
    bad, good = FailsWhenTold(), Recorder()
    hub.subscribe(bad, "t.*", 1)
    hub.subscribe(good, "t.*", 2)
    hub.publish_nowait("t.a", 1)  # creates the topic: both are told; the publisher goes on
    assert good.added == [("t.a", 2)]
    assert [str(e) for e in bad.failures] == ["injected bug"]
    assert hub.internal_errors == 1
    assert bad not in hub.topic("t.a").subscribers
    assert good in hub.topic("t.a").subscribers
    assert len(good.frames) == 1


async def test_publish_many_publishes_in_order_and_answers_each_message() -> None:
    from decimal import Decimal

    from tickwire.errors import InvalidValue
    from tickwire.sansio.table import Field, Schema

    hub = Hub()
    hub.table("quotes", Schema("symbol", [Field.fixed("bid", 2)]))
    answers = await hub.publish_many(
        [
            ("a", 1, "k1"),
            ("a", float("nan"), None),  # refused by the value gate: nothing published
            ("quotes", {"bid": Decimal("1.00")}, None),  # a table: refused
            ("b", 2, None),
            ("a", 1, "k1"),  # the same key again: the original offset
            ("a", 3, None),
        ]
    )
    assert answers[0] == 1
    assert isinstance(answers[1], InvalidValue)
    assert isinstance(answers[2], ValueError)
    assert "table topic" in str(answers[2])
    assert answers[3:] == [1, 1, 2]
    assert [e.payload for e in hub.topic("a").history] == [1, 3]
