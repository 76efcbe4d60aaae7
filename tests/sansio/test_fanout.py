"""The outbox: bounded, never blocks; drop-oldest with gaps, or overflow."""

from __future__ import annotations

import pytest

from tickwire.sansio.fanout import Offer, Outbox, Overflow, Taken

DROP = Overflow.DROP_OLDEST


def test_queues_within_its_limits() -> None:
    box = Outbox(max_bytes=100, max_items=3)
    assert box.offer(b"a" * 10) is Offer.QUEUED
    assert box.offer(b"b" * 10, topic_id=1, first=1, last=1, overflow=DROP) is Offer.QUEUED
    assert (len(box), box.queued_bytes, box.pending()) == (2, 20, True)
    assert box.take() == Taken([], [b"a" * 10, b"b" * 10], [])
    assert not box.pending()


def test_drop_oldest_keeps_control_messages_and_records_gaps() -> None:
    box = Outbox(max_bytes=1000, max_items=4)
    box.offer(b"control")
    for offset in range(1, 4):
        box.offer(bytes([offset]), topic_id=7, first=offset, last=offset, overflow=DROP)
    assert box.offer(b"\x04", topic_id=7, first=4, last=4, overflow=DROP) is Offer.DROPPED
    assert box.offer(b"\x05", topic_id=7, first=5, last=5, overflow=DROP) is Offer.DROPPED
    taken = box.take()
    gaps, frames = taken.gaps, taken.frames
    assert gaps == [(7, 1, 2)]  # the two oldest went; GAP goes out before the rest
    assert frames == [b"control", b"\x03", b"\x04", b"\x05"]
    assert box.dropped == 2


def test_drop_by_bytes_across_topics() -> None:
    box = Outbox(max_bytes=30, max_items=100)
    box.offer(b"x" * 10, topic_id=1, first=1, last=1, overflow=DROP)
    box.offer(b"y" * 10, topic_id=2, first=9, last=9, overflow=DROP)
    box.offer(b"z" * 10, topic_id=1, first=2, last=2, overflow=DROP)
    assert box.offer(b"w" * 15, topic_id=2, first=10, last=10, overflow=DROP) is Offer.DROPPED
    taken = box.take()
    gaps, frames = taken.gaps, taken.frames
    assert sorted(gaps) == [(1, 1, 1), (2, 9, 9)]
    assert frames == [b"z" * 10, b"w" * 15]


def test_a_disconnect_topic_overflows() -> None:
    box = Outbox(max_bytes=10, max_items=10)
    box.offer(b"x" * 8, topic_id=1, first=1, last=1, overflow=Overflow.DISCONNECT)
    assert box.offer(b"y" * 8, topic_id=1, first=2, last=2, overflow=Overflow.DISCONNECT) is (
        Offer.OVERFLOW
    )
    assert box.overflowed
    assert box.take() == Taken([], [], [])
    assert box.offer(b"z") is Offer.OVERFLOW


def test_control_messages_overflow_rather_than_drop() -> None:
    box = Outbox(max_bytes=10, max_items=10)
    box.offer(b"x" * 8)
    assert box.offer(b"y" * 8) is Offer.OVERFLOW


def test_a_droppable_offer_that_cannot_fit_is_itself_the_gap() -> None:
    box = Outbox(max_bytes=10, max_items=10)
    box.offer(b"c" * 8)  # control: stays
    assert box.offer(b"d" * 8, topic_id=3, first=4, last=6, overflow=DROP) is Offer.DROPPED
    assert box.take() == Taken([(3, 4, 6)], [b"c" * 8], [])
    assert box.dropped == 3


@pytest.mark.parametrize(
    "bad", [{"max_bytes": 0, "max_items": 1}, {"max_bytes": 1, "max_items": 0}]
)
def test_limits_must_be_positive(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        Outbox(**bad)


# -- conflation (table topics) -------------------------------------------------------------

CONFLATE = Overflow.CONFLATE


def delta(offset: int, **fields: int) -> tuple[bytes, dict[str, object]]:
    """A table delta frame for key "A" and its change set (field positions by name)."""
    changes = {"A": {int(name[1:]): v for name, v in fields.items()}}
    return bytes([offset]) * 10, {"frame_offset": offset, "changes": changes}


def offer_delta(box: Outbox, offset: int, **fields: int) -> Offer:
    frame, info = delta(offset, **fields)
    return box.offer(
        frame,
        topic_id=5,
        first=offset,
        last=offset,
        overflow=CONFLATE,
        delta=info["changes"],  # type: ignore[arg-type]
    )


def test_deltas_queue_as_frames_while_the_outbox_is_under_half_full() -> None:
    box = Outbox(max_bytes=100, max_items=100)
    assert offer_delta(box, 1, f0=1) is Offer.QUEUED
    assert offer_delta(box, 2, f0=2) is Offer.QUEUED
    taken = box.take()
    assert (len(taken.frames), taken.conflated) == (2, [])


def test_past_half_full_queued_deltas_of_the_topic_merge_into_one() -> None:
    box = Outbox(max_bytes=100, max_items=100)
    box.offer(b"c" * 10)  # a control message stays a frame
    for offset in range(1, 5):
        assert offer_delta(box, offset, f0=offset) is Offer.QUEUED
    assert offer_delta(box, 5, f1=50) is Offer.CONFLATED  # 60 + 10 > 50: conflate
    assert offer_delta(box, 6, f0=60) is Offer.CONFLATED  # the set exists: merge
    assert box.has_slot(5)
    assert box.queued_bytes == 10
    taken = box.take()
    assert taken.frames == [b"c" * 10]
    (merged,) = taken.conflated
    assert (merged.topic_id, merged.first, merged.last) == (5, 1, 6)
    assert merged.changes == {"A": {0: 60, 1: 50}}  # the latest of each field
    assert box.conflated == 5  # six deltas became one
    assert not box.has_slot(5)
    assert offer_delta(box, 7, f0=70) is Offer.QUEUED  # caught up: frames again


def test_a_full_outbox_conflates_before_it_overflows() -> None:
    box = Outbox(max_bytes=40, max_items=100)
    offer_delta(box, 1, f0=1)  # 10 bytes, under half
    assert box.offer(b"x" * 10) is Offer.QUEUED
    assert box.offer(b"y" * 15) is Offer.QUEUED
    # A control message that does not fit: the table delta makes room by conflating.
    assert box.offer(b"z" * 6) is Offer.QUEUED
    assert box.queued_bytes == 31
    assert box.has_slot(5)
    assert box.offer(b"w" * 20) is Offer.OVERFLOW  # nothing left to conflate


def test_a_rate_limited_subscription_is_released_once_per_interval() -> None:
    box = Outbox(max_bytes=100, max_items=100)
    box.hold(5, 1, 1, {"A": {0: 1}}, interval=0.25, now=10.0)
    assert box.next_due() == 10.0  # the first goes at once
    assert box.pending(10.0)
    assert not box.busy()  # held deltas never delay a direct write
    (first,) = box.take(10.0).conflated
    assert first.changes == {"A": {0: 1}}
    box.hold(5, 2, 2, {"A": {0: 2}}, interval=0.25, now=10.1)
    box.hold(5, 3, 3, {"A": {1: 3}, "B": None}, interval=0.25, now=10.2)
    assert box.next_due() == 10.25
    assert not box.pending(10.2)
    assert box.take(10.2).conflated == []
    (second,) = box.take(10.25).conflated
    assert (second.first, second.last) == (2, 3)
    assert second.changes == {"A": {0: 2, 1: 3}, "B": None}
    assert box.next_due() is None


def test_an_overflow_forgets_conflated_deltas_too() -> None:
    box = Outbox(max_bytes=10, max_items=10)
    box.hold(5, 1, 1, {"A": {0: 1}}, interval=1.0, now=0.0)
    box.offer(b"x" * 8)
    assert box.offer(b"y" * 8) is Offer.OVERFLOW
    assert box.take() == Taken([], [], [])
    box.hold(5, 2, 2, {"A": {0: 2}}, interval=1.0, now=0.0)
    assert box.next_due() is None


def test_a_bandwidth_budget_takes_frames_from_the_front() -> None:
    box = Outbox(max_bytes=1000, max_items=100)
    for i in range(5):
        box.offer(bytes([i]) * 10)
    box.hold(5, 1, 1, {"A": {0: 1}}, interval=1.0, now=0.0)
    first = box.take(0.0, max_bytes=25)
    assert first.frames == [b"\x00" * 10, b"\x01" * 10]
    assert first.conflated == []  # frames are still queued: the delta waits behind them
    assert box.take(0.0, max_bytes=1).frames == [b"\x02" * 10]  # at least one
    rest = box.take(0.0, max_bytes=100)
    assert (len(rest.frames), len(rest.conflated), box.queued_bytes) == (2, 1, 0)
