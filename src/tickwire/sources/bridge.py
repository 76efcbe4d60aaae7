"""The bridge: broker messages in, topics out, each acknowledged only once published.

Imports: trio, attrs, tickwire.broadcast, tickwire.errors, tickwire.sources.mapping.

Theory of operation. A source (:mod:`tickwire.sources.redis_streams`, ...) consumes its
broker and hands each batch it reads to :meth:`Bridge.handle_many`, in order, one batch at
a time; it acknowledges the batch's messages only after ``handle_many`` returns, and what
it returns says how for each: published (or recognised as published already), or
dead-lettered with a reason, which the source writes to its dead-letter destination before
acknowledging. A batch's messages are published together, in order: with a backplane they
share Redis round trips (:meth:`Hub.publish_many`), so a bridge is not bound to one round
trip per message.

- **At least once**: nothing is acknowledged before the hub has published it (with a
  backplane, before Redis has it: ``Hub.publish_many`` returns then). A bridge that dies between
  the two gets the message again from its broker.
- **Published once**: every stream message is published with the idempotency key
  ``<source>:<message id>``. A redelivered message carries the same id, the hub (or the
  backplane, for the whole cluster) recognises the key and publishes nothing new. A table
  row is an upsert: the same row twice changes nothing the second time.
- **Order**: each topic gets a source's messages in the order the source read them; what
  tickwire could not take yet is tried again, with what follows it, before anything newer.
- **Backpressure**: ``handle_many`` waits while tickwire cannot take more (``Hub.publish``
  waits for room at every subscriber; the backplane unreachable is retried with backoff),
  and the source reads nothing more meanwhile: its prefetch bounds what is in flight.
- **Bad messages** (no route, not JSON, a value the hub's gate refuses, no such table) are
  dead-lettered with the reason, never a crash.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import attrs
import trio

from tickwire.broadcast import DuplicateKey, Hub, Overloaded, TooManyTopics
from tickwire.errors import BackplaneUnavailable, InvalidValue, ValueTooLarge
from tickwire.sources.mapping import DeadLetter, Routing, ToStream, ToTable

__all__ = [
    "Acknowledging",
    "Bridge",
    "Dead",
    "Delivery",
    "Handler",
    "Published",
    "Settled",
    "Source",
    "SourceStatistics",
]

log = logging.getLogger("tickwire.sources")


@attrs.frozen
class Delivery:
    """One message from a broker.

    Attributes:
        source: the source's name (in metrics, and in the idempotency key).
        id: the message's id, unique within the source (a stream entry's id with its
            stream, a message id header, a sequence number).
        subject: what the routes match: a routing key, a NATS subject, a stream's key.
        payload: the message's body.
        redelivered: the broker says it was delivered before (the bridge may have died
            before acknowledging it).
    """

    source: str
    id: str
    subject: str
    payload: bytes
    redelivered: bool = False


@attrs.frozen
class Published:
    """Published, or recognised as published already: acknowledge it."""

    topic: str
    offset: int | None


@attrs.frozen
class Dead:
    """Not publishable: write it to the dead-letter destination, with *reason*, then
    acknowledge it."""

    reason: str


# What a source calls with each batch it read, in order: what to do with each message.
Handler = Callable[[Sequence[Delivery]], Awaitable[list["Published | Dead"]]]


class Source(Protocol):
    """What the bridge needs of a source."""

    name: str

    async def run(
        self, handle: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume until cancelled: *handle* each batch of messages read, in order, and
        acknowledge them after (dead-lettering first those it says to);
        ``task_status.started()`` once consuming."""


@attrs.define(eq=False)
class Settled:
    """How many messages a source has settled (acknowledged), and a way to wait for more."""

    count: int = 0
    _changed: trio.Event = attrs.field(init=False, factory=trio.Event)

    def add(self, count: int = 1) -> None:
        self.count += count
        self._changed.set()
        self._changed = trio.Event()

    async def add_async(self, count: int = 1) -> None:
        """:meth:`add`, for a source's asyncio side (through ``call_trio``)."""
        self.add(count)

    async def wait(self, count: int) -> None:
        """Wait until *count* messages have been settled."""
        while self.count < count:
            await self._changed.wait()


class Acknowledging:
    """What every source offers on top of :class:`Source`: the count of messages it has
    acknowledged, and a way to wait for it (its ``settled``)."""

    __slots__ = ()
    settled: Settled

    @property
    def acknowledged(self) -> int:
        """Messages settled since this source was made."""
        return self.settled.count

    async def wait_acknowledged(self, count: int) -> None:
        """Wait until *count* messages have been acknowledged since this source was made."""
        await self.settled.wait(count)


@attrs.define
class SourceStatistics:
    """Counts for one source (``tickwire_source_*`` on /metrics)."""

    consumed: int = 0
    published: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    retries: int = 0  # publishes retried because tickwire could not take them then


@attrs.define(eq=False)
class Bridge:
    """Feeds *hub* from sources through *routing* (see the module's theory of operation).

    Args:
        hub: where messages are published (with a backplane, into the whole cluster).
        routing: subjects to topics.
        publish_timeout: seconds ``Hub.publish`` waits for room at each subscriber before
            dropping that subscriber as a slow consumer (the pipeline goes on).
        retry_delay, max_retry_delay: the backoff while the backplane is unreachable.
    """

    hub: Hub
    routing: Routing
    publish_timeout: float = 10.0
    retry_delay: float = 0.1
    max_retry_delay: float = 5.0
    statistics: dict[str, SourceStatistics] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.hub.backplane is not None and any(r.key for r in self.routing.routes):
            # Hub.upsert hands a table's delta to the backplane without waiting for Redis:
            # acknowledging after it would not be "at least once".
            raise ValueError("table routes through a backplane are not supported yet")

    async def run(self, *sources: Source) -> None:
        """Run *sources* until cancelled (each in this nursery; one that fails ends all:
        run the bridge under a supervisor, ``tickwire bridge``, to restart it)."""
        async with trio.open_nursery() as nursery:
            for source in sources:
                await nursery.start(self.run_source, source)

    async def run_source(
        self, source: Source, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.statistics.setdefault(source.name, SourceStatistics())
        await source.run(self.handle_many, task_status=task_status)

    async def handle(self, delivery: Delivery) -> Published | Dead:
        """Publish one message; return when it may be acknowledged (see the module)."""
        return (await self.handle_many([delivery]))[0]

    async def handle_many(self, deliveries: Sequence[Delivery]) -> list[Published | Dead]:
        """Publish a batch of messages, in order; return, once every one may be
        acknowledged, what to do with each, in the same order. With a backplane the
        batch's stream messages are queued for Redis together and share its round trips
        (:meth:`Hub.publish_many`), which is what makes a bridge fast: a source hands over
        what it read at once and acknowledges it at once."""
        outcomes: list[Published | Dead | None] = [None] * len(deliveries)
        streams: list[tuple[int, Delivery, ToStream]] = []
        for index, delivery in enumerate(deliveries):
            stats = self._statistics(delivery)
            stats.consumed += 1
            stats.redelivered += delivery.redelivered
            decision = self.routing.decide(delivery.subject, delivery.payload)
            if isinstance(decision, DeadLetter):
                outcomes[index] = Dead(decision.reason)
            elif isinstance(decision, ToTable):
                outcomes[index] = self._refusing(functools.partial(self._upsert, decision))
            else:
                topic = self.hub.topic_by_name(decision.topic)
                if topic is not None and topic.table is not None:
                    reason = f"{decision.topic} is a table topic: route it with a key field"
                    outcomes[index] = Dead(f"ValueError: {reason}")
                else:
                    streams.append((index, delivery, decision))
        await self._publish_streams(streams, outcomes)
        done: list[Published | Dead] = []
        for delivery, outcome in zip(deliveries, outcomes, strict=True):
            assert outcome is not None
            stats = self._statistics(delivery)
            if isinstance(outcome, Dead):
                stats.dead_lettered += 1
                log.warning(
                    "source %s: message %s dead-lettered: %s",
                    delivery.source,
                    delivery.id,
                    outcome.reason,
                    extra={"source": delivery.source, "subject": delivery.subject},
                )
            else:
                stats.published += 1
            done.append(outcome)
        return done

    def _statistics(self, delivery: Delivery) -> SourceStatistics:
        return self.statistics.setdefault(delivery.source, SourceStatistics())

    async def _publish_streams(
        self,
        streams: list[tuple[int, Delivery, ToStream]],
        outcomes: list[Published | Dead | None],
    ) -> None:
        """Publish *streams* in order, into *outcomes*; what tickwire cannot take now (the
        backplane unreachable, a listener full) is kept, unacknowledged, and tried again
        with backoff, consuming nothing more meanwhile."""
        delay = self.retry_delay
        while streams:
            answers = await self.hub.publish_many(
                [(d.topic, d.payload, f"{m.source}:{m.id}") for _, m, d in streams],
                timeout=self.publish_timeout,
            )
            again = []
            for (index, delivery, decision), answer in zip(streams, answers, strict=True):
                if isinstance(answer, int):
                    outcomes[index] = Published(decision.topic, answer)
                elif isinstance(answer, BackplaneUnavailable | Overloaded):
                    again.append((index, delivery, decision))
                    self._statistics(delivery).retries += 1
                elif isinstance(answer, _REFUSALS):
                    outcomes[index] = Dead(f"{type(answer).__name__}: {answer}")
                else:
                    raise answer
            if again:
                log.info(
                    "source %s: waiting to publish %d messages: %s",
                    again[0][1].source,
                    len(again),
                    answers[next(i for i, a in enumerate(answers) if not isinstance(a, int))],
                )
                await trio.sleep(delay)
                delay = min(self.max_retry_delay, delay * 2)
            streams = again

    def _refusing(self, publish: Callable[[], Published]) -> Published | Dead:
        try:
            return publish()
        except _REFUSALS as exc:
            return Dead(f"{type(exc).__name__}: {exc}")

    def _upsert(self, decision: ToTable) -> Published:
        topic = self.hub.topic_by_name(decision.topic)
        if topic is None or topic.table is None:
            raise KeyError(f"no table topic {decision.topic!r}: declare it with Hub.table()")
        offset = self.hub.upsert(decision.topic, decision.key, decision.fields)
        return Published(decision.topic, offset)


# What publishing refuses for good: dead letters, never retried.
_REFUSALS = (
    InvalidValue,
    ValueTooLarge,
    DuplicateKey,
    TooManyTopics,
    KeyError,
    TypeError,
    ValueError,
)
