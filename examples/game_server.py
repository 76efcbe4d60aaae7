"""A game server that takes its players' input: they publish moves, the server applies them
twenty times a second and streams the world as a table (a snapshot, then one delta a tick).

Shows: Hub.listen() to read client PUBLISHes in the game loop (each one ACKed; ERROR 503 if
the loop fell behind, so no input is silently lost), Hub.update() for one delta per tick,
an authenticator that lets each player publish on its own input topic only, and the
/metrics endpoint beside the game.

Try it:  python examples/game_server.py             (3 seconds, with a bot player)
         python examples/game_server.py 0 8770      (until Ctrl+C, on ws://127.0.0.1:8770/;
                                                     then python examples/game_client.py
                                                     ws://127.0.0.1:8770/)
Players connect to ws://HOST:PORT/?player=NAME, subscribe to "world" and publish
{"join": true}, then {"move": [dx, dy]} (each step at most 1) on "input.NAME".
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import signal
import urllib.parse
from typing import Any

import trio

import tickwire
from tickwire import Field, Schema

WORLD = Schema(
    "player",
    [Field.quantized("x", 2), Field.quantized("y", 2), Field.integer("moves")],
)
SIZE = 100.0  # the arena is SIZE x SIZE
TICK_RATE = 20.0
log = logging.getLogger("game")


async def authenticate(request: tickwire.HandshakeRequest) -> Any:
    """A player is named in the URL; it may watch the world and steer itself only."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
    name = (query.get("player") or [""])[0]
    if not name.isalnum() or len(name) > 20:
        return tickwire.Refusal(401, "connect to /?player=NAME (letters and digits)")
    return tickwire.Principal(subject=name, subscribe=("world",), publish=(f"input.{name}",))


class Game:
    """The world: one row per player. Input is applied at the start of each tick."""

    def __init__(self, hub: tickwire.Hub) -> None:
        self.hub = hub
        self.positions: dict[str, tuple[float, float]] = {}
        self.moves: dict[str, int] = {}
        self.ticks = 0
        hub.table("world", WORLD)

    def apply(self, message: tickwire.Published, changes: dict[str, dict[str, Any]]) -> None:
        player = message.topic.removeprefix("input.")
        payload = message.payload
        if not isinstance(payload, dict):
            log.info("ignoring input from %s: not a map", player)
            return
        if payload.get("join") and player not in self.positions:
            self.positions[player] = (SIZE / 2, SIZE / 2)
            self.moves[player] = 0
            changes[player] = {"x": SIZE / 2, "y": SIZE / 2, "moves": 0}
        move = payload.get("move")
        if player not in self.positions or not _valid_move(move):
            return
        x, y = self.positions[player]
        x = min(SIZE, max(0.0, x + move[0]))
        y = min(SIZE, max(0.0, y + move[1]))
        self.positions[player] = (x, y)
        self.moves[player] += 1
        changes[player] = {"x": round(x, 2), "y": round(y, 2), "moves": self.moves[player]}

    async def run(self, inputs: tickwire.Listener) -> None:
        """The game loop: drain the input queue, publish one delta, sleep to the next tick."""
        start = trio.current_time()
        for tick in itertools.count(1):
            changes: dict[str, dict[str, Any]] = {}
            while (message := inputs.receive_nowait()) is not None:
                self.apply(message, changes)
            self.hub.update("world", changes)  # only fields that changed go on the wire
            self.ticks = tick
            await trio.sleep_until(start + tick / TICK_RATE)


def _valid_move(move: Any) -> bool:
    return (
        isinstance(move, list)
        and len(move) == 2
        and all(isinstance(v, int | float) and math.isfinite(v) and abs(v) <= 1 for v in move)
    )


async def bot(url: str, name: str, steps: int) -> tuple[float, float] | None:
    """A player that walks in a square, each move ACKed; returns where the world says it is."""
    async with tickwire.open_client(f"{url}?player={name}") as client:
        async with client.subscribe("world") as world:
            await client.publish(f"input.{name}", {"join": True})
            for step in range(steps):
                dx, dy = [(1, 0), (0, 1), (-1, 0), (0, -1)][step // 10 % 4]
                await client.publish(f"input.{name}", {"move": [dx, dy]})
            while True:  # until the world shows every move
                row = world.table().get(name)
                if row is not None and row["moves"] == steps:
                    return row["x"], row["y"]
                await world.receive()


async def main(seconds: float, port: int) -> None:
    hub = tickwire.Hub()
    game = Game(hub)
    config = tickwire.ServerConfig(shutdown_timeout=2)
    async with trio.open_nursery() as nursery:
        server = tickwire.Server(hub, config=config, authenticate=authenticate)
        await nursery.start(server.run, "127.0.0.1", port)
        metrics = await nursery.start(tickwire.serve_metrics, server, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}/"
        print(f"game on {url}?player=NAME, metrics on http://127.0.0.1:{metrics.port}/metrics")
        with hub.listen("input.*") as inputs:
            nursery.start_soon(game.run, inputs)
            if seconds:
                with trio.move_on_after(seconds):
                    where = await bot(url, "bot", 25)
                    print(f"bot: 25 moves, each acknowledged; the world has it at {where}")
                    await trio.sleep_forever()
            else:  # until Ctrl+C or SIGTERM, then the same graceful shutdown
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
        stats = server.statistics()
        print(
            f"{game.ticks} ticks; {stats.messages_in} messages in, {stats.messages_out} out; "
            "shutting down"
        )
        await server.aclose()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "seconds",
        nargs="?",
        type=float,
        default=3.0,
        help="how long to run, with a bot player; 0: until Ctrl+C, no bot (default 3)",
    )
    parser.add_argument(
        "port", nargs="?", type=int, default=0, help="the WebSocket port (default 0: any free one)"
    )
    args = parser.parse_args()
    trio.run(main, args.seconds, args.port)
