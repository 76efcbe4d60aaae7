"""The outbox: bounded, never blocks; drop-oldest with gaps, or overflow."""

from __future__ import annotations

import pytest

from tickwire.sansio.fanout import Offer, Outbox, Overflow

DROP = Overflow.DROP_OLDEST


def test_queues_within_its_limits() -> None:
    box = Outbox(max_bytes=100, max_items=3)
    assert box.offer(b"a" * 10) is Offer.QUEUED
    assert box.offer(b"b" * 10, topic_id=1, first=1, last=1, overflow=DROP) is Offer.QUEUED
    assert (len(box), box.queued_bytes, box.pending()) == (2, 20, True)
    assert box.take() == ([], [b"a" * 10, b"b" * 10])
    assert not box.pending()


def test_drop_oldest_keeps_control_messages_and_records_gaps() -> None:
    box = Outbox(max_bytes=1000, max_items=4)
    box.offer(b"control")
    for offset in range(1, 4):
        box.offer(bytes([offset]), topic_id=7, first=offset, last=offset, overflow=DROP)
    assert box.offer(b"\x04", topic_id=7, first=4, last=4, overflow=DROP) is Offer.DROPPED
    assert box.offer(b"\x05", topic_id=7, first=5, last=5, overflow=DROP) is Offer.DROPPED
    gaps, frames = box.take()
    assert gaps == [(7, 1, 2)]  # the two oldest went; GAP goes out before the rest
    assert frames == [b"control", b"\x03", b"\x04", b"\x05"]
    assert box.dropped == 2


def test_drop_by_bytes_across_topics() -> None:
    box = Outbox(max_bytes=30, max_items=100)
    box.offer(b"x" * 10, topic_id=1, first=1, last=1, overflow=DROP)
    box.offer(b"y" * 10, topic_id=2, first=9, last=9, overflow=DROP)
    box.offer(b"z" * 10, topic_id=1, first=2, last=2, overflow=DROP)
    assert box.offer(b"w" * 15, topic_id=2, first=10, last=10, overflow=DROP) is Offer.DROPPED
    gaps, frames = box.take()
    assert sorted(gaps) == [(1, 1, 1), (2, 9, 9)]
    assert frames == [b"z" * 10, b"w" * 15]


def test_a_disconnect_topic_overflows() -> None:
    box = Outbox(max_bytes=10, max_items=10)
    box.offer(b"x" * 8, topic_id=1, first=1, last=1, overflow=Overflow.DISCONNECT)
    assert box.offer(b"y" * 8, topic_id=1, first=2, last=2, overflow=Overflow.DISCONNECT) is (
        Offer.OVERFLOW
    )
    assert box.overflowed
    assert box.take() == ([], [])
    assert box.offer(b"z") is Offer.OVERFLOW


def test_control_messages_overflow_rather_than_drop() -> None:
    box = Outbox(max_bytes=10, max_items=10)
    box.offer(b"x" * 8)
    assert box.offer(b"y" * 8) is Offer.OVERFLOW


def test_a_droppable_offer_that_cannot_fit_is_itself_the_gap() -> None:
    box = Outbox(max_bytes=10, max_items=10)
    box.offer(b"c" * 8)  # control: stays
    assert box.offer(b"d" * 8, topic_id=3, first=4, last=6, overflow=DROP) is Offer.DROPPED
    assert box.take() == ([(3, 4, 6)], [b"c" * 8])
    assert box.dropped == 3


@pytest.mark.parametrize(
    "bad", [{"max_bytes": 0, "max_items": 1}, {"max_bytes": 1, "max_items": 0}]
)
def test_limits_must_be_positive(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        Outbox(**bad)
