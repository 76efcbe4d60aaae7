"""A source that consumes a RabbitMQ queue (AMQP 0-9-1, aio-pika).

Imports: aio_pika (the ``rabbitmq`` extra), trio, attrs, tickwire.sources.bridge,
tickwire.sources._asyncio.

Theory of operation. aio-pika (on aiormq and pamqp, the maintained AMQP stack for Python)
is asyncio-only; it runs on its own loop in a worker thread
(:mod:`tickwire.sources._asyncio`) and each message is handed to the bridge in trio. The
source declares its durable queue *queue*, binds it to topic exchanges (*bindings*), and
consumes with manual acknowledgement and a prefetch of *prefetch*:

- what has arrived is handed to the bridge as one batch (up to *prefetch*), and
  acknowledged at once with one multiple ``basic.ack``;
- a message is acknowledged only after the bridge published it, or after it was
  dead-lettered (published, with publisher confirms, to the durable queue *dead_letters*
  with the reason in the ``tickwire-reason`` header);
- messages unacknowledged when the bridge's connection goes (a crash, kill -9) are put
  back by RabbitMQ and delivered again with the *redelivered* flag; the idempotency key is
  the message's ``message_id`` (publishers should set one), else a digest of its routing
  key and body, so that each is published once;
- RabbitMQ sends at most *prefetch* unacknowledged messages: while the bridge waits to
  publish, nothing more arrives (AMQP's own flow control).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import attrs

from tickwire.sources._asyncio import AsyncioSource, call_trio, close_despite_cancel
from tickwire.sources.bridge import Dead, Delivery, Handler, Settled

__all__ = ["RabbitMqSource"]


@attrs.define(eq=False)
class RabbitMqSource(AsyncioSource):
    """RabbitMQ queue *queue* at *url* (see the module's theory of operation).

    Args:
        url: ``amqp://user:password@host:port/vhost``.
        queue: the queue consumed (declared durable).
        bindings: (exchange, routing key pattern) pairs the queue is bound to; each
            exchange is declared as a durable topic exchange.
        prefetch: unacknowledged messages RabbitMQ may send at once.
        dead_letters: the durable queue dead letters go to (``{queue}``: this one's name).
        name: the source's name (metrics, idempotency keys).
        retry_delay: seconds between attempts while RabbitMQ is unreachable.
    """

    url: str
    queue: str
    bindings: Sequence[tuple[str, str]] = attrs.field(default=(), converter=tuple)
    prefetch: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    dead_letters: str = "{queue}.dead"
    name: str = "rabbitmq"
    retry_delay: float = 1.0
    settled: Settled = attrs.field(init=False, factory=Settled)
    broker = "RabbitMQ"

    async def _consume(self, token: Any, handle: Handler, started: Any) -> None:
        """The asyncio side: connect, declare, consume, hand over, acknowledge."""
        import aio_pika

        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel()  # publisher confirms: on
            await channel.set_qos(prefetch_count=self.prefetch)
            queue = await channel.declare_queue(self.queue, durable=True)
            dead = self.dead_letters.format(queue=self.queue)
            await channel.declare_queue(dead, durable=True)
            for exchange_name, routing_key in self.bindings:
                exchange = await channel.declare_exchange(
                    exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                )
                await queue.bind(exchange, routing_key)
            await call_trio(token, started)
            arrived: asyncio.Queue[Any] = asyncio.Queue()
            await queue.consume(arrived.put)
            while True:
                batch = [await arrived.get()]  # then what has arrived already, in order
                while len(batch) < self.prefetch and not arrived.empty():
                    batch.append(arrived.get_nowait())
                await self._batch(channel, dead, token, handle, batch)
                await call_trio(token, self.settled.add_async, len(batch))
        finally:
            await close_despite_cancel(connection.close)

    async def _batch(
        self, channel: Any, dead: str, token: Any, handle: Handler, batch: list[Any]
    ) -> None:
        """Hand what has arrived to the bridge at once; dead-letter what it says to
        (confirmed), then acknowledge the whole batch with one ``basic.ack`` (multiple:
        every delivery up to the last of the batch, all of them settled)."""
        import aio_pika

        deliveries = []
        for message in batch:
            subject = message.routing_key or ""
            body = bytes(message.body)
            identifier = (
                message.message_id
                or "sha256:" + hashlib.sha256(subject.encode() + b"\0" + body).hexdigest()[:32]
            )
            deliveries.append(
                Delivery(self.name, identifier, subject, body, bool(message.redelivered))
            )
        outcomes = await call_trio(token, handle, deliveries)
        for delivery, outcome in zip(deliveries, outcomes, strict=True):
            if isinstance(outcome, Dead):
                headers: dict[str, Any] = {
                    "tickwire-reason": outcome.reason,
                    "tickwire-id": delivery.id,
                    "tickwire-routing-key": delivery.subject,
                }
                letter = aio_pika.Message(delivery.payload, headers=headers, delivery_mode=2)
                await channel.default_exchange.publish(letter, routing_key=dead)  # confirmed
        await batch[-1].ack(multiple=True)
