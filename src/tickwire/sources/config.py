"""``tickwire bridge``: the ``[bridge]`` table of a TOML file, read and checked, and run.

Imports: tomllib, trio, attrs, tickwire.sources (the broker adapters when named),
tickwire.backplane (publishing into the cluster).

The file::

    [bridge]
    redis = "redis://127.0.0.1:6379"   # the backplane the servers share: where it publishes

    [[bridge.sources]]
    type = "redis_streams"             # or "nats_jetstream", "rabbitmq", "kafka"
    url = "redis://127.0.0.1:6379"
    streams = ["trades.ACME"]

    [[bridge.routes]]
    match = "trades.*"
    topic = "{subject}"

Every key of a source table but ``type`` is an argument of that source's class
(docs/sources.md); a wrong one is refused naming the table and the key.
"""

from __future__ import annotations

import importlib
import inspect
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from tickwire.sources.bridge import Bridge, Source
from tickwire.sources.mapping import Routing

__all__ = ["BridgeSettings", "RunningBridge", "load_bridge", "read_bridge", "run_bridge"]

SOURCE_TYPES = {
    "redis_streams": ("tickwire.sources.redis_streams", "RedisStreamSource"),
    "nats_jetstream": ("tickwire.sources.nats_jetstream", "NatsJetStreamSource"),
    "rabbitmq": ("tickwire.sources.rabbitmq", "RabbitMqSource"),
    "kafka": ("tickwire.sources.kafka", "KafkaSource"),
}


@attrs.frozen
class BridgeSettings:
    """What ``tickwire bridge`` runs: where it publishes, its sources and routes, and
    where it serves its metrics (None: nowhere)."""

    redis: str | None  # None: the hub of the `tickwire serve` that embeds it
    routing: Routing
    sources: tuple[Any, ...]
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    # [topics."pattern"] tables of the same file (tickwire.settings.topic_tables): the
    # settings of the topics it publishes, such as how much history Redis keeps of them.
    topics: tuple[tuple[str, Any], ...] = ()


def _source(index: int, table: Mapping[str, Any]) -> Any:
    where = f"bridge.sources[{index}]"
    kind = table.get("type")
    if kind not in SOURCE_TYPES:
        raise ValueError(f"{where}.type: one of {', '.join(SOURCE_TYPES)}, not {kind!r}")
    module_name, class_name = SOURCE_TYPES[kind]
    cls = getattr(importlib.import_module(module_name), class_name)
    accepted = set(inspect.signature(cls).parameters)
    arguments = {k: v for k, v in table.items() if k != "type"}
    unknown = sorted(set(arguments) - accepted)
    if unknown:
        raise ValueError(
            f"{where}: unknown settings for {kind}: {', '.join(unknown)} "
            f"(it takes {', '.join(sorted(accepted))})"
        )
    if "bindings" in arguments:  # TOML has no tuples: [["exchange", "key"], ...]
        arguments["bindings"] = [tuple(b) for b in arguments["bindings"]]
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def load_bridge(data: Mapping[str, Any], *, embedded: bool = False) -> BridgeSettings:
    """The settings in *data* (a parsed TOML document).

    *embedded*: the ``[bridge]`` table of ``tickwire serve``'s own file, whose sources feed
    that server's hub (and its cluster, with its ``redis`` setting): ``redis`` and the
    metrics settings are the server's own there, and table routes are allowed (a hub
    without a backplane upserts at once; with one, the bridge refuses them at start).

    Raises:
        ValueError: something is missing or malformed; the message names it.
    """
    bridge = data.get("bridge")
    if not isinstance(bridge, dict):
        raise ValueError("no [bridge] table")
    known = (
        {"sources", "routes"}
        if embedded
        else {"redis", "sources", "routes", "metrics_host", "metrics_port"}
    )
    unknown = sorted(set(bridge) - known)
    if unknown:
        why = " (in tickwire serve's file the server's own redis and metrics settings apply)"
        raise ValueError(
            f"bridge: unknown settings: {', '.join(unknown)}" + (why if embedded else "")
        )
    redis = bridge.get("redis")
    if not embedded and (
        not isinstance(redis, str) or not redis.startswith(("redis://", "rediss://"))
    ):
        raise ValueError("bridge.redis: the backplane's redis:// URL is needed")
    metrics_host = bridge.get("metrics_host", "127.0.0.1")
    if not isinstance(metrics_host, str):
        raise ValueError('bridge.metrics_host: an address, such as "127.0.0.1"')
    metrics_port = bridge.get("metrics_port")
    if metrics_port is not None and (
        isinstance(metrics_port, bool)
        or not isinstance(metrics_port, int)
        or not 0 <= metrics_port <= 65535
    ):
        raise ValueError(f"bridge.metrics_port: a port number, not {metrics_port!r}")
    sources = bridge.get("sources") or []
    if not sources:
        raise ValueError("bridge.sources: at least one [[bridge.sources]] table is needed")
    routes = bridge.get("routes") or []
    if not routes:
        raise ValueError("bridge.routes: at least one [[bridge.routes]] table is needed")
    routing = Routing.from_config(routes)
    if not embedded and any(route.key for route in routing.routes):
        raise ValueError("bridge.routes: table routes through a backplane are not supported yet")
    made = tuple(_source(i, table) for i, table in enumerate(sources))
    names = [source.name for source in made]
    if len(set(names)) != len(names):
        raise ValueError("bridge.sources: two sources share a name; give each its own `name`")
    return BridgeSettings(redis, routing, made, metrics_host, metrics_port)


def read_bridge(path: Path) -> BridgeSettings:
    """:func:`load_bridge` of the TOML file at *path* (errors name the file)."""
    try:
        return load_bridge(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


@attrs.frozen
class RunningBridge:
    """What :func:`run_bridge` started: the bridge, and its metrics endpoint if any."""

    bridge: Bridge
    metrics: Any = None  # tickwire.metrics.MetricsEndpoint


async def run_bridge(
    settings: BridgeSettings,
    *,
    task_status: trio.TaskStatus[RunningBridge] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Publish into the cluster at ``settings.redis`` from the sources, until cancelled,
    serving ``/metrics`` on ``settings.metrics_port`` if set."""
    from tickwire.backplane import open_publisher
    from tickwire.metrics import serve_bridge_metrics

    assert settings.redis is not None, "an embedded bridge runs in its server's hub"
    async with open_publisher(settings.redis) as hub, trio.open_nursery() as nursery:
        for pattern, config in settings.topics:  # before anything is published
            hub.configure(pattern, config)
        bridge = Bridge(hub, settings.routing)
        sources: tuple[Source, ...] = settings.sources
        endpoint = None
        if settings.metrics_port is not None:
            endpoint = await nursery.start(
                serve_bridge_metrics,
                bridge,
                sources,
                settings.metrics_host,
                settings.metrics_port,
            )
        for source in sources:
            await nursery.start(bridge.run_source, source)
        task_status.started(RunningBridge(bridge, endpoint))
