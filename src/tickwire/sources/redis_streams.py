"""A source that consumes Redis Streams through a consumer group (coredis, on trio).

Imports: trio, coredis, attrs, tickwire.sources.bridge.

Theory of operation. The source joins consumer group *group* on every stream of *streams*
(creating the group, and the stream, if needed) as consumer *consumer*. Entries read with
``XREADGROUP`` are pending in Redis until ``XACK``: the source acknowledges an entry only
after the bridge has published it (or dead-lettered it: ``XADD`` to the dead-letter stream
first). So a bridge killed in the middle of a batch leaves those entries pending, and:

- the same consumer, restarted, reads its own pending entries first (``XREADGROUP`` from
  id 0) and hands them over as *redelivered*; the bridge's idempotency keys
  (``<source>:<stream>:<entry id>``) publish each once;
- entries pending at another consumer for longer than *claim_after* seconds (a bridge that
  never came back) are claimed (``XAUTOCLAIM``) and handled the same way.

Each batch read is handed to the bridge at once (published together, sharing Redis round
trips when there is a backplane) and acknowledged at once. Backpressure: at most *batch*
entries are read at a time, and the next read waits until every one of them is handled; a
bridge that cannot publish stops reading. Each entry's
payload is its field *field* (``data``); the subject the routes match is the stream's key.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import attrs
import coredis
import coredis.exceptions
import trio

from tickwire.sources.bridge import Acknowledging, Dead, Delivery, Handler, Settled

__all__ = ["RedisStreamSource"]

log = logging.getLogger("tickwire.sources")
_FAILURES = (coredis.exceptions.RedisError, OSError, trio.TooSlowError)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@attrs.define(eq=False)
class RedisStreamSource(Acknowledging):
    """Redis Streams *streams* at *url*, consumed by *group* as *consumer* (see the module).

    Args:
        url: ``redis://host:port/db``.
        streams: the stream keys.
        group: the consumer group (shared by every bridge that splits the work).
        consumer: this bridge's name in the group; keep it across restarts, so that a
            restarted bridge reads what it left pending first.
        batch: entries read at once (the prefetch).
        block: seconds one read waits for new entries.
        claim_after: seconds after which another consumer's pending entries are claimed,
            or None never to claim.
        field: the entry field holding the payload.
        dead_letters: the stream dead letters go to (``{stream}`` is the entry's stream).
        name: the source's name (metrics, idempotency keys).
        retry_delay: seconds between attempts while Redis is unreachable.
    """

    url: str
    streams: Sequence[str] = attrs.field(converter=tuple)
    group: str = "tickwire"
    consumer: str = "bridge"
    batch: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    block: float = 1.0
    claim_after: float | None = 30.0
    field: str = "data"
    dead_letters: str = "{stream}.dead"
    name: str = "redis"
    retry_delay: float = 1.0
    lag: dict[str, int] = attrs.field(init=False, factory=dict)  # entries not yet read
    _next_lag: float = attrs.field(init=False, default=-math.inf)
    settled: Settled = attrs.field(init=False, factory=Settled)  # entries acknowledged

    async def run(
        self, handle: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume until cancelled; Redis unreachable is retried every *retry_delay*."""
        started = False
        while True:
            try:
                client = coredis.Redis.from_url(self.url, decode_responses=False)
                async with client:
                    await self._join(client)
                    if not started:
                        started = True
                        task_status.started()
                    await self._consume(client, handle)
            except _FAILURES as exc:
                log.warning("source %s: Redis failed (%s); retrying", self.name, exc)
                await trio.sleep(self.retry_delay)

    async def _join(self, client: Any) -> None:
        for stream in self.streams:
            # The group exists already: a restart, or another bridge of the group.
            with contextlib.suppress(coredis.exceptions.StreamDuplicateConsumerGroupError):
                await client.xgroup_create(stream, self.group, "0", mkstream=True)

    async def _consume(self, client: Any, handle: Handler) -> None:
        # Our own pending entries first (a restart after a crash), then new ones.
        await self._read(client, handle, "0")
        next_claim = trio.current_time()
        while True:
            if self.claim_after is not None and trio.current_time() >= next_claim:
                await self._claim(client, handle)
                next_claim = trio.current_time() + self.claim_after / 2
            await self._read(client, handle, ">")

    async def _read(self, client: Any, handle: Handler, start: str) -> None:
        """Read and handle entries: from *start* "0", this consumer's pending ones until
        none is left; from ">", one batch of new ones (waiting up to *block*)."""
        last = dict.fromkeys(self.streams, start)
        while True:
            block = None if start == "0" else max(1, int(self.block * 1000))
            got = await client.xreadgroup(
                self.group, self.consumer, last, count=self.batch, block=block
            )
            if start != "0":
                await self._note_lag(client, got or {})
            batch = [(_text(stream), e) for stream, items in (got or {}).items() for e in items]
            await self._handle(client, handle, batch, start == "0")
            for stream, entry in batch:
                last[stream] = _text(entry.identifier)
            if start != "0" or not batch:
                return

    async def _claim(self, client: Any, handle: Handler) -> None:
        """Take over entries another consumer has left pending for *claim_after*."""
        assert self.claim_after is not None
        idle = max(1, int(self.claim_after * 1000))
        for stream in self.streams:
            cursor = "0-0"
            while True:
                reply = await client.xautoclaim(
                    stream, self.group, self.consumer, idle, cursor, count=self.batch
                )
                cursor, claimed = _text(reply[0]), reply[1]
                await self._handle(client, handle, [(stream, entry) for entry in claimed], True)
                if cursor == "0-0" or not claimed:
                    break

    async def _handle(
        self, client: Any, handle: Handler, batch: list[tuple[str, Any]], redelivered: bool
    ) -> None:
        """Hand a batch to the bridge at once, dead-letter what it says to, then
        acknowledge the whole batch (one XACK per stream)."""
        if not batch:
            return
        outcomes: list[Any] = [None] * len(batch)
        deliveries, where = [], []
        for index, (stream, entry) in enumerate(batch):
            values = entry.field_values
            if values is None:  # deleted (XDEL) while pending: nothing to publish
                continue
            payload = values.get(self.field.encode())
            if payload is None:
                outcomes[index] = Dead(f"no field {self.field!r} in the entry")
                continue
            identifier = _text(entry.identifier)
            deliveries.append(
                Delivery(self.name, f"{stream}:{identifier}", stream, payload, redelivered)
            )
            where.append(index)
        handled = await handle(deliveries) if deliveries else []
        for index, outcome in zip(where, handled, strict=True):
            outcomes[index] = outcome
        dead = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, Dead)]
        if dead:
            async with client.pipeline(transaction=False) as pipe:
                for index, outcome in dead:
                    stream, entry = batch[index]
                    fields = {b"reason": outcome.reason.encode(), b"stream": stream.encode()}
                    fields[b"id"] = _text(entry.identifier).encode()
                    fields.update({k: v for k, v in entry.field_values.items() if k not in fields})
                    pipe.xadd(self.dead_letters.format(stream=stream), fields)
        by_stream: dict[str, list[str]] = {}
        for stream, entry in batch:
            by_stream.setdefault(stream, []).append(_text(entry.identifier))
        for stream, identifiers in by_stream.items():
            await client.xack(stream, self.group, identifiers)
        self.settled.add(len(batch))

    async def _note_lag(self, client: Any, got: Any) -> None:
        """What is left behind a read of new entries, per stream: nothing where the read
        returned less than a batch; else Redis 7's XINFO GROUPS lag, asked once a second
        at most (a round trip per stream)."""
        returned = {_text(stream): len(items) for stream, items in got.items()}
        full = []
        for stream in self.streams:
            if returned.get(stream, 0) < self.batch:
                self.lag[stream] = 0
            else:
                full.append(stream)
        if full and trio.current_time() >= self._next_lag:
            self._next_lag = trio.current_time() + 1.0
            await self._measure_lag(client, full)

    async def _measure_lag(self, client: Any, streams: Sequence[str]) -> None:
        """Entries not yet read by the group, per stream (Redis 7's XINFO GROUPS lag)."""
        for stream in streams:
            for group in await client.xinfo_groups(stream):
                info = {_text(k): v for k, v in group.items()}
                if _text(info.get("name", "")) == self.group:
                    lag = info.get("lag")
                    self.lag[stream] = int(lag) if lag is not None else -1
