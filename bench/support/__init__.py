"""What the bench scripts share: the WebSocket frame header size, tables and progress bars
drawn with rich, and the median of repeated runs.

Each script runs as ``python bench/<name>.py`` (or ``tickwire bench <name>``), which puts
bench/ on the path.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import statistics
from collections.abc import Callable, Iterator, Sequence

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["median_of", "progress", "require_plotting", "table", "ws_header"]


def ws_header(n: int) -> int:
    """Bytes of the header of an unmasked (server) WebSocket frame carrying *n* bytes."""
    return 2 if n < 126 else 4 if n < 65536 else 10


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Rows under a header as a rich table (plain text, so that it prints anywhere and
    pastes into bench/README.md): the first column left-aligned, the rest right-aligned."""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, name in enumerate(header):
        t.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        t.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=400, color_system=None, legacy_windows=False).print(t)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines() if line.strip())


@contextlib.contextmanager
def progress(total: int, description: str) -> Iterator[Callable[[str], None]]:
    """A progress bar on standard error (drawn only on a terminal) for *total* steps;
    yields ``step(what)``, called as each step finishes. What the script prints meanwhile
    appears above the bar."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[what]}"),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total, what="")

        def step(what: str) -> None:
            bar.update(task, advance=1, what=what)

        yield step


def median_of(repeats: int, run: Callable[[], float]) -> float:
    """The median of *repeats* calls of *run*."""
    return statistics.median(run() for _ in range(repeats))


def require_plotting(parser: argparse.ArgumentParser, plot: object) -> None:
    """With ``--plot``, refuse to start (exit status 2) when matplotlib is missing, rather
    than after a whole run."""
    if plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs the plotting extra: python -m pip install -e '.[plot]'")
