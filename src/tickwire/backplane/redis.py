"""The Redis backplane: every tickwire process shares every topic (docs/scaling.md).

Imports: attrs, coredis, msgpack, trio, tickwire.broadcast, tickwire.sansio.

Theory of operation. Redis holds, per topic, the epoch and the last offset given (a hash),
the recent messages (a stream whose entry ids are the offsets) and, for a relay's
subscribers, a pub/sub channel. A process publishes through one task that takes everything
waiting, topic by topic, and sends it in one pipeline of script calls: one round trip for
all of it (:data:`~tickwire.backplane.scripts.PUBLISH` gives the offsets, appends the
history and publishes the relay, atomically). It encodes each message once per variant
beforehand, guessing the offsets from the previous answer (exact while it is the topic's
only publisher), so that every server forwards those bytes without decoding them.

A server follows the topics its clients and listeners want: it subscribes to their
channels first, then reads their epoch and offset (:data:`~tickwire.backplane.scripts.SYNC`),
and delivers each relay in offset order (:func:`tickwire.sansio.relay.place`). A relay after
a gap waits while the missing messages are read from the stream; messages the stream no
longer has are announced with GAP; a new epoch is checked with Redis, then every subscriber
is told that the topic was not recovered. Nothing is dropped silently.

In a Redis Cluster (asked of the node at each connection) the topics spread over the
primaries by their hash tags, relays go by sharded pub/sub (``SPUBLISH``, one subscriber
connection per primary) and each of those connections has its own probe channel.

Failures. Every command has a deadline; the pub/sub connection is probed (a message to
itself every ``probe_interval``, which must come back within ``probe_timeout``). Any failure
ends the session: the process reconnects with backoff, then re-reads every followed topic,
fetching what it missed. Messages waiting to be published stay queued (and are sent again
with the same publish id, which the script remembers, so a retry never duplicates them)
until ``publish_timeout``; the callers of ``publish()`` are then told, and what
``publish_nowait()`` had taken is counted and logged as failed.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import logging
import math
import os
import random
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import attrs
import coredis
import coredis.connection
import coredis.exceptions
import msgpack
import trio
from attrs.validators import ge, gt, instance_of, optional

from tickwire.backplane.scripts import PUBLISH, RANGE, REGISTER, SYNC, Keys, slot
from tickwire.broadcast import DuplicateKey, Hub, Topic, pattern_matches, valid_pattern
from tickwire.config import MiB
from tickwire.errors import BackplaneUnavailable, DecodeError
from tickwire.sansio.negotiation import MSGPACK, MSGPACK_ZSTD, Negotiated
from tickwire.sansio.relay import Kind, Placement, Relay, pack_relay, place, unpack_relay
from tickwire.sansio.table import Changes, Schema
from tickwire.sansio.values import pack_trusted

__all__ = ["BackplaneStatistics", "RedisBackplane", "open_publisher"]

log = logging.getLogger("tickwire.backplane")

# What a failing Redis (or its connection) raises through coredis and anyio.
_FAILURES = (
    coredis.exceptions.RedisError,
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


class _Silent(Exception):
    """The pub/sub connection stopped delivering (the probe did not come back)."""


@attrs.frozen
class BackplaneStatistics:
    """A backplane's figures now.

    Attributes:
        connected: whether it is connected to Redis now.
        cluster: whether that Redis is a Redis Cluster (the topics spread over its
            primaries).
        sessions: connections made to Redis (the first, then each reconnection).
        published: messages Redis took from this process.
        round_trips: pipelines of publish calls sent (each one round trip).
        relays: relays received.
        forwarded: wire messages forwarded as the publishing process encoded them.
        fetched: messages read from the shared history (gaps, resumes).
        skipped: messages announced to subscribers with GAP: gone from the history before
            this process got them.
        restarts: topics that started again in a new epoch (Redis lost them).
        silent: pub/sub connections found silent by the probe.
        failed: messages that Redis did not take within ``publish_timeout``.
        pending: messages waiting for Redis now.
        topics: topics this process follows.
    """

    connected: bool
    cluster: bool
    sessions: int
    published: int
    round_trips: int
    relays: int
    forwarded: int
    fetched: int
    skipped: int
    restarts: int
    silent: int
    failed: int
    pending: int
    topics: int


@attrs.define(eq=False, slots=True)
class _Message:
    """A message waiting for Redis."""

    topic: str
    packed: bytes
    key: str | None
    digest: bytes
    stamp: float  # wall clock, when published
    deadline: float  # trio's clock: fail it after this
    done: trio.Event | None = None  # for a caller of publish(): set when answered
    changes: Changes | None = None  # a table delta's change set
    offset: int = 0
    error: BaseException | None = None


@attrs.define(eq=False, slots=True)
class _Call:
    """One topic's messages in one script call (kept as it is for a retry)."""

    topic: str
    topic_id: int
    messages: list[_Message]
    publish_id: str
    keys: list[str]
    args: list[Any]


@attrs.define(eq=False, slots=True)
class _Link:
    """A topic this process follows."""

    name: str
    topic_id: int
    topic: Topic | None = None  # the hub's, once its epoch is known
    epoch: int = 0
    offset: int = 0
    held: list[Relay] = attrs.field(factory=list)  # relays waiting: a join, a repair
    repairing: bool = False
    synced: trio.Event = attrs.field(factory=trio.Event)


def _digest(packed: bytes) -> bytes:
    return hashlib.blake2b(packed, digest_size=16).hexdigest().encode()


@attrs.define(eq=False)
class RedisBackplane:
    """Shares a hub's topics with every process using the same Redis (and *prefix*).

    Give it to the hub (``Hub(backplane=RedisBackplane("redis://127.0.0.1:6379"))``);
    the hub runs it (the server runs the hub). See docs/scaling.md.

    Args:
        url: the Redis server (``redis://``, ``rediss://``, ``unix://``), or any node of
            a Redis Cluster.
        cluster: whether *url* is a node of a Redis Cluster: then the topics spread over
            its primaries by their hash tags, their relays go by sharded pub/sub
            (``SPUBLISH``, one connection per primary). None asks the server at each
            connection (``INFO cluster``).
        prefix: the start of every key and channel: processes with the same prefix
            share their topics.
        variants: the subprotocols a publishing process encodes for; servers encode the
            others themselves.
        max_pending: messages that may wait for Redis (while it is slow or unreachable);
            past it, publishing raises :class:`~tickwire.errors.BackplaneUnavailable`.
        max_pending_bytes: and their bytes.
        max_batch: messages of one topic in one script call.
        publish_timeout: seconds a message may wait for Redis before it fails.
        command_timeout: seconds any Redis command may take before the connection is
            given up and made again.
        probe_interval: seconds between probes of the pub/sub connection.
        probe_timeout: seconds a probe may take to come back; a silent pub/sub connection
            is so found within ``probe_interval + probe_timeout``.
        reconnect_interval: the first pause before reconnecting; it doubles up to
            ``max_reconnect_interval``.
        max_reconnect_interval: the longest pause before reconnecting.
        key_seconds: how long idempotency keys (and each call's answer) are remembered.
        max_fetch: messages read from the history in one call.
    """

    url: str = attrs.field(default="redis://127.0.0.1:6379", validator=instance_of(str))
    cluster: bool | None = attrs.field(default=None, validator=optional(instance_of(bool)))
    prefix: str = attrs.field(default="tw", validator=instance_of(str))
    variants: tuple[str, ...] = attrs.field(default=(MSGPACK_ZSTD, MSGPACK), converter=tuple)
    max_pending: int = attrs.field(default=100_000, validator=[instance_of(int), ge(1)])
    max_pending_bytes: int = attrs.field(default=64 * MiB, validator=[instance_of(int), ge(1)])
    max_batch: int = attrs.field(default=500, validator=[instance_of(int), ge(1)])
    publish_timeout: float = attrs.field(default=10.0, validator=gt(0))
    command_timeout: float = attrs.field(default=5.0, validator=gt(0))
    probe_interval: float = attrs.field(default=1.0, validator=gt(0))
    probe_timeout: float = attrs.field(default=3.0, validator=gt(0))
    reconnect_interval: float = attrs.field(default=0.1, validator=gt(0))
    max_reconnect_interval: float = attrs.field(default=5.0, validator=gt(0))
    key_seconds: int = attrs.field(default=600, validator=[instance_of(int), ge(1)])
    max_fetch: int = attrs.field(default=10_000, validator=[instance_of(int), ge(1)])

    hub: Hub | None = attrs.field(init=False, default=None)
    process: str = attrs.field(init=False, factory=lambda: os.urandom(8).hex())
    _keys: Keys = attrs.field(init=False)
    _client: Any = attrs.field(init=False, default=None)
    _pubsub: Any = attrs.field(init=False, default=None)
    _scripts: dict[str, Any] = attrs.field(init=False, factory=dict)
    _shas: dict[str, str] = attrs.field(init=False, factory=dict)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _connected: trio.Event = attrs.field(init=False, factory=trio.Event)
    _disconnected: trio.Event = attrs.field(init=False, factory=trio.Event)
    _ids: dict[str, int] = attrs.field(init=False, factory=dict)  # the registry, mirrored
    _names: dict[int, str] = attrs.field(init=False, factory=dict)
    _incarnation: bytes | None = attrs.field(init=False, default=None)
    _links: dict[int, _Link] = attrs.field(init=False, factory=dict)  # by cluster id
    _linked: dict[str, _Link] = attrs.field(init=False, factory=dict)  # the same, by name
    _channels: dict[bytes, int] = attrs.field(init=False, factory=dict)  # channel -> topic id
    _patterns: dict[str, None] = attrs.field(init=False, factory=dict)  # followed patterns
    _queue: dict[str, collections.deque[_Message]] = attrs.field(init=False, factory=dict)
    _retry: list[_Call] = attrs.field(init=False, factory=list)  # sent, not answered
    _pending: int = attrs.field(init=False, default=0)
    _pending_bytes: int = attrs.field(init=False, default=0)
    _work: trio.Event = attrs.field(init=False, factory=trio.Event)
    _room: trio.Event = attrs.field(init=False, factory=trio.Event)
    _emptied: trio.Event = attrs.field(init=False, factory=trio.Event)
    _next: dict[int, int] = attrs.field(init=False, factory=dict)  # guessed next offsets
    _calls: Any = attrs.field(init=False, factory=itertools.count)
    _in_cluster: bool = attrs.field(init=False, default=False)  # this session's Redis
    # Each probe channel (one per primary in a cluster): the probes sent, not yet back.
    _probes: dict[bytes, collections.deque[tuple[int, float]]] = attrs.field(
        init=False, factory=dict
    )
    _declared: dict[str, bytes] = attrs.field(init=False, factory=dict)  # tables: info
    _info: dict[str, bytes] = attrs.field(init=False, factory=dict)  # the registry's
    _due: dict[str, float] = attrs.field(init=False, factory=dict)  # a window's end
    # Counters (statistics()).
    sessions: int = attrs.field(init=False, default=0)
    published: int = attrs.field(init=False, default=0)
    round_trips: int = attrs.field(init=False, default=0)
    relays: int = attrs.field(init=False, default=0)
    forwarded: int = attrs.field(init=False, default=0)
    fetched: int = attrs.field(init=False, default=0)
    skipped: int = attrs.field(init=False, default=0)
    restarts: int = attrs.field(init=False, default=0)
    silent: int = attrs.field(init=False, default=0)
    failed: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        for token in self.variants:
            Negotiated.of(token)  # ValueError-like NegotiationError for an unknown token
        self._keys = Keys(self.prefix)
        self._room.set()
        self._disconnected.set()

    # -- state ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether it is connected to Redis now."""
        return self._connected.is_set()

    def statistics(self) -> BackplaneStatistics:
        """The figures now."""
        return BackplaneStatistics(
            connected=self.ready,
            cluster=self._in_cluster,
            sessions=self.sessions,
            published=self.published,
            round_trips=self.round_trips,
            relays=self.relays,
            forwarded=self.forwarded,
            fetched=self.fetched,
            skipped=self.skipped,
            restarts=self.restarts,
            silent=self.silent,
            failed=self.failed,
            pending=self._pending,
            topics=len(self._links),
        )

    def counters(self) -> dict[str, int]:
        """:meth:`statistics` by name, for ``/metrics`` (``connected`` is 1 or 0)."""
        return {k: int(v) for k, v in attrs.asdict(self.statistics()).items()}

    @property
    def keys(self) -> Keys:
        """The names of the keys and channels in Redis now (they change with the
        registry's incarnation)."""
        return self._keys

    def topic_id(self, name: str) -> int | None:
        """The cluster's id of topic *name*, if it has one yet."""
        return self._ids.get(name)

    @property
    def process_id(self) -> bytes:
        """This process's id in the relays it publishes (8 random bytes)."""
        return bytes.fromhex(self.process)

    async def wait_connected(self) -> None:
        """Wait until it is connected to Redis."""
        await self._connected.wait()

    async def wait_disconnected(self) -> None:
        """Wait until it has lost its connection to Redis (or is not connected now)."""
        await self._disconnected.wait()

    # -- publishing -------------------------------------------------------------------------

    def check_room(self) -> None:
        """Raise :class:`~tickwire.errors.BackplaneUnavailable` unless a publish can be
        taken now (connected, and room in what waits for Redis)."""
        if not self.ready:
            raise BackplaneUnavailable("the backplane is not connected to Redis")
        if not self._has_room(0):
            raise BackplaneUnavailable(
                f"{self._pending} messages wait for Redis already: try again later"
            )

    def submit_delta(self, topic: str, packed: bytes, changes: Changes) -> None:
        """Take one table delta to publish soon (:meth:`check_room` said yes before the
        table changed: it is taken whatever waits)."""
        message = self._message(topic, packed, None)
        message.changes = changes
        self._take(message, force=True)

    def declare(self, topic: str, info: Any) -> None:
        """Register table *topic* with its schema's *info* and follow it, as soon as it is
        connected (``await hub.join(topic)`` waits for it)."""
        self._declared[topic] = msgpack.packb(info, use_bin_type=True)
        if self.ready:
            self._spawn(self._declare_soon, [topic])

    async def _declare_soon(self, names: list[str]) -> None:
        with contextlib.suppress(*_FAILURES, BackplaneUnavailable):
            await self._register(names)
            await self._follow(names)

    def submit(self, topic: str, packed: bytes, *, key: str | None) -> None:
        """Take one stream message (packed by the hub's value gate) to publish soon.

        Raises:
            BackplaneUnavailable: not connected, or ``max_pending`` messages (or
                ``max_pending_bytes``) wait already; nothing was taken.
        """
        if not self.ready:
            raise BackplaneUnavailable("the backplane is not connected to Redis")
        self._take(self._message(topic, packed, key))

    async def publish(self, topic: str, packed: bytes, *, key: str | None, timeout: float) -> int:
        """Publish one stream message; return the offset Redis gave it (the original
        offset for a key published already).

        Raises:
            BackplaneUnavailable: Redis did not take it within *timeout*.
            DuplicateKey: *key* was used for another payload.
        """
        deadline = trio.current_time() + timeout
        refused = await self._wait_to_queue(len(packed), deadline, timeout)
        await trio.lowlevel.checkpoint()
        if refused is not None:
            raise refused
        message = self._message(topic, packed, key, deadline=min(deadline, math.inf))
        message.done = trio.Event()
        self._take(message)
        await message.done.wait()
        if message.error is not None:
            raise message.error
        return message.offset

    async def publish_many(
        self, messages: Sequence[tuple[str, bytes, str | None]], *, timeout: float
    ) -> list[int | BaseException]:
        """Publish stream messages (topic, packed payload, idempotency key) in this order:
        each is queued for Redis behind the one before it, so that they share round trips,
        and the call returns once every one is answered, with its offset or its error in
        the same order. Once one cannot be queued within *timeout* (no room, Redis
        unreachable), neither is any after it: those fail with BackplaneUnavailable, and
        a retry of that tail keeps the order. A queued message waits for Redis as long as
        it takes (it is never failed for its age, which could let one after it through
        first); what waits is bounded by *max_pending* and *max_pending_bytes*."""
        deadline = trio.current_time() + timeout
        taken: list[_Message | BaseException] = []
        refused: BaseException | None = None
        for topic, packed, key in messages:
            if refused is None:
                refused = await self._wait_to_queue(len(packed), deadline, timeout)
            if refused is not None:
                taken.append(refused)
                continue
            message = self._message(topic, packed, key, deadline=math.inf)
            message.done = trio.Event()
            self._take(message)
            taken.append(message)
        await trio.lowlevel.checkpoint()
        results: list[int | BaseException] = []
        for item in taken:
            if isinstance(item, _Message):
                assert item.done is not None
                await item.done.wait()
                results.append(item.offset if item.error is None else item.error)
            else:
                results.append(item)
        return results

    async def _wait_to_queue(
        self, size: int, deadline: float, timeout: float
    ) -> BackplaneUnavailable | None:
        """Wait, until *deadline*, for Redis and for room for *size* more bytes; None once
        a message may be queued, else why not. Waits only when it must (no checkpoint when
        there is room), so that messages queued one after another go to Redis together."""
        if self.ready and self._has_room(size):
            return None
        with trio.move_on_at(deadline):
            while not self._has_room(size):
                await self._room.wait()
            await self._connected.wait()
        if self.ready and self._has_room(size):
            return None
        return BackplaneUnavailable(
            "the backplane could not take the message within "
            f"{timeout:g} s (Redis is unreachable or slow)"
        )

    def _message(
        self, topic: str, packed: bytes, key: str | None, *, deadline: float | None = None
    ) -> _Message:
        now = trio.current_time()
        return _Message(
            topic,
            packed,
            key,
            _digest(packed) if key is not None else b"",
            time.time(),
            now + self.publish_timeout if deadline is None else deadline,
        )

    def _has_room(self, size: int) -> bool:
        return (
            self._pending < self.max_pending
            and self._pending_bytes + size <= self.max_pending_bytes
        )

    async def flushed(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds until nothing waits for Redis; return whether
        nothing does."""
        with trio.move_on_after(timeout):
            while self._pending:
                self._emptied = trio.Event()
                await self._emptied.wait()
        return not self._pending

    def _take(self, message: _Message, *, force: bool = False) -> None:
        if not force and not self._has_room(len(message.packed)):
            raise BackplaneUnavailable(
                f"{self._pending} messages wait for Redis already: try again later"
            )
        queue = self._queue.get(message.topic)
        if queue is None:
            queue = self._queue[message.topic] = collections.deque()
            self._due[message.topic] = trio.current_time() + self._window(message)
        queue.append(message)
        self._pending += 1
        self._pending_bytes += len(message.packed)
        if not self._has_room(0):
            self._room = trio.Event()
        self._work.set()

    def _answered(
        self, message: _Message, offset: int = 0, error: BaseException | None = None
    ) -> None:
        self._pending -= 1
        self._pending_bytes -= len(message.packed)
        self._room.set()
        if not self._pending:
            self._emptied.set()
        message.offset, message.error = offset, error
        if message.done is not None:
            message.done.set()
        elif error is not None:
            self.failed += 1
            log.error(
                "a message published on %s was not taken by Redis: %s",
                message.topic,
                error,
                extra={"topic": message.topic},
            )

    def _expire(self, now: float) -> None:
        """Fail the messages that waited past their deadline (Redis unreachable)."""
        for topic, queue in list(self._queue.items()):
            while queue and queue[0].deadline <= now:
                message = queue.popleft()
                self._answered(
                    message,
                    error=BackplaneUnavailable(
                        f"Redis did not take the message on {topic} in time"
                    ),
                )
            if not queue:
                del self._queue[topic]
                self._due.pop(topic, None)
        kept = []
        for call in self._retry:
            if all(m.deadline <= now for m in call.messages):
                for message in call.messages:
                    self._answered(
                        message,
                        error=BackplaneUnavailable(
                            f"Redis did not take the message on {call.topic} in time"
                        ),
                    )
            else:
                kept.append(call)
        self._retry = kept

    def _window(self, message: _Message) -> float:
        """How long a message waits for others of its topic: the topic's batch window
        (one BATCH for all), unless the hub merged a table's window already."""
        assert self.hub is not None
        config = self.hub.config_for(message.topic)
        window = config.batch_window
        if window is None or (message.changes is not None and config.merge):
            return 0.0
        return window

    async def _sender(self) -> None:
        """Send what waits (and is due), one pipeline of script calls at a time."""
        while True:
            now = trio.current_time()
            due = [name for name, at in self._due.items() if at <= now]
            if not self._retry and not due:
                self._work = trio.Event()
                with trio.move_on_at(min(self._due.values(), default=math.inf)):
                    await self._work.wait()
                continue
            names = [name for name in due if name not in self._ids]
            if names:
                await self._register(names)
            calls = self._retry
            self._retry = []
            for name in due:
                queue = self._queue[name]
                taken = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
                if not queue:
                    del self._queue[name]
                    del self._due[name]
                calls.append(self._call(name, taken))
            if calls:
                await self._send(calls)

    def _call(self, name: str, messages: list[_Message]) -> _Call:
        assert self.hub is not None
        topic_id = self._ids[name]
        keys = self._keys
        guess = self._next.get(topic_id, 0)
        link = self._linked.get(name)
        if not guess and link is not None and link.topic is not None:
            guess = link.offset + 1
        payloads = [m.packed for m in messages]
        table = messages[0].changes is not None
        config = self.hub.config_for(name)
        batch = config.batch_window is not None and not (table and config.merge)
        if guess:
            groups, frames = self.hub.encode_relay(
                topic_id, guess, payloads, batch=batch, tokens=self.variants
            )
        else:
            groups, frames = (1,) * len(payloads), {}
        relay = Relay(
            topic_id,
            Kind.TABLE if table else Kind.STREAM,
            bytes.fromhex(self.process),
            messages[0].stamp,
            tuple(payloads),
            tuple(groups),
            frames,
            self.hub.dictionary_digest,
        )
        publish_id = f"{self.process}:{next(self._calls)}"
        redis_keys = [
            keys.meta(topic_id),
            keys.history(topic_id),
            keys.done(topic_id, publish_id),
            keys.rows(topic_id),
        ]
        per_message: list[Any] = []
        for message in messages:
            index = 0
            if message.key is not None:
                redis_keys.append(keys.key(topic_id, message.key))
                index = len(redis_keys)
            per_message += [message.packed, index, message.digest]
        history = config.history_size
        if table:
            schema = self._schema(name)
            assert schema is not None
            width = len(schema.fields)
            for message in messages:
                assert message.changes is not None
                operations = _row_operations(message.changes, width)
                per_message.append(len(operations) // 3)
                per_message += operations
        args: list[Any] = [
            keys.channel(topic_id),
            random.getrandbits(31),
            guess,
            history,
            pack_relay(relay),
            len(messages),
            self.key_seconds,
            self._publish_command,
            1 if table else 0,
            *per_message,
        ]
        return _Call(name, topic_id, messages, publish_id, redis_keys, args)

    async def _send(self, calls: list[_Call]) -> None:
        client = self._client
        try:
            with trio.fail_after(self.command_timeout):
                async with client.pipeline(transaction=False, raise_on_error=False) as pipe:
                    requests: list[Any] = [
                        pipe.evalsha(self._shas["publish"], keys=call.keys, args=call.args)
                        for call in calls
                    ]
                results = [await r for r in requests]
            for result in results:
                if isinstance(result, BaseException):
                    # Redis forgot the scripts (the next session loads them), or a node of
                    # a cluster failed: every call goes again, with its publish id (those
                    # that were applied answer from their kept result).
                    raise result
        except BaseException:
            self._retry = calls + self._retry  # sent again, as they are, after reconnecting
            raise
        self.round_trips += 1
        for call, result in zip(calls, results, strict=True):
            self._answer(call, result)

    def _answer(self, call: _Call, result: Any) -> None:
        _epoch, first, _valid, *offsets = result
        if first == 0:  # some keys were seen: answer those, send the rest again
            again = []
            for message, offset in zip(call.messages, offsets, strict=True):
                if offset > 0:
                    self._answered(message, offset)
                elif offset < 0:
                    error = DuplicateKey(
                        f"idempotency key {message.key!r} was used for another payload"
                    )
                    self._answered(message, error=error)
                else:
                    again.append(message)
            if again:
                queue = self._queue.setdefault(call.topic, collections.deque())
                queue.extendleft(reversed(again))
                self._due.setdefault(call.topic, trio.current_time())
                self._work.set()
            return
        self.published += len(call.messages)
        for message, offset in zip(call.messages, offsets, strict=True):
            self._answered(message, offset)
        self._next[call.topic_id] = offsets[-1] + 1

    # -- the registry ------------------------------------------------------------------------

    async def _register(
        self, names: Sequence[str], *, wanted: dict[str, int] | None = None
    ) -> None:
        """Give *names* their cluster ids (registering those that have none)."""
        keys = self._keys
        client = self._client
        with trio.fail_after(self.command_timeout):
            async with client.pipeline(transaction=False) as pipe:
                requests: list[Any] = [
                    pipe.evalsha(
                        self._shas["register"],
                        keys=[keys.names, keys.ids, keys.sequence, keys.info, keys.incarnation],
                        args=[
                            name,
                            (wanted or {}).get(name, 0),
                            self._declared.get(name, b""),
                            keys.registry_channel,
                            self._publish_command,
                            os.urandom(8).hex(),
                        ],
                    )
                    for name in names
                ]
            results = [await r for r in requests]
        for name, (topic_id, _created, incarnation, info) in zip(names, results, strict=True):
            self._known(topic_id, name, info or None)
            if self._incarnation is not None and incarnation != self._incarnation:
                raise coredis.exceptions.ConnectionError("Redis lost its data meanwhile")

    def _known(self, topic_id: int, name: str, info: bytes | None = None) -> None:
        self._ids[name] = topic_id
        self._names[topic_id] = name
        if info:
            self._info[name] = info

    async def _load_registry(self) -> bool:
        """Read the registry; return whether Redis is the same data set as before (False
        after it lost its data: a restart without persistence, a new server)."""
        keys = self._keys
        client = self._client
        with trio.fail_after(self.command_timeout):
            await client.set(keys.incarnation, os.urandom(8).hex(), condition=coredis.PureToken.NX)
            incarnation = await client.get(keys.incarnation)
            names = await client.hgetall(keys.names)
            infos = await client.hgetall(keys.info)
        same = self._incarnation is None or incarnation == self._incarnation
        self._incarnation = incarnation
        self._keys = Keys(self.prefix, _text(incarnation))
        if not same:
            self._ids.clear()
            self._names.clear()
            self._info.clear()
            self._next.clear()
            # Calls sent to the lost registry's keys go again as new calls, under the new
            # registry's ids and keys (a topic there starts a new epoch: its subscribers
            # are told, so a message that reached the old keys as well is not hidden).
            now = trio.current_time()
            for call in reversed(self._retry):
                self._queue.setdefault(call.topic, collections.deque()).extendleft(
                    reversed(call.messages)
                )
                self._due.setdefault(call.topic, now)
            self._retry = []
        for name, topic_id in names.items():
            self._known(int(topic_id), name.decode(), infos.get(name))
        return same

    def _registered(self, data: bytes) -> None:
        """A topic was registered somewhere (or declared a table): follow it if this
        process wants it."""
        assert self.hub is not None
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(data)
        topic_id, name = next(unpacker), next(unpacker)
        info = data[len(msgpack.packb(topic_id)) + len(msgpack.packb(name)) :]
        self._known(topic_id, name, info or None)
        local = self.hub.topic_by_name(name)
        if info and local is not None and local.table is None:
            # Followed as a stream before its writer declared it a table: it becomes one
            # (its subscribers are told again, with the schema and a snapshot).
            try:
                self.hub.table(name, Schema.from_info(msgpack.unpackb(info)))
            except ValueError as exc:
                log.error("topic %s: declared a table, but %s", name, exc)
        if name not in self._linked and (
            self.hub.wanted(name) or any(pattern_matches(p, name) for p in self._patterns)
        ):
            self._spawn(self._follow_soon, name)

    async def _follow_soon(self, name: str) -> None:
        with contextlib.suppress(*_FAILURES, BackplaneUnavailable):
            await self._follow([name])

    # -- following topics --------------------------------------------------------------------

    async def join(self, pattern: str, *, create: bool, client: bool) -> None:
        """Follow the topics *pattern* names; with *create*, register a name that has
        no id yet. Not connected (a server that has just started), it waits for the
        connection up to ``command_timeout``.

        Raises:
            ValueError: an invalid pattern.
            BackplaneUnavailable: not connected, or Redis failed meanwhile.
        """
        if not valid_pattern(pattern):
            raise ValueError(f"invalid topic pattern: {pattern!r}")
        if not self.ready:
            with trio.move_on_after(self.command_timeout):
                await self._connected.wait()
        if not self.ready:
            raise BackplaneUnavailable("the backplane is not connected to Redis")
        exact = "*" not in pattern.split(".")
        try:
            if exact:
                if pattern not in self._ids:
                    if not create:
                        await trio.lowlevel.checkpoint()
                        return
                    await self._register([pattern])
                await self._follow([pattern], client=client)
            else:
                self._patterns[pattern] = None
                names = [n for n in self._ids if pattern_matches(pattern, n)]
                await self._follow(names)
        except _FAILURES as exc:
            raise BackplaneUnavailable(f"Redis failed: {exc}") from exc

    async def _follow(self, names: Sequence[str], *, client: bool = False) -> None:
        """Follow *names* (registered already): subscribe to their channels, then read
        their epoch and offset; return when each is a local topic of the hub."""
        waiting: list[trio.Event] = []
        new: list[_Link] = []
        for name in names:
            link = self._linked.get(name)  # (its id may be a lost registry's until resumed)
            if link is None:
                topic_id = self._ids[name]
                link = self._links[topic_id] = self._linked[name] = _Link(name, topic_id)
                self._channels[self._keys.channel(topic_id).encode()] = topic_id
                new.append(link)
            waiting.append(link.synced)
        if new:
            try:
                with trio.fail_after(self.command_timeout):
                    await self._pubsub.subscribe(*(self._keys.channel(x.topic_id) for x in new))
                await self._sync(new, client=client)
            except BaseException:
                for link in new:
                    if link.topic is None:
                        self._unlink(link)
                raise
        for event in waiting:
            await event.wait()
        for name in names:
            link = self._linked.get(name)
            if link is None or link.topic is None:
                raise BackplaneUnavailable(f"could not follow {name!r}: Redis failed meanwhile")

    def _unlink(self, link: _Link) -> None:
        self._links.pop(link.topic_id, None)
        self._linked.pop(link.name, None)
        self._channels.pop(self._keys.channel(link.topic_id).encode(), None)
        link.synced.set()

    async def _sync(self, links: Sequence[_Link], *, client: bool = False) -> None:
        """Read (or create) the epoch and top offset of *links* and bring each up to date:
        a new local topic at the top (a table with the cluster's rows), or what it missed
        fetched, or a new epoch."""
        assert self.hub is not None
        keys = self._keys
        with trio.fail_after(self.command_timeout):
            async with self._client.pipeline(transaction=False) as pipe:
                requests: list[Any] = [
                    self._scripts["sync"](
                        keys=[
                            keys.meta(x.topic_id),
                            keys.history(x.topic_id),
                            keys.rows(x.topic_id),
                        ],
                        args=[random.getrandbits(31), x.epoch, x.offset],
                        client=pipe,
                    )
                    for x in links
                ]
            results = [await r for r in requests]
        for link, (epoch, top, _how) in zip(links, results, strict=True):
            if link.topic is None:
                schema = self._schema(link.name)
                rows: list[tuple[Any, list[Any]]] = []
                if schema is not None:  # its rows as Redis has them, at their offset
                    epoch, top, rows = await self._rows(link, len(schema.fields))
                link.topic = self.hub.follow(
                    link.name, link.topic_id, epoch, top, client=client, schema=schema, rows=rows
                )
                link.epoch, link.offset = epoch, top
            elif epoch != link.epoch:
                await self._restart(link, epoch, top)
            elif top > link.offset:
                await self._fill(link, top)
            link.synced.set()
            self._drain(link)

    def _schema(self, name: str) -> Schema | None:
        """A table's schema: the hub's, or the registry's; None for a stream."""
        assert self.hub is not None
        topic = self.hub.topic_by_name(name)
        if topic is not None and topic.table is not None:
            return topic.table.schema
        info = self._info.get(name)
        if info is None:
            return None
        return Schema.from_info(msgpack.unpackb(info))

    async def _rows(self, link: _Link, width: int) -> tuple[int, int, list[tuple[Any, list[Any]]]]:
        """A table's (epoch, offset, rows in their order) from Redis, read at once."""
        keys = self._keys
        with trio.fail_after(self.command_timeout):
            result: Any = await self._scripts["range"](
                keys=[
                    keys.meta(link.topic_id),
                    keys.history(link.topic_id),
                    keys.rows(link.topic_id),
                ],
                args=[0, 0, 1],
            )
        epoch, top, _now, _entries, flat = result
        return epoch, top, _table_rows(flat, width)

    async def _restart(self, link: _Link, epoch: int, top: int) -> None:
        """The topic started again in a new epoch (Redis lost it): its subscribers are told;
        a stream goes on from the new epoch's start (its first messages may be in the
        history already: another process published them before this one came back); a
        table takes the rows Redis has now (unless this process writes it)."""
        assert self.hub is not None
        assert link.topic is not None
        self.restarts += 1
        log.warning(
            "topic %s starts again in a new epoch (Redis lost it): its subscribers are "
            "told it was not recovered",
            link.name,
            extra={"topic": link.name},
        )
        table = link.topic.table
        if table is None:
            link.epoch, link.offset = epoch, 0
            self.hub.restart(link.topic, epoch, 0)
            await self._fill(link, top)
            return
        epoch, top, rows = await self._rows(link, len(table.schema.fields))
        link.epoch, link.offset = epoch, top
        if not link.topic.written:
            table.load(rows)
        self.hub.restart(link.topic, epoch, top)

    async def _fill(self, link: _Link, up_to: int) -> None:
        """Deliver the messages after ``link.offset`` up to *up_to* from the history. What
        the history no longer has is announced with GAP; a table then takes the rows Redis
        has (its subscribers ask for a snapshot on a GAP)."""
        assert self.hub is not None
        assert link.topic is not None
        table = link.topic.table
        kind = Kind.STREAM if table is None else Kind.TABLE
        while link.offset < up_to:
            epoch, _top, now_ms, entries = await self._range(link, link.offset, up_to - link.offset)
            if epoch != link.epoch:
                return  # a new epoch meanwhile: the next relay or sync says so
            expected = link.offset + 1
            got = [(o, p, age) for o, p, age in _entries(entries, now_ms) if o >= expected]
            if not got or got[0][0] > expected:
                if table is not None:  # a table cannot skip deltas: it takes Redis's rows
                    epoch, top, rows = await self._rows(link, len(table.schema.fields))
                    if epoch != link.epoch:
                        return
                    if not link.topic.written:
                        table.load(rows)
                    self.skipped += top - link.offset
                    self.hub.skip(link.topic, expected, top)
                    link.offset = top
                    return
                last = (got[0][0] - 1) if got else up_to
                self.skipped += last - link.offset
                self.hub.skip(link.topic, expected, last)
                link.offset = last
            for offset, packed, _age in got:
                if offset > up_to:
                    break
                relay = Relay(
                    link.topic_id,
                    kind,
                    b"",
                    time.time(),
                    (packed,),
                    (1,),
                    epoch=link.epoch,
                    first=offset,
                )
                self.fetched += 1
                self.hub.relayed(link.topic, relay)
                link.offset = offset
            if not got:
                return

    async def _range(self, link: _Link, after: int, count: int) -> tuple[int, int, int, list[Any]]:
        keys = self._keys
        with trio.fail_after(self.command_timeout):
            result: Any = await self._scripts["range"](
                keys=[
                    keys.meta(link.topic_id),
                    keys.history(link.topic_id),
                    keys.rows(link.topic_id),
                ],
                args=[after, min(count, self.max_fetch), 0],
            )
        epoch, top, now_ms, entries, _rows = result
        return epoch, top, now_ms, entries

    async def prefetch(self, topic: Topic, after: int) -> None:
        """Put *topic*'s messages after *after* from the shared history into its local
        history, for a resume (those the history no longer has stay out).

        Raises:
            BackplaneUnavailable: not connected, or Redis failed.
        """
        assert self.hub is not None
        link = self._linked.get(topic.name)
        if link is None or not self.ready:
            raise BackplaneUnavailable("the backplane is not connected to Redis")
        oldest = topic.history[0].offset if topic.history else topic.offset + 1
        try:
            epoch, _top, now_ms, entries = await self._range(link, after, oldest - after - 1)
        except _FAILURES as exc:
            raise BackplaneUnavailable(f"Redis failed: {exc}") from exc
        if epoch != topic.epoch:
            return
        got = [(o, age, p) for o, p, age in _entries(entries, now_ms) if after < o < oldest]
        self.fetched += self.hub.backfill(topic, got)

    # -- receiving ---------------------------------------------------------------------------

    async def _receiver(self, pubsub: Any) -> None:
        registry = self._keys.registry_channel.encode()
        async for message in pubsub:
            kind, channel, data = message["type"], message["channel"], message["data"]
            if kind in ("unsubscribe", "sunsubscribe"):
                # Never asked for: Redis dropped a subscription (a cluster slot moved to
                # another primary). The next session subscribes where the slot is now.
                raise coredis.exceptions.ConnectionError(f"Redis unsubscribed {channel!r}")
            if kind != "message":
                continue
            sent = self._probes.get(channel)
            if sent is not None:
                seen = int(data)
                while sent and sent[0][0] <= seen:
                    sent.popleft()
            elif channel == registry:
                self._registered(data)
            else:
                topic_id = self._channels.get(channel)
                link = None if topic_id is None else self._links.get(topic_id)
                if link is not None:
                    self._arrived(link, data)

    def _arrived(self, link: _Link, data: bytes) -> None:
        try:
            relay = unpack_relay(data)
        except DecodeError as exc:  # another version of tickwire, or not ours
            log.error("topic %s: a relay that cannot be read: %s", link.name, exc)
            return
        self.relays += 1
        if link.topic is None or link.repairing or link.held:
            link.held.append(relay)
            return
        self._place(link, relay)

    def _place(self, link: _Link, relay: Relay) -> None:
        assert self.hub is not None
        assert link.topic is not None
        placement = place(link.epoch, link.offset, relay)
        if placement is Placement.NEXT:
            self.forwarded += self.hub.relayed(link.topic, relay)
            link.offset = relay.last
        elif placement is Placement.OVERLAP:
            self.hub.relayed(link.topic, relay, link.offset - relay.first + 1)
            link.offset = relay.last
        elif placement is not Placement.OLD:  # a gap, or a new epoch: ask Redis first
            link.held.append(relay)
            link.repairing = True
            self._spawn(self._repair, link)

    def _drain(self, link: _Link) -> None:
        """Place the held relays, in order, unless one needs a repair."""
        while link.held and not link.repairing and link.topic is not None:
            held = link.held
            link.held = []
            for index, relay in enumerate(held):
                self._place(link, relay)
                if link.repairing:
                    link.held = held[index + 1 :] + link.held
                    # the relay that started the repair is in link.held already, first
                    link.held.sort(key=lambda r: (r.epoch != link.epoch, r.first))
                    return

    async def _repair(self, link: _Link) -> None:
        try:
            await self._sync([link])
        except _FAILURES:
            return  # the session ends; the next one syncs every link
        finally:
            link.repairing = False
        # Redis has just said which epoch is current: a relay of another one is stale (its
        # messages are gone with the epoch Redis lost, and the subscribers were told).
        link.held = [r for r in link.held if r.epoch == link.epoch]
        self._drain(link)

    def _spawn(self, fn: Any, *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    # -- the session -------------------------------------------------------------------------

    async def _prober(self) -> None:
        """Publish a probe to each of this process's own channels every
        ``probe_interval``; the receiver takes it off the list when it comes back."""
        client = self._client
        publish = client.spublish if self._in_cluster else client.publish
        for n in itertools.count(1):
            now = trio.current_time()
            for channel, sent in self._probes.items():
                if sent and now - sent[0][1] > self.probe_timeout:
                    self.silent += 1
                    raise _Silent(f"no probe back on {channel!r} in {self.probe_timeout:g} s")
                sent.append((n, now))
                with trio.fail_after(self.command_timeout):
                    await publish(channel, str(n))
            await trio.sleep(self.probe_interval)

    @property
    def _publish_command(self) -> str:
        return "SPUBLISH" if self._in_cluster else "PUBLISH"

    async def _open(self) -> Any:
        """A client for this session: of a Redis Cluster (see ``cluster``) or of one
        server."""
        options: dict[str, Any] = {
            "decode_responses": False,
            "stream_timeout": self.command_timeout,
            "connect_timeout": self.command_timeout,
        }
        cluster = self.cluster
        if cluster is None:
            single = coredis.Redis.from_url(self.url, **options)
            async with single:
                with trio.fail_after(self.command_timeout):
                    info = await single.info("cluster")
            cluster = bool(info.get("cluster_enabled"))
        self._in_cluster = cluster
        if cluster:
            # The URL's node as a TCPLocation: coredis's own from_url would give a Node,
            # which it deprecates (a DeprecationWarning at every connection).
            where = urllib.parse.urlsplit(self.url)
            host, port = where.hostname or "127.0.0.1", where.port or 6379
            start = coredis.connection.TCPLocation(host, port)
            return coredis.RedisCluster.from_url(self.url, startup_nodes=[start], **options)
        return coredis.Redis.from_url(self.url, **options)

    async def _probe_channels(self, client: Any) -> list[bytes]:
        """This process's probe channels: one, or in a cluster one on each primary (a
        hash tag found for a slot of each), so that each pub/sub connection is probed."""
        if not self._in_cluster:
            return [self._keys.probe(self.process).encode()]
        with trio.fail_after(self.command_timeout):
            shards = await client.cluster_shards()
        ranges = []
        for shard in shards:
            bounds = shard[b"slots"]
            ranges.append([(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)])
        channels = []
        for owned in ranges:
            for n in range(1 << 20):
                channel = self._keys.probe(self.process, n)
                where = slot(channel)
                if any(low <= where <= high for low, high in owned):
                    channels.append(channel.encode())
                    break
        return channels

    async def _session(self) -> None:
        assert self.hub is not None
        client = await self._open()
        async with client:
            self._client = client
            self._scripts = {
                "sync": client.register_script(SYNC),
                "range": client.register_script(RANGE),
            }
            # The pipelined ones, loaded once a session and called by digest (a coredis
            # Script in a pipeline asks SCRIPT EXISTS first: a second round trip each).
            with trio.fail_after(self.command_timeout):
                self._shas = {
                    name: _text(await client.script_load(source))
                    for name, source in (("publish", PUBLISH), ("register", REGISTER))
                }
            probes = await self._probe_channels(client)
            channels = [self._keys.registry_channel.encode(), *probes]
            if self._in_cluster:  # one connection per primary, each channel on its slot's
                pubsub = client.sharded_pubsub(
                    retry_policy=None, channels=channels, subscription_timeout=self.command_timeout
                )
            else:
                pubsub = client.pubsub(
                    retry_policy=None, channels=channels, subscription_timeout=self.command_timeout
                )
            async with pubsub, trio.open_nursery() as nursery:
                self._pubsub = pubsub
                self._nursery = nursery
                self._probes = {channel: collections.deque() for channel in probes}
                for link in self._links.values():  # relays wait until _resume has synced it
                    link.repairing = True
                nursery.start_soon(self._receiver, pubsub)
                same = await self._load_registry()
                await self._resume(same)
                declared = list(self._declared)
                if declared:  # tables this process declared: registered with their schema
                    await self._register(declared)
                    await self._follow(declared)
                self.sessions += 1
                self._disconnected = trio.Event()
                self._connected.set()
                log.info("backplane connected to %s", self.url)
                nursery.start_soon(self._sender)
                nursery.start_soon(self._prober)

    async def _resume(self, same: bool) -> None:
        """After (re)connecting: follow every topic again, fetching what was missed, or
        starting a new epoch where Redis lost it."""
        links = list(self._links.values())
        try:
            await self._resync(links, same)
        finally:
            for link in links:
                link.repairing = False
        for link in links:
            self._drain(link)

    async def _resync(self, links: list[_Link], same: bool) -> None:
        if not links:
            return
        if not same:  # an empty Redis: register the names again, keeping the ids if free
            wanted = {x.name: x.topic_id for x in links}
            await self._register(list(wanted), wanted=wanted)
            self._links.clear()
            for link in links:
                link.topic_id = self._ids[link.name]
                self._links[link.topic_id] = link
            # The channels' names hold the incarnation: all of them are new.
            self._channels = {self._keys.channel(x.topic_id).encode(): x.topic_id for x in links}
        with trio.fail_after(self.command_timeout):
            await self._pubsub.subscribe(*(self._keys.channel(x.topic_id) for x in links))
        for start in range(0, len(links), 256):
            await self._sync(links[start : start + 256])

    async def run(
        self, hub: Hub, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect to Redis and relay for *hub* until cancelled, reconnecting after any
        failure (with backoff). It reports started at once: publishing raises
        :class:`~tickwire.errors.BackplaneUnavailable` until it is connected."""
        if self.hub is not None and self.hub is not hub:
            raise RuntimeError("a backplane serves one hub")
        self.hub = hub
        task_status.started()
        pause = self.reconnect_interval
        while True:
            started = trio.current_time()
            try:
                await self._session()
            except (*_FAILURES, _Silent) as exc:
                await trio.lowlevel.checkpoint()  # cancelled: coredis's teardown, not Redis
                log.warning(
                    "backplane: Redis at %s failed (%s: %s); reconnecting",
                    self.url,
                    type(exc).__name__,
                    exc,
                )
            except BaseExceptionGroup as group:
                failures, rest = group.split((*_FAILURES, _Silent))
                if rest is not None and not rest.subgroup(
                    lambda e: not isinstance(e, trio.Cancelled | BaseExceptionGroup)
                ):
                    rest = None  # only cancellations: the checkpoint below raises ours
                if rest is not None:
                    raise rest from None
                await trio.lowlevel.checkpoint()
                log.warning("backplane: Redis at %s failed (%r); reconnecting", self.url, failures)
            finally:
                self._connected = trio.Event()
                self._disconnected.set()
                self._nursery = None
                self._client = self._pubsub = None
            self._expire(trio.current_time())
            if trio.current_time() - started > 10 * self.max_reconnect_interval:
                pause = self.reconnect_interval  # it had been up for a while
            await trio.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, self.max_reconnect_interval)
            self._expire(trio.current_time())


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(entries: list[Any], now_ms: int) -> list[tuple[int, bytes, float]]:
    """XRANGE's answer as (offset, packed payload, age in seconds)."""
    out = []
    for entry_id, fields in entries:
        offset = int(entry_id.split(b"-")[0])
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        age = max(0.0, (now_ms - int(values[b"t"])) / 1000)
        out.append((offset, values[b"p"], age))
    return out


def _table_rows(flat: list[Any], width: int) -> list[tuple[Any, list[Any]]]:
    """A table's rows hash (HGETALL's flat answer) as (key, wire values), in row order."""
    rows: dict[bytes, dict[int, Any]] = {}
    for field, value in zip(flat[::2], flat[1::2], strict=True):
        packed_key, index = bytes(field[:-1]), field[-1]
        row = rows.setdefault(packed_key, {})
        row[index] = int(value) if index == ROW_PLACE else msgpack.unpackb(value)
    ordered = sorted(rows.items(), key=lambda item: item[1].get(ROW_PLACE, math.inf))
    return [
        (msgpack.unpackb(packed_key), [fields.get(i) for i in range(width)])
        for packed_key, fields in ordered
    ]


def _row_operations(changes: Changes, width: int) -> list[Any]:
    """A delta's operations on the table's rows hash (see the PUBLISH script)."""
    out: list[Any] = []
    for key, fields in changes.items():
        packed_key = pack_trusted(key)
        if fields is None:
            out += [x for i in range(width) for x in ("D", packed_key + bytes((i,)), "")]
            out += ["D", packed_key + bytes((ROW_PLACE,)), ""]
            continue
        if len(fields) == width:  # a new row (or every field): its place, if it has none
            out += ["C", packed_key + bytes((ROW_PLACE,)), ""]
        for i, wire in fields.items():
            out += ["S", packed_key + bytes((i,)), pack_trusted(wire)]
    return out


ROW_PLACE = 0xFF  # the row field that holds a row's place in the table


@contextlib.asynccontextmanager
async def open_publisher(
    url: str = "redis://127.0.0.1:6379",
    *,
    connect_timeout: float = 10.0,
    hub: Hub | None = None,
    **options: Any,
) -> AsyncIterator[Hub]:
    """A hub that publishes into the cluster from a process that serves no clients (a
    backend): ``async with open_publisher(url) as hub: await hub.publish(...)``.

    Args:
        url: the Redis server.
        connect_timeout: seconds to wait for the first connection.
        hub: the hub to use (made with a :class:`RedisBackplane` if None).
        options: for :class:`RedisBackplane` when it makes one.

    Raises:
        BackplaneUnavailable: not connected within *connect_timeout*.
    """
    if hub is None:
        hub = Hub(backplane=RedisBackplane(url, **options))
    backplane = hub.backplane
    if not isinstance(backplane, RedisBackplane):
        raise ValueError("open_publisher needs a hub with a RedisBackplane")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        with trio.move_on_after(connect_timeout):
            await backplane.wait_connected()
        if not backplane.ready:
            nursery.cancel_scope.cancel()
            raise BackplaneUnavailable(
                f"could not connect to Redis at {url} in {connect_timeout:g} s"
            )
        try:
            yield hub
            await backplane.flushed(connect_timeout)
        finally:
            nursery.cancel_scope.cancel()
