"""Ready-made table schemas for the feeds tickwire is built for: quotes and game entities.

Imports: tickwire.sansio.table.

Each quote schema keeps what its market sends, exactly: prices and sizes are FIXED fields,
so they arrive as the ``Decimal`` (or ``int``) that was published, and a value with more
places than the schema declares is refused, never rounded. Declare your own schema with a
venue's real tick and lot (``Field.fixed("bid", 2, step=5)``, ``Field.fixed("size", 0,
step=100)``) for the smallest wire: values are then sent as counts of ticks, and a value off
the grid is refused.
"""

from __future__ import annotations

from typing import Final

from tickwire.sansio.table import Field, FieldType, Schema

__all__ = [
    "CRYPTO_QUOTE_SCHEMA",
    "EQUITY_QUOTE_SCHEMA",
    "FX_QUOTE_SCHEMA",
    "GAME_ENTITY_SCHEMA",
]


def _quotes(price_decimals: int, size_decimals: int) -> Schema:
    return Schema(
        "symbol",
        [
            Field.fixed("bid", price_decimals),
            Field.fixed("ask", price_decimals),
            Field.fixed("bid_size", size_decimals),
            Field.fixed("ask_size", size_decimals),
            Field.integer("seq"),  # the venue's sequence number, if it sends one
            Field.integer("ts"),  # nanoseconds since the epoch
        ],
    )


EQUITY_QUOTE_SCHEMA: Final = _quotes(4, 0)
"""Equity quotes by symbol: prices to 4 decimals (sub-penny ticks below a dollar, and
the 0.0001 ticks of many venues), sizes in whole shares (odd lots included), ``seq``, ``ts``."""

FX_QUOTE_SCHEMA: Final = _quotes(5, 2)
"""FX quotes by pair: prices to 5 decimals (pips and their tenths; 3-decimal JPY pairs
fit), sizes (amounts of the base currency) to 2 decimals, ``seq``, ``ts``."""

CRYPTO_QUOTE_SCHEMA: Final = _quotes(8, 8)
"""Crypto quotes by pair: prices and fractional sizes to 8 decimals (a satoshi), up to
92 billion for either, ``seq``, ``ts``."""

GAME_ENTITY_SCHEMA: Final = Schema(
    "id",
    [
        Field.enum("kind", ["player", "npc", "projectile"], strict=False),
        Field.quantized("x", 3),  # millimetres: positions are rounded to them, as asked
        Field.quantized("y", 3),
        Field.quantized("heading", 1),  # tenths of a degree
        Field.integer("hp"),
        Field.enum("state", ["idle", "moving", "flying"], strict=False),
    ],
    key_type=FieldType.INT,
)
"""Game entities by id: ``kind`` and ``state`` are sent as an index when they are one of
the usual values and as themselves otherwise (``"vehicle"``); positions are QUANTIZED to
millimetres and headings to tenths of a degree (the receiver gets floats)."""
