"""Frozen configuration objects shared by the core and the trio layer.

Imports: attrs, tickwire.errors. Sizes are in bytes (``KiB``/``MiB`` helpers), durations in
float seconds.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

import attrs
from attrs.validators import ge, gt, instance_of, le

__all__ = ["KiB", "Limits", "MiB", "ServerConfig"]

KiB: Final = 1024
MiB: Final = 1024 * KiB


_POSITIVE_INT: Final = (instance_of(int), ge(1))
# §4.4: dot-separated segments of letters, digits and _-:, or * for one segment.
_PATTERN: Final = re.compile(r"(?:[A-Za-z0-9_\-:]+|\*)(?:\.(?:[A-Za-z0-9_\-:]+|\*))*")


@attrs.frozen(kw_only=True)
class Limits:
    """Hard limits on every incoming message, enforced before anything is allocated (§7).

    Attributes:
        max_message_bytes: largest WebSocket message accepted, as received (compressed).
        max_decompressed_bytes: largest body after zstd decompression.
        max_container_items: most elements in one msgpack array or map.
        max_containers: most arrays and maps in one message, all levels together; this is
            what keeps a message of empty arrays from growing 64-fold in memory.
        max_depth: deepest nesting of arrays and maps, the message's own array included.
    """

    max_message_bytes: int = attrs.field(default=1 * MiB, validator=_POSITIVE_INT)
    max_decompressed_bytes: int = attrs.field(default=4 * MiB, validator=_POSITIVE_INT)
    max_container_items: int = attrs.field(default=64 * KiB, validator=_POSITIVE_INT)
    max_containers: int = attrs.field(default=64 * KiB, validator=_POSITIVE_INT)
    max_depth: int = attrs.field(default=32, validator=[instance_of(int), ge(2), le(1000)])

    def __attrs_post_init__(self) -> None:
        if self.max_decompressed_bytes < self.max_message_bytes:
            raise ValueError("max_decompressed_bytes must be >= max_message_bytes")

    @classmethod
    def for_message_bytes(cls, max_message_bytes: int) -> Limits:
        """Limits derived from one figure: 4x for decompression, containers by size."""
        decompressed = 4 * max_message_bytes
        return cls(
            max_message_bytes=max_message_bytes,
            max_decompressed_bytes=decompressed,
            max_container_items=max(16, min(64 * KiB, decompressed // 16)),
            max_containers=max(16, min(64 * KiB, decompressed // 16)),
        )


def _optional_positive(_: object, attribute: attrs.Attribute[float | None], value: object) -> None:
    if value is not None and (not isinstance(value, int | float) or value <= 0):
        raise ValueError(f"{attribute.name} must be a positive number of seconds or None")


def _path(_: object, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and (
        not isinstance(value, str) or not value.startswith("/") or "?" in value
    ):
        raise ValueError(f"{attribute.name} must be a path such as /echo, or None")


def _origins(origins: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if origins is None else tuple(origins)


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything a tickwire server enforces, with production defaults (docs/server.md).

    Attributes:
        limits: applied to every message a client sends (§7); 64 KiB by default.
        max_fragments: most WebSocket frames in one message (wsproto spends about 7 µs a
            frame, so 1-byte fragments are a cheap attack).
        max_subscriptions: most subscriptions one connection may hold.
        heartbeat_interval: seconds between pings.
        heartbeat_timeout: seconds a pong may take before the peer is dropped (4007).
        send_timeout: seconds one write may block before the peer is dropped: a client
            that stops reading is found instead of blocking its writer forever.
        handshake_timeout: seconds to complete the HTTP upgrade (slowloris).
        auth_timeout: seconds to send AUTH when the handshake carried no token (4005).
        idle_timeout: seconds without any message from the client before closing (4006),
            or None.
        shutdown_timeout: seconds that a graceful shutdown lets writers drain.
        max_connections: open connections in all.
        max_connections_per_address: open connections from one client address.
        max_new_connections_per_second: accepted handshakes a second, in all.
        retry_after: seconds advertised in ``Retry-After`` when refusing with 503.
        messages_per_second, bytes_per_second: per-connection rate limits on what a client
            sends, with *rate_burst_seconds* of allowance; over them an ERROR 429, then a
            1008 close if it goes on.
        rate_limit_strikes: messages over the rate limits in a row that are dropped before
            the next one closes the connection with 1008 (50: the 51st closes it).
        outbox_max_bytes, outbox_max_messages: bound each connection's queue of outgoing
            messages; beyond them the topic's slow-consumer policy applies.
        send_bytes_per_second: a bandwidth cap on what each connection is sent, or None.
            A client may ask for less with ``?max_bandwidth=<bytes a second>`` in the
            request target, and a principal with a ``send_bytes_per_second`` attribute
            gets its own. Messages wait in the outbox meanwhile, so the topics' policies
            (conflate, drop oldest, disconnect) decide what a capped client receives.
        send_burst_bytes: what a capped connection may send at once after being idle.
        allowed_origins: the Origin allowlist (exact or ``https://*.example.com``), or None
            to accept any origin.
        allow_missing_origin: accept handshakes without an Origin header (non-browser
            clients).
        trusted_proxies: addresses or networks of reverse proxies (nginx, a load balancer)
            whose ``X-Forwarded-For`` names the client, for the per-address limit and the
            logs; None trusts nobody's.
        client_publish: topic patterns on which clients may PUBLISH when neither an
            ``authorize`` hook nor a principal's permissions decide (no authentication, or
            an authenticator returning something else than a ``Principal``). Empty by
            default: nobody publishes unless you say where (``["input.*"]``).
        max_publish_bytes: the largest PUBLISH a client may send, decompressed; larger
            ones get ERROR 413 and nothing is stored.
        max_topics_per_connection: topics one connection may create (subscribing to a
            name nobody publishes yet, or publishing to a new one) in its lifetime; the
            hub bounds those of all clients together (``Hub.max_client_topics``).
        max_handshakes: handshakes in progress at once. They do not count against
            *max_connections*, so that slow handshakes (slowloris) cannot keep clients out
            of a server that has room.
        unknown_topics: what a SUBSCRIBE to a topic that does not exist gets: ``"wait"``
            (subscribed, and SUBSCRIBED says the topic is unknown, with the names it looks
            like: it may appear later) or ``"refuse"`` (ERROR 404, with the same hint).
        echo_path: a path (``/echo``) where the server accepts plain WebSocket connections
            that echo every message back, on the same connection code as tickwire's own,
            for conformance testing (the Autobahn testsuite, docs/conformance.md), or None
            (the default: no such endpoint). Its connections obey the limits above.
    """

    limits: Limits = attrs.field(factory=lambda: Limits.for_message_bytes(64 * KiB))
    max_fragments: int = attrs.field(default=64, validator=_POSITIVE_INT)
    max_subscriptions: int = attrs.field(default=256, validator=_POSITIVE_INT)
    heartbeat_interval: float = attrs.field(default=20.0, validator=gt(0))
    heartbeat_timeout: float = attrs.field(default=10.0, validator=gt(0))
    send_timeout: float = attrs.field(default=10.0, validator=gt(0))
    handshake_timeout: float = attrs.field(default=10.0, validator=gt(0))
    auth_timeout: float = attrs.field(default=10.0, validator=gt(0))
    idle_timeout: float | None = attrs.field(default=None, validator=_optional_positive)
    shutdown_timeout: float = attrs.field(default=5.0, validator=gt(0))
    max_connections: int = attrs.field(default=10_000, validator=_POSITIVE_INT)
    max_connections_per_address: int = attrs.field(default=256, validator=_POSITIVE_INT)
    max_new_connections_per_second: float = attrs.field(default=500.0, validator=gt(0))
    retry_after: float = attrs.field(default=1.0, validator=ge(0))
    messages_per_second: float = attrs.field(default=200.0, validator=gt(0))
    bytes_per_second: float = attrs.field(default=1.0 * MiB, validator=gt(0))
    rate_burst_seconds: float = attrs.field(default=2.0, validator=gt(0))
    rate_limit_strikes: int = attrs.field(default=50, validator=_POSITIVE_INT)
    outbox_max_bytes: int = attrs.field(default=4 * MiB, validator=_POSITIVE_INT)
    outbox_max_messages: int = attrs.field(default=8192, validator=_POSITIVE_INT)
    send_bytes_per_second: float | None = attrs.field(default=None, validator=_optional_positive)
    send_burst_bytes: int = attrs.field(default=64 * KiB, validator=_POSITIVE_INT)
    allowed_origins: tuple[str, ...] | None = attrs.field(default=None, converter=_origins)
    allow_missing_origin: bool = True
    trusted_proxies: tuple[str, ...] | None = attrs.field(default=None, converter=_origins)
    client_publish: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    max_publish_bytes: int = attrs.field(default=16 * KiB, validator=_POSITIVE_INT)
    max_topics_per_connection: int = attrs.field(default=64, validator=[instance_of(int), ge(0)])
    max_handshakes: int = attrs.field(default=1024, validator=_POSITIVE_INT)
    unknown_topics: str = attrs.field(
        default="wait", validator=attrs.validators.in_(("wait", "refuse"))
    )
    echo_path: str | None = attrs.field(default=None, validator=_path)

    def __attrs_post_init__(self) -> None:
        for pattern in self.client_publish:
            if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
                raise ValueError(f"client_publish: not a topic pattern: {pattern!r}")
        for item in self.trusted_proxies or ():
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: not an IP address or network: {item!r}"
                ) from None
        if self.heartbeat_timeout >= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be shorter than heartbeat_interval")
