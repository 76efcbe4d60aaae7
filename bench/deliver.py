"""CPU per delivery on the fan-out hot path: ``Hub.publish_nowait`` to 1,000 subscribed
``ServerConnection`` objects whose socket write is replaced by one that takes everything.

What it isolates: the Python work of one message reaching one subscriber (the outbox
checks, the direct write call, the counters and the publish-to-send histogram), without
the kernel's share or a load generator's noise. Use it to compare two versions of the
hot path in one run, as ratios::

    PYTHONPATH=/path/to/other/src python bench/deliver.py --label other
    python bench/deliver.py --label this
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import trio

from tickwire.broadcast import Hub
from tickwire.config import ServerConfig
from tickwire.connection import ServerConnection
from tickwire.sansio.negotiation import MSGPACK_ZSTD, Negotiated


class _Socket:
    """Stands in for tickwire.connection.WebSocket: every direct write succeeds."""

    tail = b""

    def write_nowait(self, data: bytes) -> int:
        return len(data)


async def measure(subscribers: int, messages: int, repeats: int) -> list[float]:
    hub = Hub()
    config = ServerConfig()
    variant = Negotiated.of(MSGPACK_ZSTD)
    for _ in range(subscribers):
        connection = ServerConnection(_Socket(), hub=hub, config=config, negotiated=variant)  # type: ignore[arg-type]
        hub.attach(connection)
        hub.subscribe(connection, "quotes.ACME", 1)
    payload = {"symbol": "ACME", "bid": 101.25, "ask": 101.5, "bid_size": 300, "ask_size": 500}
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(messages):
            hub.publish_nowait("quotes.ACME", payload)
        runs.append((time.perf_counter() - start) / (messages * subscribers) * 1e9)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, for CI")
    parser.add_argument("--label", default="tickwire", help="name this version in the output")
    args = parser.parse_args(argv)
    repeats, messages = (3, 50) if args.quick else (9, 300)
    runs = trio.run(measure, 1000, messages, repeats)
    print(
        f"{args.label}: {statistics.median(runs):.0f} ns per delivery "
        f"(median of {repeats} runs of {messages} messages to 1,000 subscribers; "
        f"runs {', '.join(f'{r:.0f}' for r in runs)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
