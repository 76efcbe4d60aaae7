"""Bytes on the wire and CPU per update for what tickwire's hub really sends, beside JSON.

Usage:
    python bench/wire.py                   # the full run (a minute or two on 2 cores)
    python bench/wire.py --quick           # seconds, for CI
    python bench/wire.py --json out.json

Streams: the simulated market (500 symbols, 5,000 updates a second, 10% trades) and the
simulated game world (200 entities at 20 Hz). The tickwire rows drive a real
:class:`tickwire.Hub` (tables, batch windows, dictionaries, keyframes every 30 simulated
seconds) and count every frame a ``tickwire.v2+zstd`` subscriber is sent, WebSocket frame
header included: SUBSCRIBED and the snapshot too. The peers are JSON (one message per update,
and one per 10 ms window) and JSON windows through permessage-deflate with context takeover,
the compression that the ``websockets`` library and browsers negotiate, which needs one
compressor per connection. Dictionaries are trained on another seed than the one measured
(from a hub's history, as ``Hub.train_dictionary`` does).

``pub us`` is the publisher's CPU per update (encoding, merging, compressing, framing), ``sub
us`` a subscriber's (decoding, rebuilding the table). The last table is the compression CPU
per update as the number of subscribers grows: tickwire compresses once per message whatever
their number, a per-connection compressor once per subscriber.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zstandard

from support import median_of, table
from tickwire import (
    ENTITY_SCHEMA,
    GameWorld,
    Hub,
    MarketFeed,
    TopicConfig,
    quote_row,
)
from tickwire.broadcast import Topic
from tickwire.config import KiB, Limits, MiB
from tickwire.sansio import (
    CompressionConfig,
    Data,
    Dictionary,
    Role,
    Session,
    Snapshot,
    Subscribed,
)
from tickwire.sansio.compression import Compressor
from tickwire.sansio.fanout import Overflow
from tickwire.sansio.framing import frame
from tickwire.sansio.negotiation import MSGPACK_ZSTD, Negotiated
from tickwire.sansio.table import Changes, Schema, TableView
from tickwire.sim.market import LOT_QUOTE_SCHEMA

ZSTD = Negotiated.of(MSGPACK_ZSTD)
# The simulated market's own grid (cent ticks, lots of 100), as a user who knows the venue
# declares it: exact, and off-grid values refused. The ready-made EQUITY_QUOTE_SCHEMA (4
# decimals, sizes in shares) is measured beside it with --schema equity.
SCHEMA = LOT_QUOTE_SCHEMA
LIMITS = Limits(max_message_bytes=16 * MiB, max_decompressed_bytes=64 * MiB)
WINDOW = 0.010
KEYFRAME_SECONDS = 30.0


class Recorder:
    """A subscriber that keeps every frame it is given (the hub's Subscriber protocol)."""

    variant = ZSTD

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def deliver_nowait(
        self,
        framed: bytes,
        *,
        topic_id: int = 0,
        first: int = 0,
        last: int = 0,
        overflow: Overflow | None = None,
        delta: Changes | None = None,
        optional: bool = False,
        published_at: float | None = None,
    ) -> bool:
        self.frames.append(framed)
        return False

    def topic_added(self, topic: Topic, request_id: int) -> None:
        pass

    def may_receive(self, topic: Topic) -> bool:
        return True

    def busy(self) -> bool:
        return False

    def has_room(self) -> bool:
        return True

    async def wait_for_room(self) -> None:  # pragma: no cover - never waits here
        pass

    def slow_consumer(self) -> None:  # pragma: no cover
        raise AssertionError

    def failed(self, exc: BaseException) -> None:
        raise AssertionError("never failed") from exc


def subscribe(hub: Hub, recorder: Recorder, *names: str) -> None:
    """What a server connection sends on SUBSCRIBE: SUBSCRIBED, and a table's snapshot."""
    for i, name in enumerate(names, start=1):
        for topic in hub.subscribe(recorder, name, i):
            event = Subscribed(i, topic.topic_id, name, topic.epoch, topic.offset, 0, topic.info)
            recorder.frames.append(hub.encode(event, ZSTD))
            if topic.table is not None:
                recorder.frames.extend(hub.snapshot(topic, ZSTD))


def wire_bytes(frames: list[bytes]) -> int:
    return sum(len(f) for f in frames)


# -- the ticker -----------------------------------------------------------------------------


def market_windows(seed: int, windows: int) -> list[list[dict[str, Any]]]:
    feed = MarketFeed(seed=seed)
    out = []
    for batch in feed.batches(WINDOW):
        out.append(batch)
        if len(out) == windows:
            return out
    raise AssertionError("unreachable")  # pragma: no cover


def market_hub(
    dictionary: Dictionary | None, *, tables: bool, batched: bool, merge: bool = True
) -> Hub:
    hub = Hub(
        compression=CompressionConfig(dictionary=dictionary),
        default_topic=TopicConfig(
            batch_window=WINDOW if batched else None,
            history_size=200_000,
            history_bytes=1 << 40,
            keyframe_interval=None,
            merge=merge,
        ),
        max_history_bytes=1 << 40,
    )
    if tables:
        hub.table("quotes", SCHEMA)
    return hub


def run_market(
    windows: list[list[dict[str, Any]]],
    dictionary: Dictionary | None,
    *,
    tables: bool,
    batched: bool,
    merge: bool = True,
    subscribers: int = 1,
    before_publishing: Callable[[], None] = lambda: None,
) -> tuple[Hub, list[Recorder], float]:
    """Publish *windows* through a hub; return it, its subscribers and the CPU seconds."""
    hub = market_hub(dictionary, tables=tables, batched=batched, merge=merge)
    recorders = [Recorder() for _ in range(subscribers)]
    for r in recorders:
        subscribe(hub, r, "quotes", "trades")
    before_publishing()
    keyframe_every = round(KEYFRAME_SECONDS / WINDOW)
    begun = time.perf_counter()
    for n, window in enumerate(windows, start=1):
        for update in window:
            if update["type"] == "trade" or not tables:
                topic = "trades" if update["type"] == "trade" else "quotes"
                hub.publish_nowait(topic, update)
            else:
                hub.upsert("quotes", update["symbol"], quote_row(update))
        hub.flush()
        if tables and n % keyframe_every == 0:
            hub.keyframe(hub.topic("quotes"))
    return hub, recorders, time.perf_counter() - begun


def decode_all(frames: list[bytes], dictionary: Dictionary | None) -> float:
    """A subscriber's CPU to decode *frames* and rebuild its tables; seconds."""
    session = Session(Role.CLIENT, ZSTD, limits=LIMITS)
    if dictionary is not None:
        session.dictionaries.offered([dictionary.info])
        session.dictionaries.load(dictionary.dict_id, dictionary.data)
    views: dict[int, TableView] = {}
    begun = time.perf_counter()
    for f in frames:
        session.receive_message(_payload(f))
        for event in session.events_received():
            if isinstance(event, Subscribed) and event.info is not None:
                views[event.topic_id] = TableView(Schema.from_info(event.info))
            elif isinstance(event, Snapshot):
                views[event.topic_id].apply_snapshot(event.offset, event.payload)
            elif isinstance(event, Data) and event.topic_id in views:
                views[event.topic_id].apply_delta(event.offset, event.payload)
    return time.perf_counter() - begun


def _payload(framed: bytes) -> bytes:
    """The message inside one unmasked WebSocket frame."""
    length = framed[1] & 0x7F
    return framed[2 + (2 if length == 126 else 8 if length == 127 else 0) :]


def train_market(
    windows: list[list[dict[str, Any]]], *, tables: bool, batched: bool, merge: bool = True
) -> Dictionary:
    hub, _, _ = run_market(windows, None, tables=tables, batched=batched, merge=merge)
    return hub.train_dictionary(size=16 * KiB)


def merged(window: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A window's quotes as their latest value per symbol (fields merged), trades all: what
    a merging table sends, for JSON."""
    latest: dict[str, dict[str, Any]] = {}
    trades = []
    for update in window:
        if update["type"] == "trade":
            trades.append(update)
        else:
            latest.setdefault(update["symbol"], {}).update(update)
    return [*latest.values(), *trades]


# -- the game -------------------------------------------------------------------------------


GAME_ENTITIES = 156  # about 136 entities change each tick: the feed


def game_ticks(seed: int, ticks: int) -> tuple[list[dict[str, Any]], list[Any]]:
    world = GameWorld(seed=seed, entities=GAME_ENTITIES)
    return world.snapshot(), [world.tick() for _ in range(ticks)]


def changed_per_tick(ticks: list[Any]) -> float:
    return sum(len(t.changes()) + len(t.despawned) for t in ticks) / len(ticks)


def run_game(
    start: list[dict[str, Any]],
    ticks: list[Any],
    dictionary: Dictionary | None,
    *,
    tables: bool,
    subscribers: int = 1,
) -> tuple[Hub, list[Recorder], float]:
    hub = Hub(
        compression=CompressionConfig(dictionary=dictionary),
        default_topic=TopicConfig(history_size=100_000, keyframe_interval=None),
    )
    keyframe_every = round(KEYFRAME_SECONDS * 20)
    if tables:
        hub.table("world", ENTITY_SCHEMA)
        hub.update("world", {e["id"]: {k: v for k, v in e.items() if k != "id"} for e in start})
    else:
        hub.publish_nowait("world", {"snapshot": start})
    recorders = [Recorder() for _ in range(subscribers)]
    for r in recorders:
        subscribe(hub, r, "world")
    begun = time.perf_counter()
    for n, tick in enumerate(ticks, start=1):
        if tables:
            hub.update("world", tick.changes(), deletes=tick.despawned)
            if n % keyframe_every == 0:
                hub.keyframe(hub.topic("world"))
        else:
            hub.publish_nowait("world", tick.payload())
    return hub, recorders, time.perf_counter() - begun


# -- peers ----------------------------------------------------------------------------------


def json_frames(messages: list[Any]) -> tuple[list[bytes], float]:
    begun = time.perf_counter()
    out = []
    for m in messages:
        out.append(frame(json.dumps(m, separators=(",", ":"))))
    return out, time.perf_counter() - begun


def deflate_frames(messages: list[Any]) -> tuple[list[bytes], float]:
    """JSON text through one permessage-deflate compressor with context takeover, as the
    websockets library negotiates it (12-bit window, memLevel 5): one per connection."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -12, 5)
    begun = time.perf_counter()
    out = []
    for m in messages:
        data = json.dumps(m, separators=(",", ":")).encode()
        out.append(frame((compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]))
    return out, time.perf_counter() - begun


def msgpack_zstd_frames(messages: list[Any]) -> tuple[list[bytes], float]:
    """msgpack, each message compressed on its own with zstd (level 3, no dictionary), sent
    plain when that is smaller: what a msgpack+zstd stack without shared context sends."""
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=False)
    begun = time.perf_counter()
    out = []
    for m in messages:
        body = msgpack.packb(m)
        packed = compressor.compress(body)
        out.append(frame(packed if len(packed) < len(body) else body))
    return out, time.perf_counter() - begun


def msgpack_zstd_decode(frames: list[bytes]) -> float:
    decompressor = zstandard.ZstdDecompressor()
    begun = time.perf_counter()
    for f in frames:
        data = _payload(f)
        if data[:4] == b"\x28\xb5\x2f\xfd":
            data = decompressor.decompress(data)
        msgpack.unpackb(data)
    return time.perf_counter() - begun


def json_decode(frames: list[bytes]) -> float:
    begun = time.perf_counter()
    for f in frames:
        json.loads(_payload(f))
    return time.perf_counter() - begun


def deflate_decode(frames: list[bytes]) -> float:
    decompressor = zlib.decompressobj(-12)
    begun = time.perf_counter()
    for f in frames:
        json.loads(decompressor.decompress(_payload(f) + b"\x00\x00\xff\xff"))
    return time.perf_counter() - begun


# -- measuring ------------------------------------------------------------------------------


Row = dict[str, Any]


def measure(
    name: str,
    units: int,
    repeats: int,
    publish: Callable[[], tuple[list[bytes], float]],
    decode: Callable[[list[bytes]], float],
) -> Row:
    frames: list[bytes] = []
    pub: list[float] = []
    for _ in range(repeats):
        frames, seconds = publish()
        pub.append(seconds)
    sub = median_of(repeats, lambda: decode(frames))
    pub.sort()
    return {
        "codec": name,
        "bytes_per_unit": wire_bytes(frames) / units,
        "messages": len(frames),
        "publish_us": 1e6 * pub[len(pub) // 2] / units,
        "subscribe_us": 1e6 * sub / units,
    }


def hub_publisher(
    run: Callable[[], tuple[Hub, list[Recorder], float]],
) -> Callable[[], tuple[list[bytes], float]]:
    def publish() -> tuple[list[bytes], float]:
        _, (recorder, *_), seconds = run()
        return recorder.frames, seconds

    return publish


def market_rows(quick: bool, repeats: int) -> tuple[list[Row], list[Row], int]:
    """Both modes on the same feed: every update delivered, and merged (the latest value
    of each quote per 10 ms window; trades always all)."""
    windows = market_windows(1, 300 if quick else 3000)
    training = market_windows(2, 300 if quick else 3000)
    updates = sum(len(w) for w in windows)
    singles = [u for w in windows for u in w]
    merged_windows = [merged(w) for w in windows]
    every_dict = train_market(training, tables=True, batched=True, merge=False)
    single_dict = train_market(training, tables=True, batched=False, merge=False)
    table_dict = train_market(training, tables=True, batched=True)
    stream_dict = train_market(training, tables=False, batched=True)

    def tickwire(dictionary: Dictionary | None, **how: Any) -> Callable[[], Any]:
        return hub_publisher(lambda: run_market(windows, dictionary, **how))

    def decoder(dictionary: Dictionary | None) -> Callable[[list[bytes]], float]:
        return lambda f: decode_all(f, dictionary)

    every = [
        measure(
            "json, a message per update",
            updates,
            repeats,
            lambda: json_frames(singles),
            json_decode,
        ),
        measure("json, 10 ms windows", updates, repeats, lambda: json_frames(windows), json_decode),
        measure(
            "json + deflate per connection, a message per update",
            updates,
            repeats,
            lambda: deflate_frames(singles),
            deflate_decode,
        ),
        measure(
            "json windows + deflate per connection",
            updates,
            repeats,
            lambda: deflate_frames(windows),
            deflate_decode,
        ),
        measure(
            "msgpack + zstd, a message per update",
            updates,
            repeats,
            lambda: msgpack_zstd_frames(singles),
            msgpack_zstd_decode,
        ),
        measure(
            "msgpack windows + zstd",
            updates,
            repeats,
            lambda: msgpack_zstd_frames(windows),
            msgpack_zstd_decode,
        ),
        measure(
            "tickwire stream, a message per update",
            updates,
            repeats,
            tickwire(None, tables=False, batched=False),
            decoder(None),
        ),
        measure(
            "tickwire stream, 10 ms batches + dict",
            updates,
            repeats,
            tickwire(stream_dict, tables=False, batched=True),
            decoder(stream_dict),
        ),
        measure(
            "tickwire table, every update, a message each + dict",
            updates,
            repeats,
            tickwire(single_dict, tables=True, batched=False, merge=False),
            decoder(single_dict),
        ),
        measure(
            "tickwire table, every update, 10 ms batches + dict",
            updates,
            repeats,
            tickwire(every_dict, tables=True, batched=True, merge=False),
            decoder(every_dict),
        ),
    ]
    merging = [
        measure(
            "json, 10 ms windows merged",
            updates,
            repeats,
            lambda: json_frames(merged_windows),
            json_decode,
        ),
        measure(
            "json merged windows + deflate per connection",
            updates,
            repeats,
            lambda: deflate_frames(merged_windows),
            deflate_decode,
        ),
        measure(
            "msgpack merged windows + zstd",
            updates,
            repeats,
            lambda: msgpack_zstd_frames(merged_windows),
            msgpack_zstd_decode,
        ),
        measure(
            "tickwire table, 10 ms windows merged",
            updates,
            repeats,
            tickwire(None, tables=True, batched=True),
            decoder(None),
        ),
        measure(
            "tickwire table, 10 ms windows merged + dict",
            updates,
            repeats,
            tickwire(table_dict, tables=True, batched=True),
            decoder(table_dict),
        ),
    ]
    return every, merging, updates


def game_rows(quick: bool, repeats: int) -> tuple[list[Row], int, float]:
    count = 100 if quick else 1200  # 60 s at 20 Hz
    start, ticks = game_ticks(1, count)
    t_start, t_ticks = game_ticks(2, count)
    payloads = [{"snapshot": start}] + [t.payload() for t in ticks]
    table_dict = run_game(t_start, t_ticks, None, tables=True)[0].train_dictionary(size=16 * KiB)
    stream_dict = run_game(t_start, t_ticks, None, tables=False)[0].train_dictionary(size=16 * KiB)
    rows = [
        measure("json", count, repeats, lambda: json_frames(payloads), json_decode),
        measure(
            "json + deflate per connection",
            count,
            repeats,
            lambda: deflate_frames(payloads),
            deflate_decode,
        ),
        measure(
            "tickwire stream (msgpack maps)",
            count,
            repeats,
            hub_publisher(lambda: run_game(start, ticks, None, tables=False)),
            lambda f: decode_all(f, None),
        ),
        measure(
            "tickwire stream + dict",
            count,
            repeats,
            hub_publisher(lambda: run_game(start, ticks, stream_dict, tables=False)),
            lambda f: decode_all(f, stream_dict),
        ),
        measure(
            "tickwire table (mm, enums)",
            count,
            repeats,
            hub_publisher(lambda: run_game(start, ticks, None, tables=True)),
            lambda f: decode_all(f, None),
        ),
        measure(
            "tickwire table + dict",
            count,
            repeats,
            hub_publisher(lambda: run_game(start, ticks, table_dict, tables=True)),
            lambda f: decode_all(f, table_dict),
        ),
    ]
    return rows, count, changed_per_tick(ticks)


def compression_scaling(quick: bool, repeats: int) -> list[Row]:
    """Compression CPU per update with 1 and many subscribers: tickwire (compress once per
    message, in both modes) and per-connection deflate (a compressor per subscriber)."""
    windows = market_windows(3, 100 if quick else 500)
    updates = sum(len(w) for w in windows)
    training = market_windows(2, 300)
    out: list[Row] = []
    counts = (1, 100) if quick else (1, 1000)
    for label, merge in (("every update", False), ("merged", True)):
        dictionary = train_market(training, tables=True, batched=True, merge=merge)
        for subscribers in counts:
            timed = _TimedPack()

            def once(
                subscribers: int = subscribers,
                timed: _TimedPack = timed,
                dictionary: Dictionary = dictionary,
                merge: bool = merge,
            ) -> float:
                with timed.installed():  # the subscriptions' own messages are not counted
                    run_market(
                        windows,
                        dictionary,
                        tables=True,
                        batched=True,
                        merge=merge,
                        subscribers=subscribers,
                        before_publishing=timed.reset,
                    )
                return timed.seconds

            seconds = median_of(repeats, once)
            out.append(
                {
                    "codec": f"tickwire table, {label} + dict: compress once",
                    "subscribers": subscribers,
                    "compress_us_per_update": 1e6 * seconds / updates,
                    "compressions_per_update": timed.calls / updates,
                }
            )
    for subscribers in (1, 100):

        def per_connection(subscribers: int = subscribers) -> float:
            begun = time.perf_counter()
            for _ in range(subscribers):
                deflate_frames(windows)
            return time.perf_counter() - begun

        seconds = median_of(repeats, per_connection)
        out.append(
            {
                "codec": "json windows + deflate: a compressor per connection",
                "subscribers": subscribers,
                "compress_us_per_update": 1e6 * seconds / updates,
                "compressions_per_update": subscribers * len(windows) / updates,
            }
        )
    return out


class _TimedPack:
    """Times every ``Compressor.pack`` call while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def installed(self) -> _Installed:
        return _Installed(self)


class _Installed:
    def __init__(self, timed: _TimedPack) -> None:
        self.timed = timed
        self.original = Compressor.pack

    def __enter__(self) -> None:
        original, timed = self.original, self.timed

        def pack(compressor: Compressor, body: bytes) -> bytes:
            begun = time.perf_counter()
            try:
                return original(compressor, body)
            finally:
                timed.seconds += time.perf_counter() - begun
                timed.calls += 1

        Compressor.pack = pack  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        Compressor.pack = self.original  # type: ignore[method-assign]


def rows_table(rows: list[Row], unit: str) -> str:
    base = rows[0]["bytes_per_unit"]
    return table(
        [
            [
                r["codec"],
                f"{r['bytes_per_unit']:.1f}",
                f"{100 * r['bytes_per_unit'] / base:.1f}%",
                f"{r['messages']:,}",
                f"{r['publish_us']:.2f}",
                f"{r['subscribe_us']:.2f}",
            ]
            for r in rows
        ],
        ["codec", f"B/{unit}", "vs json", "messages", "pub us", "sub us"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpora, for CI")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else 3
    results: dict[str, Any] = {"quick": args.quick, "python": sys.version.split()[0]}

    every, merging, updates = market_rows(args.quick, repeats)
    results["ticker"] = {"updates": updates, "every_update": every, "merged": merging}
    feed = (
        f"ticker: {updates:,} updates (500 symbols, Zipf, 5,000/s, 10% trades), median of {repeats}"
    )
    print(f"{feed}\n\nevery update delivered (target: at most 20 B/update)")
    print(rows_table(every, "update"))
    print("\nmerged: the latest value of each quote per 10 ms window (target: at most 11 B/update)")
    print(rows_table(merging, "update"))

    game, ticks, changed = game_rows(args.quick, repeats)
    results["game"] = {"ticks": ticks, "changed_per_tick": changed, "rows": game}
    print(
        f"\ngame: {ticks:,} ticks ({GAME_ENTITIES} entities at 20 Hz, {changed:.0f} changed a "
        f"tick), the initial state included, median of {repeats}; target: at most 20% of json"
    )
    print(rows_table(game, "tick"))

    scaling = compression_scaling(args.quick, repeats)
    results["compression_scaling"] = scaling
    print("\nticker: compression CPU per update as subscribers grow")
    print(
        table(
            [
                [
                    r["codec"],
                    f"{r['subscribers']:,}",
                    f"{r['compressions_per_update']:.3f}",
                    f"{r['compress_us_per_update']:.2f}",
                ]
                for r in scaling
            ],
            ["codec", "subscribers", "compressions/update", "compress us/update"],
        )
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
