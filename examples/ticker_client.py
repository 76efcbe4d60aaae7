"""A Python client that keeps a live quote table, and survives a server restart.

Shows: tickwire.open_client(), a table subscription (rows as plain dicts, merged when the
loop falls behind), a stream subscription with a pattern, publishing with an ACK, the
reconnection after the server restarts (the hub, and so the history, survives: nothing is
lost), and the client's statistics.

Try it:  python examples/ticker_client.py               (runs its own server for 3 seconds)
         python examples/ticker_client.py ws://127.0.0.1:8765/   (a running demo server,
                                                          `tickwire serve --demo ticker`)
"""

from __future__ import annotations

import argparse

import trio

import tickwire


async def feed(hub: tickwire.Hub, seconds: float) -> None:
    """The embedded server's market: 1,000 updates a second on 50 symbols."""
    market = tickwire.MarketFeed(seed=7, symbols=50, rate=1000)
    with trio.move_on_after(seconds):
        for batch in market.batches(0.010):
            for update in batch:
                if update["type"] == "quote":
                    hub.upsert("quotes", update["symbol"], tickwire.quote_row(update))
                else:
                    hub.publish_nowait(f"trades.{update['symbol']}", update)
            await trio.sleep(0.010)


async def watch(url: str, seconds: float) -> tickwire.Client:
    async with tickwire.open_client(url) as client:
        async with client.subscribe("quotes") as quotes, client.subscribe("trades.*") as trades:
            with trio.move_on_after(seconds):
                async with trio.open_nursery() as nursery:

                    async def print_trades() -> None:
                        async for update in trades:
                            if isinstance(update, tickwire.Lost):
                                print("continuity lost:", update)

                    nursery.start_soon(print_trades)
                    async for update in quotes:
                        if isinstance(update, tickwire.Lost | tickwire.TableReset):
                            print(f"{type(update).__name__}: {getattr(update, 'reason', '')}")
            table = quotes.table()
            print(f"{len(table)} symbols; for example {next(iter(table.values()), None)}")
            return client


async def own_server() -> None:
    hub = tickwire.Hub(default_topic=tickwire.TopicConfig(batch_window=0.010))
    quotes_topic = hub.table("quotes", tickwire.QUOTE_SCHEMA)
    config = tickwire.ServerConfig(retry_after=0.1)
    async with tickwire.open_server(hub, "127.0.0.1", 0, config=config) as server:
        port = server.port
        async with tickwire.open_client(f"ws://127.0.0.1:{port}/") as client:
            async with client.subscribe("quotes") as quotes, trio.open_nursery() as nursery:
                nursery.start_soon(feed, hub, 2.0)  # the market runs for two seconds
                await trio.sleep(1.0)
                print("restarting the server (the hub and its history stay)")
                await server.aclose()
                async with tickwire.open_server(hub, "127.0.0.1", port, config=config):
                    await trio.sleep(1.5)  # the market stops meanwhile; its last delta arrives
                    while quotes.receive_nowait() is not None:
                        pass  # the merged changes: the table itself is what matters here
                    assert quotes_topic.table is not None
                    want = {row["symbol"]: row for row in quotes_topic.table.rows()}
                    print(
                        f"{len(want)} symbols, the same as the server's: {quotes.table() == want}"
                    )
                    stats = client.statistics()
                    print(
                        f"reconnects {stats.reconnects}, losses {stats.losses}, "
                        f"{stats.updates_received} row changes, "
                        f"{stats.bytes_received:,} bytes received"
                    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "url",
        nargs="?",
        help="watch this server's quotes for 10 s (tickwire serve --demo ticker: "
        "ws://127.0.0.1:8765/); without it, run the restart demonstration with a server "
        "of its own",
    )
    url = parser.parse_args().url
    if url:
        trio.run(watch, url, 10.0)
    else:
        trio.run(own_server)
