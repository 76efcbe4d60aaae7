"""A simulated market: quotes and trades on hundreds of symbols, seeded and repeatable.

Imports: stdlib, attrs, tickwire.sansio.table (for the quote table's schema).

Activity is skewed as on a real exchange (Zipf-like: the busiest symbol trades far more than
the median one), prices move in whole ticks around a spread of one to a few ticks, sizes come
in round lots, and timestamps are nanoseconds advancing with exponential gaps at *rate*
updates per simulated second.
"""

from __future__ import annotations

import bisect
import itertools
import random
import string
from collections.abc import Iterator
from typing import Any, Final

import attrs
from attrs.validators import ge, gt, instance_of, le

from tickwire.sansio.table import Field, Schema
from tickwire.schemas import EQUITY_QUOTE_SCHEMA

__all__ = ["LOT_QUOTE_SCHEMA", "QUOTE_SCHEMA", "MarketFeed", "quote_row"]

Update = dict[str, Any]

QUOTE_SCHEMA: Final = EQUITY_QUOTE_SCHEMA
"""The quote table of the simulated market, for :meth:`tickwire.Hub.table`: the ready-made
:data:`tickwire.EQUITY_QUOTE_SCHEMA` (prices to 4 decimals, sizes in shares)."""

LOT_QUOTE_SCHEMA: Final = Schema(
    "symbol",
    [
        Field.fixed("bid", 2),  # this market's tick: a cent
        Field.fixed("ask", 2),
        Field.fixed("bid_size", 0, step=100),  # its lot: 100 shares, sent as 1, 2, 3...
        Field.fixed("ask_size", 0, step=100),
        Field.integer("seq"),
        Field.integer("ts"),
    ],
)
"""The simulated market's quotes on its own grid (cent ticks, lots of 100): the smallest
wire, refusing what is off the grid. What a venue with a known tick and lot would declare."""


def quote_row(update: Update) -> Update:
    """The fields of a quote update as a row of :data:`QUOTE_SCHEMA` (without the key)."""
    return {k: v for k, v in update.items() if k not in ("type", "symbol")}


@attrs.define(eq=False)
class _Book:
    symbol: str
    tick: float
    bid_ticks: int
    spread_ticks: int
    bid_size: int
    ask_size: int


@attrs.define(eq=False, kw_only=True)
class MarketFeed:
    """An endless, seeded stream of ``quote`` and ``trade`` updates (plain dicts).

    Args:
        seed: the same seed gives the same stream.
        symbols: how many instruments.
        rate: updates per simulated second (sets the timestamps and :meth:`batches`).
        skew: the Zipf exponent of symbol activity (0 is uniform).
        trade_ratio: the share of updates that are trades.
        start_ns: the first timestamp, in nanoseconds since the epoch.
    """

    seed: int = attrs.field(default=1, validator=instance_of(int))
    symbols: int = attrs.field(default=500, validator=[instance_of(int), ge(1), le(20_000)])
    rate: float = attrs.field(default=5000.0, validator=gt(0))
    skew: float = attrs.field(default=1.1, validator=ge(0))
    trade_ratio: float = attrs.field(default=0.1, validator=[ge(0), le(1)])
    start_ns: int = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
    _rng: random.Random = attrs.field(init=False)
    _books: list[_Book] = attrs.field(init=False)
    _cumulative: list[float] = attrs.field(init=False)
    _now_ns: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = rng = random.Random(self.seed)
        names: set[str] = set()
        while len(names) < self.symbols:
            names.add("".join(rng.choices(string.ascii_uppercase, k=rng.choice((2, 3, 4, 4)))))
        self._books = []
        for name in sorted(names):
            price = 10 ** rng.uniform(0.7, 2.8)  # about 5 to 630
            tick = 0.01 if price >= 1 else 0.0001
            self._books.append(
                _Book(name, tick, round(price / tick), rng.randint(1, 3), *self._sizes())
            )
        rng.shuffle(self._books)  # activity rank unrelated to the name
        weights = [1 / (rank + 1) ** self.skew for rank in range(self.symbols)]
        self._cumulative = list(itertools.accumulate(weights))
        self._now_ns = self.start_ns

    @property
    def symbol_names(self) -> list[str]:
        """Every symbol, busiest first."""
        return [b.symbol for b in self._books]

    def _sizes(self) -> tuple[int, int]:
        return 100 * self._rng.randint(1, 50), 100 * self._rng.randint(1, 50)

    def _price(self, book: _Book, ticks: int) -> float:
        return round(ticks * book.tick, 4 if book.tick < 0.01 else 2)

    def next(self) -> Update:
        """The next update: a quote (bid, ask, sizes) or a trade (price, size, side)."""
        rng = self._rng
        self._now_ns += max(1, int(rng.expovariate(self.rate) * 1e9))
        index = bisect.bisect_left(self._cumulative, rng.random() * self._cumulative[-1])
        book = self._books[min(index, self.symbols - 1)]
        if rng.random() < self.trade_ratio:
            buy = rng.random() < 0.5
            ticks = book.bid_ticks + book.spread_ticks if buy else book.bid_ticks
            return {
                "type": "trade",
                "symbol": book.symbol,
                "price": self._price(book, ticks),
                "size": 100 * rng.randint(1, 20),
                "side": "B" if buy else "S",
                "ts": self._now_ns,
            }
        step = rng.random()
        if step < 0.3:
            book.bid_ticks = max(1, book.bid_ticks + rng.choice((-1, 1)))
        if step > 0.8:
            book.spread_ticks = max(1, min(4, book.spread_ticks + rng.choice((-1, 1))))
        if rng.random() < 0.7:
            book.bid_size, book.ask_size = self._sizes()
        return {
            "type": "quote",
            "symbol": book.symbol,
            "bid": self._price(book, book.bid_ticks),
            "ask": self._price(book, book.bid_ticks + book.spread_ticks),
            "bid_size": book.bid_size,
            "ask_size": book.ask_size,
            "ts": self._now_ns,
        }

    def take(self, count: int) -> list[Update]:
        """The next *count* updates."""
        return [self.next() for _ in range(count)]

    def __iter__(self) -> Iterator[Update]:
        while True:
            yield self.next()

    def batches(self, window: float = 0.010) -> Iterator[list[Update]]:
        """Updates grouped by *window* seconds of simulated time (empty windows skipped)."""
        for _, batch in self.windows(window):
            yield batch

    def windows(self, window: float = 0.010) -> Iterator[tuple[int, list[Update]]]:
        """As :meth:`batches`, each batch with the timestamp (ns) at which its window ends:
        the time to send it in real time, every update in it being older."""
        window_ns = int(window * 1e9)
        edge = self._now_ns + window_ns
        batch: list[Update] = []
        while True:
            update = self.next()
            while update["ts"] >= edge:
                if batch:
                    yield edge, batch
                    batch = []
                edge += window_ns
            batch.append(update)
