"""Prometheus metrics, health and readiness over HTTP, served by the trio program itself.

Imports: trio, h11, attrs, prometheus_client, tickwire.server, tickwire.dashboard,
tickwire.sources.bridge, tickwire.statistics.

``server_endpoint = await nursery.start(serve_metrics, server, "127.0.0.1", 9100)`` serves

- ``GET /metrics``: :meth:`Server.statistics` in the Prometheus text format, computed at
  scrape time by a custom collector (nothing is counted twice on the hot path);
- ``GET /healthz``: 200 while the process runs its event loop (alive);
- ``GET /readyz``: 200 while the server accepts connections, 503 before it starts and
  while it drains (load balancers stop sending new clients);
- with a :class:`~tickwire.dashboard.Dashboard`, ``GET /``: the live dashboard's page, its
  ``/assets/`` and ``/dashboard.json``.

Every request is bounded in size (8 KiB of headers) and time; the endpoint runs in the
caller's nursery, so it cannot die silently as a thread would.
"""

from __future__ import annotations

import http
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs
import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from tickwire.dashboard import Dashboard
from tickwire.server import Server
from tickwire.sources.bridge import Bridge
from tickwire.statistics import HistogramStatistics

__all__ = [
    "BridgeCollector",
    "MetricsEndpoint",
    "ServerCollector",
    "registry_for",
    "serve_bridge_metrics",
    "serve_metrics",
]

REQUEST_TIMEOUT: Final = 10.0  # seconds a client has to send each request
MAX_REQUEST_BYTES: Final = 8 * 1024
MAX_CONNECTIONS: Final = 64  # scrapers and probes at once; more are answered 503


class ServerCollector(Collector):
    """A prometheus_client collector reading :meth:`Server.statistics` at scrape time.

    Register it in your own registry to expose tickwire's metrics beside your program's:
    ``prometheus_client.REGISTRY.register(ServerCollector(server))``.
    """

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        s = self.server.statistics()
        yield GaugeMetricFamily(
            "tickwire_ready", "1 while accepting connections, 0 while draining", value=s.ready
        )
        yield GaugeMetricFamily(
            "tickwire_connections_open", "Open connections", value=s.connections_open
        )
        yield CounterMetricFamily(
            "tickwire_connections_opened", "Connections accepted", value=s.connections_opened
        )
        closed = CounterMetricFamily(
            "tickwire_connections_closed", "Closed connections by close code", labels=["code"]
        )
        for code, count in sorted(s.connections_closed.items()):
            closed.add_metric([str(code)], count)
        yield closed
        refused = CounterMetricFamily(
            "tickwire_handshakes_refused", "Refused handshakes by reason", labels=["reason"]
        )
        for reason, count in sorted(s.handshakes_refused.items()):
            refused.add_metric([reason], count)
        yield refused
        for name, doc, value in (
            ("messages_received", "WebSocket messages received from clients", s.messages_in),
            ("messages_sent", "WebSocket messages sent to clients", s.messages_out),
            ("bytes_received", "Bytes received from clients (as framed)", s.bytes_in),
            ("bytes_sent", "Bytes sent to clients (as framed)", s.bytes_out),
            ("messages_dropped", "Messages dropped by the drop-oldest policy", s.dropped),
            ("deltas_conflated", "Table deltas merged by the conflate policy", s.conflated),
            (
                "slow_consumer_disconnects",
                "Connections closed as slow consumers (4000)",
                s.slow_consumer_disconnects,
            ),
        ):
            yield CounterMetricFamily(f"tickwire_{name}", doc, value=value)
        for name, doc, value in (
            ("values_refused", "Values the value gate refused (all callers)", s.values_refused),
            ("hub_internal_errors", "Failures caught inside the hub (logged)", s.internal_errors),
        ):
            yield CounterMetricFamily(f"tickwire_{name}", doc, value=value)
        for name, doc, value in (
            ("history_bytes", "Bytes of history kept, all topics", s.history_bytes),
            ("client_topics", "Topics created by clients that exist now", s.client_topics),
            ("outbox_messages", "Messages queued for slow connections", s.outbox_messages),
            ("outbox_bytes", "Bytes queued for slow connections", s.outbox_bytes),
            (
                "outbox_largest_bytes",
                "Bytes queued for the most behind connection",
                s.largest_outbox_bytes,
            ),
        ):
            yield GaugeMetricFamily(f"tickwire_{name}", doc, value=value)
        recoveries = CounterMetricFamily(
            "tickwire_recoveries",
            "Resume and resync answers by outcome (recovered, not_recovered, snapshot)",
            labels=["outcome"],
        )
        for outcome, count in sorted(s.recoveries.items()):
            recoveries.add_metric([outcome], count)
        yield recoveries
        before = CounterMetricFamily(
            "tickwire_topic_uncompressed_bytes",
            "Encoded messages for compressing subscribers, before zstd, once per message",
            labels=["topic"],
        )
        after = CounterMetricFamily(
            "tickwire_topic_compressed_bytes",
            "The same messages after zstd",
            labels=["topic"],
        )
        offsets = GaugeMetricFamily(
            "tickwire_topic_offset", "The topic's last offset", labels=["topic"]
        )
        subscribers = GaugeMetricFamily(
            "tickwire_topic_subscribers", "Connections subscribed", labels=["topic"]
        )
        for t in s.topics:
            before.add_metric([t.name], t.bytes_before_compression)
            after.add_metric([t.name], t.bytes_after_compression)
            offsets.add_metric([t.name], t.offset)
            subscribers.add_metric([t.name], t.subscribers)
        yield from (before, after, offsets, subscribers)
        yield _histogram(
            "tickwire_publish_to_send_seconds",
            "Seconds from publish to the socket write, one observation per write",
            s.publish_to_send,
        )
        yield _histogram(
            "tickwire_heartbeat_rtt_seconds", "Seconds from ping to pong", s.heartbeat_rtt
        )
        if s.backplane is not None:
            yield from _backplane_metrics(s.backplane)


_BACKPLANE_GAUGES: Final = {
    "connected": "1 while the backplane is connected to Redis",
    "pending": "Messages waiting for Redis",
    "topics": "Topics this process follows through the backplane",
}
_BACKPLANE_COUNTERS: Final = {
    "sessions": "Connections made to Redis (the first, then each reconnection)",
    "published": "Messages Redis took from this process",
    "round_trips": "Pipelines of publish calls sent to Redis",
    "relays": "Relays received from Redis",
    "forwarded": "Wire messages forwarded as the publishing process encoded them",
    "fetched": "Messages read from the shared history (gaps, resumes)",
    "skipped": "Messages announced with GAP: gone from the shared history first",
    "restarts": "Topics started again in a new epoch (Redis lost them)",
    "silent": "Pub/sub connections found silent by the probe",
    "failed": "Messages Redis did not take within publish_timeout",
}


def _backplane_metrics(figures: Mapping[str, int]) -> Iterator[Metric]:
    for name, doc in _BACKPLANE_GAUGES.items():
        yield GaugeMetricFamily(f"tickwire_backplane_{name}", doc, value=figures.get(name, 0))
    for name, doc in _BACKPLANE_COUNTERS.items():
        yield CounterMetricFamily(f"tickwire_backplane_{name}", doc, value=figures.get(name, 0))


def _histogram(name: str, doc: str, h: HistogramStatistics) -> HistogramMetricFamily:
    buckets = [(_go_float(bound), count) for bound, count in h.cumulative()]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum)


def _go_float(bound: float) -> str:
    """A bucket bound as Prometheus writes it: ``+Inf``, ``0.005``, ``1.0``."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


_SOURCE_COUNTERS: Final = {
    "consumed": "Messages a source took from its broker",
    "published": "Messages published (or recognised as published already) and acknowledged",
    "redelivered": "Messages the broker delivered again (a bridge died before its ack)",
    "dead_lettered": "Messages set aside with a reason (no route, a bad payload or value)",
    "retries": "Publishes retried because tickwire could not take them then",
}


class BridgeCollector(Collector):
    """A collector of a :class:`~tickwire.sources.Bridge`'s figures per source, and of
    each source's lag (messages in the broker not yet read, where the broker says):
    ``registry.register(BridgeCollector(bridge, [source]))``."""

    def __init__(self, bridge: Bridge, sources: Sequence[Any] = ()) -> None:
        self.bridge = bridge
        self.sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        for field, doc in _SOURCE_COUNTERS.items():
            family = CounterMetricFamily(f"tickwire_source_{field}", doc, labels=["source"])
            for name, stats in sorted(self.bridge.statistics.items()):
                family.add_metric([name], getattr(stats, field))
            yield family
        lag = GaugeMetricFamily(
            "tickwire_source_lag",
            "Messages in the broker not yet read by the bridge, at the last look",
            labels=["source", "stream"],
        )
        for source in self.sources:
            value = getattr(source, "lag", None)
            if isinstance(value, dict):
                for stream, count in sorted(value.items()):
                    lag.add_metric([source.name, stream], count)
            elif isinstance(value, int):
                lag.add_metric([source.name, ""], value)
        yield lag


def registry_for(server: Server) -> CollectorRegistry:
    """A registry holding only *server*'s metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    return registry


@attrs.define(eq=False)
class MetricsEndpoint:
    """The running HTTP endpoint: the ports it listens on.

    ``/readyz`` answers for *server* (accepting connections, its backplane connected), or,
    for a process without one (``tickwire bridge``), *readiness*: a function returning
    None when ready, else why not.
    """

    server: Server | None
    registry: CollectorRegistry
    max_connections: int = MAX_CONNECTIONS
    ports: list[int] = attrs.field(factory=list)
    readiness: Callable[[], str | None] | None = None
    dashboard: Dashboard | None = None
    _open: int = attrs.field(init=False, default=0)

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def open_connections(self) -> int:
        """HTTP connections open now."""
        return self._open

    def respond(self, method: str, target: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request."""
        status, headers, body = self.answer(method, target)
        return status, dict(headers)["content-type"], body

    def answer(
        self, method: str, target: str, request_headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) for a request."""
        path = target.split("?", 1)[0]

        def text(status: int, body: str) -> tuple[int, list[tuple[str, str]], bytes]:
            return status, [("content-type", "text/plain")], body.encode()

        if method not in ("GET", "HEAD"):
            return text(405, "only GET and HEAD\n")
        if path == "/metrics":
            return 200, [("content-type", CONTENT_TYPE_LATEST)], generate_latest(self.registry)
        if path == "/healthz":
            return text(200, "ok\n")
        if path == "/readyz":
            why = self._not_ready()
            if why is not None:
                return text(503, f"not ready: {why}\n")
            return text(200, "ready\n")
        if self.dashboard is not None:
            accept = b",".join(v for k, v in request_headers if k.lower() == b"accept-encoding")
            found = self.dashboard.respond(path, accept_gzip=_accepts_gzip(accept))
            if found is not None:
                return found
            return text(404, "not found: try /, /metrics, /healthz or /readyz\n")
        return text(404, "not found: try /metrics, /healthz or /readyz\n")

    def _not_ready(self) -> str | None:
        if self.readiness is not None:
            return self.readiness()
        if self.server is None:
            return None
        if not self.server.ready:
            return "starting or draining"
        backplane = self.server.hub.backplane
        if backplane is not None and not backplane.ready:
            return "the backplane is not connected to Redis"
        return None

    async def handle(self, stream: trio.abc.Stream) -> None:
        if self._open >= self.max_connections:
            with trio.move_on_after(REQUEST_TIMEOUT):
                body = b"too many connections to the metrics endpoint\n"
                await stream.send_all(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
                    + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                    + body
                )
            await trio.aclose_forcefully(stream)
            return
        self._open += 1
        try:
            await self._serve(stream)
        finally:
            self._open -= 1

    async def _serve(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            while True:
                with trio.move_on_after(REQUEST_TIMEOUT) as scope:
                    request = await _next_request(conn, stream)
                if scope.cancelled_caught or request is None:
                    return
                status, headers, body = self.answer(
                    request.method.decode("ascii", "replace"),
                    request.target.decode("ascii", "replace"),
                    request.headers,
                )
                headers = [*headers, ("content-length", str(len(body)))]
                reason = http.HTTPStatus(status).phrase.encode()
                data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
                if request.method != b"HEAD":
                    data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
                data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
                with trio.move_on_after(REQUEST_TIMEOUT):
                    await stream.send_all(data)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                body = f"bad request: {exc}\n".encode()
                headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
                status = exc.error_status_hint
                reason = http.HTTPStatus(status).phrase.encode()
                data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
                with trio.move_on_after(REQUEST_TIMEOUT):
                    await stream.send_all((data or b"") + body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


def _accepts_gzip(accept_encoding: bytes) -> bool:
    """Whether an Accept-Encoding value takes gzip (``gzip``, ``*``, with a q above 0)."""
    for part in accept_encoding.decode("latin-1").lower().split(","):
        coding, _, params = part.partition(";")
        if coding.strip() not in ("gzip", "*"):
            continue
        q = params.strip().removeprefix("q=") if params.strip().startswith("q=") else "1"
        try:
            return float(q) > 0
        except ValueError:
            return False
    return False


async def _next_request(conn: h11.Connection, stream: trio.abc.Stream) -> h11.Request | None:
    """The next request, its body (if any) read and ignored; None when the client is
    done."""
    request: h11.Request | None = None
    while True:
        event: Any = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(MAX_REQUEST_BYTES)
            conn.receive_data(bytes(data))  # b"" means the client closed
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


async def serve_metrics(
    server: Server,
    host: str,
    port: int,
    *,
    registry: CollectorRegistry | None = None,
    max_connections: int = MAX_CONNECTIONS,
    dashboard: Dashboard | None = None,
    task_status: trio.TaskStatus[MetricsEndpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` for *server* on *host*:*port*
    until cancelled: ``endpoint = await nursery.start(serve_metrics, server, host, port)``.

    Pass *registry* to expose your own metrics with tickwire's (register a
    :class:`ServerCollector` in it); by default only the server's. Beyond
    *max_connections* at once, a connection is answered 503 and closed. With *dashboard*,
    ``/`` serves the live dashboard (:mod:`tickwire.dashboard`).
    """
    endpoint = MetricsEndpoint(
        server, registry or registry_for(server), max_connections, dashboard=dashboard
    )
    await _serve(endpoint, host, port, task_status)


async def serve_bridge_metrics(
    bridge: Bridge,
    sources: Sequence[Any],
    host: str,
    port: int,
    *,
    max_connections: int = MAX_CONNECTIONS,
    task_status: trio.TaskStatus[MetricsEndpoint] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` (the :class:`BridgeCollector` of *bridge* and *sources*),
    ``/healthz`` and ``/readyz`` for a process that runs a bridge and no server
    (``tickwire bridge``): ready while the bridge's backplane, if any, is connected."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BridgeCollector(bridge, sources))

    def readiness() -> str | None:
        backplane = bridge.hub.backplane
        if backplane is not None and not backplane.ready:
            return "the backplane is not connected to Redis"
        return None

    endpoint = MetricsEndpoint(None, registry, max_connections, readiness=readiness)
    await _serve(endpoint, host, port, task_status)


async def _serve(
    endpoint: MetricsEndpoint, host: str, port: int, task_status: trio.TaskStatus[MetricsEndpoint]
) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    endpoint.ports = [listener.socket.getsockname()[1] for listener in listeners]
    task_status.started(endpoint)
    await trio.serve_listeners(endpoint.handle, listeners)
