"""The ``tickwire`` command line.

Imports: argparse, tickwire.

``tickwire serve --demo ticker`` runs a server streaming the simulated market (or ``game``);
``tickwire decode HEX`` explains one tickwire/1 message; ``tickwire feed`` prints the
simulated feeds as JSON lines.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from tickwire._version import __version__
from tickwire.auth import JWTAuth
from tickwire.broadcast import Hub, TopicConfig
from tickwire.config import Limits, ServerConfig
from tickwire.errors import TickwireError
from tickwire.sansio import envelope
from tickwire.sansio.events import KIND_OF
from tickwire.sansio.negotiation import MSGPACK_ZSTD, Negotiated
from tickwire.sansio.session import decode_message
from tickwire.server import Server, serve
from tickwire.sim import ENTITY_SCHEMA, QUOTE_SCHEMA, GameWorld, MarketFeed, quote_row

__all__ = ["main"]


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if attrs.has(type(value)):
        return {a.name: _plain(getattr(value, a.name)) for a in attrs.fields(type(value))}
    return value


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
    print(json.dumps({"kind": kind.name if kind else "?", **_plain(event)}, indent=2))
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


async def _demo_ticker(hub: Hub, rate: float, symbols: int) -> None:
    """Publish the simulated market in real time: the ``quotes`` table (the latest quote per
    symbol) and the ``trades.<symbol>`` streams, both in 10 ms windows."""
    hub.configure("quotes", TopicConfig(batch_window=0.010))
    hub.configure("trades.*", TopicConfig(batch_window=0.010))
    hub.table("quotes", QUOTE_SCHEMA)
    feed = MarketFeed(seed=int(time.time()), symbols=symbols, rate=rate)
    start = trio.current_time()
    for tick, batch in enumerate(feed.batches(0.010), start=1):
        for update in batch:
            if update["type"] == "quote":
                hub.upsert("quotes", update["symbol"], quote_row(update))
            else:
                hub.publish_nowait(f"trades.{update['symbol']}", update)
        await trio.sleep_until(start + tick * 0.010)


async def _demo_game(hub: Hub, tick_rate: float, entities: int) -> None:
    """Publish a simulated game world in real time: the ``world`` table of entities, one
    delta per tick."""
    world = GameWorld(seed=int(time.time()), entities=entities, tick_rate=tick_rate)
    hub.table("world", ENTITY_SCHEMA)
    hub.update("world", {e.pop("id"): e for e in world.snapshot()})
    start = trio.current_time()
    for tick in itertools.count(1):
        changes = world.tick()
        hub.update("world", changes.changes(), deletes=changes.despawned)
        await trio.sleep_until(start + tick / tick_rate)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TICKWIRE_{name}", default)


async def _serve_async(args: argparse.Namespace) -> None:
    hub = Hub()
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    authenticate = JWTAuth(key=args.jwt_secret) if args.jwt_secret else None
    config = ServerConfig(
        allowed_origins=args.allowed_origin or None,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=min(10.0, args.heartbeat_interval / 2),
    )
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(
            functools.partial(
                serve,
                hub,
                args.host,
                args.port,
                config=config,
                ssl_context=context,
                authenticate=authenticate,
            )
        )
        scheme = "wss" if context else "ws"
        topics = {
            "ticker": "the table quotes and the streams trades.*",
            "game": "the table world",
        }.get(args.demo or "", "")
        print(
            f"tickwire serving on {scheme}://{args.host}:{server.port}/"
            + (f" (demo {args.demo}: topics {topics})" if args.demo else ""),
            flush=True,
        )
        if args.demo == "ticker":
            nursery.start_soon(_demo_ticker, hub, args.rate, args.symbols)
        elif args.demo == "game":
            nursery.start_soon(_demo_game, hub, args.tick_rate, args.entities)
        # SIGTERM (what orchestrators send) shuts down as gracefully as Ctrl+C: cancelling
        # serve() says 1001 to every client and drains within shutdown_timeout.
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                print("tickwire: SIGTERM, shutting down", flush=True)
                nursery.cancel_scope.cancel()
                break


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if bool(args.tls_cert) != bool(args.tls_key):
        print("tickwire serve: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        trio.run(_serve_async, args)
    except BaseException as exc:  # Ctrl+C: trio may wrap it in an exception group
        interrupted = isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, BaseExceptionGroup) and exc.split(KeyboardInterrupt)[1] is None
        )
        if not interrupted:
            raise
        print("tickwire: shut down", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="tickwire", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tickwire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run a tickwire server (with --demo: a simulated feed)")
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="default 127.0.0.1")
    p.add_argument("--port", type=int, default=int(_env("PORT", "8765")), help="default 8765")
    p.add_argument("--demo", choices=("ticker", "game"), help="publish a simulated feed")
    p.add_argument("--rate", type=float, default=5000.0, help="ticker updates a second")
    p.add_argument("--symbols", type=int, default=500, help="ticker symbols")
    p.add_argument("--tick-rate", type=float, default=20.0, help="game ticks a second")
    p.add_argument("--entities", type=int, default=200, help="game entities")
    p.add_argument("--tls-cert", default=_env("TLS_CERT", ""), help="PEM certificate chain")
    p.add_argument("--tls-key", default=_env("TLS_KEY", ""), help="PEM private key")
    p.add_argument("--jwt-secret", default=_env("JWT_SECRET", ""), help="require HS256 JWTs")
    p.add_argument("--allowed-origin", action="append", help="allow this Origin (repeatable)")
    p.add_argument("--heartbeat-interval", type=float, default=20.0, help="seconds")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
    p.set_defaults(run=_serve)
    p = sub.add_parser("decode", help="explain one binary tickwire/1 message given in hex")
    p.add_argument("hex")
    p.set_defaults(run=_decode)
    p = sub.add_parser("feed", help="print a simulated feed as JSON lines")
    p.add_argument("which", choices=("ticker", "game"))
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--symbols", type=int, default=500)
    p.add_argument("--entities", type=int, default=200)
    p.set_defaults(run=_feed)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
