"""A source that consumes Kafka topics through a consumer group (aiokafka).

Imports: aiokafka (the ``kafka`` extra), trio, attrs, tickwire.sources.bridge,
tickwire.sources._asyncio.

Theory of operation. aiokafka (aio-libs; the Kafka protocol in Python, asyncio-only) runs on
an asyncio loop of its own in a worker thread (:mod:`tickwire.sources._asyncio`), like the
NATS and RabbitMQ sources. The source joins consumer group *group* on *topics*, with
automatic commits off, and:

- reads at most *batch* records at a time (``getmany``), hands them to the bridge at once,
  in each partition's order, and commits, for each partition of the batch, the offset after
  its last record (:func:`offsets_to_commit`) only once the bridge has published them (or
  dead-lettered them: produced, acknowledged by all in-sync replicas, to *dead_letters*);
- a bridge that dies before committing leaves its partitions' committed offsets behind;
  the group's next owner of each partition (this bridge restarted, or another after a
  rebalance) reads from there again, and the idempotency key
  ``<topic>:<partition>:<offset>`` publishes each record once;
- the next read waits until the batch is handled: a bridge that cannot publish reads
  nothing more (aiokafka's own prefetch is bounded by its fetch sizes).

Kafka has no per-record redelivery flag: records read again after a crash are not counted
as redelivered (their duplicates are still recognised by their keys). Each record's value is
its payload; the subject the routes match is its Kafka topic.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from tickwire.sources._asyncio import AsyncioSource, call_trio, close_despite_cancel
from tickwire.sources.bridge import Dead, Delivery, Handler, Settled

__all__ = ["KafkaSource", "deliveries_of", "offsets_to_commit"]

log = logging.getLogger("tickwire.sources")


def deliveries_of(source: str, records: Iterable[Any]) -> list[Delivery]:
    """The bridge's deliveries for Kafka *records* (anything with ``topic``,
    ``partition``, ``offset`` and ``value``), in the given order."""
    return [
        Delivery(source, f"{r.topic}:{r.partition}:{r.offset}", r.topic, bytes(r.value or b""))
        for r in records
    ]


def offsets_to_commit(records: Iterable[Any]) -> dict[tuple[str, int], int]:
    """For each (topic, partition) of *records*, the offset to commit once they are all
    settled: the one after the highest (Kafka's committed offset is the next to read)."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        out[key] = max(out.get(key, 0), r.offset + 1)
    return out


def in_partition_order(batches: Mapping[Any, Sequence[Any]]) -> list[Any]:
    """The records of ``getmany``'s answer, each partition's in its order (partitions one
    after another: order across partitions means nothing in Kafka)."""
    ordered = sorted(batches.items(), key=lambda item: (item[0].topic, item[0].partition))
    return [record for _, records in ordered for record in records]


@attrs.define(eq=False)
class KafkaSource(AsyncioSource):
    """Kafka *topics* at *bootstrap_servers*, consumed by group *group* (see the module).

    Args:
        bootstrap_servers: ``host:port[,host:port...]``.
        topics: the Kafka topics consumed.
        group: the consumer group (shared by bridges that split the partitions).
        batch: records read at once (``max_records``).
        dead_letters: the Kafka topic dead letters are produced to (``{topic}``: the
            record's own), with the headers ``tickwire-reason`` and ``tickwire-id``.
        start: where a group with no committed offset starts: "earliest" or "latest".
        name: the source's name (metrics, idempotency keys).
        retry_delay: seconds between attempts while Kafka is unreachable.
        options: more keyword arguments for ``AIOKafkaConsumer`` (security, timeouts).
    """

    bootstrap_servers: str
    topics: Sequence[str] = attrs.field(converter=tuple)
    group: str = "tickwire"
    batch: int = attrs.field(default=500, validator=attrs.validators.ge(1))
    dead_letters: str = "{topic}.dead"
    start: str = attrs.field(
        default="earliest", validator=attrs.validators.in_(("earliest", "latest"))
    )
    name: str = "kafka"
    retry_delay: float = 1.0
    options: Mapping[str, Any] = attrs.field(factory=dict)
    lag: dict[str, int] = attrs.field(init=False, factory=dict)  # per "topic:partition"
    settled: Settled = attrs.field(init=False, factory=Settled)
    broker = "Kafka"

    async def _consume(self, token: Any, handle: Handler, started: Any) -> None:
        """The asyncio side: join the group, read, hand over, commit."""
        import aiokafka

        consumer = aiokafka.AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset=self.start,
            **self.options,
        )
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers, acks="all", enable_idempotence=True
        )
        try:
            await consumer.start()
            await producer.start()
            await call_trio(token, started)
            while True:
                got = await consumer.getmany(timeout_ms=1000, max_records=self.batch)
                records = in_partition_order(got)
                if not records:
                    continue
                await self._batch(consumer, producer, token, handle, records)
                await call_trio(token, self.settled.add_async, len(records))
                self._note_lag(consumer, got)
        finally:
            await close_despite_cancel(producer.stop)
            await close_despite_cancel(consumer.stop)

    async def _batch(
        self, consumer: Any, producer: Any, token: Any, handle: Handler, records: list[Any]
    ) -> None:
        from aiokafka.structs import TopicPartition

        deliveries = deliveries_of(self.name, records)
        outcomes = await call_trio(token, handle, deliveries)
        for record, delivery, outcome in zip(records, deliveries, outcomes, strict=True):
            if isinstance(outcome, Dead):
                headers = [
                    ("tickwire-reason", outcome.reason.encode()),
                    ("tickwire-id", delivery.id.encode()),
                ]
                await producer.send_and_wait(
                    self.dead_letters.format(topic=record.topic),
                    record.value,
                    key=record.key,
                    headers=headers,
                )
        offsets = offsets_to_commit(records)
        await consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})

    def _note_lag(self, consumer: Any, got: Mapping[Any, Sequence[Any]]) -> None:
        for partition, records in got.items():
            end = consumer.highwater(partition)
            if end is not None and records:
                self.lag[f"{partition.topic}:{partition.partition}"] = max(
                    0, end - records[-1].offset - 1
                )
