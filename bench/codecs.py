"""Compare wire codecs on tickwire's simulated ticker and game streams, side by side.

Usage:
    python bench/codecs.py                 # the full run (about a minute on 2 cores)
    python bench/codecs.py --quick         # seconds, for CI
    python bench/codecs.py --json out.json --plot out.png

For each stream (ticker: single updates and 10 ms batches; game: full snapshots and per-tick
deltas) it prints the bytes on the wire per unit, the WebSocket frame header included
(servers send unmasked frames: 2 bytes up to 125, 4 up to 65,535, else 10), and the encode +
decode CPU per unit, as medians over repeated runs. Dictionaries are trained on another seed
than the one measured. Then the cost of delivering one update to many subscribers: compressed
once for all (tickwire) or once per connection (permessage-deflate, zstd streaming), and the
compressor memory each connection holds.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zstandard

from support import progress, require_plotting, table, ws_header
from tickwire.config import KiB, Limits
from tickwire.sansio.codec import encode_body
from tickwire.sansio.compression import CompressionConfig, Compressor, Dictionary
from tickwire.sansio.compression import DictionaryRegistry as Registry
from tickwire.sansio.events import Batch, Data, Event, Snapshot
from tickwire.sansio.negotiation import MSGPACK_ZSTD, Negotiated
from tickwire.sansio.session import decode_message, encode_message
from tickwire.sim import GameWorld, MarketFeed

try:
    import orjson
except ImportError:  # pragma: no cover - a dev extra
    orjson = None

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]
SYNC_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 strips it from each compressed message


# -- streams --------------------------------------------------------------------------------


class Stream:
    """Messages of one kind: each with its payload, its unit count and tickwire's event."""

    def __init__(self, name: str, unit: str, items: list[tuple[Any, int, Event]]) -> None:
        self.name, self.unit, self.items = name, unit, items
        self.units = sum(n for _, n, _ in items)


def ticker_single(seed: int, count: int) -> Stream:
    updates = MarketFeed(seed=seed).take(count)
    return Stream(
        "ticker single", "update", [(u, 1, Data(1, i + 1, u)) for i, u in enumerate(updates)]
    )


def ticker_batches(seed: int, count: int) -> Stream:
    items, offset = [], 1
    for batch in MarketFeed(seed=seed, symbols=500, rate=5000).batches(0.010):
        items.append((batch, len(batch), Batch(1, offset, batch)))
        offset += len(batch)
        if offset > count:
            break
    return Stream("ticker 10ms batches", "update", items)


def game_snapshots(seed: int, count: int) -> Stream:
    world, items = GameWorld(seed=seed, entities=200, tick_rate=20), []
    for i in range(count):
        for _ in range(10):
            world.tick()
        snapshot = world.snapshot()
        items.append((snapshot, 1, Snapshot(1, i + 1, snapshot)))
    return Stream("game snapshots", "snapshot", items)


def game_deltas(seed: int, count: int) -> Stream:
    world = GameWorld(seed=seed, entities=200, tick_rate=20)
    items = []
    for i in range(count):
        payload = world.tick().payload()
        items.append((payload, 1, Data(1, i + 1, payload)))
    return Stream("game deltas", "tick", items)


# -- codecs: each makes a fresh (encoder, decoder) per connection ---------------------------


def json_codec() -> tuple[Encoder, Decoder]:
    return (lambda o: json.dumps(o, separators=(",", ":")).encode()), json.loads


def orjson_codec() -> tuple[Encoder, Decoder]:
    assert orjson is not None
    return orjson.dumps, orjson.loads


def msgpack_codec() -> tuple[Encoder, Decoder]:
    packer = msgpack.Packer(use_bin_type=True)
    return packer.pack, lambda b: msgpack.unpackb(b, raw=False, strict_map_key=False)


def zstd_codec(level: int, dictionary: zstandard.ZstdCompressionDict | None = None):
    def make() -> tuple[Encoder, Decoder]:
        pack, unpack = msgpack_codec()
        kw: dict[str, Any] = {"write_checksum": False, "write_dict_id": False}
        cctx = zstandard.ZstdCompressor(level=level, dict_data=dictionary, **kw)
        dctx = zstandard.ZstdDecompressor(dict_data=dictionary)
        return (lambda o: cctx.compress(pack(o))), (lambda b: unpack(dctx.decompress(b)))

    return make


def deflate_codec(*, takeover: bool, wbits: int, mem_level: int):
    """permessage-deflate (RFC 7692) over msgpack, with or without context takeover."""

    def make() -> tuple[Encoder, Decoder]:
        pack, unpack = msgpack_codec()

        def new_c() -> Any:
            return zlib.compressobj(6, zlib.DEFLATED, -wbits, mem_level)

        c, d = new_c(), zlib.decompressobj(-wbits)

        def encode(o: Any) -> bytes:
            nonlocal c
            if not takeover:
                c = new_c()
            out = c.compress(pack(o)) + c.flush(zlib.Z_SYNC_FLUSH)
            return out[:-4] if out.endswith(SYNC_TAIL) else out

        def decode(b: bytes) -> Any:
            nonlocal d
            if not takeover:
                d = zlib.decompressobj(-wbits)
            return unpack(d.decompress(b + SYNC_TAIL))

        return encode, decode

    return make


def zstd_stream_codec(level: int):
    """One zstd frame per connection, flushed block by block after each message."""

    def make() -> tuple[Encoder, Decoder]:
        pack, unpack = msgpack_codec()
        cobj = zstandard.ZstdCompressor(level=level).compressobj()
        dobj = zstandard.ZstdDecompressor().decompressobj()
        flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK
        return (lambda o: cobj.compress(pack(o)) + cobj.flush(flush)), (
            lambda b: unpack(dobj.decompress(b))
        )

    return make


def tickwire_codec(dictionary: Dictionary | None, level: int = 3):
    """tickwire/2: envelope + DATA/BATCH/SNAPSHOT, zstd when smaller, the dictionary by id."""

    def make() -> tuple[Encoder, Decoder]:
        compressor = Compressor(CompressionConfig(level=level, min_bytes=0, dictionary=dictionary))
        registry = Registry()
        if dictionary is not None:
            registry.offered([dictionary.info])
            registry.load(dictionary.dict_id, dictionary.data)
        negotiated, limits = Negotiated.of(MSGPACK_ZSTD), Limits()

        def encode(event: Event) -> bytes:
            message = encode_message(event, compressor=compressor)
            assert isinstance(message, bytes)
            return message

        def decode(b: bytes) -> Any:
            return decode_message(b, negotiated=negotiated, limits=limits, dictionaries=registry)

        return encode, decode

    return make


# -- measurement ----------------------------------------------------------------------------


def run_codec(
    make: Callable[[], tuple[Encoder, Decoder]], stream: Stream, tickwire: bool, repeats: int
) -> dict[str, float]:
    messages = [event if tickwire else payload for payload, _, event in stream.items]
    wire = 0
    timings = []
    for r in range(repeats):
        encode, decode = make()
        t0 = time.perf_counter()
        encoded = [encode(m) for m in messages]
        t1 = time.perf_counter()
        for blob in encoded:
            decode(blob)
        t2 = time.perf_counter()
        timings.append((t1 - t0, t2 - t1))
        if r == 0:
            wire = sum(len(b) + ws_header(len(b)) for b in encoded)
            # Check the round trip once: a codec that loses data is no codec.
            encode, decode = make()
            for m in messages[:20]:
                back = decode(encode(m))
                assert (back == m) or tickwire or isinstance(back, list | dict), "round trip"
    enc = statistics.median(t[0] for t in timings) / stream.units * 1e6
    dec = statistics.median(t[1] for t in timings) / stream.units * 1e6
    return {"bytes": wire / stream.units, "encode_us": enc, "decode_us": dec}


def train(stream: Stream, size: int, tickwire: bool, dict_id: int = 1) -> Dictionary:
    samples = [
        encode_body(event) if tickwire else msgpack.packb(payload, use_bin_type=True)
        for payload, _, event in stream.items
    ]
    # zstd's trainer wants many samples; cycle through a small training set if need be.
    while len(samples) < 200:
        samples = samples * 2
    return Dictionary.train(samples, dict_id=dict_id, size=size)


def codecs_for(training: Stream, dict_sizes: list[int], quick: bool) -> list[tuple[str, Any, bool]]:
    rows: list[tuple[str, Any, bool]] = [("json (stdlib)", json_codec, False)]
    if orjson is not None:
        rows.append(("json (orjson)", orjson_codec, False))
    rows.append(("msgpack", msgpack_codec, False))
    for level in (1, 3) if quick else (1, 3, 9, 19):
        rows.append((f"msgpack+zstd-{level}", zstd_codec(level), False))
    for size in dict_sizes:
        d = train(training, size, tickwire=False)
        rows.append((f"msgpack+zstd-3+dict {size // KiB}K", zstd_codec(3, d._zdict), False))
    rows.append(
        (
            "deflate, no context takeover",
            deflate_codec(takeover=False, wbits=15, mem_level=8),
            False,
        )
    )
    rows.append(
        (
            "deflate ctx (websockets: 12 bits)",
            deflate_codec(takeover=True, wbits=12, mem_level=5),
            False,
        )
    )
    rows.append(
        (
            "deflate ctx (browsers: 15 bits)",
            deflate_codec(takeover=True, wbits=15, mem_level=8),
            False,
        )
    )
    rows.append(("zstd-3 stream per connection", zstd_stream_codec(3), False))
    rows.append(("tickwire/2 (no dict)", tickwire_codec(None), True))
    rows.append(
        ("tickwire/2 + dict 16K", tickwire_codec(train(training, 16 * KiB, tickwire=True)), True)
    )
    return rows


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


PROBES: dict[str, Callable[[], Any]] = {
    "deflate-12": lambda: zlib.compressobj(6, zlib.DEFLATED, -12, 5),
    "deflate-15": lambda: zlib.compressobj(6, zlib.DEFLATED, -15, 8),
    "zstd-3": lambda: zstandard.ZstdCompressor(level=3).compressobj(),
}


def memory_probe(kind: str, count: int) -> None:
    """Run in a fresh process: resident bytes per compressor after real traffic."""
    bodies = [msgpack.packb(u, use_bin_type=True) for u in MarketFeed(seed=1).take(200)]
    before = rss_bytes()
    contexts = [PROBES[kind]() for _ in range(count)]
    for ctx in contexts:
        for body in bodies:
            if kind.startswith("zstd"):
                ctx.compress(body)
                ctx.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            else:
                ctx.compress(body)
                ctx.flush(zlib.Z_SYNC_FLUSH)
    print(max(0, rss_bytes() - before) / count)


def resident_per_connection(kind: str, count: int) -> float:
    import subprocess

    done = subprocess.run(
        [sys.executable, __file__, "--memory-probe", kind, "--subscribers", str(count)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return float(done.stdout.strip())


def fanout(
    stream: Stream, subscribers: int, messages: int, repeats: int, dictionary: Dictionary
) -> list[dict[str, Any]]:
    """CPU to get one update to *subscribers* connections, and compressor memory each."""
    events = [event for _, _, event in stream.items[:messages]]
    payloads = [payload for payload, _, _ in stream.items[:messages]]
    results = []

    def once(label: str, compressor: Compressor) -> None:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for e in events:
                encode_message(e, compressor=compressor)  # then the same bytes to everyone
            times.append(time.perf_counter() - t0)
        results.append(
            {
                "codec": label,
                "us_per_update": statistics.median(times) / len(events) * 1e6,
                "memory_per_connection": 0,
                "allocated_per_connection": 0,
            }
        )

    once(
        "tickwire/2 + dict: compress once",
        Compressor(CompressionConfig(min_bytes=0, dictionary=dictionary)),
    )

    def per_connection(
        label: str,
        make_ctx: Callable[[], Any],
        compress: Callable[[Any, bytes], bytes],
        allocated: int,
        probe_kind: str,
    ) -> None:
        contexts = [make_ctx() for _ in range(subscribers)]
        bodies = [msgpack.packb(p, use_bin_type=True) for p in payloads]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for body in bodies:
                for ctx in contexts:
                    compress(ctx, body)
            times.append(time.perf_counter() - t0)
        # Resident after real traffic, measured in a fresh process (this one's allocator
        # holds memory freed by the earlier phases); untouched pages do not count.
        memory = resident_per_connection(probe_kind, subscribers)
        results.append(
            {
                "codec": label,
                "us_per_update": statistics.median(times) / len(bodies) * 1e6,
                "memory_per_connection": memory,
                "allocated_per_connection": allocated,
            }
        )
        del contexts
        gc.collect()

    def deflate(wbits: int, mem: int) -> Callable[[], Any]:
        return lambda: zlib.compressobj(6, zlib.DEFLATED, -wbits, mem)

    def zflush(c: Any, b: bytes) -> bytes:
        return c.compress(b) + c.flush(zlib.Z_SYNC_FLUSH)

    def zlib_size(wbits: int, mem: int) -> int:  # zlib's zconf.h: deflate's allocation
        return (1 << (wbits + 2)) + (1 << (mem + 9)) + 6 * KiB

    per_connection(
        "deflate ctx (websockets: 12 bits), per connection",
        deflate(12, 5),
        zflush,
        zlib_size(12, 5),
        "deflate-12",
    )
    per_connection(
        "deflate ctx (browsers: 15 bits), per connection",
        deflate(15, 8),
        zflush,
        zlib_size(15, 8),
        "deflate-15",
    )
    flush_block = zstandard.COMPRESSOBJ_FLUSH_BLOCK
    probe = zstandard.ZstdCompressor(level=3)
    probe_obj = probe.compressobj()
    probe_obj.compress(b"x" * 100)
    probe_obj.flush(flush_block)
    per_connection(
        "zstd-3 stream, per connection",
        lambda: zstandard.ZstdCompressor(level=3).compressobj(),
        lambda c, b: c.compress(b) + c.flush(flush_block),
        probe.memory_size(),
        "zstd-3",
    )
    return results


# -- output ---------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs the plotting extra: pip install -e '.[plot]'", file=sys.stderr)
        return
    streams = results["streams"]
    fig, axes = plt.subplots(1, len(streams), figsize=(5 * len(streams), 6))
    for ax, stream in zip(axes, streams, strict=True):
        names = [r["codec"] for r in stream["rows"]]
        ax.barh(names, [r["bytes"] for r in stream["rows"]])
        ax.set_title(f"{stream['name']}: bytes per {stream['unit']}")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart written to {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small corpora, for CI")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="draw a PNG chart (plotting extra)")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--memory-probe", choices=sorted(PROBES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    require_plotting(parser, args.plot)
    if args.memory_probe:
        memory_probe(args.memory_probe, args.subscribers)
        return 0

    quick = args.quick
    n_updates, n_ticks, n_snaps = (1500, 40, 5) if quick else (20_000, 400, 40)
    repeats = 2 if quick else 5
    measured, training = 1, 2  # the dictionary never sees the measured data
    builders: list[tuple[Callable[[int, int], Stream], int]] = [
        (ticker_single, n_updates),
        (ticker_batches, n_updates),
        (game_snapshots, n_snaps),
        (game_deltas, n_ticks),
    ]
    dict_sizes = [16 * KiB] if quick else [4 * KiB, 16 * KiB, 64 * KiB]
    results: dict[str, Any] = {
        "quick": quick,
        "python": sys.version.split()[0],
        "zstd": zstandard.ZSTD_VERSION,
        "streams": [],
    }
    per_stream = (2 if orjson is not None else 1) + 1 + (2 if quick else 4) + len(dict_sizes) + 6
    steps = len(builders) * per_stream + 1
    with progress(steps, "codecs") as step:
        for build, count in builders:
            stream, train_on = (
                build(measured, count),
                build(training, max(count, 400) if build is not game_snapshots else 20),
            )
            rows = []
            for name, make, tickwire in codecs_for(train_on, dict_sizes, quick):
                rows.append({"codec": name, **run_codec(make, stream, tickwire, repeats)})
                step(f"{stream.name}: {name}")
            results["streams"].append(
                {
                    "name": stream.name,
                    "unit": stream.unit,
                    "units": stream.units,
                    "messages": len(stream.items),
                    "rows": rows,
                }
            )
            base = rows[0]["bytes"]
            print(
                f"\n{stream.name}: {stream.units} {stream.unit}s in {len(stream.items)} messages "
                f"(median of {repeats} runs)"
            )
            print(
                table(
                    [
                        [
                            r["codec"],
                            f"{r['bytes']:.1f}",
                            f"{100 * r['bytes'] / base:.0f}%",
                            f"{r['encode_us']:.2f}",
                            f"{r['decode_us']:.2f}",
                            f"{r['encode_us'] + r['decode_us']:.2f}",
                        ]
                        for r in rows
                    ],
                    ["codec", f"B/{stream.unit}", "vs json", "enc us", "dec us", "enc+dec us"],
                )
            )

        subs = 100 if quick else args.subscribers
        single = ticker_single(measured, 200)
        d = train(ticker_single(training, 2000 if not quick else 500), 16 * KiB, tickwire=True)
        fan = fanout(single, subs, 20 if quick else 100, repeats, d)
        step(f"fan-out to {subs} subscribers")
        results["fanout"] = {"subscribers": subs, "rows": fan}
        once = fan[0]["us_per_update"]
        print(
            f"\nticker single: CPU to deliver one update to {subs} subscribers (compression only)"
        )
        print(
            table(
                [
                    [
                        r["codec"],
                        f"{r['us_per_update']:.1f}",
                        f"{r['us_per_update'] / once:.0f}x",
                        f"{r['allocated_per_connection'] / KiB:.0f}",
                        f"{r['memory_per_connection'] / KiB:.0f}",
                    ]
                    for r in fan
                ],
                ["codec", "us/update", "vs once", "KiB/conn allocated", "KiB/conn resident"],
            )
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nresults written to {args.json}")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
