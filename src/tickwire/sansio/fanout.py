"""A subscriber's bounded outbox and what happens when it is full (docs/broadcast.md).

Imports: attrs, enum, collections, tickwire.sansio.table (to merge table deltas).

The core decides, the trio layer waits: :meth:`Outbox.offer` never blocks; it queues a frame,
merges a table delta into the topic's pending conflated delta, drops the oldest droppable
frames to make room (recording the offsets lost as gaps, which the writer announces with GAP
before anything still queued), or says the subscriber overflowed. :meth:`Outbox.take` hands
the writer everything due at once.

Why the gaps come first: frames leave in order and drops take the oldest first, so the
offsets dropped of one topic always precede every frame of that topic still queued.

Conflation (table topics, :attr:`Overflow.CONFLATE`): once the outbox is more than half full,
a table delta is not queued as a frame; it is merged, together with the topic's frames
already queued, into one pending change set per topic (:class:`Conflated`), which the writer
encodes for this subscriber alone when it gets to it. Every later delta of that topic merges
into the same set until it is taken, so a slow subscriber receives one delta carrying the
latest value of every changed field, never a stale row, and its memory is bounded by the
table's size rather than by the publish rate. A rate-limited subscription (*max_rate*) holds
its topic's deltas in such a set all the time and releases it at most once per interval.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Mapping
from typing import Any

import attrs
from attrs.validators import ge, instance_of

from tickwire.sansio.table import Key, merge_into

__all__ = ["Conflated", "Offer", "Outbox", "Overflow", "Taken"]


class Overflow(enum.Enum):
    """A topic's (or a subscription's) policy when a subscriber's outbox is full."""

    DISCONNECT = "disconnect"  # close with 4000; the client resumes from history
    DROP_OLDEST = "drop_oldest"  # drop the oldest queued messages, announce a GAP
    CONFLATE = "conflate"  # tables: merge queued deltas into one per topic, latest wins


class Offer(enum.Enum):
    """What :meth:`Outbox.offer` did."""

    QUEUED = "queued"
    DROPPED = "dropped"  # queued, after dropping older messages; or the offer itself dropped
    CONFLATED = "conflated"  # merged into the topic's pending conflated delta
    OVERFLOW = "overflow"  # the subscriber must go (4000)


Changes = dict[Key, dict[int, Any] | None]


@attrs.define(eq=False)
class _Item:
    frame: bytes
    topic_id: int
    first: int
    last: int
    droppable: bool
    delta: Mapping[Key, dict[int, Any] | None] | None  # a table delta: can be conflated
    stamp: float | None = None  # when it was published, on the caller's clock


@attrs.define(eq=False)
class Conflated:
    """The merged changes of a table topic's offsets *first* to *last*, waiting to be sent
    to one subscriber as a single delta at offset *last*."""

    topic_id: int
    first: int
    last: int
    changes: Changes = attrs.field(factory=dict)
    not_before: float = 0.0  # a rate-limited subscription's next release
    merged: int = 0  # deltas in it


@attrs.frozen
class Taken:
    """What the writer sends, in this order: GAP notices, frames, conflated deltas."""

    gaps: list[tuple[int, int, int]]
    frames: list[bytes]
    conflated: list[Conflated]
    oldest: float | None = None  # the earliest publish stamp among the frames


# The queue of every empty Outbox, shared: never appended to (Outbox.offer makes a deque of
# its own first), so that an idle connection holds no deque of its own (about 600 bytes).
_NO_ITEMS: collections.deque[Any] = collections.deque()


@attrs.define(eq=False, kw_only=True)
class Outbox:
    """Frames waiting for one connection's writer, bounded in bytes and in messages.

    Conflated deltas are not counted against the limits: each holds at most one entry per
    row of its table.
    """

    max_bytes: int = attrs.field(validator=[instance_of(int), ge(1)])
    max_items: int = attrs.field(validator=[instance_of(int), ge(1)])
    # The queue; while empty, the shared _NO_ITEMS (an idle connection keeps no deque).
    _items: collections.deque[_Item] = attrs.field(init=False, default=_NO_ITEMS)
    _bytes: int = attrs.field(init=False, default=0)
    _gaps: dict[int, list[int]] = attrs.field(init=False, factory=dict)
    _slots: dict[int, Conflated] = attrs.field(init=False, factory=dict)
    _released: dict[int, float] = attrs.field(init=False, factory=dict)  # rate-limited topics
    overflowed: bool = attrs.field(init=False, default=False)
    dropped: int = attrs.field(init=False, default=0)
    conflated: int = attrs.field(init=False, default=0)  # deltas merged into another
    peak_bytes: int = attrs.field(init=False, default=0)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def queued_bytes(self) -> int:
        """Bytes queued."""
        return self._bytes

    def busy(self) -> bool:
        """Whether frames or gaps are queued: a new frame must go after them."""
        return bool(self._items or self._gaps)

    def pending(self, now: float = math.inf) -> bool:
        """Whether the writer has anything to send at *now*: frames, gaps, due deltas."""
        return bool(self._items or self._gaps) or any(
            s.not_before <= now for s in self._slots.values()
        )

    def next_due(self) -> float | None:
        """When the earliest held (rate-limited) delta becomes due, if any."""
        return min((s.not_before for s in self._slots.values()), default=None)

    def has_slot(self, topic_id: int) -> bool:
        """Whether deltas of *topic_id* are being conflated: later ones must merge too."""
        return topic_id in self._slots

    def offer(
        self,
        frame: bytes,
        *,
        topic_id: int = 0,
        first: int = 0,
        last: int = 0,
        overflow: Overflow | None = None,
        delta: Mapping[Key, dict[int, Any] | None] | None = None,
        stamp: float | None = None,
    ) -> Offer:
        """Queue *frame* (carrying offsets *first*-*last* of *topic_id*, if data).

        *overflow* None marks a control message: never dropped, and over the limits it makes
        the subscriber overflow. *delta* is the change set a table delta frame encodes; with
        CONFLATE it lets the outbox merge instead of queueing. *stamp*, when the message
        was published, comes back as :attr:`Taken.oldest` (publish-to-send latency).
        """
        if self.overflowed:
            return Offer.OVERFLOW
        size = len(frame)
        conflatable = overflow is Overflow.CONFLATE and delta is not None
        if overflow is Overflow.CONFLATE and delta is not None:
            if topic_id in self._slots:
                self._merge(topic_id, first, last, delta)
                return Offer.CONFLATED
            if self._bytes + size > self.max_bytes // 2 or len(self._items) >= self.max_items // 2:
                self._conflate_topic(topic_id)
                self._merge(topic_id, first, last, delta)
                return Offer.CONFLATED
        droppable = overflow is Overflow.DROP_OLDEST
        verdict = Offer.QUEUED
        if self._bytes + size > self.max_bytes or len(self._items) >= self.max_items:
            self._conflate_all()
            if self._bytes + size > self.max_bytes or len(self._items) >= self.max_items:
                if not droppable:
                    return self._overflow()
                verdict = Offer.DROPPED
                if not self._make_room(size):
                    self._gap(topic_id, first, last)
                    return Offer.DROPPED
        if self._items is _NO_ITEMS:
            self._items = collections.deque()
        self._items.append(
            _Item(frame, topic_id, first, last, droppable, delta if conflatable else None, stamp)
        )
        self._bytes += size
        self.peak_bytes = max(self.peak_bytes, self._bytes)
        return verdict

    def hold(
        self,
        topic_id: int,
        first: int,
        last: int,
        delta: Mapping[Key, dict[int, Any] | None],
        *,
        interval: float,
        now: float,
    ) -> None:
        """Merge a delta of a rate-limited subscription; it is due *interval* seconds after
        the topic's last release (at once the first time)."""
        if self.overflowed:
            return
        if topic_id not in self._slots:
            released = self._released.get(topic_id)
            due = now if released is None else max(now, released + interval)
            self._slots[topic_id] = Conflated(topic_id, first, last, not_before=due)
            self._released.setdefault(topic_id, -math.inf)
        self._merge(topic_id, first, last, delta)

    def _merge(
        self, topic_id: int, first: int, last: int, delta: Mapping[Key, dict[int, Any] | None]
    ) -> None:
        slot = self._slots.get(topic_id)
        if slot is None:
            slot = self._slots[topic_id] = Conflated(topic_id, first, last)
        merge_into(slot.changes, delta)
        slot.first, slot.last = min(slot.first, first), max(slot.last, last)
        slot.merged += 1
        if slot.merged > 1:
            self.conflated += 1

    def _conflate_topic(self, topic_id: int) -> None:
        """Move the queued deltas of *topic_id* into its conflated set (oldest first)."""
        kept: collections.deque[_Item] = collections.deque()
        for item in self._items:
            if item.topic_id == topic_id and item.delta is not None:
                self._bytes -= len(item.frame)
                self._merge(topic_id, item.first, item.last, item.delta)
            else:
                kept.append(item)
        self._items = kept

    def _conflate_all(self) -> None:
        """Make room by conflating every queued conflatable delta."""
        for topic_id in {i.topic_id for i in self._items if i.delta is not None}:
            self._conflate_topic(topic_id)

    def _overflow(self) -> Offer:
        self.overflowed = True
        self._items = _NO_ITEMS
        self._gaps.clear()
        self._slots.clear()
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

    def take(self, now: float = math.inf, *, max_bytes: float = math.inf) -> Taken:
        """Everything for the writer at *now*: gaps first, then frames, then the conflated
        deltas that are due.

        With *max_bytes* (a bandwidth cap), frames are taken from the front only while they
        fit (always at least one), and conflated deltas only once no frame is left behind.
        """
        gaps = [(topic_id, first, last) for topic_id, (first, last) in self._gaps.items()]
        self._gaps.clear()
        items = self._items
        oldest = next((item.stamp for item in items if item.stamp is not None), None)
        if max_bytes == math.inf or self._bytes <= max_bytes:
            frames = [item.frame for item in items]
            self._items = items = _NO_ITEMS
            self._bytes = 0
        else:
            frames, budget = [], max_bytes
            taken: list[_Item] = []
            while items and (not frames or len(items[0].frame) <= budget):
                item = items.popleft()
                taken.append(item)
                frames.append(item.frame)
                budget -= len(item.frame)
                self._bytes -= len(item.frame)
            oldest = next((item.stamp for item in taken if item.stamp is not None), None)
        due = [] if items else [s for s in self._slots.values() if s.not_before <= now]
        for slot in due:
            del self._slots[slot.topic_id]
            if slot.topic_id in self._released:
                self._released[slot.topic_id] = now
        return Taken(gaps, frames, due, oldest)
