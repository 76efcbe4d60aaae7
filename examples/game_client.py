"""A game client: joins as a player, steers towards a target with acknowledged moves, and
keeps the whole world as a live table (a snapshot, then deltas).

Shows: connecting with a player name, Client.publish() waiting for each ACK (a 503 means
the server's loop is behind: wait and send it again), a table subscription read both as
updates (TableChanged) and as the current rows (Subscription.table()).

Try it:  python examples/game_client.py                      (runs its own game server)
         python examples/game_client.py ws://127.0.0.1:8770/ (python examples/game_server.py 0 8770)
"""

from __future__ import annotations

import argparse

import trio

import tickwire
from game_server import Game, authenticate

TARGET = (70.0, 30.0)


async def move(client: tickwire.Client, topic: str, step: list[float]) -> None:
    """One move, acknowledged; retried while the server says it is busy (503)."""
    while True:
        try:
            await client.publish(topic, {"move": step})
            return
        except tickwire.PublishError as exc:
            if exc.code != 503:
                raise
            await trio.sleep(0.05)


async def play(url: str, name: str) -> None:
    async with tickwire.open_client(f"{url}?player={name}") as client:
        async with client.subscribe("world") as world:
            topic = f"input.{name}"
            await client.publish(topic, {"join": True})
            changes = 0
            with trio.fail_after(30):
                while True:
                    update = await world.receive()
                    if isinstance(update, tickwire.TableChanged):
                        changes += len(update.changes)
                    me = world.table().get(name)
                    if me is None:
                        continue  # our join is not in the world yet
                    dx, dy = TARGET[0] - me["x"], TARGET[1] - me["y"]
                    if abs(dx) < 0.5 and abs(dy) < 0.5:
                        break
                    await move(client, topic, [max(-1.0, min(1.0, dx)), max(-1.0, min(1.0, dy))])
            players = ", ".join(f"{k} at ({r['x']}, {r['y']})" for k, r in world.table().items())
            stats = client.statistics()
            print(f"{name} reached {TARGET} after {me['moves']} moves; world: {players}")
            print(
                f"{changes} row changes received in {stats.messages_received} messages, "
                f"{stats.bytes_received} bytes on the wire"
            )


async def main(url: str | None) -> None:
    if url is not None:
        await play(url, "ann")
        return
    hub = tickwire.Hub()
    game = Game(hub)
    async with tickwire.open_server(hub, "127.0.0.1", 0, authenticate=authenticate) as server:
        with hub.listen("input.*") as inputs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(game.run, inputs)
                await play(f"ws://127.0.0.1:{server.port}/", "ann")
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "url",
        nargs="?",
        help="a game server (python examples/game_server.py 0 8770: ws://127.0.0.1:8770/); "
        "without it, one runs in this process",
    )
    trio.run(main, parser.parse_args().url)
