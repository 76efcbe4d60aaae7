"""Server.statistics() and the /metrics, /healthz, /readyz endpoint, over loopback."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import trio
from prometheus_client.parser import text_string_to_metric_families
from wsproto.events import RejectConnection

import tickwire
from tickwire import ClientConfig, Hub, Reconnect, ServerConfig
from tickwire.metrics import MetricsEndpoint, serve_metrics
from tickwire.server import Server

from .helpers import handshake

FAST = ClientConfig(reconnect=Reconnect(initial_delay=0.01, max_delay=0.05), heartbeat_interval=5)
CONFIG = ServerConfig(
    shutdown_timeout=1,
    heartbeat_interval=0.05,
    heartbeat_timeout=0.04,
    allowed_origins=["https://app.example"],
)
PAYLOAD = {"symbol": "ACME", "bid": 101.25, "ask": 101.5, "venue": "XNAS", "note": "q" * 80}


@asynccontextmanager
async def served(hub: Hub) -> AsyncIterator[tuple[Server, MetricsEndpoint]]:
    async with trio.open_nursery() as nursery:
        async with tickwire.open_server(hub, "127.0.0.1", 0, config=CONFIG) as server:
            endpoint: MetricsEndpoint = await nursery.start(serve_metrics, server, "127.0.0.1", 0)
            yield server, endpoint
        nursery.cancel_scope.cancel()


async def http(port: int, request: bytes) -> tuple[int, bytes]:
    """Send one raw HTTP request; return the status and body of the answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_statistics_and_metrics_count_what_happened() -> None:
    hub = Hub()
    with trio.fail_after(20):
        async with served(hub) as (server, endpoint):
            # A browser page from another site is refused: counted by reason.
            evil = await handshake(server.port, headers=[(b"Origin", b"https://evil.example")])
            assert isinstance(evil, RejectConnection)
            assert evil.status_code == 403
            async with tickwire.open_client(f"ws://127.0.0.1:{server.port}/", config=FAST) as c:
                async with c.subscribe("quotes.ACME") as subscription:
                    for n in range(20):
                        hub.publish_nowait("quotes.ACME", {**PAYLOAD, "n": n})
                    for _ in range(20):
                        await subscription.receive()
                    while server.statistics().heartbeat_rtt.count == 0:
                        await trio.sleep(0.01)  # the server's 50 ms heartbeat
                    stats = server.statistics()
                    assert stats.ready
                    assert stats.connections_open == stats.connections_opened == 1
                    assert stats.handshakes_refused == {"origin": 1}
                    assert stats.messages_in >= 1  # the SUBSCRIBE
                    assert stats.messages_out >= 20  # HELLO, SUBSCRIBED, ACK and the data
                    assert stats.bytes_out > 20 * 20
                    assert stats.publish_to_send.count >= 1
                    (topic,) = stats.topics
                    assert (topic.name, topic.offset, topic.subscribers) == ("quotes.ACME", 20, 1)
                    assert 0 < topic.bytes_after_compression < topic.bytes_before_compression

                    status, text = await http(endpoint.port, get("/metrics"))
                    assert status == 200
                    metrics = samples(text)
                    assert metrics[("tickwire_connections_open", ())] == 1
                    assert metrics[("tickwire_ready", ())] == 1
                    refused = ("tickwire_handshakes_refused_total", (("reason", "origin"),))
                    assert metrics[refused] == 1
                    topic_label = (("topic", "quotes.ACME"),)
                    before = metrics[("tickwire_topic_uncompressed_bytes_total", topic_label)]
                    after = metrics[("tickwire_topic_compressed_bytes_total", topic_label)]
                    assert before == topic.bytes_before_compression
                    assert 0 < after < before
                    assert metrics[("tickwire_topic_offset", topic_label)] == 20
                    assert metrics[("tickwire_messages_sent_total", ())] >= 20
                    inf = ("tickwire_publish_to_send_seconds_count", ())
                    assert metrics[inf] >= 1
                    assert metrics[("tickwire_heartbeat_rtt_seconds_count", ())] >= 1
            while server.connections:
                await trio.sleep(0.01)  # the server side of the close
            stats = server.statistics()
            assert stats.connections_open == 0
            assert stats.connections_closed == {1000: 1}
            assert stats.messages_out >= 20  # the closed connection's counts are kept
            _, text = await http(endpoint.port, get("/metrics"))
            closed = samples(text)[("tickwire_connections_closed_total", (("code", "1000"),))]
            assert closed == 1


async def test_health_and_readiness_follow_the_server() -> None:
    hub = Hub()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server = Server(hub, config=CONFIG)
            endpoint: MetricsEndpoint = await nursery.start(serve_metrics, server, "127.0.0.1", 0)
            assert await http(endpoint.port, get("/readyz")) == (
                503,
                b"not ready: starting or draining\n",
            )
            await nursery.start(server.run, "127.0.0.1", 0)
            assert await http(endpoint.port, get("/readyz")) == (200, b"ready\n")
            assert await http(endpoint.port, get("/healthz")) == (200, b"ok\n")
            await server.aclose()  # draining, then stopped: the load balancer must know
            assert (await http(endpoint.port, get("/readyz")))[0] == 503
            assert (await http(endpoint.port, get("/healthz")))[0] == 200
            nursery.cancel_scope.cancel()


async def test_the_endpoint_answers_bad_requests_clearly() -> None:
    hub = Hub()
    with trio.fail_after(20):
        async with served(hub) as (_, endpoint):
            assert (await http(endpoint.port, get("/nothing")))[0] == 404
            assert (await http(endpoint.port, get("/metrics", "POST")))[0] == 405
            status, body = await http(endpoint.port, b"NOT HTTP AT ALL\r\n\r\n")
            assert status == 400
            assert body.startswith(b"bad request")
            # HEAD: the headers without the body; and two requests on one connection.
            stream = await trio.open_tcp_stream("127.0.0.1", endpoint.port)
            async with stream:
                two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2
                await stream.send_all(two)
                received = b""
                while received.count(b"ok\n") < 2:
                    received += await stream.receive_some(65536)
                assert received.count(b"HTTP/1.1 200") == 2


async def test_idle_connections_to_the_endpoint_are_bounded() -> None:
    hub = Hub()
    server = Server(hub, config=CONFIG)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            endpoint: MetricsEndpoint = await nursery.start(
                functools.partial(serve_metrics, server, "127.0.0.1", 0, max_connections=2)
            )
            idle = [await trio.open_tcp_stream("127.0.0.1", endpoint.port) for _ in range(2)]
            while endpoint.open_connections < 2:
                await trio.sleep(0.001)  # the endpoint accepting them (real sockets)
            status, body = await http(endpoint.port, get("/healthz"))
            assert (status, body) == (503, b"too many connections to the metrics endpoint\n")
            await idle[0].aclose()
            while endpoint.open_connections > 1:
                await trio.sleep(0.001)
            assert await http(endpoint.port, get("/healthz")) == (200, b"ok\n")
            await idle[1].aclose()
            nursery.cancel_scope.cancel()
