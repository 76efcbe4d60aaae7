"""A backend that publishes into every tickwire server through Redis, serving no clients.

Shows: tickwire.open_publisher() (a hub with a Redis backplane and no server), publish()
that returns the offset the whole cluster gave, an idempotency key per message so that a
retry after a Redis failure never publishes twice, and a bounded run that stops by itself.
Any number of `tickwire serve --redis URL` processes deliver what it publishes; a client
on any of them sees the same offsets (docs/scaling.md).

Try it (with a Redis at 127.0.0.1:6379 and `tickwire serve --redis redis://127.0.0.1:6379`
running):

    python examples/publisher.py --redis redis://127.0.0.1:6379 --count 1000 --rate 200
    tickwire tail ws://127.0.0.1:8765/ orders

tests/test_scaleout.py runs it behind nginx with two servers, one of them killed.
"""

from __future__ import annotations

import argparse

import trio

import tickwire
from tickwire.backplane import open_publisher


async def main(url: str, topic: str, count: int, rate: float, run: str) -> None:
    published = retries = 0
    async with open_publisher(url) as hub:
        start = trio.current_time()
        for n in range(count):
            order = {"n": n, "side": "buy" if n % 2 else "sell", "qty": 100 + n % 7}
            while True:
                try:
                    # The same key again after a failure: Redis remembers it, so a retry
                    # of a message it took already is not a second message.
                    await hub.publish(topic, order, key=f"{run}-{n}", timeout=5.0)
                    break
                except tickwire.BackplaneUnavailable:
                    retries += 1
                    await trio.sleep(0.1)
            published += 1
            await trio.sleep_until(start + (n + 1) / rate)
    print(f"published {published} messages on {topic} ({retries} retries)", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="the Redis URL")
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--count", type=int, default=1000, help="messages, then it stops")
    parser.add_argument("--rate", type=float, default=200.0, help="messages a second")
    parser.add_argument("--run", default="example", help="prefix of the idempotency keys")
    args = parser.parse_args()
    trio.run(main, args.redis, args.topic, args.count, args.rate, args.run)
