"""A simulated game world: a few hundred entities moving at a fixed tick rate, seeded.

Imports: stdlib, attrs, tickwire.schemas (for the entity table's schema).

Players steer and stop, NPCs wander, projectiles fly for a second or two and vanish; health
changes on hits, and entities spawn and despawn. Each :meth:`GameWorld.tick` returns the
changes of one tick, with only the changed fields of each changed entity (what a delta
carries); :meth:`GameWorld.snapshot` returns every entity whole.
"""

from __future__ import annotations

import math
import random
from typing import Any, Final

import attrs
from attrs.validators import ge, gt, instance_of, le

from tickwire.schemas import GAME_ENTITY_SCHEMA

__all__ = ["ENTITY_SCHEMA", "GameTick", "GameWorld"]

Entity = dict[str, Any]
WORLD = 1000.0  # metres along each side

ENTITY_SCHEMA: Final = GAME_ENTITY_SCHEMA
"""A table of the world's entities by id, for :meth:`tickwire.Hub.table`: the ready-made
:data:`tickwire.GAME_ENTITY_SCHEMA`."""


@attrs.frozen
class GameTick:
    """The changes of one tick."""

    tick: int
    time_ns: int
    spawned: list[Entity]
    updated: list[Entity]  # {"id": ..., <changed fields>}
    despawned: list[int]

    def payload(self) -> dict[str, Any]:
        """The tick as one message payload."""
        return {
            "tick": self.tick,
            "t": self.time_ns,
            "spawn": self.spawned,
            "update": self.updated,
            "despawn": self.despawned,
        }

    def changes(self) -> dict[int, Entity]:
        """The tick's spawns and updates as rows of :data:`ENTITY_SCHEMA` by id (apply
        them with ``hub.update("world", tick.changes(), deletes=tick.despawned)``)."""
        rows: dict[int, Entity] = {}
        for entity in (*self.spawned, *self.updated):
            rows.setdefault(entity["id"], {}).update(entity)
        for row in rows.values():
            del row["id"]
        return rows


@attrs.define(eq=False, kw_only=True)
class GameWorld:
    """A seeded world of about *entities* entities advancing at *tick_rate* Hz.

    Args:
        seed: the same seed gives the same world.
        entities: the population it keeps (projectiles come and go around it).
        tick_rate: ticks per simulated second (20-60 in real games).
    """

    seed: int = attrs.field(default=1, validator=instance_of(int))
    entities: int = attrs.field(default=200, validator=[instance_of(int), ge(1), le(100_000)])
    tick_rate: float = attrs.field(default=20.0, validator=gt(0))
    start_ns: int = 1_767_225_600_000_000_000
    _rng: random.Random = attrs.field(init=False)
    _state: dict[int, Entity] = attrs.field(init=False, factory=dict)
    _motion: dict[int, list[float]] = attrs.field(init=False, factory=dict)  # vx, vy, ttl
    _next_id: int = attrs.field(init=False, default=1)
    _tick: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        for _ in range(self.entities):
            self._spawn(self._rng.choice(("player", "npc", "npc")))

    def _spawn(self, kind: str, near: Entity | None = None) -> Entity:
        rng = self._rng
        eid, self._next_id = self._next_id, self._next_id + 1
        x = near["x"] if near else rng.uniform(0, WORLD)
        y = near["y"] if near else rng.uniform(0, WORLD)
        heading = rng.uniform(0, 360)
        moving = kind == "projectile" or rng.random() < 0.6
        speed = {"player": 5.0, "npc": 1.5, "projectile": 40.0}[kind] if moving else 0.0
        entity = {
            "id": eid,
            "kind": kind,
            "x": x,
            "y": y,
            "heading": heading,
            "hp": 100 if kind != "projectile" else 1,
            "state": "flying" if kind == "projectile" else "moving" if moving else "idle",
        }
        rad = math.radians(heading)
        ttl = rng.uniform(1.0, 2.0) if kind == "projectile" else math.inf
        self._motion[eid] = [speed * math.cos(rad), speed * math.sin(rad), ttl]
        self._state[eid] = entity
        return entity

    def snapshot(self) -> list[Entity]:
        """Every entity, whole (copies)."""
        return [dict(e) for e in self._state.values()]

    def tick(self) -> GameTick:
        """Advance one tick and return its changes."""
        rng = self._rng
        dt = 1.0 / self.tick_rate
        self._tick += 1
        spawned: list[Entity] = []
        updated: list[Entity] = []
        despawned: list[int] = []
        for eid, entity in list(self._state.items()):
            vx, vy, ttl = motion = self._motion[eid]
            kind = entity["kind"]
            change: Entity = {}
            if kind == "projectile":
                motion[2] = ttl - dt
                if motion[2] <= 0:
                    despawned.append(eid)
                    continue
            elif rng.random() < (0.05 if kind == "player" else 0.02):
                # Start or stop moving, or turn.
                moving = rng.random() < 0.75
                heading = rng.uniform(0, 360)
                speed = (5.0 if kind == "player" else 1.5) if moving else 0.0
                rad = math.radians(heading)
                motion[0], motion[1] = speed * math.cos(rad), speed * math.sin(rad)
                vx, vy = motion[0], motion[1]
                change["heading"] = heading
                state = "moving" if moving else "idle"
                if state != entity["state"]:
                    change["state"] = state
            if vx or vy:
                change["x"] = min(WORLD, max(0.0, entity["x"] + vx * dt))
                change["y"] = min(WORLD, max(0.0, entity["y"] + vy * dt))
            if kind == "player" and rng.random() < 0.01:
                spawned.append(self._spawn("projectile", near=entity))
            if kind != "projectile" and rng.random() < 0.005:
                change["hp"] = max(0, entity["hp"] - rng.randint(5, 40))
            if change:
                entity.update(change)
                updated.append({"id": eid, **change})
            if entity["hp"] == 0:
                despawned.append(eid)
        for eid in despawned:
            self._state.pop(eid, None)
            self._motion.pop(eid, None)
        # Keep the population: respawn the fallen.
        alive = sum(1 for e in self._state.values() if e["kind"] != "projectile")
        for _ in range(self.entities - alive):
            spawned.append(self._spawn(rng.choice(("player", "npc", "npc"))))
        time_ns = self.start_ns + int(self._tick * dt * 1e9)
        return GameTick(self._tick, time_ns, [dict(e) for e in spawned], updated, despawned)
