"""``tickwire bridge``: the ``[bridge]`` table of a TOML file, read and checked, and run.

Imports: tomllib, trio, attrs, tickwire.sources (the broker adapters when named),
tickwire.backplane (publishing into the cluster).

The file::

    [bridge]
    redis = "redis://127.0.0.1:6379"   # the backplane the servers share: where it publishes

    [[bridge.sources]]
    type = "redis_streams"             # or "nats_jetstream", "rabbitmq"
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

__all__ = ["BridgeSettings", "load_bridge", "read_bridge", "run_bridge"]

SOURCE_TYPES = {
    "redis_streams": ("tickwire.sources.redis_streams", "RedisStreamSource"),
    "nats_jetstream": ("tickwire.sources.nats_jetstream", "NatsJetStreamSource"),
    "rabbitmq": ("tickwire.sources.rabbitmq", "RabbitMqSource"),
}


@attrs.frozen
class BridgeSettings:
    """What ``tickwire bridge`` runs: where it publishes, its sources and routes."""

    redis: str
    routing: Routing
    sources: tuple[Any, ...]


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


def load_bridge(data: Mapping[str, Any]) -> BridgeSettings:
    """The settings in *data* (a parsed TOML document).

    Raises:
        ValueError: something is missing or malformed; the message names it.
    """
    bridge = data.get("bridge")
    if not isinstance(bridge, dict):
        raise ValueError("no [bridge] table")
    unknown = sorted(set(bridge) - {"redis", "sources", "routes"})
    if unknown:
        raise ValueError(f"bridge: unknown settings: {', '.join(unknown)}")
    redis = bridge.get("redis")
    if not isinstance(redis, str) or not redis.startswith(("redis://", "rediss://")):
        raise ValueError("bridge.redis: the backplane's redis:// URL is needed")
    sources = bridge.get("sources") or []
    if not sources:
        raise ValueError("bridge.sources: at least one [[bridge.sources]] table is needed")
    routes = bridge.get("routes") or []
    if not routes:
        raise ValueError("bridge.routes: at least one [[bridge.routes]] table is needed")
    routing = Routing.from_config(routes)
    if any(route.key for route in routing.routes):
        raise ValueError("bridge.routes: table routes through a backplane are not supported yet")
    made = tuple(_source(i, table) for i, table in enumerate(sources))
    names = [source.name for source in made]
    if len(set(names)) != len(names):
        raise ValueError("bridge.sources: two sources share a name; give each its own `name`")
    return BridgeSettings(redis, routing, made)


def read_bridge(path: Path) -> BridgeSettings:
    """:func:`load_bridge` of the TOML file at *path* (errors name the file)."""
    try:
        return load_bridge(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


async def run_bridge(
    settings: BridgeSettings, *, task_status: trio.TaskStatus[Bridge] = trio.TASK_STATUS_IGNORED
) -> None:
    """Publish into the cluster at ``settings.redis`` from the sources, until cancelled."""
    from tickwire.backplane import open_publisher

    async with open_publisher(settings.redis) as hub, trio.open_nursery() as nursery:
        bridge = Bridge(hub, settings.routing)
        sources: tuple[Source, ...] = settings.sources
        for source in sources:
            await nursery.start(bridge.run_source, source)
        task_status.started(bridge)
