"""What the bench scripts share: the WebSocket frame header size and a plain-text table.

Each script runs as ``python bench/<name>.py``, which puts bench/ on the path.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

__all__ = ["median_of", "table", "ws_header"]


def ws_header(n: int) -> int:
    """Bytes of the header of an unmasked (server) WebSocket frame carrying *n* bytes."""
    return 2 if n < 126 else 4 if n < 65536 else 10


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Rows under a header, the first column left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        cells = zip(r, widths, strict=True)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def median_of(repeats: int, run: Callable[[], float]) -> float:
    """The median of *repeats* calls of *run*."""
    return statistics.median(run() for _ in range(repeats))
