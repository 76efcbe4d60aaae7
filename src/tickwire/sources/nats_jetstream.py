"""A source that consumes NATS JetStream through a durable pull consumer (nats-py).

Imports: nats (the ``nats`` extra), trio, attrs, tickwire.sources.bridge,
tickwire.sources._asyncio.

Theory of operation. nats-py, the NATS maintainers' client, is asyncio-only; it runs on its
own loop in a worker thread (:mod:`tickwire.sources._asyncio`), and each message is handed
to the bridge in trio. The source pulls at most *batch* messages at a time from the
durable consumer *durable* on *subjects* of stream *stream*, with explicit
acknowledgement:

- each pulled batch is handed to the bridge at once; a message is acknowledged only
  after the bridge published it (the acknowledgements are flushed to NATS before the
  next pull), or after it was dead-lettered (published to *dead_letters* with the reason
  in the ``Tickwire-Reason`` header, then terminated: ``term``, never redelivered);
- unacknowledged messages come again after *ack_wait* seconds, from this consumer or any
  other bridge on the same durable (a bridge killed mid-batch); JetStream's delivery count
  marks them as redelivered, and the idempotency key ``<stream>:<stream sequence>``
  publishes each once;
- a bridge that starts while messages are pending acknowledgement (its predecessor died
  with them) waits one ack wait before its first pull, so that those come again before any
  new message and the order per subject is kept (JetStream would otherwise deliver new
  messages while the old ones' ack wait runs);
- while the bridge waits to publish, nothing more is pulled: the batch bounds what is in
  flight.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import attrs

from tickwire.sources._asyncio import AsyncioSource, call_trio, close_despite_cancel
from tickwire.sources.bridge import Dead, Delivery, Handler, Settled

__all__ = ["NatsJetStreamSource"]

log = logging.getLogger("tickwire.sources")


@attrs.define(eq=False)
class NatsJetStreamSource(AsyncioSource):
    """JetStream *stream*'s *subjects* at *url*, through durable consumer *durable*.

    Args:
        url: ``nats://host:port``.
        stream: the JetStream stream (created with *subjects* if it does not exist).
        subjects: the subjects consumed (patterns with ``*`` and ``>``).
        durable: the durable consumer's name, shared by bridges that split the work and
            kept across restarts.
        batch: messages pulled at once (the prefetch).
        ack_wait: seconds before an unacknowledged message is delivered again.
        dead_letters: the subject dead letters are published to (``{subject}``: the
            message's own).
        name: the source's name (metrics, idempotency keys).
        retry_delay: seconds between attempts while NATS is unreachable.
    """

    url: str
    stream: str
    subjects: Sequence[str] = attrs.field(converter=tuple)
    durable: str = "tickwire"
    batch: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    ack_wait: float = 30.0
    dead_letters: str = "dead.{subject}"
    name: str = "nats"
    retry_delay: float = 1.0
    lag: int = attrs.field(init=False, default=0)  # pending in the consumer, last seen
    settled: Settled = attrs.field(init=False, factory=Settled)
    broker = "NATS"

    async def _consume(self, token: Any, handle: Handler, started: Any) -> None:
        """The asyncio side: connect, pull, hand over, acknowledge."""
        import nats
        import nats.errors
        import nats.js.api
        import nats.js.errors

        nc = await nats.connect(self.url, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            try:
                await js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                await js.add_stream(name=self.stream, subjects=list(self.subjects))
            config = nats.js.api.ConsumerConfig(
                ack_policy=nats.js.api.AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                max_ack_pending=max(self.batch, 1),
            )
            subscription = await js.pull_subscribe(
                "", durable=self.durable, stream=self.stream, config=config
            )
            await self._wait_for_redeliveries(js)
            await call_trio(token, started)
            while True:
                try:
                    messages = await subscription.fetch(self.batch, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                await self._batch(nc, token, handle, messages)
                await call_trio(token, self.settled.add_async, len(messages))
                self.lag = messages[-1].metadata.num_pending if messages else 0
        finally:
            await close_despite_cancel(nc.close)

    async def _wait_for_redeliveries(self, js: Any) -> None:
        """Messages a dead bridge left unacknowledged come again only after their ack wait,
        and JetStream delivers new ones meanwhile: fetching at once would publish those
        new ones first. So a start that finds messages pending acknowledgement waits one
        ack wait first: then the redeliveries, which JetStream serves before new messages,
        come first, in order."""
        import asyncio

        info = await js.consumer_info(self.stream, self.durable)
        if info.num_ack_pending:
            wait = info.config.ack_wait or self.ack_wait
            log.info(
                "source %s: %d messages left unacknowledged; waiting %.1f s for them first",
                self.name,
                info.num_ack_pending,
                wait,
            )
            await asyncio.sleep(wait)

    async def _batch(self, nc: Any, token: Any, handle: Handler, messages: list[Any]) -> None:
        """Hand a pulled batch to the bridge at once; dead-letter and terminate what it
        says to, acknowledge the rest, and flush: the acknowledgements have reached NATS
        before the next pull (one that is lost only means a redelivery, published once)."""
        deliveries = []
        for message in messages:
            meta = message.metadata
            deliveries.append(
                Delivery(
                    self.name,
                    f"{meta.stream}:{meta.sequence.stream}",
                    message.subject,
                    bytes(message.data),
                    meta.num_delivered > 1,
                )
            )
        outcomes = await call_trio(token, handle, deliveries)
        for message, delivery, outcome in zip(messages, deliveries, outcomes, strict=True):
            if isinstance(outcome, Dead):
                headers = {"Tickwire-Reason": outcome.reason, "Tickwire-Id": delivery.id}
                subject = self.dead_letters.format(subject=message.subject)
                await nc.publish(subject, message.data, headers=headers)
                await nc.flush()
                await message.term()
            else:
                await message.ack()
        await nc.flush()
