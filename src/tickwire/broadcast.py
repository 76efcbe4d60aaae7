"""The hub: topics and their subscribers, with each update encoded and framed once for all.

Imports: attrs, trio (only for :meth:`Hub.publish`, which waits), tickwire.sansio.
:meth:`Hub.publish_nowait` never waits: delivery is a direct write or an offer to each
subscriber's bounded outbox (the connection's writer drains it).

Every value entering a topic, from the program or from a client, goes through the value
gate first (:mod:`tickwire.sansio.values`): it is packed and checked against the receivers'
limits before an offset is used or anything is stored, so a refused call changes nothing and
what is accepted can always be sent. The packed bytes are what every frame is built from.

Stream topics keep a bounded history (by count, by age and by bytes, per topic and in all)
so that a subscriber can resume from the (epoch, offset) it last saw: all of the missed
messages are replayed, or none and the answer is NOT_RECOVERED (PROTOCOL.md §4.4). Table
topics (:meth:`Hub.table`) hold keyed rows under a schema: each delta (the changed fields of
the changed rows, merged over the topic's batch window, or each update on its own when the
topic does not merge) gets an offset and goes to every subscriber as the same bytes; a new
subscriber gets a snapshot first, in parts when it is larger than one message, and periodic
keyframes resend the whole table (§9).

Topics that clients create (by subscribing to a name nobody publishes yet, or by publishing)
are counted against :attr:`Hub.max_client_topics` and freed once unused. A failure inside the
hub's own timers (a batch window, a keyframe) is logged and counted, and its subscribers are
told what they missed (GAP); it never stops the hub or the server.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import hashlib
import itertools
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, cast

import attrs
import trio
from attrs.validators import ge, gt, instance_of

from tickwire.config import Limits, MiB
from tickwire.errors import BackplaneUnavailable, InvalidValue
from tickwire.sansio import codec, envelope
from tickwire.sansio.compression import (
    CompressionConfig,
    Compressor,
    Dictionary,
    DictionaryRegistry,
    train_dictionary,
)
from tickwire.sansio.events import (
    Batch,
    Data,
    DictOffer,
    Event,
    Gap,
    Outcome,
    Position,
    Snapshot,
)
from tickwire.sansio.fanout import Overflow
from tickwire.sansio.framing import frame
from tickwire.sansio.negotiation import Codec, Negotiated
from tickwire.sansio.relay import Relay
from tickwire.sansio.session import encode_message
from tickwire.sansio.table import (
    Changes,
    Key,
    Schema,
    Table,
    decode_changes,
    merge_into,
    message_budget,
)
from tickwire.sansio.values import ValueLimits, pack_trusted, pack_value, unpack_value
from tickwire.statistics import Histogram

__all__ = [
    "DuplicateKey",
    "Hub",
    "Subscriber",
    "TooManyTopics",
    "Topic",
    "TopicConfig",
    "pattern_matches",
    "valid_pattern",
]

log = logging.getLogger("tickwire.hub")

MIN_KEYS = 1024  # idempotency keys kept per topic, at least


class Overloaded(Exception):
    """A publish was refused because an in-process listener's queue is full; nothing was
    published. A client's PUBLISH gets ERROR 503 (try again later)."""


@attrs.frozen
class Published:
    """A stream message as an in-process :class:`Listener` receives it."""

    topic: str
    offset: int
    payload: Any


class Listener:
    """In-process consumer of the stream messages published on topics matching a pattern
    (by clients or by the program): ``with hub.listen("input.*") as inputs:`` then
    ``async for message in inputs:``. Made by :meth:`Hub.listen`.

    Its queue is bounded: while it is full, publishing on a matching topic raises
    :class:`Overloaded` (a client is told 503) instead of losing the message, and
    :meth:`Hub.publish` waits for room. With a backplane, messages published by other
    processes cannot be refused that way: those arriving while it is full are counted in
    :attr:`dropped` (and logged), never silently lost.
    """

    def __init__(self, hub: Hub, pattern: str, max_buffered: int) -> None:
        self.hub = hub
        self.pattern = pattern
        self.max_buffered = max_buffered
        self.dropped = 0
        self._queue: collections.deque[Published] = collections.deque()
        self._data = trio.Event()
        self._room = trio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._queue)

    def full(self) -> bool:
        return len(self._queue) >= self.max_buffered

    def offer(self, message: Published) -> None:
        """Queue *message* (the hub checks :meth:`full` first)."""
        self._queue.append(message)
        self._data.set()
        if self.full():
            self._room = trio.Event()

    async def wait_for_room(self) -> None:
        """Wait until the queue is not full."""
        while self.full():
            await self._room.wait()

    async def receive(self) -> Published:
        """The next message, waiting for one. Cancelled, it takes nothing."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._queue:
            self._data = trio.Event()
            await self._data.wait()
        message = self._take()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return message

    def receive_nowait(self) -> Published | None:
        """The next message if one is queued, else None."""
        return self._take() if self._queue else None

    def _take(self) -> Published:
        message = self._queue.popleft()
        self._room.set()
        return message

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Published:
        return await self.receive()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening; what is queued can still be received."""
        self.hub._unlisten(self)


class DuplicateKey(ValueError):
    """An idempotency key was reused with another payload (ERROR 409 on the wire)."""


class TooManyTopics(Exception):
    """Clients may not create another topic now: :attr:`Hub.max_client_topics` exist
    already (ERROR 503 on the wire). Nothing was created."""


_SEGMENT = re.compile(r"[A-Za-z0-9_\-:]+")


def _now() -> float | None:
    """trio's clock, or None outside trio (a hub filled before serving)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return None


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
        delta: Changes | None = None,
        optional: bool = False,
        published_at: float | None = None,
    ) -> bool:
        """Send or queue one framed message (offsets *first*-*last* of *topic_id*, under
        the topic's *overflow* policy; None for a control message); never blocks.

        *delta* is the change set of a table delta (for conflation); an *optional* message
        (a keyframe) is skipped when anything is queued; *published_at* is when the first
        message in it was published, on trio's clock (None if unknown). Returns whether it
        was written at once."""

    def may_receive(self, topic: Topic) -> bool:
        """Whether it may be sent *topic* (its authorisation, asked for every concrete
        topic one of its patterns matches, now or later)."""

    def topic_added(self, topic: Topic, request_id: int) -> None:
        """A topic matching one of its patterns appeared (and it may receive it)."""

    def topic_restarted(self, topic: Topic, request_id: int) -> None:
        """*topic* started again in a new epoch (the backplane's Redis lost it): tell the
        subscriber that it was not recovered (SUBSCRIBED again, §4.4)."""

    def busy(self) -> bool:
        """Whether anything is queued for it (a keyframe is then skipped)."""

    def uncork(self) -> None:
        """Write what it kept during a :meth:`Hub.burst` (only asked of a subscriber that
        called :meth:`Hub.cork`)."""

    def has_room(self) -> bool:
        """Whether its outbox is at most half full (for :meth:`Hub.publish`)."""

    async def wait_for_room(self) -> None:
        """Wait until :meth:`has_room`."""

    def slow_consumer(self) -> None:
        """Drop it as a slow consumer (4000): it did not make room in time."""

    def failed(self, exc: BaseException) -> None:
        """Close it with 1011: delivering to it raised *exc* (a bug, already logged and
        counted by the hub); the publisher and the other subscribers go on."""


class Backplane(Protocol):
    """What the hub needs of a backplane that shares its topics with other processes
    (:class:`tickwire.backplane.RedisBackplane` implements it)."""

    @property
    def ready(self) -> bool:
        """Whether it is connected and can take publishes now."""

    async def wait_connected(self) -> None:
        """Wait until it is connected."""

    def submit(self, topic: str, packed: bytes, *, key: str | None) -> None:
        """Take one stream message to publish as soon as possible, without waiting.

        Raises:
            BackplaneUnavailable: not connected, or too much is waiting already.
        """

    def check_room(self) -> None:
        """Raise :class:`BackplaneUnavailable` unless it can take a publish now."""

    def submit_delta(self, topic: str, packed: bytes, changes: Changes) -> None:
        """Take one table delta (its packed payload and its change set) to publish soon,
        whatever waits already (:meth:`check_room` was asked before the table changed)."""

    @property
    def process_id(self) -> bytes:
        """This process's id in the relays it publishes."""

    def declare(self, topic: str, info: Any) -> None:
        """Register table *topic* with its schema (*info*) and follow it, soon."""

    async def publish(self, topic: str, packed: bytes, *, key: str | None, timeout: float) -> int:
        """Publish one stream message; return the offset the cluster gave it.

        Raises:
            BackplaneUnavailable: not published within *timeout*.
            DuplicateKey: *key* was used for another payload.
        """

    async def publish_many(
        self, messages: Sequence[tuple[str, bytes, str | None]], *, timeout: float
    ) -> list[int | BaseException]:
        """Publish stream messages (topic, packed, key) in order, sharing round trips;
        each one's offset or error, in order (see RedisBackplane.publish_many)."""

    async def join(self, pattern: str, *, create: bool, client: bool) -> None:
        """Follow the topics *pattern* names in this process (as local topics of the hub),
        creating a topic name cluster-wide if *create*.

        Raises:
            BackplaneUnavailable: not connected.
        """

    def topic_id(self, name: str) -> int | None:
        """The cluster's id of topic *name*, if it has one yet."""

    def counters(self) -> dict[str, int]:
        """Its figures by name, for ``/metrics`` (``connected`` is 1 or 0)."""

    async def prefetch(self, topic: Topic, after: int) -> None:
        """Put the messages of *topic* after offset *after* in its local history, from the
        shared history, for a resume (what the shared history no longer has stays out)."""

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        """Connect, stay connected, and relay; runs until cancelled."""


@attrs.frozen(kw_only=True)
class TopicConfig:
    """How a topic behaves.

    Attributes:
        history_size: messages kept to resume from (0 keeps none).
        history_seconds: and none older than this.
        history_bytes: and no more bytes than this (the messages and their frames).
        overflow: what happens to a subscriber whose outbox is full: DISCONNECT (close with
            4000; it resumes from history), DROP_OLDEST (the oldest queued messages of such
            topics are dropped and announced with GAP) or, for table topics, CONFLATE
            (queued deltas merge into one per topic; on a stream topic it acts as
            DISCONNECT). A subscription may choose another for itself.
        batch_window: seconds during which publishes are gathered into one message (a
            BATCH for a stream; for a table one merged delta, or a BATCH of every delta
            when it does not *merge*), for example 0.010, or None to send each at once.
            Needs the hub's :meth:`Hub.run` task, which the server runs.
        keyframe_interval: for table topics, seconds between keyframes (a SNAPSHOT of the
            whole table to every subscriber that is keeping up, encoded once), or None.
        merge: for table topics, whether the changes of a batch window merge into one delta
            (the latest value of each field wins, the smallest wire) or every call to
            :meth:`Hub.update` is a delta of its own, with its own offset, delivered to
            every subscriber that keeps up (the window's deltas still travel, and are
            compressed, together in one BATCH).
    """

    history_size: int = attrs.field(default=1000, validator=[instance_of(int), ge(0)])
    history_seconds: float = attrs.field(default=300.0, validator=gt(0))
    history_bytes: int = attrs.field(default=4 * MiB, validator=[instance_of(int), ge(0)])
    overflow: Overflow = attrs.field(default=Overflow.DISCONNECT, validator=instance_of(Overflow))
    batch_window: float | None = attrs.field(default=None)
    keyframe_interval: float | None = attrs.field(default=30.0)
    merge: bool = attrs.field(default=True, validator=instance_of(bool))

    def __attrs_post_init__(self) -> None:
        if self.batch_window is not None and not 0 < self.batch_window <= 10:
            raise ValueError("batch_window must be None or between 0 and 10 seconds")
        if self.keyframe_interval is not None and not self.keyframe_interval > 0:
            raise ValueError("keyframe_interval must be None or a positive number of seconds")

    @classmethod
    def every_update(cls, batch_window: float = 0.010, **kwargs: Any) -> TopicConfig:
        """Every update delivered, each with its offset, a window's worth compressed together
        in one message: for tables, ``merge=False`` with a *batch_window*; for streams, the
        window alone."""
        return cls(batch_window=batch_window, merge=False, **kwargs)


@attrs.define(eq=False, slots=True)
class Entry:
    """One message of a topic: its packed payload, with its frames per variant, made on
    demand; kept in the history while the budgets allow."""

    offset: int
    stamp: float
    packed: bytes  # the payload as msgpack: a stream's value, a table delta's entries
    framed: dict[Negotiated, bytes] = attrs.field(factory=dict)
    delta: Changes | None = None  # a table delta's change set
    size: int = 0  # the bytes counted against the history budgets

    @property
    def payload(self) -> Any:
        """The payload, as a receiver decodes it."""
        return unpack_value(self.packed)


@attrs.define(eq=False)
class Topic:
    """A topic: every message (a table's every delta) gets the next offset in its epoch.

    Attributes:
        table: the rows of a table topic; None for a stream topic.
        client_created: made by a client's SUBSCRIBE or PUBLISH and not (yet) used by the
            program: counted against :attr:`Hub.max_client_topics`, freed once unused.
    """

    topic_id: int
    name: str
    epoch: int
    config: TopicConfig = attrs.field(factory=TopicConfig)
    offset: int = 0
    subscribers: dict[Subscriber, None] = attrs.field(factory=dict)  # ordered set
    history: collections.deque[Entry] = attrs.field(factory=collections.deque)
    pending: list[Entry] = attrs.field(factory=list)  # messages waiting for the batch window
    table: Table | None = None
    # Idempotency keys of recent publishes: key -> (offset, digest of the packed payload).
    keys: collections.OrderedDict[str, tuple[int, bytes]] = attrs.field(
        factory=collections.OrderedDict
    )
    listeners: list[Listener] = attrs.field(factory=list)  # in-process, by Hub.listen
    client_created: bool = False
    # With a backplane: whether the cluster's id and epoch are this topic's yet, and
    # whether this process changes the table (it re-publishes its rows if Redis loses them).
    followed: bool = False
    written: bool = False
    _snapshot: tuple[int, dict[Negotiated, list[bytes]]] = attrs.field(init=False, default=(-1, {}))
    keyframe_offset: int = attrs.field(init=False, default=0)
    since: float | None = attrs.field(init=False, default=None)  # first pending publish
    history_bytes: int = attrs.field(init=False, default=0)
    last_published: float = attrs.field(init=False, default=0.0)  # on the hub's clock
    # Encoded messages for compressing subscribers, before and after zstd (statistics).
    bytes_before_compression: int = attrs.field(init=False, default=0)
    bytes_after_compression: int = attrs.field(init=False, default=0)

    @property
    def sent_offset(self) -> int:
        """The last offset sent to subscribers (a pending batch is not sent yet)."""
        return self.offset - len(self.pending)

    @property
    def info(self) -> Any:
        """SUBSCRIBED's ``info`` position: the schema of a table, None for a stream."""
        return None if self.table is None else self.table.schema.info()

    def snapshot_cache(self) -> dict[Negotiated, list[bytes]]:
        """The SNAPSHOT frames (its parts) at the current offset, by variant (filled on
        demand)."""
        offset, frames = self._snapshot
        if offset != self.offset:
            frames = {}
            self._snapshot = (self.offset, frames)
        return frames

    def forget_frames(self, variant: Negotiated) -> None:
        """Drop what was encoded for *variant* (its dictionary is about to go)."""
        for entry in self.history:
            dropped = entry.framed.pop(variant, None)
            if dropped is not None:
                entry.size -= len(dropped)
                self.history_bytes -= len(dropped)
        self._snapshot[1].pop(variant, None)

    def pop_oldest(self) -> Entry:
        """Forget the oldest message of the history."""
        entry = self.history.popleft()
        self.history_bytes -= entry.size
        return entry

    def trim(self, now: float) -> int:
        """Forget history past the count, age and byte limits; return the bytes freed."""
        history, config = self.history, self.config
        before = self.history_bytes
        while len(history) > config.history_size:
            self.pop_oldest()
        horizon = now - config.history_seconds
        while history and history[0].stamp < horizon:
            self.pop_oldest()
        while history and self.history_bytes > config.history_bytes:
            self.pop_oldest()
        return before - self.history_bytes

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

    @property
    def unused(self) -> bool:
        """Nobody subscribes to it or listens to it."""
        return not self.subscribers and not self.listeners


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # validated once: its counters are hot
class Hub:
    """Owns the topics. Embedding programs publish with :meth:`publish_nowait` (streams) and
    :meth:`upsert`, :meth:`delete` or :meth:`update` (tables).

    Args:
        compression: how ``tickwire.v2+zstd`` subscribers' messages are compressed; a
            dictionary given here is put on offer (as :meth:`rotate_dictionary` does).
        dictionaries: the zstd dictionaries on offer.
        default_topic: the configuration of topics that :meth:`configure` did not name.
        clock: seconds on a monotonic clock, for the history's age limit.
        limits: what the receivers accept (a client's :class:`~tickwire.config.Limits`,
            the default ones unless yours are larger): every value published is checked
            against them, and batches, deltas and snapshots are split to fit.
        max_history_bytes: the history of all topics together, in bytes; past it, the
            oldest messages go first.
        max_client_topics: topics that clients may have created and that still exist.
        backplane: shares every topic with other processes (a
            :class:`tickwire.backplane.RedisBackplane`); None (the default) keeps them in
            this process. With one, the cluster gives offsets: :meth:`publish_nowait`
            hands the message over and returns None, :meth:`publish` returns the offset
            once Redis has it, and this hub delivers what any process published.
    """

    compression: CompressionConfig = attrs.field(factory=CompressionConfig)
    dictionaries: DictionaryRegistry = attrs.field(factory=DictionaryRegistry)
    default_topic: TopicConfig = attrs.field(factory=TopicConfig)
    clock: Callable[[], float] = time.monotonic
    limits: Limits = attrs.field(factory=Limits, validator=instance_of(Limits))
    max_history_bytes: int = attrs.field(default=256 * MiB, validator=[instance_of(int), ge(0)])
    max_client_topics: int = attrs.field(default=10_000, validator=[instance_of(int), ge(0)])
    backplane: Backplane | None = attrs.field(default=None, kw_only=True)
    _topics: dict[str, Topic] = attrs.field(init=False, factory=dict)
    _by_id: dict[int, Topic] = attrs.field(init=False, factory=dict)
    _configs: list[tuple[str, TopicConfig]] = attrs.field(init=False, factory=list)
    _due: dict[Topic, float] = attrs.field(init=False, factory=dict)  # batch deadlines
    _keyframes: dict[Topic, float] = attrs.field(init=False, factory=dict)  # next keyframe
    _wakeup: trio.Event = attrs.field(init=False, factory=trio.Event)
    _running: bool = attrs.field(init=False, default=False)
    _patterns: dict[Subscriber, dict[str, int]] = attrs.field(init=False, factory=dict)
    _members: dict[Subscriber, None] = attrs.field(init=False, factory=dict)
    _tables: list[Topic] = attrs.field(init=False, factory=list)
    _listeners: list[Listener] = attrs.field(init=False, factory=list)
    _ids: Callable[[], int] = attrs.field(init=False, factory=lambda: itertools.count(1).__next__)
    _payload_limits: ValueLimits = attrs.field(init=False)
    _budget: int = attrs.field(init=False)
    compressor: Compressor = attrs.field(init=False)
    # Seconds from publish to socket write, for every subscriber (Server.statistics()).
    publish_to_send: Histogram = attrs.field(init=False, factory=Histogram)
    history_bytes: int = attrs.field(init=False, default=0)  # all topics' history
    client_topics: int = attrs.field(init=False, default=0)  # existing, client-created
    internal_errors: int = attrs.field(init=False, default=0)  # failures caught in the hub
    refused_values: int = attrs.field(init=False, default=0)  # values the gate refused
    # Inside burst(): subscribers keep what they are sent and write it once, at its end.
    corking: bool = attrs.field(init=False, default=False)
    _bursts: int = attrs.field(init=False, default=0)  # burst() blocks open (nested)
    _corked: list[Subscriber] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        dictionary = self.compression.dictionary
        if dictionary is not None and self.dictionaries.active is not dictionary:
            dictionary = self.dictionaries.rotate(dictionary)
            self.compression = attrs.evolve(self.compression, dictionary=dictionary)
        self.compressor = Compressor(self.compression)
        self._payload_limits = ValueLimits.for_payloads(self.limits)
        self._budget = message_budget(self.limits)
        if self.backplane is not None:
            # Until the cluster's registry gives a topic its id, it has one of these,
            # which no cluster id reaches; nobody is sent one.
            self._ids = itertools.count(1 << 40).__next__

    # -- topics ---------------------------------------------------------------------------

    def topic(self, name: str) -> Topic:
        """The topic called *name*, created as a stream (and offered to matching patterns)
        if new.

        Raises:
            ValueError: *name* is not a valid topic name (§4.4); with a backplane, a
                topic this process does not follow yet (``await hub.join(name)``).
        """
        topic = self._topics.get(name)
        if topic is None:
            if self.backplane is not None:
                raise ValueError(
                    f"{name!r} is not followed by this process: await hub.join({name!r}) "
                    "first (with a backplane the cluster names its topics)"
                )
            topic = self._create(name, None)
        elif topic.client_created:
            self._adopt(topic)
        return topic

    def _adopt(self, topic: Topic) -> None:
        """The program uses a topic a client created: it is the program's from now on."""
        topic.client_created = False
        self.client_topics -= 1

    def table(self, name: str, schema: Schema) -> Topic:
        """Declare the table topic *name* with *schema* (or return it, if declared alike).

        Declare tables before clients subscribe to them: a topic that a subscription
        created as a stream and that was never published to becomes the table, and its
        subscribers are told again, with the schema and a snapshot.

        Raises:
            ValueError: an invalid name; a stream topic with messages already; a table
                declared with another schema.
        """
        topic = self._topics.get(name)
        if topic is None:
            topic = self._create(name, Table(schema, self._budget))
            if self.backplane is not None:  # registered with its schema, then followed
                self.backplane.declare(name, schema.info())
            return topic
        if topic.table is not None:
            if topic.table.schema != schema:
                raise ValueError(f"table {name!r} was declared with another schema")
            return topic
        if topic.offset:
            raise ValueError(f"{name!r} is a stream topic with messages already")
        if topic.client_created:
            self._adopt(topic)
        topic.table = Table(schema, self._budget)
        self._tables.append(topic)
        self._wakeup.set()  # its keyframes
        for subscriber in list(topic.subscribers):
            patterns = self._patterns.get(subscriber, {})
            request_id = next((r for p, r in patterns.items() if pattern_matches(p, name)), 0)
            self._tell(subscriber, subscriber.topic_added, topic, request_id)
        return topic

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not valid_pattern(name) or "*" in name.split("."):
            raise ValueError(f"invalid topic name: {name!r}")

    def _create(
        self,
        name: str,
        table: Table | None,
        *,
        client: bool = False,
        followed: tuple[int, int, int] | None = None,
    ) -> Topic:
        """A new topic, offered to the matching patterns and listeners; *followed* gives a
        backplane topic's (id, epoch, offset) in the cluster."""
        self._check_name(name)
        if client:
            if self.client_topics >= self.max_client_topics:
                raise TooManyTopics(
                    f"clients have created {self.client_topics} topics, the most this "
                    "server keeps; try again later"
                )
            self.client_topics += 1
        config = self.config_for(name)
        if followed is None:
            topic_id, epoch, offset = self._ids(), random.getrandbits(31), 0
        else:
            topic_id, epoch, offset = followed
        topic = Topic(topic_id, name, epoch, config, offset, table=table, client_created=client)
        topic.last_published = self.clock()
        self._topics[name] = self._by_id[topic.topic_id] = topic
        topic.listeners = [x for x in self._listeners if pattern_matches(x.pattern, name)]
        if table is not None:
            self._tables.append(topic)
            self._wakeup.set()  # its keyframes
        if self.backplane is None or followed is not None:  # else once it is followed
            self._offer(topic)
        return topic

    def _offer(self, topic: Topic) -> None:
        """Give a new topic to the subscriptions whose patterns match it."""
        for subscriber, patterns in list(self._patterns.items()):
            for pattern, request_id in patterns.items():
                if pattern_matches(pattern, topic.name) and subscriber.may_receive(topic):
                    topic.subscribers[subscriber] = None
                    self._tell(subscriber, subscriber.topic_added, topic, request_id)
                    break

    def _free(self, topic: Topic) -> None:
        """Forget a client-created topic nobody uses any more."""
        if self._topics.get(topic.name) is not topic:
            return
        del self._topics[topic.name]
        del self._by_id[topic.topic_id]
        self._due.pop(topic, None)
        self.history_bytes -= topic.history_bytes
        topic.history.clear()
        topic.history_bytes = 0
        if topic.client_created:
            topic.client_created = False
            self.client_topics -= 1

    def _free_if_unused(self, topic: Topic) -> None:
        """Free a client-created topic at once when it was never published to."""
        if topic.client_created and topic.unused and not topic.offset:
            self._free(topic)

    def sweep(self, now: float | None = None) -> int:
        """Trim every topic's history by age, and free the client-created topics nobody
        uses whose history has expired; return how many were freed. :meth:`run` calls it
        every few seconds."""
        now = self.clock() if now is None else now
        freed = 0
        for topic in list(self._topics.values()):
            self.history_bytes -= topic.trim(now)
            if (
                topic.client_created
                and topic.unused
                and not topic.pending
                and now - topic.last_published >= topic.config.history_seconds
            ):
                self._free(topic)
                freed += 1
        return freed

    def configure(self, pattern: str, config: TopicConfig) -> None:
        """Give topics matching *pattern* that are created from now on *config*
        (the first matching call wins)."""
        if not valid_pattern(pattern):
            raise ValueError(f"invalid topic pattern: {pattern!r}")
        self._configs.append((pattern, config))

    def config_for(self, name: str) -> TopicConfig:
        """The configuration a topic called *name* has (or gets when created)."""
        topic = self._topics.get(name)
        if topic is not None:
            return topic.config
        return next((c for p, c in self._configs if pattern_matches(p, name)), self.default_topic)

    def rekey(self, topic: Topic, topic_id: int) -> None:
        """Give *topic* another id (the backplane's registry gave it another one)."""
        self._by_id.pop(topic.topic_id, None)
        topic.topic_id = topic_id
        self._by_id[topic_id] = topic

    def similar(self, name: str, *, count: int = 3) -> list[str]:
        """Names of the program's topics that look like *name* (for a typo's hint)."""
        names = [t.name for t in self._topics.values() if not t.client_created]
        return difflib.get_close_matches(name, names, n=count, cutoff=0.6)

    @staticmethod
    def unknown(topic: Topic) -> bool:
        """Whether *topic* exists only because a client asked for it: nothing was ever
        published to it, and the program did not declare it."""
        return topic.client_created and not topic.offset and topic.table is None

    def topic_by_id(self, topic_id: int) -> Topic | None:
        """The topic with this id, if any."""
        return self._by_id.get(topic_id)

    def topic_by_name(self, name: str) -> Topic | None:
        """The topic called *name*, if it exists (never creates one)."""
        return self._topics.get(name)

    @property
    def topics(self) -> list[Topic]:
        """Every topic, oldest first."""
        return list(self._topics.values())

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, event: Event, variant: Negotiated, topic: Topic | None = None) -> bytes:
        """One event, encoded, compressed when the variant allows, and framed; what
        compression saves is counted on *topic*."""
        if variant.codec is Codec.JSON:
            return frame(encode_message(event, codec_=Codec.JSON))
        if not variant.compression:
            return frame(encode_message(event))
        if topic is None:
            return frame(encode_message(event, compressor=self.compressor))
        return self._pack(codec.encode_body(event), variant, topic)

    def _pack(self, body: bytes, variant: Negotiated, topic: Topic) -> bytes:
        """A msgpack body, compressed for *variant* when it allows, framed."""
        if not variant.compression:
            return frame(envelope.PLAIN + body)
        message = self.compressor.pack(body)
        topic.bytes_before_compression += len(envelope.PLAIN) + len(body)
        topic.bytes_after_compression += len(message)
        return frame(message)

    def _data_frame(self, t: Topic, entry: Entry, variant: Negotiated) -> bytes:
        if variant.codec is Codec.JSON:
            return frame(codec.encode_json(Data(t.topic_id, entry.offset, entry.payload)))
        return self._pack(codec.data_body(t.topic_id, entry.offset, entry.packed), variant, t)

    def _batch_frame(self, t: Topic, entries: Sequence[Entry], variant: Negotiated) -> bytes:
        first = entries[0].offset
        if variant.codec is Codec.JSON:
            event = Batch(t.topic_id, first, [e.payload for e in entries])
            return frame(codec.encode_json(event))
        body = codec.batch_body(t.topic_id, first, [e.packed for e in entries])
        return self._pack(body, variant, t)

    def frames(self, topic: Topic, entry: Entry, variant: Negotiated) -> bytes:
        """The frame of a history entry for *variant*, encoded once and kept."""
        data = entry.framed.get(variant)
        if data is None:
            data = entry.framed[variant] = self._data_frame(topic, entry, variant)
            self._count(topic, entry, len(data))
        return data

    def snapshot(self, topic: Topic, variant: Negotiated) -> list[bytes]:
        """The SNAPSHOT frames of a table topic for *variant* at its current offset (one,
        or several parts when the table is larger than a message), encoded once for every
        subscriber that needs them at this offset.

        Raises:
            ValueError: *topic* is not a table.
        """
        if topic.table is None:
            raise ValueError(f"{topic.name!r} is not a table topic")
        cache = topic.snapshot_cache()
        data = cache.get(variant)
        if data is None:
            parts = topic.table.snapshot_parts()
            data = cache[variant] = [
                self.encode(
                    Snapshot(topic.topic_id, topic.offset, part, more=i < len(parts) - 1),
                    variant,
                    topic,
                )
                for i, part in enumerate(parts)
            ]
        return data

    # -- history ----------------------------------------------------------------------------

    def _keep(self, t: Topic, entry: Entry) -> None:
        """Add *entry* to the history, within the topic's and the hub's budgets."""
        entry.size = len(entry.packed) + 64
        t.history.append(entry)
        t.history_bytes += entry.size
        self.history_bytes += entry.size
        self.history_bytes -= t.trim(entry.stamp)
        self._within_budget(t)

    def _count(self, t: Topic, entry: Entry, size: int) -> None:
        """A frame was added to a kept entry: count it."""
        if t.history and t.history[0].offset <= entry.offset:
            entry.size += size
            t.history_bytes += size
            self.history_bytes += size

    def _within_budget(self, t: Topic) -> None:
        """Past the hub's budget, forget the oldest messages: this topic's first, then
        those of the topic whose oldest message is the oldest."""
        while self.history_bytes > self.max_history_bytes:
            victim = t if len(t.history) > 1 else None
            if victim is None:
                victim = min(
                    (x for x in self._topics.values() if x.history),
                    key=lambda x: x.history[0].stamp,
                    default=None,
                )
                if victim is None:
                    return
            self.history_bytes -= victim.pop_oldest().size

    # -- publishing ---------------------------------------------------------------------------

    def check_payload(self, payload: Any, *, where: str = "payload") -> bytes:
        """*payload* packed, if every receiver can get it exactly (:func:`pack_value`).

        Raises:
            InvalidValue, ValueTooLarge: what is wrong, and where in the payload.
        """
        try:
            return pack_value(payload, self._payload_limits, where=where)
        except InvalidValue:
            self.refused_values += 1
            raise

    def publish_nowait(
        self, topic: str, payload: Any, *, key: str | None = None, client: bool = False
    ) -> int | None:
        """Publish *payload* on stream topic *topic* to every subscriber now; return its
        offset (None with a backplane: the message is handed over, and the cluster gives
        its offset when Redis takes it; :meth:`publish` waits for it).

        The payload is checked and packed before anything else: a refused call uses no
        offset and changes nothing. The message is then framed once per subscriber
        variant in use (at most three), and the same bytes go to every subscriber. With an
        idempotency *key* seen recently on this topic (as long as the history keeps its
        message, and at least the last 1,024 keys), nothing is published and the original
        offset is returned (PROTOCOL.md §4.10).

        Args:
            client: the call is a client's PUBLISH: a topic it creates counts against
                :attr:`max_client_topics`.

        Raises:
            ValueError: an invalid topic name, or a table topic (use :meth:`upsert`).
            InvalidValue: a payload some receiver could not get exactly (its message says
                what and where); ``ValueTooLarge`` over the receivers' limits.
            DuplicateKey: *key* was used for another payload.
            Overloaded: an in-process :class:`Listener` of the topic is full.
            TooManyTopics: a client's publish would create one topic too many.
            BackplaneUnavailable: with a backplane, Redis is unreachable or too much is
                waiting for it; nothing was published.
        """
        t = self._topics.get(topic)
        if t is None:
            self._check_name(topic)
        elif t.table is not None:
            raise ValueError(f"{topic!r} is a table topic: use upsert(), delete() or update()")
        if key is not None and not isinstance(key, str):
            raise TypeError("an idempotency key is a str")
        packed = self.check_payload(payload)
        if self.backplane is not None:
            self.backplane.submit(topic, packed, key=key)
            return None
        if key is not None and t is not None:
            seen = t.keys.get(key)
            if seen is not None:
                if seen[1] != _digest(packed):
                    raise DuplicateKey(f"idempotency key {key!r} was used for another payload")
                return seen[0]  # published already: the same answer again
        if t is not None and t.listeners and any(listener.full() for listener in t.listeners):
            raise Overloaded(f"{topic}: the server is not keeping up with this topic")
        if t is None:
            t = self._create(topic, None, client=client)
            if t.listeners and any(listener.full() for listener in t.listeners):
                self._free_if_unused(t)
                raise Overloaded(f"{topic}: the server is not keeping up with this topic")
        elif t.client_created and not client:
            self._adopt(t)
        if key is not None:
            t.keys[key] = (t.offset + 1, _digest(packed))
            while len(t.keys) > max(MIN_KEYS, t.config.history_size):
                t.keys.popitem(last=False)
        t.offset += 1
        now = self.clock()
        t.last_published = now
        for listener in t.listeners:
            listener.offer(Published(topic, t.offset, payload))
        entry = Entry(t.offset, now, packed)
        if t.config.history_size:
            self._keep(t, entry)
        window = t.config.batch_window
        if window is not None:
            t.pending.append(entry)
            if len(t.pending) == 1:
                self._schedule(t, window)
            return t.offset
        if t.subscribers:
            self._fan_out(t, [entry], since=_now())
        return t.offset

    def upsert(self, topic: str, key: Key, values: Mapping[str, Any]) -> int | None:
        """Create or update row *key* of table *topic* with the fields in *values*.

        Only fields whose wire value changes are sent. Without a batch window the delta goes
        out now; with one, every change inside the window merges into one delta (or, on a
        topic that does not merge, each call is a delta of its own, sent with the window).

        Returns:
            The offset of the delta that carries the change.

        Raises:
            KeyError: no table topic *topic*, or a field not in its schema.
            InvalidValue: a key or value of the wrong type, out of range or off the field's
                grid; nothing changes.
        """
        return self.update(topic, {key: values})

    def delete(self, topic: str, key: Key) -> int | None:
        """Delete row *key* of table *topic* (nothing happens if there is none).

        Returns:
            The offset of the delta that carries the deletion.

        Raises:
            KeyError: no table topic *topic*.
        """
        return self.update(topic, deletes=(key,))

    def update(
        self,
        topic: str,
        upserts: Mapping[Any, Mapping[str, Any]] | None = None,
        *,
        deletes: Iterable[Key] = (),
    ) -> int | None:
        """Apply several row changes to table *topic* as one delta (a game tick): the
        *upserts* (key -> fields), then the *deletes*. All or nothing: every key and value
        is checked before anything changes.

        A delta larger than one message (more rows than the receivers' limits let one
        message carry) is sent as several consecutive deltas.

        Returns:
            The offset of the (last) delta that carries the changes (None with a
            backplane: the cluster gives it when Redis takes the delta).

        Raises:
            KeyError, InvalidValue: as :meth:`upsert`; nothing changes.
            BackplaneUnavailable: with a backplane, Redis is unreachable, too much waits
                for it, or the table is not followed yet; nothing changes.
        """
        t = self._topics.get(topic)
        if t is None or t.table is None:
            raise KeyError(f"no table topic {topic!r}: declare it with Hub.table()")
        table = t.table
        backplane = self.backplane
        if backplane is not None:  # before anything changes
            if not t.followed:
                raise BackplaneUnavailable(
                    f"table {topic!r} is not followed yet: await hub.join({topic!r}) "
                    "after declaring it (Redis gives its id and its rows)"
                )
            backplane.check_room()
        try:
            table.apply(upserts or {}, deletes)
        except InvalidValue:
            self.refused_values += 1
            raise
        if not table.pending:
            return t.offset if backplane is None else None
        window = t.config.batch_window
        if backplane is not None:
            t.written = True
            if window is None or not t.config.merge:
                self._submit_deltas(t)  # the backplane's sender keeps a window's together
            elif t not in self._due:
                self._schedule(t, window)
            return None
        if window is None:
            self._send_deltas(t)
            return t.offset
        if not t.config.merge:
            entries = self._take_deltas(t)
            t.pending.extend(entries)
            if t not in self._due:
                self._schedule(t, window)
            return t.offset
        if t not in self._due:
            self._schedule(t, window)
        return t.offset + 1

    def _schedule(self, t: Topic, window: float) -> None:
        t.since = _now()
        # Outside trio (filling a table before serving): due at once.
        self._due[t] = -math.inf if t.since is None else t.since + window
        self._wakeup.set()

    def _take_deltas(self, t: Topic) -> list[Entry]:
        """The table's pending changes as deltas with the next offsets, kept."""
        assert t.table is not None
        out: list[Entry] = []
        now = self.clock()
        t.last_published = now
        for delta in t.table.take_deltas():
            t.offset += 1
            entry = Entry(t.offset, now, pack_trusted(delta.payload()), delta=delta.changes)
            if t.config.history_size:
                self._keep(t, entry)
            out.append(entry)
        return out

    def _submit_deltas(self, t: Topic) -> None:
        """With a backplane: hand the table's pending changes over, delta by delta."""
        assert self.backplane is not None
        assert t.table is not None
        for delta in t.table.take_deltas():
            self.backplane.submit_delta(t.name, pack_trusted(delta.payload()), delta.changes)

    def _send_deltas(self, t: Topic, since: float | None = None) -> None:
        """Give the table's pending changes the next offsets, keep them, and send them."""
        if self.backplane is not None:
            self._submit_deltas(t)
            return
        entries = self._take_deltas(t)
        if t.subscribers:
            since = _now() if since is None else since
            with self.burst() if len(entries) > 1 else contextlib.nullcontext():
                for entry in entries:
                    self._fan_out(t, [entry], since=since)

    def _fan_out(
        self,
        t: Topic,
        entries: Sequence[Entry],
        *,
        since: float | None = None,
        prebuilt: dict[Negotiated, bytes] | None = None,
    ) -> None:
        """Give every subscriber of *t* the frame of *entries* (one DATA, or a BATCH) for
        its variant, each variant encoded once (or *prebuilt*: frames another process
        encoded); the first of them was published at *since* (trio's clock)."""
        overflow = t.config.overflow
        first, last = entries[0].offset, entries[-1].offset
        single = entries[0] if len(entries) == 1 else None
        framed = single.framed if single is not None else prebuilt or {}
        delta: Changes | None = None
        if t.table is not None:
            if single is not None:
                delta = single.delta
            else:
                delta = {}
                for entry in entries:
                    if entry.delta is not None:
                        merge_into(delta, entry.delta)
        direct = 0
        for subscriber in list(t.subscribers):
            variant = subscriber.variant
            data = framed.get(variant)
            if data is None:
                try:
                    if single is not None:
                        data = self._data_frame(t, single, variant)
                        self._count(t, single, len(data))
                    else:
                        data = self._batch_frame(t, entries, variant)
                except Exception as exc:  # a bug: these values passed the gate
                    self._failed(t, exc, "encoding")
                    data = self.encode(Gap(t.topic_id, first, last), variant)
                framed[variant] = data
            try:
                direct += subscriber.deliver_nowait(
                    data,
                    topic_id=t.topic_id,
                    first=first,
                    last=last,
                    overflow=overflow,
                    delta=delta,
                    published_at=since,
                )
            except Exception as exc:  # never the publisher's task, never the others
                self._subscriber_failed(subscriber, exc)
        if direct and since is not None:
            # Written at once: one clock reading for all of them, off the per-subscriber path.
            self.publish_to_send.observe(trio.current_time() - since, direct)

    def _deliver(
        self, subscriber: Subscriber, data: bytes, *, topic_id: int = 0, optional: bool = False
    ) -> None:
        """``deliver_nowait`` to one subscriber, whose failure is its own."""
        self._tell(
            subscriber, subscriber.deliver_nowait, data, topic_id=topic_id, optional=optional
        )

    def _tell(
        self, subscriber: Subscriber, call: Callable[..., object], *args: Any, **kwargs: Any
    ) -> None:
        """*call* (one of *subscriber*'s methods) with *args*; its failure is its own."""
        try:
            call(*args, **kwargs)
        except Exception as exc:
            self._subscriber_failed(subscriber, exc)

    def _subscriber_failed(self, subscriber: Subscriber, exc: BaseException) -> None:
        """Delivering to *subscriber* raised: log, count, forget it and let it close (1011)."""
        self.internal_errors += 1
        log.error("delivery to a subscriber failed; closing it with 1011", exc_info=exc)
        self.remove(subscriber)
        try:
            subscriber.failed(exc)
        except Exception:  # pragma: no cover - a subscriber that cannot even close
            log.exception("a failed subscriber could not be closed")

    def _failed(self, t: Topic, exc: BaseException, what: str) -> None:
        self.internal_errors += 1
        log.error("topic %s: %s failed", t.name, what, exc_info=exc, extra={"topic": t.name})

    @contextlib.contextmanager
    def burst(self) -> Iterator[None]:
        """Cork every subscriber's socket for the block (uWebSockets' corking): what the
        block publishes, to any number of topics, reaches each subscriber in one write at
        its end, instead of one write per message. For publishers that change many topics
        at once (a tick of 50 symbols); the hub's own timers use it when several batch
        windows end together. Nothing waits: the block's end writes what each socket takes
        and queues the rest, as any delivery does. Nests; the outermost block writes.
        """
        self._bursts += 1
        self.corking = True
        try:
            yield
        finally:
            self._bursts -= 1
            if not self._bursts:
                self.corking = False
                corked, self._corked = self._corked, []
                for subscriber in corked:  # never the publisher, never the others
                    self._tell(subscriber, subscriber.uncork)

    def cork(self, subscriber: Subscriber) -> None:
        """*subscriber* kept a message for the end of the :meth:`burst`: call its
        ``uncork()`` then (a subscriber calls this once per burst)."""
        self._corked.append(subscriber)

    def flush(self, now: float | None = None) -> None:
        """Send the pending batches and table deltas that are due at *now* (all when None).

        A failure while sending one topic's batch is logged and counted
        (:attr:`internal_errors`), its subscribers get a GAP for what it held, and the other
        topics are not affected."""
        due_now = [t for t, due in self._due.items() if now is None or due <= now]
        with self.burst() if len(due_now) > 1 else contextlib.nullcontext():
            for topic in due_now:
                try:
                    self._flush_topic(topic)
                except Exception as exc:  # never the hub's timer, never the server
                    self._failed(topic, exc, "its batch window")
                    self._lost(topic)

    def _lost(self, t: Topic) -> None:
        """Tell *t*'s subscribers that what it held pending will never arrive."""
        pending, t.pending = t.pending, []
        if t.table is not None:
            t.table.take_delta()  # changes that cannot be sent: a keyframe will resync
        if not pending:
            return
        gap = Gap(t.topic_id, pending[0].offset, pending[-1].offset)
        for subscriber in list(t.subscribers):
            self._deliver(subscriber, self.encode(gap, subscriber.variant))

    def _flush_topic(self, t: Topic) -> None:
        self._due.pop(t, None)
        since, t.since = t.since, None
        if t.table is not None and t.config.merge:
            self._send_deltas(t, since)
            return
        entries, t.pending = t.pending, []
        if not entries or not t.subscribers:
            return
        budget = self._budget
        chunk: list[Entry] = []
        size = 0
        for entry in entries:
            if chunk and size + len(entry.packed) > budget:
                self._fan_out(t, chunk, since=since)
                chunk, size = [], 0
            chunk.append(entry)
            size += len(entry.packed)
        self._fan_out(t, chunk, since=since)

    def keyframe(self, topic: Topic) -> None:
        """Send a SNAPSHOT of table *topic* to each subscriber with nothing queued, now."""
        if topic.table is None or not topic.subscribers:
            return
        self._flush_topic(topic)
        topic.keyframe_offset = topic.offset
        for subscriber in list(topic.subscribers):
            if subscriber.busy():
                continue
            parts = self.snapshot(topic, subscriber.variant)  # encoded once per variant
            for i, data in enumerate(parts):
                self._deliver(subscriber, data, topic_id=topic.topic_id, optional=i == 0)

    async def run(self) -> None:
        """The hub's timers: batch windows, keyframes and the sweep of unused topics; runs
        until cancelled. A failure in one topic's timer is logged and counted and never
        ends it.

        The server runs it; run it yourself when using batch windows or keyframes without
        a server. Only one runs per hub: a second call returns at once. With a backplane it
        runs the backplane too (its connection to Redis and the relays).
        """
        if self._running:
            return
        self._running = True
        try:
            if self.backplane is None:
                await self._timers()
            else:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.backplane.run, self)
                    await self._timers()
        finally:
            self._running = False

    async def _timers(self) -> None:
        """The batch windows, keyframes and sweeps of :meth:`run`."""
        next_sweep = trio.current_time() + SWEEP_INTERVAL
        while True:
            now = trio.current_time()
            self.flush(now)
            for topic in list(self._tables):
                interval = topic.config.keyframe_interval
                if interval is None:
                    continue
                due = self._keyframes.setdefault(topic, now + interval)
                if due <= now:
                    if topic.offset != topic.keyframe_offset:
                        try:
                            self.keyframe(topic)
                        except Exception as exc:  # never the hub's timer
                            self._failed(topic, exc, "its keyframe")
                    self._keyframes[topic] = now + interval
            if now >= next_sweep:
                self.sweep()
                next_sweep = now + SWEEP_INTERVAL
            deadline = min(
                itertools.chain(self._due.values(), self._keyframes.values(), [next_sweep]),
                default=math.inf,
            )
            self._wakeup = trio.Event()
            with trio.move_on_at(deadline):
                await self._wakeup.wait()

    async def run_batches(self) -> None:
        """Deprecated name of :meth:`run`."""
        await self.run()

    async def publish(
        self, topic: str, payload: Any, *, key: str | None = None, timeout: float = 10.0
    ) -> int:
        """Publish with backpressure: wait until every subscriber and in-process listener
        of *topic* has room.

        For lossless pipelines: nothing is dropped while subscribers keep up. A subscriber
        that has not made room within *timeout* seconds is dropped as a slow consumer
        (4000; it resumes from the history), so that no single client stalls the others.

        With a backplane it waits for Redis instead (for room in what waits for Redis, then
        for Redis to take the message), and returns the offset the cluster gave; each
        server's subscribers then get it as their overflow policy says.

        Raises:
            ValueError: an invalid topic name, or a table topic.
            InvalidValue: as :meth:`publish_nowait`, before waiting.
            DuplicateKey: as :meth:`publish_nowait`.
            Overloaded: a listener had no room within *timeout*.
            BackplaneUnavailable: with a backplane, Redis did not take the message within
                *timeout*.
        """
        packed = self._check_stream_message(topic, payload, key)  # before waiting for anyone
        if self.backplane is not None:
            return await self.backplane.publish(topic, packed, key=key, timeout=timeout)
        t = self.topic(topic)
        deadline = trio.current_time() + timeout
        for subscriber in list(t.subscribers):
            if not subscriber.has_room():
                with trio.move_on_at(deadline):
                    await subscriber.wait_for_room()
                if not subscriber.has_room():
                    subscriber.slow_consumer()
        for listener in list(t.listeners):
            with trio.move_on_at(deadline):
                await listener.wait_for_room()
        await trio.lowlevel.checkpoint()
        offset = self.publish_nowait(topic, payload, key=key)
        assert offset is not None  # no backplane
        return offset

    def _check_stream_message(self, topic: str, payload: Any, key: str | None) -> bytes:
        """The packed payload of a stream message for :meth:`publish`, or what it is
        refused with (ValueError, TypeError, InvalidValue)."""
        existing = self._topics.get(topic)
        if existing is not None and existing.table is not None:
            raise ValueError(f"{topic!r} is a table topic: use upsert(), delete() or update()")
        if existing is None:
            self._check_name(topic)
        if key is not None and not isinstance(key, str):
            raise TypeError("an idempotency key is a str")
        return self.check_payload(payload)

    async def publish_many(
        self, messages: Sequence[tuple[str, Any, str | None]], *, timeout: float = 10.0
    ) -> list[int | Exception]:
        """:meth:`publish` of several stream messages, (topic, payload, idempotency key)
        each, in this order; returns once every one is published or refused: its offset,
        or the exception :meth:`publish` would have raised, in the same order.

        With a backplane the messages are queued for Redis in order and share its round
        trips (one call can publish hundreds in one), instead of one round trip each. A
        message refused by its checks (a bad value, a table topic) is skipped and the
        others go on; once one finds no room within *timeout* (Redis unreachable), every
        one after it is refused too (BackplaneUnavailable), so that publishing that tail
        again keeps the order; a message once queued waits for Redis as long as it takes.
        Without a backplane it is :meth:`publish` of each in turn, and once one finds a
        listener full (Overloaded) every one after it is refused the same way.
        """
        if self.backplane is None:
            done: list[int | Exception] = []
            full: Overloaded | None = None
            for topic, payload, key in messages:
                if full is not None:  # the tail, refused as the backplane's would be
                    done.append(full)
                    continue
                try:
                    done.append(await self.publish(topic, payload, key=key, timeout=timeout))
                except Overloaded as exc:
                    full = exc
                    done.append(exc)
                except (ValueError, TypeError, DuplicateKey) as exc:
                    done.append(exc)  # InvalidValue is a ValueError
            return done
        results: list[int | Exception | None] = [None] * len(messages)
        checked: list[tuple[str, bytes, str | None]] = []
        where: list[int] = []
        for index, (topic, payload, key) in enumerate(messages):
            try:
                checked.append((topic, self._check_stream_message(topic, payload, key), key))
                where.append(index)
            except (ValueError, TypeError) as exc:  # InvalidValue is a ValueError
                results[index] = exc
        answers = await self.backplane.publish_many(checked, timeout=timeout)
        for index, answer in zip(where, answers, strict=True):
            if not isinstance(answer, int | Exception):
                raise answer  # a cancellation, not a refusal
            results[index] = answer
        return cast(list[int | Exception], results)  # every one is answered by now

    # -- the backplane -------------------------------------------------------------------------

    async def join(self, pattern: str, *, create: bool = False, client: bool = False) -> None:
        """With a backplane, follow the topics *pattern* names in this process (a name, or
        a pattern: every topic of the cluster it matches), so that they are local topics
        that :meth:`subscribe` finds; *create* registers a name nobody has published yet.
        Without a backplane there is nothing to do.

        Raises:
            ValueError: an invalid pattern.
            BackplaneUnavailable: Redis is unreachable.
        """
        if not valid_pattern(pattern):
            raise ValueError(f"invalid topic pattern: {pattern!r}")
        if self.backplane is None:
            await trio.lowlevel.checkpoint()
            return
        await self.backplane.join(pattern, create=create, client=client)

    def wanted(self, name: str) -> bool:
        """Whether a subscription or a listener of this process matches topic *name* (a
        backplane follows such topics as soon as they appear anywhere)."""
        return any(
            pattern_matches(p, name) for patterns in self._patterns.values() for p in patterns
        ) or any(pattern_matches(x.pattern, name) for x in self._listeners)

    def follow(
        self,
        name: str,
        topic_id: int,
        epoch: int,
        offset: int,
        *,
        client: bool = False,
        schema: Schema | None = None,
        rows: Iterable[tuple[Key, list[Any]]] = (),
    ) -> Topic:
        """The local topic of cluster topic *name*, for the backplane: created at *epoch*
        and *offset* if new (a table of *schema* holding *rows*, the cluster's at
        *offset*), or a topic this process made before it was followed (a declared
        table), which takes the cluster's id, epoch, offset and rows."""
        topic = self._topics.get(name)
        if topic is None:
            table = None if schema is None else Table(schema, self._budget)
            if table is not None:
                table.load(rows)
            topic = self._create(name, table, client=client, followed=(topic_id, epoch, offset))
        else:
            if topic.client_created and not client:
                self._adopt(topic)
            if not topic.followed:
                self.rekey(topic, topic_id)
                topic.epoch, topic.offset = epoch, offset
                if topic.table is not None:
                    topic.table.load(rows)
                topic.followed = True
                self._offer(topic)
        topic.followed = True
        return topic

    @property
    def dictionary_digest(self) -> bytes:
        """What names the zstd dictionary compressed messages use now, between processes:
        the first 8 bytes of its SHA-256, or b"" for none."""
        dictionary = self.compression.dictionary
        return b"" if dictionary is None else dictionary.sha256[:8]

    def encode_relay(
        self,
        topic_id: int,
        first: int,
        payloads: Sequence[bytes],
        *,
        batch: bool,
        tokens: Sequence[str],
    ) -> tuple[tuple[int, ...], dict[str, list[bytes]]]:
        """The wire messages of *payloads* at offsets from *first*, framed, for each
        subprotocol in *tokens*: one DATA each, or with *batch* BATCHes that each fit in
        one message. Returns (messages per group, frames per token)."""
        groups: list[int] = []
        if batch:
            size = 0
            for packed in payloads:
                if groups and size + len(packed) <= self._budget:
                    groups[-1] += 1
                    size += len(packed)
                else:
                    groups.append(1)
                    size = len(packed)
        else:
            groups = [1] * len(payloads)
        frames: dict[str, list[bytes]] = {}
        for token in tokens:
            variant = Negotiated.of(token)
            out: list[bytes] = []
            at = 0
            for count in groups:
                offset = first + at
                part = payloads[at : at + count]
                at += count
                if variant.codec is Codec.JSON:
                    values = [unpack_value(p) for p in part]
                    if count == 1:
                        event: Event = Data(topic_id, offset, values[0])
                    else:
                        event = Batch(topic_id, offset, values)
                    out.append(frame(codec.encode_json(event)))
                    continue
                if count == 1:
                    body = codec.data_body(topic_id, offset, part[0])
                else:
                    body = codec.batch_body(topic_id, offset, list(part))
                packed_body = (
                    self.compressor.pack(body) if variant.compression else envelope.PLAIN + body
                )
                out.append(frame(packed_body))
            frames[token] = out
        return tuple(groups), frames

    def relayed(self, t: Topic, relay: Relay, start: int = 0) -> int:
        """Deliver *relay*'s messages from its *start*-th on (the earlier ones were
        delivered), forwarding the publisher's frames where they are valid here; return
        how many wire messages were forwarded so."""
        now = self.clock()
        since = _now()
        if since is not None:  # the publisher's wall clock, on trio's
            since -= max(0.0, time.time() - relay.stamp)
        # The publisher's frames name the topic by its cluster id: usable where that is the
        # local topic's id too (not after Redis lost its registry and gave a new id).
        usable = (
            relay.valid
            and relay.dict_digest == self.dictionary_digest
            and relay.topic_id == t.topic_id
        )
        own = self.backplane.process_id if self.backplane is not None else b""
        variants = (
            {Negotiated.of(token): messages for token, messages in relay.frames.items()}
            if usable
            else {}
        )
        forwarded = 0
        index = 0
        for group, count in enumerate(relay.groups):
            low, high = index, index + count
            index = high
            if high <= start:
                continue
            entries = [
                Entry(relay.first + i, now, relay.payloads[i]) for i in range(max(low, start), high)
            ]
            if t.table is not None:
                self._mirror(t, entries, own=relay.publisher == own)
            prebuilt = {} if low < start else {v: m[group] for v, m in variants.items()}
            t.offset = entries[-1].offset
            t.last_published = now
            for listener in t.listeners:
                for entry in entries:
                    if listener.full():
                        listener.dropped += 1
                        log.warning(
                            "listener of %s is full: message %d of %s dropped",
                            listener.pattern,
                            entry.offset,
                            t.name,
                        )
                    else:
                        listener.offer(Published(t.name, entry.offset, entry.payload))
            if len(entries) == 1 and prebuilt:
                entries[0].framed.update(prebuilt)
            if t.config.history_size:
                for entry in entries:
                    self._keep(t, entry)
                    for data in entry.framed.values():
                        self._count(t, entry, len(data))
            if t.subscribers:
                used = {v for v in (s.variant for s in t.subscribers) if v in prebuilt}
                forwarded += len(used)
                self._fan_out(t, entries, since=since, prebuilt=prebuilt)
        return forwarded

    def _mirror(self, t: Topic, entries: Sequence[Entry], *, own: bool) -> None:
        """Table deltas from the backplane: their change sets, applied to this process's
        copy of the table unless they are its own (applied when made)."""
        assert t.table is not None
        width = len(t.table.schema.fields)
        for entry in entries:
            try:
                entry.delta = decode_changes(unpack_value(entry.packed), width)
            except Exception as exc:  # another writer's bug: not this process's
                self._failed(t, exc, "a relayed delta")
                entry.delta = {}
                continue
            if not own:
                t.table.apply_changes(entry.delta)

    def backfill(self, t: Topic, entries: Sequence[tuple[int, float, bytes]]) -> int:
        """Put messages of the shared history, (offset, age in seconds, packed payload) in
        offset order, into *t*'s local history where they are missing before its oldest;
        return how many were added."""
        oldest = t.history[0].offset if t.history else t.offset + 1
        now = self.clock()
        older = [e for e in entries if e[0] < oldest]
        added = 0
        for offset, age, packed in reversed(older):
            if len(t.history) >= t.config.history_size:
                break
            entry = Entry(offset, now - age, packed)
            entry.size = len(packed) + 64
            t.history.appendleft(entry)
            t.history_bytes += entry.size
            self.history_bytes += entry.size
            added += 1
        self._within_budget(t)
        return added

    def restart(self, t: Topic, epoch: int, offset: int) -> None:
        """*t* started again at *epoch* and *offset* (the backplane's Redis lost it): its
        history goes, and every subscriber is told it was not recovered (a table's with a
        snapshot of the rows it has now: the backplane loaded Redis's). A table this
        process writes keeps its rows and publishes all of them again, so that Redis and
        every server have them back."""
        if t.table is not None and t.written and self.backplane is not None:
            t.table.resend_all()
            self._submit_deltas(t)
        self.history_bytes -= t.history_bytes
        t.history.clear()
        t.history_bytes = 0
        t.pending = []
        t.keys.clear()
        self._due.pop(t, None)
        t.epoch, t.offset = epoch, offset
        for subscriber in list(t.subscribers):
            patterns = self._patterns.get(subscriber, {})
            request_id = next((r for p, r in patterns.items() if pattern_matches(p, t.name)), 0)
            self._tell(subscriber, subscriber.topic_restarted, t, request_id)

    def skip(self, t: Topic, first: int, last: int) -> None:
        """Messages *first* to *last* of *t* can no longer be had (gone from the shared
        history before this process got them): tell every subscriber (GAP) and go on."""
        gap = Gap(t.topic_id, first, last)
        for subscriber in list(t.subscribers):
            self._deliver(subscriber, self.encode(gap, subscriber.variant))
        t.offset = max(t.offset, last)

    # -- in-process listeners ----------------------------------------------------------------

    def listen(self, pattern: str, *, max_buffered: int = 1024) -> Listener:
        """Receive in this process every stream message published from now on on topics
        matching *pattern*, by clients or by the program: how a game server reads its
        players' input. Use it as a context manager, or call :meth:`Listener.close`.

        Raises:
            ValueError: an invalid pattern, or *max_buffered* below 1.
        """
        if not valid_pattern(pattern):
            raise ValueError(f"invalid topic pattern: {pattern!r}")
        if max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        listener = Listener(self, pattern, max_buffered)
        self._listeners.append(listener)
        for topic in self._topics.values():
            if pattern_matches(pattern, topic.name):
                topic.listeners.append(listener)
        return listener

    def _unlisten(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
            for topic in self._topics.values():
                if listener in topic.listeners:
                    topic.listeners.remove(listener)

    # -- dictionaries -------------------------------------------------------------------------

    def rotate_dictionary(self, dictionary: Dictionary | bytes) -> Dictionary:
        """Compress with *dictionary* from now on, without reconnecting anyone (§5.3).

        It gets the next free wire id; every ``tickwire.v2+zstd`` subscriber is sent a
        DICT_OFFER (encoded once) holding it and the previous one, which stays on offer so
        that what is already queued still decodes; everything sent after the offer uses it.
        Frames kept for recovery that were compressed with the dictionary leaving the offer
        are re-encoded when next needed. Subscribers are the members of :meth:`attach`.

        Returns:
            The dictionary under its wire id.
        """
        leaving = self.dictionaries.previous
        new = self.dictionaries.rotate(dictionary)
        self.compression = attrs.evolve(self.compression, dictionary=new)
        self.compressor.reconfigure(self.compression)
        # Never compressed with a dictionary: the client may not have this one yet (§5.3).
        offer = frame(encode_message(DictOffer(self.dictionaries.offer())))
        variants: set[Negotiated] = set()
        for subscriber in list(self._members):
            if subscriber.variant.compression:
                variants.add(subscriber.variant)
                self._deliver(subscriber, offer)
        if leaving is not None:
            for topic in self._topics.values():
                for variant in variants:
                    before = topic.history_bytes
                    topic.forget_frames(variant)
                    self.history_bytes -= before - topic.history_bytes
        return new

    def dictionary_samples(self, topics: Sequence[str] | None = None) -> list[bytes]:
        """Message bodies from the history of *topics* (all when None), newest last: what
        :meth:`train_dictionary` learns from."""
        names = self._topics if topics is None else topics
        samples: list[bytes] = []
        for name in names:
            topic = self._topics.get(name)
            if topic is None:
                continue
            for entry in topic.history:
                samples.append(codec.data_body(topic.topic_id, entry.offset, entry.packed))
        return samples

    def train_dictionary(
        self, topics: Sequence[str] | None = None, *, size: int = 16 * 1024
    ) -> Dictionary:
        """Train a zstd dictionary on the recent traffic of *topics* (their history), to
        hand to :meth:`rotate_dictionary`.

        Raises:
            ValueError: too little history to train on (zstd needs a few dozen messages).
        """
        data = train_dictionary(self.dictionary_samples(topics), size=size)
        return Dictionary.from_bytes(data, dict_id=1)

    # -- subscriptions ------------------------------------------------------------------------

    def subscribe(
        self, subscriber: Subscriber, pattern: str, request_id: int, *, client: bool = False
    ) -> list[Topic]:
        """Subscribe to *pattern*; return the topics it matches now that *subscriber* may
        receive (:meth:`Subscriber.may_receive`).

        Topics that appear later and match call ``subscriber.topic_added``. A name that no
        topic has yet is created as a stream, so that the subscriber is told its epoch now;
        with *client*, it counts against :attr:`max_client_topics` until the program uses
        it, and is freed when its last subscriber leaves before anything was published.

        Raises:
            ValueError: an invalid pattern, or one this subscriber already holds.
            TooManyTopics: the topic would be one client-created topic too many.
        """
        if not valid_pattern(pattern):
            raise ValueError(f"invalid topic pattern: {pattern!r}")
        patterns = self._patterns.setdefault(subscriber, {})
        if pattern in patterns:
            raise ValueError(f"already subscribed to {pattern!r}")
        if "*" not in pattern.split("."):
            topic = self._topics.get(pattern)
            if topic is None and self.backplane is not None:
                matched = []  # not in the cluster: join() created nothing
            else:
                if topic is None:  # before registering: no topic_added for it
                    topic = self._create(pattern, None, client=client)
                matched = [topic]
        else:
            matched = [t for t in self._topics.values() if pattern_matches(pattern, t.name)]
        matched = [t for t in matched if subscriber.may_receive(t)]
        patterns[pattern] = request_id
        for topic in matched:
            topic.subscribers[subscriber] = None
        if not matched and "*" not in pattern.split(".") and pattern in self._topics:
            self._free_if_unused(self._topics[pattern])
        return matched

    def unsubscribe(self, subscriber: Subscriber, pattern: str) -> bool:
        """End the subscription made with *pattern*; return whether there was one."""
        patterns = self._patterns.get(subscriber, {})
        if patterns.pop(pattern, None) is None:
            return False
        for topic in list(self._topics.values()):
            if subscriber in topic.subscribers and not any(
                pattern_matches(p, topic.name) for p in patterns
            ):
                del topic.subscribers[subscriber]
                self._free_if_unused(topic)
        return True

    def withdraw(self, subscriber: Subscriber, topic: Topic) -> None:
        """Stop sending *topic* to *subscriber* (a permission it no longer has), whatever
        its patterns say."""
        topic.subscribers.pop(subscriber, None)
        self._free_if_unused(topic)

    def patterns_of(self, subscriber: Subscriber) -> dict[str, int]:
        """The patterns *subscriber* holds, with their request ids."""
        return dict(self._patterns.get(subscriber, {}))

    def topics_of(self, subscriber: Subscriber) -> list[Topic]:
        """The topics *subscriber* is sent."""
        return [t for t in self._topics.values() if subscriber in t.subscribers]

    def attach(self, subscriber: Subscriber) -> None:
        """Count *subscriber* (a connection) among those told of dictionary rotations."""
        self._members[subscriber] = None

    def remove(self, subscriber: Subscriber) -> None:
        """Forget *subscriber* entirely (its connection ended)."""
        self._members.pop(subscriber, None)
        self._patterns.pop(subscriber, None)
        for topic in list(self._topics.values()):
            if topic.subscribers.pop(subscriber, 0) is None:
                self._free_if_unused(topic)

    def subscriber_count(self) -> int:
        """Subscribers holding at least one pattern."""
        return len(self._patterns)


SWEEP_INTERVAL = 10.0  # seconds between the hub's sweeps of expired history and topics


def _digest(packed: bytes) -> bytes:
    """What an idempotency key remembers of its payload: 16 bytes, not the payload."""
    return hashlib.blake2b(packed, digest_size=16).digest()
