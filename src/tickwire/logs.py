"""Structured logs that do not flood: JSON lines or text, with connection ids, and a
filter that lets each kind of message through a few times a window, then counts the rest.

Imports: json, logging, time.

tickwire logs with ``extra={"conn": <connection id>, "remote": <address>, ...}``; these
fields become keys of the JSON line (or ``key=value`` pairs after a text line). What
happens per connection is logged at DEBUG; INFO carries what an operator wants in a
steady stream (start, stop, a summary a minute); WARNING and ERROR go through
:class:`RateLimit`, so that a thousand failing clients make a few lines and a count.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["JSONFormatter", "RateLimit", "TextFormatter", "configure"]

# The attributes every LogRecord has: anything else was given in extra=.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if extras:
            text += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return text


class RateLimit(logging.Filter):
    """Let through at most *burst* records of each message template per *window* seconds
    at WARNING and above (lower levels pass: they are off in production); when a window
    closes, the next record carries ``suppressed=<count>`` for what was held back."""

    def __init__(
        self,
        *,
        burst: int = 5,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst, self.window, self.clock = burst, window, clock
        self._seen: dict[tuple[str, str], list[float | int]] = {}  # [start, passed, held]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self.clock()
        key = (record.name, str(record.msg))
        state = self._seen.get(key)
        if state is None or now - state[0] >= self.window:
            held = 0 if state is None else int(state[2])
            self._seen[key] = [now, 1, 0]
            if held:
                record.suppressed = held
            if len(self._seen) > 10_000:  # many templates: forget the oldest windows
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:5000]:
                    del self._seen[old]
            return True
        if state[1] < self.burst:
            state[1] += 1
            return True
        state[2] += 1
        return False


def configure(level: str = "info", fmt: str = "text") -> None:
    """Log to standard error at *level*, as ``text`` or ``json`` lines, rate-limited."""
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
