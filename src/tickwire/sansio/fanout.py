"""A subscriber's bounded outbox and what happens when it is full (docs/broadcast.md).

Imports: attrs, enum, collections.

The core decides, the trio layer waits: :meth:`Outbox.offer` never blocks; it queues a frame,
drops the oldest droppable frames to make room (recording the offsets lost as gaps, which
the writer announces with GAP before anything still queued), or says the subscriber
overflowed. :meth:`Outbox.take` hands the writer everything queued at once.

Why the gaps come first: frames leave in order and drops take the oldest first, so the
offsets dropped of one topic always precede every frame of that topic still queued.
"""

from __future__ import annotations

import collections
import enum

import attrs
from attrs.validators import ge, instance_of

__all__ = ["Offer", "Outbox", "Overflow"]


class Overflow(enum.Enum):
    """A topic's policy when a subscriber's outbox is full."""

    DISCONNECT = "disconnect"  # close with 4000; the client resumes from history
    DROP_OLDEST = "drop_oldest"  # drop the oldest queued messages, announce a GAP


class Offer(enum.Enum):
    """What :meth:`Outbox.offer` did."""

    QUEUED = "queued"
    DROPPED = "dropped"  # queued, after dropping older messages; or the offer itself dropped
    OVERFLOW = "overflow"  # the subscriber must go (4000)


@attrs.define(eq=False)
class _Item:
    frame: bytes
    topic_id: int
    first: int
    last: int
    droppable: bool


@attrs.define(eq=False, kw_only=True)
class Outbox:
    """Frames waiting for one connection's writer, bounded in bytes and in messages."""

    max_bytes: int = attrs.field(validator=[instance_of(int), ge(1)])
    max_items: int = attrs.field(validator=[instance_of(int), ge(1)])
    _items: collections.deque[_Item] = attrs.field(init=False, factory=collections.deque)
    _bytes: int = attrs.field(init=False, default=0)
    _gaps: dict[int, list[int]] = attrs.field(init=False, factory=dict)
    overflowed: bool = attrs.field(init=False, default=False)
    dropped: int = attrs.field(init=False, default=0)
    peak_bytes: int = attrs.field(init=False, default=0)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def queued_bytes(self) -> int:
        """Bytes queued."""
        return self._bytes

    def pending(self) -> bool:
        """Whether the writer has anything to do: frames or gaps."""
        return bool(self._items or self._gaps)

    def offer(
        self,
        frame: bytes,
        *,
        topic_id: int = 0,
        first: int = 0,
        last: int = 0,
        overflow: Overflow | None = None,
    ) -> Offer:
        """Queue *frame* (carrying offsets *first*-*last* of *topic_id*, if data).

        *overflow* None marks a control message: never dropped, and over the limits it makes
        the subscriber overflow.
        """
        if self.overflowed:
            return Offer.OVERFLOW
        size = len(frame)
        droppable = overflow is Overflow.DROP_OLDEST
        verdict = Offer.QUEUED
        if self._bytes + size > self.max_bytes or len(self._items) >= self.max_items:
            if not droppable:
                return self._overflow()
            verdict = Offer.DROPPED
            if not self._make_room(size):
                self._gap(topic_id, first, last)
                return Offer.DROPPED
        self._items.append(_Item(frame, topic_id, first, last, droppable))
        self._bytes += size
        self.peak_bytes = max(self.peak_bytes, self._bytes)
        return verdict

    def _overflow(self) -> Offer:
        self.overflowed = True
        self._items.clear()
        self._gaps.clear()
        self._bytes = 0
        return Offer.OVERFLOW

    def _make_room(self, size: int) -> bool:
        """Drop the oldest droppable items until *size* more bytes and one more item fit."""
        if size > self.max_bytes:
            return False
        kept: collections.deque[_Item] = collections.deque()
        items = self._items
        while items and (
            self._bytes + size > self.max_bytes or len(items) + len(kept) >= self.max_items
        ):
            item = items.popleft()
            if item.droppable:
                self._bytes -= len(item.frame)
                self._gap(item.topic_id, item.first, item.last)
            else:
                kept.append(item)
        kept.extend(items)
        self._items = kept
        return self._bytes + size <= self.max_bytes and len(kept) < self.max_items

    def _gap(self, topic_id: int, first: int, last: int) -> None:
        self.dropped += last - first + 1
        gap = self._gaps.get(topic_id)
        if gap is None:
            self._gaps[topic_id] = [first, last]
        else:
            gap[0], gap[1] = min(gap[0], first), max(gap[1], last)

    def take(self) -> tuple[list[tuple[int, int, int]], list[bytes]]:
        """Everything for the writer: the gaps to announce first, then the frames."""
        gaps = [(topic_id, first, last) for topic_id, (first, last) in self._gaps.items()]
        frames = [item.frame for item in self._items]
        self._gaps.clear()
        self._items.clear()
        self._bytes = 0
        return gaps, frames
