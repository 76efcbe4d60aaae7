"""Seeded simulated feeds used by the demo, the tests and the benches.

Imports: stdlib, attrs.
"""

from tickwire.sim.game import GameTick, GameWorld
from tickwire.sim.market import MarketFeed

__all__ = ["GameTick", "GameWorld", "MarketFeed"]
