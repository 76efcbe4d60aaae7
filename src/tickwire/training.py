"""``tickwire dict train``: a zstd dictionary from recorded or live messages, and what it
gains on messages it never saw.

Imports: json, time, zstandard (through tickwire.sansio), trio, tickwire.client.

Samples are stream payloads, encoded as the hub encodes a DATA message (so that the
dictionary learns the real wire bodies). They come from a JSON-lines file (the output of
``tickwire tail --json`` or ``tickwire feed``) or from live topics. The last fifth is held
out: the figures printed are for those messages, compressed one at a time as a tickwire
server sends them, without and with the dictionary.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from tickwire._groups import unwrapped
from tickwire.client import (
    Client,
    ClientConfig,
    Message,
    Reconnect,
    TableChanged,
    TableReset,
    open_client,
)
from tickwire.config import KiB
from tickwire.sansio.codec import encode_body
from tickwire.sansio.compression import CompressionConfig, Compressor, Dictionary
from tickwire.sansio.compression import train_dictionary as zstd_train
from tickwire.sansio.events import Data

__all__ = ["Evaluation", "TrainingError", "bodies", "evaluate", "payloads_from_lines", "record"]

MIN_SAMPLES = 50


class TrainingError(ValueError):
    """Too few samples, or samples zstd cannot learn from."""


def payloads_from_lines(lines: Iterable[str]) -> tuple[list[Any], int]:
    """Stream payloads from JSON lines, and how many table lines were skipped.

    A ``tickwire tail --json`` line gives its ``payload``; its table lines (change,
    reset) are skipped (table deltas are encoded by the server: train those with
    ``Hub.train_dictionary``). Any other JSON object or value is a payload itself.

    Raises:
        TrainingError: a line is not JSON (its number is given).
    """
    payloads: list[Any] = []
    skipped = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"line {number} is not JSON: {exc.msg}") from None
        if isinstance(value, dict) and {"type", "topic", "offset"} <= value.keys():
            if value["type"] == "message":
                payloads.append(value.get("payload"))
            elif value["type"] in ("change", "reset"):
                skipped += 1
            continue
        payloads.append(value)
    return payloads, skipped


def bodies(payloads: Sequence[Any]) -> list[bytes]:
    """The DATA message bodies a hub would send for *payloads*."""
    return [encode_body(Data(1, offset, p)) for offset, p in enumerate(payloads, start=1)]


@attrs.frozen
class Evaluation:
    """What a dictionary gains on held-out messages.

    Attributes:
        trained_on, tested_on: messages in each part.
        msgpack_bytes: per message, uncompressed (envelope included).
        zstd_bytes: per message, compressed one at a time without a dictionary.
        dict_bytes: per message, with the dictionary.
        zstd_us, dict_us: microseconds to compress one message, without and with.
    """

    trained_on: int
    tested_on: int
    dictionary_bytes: int
    level: int
    msgpack_bytes: float
    zstd_bytes: float
    dict_bytes: float
    zstd_us: float
    dict_us: float


def evaluate(
    samples: Sequence[bytes], *, size: int = 16 * KiB, level: int = 3
) -> tuple[bytes, Evaluation]:
    """Train on the first four fifths of *samples*; measure on the rest.

    Raises:
        TrainingError: fewer than 50 samples, or zstd's trainer failed.
    """
    if len(samples) < MIN_SAMPLES:
        raise TrainingError(f"need at least {MIN_SAMPLES} messages, got {len(samples)}")
    cut = len(samples) * 4 // 5
    train, test = samples[:cut], samples[cut:]
    try:
        data = zstd_train(train, size=size, level=level)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    dictionary = Dictionary.from_bytes(data, dict_id=1)
    plain = Compressor(CompressionConfig(level=level, min_bytes=0))
    with_dict = Compressor(CompressionConfig(level=level, min_bytes=0, dictionary=dictionary))

    def measure(compressor: Compressor) -> tuple[float, float]:
        start = time.perf_counter()
        total = sum(len(compressor.pack(body)) for body in test)
        elapsed = time.perf_counter() - start
        return total / len(test), elapsed / len(test) * 1e6

    zstd_bytes, zstd_us = measure(plain)
    dict_bytes, dict_us = measure(with_dict)
    return data, Evaluation(
        trained_on=len(train),
        tested_on=len(test),
        dictionary_bytes=len(data),
        level=level,
        msgpack_bytes=sum(1 + len(b) for b in test) / len(test),
        zstd_bytes=zstd_bytes,
        dict_bytes=dict_bytes,
        zstd_us=zstd_us,
        dict_us=dict_us,
    )


async def record(
    url: str,
    topics: Sequence[str],
    *,
    count: int,
    duration: float,
    token: str | None = None,
    cafile: str | None = None,
) -> tuple[list[Any], int]:
    """Stream payloads from live *topics*: up to *count* of them within *duration*
    seconds; and how many table updates were skipped."""
    payloads: list[Any] = []
    skipped = [0]
    config = ClientConfig(reconnect=Reconnect(max_attempts=3, max_delay=2.0))
    with unwrapped():
        context = ssl.create_default_context(cafile=cafile) if cafile else None
        async with open_client(url, token=token, config=config, ssl_context=context) as client:
            with trio.move_on_after(duration):
                async with trio.open_nursery() as nursery:
                    for topic in topics:
                        await nursery.start(
                            _collect, client, topic, payloads, skipped, count, nursery
                        )
    return payloads, skipped[0]


async def _collect(
    client: Client,
    topic: str,
    payloads: list[Any],
    skipped: list[int],
    count: int,
    nursery: trio.Nursery,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with client.subscribe(topic) as subscription:
        if subscription.exact:
            try:
                subscription.table()
            except KeyError:
                pass  # a stream: what this trains on
            else:
                raise TrainingError(
                    f"{topic} is a table topic: its deltas are encoded by the server, which "
                    "trains on them itself (Hub.train_dictionary); record a stream topic"
                )
        task_status.started()
        async for update in subscription:
            if isinstance(update, Message):
                payloads.append(update.payload)
                if len(payloads) >= count:
                    nursery.cancel_scope.cancel()
            elif isinstance(update, TableChanged | TableReset):
                skipped[0] += 1


def save(path: Path, data: bytes) -> str:
    """Write the dictionary; return its SHA-256 (what HELLO advertises)."""
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()
