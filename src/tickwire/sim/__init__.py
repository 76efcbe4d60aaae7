"""Seeded simulated feeds used by the demo, the tests and the benches.

Imports: stdlib, attrs, tickwire.sansio.table.
"""

from tickwire.sim.game import ENTITY_SCHEMA, GameTick, GameWorld
from tickwire.sim.market import QUOTE_SCHEMA, MarketFeed, quote_row

__all__ = ["ENTITY_SCHEMA", "QUOTE_SCHEMA", "GameTick", "GameWorld", "MarketFeed", "quote_row"]
