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

Backpressure: at most *batch* entries are read at a time, and the next read waits until
every one of them is handled; a bridge that cannot publish stops reading. Each entry's
payload is its field *field* (``data``); the subject the routes match is the stream's key.
"""

from __future__ import annotations

import contextlib
import logging
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
            if start != "0" and got:
                await self._measure_lag(client)  # what is left behind this batch
            entries = 0
            for stream, items in (got or {}).items():
                for entry in items:
                    entries += 1
                    await self._handle(client, handle, _text(stream), entry, start == "0")
                    if start == "0":
                        last[_text(stream)] = _text(entry.identifier)
            if start != "0" or not entries:
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
                for entry in claimed:
                    await self._handle(client, handle, stream, entry, True)
                if cursor == "0-0" or not claimed:
                    break

    async def _handle(
        self, client: Any, handle: Handler, stream: str, entry: Any, redelivered: bool
    ) -> None:
        identifier = _text(entry.identifier)
        values = entry.field_values
        if values is None:  # deleted (XDEL) while pending: nothing to publish
            await client.xack(stream, self.group, [identifier])
            self.settled.add()
            return
        payload = values.get(self.field.encode())
        if payload is None:
            outcome: Any = Dead(f"no field {self.field!r} in the entry")
        else:
            delivery = Delivery(self.name, f"{stream}:{identifier}", stream, payload, redelivered)
            outcome = await handle(delivery)
        if isinstance(outcome, Dead):
            dead = {b"reason": outcome.reason.encode(), b"stream": stream.encode()}
            dead[b"id"] = identifier.encode()
            dead.update({k: v for k, v in values.items() if k not in dead})
            await client.xadd(self.dead_letters.format(stream=stream), dead)
        await client.xack(stream, self.group, [identifier])
        self.settled.add()

    async def _measure_lag(self, client: Any) -> None:
        """Entries not yet read by the group, per stream (Redis 7's XINFO GROUPS lag)."""
        for stream in self.streams:
            for group in await client.xinfo_groups(stream):
                info = {_text(k): v for k, v in group.items()}
                if _text(info.get("name", "")) == self.group:
                    lag = info.get("lag")
                    self.lag[stream] = int(lag) if lag is not None else -1
