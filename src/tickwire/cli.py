"""The ``tickwire`` command line.

Imports: argparse, tickwire.

``tickwire serve --demo ticker`` runs a server streaming the simulated market (or ``game``);
``tickwire decode HEX`` explains one tickwire/2 message; ``tickwire feed`` prints the
simulated feeds as JSON lines.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import itertools
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
from rich import box
from rich.console import Console
from rich.table import Table

from tickwire import training
from tickwire._groups import unwrapped
from tickwire._version import __version__
from tickwire.auth import JWTAuth
from tickwire.broadcast import Hub, TopicConfig
from tickwire.config import Limits
from tickwire.dashboard import VIEWS, Dashboard
from tickwire.errors import BackplaneUnavailable, TickwireError
from tickwire.logs import configure as configure_logging
from tickwire.metrics import BridgeCollector, MetricsEndpoint, registry_for, serve_metrics
from tickwire.sansio import envelope
from tickwire.sansio.compression import CompressionConfig, Dictionary
from tickwire.sansio.events import KIND_OF
from tickwire.sansio.negotiation import MSGPACK_ZSTD, Negotiated
from tickwire.sansio.session import decode_message
from tickwire.server import Server
from tickwire.settings import ServeSettings, SettingsError, topic_tables
from tickwire.settings import add_arguments as add_setting_arguments
from tickwire.settings import load as load_settings
from tickwire.sim import ENTITY_SCHEMA, QUOTE_SCHEMA, GameWorld, MarketFeed, quote_row
from tickwire.tail import TailOptions, plain, tail
from tickwire.workers import WORKER_ENV, Supervisor, reserve_port
from tickwire.workers import worker as workers_of

__all__ = ["main"]

log = logging.getLogger("tickwire.cli")


def _decode(args: argparse.Namespace) -> int:
    try:
        message = bytes.fromhex(args.hex.replace(" ", ""))
    except ValueError:
        print("tickwire decode: not hexadecimal", file=sys.stderr)
        return 2
    try:
        compressed, dict_id, body = envelope.split(message)
        if dict_id:
            print(f"compressed with dictionary {dict_id}: fetch it from the server to decode")
            return 1
        event = decode_message(message, negotiated=Negotiated.of(MSGPACK_ZSTD), limits=Limits())
    except TickwireError as exc:
        code = getattr(exc, "close_code", None)
        print(f"invalid: {exc} (close code {code})", file=sys.stderr)
        return 1
    kind = KIND_OF.get(type(event))
    header = (
        f"header {message[0]:#04x}: {'zstd' if compressed else 'plain'}, {len(body)} body bytes"
    )
    print(header)
    print(json.dumps({"kind": kind.name if kind else "?", **plain(event)}, indent=2))
    return 0


def _feed(args: argparse.Namespace) -> int:
    if args.which == "ticker":
        feed = MarketFeed(seed=args.seed, symbols=args.symbols)
        for update in feed.take(args.count):
            print(json.dumps(update))
    else:
        world = GameWorld(seed=args.seed, entities=args.entities)
        print(json.dumps({"snapshot": world.snapshot()}))
        for _ in range(args.count):
            print(json.dumps(world.tick().payload()))
    return 0


WINDOW = 0.010  # the ticker demo's batch window, seconds


def _market_config(hub: Hub) -> None:
    """The ticker demo's topic settings: 10 ms windows for ``quotes`` and ``trades.*``."""
    hub.configure("quotes", TopicConfig(batch_window=WINDOW))
    hub.configure("trades.*", TopicConfig(batch_window=WINDOW))


def _market_topics(hub: Hub) -> None:
    """The ticker demo's topics: the ``quotes`` table and the ``trades.<symbol>`` streams,
    both in 10 ms windows."""
    _market_config(hub)
    hub.table("quotes", QUOTE_SCHEMA)


def _publish_market(hub: Hub, batch: list[dict[str, Any]]) -> None:
    with hub.burst():  # one write per subscriber for the whole tick
        for update in batch:
            if update["type"] == "quote":
                hub.upsert("quotes", update["symbol"], quote_row(update))
            else:
                hub.publish_nowait(f"trades.{update['symbol']}", update)


class _Outage:
    """What the demo could not publish while Redis was unreachable: quotes kept (the
    latest fields of each symbol, applied once Redis is back), trades counted and logged
    (a stream's message has no later value to stand for it)."""

    def __init__(self) -> None:
        self.quotes: dict[str, dict[str, Any]] = {}
        self.trades = 0
        self.since: float | None = None

    def publish(self, hub: Hub, batch: list[dict[str, Any]]) -> None:
        failed = False
        for update in batch:
            if update["type"] == "quote":
                self.quotes.setdefault(update["symbol"], {}).update(quote_row(update))
                continue
            try:
                hub.publish_nowait(f"trades.{update['symbol']}", update)
            except BackplaneUnavailable:
                failed = True
                self.trades += 1
        if self.quotes:
            try:
                hub.update("quotes", self.quotes)
                self.quotes = {}
            except BackplaneUnavailable:
                failed = True
        if failed:
            self._began()
        elif self.since is not None:
            log.warning(
                "demo: Redis takes updates again after %.1f s; %d trades were not published",
                time.monotonic() - self.since,
                self.trades,
            )
            self.since, self.trades = None, 0

    def _began(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning(
                "demo: Redis is unreachable; quotes are kept (the latest of each symbol) "
                "and trades are not published until it is back"
            )


async def _joined(hub: Hub, names: Sequence[str]) -> None:
    """With a backplane: wait for Redis, then follow the demo's tables (Redis gives their
    ids, offsets and rows) before the demo writes to them."""
    backplane = hub.backplane
    if backplane is None:
        return
    while True:
        await backplane.wait_connected()
        try:
            for name in names:
                await hub.join(name)
            return
        except BackplaneUnavailable:
            await trio.sleep(0.5)


def _start_world(hub: Hub, world: GameWorld) -> None:
    """The game demo's ``world`` table, filled with the world as it starts."""
    hub.table("world", ENTITY_SCHEMA)
    hub.update("world", {e.pop("id"): e for e in world.snapshot()})


def _tick_world(hub: Hub, world: GameWorld) -> None:
    changes = world.tick()
    hub.update("world", changes.changes(), deletes=changes.despawned)


def _demo_dictionary(demo: str, *, symbols: int, entities: int) -> Dictionary:
    """A dictionary for a demo, trained on a few simulated seconds of another seed, sent as
    the demo sends them, so that its wire is what a deployment with a trained dictionary
    sends."""
    scratch = Hub(default_topic=TopicConfig(history_size=5000, keyframe_interval=None))
    if demo == "ticker":
        _market_topics(scratch)
        feed = MarketFeed(seed=2, symbols=symbols)
        for _, batch in zip(range(500), feed.batches(WINDOW), strict=False):  # 5 seconds
            _publish_market(scratch, batch)
            scratch.flush()  # the window's delta, as the demo's timer sends it
    else:
        world = GameWorld(seed=2, entities=entities)
        _start_world(scratch, world)
        for _ in range(400):
            _tick_world(scratch, world)
    return scratch.train_dictionary(size=16 * 1024)


async def _demo_ticker(hub: Hub, rate: float, symbols: int) -> None:
    """Publish the simulated market in real time (:func:`_market_topics`); with a
    backplane, into the cluster, riding out Redis outages (:class:`_Outage`). The
    caller gives its topics' settings first (:func:`_market_config`)."""
    hub.table("quotes", QUOTE_SCHEMA)
    await _joined(hub, ["quotes"])
    outage = _Outage()
    # The quotes' timestamps start now and advance with the windows, which are paced in
    # real time; a window's quotes go out when it has ended, so that none is stamped later
    # than it is sent and a subscriber's "now - ts" is the latency from the tick to it.
    start_ns = time.time_ns()
    feed = MarketFeed(seed=int(time.time()), symbols=symbols, rate=rate, start_ns=start_ns)
    start = trio.current_time()
    for ends_ns, batch in feed.windows(WINDOW):
        await trio.sleep_until(start + (ends_ns - start_ns) / 1e9)
        if hub.backplane is None:
            _publish_market(hub, batch)
        else:
            outage.publish(hub, batch)


async def _demo_game(hub: Hub, tick_rate: float, entities: int) -> None:
    """Publish a simulated game world in real time: the ``world`` table of entities, one
    delta per tick; with a backplane, the whole world again after a Redis outage (only
    what changed goes out)."""
    world = GameWorld(seed=int(time.time()), entities=entities, tick_rate=tick_rate)
    if hub.backplane is None:
        _start_world(hub, world)
    else:
        hub.table("world", ENTITY_SCHEMA)
        await _joined(hub, ["world"])
    behind = hub.backplane is not None  # the world is not in the table yet
    start = trio.current_time()
    for tick in itertools.count(1):
        if not behind:
            try:
                _tick_world(hub, world)
            except BackplaneUnavailable:
                behind = True
        else:
            world.tick()
            try:
                _resync_world(hub, world)
                behind = False
            except BackplaneUnavailable:
                pass
        await trio.sleep_until(start + tick / tick_rate)


def _resync_world(hub: Hub, world: GameWorld) -> None:
    """The whole world into the ``world`` table, and the rows of entities gone deleted."""
    rows = {e.pop("id"): e for e in world.snapshot()}
    topic = hub.topic_by_name("world")
    known = [] if topic is None or topic.table is None else topic.table.keys()
    hub.update("world", rows, deletes=[k for k in known if k not in rows])


async def _summarise(server: Server, interval: float = 60.0) -> None:
    """One INFO line a minute: what an operator wants in a steady stream."""
    while True:
        await trio.sleep(interval)
        s = server.statistics()
        log.info(
            "%d connections open, %d sent, %d slow-consumer disconnects",
            s.connections_open,
            s.messages_out,
            s.slow_consumer_disconnects,
            extra={
                "connections": s.connections_open,
                "messages_out": s.messages_out,
                "bytes_out": s.bytes_out,
                "dropped": s.dropped,
                "refused": sum(s.handshakes_refused.values()),
            },
        )


async def _serve_async(settings: ServeSettings) -> None:
    compression = CompressionConfig()
    if settings.dictionary:
        try:
            data = Path(settings.dictionary).read_bytes()
            dictionary = Dictionary.from_bytes(data, dict_id=1)
        except (OSError, ValueError) as exc:
            raise _StartupError(f"dictionary {settings.dictionary}: {exc}") from None
        compression = CompressionConfig(dictionary=dictionary)
    elif settings.demo:
        dictionary = _demo_dictionary(
            settings.demo, symbols=settings.symbols, entities=settings.entities
        )
        compression = CompressionConfig(dictionary=dictionary)
    backplane = _backplane(settings.redis) if settings.redis else None
    hub = Hub(
        compression=compression,
        max_history_bytes=settings.max_history_bytes,
        max_client_topics=settings.max_client_topics,
        backplane=backplane,
    )
    worker, workers = workers_of()
    for pattern, topic_config in settings.topics:  # before the demo's: the first match wins
        hub.configure(pattern, topic_config)
    context = None
    if settings.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
        except (OSError, ssl.SSLError) as exc:
            why = exc.strerror or str(exc)
            raise _StartupError(f"tls_cert/tls_key: cannot load them: {why}") from None
    authenticate = JWTAuth(key=settings.jwt_secret) if settings.jwt_secret else None
    server = Server(hub, config=settings.server, authenticate=authenticate)
    host = settings.host
    registry = registry_for(server)
    bridge = None
    if settings.bridge is not None:  # the file's [bridge] sources feed this hub
        from tickwire.sources import Bridge

        try:
            bridge = Bridge(hub, settings.bridge.routing)
        except ValueError as exc:
            raise _StartupError(f"bridge: {exc}") from None
        registry.register(BridgeCollector(bridge, settings.bridge.sources))
    async with trio.open_nursery() as nursery:
        # The metrics endpoint outlives the server's drain: /readyz says 503 meanwhile.
        endpoint: MetricsEndpoint | None = None
        dashboard = None
        if settings.dashboard == "on" or (settings.dashboard == "auto" and settings.demo):
            view = VIEWS.get(settings.demo or "")
            dashboard = Dashboard(port=0, scheme="wss" if context else "ws", view=view)
        if settings.metrics_port is not None:
            try:
                endpoint = await nursery.start(
                    functools.partial(
                        serve_metrics,
                        server,
                        host,
                        settings.metrics_port,
                        registry=registry,
                        dashboard=dashboard,
                    )
                )
            except OSError as exc:
                raise _CannotListen(host, settings.metrics_port, "metrics_port", exc) from None
        async with trio.open_nursery() as serving:
            try:
                await serving.start(
                    functools.partial(
                        server.run,
                        host,
                        settings.port,
                        ssl_context=context,
                        reuse_port=workers > 1,
                    )
                )
            except OSError as exc:
                raise _CannotListen(host, settings.port, "port", exc) from None
            scheme = "wss" if context else "ws"
            topics = {
                "ticker": "the table quotes and the streams trades.*",
                "game": "the table world",
            }.get(settings.demo or "", "")
            print(
                f"tickwire serving on {scheme}://{_hostport(host, server.port)}/"
                + (f" (demo {settings.demo}: topics {topics})" if settings.demo else "")
                + (f" (worker {worker + 1} of {workers})" if workers > 1 else ""),
                flush=True,
            )
            if endpoint is not None:
                print(
                    f"metrics on http://{_hostport(host, endpoint.port)}/metrics "
                    "(and /healthz, /readyz)",
                    flush=True,
                )
                if dashboard is not None:
                    dashboard.port = server.port
                    print(f"dashboard on http://{_hostport(host, endpoint.port)}/", flush=True)
            if backplane is not None:
                print(f"sharing topics through {_redacted(settings.redis)}", flush=True)
            if settings.demo == "ticker":
                _market_config(hub)
            feeds = worker == 0  # with workers, one feed for all of them
            if settings.demo == "ticker" and feeds:
                serving.start_soon(_demo_ticker, hub, settings.rate, settings.symbols)
            elif settings.demo == "game" and feeds:
                serving.start_soon(_demo_game, hub, settings.tick_rate, settings.entities)
            if bridge is not None:
                assert settings.bridge is not None
                for source in settings.bridge.sources:
                    serving.start_soon(bridge.run_source, source)
                names = ", ".join(source.name for source in settings.bridge.sources)
                print(f"feeding topics from {names}", flush=True)
            serving.start_soon(_summarise, server)
            # SIGTERM (what orchestrators send) shuts down as gracefully as Ctrl+C: the
            # server says 1001 to every client and drains within shutdown_timeout.
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    print("tickwire: SIGTERM, shutting down", flush=True)
                    await server.aclose()
                    serving.cancel_scope.cancel()
                    break
        nursery.cancel_scope.cancel()


def _backplane(url: str) -> Any:
    """A :class:`~tickwire.backplane.RedisBackplane` for *url* (coredis is an extra)."""
    try:
        from tickwire.backplane import RedisBackplane  # here: coredis is optional
    except ImportError as exc:
        raise _StartupError(
            f"redis needs coredis ({exc}): python -m pip install 'tickwire[redis]'"
        ) from None
    return RedisBackplane(url)


def _redacted(url: str) -> str:
    """*url* without its password, for what tickwire prints."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class _StartupError(Exception):
    """What stops tickwire serve before it serves: said in one line, exit status 1."""


class _CannotListen(_StartupError):
    def __init__(self, host: str, port: int, setting: str, error: OSError) -> None:
        why = error.strerror or str(error)
        super().__init__(f"cannot listen on {_hostport(host, port)} ({setting}): {why}")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"tickwire serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1 and WORKER_ENV not in os.environ:
        return _supervise(settings, args.argv)
    try:
        with unwrapped():
            trio.run(_serve_async, settings)
    except _StartupError as exc:
        print(f"tickwire serve: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:  # Ctrl+C: trio may wrap it in an exception group
        interrupted = isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, BaseExceptionGroup) and exc.split(KeyboardInterrupt)[1] is None
        )
        if not interrupted:
            raise
        print("tickwire: shut down", flush=True)
    return 0


def _supervise(settings: ServeSettings, argv: Sequence[str]) -> int:
    """``--workers N``: N processes of this very command on one port (tickwire.workers)."""
    reserved = None
    port = settings.port
    if port == 0:  # one free port for all of them
        reserved = reserve_port(settings.host)
        port = reserved.getsockname()[1]
    scheme = "wss" if settings.tls_cert else "ws"
    supervisor = Supervisor(
        command=argv,
        count=settings.workers,
        url=f"{scheme}://{_hostport(settings.host, port)}/",
        port=port,
        metrics_port=settings.metrics_port,
        drain=settings.server.shutdown_timeout + 10.0,
    )
    return trio.run(supervisor.run, reserved)


def _tail(args: argparse.Namespace) -> int:
    options = TailOptions(
        url=args.url,
        topics=tuple(args.topics),
        json=args.json,
        count=args.count,
        duration=args.duration,
        stats_interval=None if args.no_stats else args.stats_interval,
        max_rate=args.max_rate,
        policy=args.policy,
        token=args.token or os.environ.get("TICKWIRE_TOKEN") or None,
        compression=not args.no_compression,
        retries=args.retries,
        cafile=args.cafile,
    )
    logging.basicConfig(level="WARNING", format="%(message)s")
    # tail says what the server noted of a topic itself, once, in its own words.
    logging.getLogger("tickwire.client").addFilter(
        lambda record: not record.getMessage().startswith("tickwire server says of")
    )
    try:
        return trio.run(tail, options)
    except KeyboardInterrupt:
        return 0


def _dict_train(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        if args.url:
            if not args.topic:
                err.print("tickwire dict train: --url needs at least one --topic")
                return 2
            payloads, skipped = trio.run(
                functools.partial(
                    training.record,
                    args.url,
                    args.topic,
                    count=args.count,
                    duration=args.duration,
                    token=args.token,
                    cafile=args.cafile,
                )
            )
        elif args.sample:
            if args.sample == "-":
                payloads, skipped = training.payloads_from_lines(sys.stdin)
            else:
                with open(args.sample, encoding="utf-8") as file:
                    payloads, skipped = training.payloads_from_lines(file)
        else:
            err.print("tickwire dict train: give a JSON-lines SAMPLE file, or --url and --topic")
            return 2
        if skipped:
            err.print(
                f"skipped {skipped} table updates: table deltas are encoded by the server; "
                "train those with Hub.train_dictionary()"
            )
        data, result = training.evaluate(
            training.bodies(payloads), size=args.size, level=args.level
        )
    except (training.TrainingError, OSError, TickwireError) as exc:
        err.print(f"tickwire dict train: {exc}")
        return 1
    console.print(
        f"trained on {result.trained_on:,} messages, measured on {result.tested_on:,} it never "
        f"saw; dictionary {result.dictionary_bytes:,} bytes, zstd level {result.level}"
    )
    table = Table(box=box.SIMPLE_HEAD)
    for name in ("", "B/message", "vs msgpack", "compress µs"):
        table.add_column(name, justify="left" if not name else "right")
    base = result.msgpack_bytes
    table.add_row("msgpack", f"{base:.1f}", "100%", "")
    for name, size, us in (
        ("zstd, no dictionary", result.zstd_bytes, result.zstd_us),
        ("zstd + dictionary", result.dict_bytes, result.dict_us),
    ):
        table.add_row(name, f"{size:.1f}", f"{100 * size / base:.0f}%", f"{us:.1f}")
    console.print(table)
    saved = 1 - result.dict_bytes / result.zstd_bytes
    console.print(f"the dictionary saves {100 * saved:.0f}% of what zstd alone sends")
    if args.output:
        digest = training.save(args.output, data)
        console.print(
            f"written to {args.output} (sha256 {digest[:16]}...); "
            f"serve with it: tickwire serve --dictionary {args.output}"
        )
    return 0


BENCHES = ("codecs", "fanout", "wire", "deliver", "scaleout", "ingest", "browser")


def _bench_dir() -> Path | None:
    """The bench/ directory of a source checkout: beside src/ (an editable install), or
    in the working directory."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "bench", Path.cwd() / "bench"):
        if (candidate / "codecs.py").is_file():
            return candidate
    return None


def _bench(args: argparse.Namespace) -> int:
    bench = _bench_dir()
    if bench is None:
        print(
            "tickwire bench: the bench scripts come with a source checkout (bench/); "
            "run this from the repository, after python -m pip install -e '.[dev]'",
            file=sys.stderr,
        )
        return 2
    command = [sys.executable, str(bench / f"{args.which}.py"), *args.options]
    return subprocess.call(command)


def _port_or_off(text: str) -> int:
    """A port number, or -1 for "off"."""
    if text.lower() == "off":
        return -1
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(text)
    return port


def _bridge(args: argparse.Namespace) -> int:
    from tickwire.sources.config import read_bridge, run_bridge

    try:
        settings = read_bridge(args.config)
        table = tomllib.loads(args.config.read_text()).get("topics")
        if table is not None:  # [topics."pattern"], as in tickwire serve's file
            settings = attrs.evolve(settings, topics=topic_tables(table, str(args.config)))
    except (ValueError, SettingsError) as exc:
        print(f"tickwire bridge: {exc}", file=sys.stderr)
        return 2
    if args.metrics_port is not None:
        port = None if args.metrics_port < 0 else args.metrics_port
        settings = attrs.evolve(settings, metrics_port=port)
    names = ", ".join(source.name for source in settings.sources)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            try:
                with unwrapped():
                    running = await nursery.start(run_bridge, settings)
            except OSError as exc:
                raise _CannotListen(
                    settings.metrics_host, settings.metrics_port or 0, "metrics_port", exc
                ) from None
            said = f"tickwire bridge: {names} -> {settings.redis}"
            if running.metrics is not None:
                where = _hostport(settings.metrics_host, running.metrics.port)
                said += f" (metrics on http://{where}/metrics)"
            print(said, file=sys.stderr, flush=True)

    try:
        with unwrapped():
            trio.run(main)
    except _StartupError as exc:
        print(f"tickwire bridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="tickwire", description=__doc__.splitlines()[0])
    parser.add_argument("-V", "--version", action="version", version=f"tickwire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "serve",
        help="run a tickwire server (with --demo: a simulated feed)",
        description="Run a tickwire server. Each setting comes from its flag, else from "
        "TICKWIRE_<SETTING> in the environment, else from the --config TOML file, else "
        "the default (docs/configuration.md).",
    )
    add_setting_arguments(p)
    p.set_defaults(run=_serve)
    p = sub.add_parser(
        "bridge",
        help="feed topics from message brokers into the servers' Redis backplane",
        description="Consume the sources of the [bridge] table of a TOML file (Redis "
        "Streams, NATS JetStream, RabbitMQ, Kafka) and publish each message, at least once and "
        "published once, into the cluster that shares the backplane at bridge.redis "
        "(docs/sources.md).",
    )
    p.add_argument("--config", required=True, type=Path, help="the TOML file")
    p.add_argument(
        "--metrics-port",
        type=_port_or_off,
        metavar="PORT|off",
        help="serve /metrics, /healthz and /readyz here (over bridge.metrics_port)",
    )
    p.set_defaults(run=_bridge)
    p = sub.add_parser(
        "tail",
        help="subscribe and print the updates of topics as they arrive",
        description="Subscribe to TOPICs (names or patterns such as trades.*) and print "
        "each update on standard output; live counters go to standard error.",
    )
    p.add_argument("url", help="ws:// or wss:// address of the server")
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    p.add_argument("--json", action="store_true", help="JSON lines instead of text")
    p.add_argument("--count", type=int, help="stop after this many updates")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--stats-interval", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument("--no-stats", action="store_true", help="no counters on standard error")
    p.add_argument("--max-rate", type=float, help="tables: at most this many deltas a second")
    p.add_argument("--policy", choices=("disconnect", "drop_oldest", "conflate"))
    p.add_argument("--token", help="bearer token (or TICKWIRE_TOKEN)")
    p.add_argument("--no-compression", action="store_true", help="do not offer zstd")
    p.add_argument(
        "--retries",
        type=int,
        default=20,
        help="reconnection attempts after a failure retrying may fix (default 20; 0: none)",
    )
    p.add_argument("--cafile", help="PEM certificates to trust for wss:// (a private CA)")
    p.set_defaults(run=_tail)
    p = sub.add_parser(
        "bench",
        help="run a bench script (codecs, fanout, wire, deliver, scaleout, ingest, browser) with "
        "progress bars and tables",
        description="Run bench/<which>.py from the source checkout. Options after the name "
        "go to the script: --quick (small, as CI runs it), --json PATH, --plot PATH.png "
        "(codecs, fanout; needs the plot extra). Results and how to read them: "
        "bench/README.md.",
    )
    p.add_argument("which", choices=BENCHES)
    p.add_argument("options", nargs=argparse.REMAINDER, help="passed to the script")
    p.set_defaults(run=_bench)
    p = sub.add_parser("dict", help="zstd dictionaries: train one and see what it gains")
    dict_sub = p.add_subparsers(dest="dict_command", required=True)
    p = dict_sub.add_parser(
        "train",
        help="train a dictionary on recorded or live messages",
        description="Train a zstd dictionary on stream messages from a JSON-lines SAMPLE "
        "(tickwire tail --json or tickwire feed output; - for standard input) or from live "
        "topics (--url, --topic), and print what it gains on messages it never saw.",
    )
    p.add_argument("sample", nargs="?", help="JSON-lines file, or - for standard input")
    p.add_argument("--url", help="record from this server instead")
    p.add_argument("--topic", action="append", help="topic or pattern to record (repeatable)")
    p.add_argument("--count", type=int, default=2000, help="messages to record (default 2000)")
    p.add_argument("--duration", type=float, default=30.0, help="at most this many seconds")
    p.add_argument("--token", help="bearer token for --url")
    p.add_argument("--cafile", help="PEM certificates to trust for a wss:// --url")
    p.add_argument("--size", type=int, default=16 * 1024, help="dictionary bytes (16384)")
    p.add_argument("--level", type=int, default=3, help="zstd level (3)")
    p.add_argument("-o", "--output", type=Path, help="write the dictionary here")
    p.set_defaults(run=_dict_train)
    p = sub.add_parser("decode", help="explain one binary tickwire/2 message given in hex")
    p.add_argument("hex")
    p.set_defaults(run=_decode)
    p = sub.add_parser("feed", help="print a simulated feed as JSON lines")
    p.add_argument("which", choices=("ticker", "game"))
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--symbols", type=int, default=500)
    p.add_argument("--entities", type=int, default=200)
    p.set_defaults(run=_feed)
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(argv)
    args.argv = argv  # tickwire serve --workers runs the same command in each worker
    if extras:
        _unrecognized(sub.choices[args.command], extras, args)
    return int(args.run(args))


def _unrecognized(
    command: argparse.ArgumentParser, extras: list[str], args: argparse.Namespace
) -> None:
    """Refuse what the command does not take, with its own usage and the closest flags
    (``tickwire serve --dmeo``: did you mean --demo?). Exits with status 2."""
    if getattr(args, "command", None) == "bench":
        return  # its options go to the script  # pragma: no cover - REMAINDER takes them
    known = sorted(set(re.findall(r"--[a-z][a-z0-9-]*", command.format_help())))
    hints = []
    for extra in extras:
        close = difflib.get_close_matches(extra.split("=", 1)[0], known, n=1, cutoff=0.6)
        if close:
            hints.append(f"{extra}: did you mean {close[0]}?")
    message = f"unrecognized arguments: {' '.join(extras)}"
    command.error(message + ("; " + "; ".join(hints) if hints else ""))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
