"""The ``tickwire`` command line.

Imports: argparse, tickwire.

Today: ``tickwire decode HEX`` explains one tickwire/1 message, and ``tickwire feed`` prints
the simulated feeds as JSON lines. ``serve`` and ``tail`` arrive with the server and client.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import attrs

from tickwire._version import __version__
from tickwire.config import Limits
from tickwire.errors import TickwireError
from tickwire.sansio import envelope
from tickwire.sansio.events import KIND_OF
from tickwire.sansio.negotiation import MSGPACK_ZSTD, Negotiated
from tickwire.sansio.session import decode_message
from tickwire.sim import GameWorld, MarketFeed

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="tickwire", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tickwire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
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
