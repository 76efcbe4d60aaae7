"""``tickwire tail URL TOPIC...``: subscribe and print the decoded updates as they arrive.

Imports: trio, rich, tickwire.client.

Updates go to standard output, one line each: readable text, or JSON lines with
``--json`` (for ``jq`` and scripts). Live counters (updates a second, bytes a second on the
wire, the compression ratio, gaps, reconnects, lines printed) go to standard error: on a
terminal they stay on its last line, refreshed every ``--stats-interval`` seconds, the
updates scrolling above; otherwise as a line every interval. A summary ends every run.
``--count`` (lines printed) and ``--duration`` bound a run; Ctrl+C ends it with the summary.
Connection attempts that fail are shown as they happen, and one that retrying cannot fix
(a name that does not resolve, HTTP 404, TLS against a plain server, a refused token) ends
the run at once with the reason and exit status 1. A topic that does not exist is said so,
with the names it looks like.
"""

from __future__ import annotations

import datetime
import json
import signal
import ssl
import sys
import threading
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Literal, TextIO

import attrs
import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tickwire._groups import unwrapped
from tickwire.client import (
    Attempt,
    Client,
    ClientConfig,
    ClientStatistics,
    Message,
    Reconnect,
    TableChanged,
    TableReset,
    Update,
    open_client,
)
from tickwire.errors import ConnectionClosed, ConnectionRefused, SubscriptionError, TickwireError

__all__ = ["TailOptions", "format_json", "format_text", "plain", "tail"]


@attrs.frozen(kw_only=True)
class TailOptions:
    """What ``tickwire tail`` was asked for."""

    url: str
    topics: tuple[str, ...]
    json: bool = False
    count: int | None = None  # lines: messages, row changes, resets, losses
    duration: float | None = None
    stats_interval: float | None = 2.0
    max_rate: float | None = None
    policy: Literal["disconnect", "drop_oldest", "conflate"] | None = None
    token: str | None = None
    compression: bool = True
    retries: int = 20
    cafile: str | None = None  # for wss:// with a private certificate authority


def plain(value: Any) -> Any:
    """*value* as JSON can carry it: bytes as ``{"$bin": hex}``, keys as strings, attrs
    objects (events) as maps of their fields, and the exact decimals of FIXED fields as
    strings of their digits (``"1.23456"``: a JSON number would go through a float)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if attrs.has(type(value)):
        return {a.name: plain(getattr(value, a.name)) for a in attrs.fields(type(value))}
    return value


def _clock() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]


def format_json(update: Update) -> list[str]:
    """JSON lines for one update: ``message``, ``change`` (one a row), ``reset``, ``lost``."""
    if isinstance(update, Message):
        line = {"type": "message", "topic": update.topic, "offset": update.offset}
        return [json.dumps({**line, "payload": plain(update.payload)})]
    if isinstance(update, TableChanged):
        return [
            json.dumps(
                {
                    "type": "change",
                    "topic": update.topic,
                    "offset": update.offset,
                    "key": plain(change.key),
                    "row": plain(change.row),
                    "changed": list(change.changed),
                }
            )
            for change in update.changes
        ]
    if isinstance(update, TableReset):
        rows = [plain(row) for row in update.rows.values()]
        line = {"type": "reset", "topic": update.topic, "offset": update.offset}
        return [json.dumps({**line, "reason": update.reason, "rows": rows})]
    return [
        json.dumps(
            {
                "type": "lost",
                "topic": update.topic,
                "first": update.first,
                "last": update.last,
                "reason": update.reason,
            }
        )
    ]


def _text(value: Any) -> str:
    return format(value, "f") if isinstance(value, Decimal) else json.dumps(plain(value))


def _fields(row: Any, names: tuple[str, ...] | None = None) -> str:
    items = row.items() if names is None else ((n, row[n]) for n in names if n in row)
    return " ".join(f"{k}={_text(v)}" for k, v in items)


def format_text(update: Update) -> list[str]:
    """Readable lines for one update: time, topic, offset, then what changed."""
    now = _clock()
    if isinstance(update, Message):
        payload = update.payload
        text = _fields(payload) if isinstance(payload, dict) else json.dumps(plain(payload))
        return [f"{now} {update.topic} #{update.offset} {text}"]
    if isinstance(update, TableChanged):
        lines = []
        for change in update.changes:
            if change.row is None:
                lines.append(f"{now} {update.topic} #{update.offset} {change.key} deleted")
            else:
                text = _fields(change.row, change.changed)
                lines.append(f"{now} {update.topic} #{update.offset} {change.key} {text}")
        return lines
    if isinstance(update, TableReset):
        count = len(update.rows)
        return [f"{now} {update.topic} #{update.offset} snapshot: {count} rows ({update.reason})"]
    span = "?" if update.first is None else f"{update.first}-{update.last}"
    return [f"{now} {update.topic} LOST offsets {span}: {update.reason}"]


@attrs.define
class _Meter:
    """Rates between two looks at the client's counters."""

    at: float = 0.0
    updates: int = 0
    bytes: int = 0

    def rates(self, now: float, stats: ClientStatistics) -> tuple[float, float]:
        elapsed = max(now - self.at, 1e-9)
        rates = (
            (stats.updates_received - self.updates) / elapsed,
            (stats.bytes_received - self.bytes) / elapsed,
        )
        self.at, self.updates, self.bytes = now, stats.updates_received, stats.bytes_received
        return rates


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _stats_line(stats: ClientStatistics, updates_rate: float, bytes_rate: float) -> str:
    return (
        f"{updates_rate:,.0f} updates/s, {_human(bytes_rate)}/s, "
        f"compression x{stats.compression_ratio:.2f}, {stats.losses} gaps, "
        f"{stats.reconnects} reconnects, {stats.updates_received:,} updates"
    )


def console() -> Console:
    """Standard error as tail writes to it: no highlighting, and no wrapping of a long line
    in the middle of a sentence when it is not a terminal."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    return err


async def tail(
    options: TailOptions,
    *,
    out: TextIO | None = None,
    err: Console | None = None,
    open_stream: Callable[[str], Awaitable[trio.abc.Stream]] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run ``tickwire tail``; returns the exit status (0, or 1 when refused).

    *out* and *err* are where the updates and the counters go (standard output and error);
    *open_stream* is passed to :func:`~tickwire.open_client` (tests: a memory listener)."""
    out = out or sys.stdout
    err = err or console()
    fmt: Callable[[Update], list[str]] = format_json if options.json else format_text

    def retrying(attempt: Attempt) -> None:
        if attempt.delay is not None:  # when giving up, the error below says why
            err.print(
                f"tickwire tail: {attempt.url}: {attempt.reason}; attempt {attempt.failures + 1}"
                f" of {options.retries + 1} in {attempt.delay:.1f} s",
                markup=False,
            )

    config = ClientConfig(
        compression=options.compression,
        reconnect=Reconnect(initial_delay=0.25, max_delay=5.0, max_attempts=options.retries),
        on_retry=retrying,
    )
    started = trio.current_time()
    try:
        with unwrapped():
            return await _run(options, out, err, fmt, config, started, open_stream, task_status)
    except SubscriptionError as exc:
        err.print(f"tickwire tail: subscription refused: {exc.code} {exc.text}", markup=False)
    except (ConnectionRefused, ConnectionClosed) as exc:
        err.print(f"tickwire tail: {options.url}: {exc}", markup=False)
    except TickwireError as exc:
        err.print(f"tickwire tail: {type(exc).__name__}: {exc}", markup=False)
    except OSError as exc:
        err.print(f"tickwire tail: cannot connect to {options.url}: {exc}", markup=False)
    return 1


@attrs.define
class _Tally:
    """What the run printed and saw, for the status line and the summary."""

    printed: int = 0
    snapshots: int = 0
    snapshot_rows: int = 0


async def _run(
    options: TailOptions,
    out: TextIO,
    err: Console,
    fmt: Callable[[Update], list[str]],
    config: ClientConfig,
    started: float,
    open_stream: Callable[[str], Awaitable[trio.abc.Stream]] | None,
    task_status: trio.TaskStatus[None],
) -> int:
    tally = _Tally()
    context = ssl.create_default_context(cafile=options.cafile) if options.cafile else None
    live = options.stats_interval is not None and err.is_terminal
    async with open_client(
        options.url,
        token=options.token,
        config=config,
        ssl_context=context,
        open_stream=open_stream,
    ) as client:
        # Bounded: when printing falls behind, the subscriptions' own buffers fill and
        # stream updates are dropped with a Lost line, as the client promises.
        send, receive = trio.open_memory_channel[Update](256)
        meter = _Meter(at=started)
        with _StatusLine(err, enabled=live) as status:
            # On a terminal the counters stay on the bottom line; the updates scroll above.
            write = status.writer(out)
            async with trio.open_nursery() as nursery:
                for topic in options.topics:
                    subscription = await nursery.start(_follow, client, topic, options, send)
                    _hint(subscription, err)
                if options.stats_interval:
                    nursery.start_soon(
                        _report, client, options.stats_interval, meter, err, status, tally
                    )
                if options.duration is not None:
                    nursery.cancel_scope.deadline = started + options.duration
                if threading.current_thread() is threading.main_thread():
                    nursery.start_soon(_until_interrupted, nursery.cancel_scope)
                task_status.started()
                async for update in receive:
                    if isinstance(update, TableReset):
                        tally.snapshots += 1
                        tally.snapshot_rows += len(update.rows)
                    lines = fmt(update)  # one a message or row change
                    if options.count is not None:
                        lines = lines[: options.count - tally.printed]
                    write("".join(line + "\n" for line in lines))
                    tally.printed += len(lines)
                    if options.count is not None and tally.printed >= options.count:
                        break
                nursery.cancel_scope.cancel()
        _summary(client.statistics(), trio.current_time() - started, tally, err)
    return 0


def _hint(subscription: Any, err: Console) -> None:
    """Say at once what may make a subscription silent: the server's notes (a topic that
    does not exist, and the names it looks like), or a pattern that matches nothing yet."""
    for note in subscription.notes.values():
        err.print(f"tickwire tail: {note}", markup=False)
    if not subscription.exact and not subscription.topics:
        err.print(
            f"tickwire tail: no topic matches {subscription.pattern!r} yet (subscribed: "
            "topics that appear are delivered)",
            markup=False,
        )


class _StatusLine:
    """The counters on the last line of a terminal (rich's Live), the output above them."""

    def __init__(self, err: Console, *, enabled: bool) -> None:
        self.enabled = enabled
        self._live = (
            Live(Text(""), console=err, transient=True, auto_refresh=False) if enabled else None
        )

    def __enter__(self) -> _StatusLine:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def writer(self, out: TextIO) -> Callable[[str], None]:
        """How to write the updates: straight to *out*, or above the status line when it
        shares the terminal."""
        if self._live is not None and out is sys.stdout:
            console = self._live.console

            def above(text: str) -> None:
                if text:
                    console.print(text, end="", markup=False, highlight=False, soft_wrap=True)

            return above

        def plain(text: str) -> None:
            out.write(text)
            out.flush()

        return plain

    def show(self, line: str) -> None:
        if self._live is not None:
            self._live.update(Text(line, style="bold"), refresh=True)


async def _until_interrupted(scope: trio.CancelScope) -> None:
    """Ctrl+C ends the run like --count does: with the summary, exit status 0."""
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _follow(
    client: Client,
    topic: str,
    options: TailOptions,
    send: trio.MemorySendChannel[Update],
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with client.subscribe(
        topic, policy=options.policy, max_rate=options.max_rate
    ) as subscription:
        task_status.started(subscription)
        async for update in subscription:
            await send.send(update)


async def _report(
    client: Client,
    interval: float,
    meter: _Meter,
    err: Console,
    status: _StatusLine,
    tally: _Tally,
) -> None:
    while True:
        await trio.sleep(interval)
        stats = client.statistics()
        updates_rate, bytes_rate = meter.rates(trio.current_time(), stats)
        line = f"{_stats_line(stats, updates_rate, bytes_rate)}, {tally.printed:,} printed"
        if status.enabled:
            status.show(line)
        else:
            err.print(f"tickwire tail: {line}", markup=False)


def _summary(stats: ClientStatistics, elapsed: float, tally: _Tally, err: Console) -> None:
    table = Table(title="tickwire tail", show_header=False, box=None)
    elapsed = max(elapsed, 1e-9)
    wire_rate = stats.bytes_received / elapsed
    snapshots = f"{tally.snapshots:,} ({tally.snapshot_rows:,} rows)" if tally.snapshots else "none"
    for name, value in (
        ("subprotocol", stats.subprotocol or "-"),
        ("seconds", f"{elapsed:.2f}"),
        ("printed", f"{tally.printed:,} lines"),
        (
            "received",
            f"{stats.updates_received:,} updates ({stats.updates_received / elapsed:,.0f}/s)",
        ),
        ("snapshots", snapshots),
        ("messages", f"{stats.messages_received:,}"),
        ("on the wire", f"{_human(stats.bytes_received)} ({_human(wire_rate)}/s)"),
        ("decoded", _human(stats.bytes_decoded)),
        ("compression", f"x{stats.compression_ratio:.2f}"),
        ("gaps", str(stats.losses)),
        ("reconnects", str(stats.reconnects)),
        ("failed attempts", str(stats.failed_attempts)),
    ):
        table.add_row(name, value)
    err.print(table)
