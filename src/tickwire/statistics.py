"""What a server counts, and the frozen figures it reports (``Server.statistics()``).

Imports: attrs. Counting stays off the hot path: connections count into plain integers, a
histogram observation is one bisect and two additions, and everything is summed up only
when somebody asks (a ``/metrics`` scrape, a ``statistics()`` call).
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Mapping, Sequence
from typing import Final

import attrs

__all__ = [
    "LATENCY_BUCKETS",
    "Histogram",
    "HistogramStatistics",
    "ServerCounters",
    "ServerStatistics",
    "TopicStatistics",
]

# Seconds: from half a millisecond (a fan-out on loopback) to ten (a stalled client).
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@attrs.frozen
class HistogramStatistics:
    """A histogram at one moment.

    Attributes:
        bounds: the upper bounds of the buckets (seconds), ascending; a last, unbounded
            bucket follows them.
        counts: observations per bucket, ``len(bounds) + 1`` of them (not cumulative).
        sum: the sum of all observations.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        """Observations in all."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) pairs, ending with infinity."""
        total, pairs = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            pairs.append((bound, total))
        return pairs

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile *q* (0-1), or None if empty;
        infinity if it lies beyond the last bound."""
        if not 0 <= q <= 1:
            raise ValueError("q must be between 0 and 1")
        if not self.count:
            return None
        rank = q * self.count
        for bound, total in self.cumulative():
            if total >= rank:
                return bound
        return float("inf")  # pragma: no cover - the last total is the count


@attrs.define(eq=False)
class Histogram:
    """Observations counted into fixed buckets, as Prometheus histograms are."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = attrs.field(init=False)
    sum: float = attrs.field(init=False, default=0.0)

    def __attrs_post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError("bounds must be ascending and distinct")
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, times: int = 1) -> None:
        """Count *times* observations of *value*."""
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.sum += value * times

    def statistics(self) -> HistogramStatistics:
        return HistogramStatistics(self.bounds, tuple(self.counts), self.sum)


@attrs.define(eq=False)
class ServerCounters:
    """What a server has counted since it started; live connections keep their own
    counts, added here when they close."""

    connections_opened: int = 0
    closed: collections.Counter[int] = attrs.field(factory=collections.Counter)
    refused: collections.Counter[str] = attrs.field(factory=collections.Counter)
    recoveries: collections.Counter[str] = attrs.field(factory=collections.Counter)
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: int = 0
    conflated: int = 0
    heartbeat_rtt: Histogram = attrs.field(factory=Histogram)


@attrs.frozen
class TopicStatistics:
    """One topic.

    Attributes:
        name: the topic's name.
        table: whether it is a table topic.
        offset: its last offset (messages published, or table deltas, in this epoch).
        subscribers: connections subscribed.
        bytes_before_compression, bytes_after_compression: the encoded messages of this
            topic for compressing subscribers, before and after zstd, each counted once
            however many subscribers it went to.
    """

    name: str
    table: bool
    offset: int
    subscribers: int
    bytes_before_compression: int
    bytes_after_compression: int


@attrs.frozen(kw_only=True)
class ServerStatistics:
    """A server's figures at one moment (the ``/metrics`` endpoint shows the same).

    Attributes:
        ready: accepting connections (False before serving and while draining).
        connections_open: connections open now.
        connections_opened: connections accepted since the start.
        connections_closed: closed connections by close code (4000 is a slow consumer).
        handshakes_refused: refused handshakes by reason (``server_full``,
            ``per_address_limit``, ``connection_rate``, ``shutting_down``, ``origin``,
            ``unauthorized``, ``forbidden``, ``subprotocol``).
        messages_in, bytes_in: what clients sent (WebSocket messages, bytes as received).
        messages_out, bytes_out: what was sent to clients.
        outbox_messages, outbox_bytes: queued for slow connections now, in all.
        largest_outbox_bytes: the most bytes queued for one connection now.
        dropped: messages dropped under the drop-oldest policy (announced with GAP).
        conflated: table deltas merged into another under the conflate policy.
        recoveries: resume and resync answers by outcome (``new``, ``recovered``,
            ``not_recovered``).
        publish_to_send: seconds from publishing to the socket write, one observation
            per write (the oldest message in it).
        heartbeat_rtt: seconds from ping to pong.
        topics: every topic the program publishes to (those that only clients created are
            counted in *client_topics*, not listed: a client cannot add label series).
        history_bytes: the hub's history of all topics, in bytes (``Hub.max_history_bytes``).
        client_topics: topics created by clients that exist now (``Hub.max_client_topics``).
        values_refused: values the value gate refused, from the program or from clients.
        internal_errors: failures caught inside the hub (logged; GAP sent for what was lost).
        backplane: with a backplane, its figures by name (``connected`` is 1 or 0; see
            :class:`tickwire.backplane.BackplaneStatistics`); None without one.
    """

    ready: bool
    connections_open: int
    connections_opened: int
    connections_closed: Mapping[int, int]
    handshakes_refused: Mapping[str, int]
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    outbox_messages: int
    outbox_bytes: int
    largest_outbox_bytes: int
    dropped: int
    conflated: int
    recoveries: Mapping[str, int]
    publish_to_send: HistogramStatistics
    heartbeat_rtt: HistogramStatistics
    topics: Sequence[TopicStatistics]
    history_bytes: int = 0
    client_topics: int = 0
    values_refused: int = 0
    internal_errors: int = 0
    backplane: Mapping[str, int] | None = None

    @property
    def slow_consumer_disconnects(self) -> int:
        """Connections closed with 4000 (slow consumer)."""
        return self.connections_closed.get(4000, 0)
