"""The hub: topics and their subscribers, with each update encoded and framed once for all.

Imports: attrs, trio (only for :meth:`Hub.publish`, which waits), tickwire.sansio.
:meth:`Hub.publish_nowait` never waits: delivery is a direct write or an offer to each
subscriber's bounded outbox (the connection's writer drains it).

Stream topics keep a bounded history (by count and by age) so that a subscriber can resume
from the (epoch, offset) it last saw: all of the missed messages are replayed, or none and
the answer is NOT_RECOVERED (PROTOCOL.md §4.4). Table topics and the slow-consumer policies
other than disconnect grow here with the broadcast layer.
"""

from __future__ import annotations

import collections
import itertools
import random
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio
from attrs.validators import ge, gt, instance_of

from tickwire.sansio.compression import CompressionConfig, Compressor, DictionaryRegistry
from tickwire.sansio.events import Batch, Data, Event, Outcome, Position
from tickwire.sansio.fanout import Overflow
from tickwire.sansio.framing import frame
from tickwire.sansio.negotiation import Codec, Negotiated
from tickwire.sansio.session import encode_message

__all__ = ["Hub", "Subscriber", "Topic", "TopicConfig", "pattern_matches", "valid_pattern"]

_SEGMENT = re.compile(r"[A-Za-z0-9_\-:]+")


def valid_pattern(pattern: str) -> bool:
    """Whether *pattern* is a topic name or a pattern (§4.4): dot-separated segments of
    letters, digits, ``_-:``, where a pattern may use ``*`` for one whole segment."""
    if not pattern or len(pattern) > 256:
        return False
    return all(s == "*" or _SEGMENT.fullmatch(s) for s in pattern.split("."))


def pattern_matches(pattern: str, topic: str) -> bool:
    """Whether topic name *topic* matches *pattern* (``*`` is exactly one segment)."""
    want, have = pattern.split("."), topic.split(".")
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have, strict=True))


class Subscriber(Protocol):
    """What the hub needs of a subscriber (a server connection implements it)."""

    @property
    def variant(self) -> Negotiated:
        """The negotiated subprotocol: one encoding per distinct variant per update."""

    def deliver_nowait(
        self,
        framed: bytes,
        *,
        topic_id: int = 0,
        first: int = 0,
        last: int = 0,
        overflow: Overflow | None = None,
    ) -> None:
        """Send or queue one framed message (offsets *first*-*last* of *topic_id*, under
        the topic's *overflow* policy; None for a control message); never blocks."""

    def topic_added(self, topic: Topic, request_id: int) -> None:
        """A topic matching one of its patterns appeared."""

    def has_room(self) -> bool:
        """Whether its outbox is at most half full (for :meth:`Hub.publish`)."""

    async def wait_for_room(self) -> None:
        """Wait until :meth:`has_room`."""

    def slow_consumer(self) -> None:
        """Drop it as a slow consumer (4000): it did not make room in time."""


@attrs.frozen(kw_only=True)
class TopicConfig:
    """How a topic behaves.

    Attributes:
        history_size: messages kept to resume from (0 keeps none).
        history_seconds: and none older than this.
        overflow: what happens to a subscriber whose outbox is full: DISCONNECT (close with
            4000; it resumes from history) or DROP_OLDEST (the oldest queued messages of
            such topics are dropped and announced with GAP).
        batch_window: seconds during which publishes are gathered into one BATCH message
            (for example 0.010), or None to send each at once. Needs the hub's
            :meth:`Hub.run_batches` task, which the server runs.
    """

    history_size: int = attrs.field(default=1000, validator=[instance_of(int), ge(0)])
    history_seconds: float = attrs.field(default=300.0, validator=gt(0))
    overflow: Overflow = attrs.field(default=Overflow.DISCONNECT, validator=instance_of(Overflow))
    batch_window: float | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        if self.batch_window is not None and not 0 < self.batch_window <= 10:
            raise ValueError("batch_window must be None or between 0 and 10 seconds")


@attrs.define(eq=False)
class Entry:
    """One message in a topic's history, with its frames per variant, made on demand."""

    offset: int
    stamp: float
    payload: Any
    framed: dict[Negotiated, bytes] = attrs.field(factory=dict)


@attrs.define(eq=False)
class Topic:
    """A stream topic: every message gets the next offset within the topic's epoch."""

    topic_id: int
    name: str
    epoch: int
    config: TopicConfig = attrs.field(factory=TopicConfig)
    offset: int = 0
    subscribers: dict[Subscriber, None] = attrs.field(factory=dict)  # ordered set
    history: collections.deque[Entry] = attrs.field(factory=collections.deque)
    pending: list[Any] = attrs.field(factory=list)  # payloads waiting for the batch window

    @property
    def sent_offset(self) -> int:
        """The last offset sent to subscribers (a pending batch is not sent yet)."""
        return self.offset - len(self.pending)

    def trim(self, now: float) -> None:
        """Forget history past the count and age limits."""
        history, config = self.history, self.config
        while len(history) > config.history_size:
            history.popleft()
        horizon = now - config.history_seconds
        while history and history[0].stamp < horizon:
            history.popleft()

    def recover(self, resume: Position, now: float) -> tuple[Outcome, int, list[Entry]]:
        """The answer to a resume from *resume*: (outcome, offset for SUBSCRIBED, replay).

        RECOVERED replays every message after *resume.offset*; otherwise nothing is
        replayed (never a partial replay, §4.4).
        """
        self.trim(now)
        sent = self.sent_offset  # what is pending reaches every subscriber in its batch
        if resume.epoch != self.epoch or resume.offset > sent:
            return Outcome.NOT_RECOVERED, sent, []
        missed = sent - resume.offset
        if missed == 0:
            return Outcome.RECOVERED, resume.offset, []
        history = [e for e in self.history if e.offset <= sent]
        if missed > len(history) or history[-missed].offset != resume.offset + 1:
            return Outcome.NOT_RECOVERED, sent, []
        return Outcome.RECOVERED, resume.offset, history[-missed:]


@attrs.define(eq=False)
class Hub:
    """Owns the topics. Embedding programs publish with :meth:`publish_nowait`.

    Args:
        compression: how ``tickwire.v1+zstd`` subscribers' messages are compressed.
        dictionaries: the zstd dictionaries on offer.
        default_topic: the configuration of topics that :meth:`configure` did not name.
        clock: seconds on a monotonic clock, for the history's age limit.
    """

    compression: CompressionConfig = attrs.field(factory=CompressionConfig)
    dictionaries: DictionaryRegistry = attrs.field(factory=DictionaryRegistry)
    default_topic: TopicConfig = attrs.field(factory=TopicConfig)
    clock: Callable[[], float] = time.monotonic
    _topics: dict[str, Topic] = attrs.field(init=False, factory=dict)
    _by_id: dict[int, Topic] = attrs.field(init=False, factory=dict)
    _configs: list[tuple[str, TopicConfig]] = attrs.field(init=False, factory=list)
    _due: dict[Topic, float] = attrs.field(init=False, factory=dict)  # batch deadlines
    _batch_wakeup: trio.Event = attrs.field(init=False, factory=trio.Event)
    _batching: bool = attrs.field(init=False, default=False)
    _patterns: dict[Subscriber, dict[str, int]] = attrs.field(init=False, factory=dict)
    _ids: Callable[[], int] = attrs.field(init=False, factory=lambda: itertools.count(1).__next__)
    compressor: Compressor = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.compressor = Compressor(self.compression)

    def topic(self, name: str) -> Topic:
        """The topic called *name*, created (and offered to matching patterns) if new.

        Raises:
            ValueError: *name* is not a valid topic name (§4.4).
        """
        topic = self._topics.get(name)
        if topic is None:
            if not valid_pattern(name) or "*" in name.split("."):
                raise ValueError(f"invalid topic name: {name!r}")
            config = next(
                (c for p, c in self._configs if pattern_matches(p, name)), self.default_topic
            )
            topic = Topic(self._ids(), name, random.getrandbits(31), config)
            self._topics[name] = self._by_id[topic.topic_id] = topic
            for subscriber, patterns in self._patterns.items():
                for pattern, request_id in patterns.items():
                    if pattern_matches(pattern, name):
                        topic.subscribers[subscriber] = None
                        subscriber.topic_added(topic, request_id)
                        break
        return topic

    def configure(self, pattern: str, config: TopicConfig) -> None:
        """Give topics matching *pattern* that are created from now on *config*
        (the first matching call wins)."""
        if not valid_pattern(pattern):
            raise ValueError(f"invalid topic pattern: {pattern!r}")
        self._configs.append((pattern, config))

    def topic_by_id(self, topic_id: int) -> Topic | None:
        """The topic with this id, if any."""
        return self._by_id.get(topic_id)

    def frames(self, topic: Topic, entry: Entry, variant: Negotiated) -> bytes:
        """The frame of a history entry for *variant*, encoded once and kept."""
        data = entry.framed.get(variant)
        if data is None:
            event = Data(topic.topic_id, entry.offset, entry.payload)
            data = entry.framed[variant] = self.encode(event, variant)
        return data

    @property
    def topics(self) -> list[Topic]:
        """Every topic, oldest first."""
        return list(self._topics.values())

    def encode(self, event: Event, variant: Negotiated) -> bytes:
        """One event, encoded, compressed when the variant allows, and framed."""
        if variant.codec is Codec.JSON:
            return frame(encode_message(event, codec_=Codec.JSON))
        compressor = self.compressor if variant.compression else None
        return frame(encode_message(event, compressor=compressor))

    def publish_nowait(self, topic: str, payload: Any) -> int:
        """Publish *payload* on *topic* to every subscriber now; return its offset.

        The message is encoded, compressed and framed once per subscriber variant in use
        (at most three), and the same bytes go to every subscriber.

        Raises:
            ValueError: an invalid topic name. TypeError: a payload msgpack cannot carry.
        """
        t = self.topic(topic)
        t.offset += 1
        framed: dict[Negotiated, bytes] = {}
        if t.config.history_size:
            now = self.clock()
            t.history.append(Entry(t.offset, now, payload, framed))
            t.trim(now)
        window = t.config.batch_window
        if window is not None:
            t.pending.append(payload)
            if len(t.pending) == 1:
                self._due[t] = trio.current_time() + window
                self._batch_wakeup.set()
            return t.offset
        if t.subscribers:
            self._fan_out(t, Data(t.topic_id, t.offset, payload), t.offset, framed)
        return t.offset

    def _fan_out(self, t: Topic, event: Event, first: int, framed: dict[Negotiated, bytes]) -> None:
        """Give every subscriber of *t* the frame of *event* for its variant, each variant
        encoded once (into *framed*); the event carries offsets *first* to ``t.offset``."""
        for subscriber in list(t.subscribers):
            variant = subscriber.variant
            data = framed.get(variant)
            if data is None:
                data = framed[variant] = self.encode(event, variant)
            subscriber.deliver_nowait(
                data, topic_id=t.topic_id, first=first, last=t.offset, overflow=t.config.overflow
            )

    def flush(self, now: float | None = None) -> None:
        """Send the pending batches that are due at *now* (all of them when None)."""
        for topic, due in list(self._due.items()):
            if now is None or due <= now:
                del self._due[topic]
                self._send_batch(topic)

    def _send_batch(self, t: Topic) -> None:
        payloads, t.pending = t.pending, []
        if not payloads or not t.subscribers:
            return
        first = t.offset - len(payloads) + 1
        self._fan_out(t, Batch(t.topic_id, first, payloads), first, {})

    async def run_batches(self) -> None:
        """Send each topic's batch when its window ends; runs until cancelled.

        The server runs it; run it yourself when using batch windows without a server.
        Only one runs per hub: a second call returns at once.
        """
        if self._batching:
            return
        self._batching = True
        try:
            while True:
                if not self._due:
                    self._batch_wakeup = trio.Event()
                    await self._batch_wakeup.wait()
                    continue
                await trio.sleep_until(min(self._due.values()))
                self.flush(trio.current_time())
        finally:
            self._batching = False

    async def publish(self, topic: str, payload: Any, *, timeout: float = 10.0) -> int:
        """Publish with backpressure: wait until every subscriber of *topic* has room.

        For lossless pipelines: nothing is dropped while subscribers keep up. A subscriber
        that has not made room within *timeout* seconds is dropped as a slow consumer
        (4000; it resumes from the history), so that no single client stalls the others.

        Raises:
            ValueError: an invalid topic name. TypeError: a payload msgpack cannot carry.
        """
        t = self.topic(topic)
        deadline = trio.current_time() + timeout
        for subscriber in list(t.subscribers):
            if not subscriber.has_room():
                with trio.move_on_at(deadline):
                    await subscriber.wait_for_room()
                if not subscriber.has_room():
                    subscriber.slow_consumer()
        await trio.lowlevel.checkpoint()
        return self.publish_nowait(topic, payload)

    def subscribe(self, subscriber: Subscriber, pattern: str, request_id: int) -> list[Topic]:
        """Subscribe to *pattern*; return the topics it matches now.

        Topics that appear later and match call ``subscriber.topic_added``.

        Raises:
            ValueError: an invalid pattern, or one this subscriber already holds.
        """
        if not valid_pattern(pattern):
            raise ValueError(f"invalid topic pattern: {pattern!r}")
        patterns = self._patterns.setdefault(subscriber, {})
        if pattern in patterns:
            raise ValueError(f"already subscribed to {pattern!r}")
        if "*" not in pattern.split("."):
            matched = [self.topic(pattern)]  # before registering: no topic_added for it
        else:
            matched = [t for t in self._topics.values() if pattern_matches(pattern, t.name)]
        patterns[pattern] = request_id
        for topic in matched:
            topic.subscribers[subscriber] = None
        return matched

    def unsubscribe(self, subscriber: Subscriber, pattern: str) -> bool:
        """End the subscription made with *pattern*; return whether there was one."""
        patterns = self._patterns.get(subscriber, {})
        if patterns.pop(pattern, None) is None:
            return False
        for topic in self._topics.values():
            if subscriber in topic.subscribers and not any(
                pattern_matches(p, topic.name) for p in patterns
            ):
                del topic.subscribers[subscriber]
        return True

    def remove(self, subscriber: Subscriber) -> None:
        """Forget *subscriber* entirely (its connection ended)."""
        self._patterns.pop(subscriber, None)
        for topic in self._topics.values():
            topic.subscribers.pop(subscriber, None)

    def subscriber_count(self) -> int:
        """Subscribers holding at least one pattern."""
        return len(self._patterns)
