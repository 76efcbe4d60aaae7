"""Hostile input for the fuzz suite: client messages, valid ones mutated, and worse.

Used by tests/test_fuzz.py (briefly, under pytest) and tests/fuzz.py (a long run against a
real ``tickwire serve``). Seeded: the same seed gives the same inputs.

Each input is ``(kind, data)``: ``"binary"`` or ``"text"`` for a whole WebSocket message, or
``"raw"`` for bytes written to the TCP stream as they are, frames and all.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Iterator
from typing import Any

import msgpack
import zstandard

from tickwire.sansio.events import (
    Auth,
    DictRequest,
    Event,
    Position,
    Publish,
    Resync,
    Subscribe,
    Unsubscribe,
)

Input = tuple[str, bytes | str]

TOPICS = ["feed", "quotes", "chat", "input.p1", "secret.keys", "trades.AAPL", "*.keys", "x.*"]
NASTY_NUMBERS: list[Any] = [
    0,
    -1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    1.5,
    -0.0,
    1e308,
    math.inf,
    -math.inf,
    math.nan,
]


def _value(rng: random.Random, depth: int = 0) -> Any:
    """A payload: scalars of every kind, containers, sometimes deep or wide."""
    roll = rng.random()
    if depth > 3 or roll < 0.45:
        return rng.choice(
            [
                None,
                True,
                rng.choice(NASTY_NUMBERS),
                rng.randint(-(2**31), 2**31),
                rng.random() * 1e6,
                "x" * rng.randint(0, 40),
                "\u00e9\U0001f600",
                bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 16))),
            ]
        )
    if roll < 0.7:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if roll < 0.95:
        return {f"k{i}": _value(rng, depth + 1) for i in range(rng.randint(0, 5))}
    nested: Any = 1
    for _ in range(rng.randint(20, 60)):  # around the nesting limits
        nested = [nested]
    return nested


def _event(rng: random.Random) -> Event:
    topic = rng.choice(TOPICS) if rng.random() < 0.8 else f"made.up{rng.randint(0, 10**6)}"
    request_id = rng.choice([None, rng.randint(0, 2**20)])
    rid = request_id if request_id is not None else 1
    choice = rng.randrange(8)
    if choice <= 2:
        return Publish(request_id, topic, _value(rng), rng.choice([None, "k", f"k{rid}"]))
    if choice == 3:
        resume = rng.choice([None, Position(rng.randint(0, 2**31), rng.randint(0, 100))])
        options = rng.choice([{}, {"policy": "conflate"}, {"max_rate": 0}, {"bogus": 1}])
        return Subscribe(rid, topic, resume, options)
    if choice == 4:
        return Unsubscribe(rid, topic)
    if choice == 5:
        return Resync(rid, rng.randint(0, 50), rng.choice([None, rng.randint(0, 100)]))
    if choice == 6:
        return DictRequest(rng.randint(1, 15))
    return Auth(rid, rng.choice(["", "junk", "a.b.c", "x" * 300]))


def _fields(event: Event) -> list[Any]:
    from tickwire.sansio.codec import to_fields

    return to_fields(event)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(5)
        if action == 0 and out:
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif action == 1 and out:
            del out[rng.randrange(len(out)) :]
        elif action == 2:
            i = rng.randrange(len(out) + 1)
            out[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        elif action == 3 and out:
            i = rng.randrange(len(out))
            out[i] = rng.choice([0xC1, 0xC7, 0xD4, 0xDC, 0xDD, 0xDF, 0xCB, 0xCF, 0x7F, 0xFF])
        else:
            out = out + out[: rng.randint(0, len(out))]
    return bytes(out)


def _bomb(rng: random.Random) -> bytes:
    """A small compressed message that claims, or holds, far more than the limits."""
    if rng.random() < 0.5:
        body = msgpack.packb([12, 1, "chat", "x" * rng.choice([10_000, 300_000, 5_000_000])])
        frame = zstandard.ZstdCompressor(write_content_size=True).compress(body)
        return b"\x01" + frame[4:]
    # A frame header declaring about 7 exabytes (PROTOCOL.md §5.2).
    return bytes.fromhex("01e06c06060663636363")


def _raw_frame(rng: random.Random) -> bytes:
    """A WebSocket frame as a hostile client writes it: reserved bits, bad opcodes, lies."""
    first = rng.choice([0xC2, 0xA2, 0x93, 0x8B, 0x02, 0x80, 0x89, 0x88])
    length = rng.choice([0, 5, 126, 127])
    head = bytes([first, 0x80 | length])
    if length == 126:
        head += struct.pack("!H", rng.randint(0, 65535))
    elif length == 127:
        head += struct.pack("!Q", rng.choice([2**63 - 1, 2**40, 70000]))
    return head + b"\x00\x00\x00\x00" + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 9)))


def inputs(seed: int) -> Iterator[Input]:
    """Hostile inputs without end, for a client of ``tickwire.v2+zstd`` (binary) or
    ``tickwire.v2.json`` (text): the caller picks those of its variant."""
    rng = random.Random(seed)
    while True:
        roll = rng.random()
        event = _event(rng)
        if roll < 0.25:  # a valid message with a hostile payload
            try:
                yield "binary", b"\x00" + msgpack.packb(_fields(event), use_bin_type=True)
            except (OverflowError, ValueError, TypeError):
                continue
        elif roll < 0.5:
            try:
                body = b"\x00" + msgpack.packb(_fields(event), use_bin_type=True)
            except (OverflowError, ValueError, TypeError):
                continue
            yield "binary", _mutate(rng, body)
        elif roll < 0.65:
            text = json.dumps(_jsonable(_fields(event)))
            if rng.random() < 0.5:
                text = rng.choice(
                    [
                        text.replace("1.5", "1e400"),
                        text.replace('"k', '"\\ud800'),
                        text[: rng.randint(0, len(text))],
                        text.replace("[", "[" * 40, 1),
                        '[12,18446744073709551616,"chat",1,null]',
                        "NaN",
                        '{"$bin": 1}',
                    ]
                )
            yield "text", text
        elif roll < 0.75:
            yield "binary", _bomb(rng)
        elif roll < 0.85:
            yield "binary", bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        elif roll < 0.9:
            yield "text", "x" * rng.randint(0, 100)  # text on a binary variant
        else:
            yield "raw", _raw_frame(rng)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bin": ""}
    if isinstance(value, float) and not math.isfinite(value):
        return 1.5
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value
