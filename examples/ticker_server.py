"""A ticker server embedded in a trio program, publishing its own (simulated) feed.

Shows: tickwire.open_server() inside your own nursery, a table topic of the latest quote
per symbol (fixed-point prices, 10 ms windows), a stream topic per symbol's trades, the
/metrics, /healthz and /readyz endpoint beside it, and a graceful shutdown when the block
ends. Connect with any WebSocket client offering the
subprotocol "tickwire.v2+zstd" and send SUBSCRIBE for "quotes" or "trades.*"
(docs/PROTOCOL.md §4.4, §9).

Try it:  python examples/ticker_server.py [seconds]    (default: 2 seconds, then it stops)
"""

from __future__ import annotations

import argparse

import trio

import tickwire


async def main(seconds: float) -> None:
    hub = tickwire.Hub(default_topic=tickwire.TopicConfig(batch_window=0.010))
    hub.table("quotes", tickwire.QUOTE_SCHEMA)
    feed = tickwire.MarketFeed(seed=7, symbols=50, rate=1000)
    async with (
        tickwire.open_server(hub, "127.0.0.1", 0) as server,
        trio.open_nursery() as nursery,
    ):
        metrics = await nursery.start(tickwire.serve_metrics, server, "127.0.0.1", 0)
        print(f"serving on ws://127.0.0.1:{server.port}/ for {seconds:g} s")
        print(f"metrics on http://127.0.0.1:{metrics.port}/metrics")
        published = 0
        with trio.move_on_after(seconds):
            for batch in feed.batches(0.010):
                for update in batch:
                    if update["type"] == "quote":
                        hub.upsert("quotes", update["symbol"], tickwire.quote_row(update))
                    else:
                        hub.publish_nowait(f"trades.{update['symbol']}", update)
                    published += 1
                await trio.sleep(0.010)
        nursery.cancel_scope.cancel()
    print(f"published {published} updates; shut down cleanly")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "seconds", nargs="?", type=float, default=2.0, help="how long to run (default 2)"
    )
    trio.run(main, parser.parse_args().seconds)
