"""Which topic a broker's message feeds, and how: routes from subjects to topics, free of I/O.

Imports: json, msgpack, attrs, tickwire.errors.

Theory of operation. A broker names each message by a *subject*: a RabbitMQ routing key,
a NATS subject, a Redis stream's key. A :class:`Route` matches subjects with a pattern of
dot-separated segments, where ``*`` is exactly one segment and ``>`` (or RabbitMQ's ``#``)
as the last segment is one or more; the first route that matches decides. It names the
topic, with ``{subject}`` for the whole subject and ``{1}``, ``{2}``... for its segments;
the payload's format (JSON or msgpack); and whether the message is a stream message
(published as it is) or a row of a table topic (upserted under the value of its *key*
field, the rest of the object being the row's fields).

:meth:`Routing.decide` turns one message into a :class:`ToStream`, a :class:`ToTable` or a
:class:`DeadLetter` (with the reason); it never raises for what a message contains, so a
bad message is set aside, never a crash. Whether the value itself is acceptable is the
hub's gate's to say, at publish time (its refusal dead-letters the message too).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
import msgpack

__all__ = ["DeadLetter", "Route", "Routing", "ToStream", "ToTable"]

FORMATS: Final = ("json", "msgpack")
_SEGMENT = re.compile(r"[A-Za-z0-9_\-:]+")
_PLACEHOLDER = re.compile(r"\{(subject|[1-9][0-9]*)\}")


@attrs.frozen
class ToStream:
    """Publish *payload* to stream topic *topic*."""

    topic: str
    payload: Any


@attrs.frozen
class ToTable:
    """Upsert row *key* of table topic *topic* with *fields*."""

    topic: str
    key: Any
    fields: dict[str, Any]


@attrs.frozen
class DeadLetter:
    """Not publishable, and why (the message goes to the dead-letter destination)."""

    reason: str


def _check_pattern(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    parts = value.split(".") if isinstance(value, str) else []
    if not parts or not all(
        p == "*" or _SEGMENT.fullmatch(p) or (p in (">", "#") and i == len(parts) - 1)
        for i, p in enumerate(parts)
    ):
        raise ValueError(
            f"{attribute.name}: not a subject pattern: {value!r} (segments, '*' for one, "
            "'>' or '#' last for the rest)"
        )


def _check_topic(route: Route, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError("topic: a topic name or template is needed")
    for index in _PLACEHOLDER.findall(value):
        if index != "subject" and int(index) > route.segments and not route.open_ended:
            raise ValueError(
                f"topic {value!r}: {{{index}}} but the pattern {route.match!r} has "
                f"{route.segments} segments"
            )
    if "{" in _PLACEHOLDER.sub("", value) or "}" in _PLACEHOLDER.sub("", value):
        raise ValueError(f"topic {value!r}: only {{subject}} and {{1}}, {{2}}... may be used")


@attrs.frozen(kw_only=True)
class Route:
    """Subjects matching *match* feed *topic* (see the module's theory of operation).

    Attributes:
        match: the subject pattern (``quotes.*``, ``game.>``).
        topic: the topic name, with ``{subject}`` and ``{1}``, ``{2}``... from the subject.
        format: ``"json"`` or ``"msgpack"``.
        key: for a table topic, the payload's field that names the row; None for a
            stream.
    """

    match: str = attrs.field(validator=_check_pattern)
    topic: str = attrs.field(validator=_check_topic)
    format: str = attrs.field(default="json", validator=attrs.validators.in_(FORMATS))
    key: str | None = None

    @property
    def segments(self) -> int:
        return len(self.match.split("."))

    @property
    def open_ended(self) -> bool:
        return self.match.split(".")[-1] in (">", "#")

    def matches(self, subject: str) -> bool:
        want, have = self.match.split("."), subject.split(".")
        if self.open_ended:
            want = want[:-1]
            if len(have) <= len(want):
                return False
            have = have[: len(want)]
        elif len(have) != len(want):
            return False
        return all(w in ("*", h) for w, h in zip(want, have, strict=True))

    def topic_for(self, subject: str) -> str:
        parts = subject.split(".")

        def fill(found: re.Match[str]) -> str:
            name = found.group(1)
            return subject if name == "subject" else parts[int(name) - 1]

        return _PLACEHOLDER.sub(fill, self.topic)


def _routes(items: Iterable[Route]) -> tuple[Route, ...]:
    return tuple(items)


@attrs.frozen
class Routing:
    """Routes, tried in order."""

    routes: tuple[Route, ...] = attrs.field(converter=_routes)

    @classmethod
    def from_config(cls, items: Sequence[Mapping[str, Any]]) -> Routing:
        """From the ``[[bridge.routes]]`` tables of the TOML settings (docs/sources.md).

        Raises:
            ValueError: a route is malformed; the message names it.
        """
        routes = []
        for i, item in enumerate(items):
            unknown = set(item) - {"match", "topic", "format", "key"}
            if unknown:
                raise ValueError(f"route {i + 1}: unknown settings: {', '.join(sorted(unknown))}")
            try:
                routes.append(Route(**item))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"route {i + 1}: {exc}") from None
        return cls(tuple(routes))

    def route(self, subject: str) -> Route | None:
        return next((r for r in self.routes if r.matches(subject)), None)

    def decide(self, subject: str, payload: bytes) -> ToStream | ToTable | DeadLetter:
        """What to do with one message: never raises for its content."""
        route = self.route(subject)
        if route is None:
            return DeadLetter(f"no route for subject {subject!r}")
        try:
            if route.format == "json":
                value = json.loads(payload)
            else:
                value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            return DeadLetter(f"not {route.format}: {exc}")
        topic = route.topic_for(subject)
        if route.key is None:
            return ToStream(topic, value)
        if not isinstance(value, dict):
            return DeadLetter(f"a row must be an object, not {type(value).__name__}")
        if route.key not in value:
            return DeadLetter(f"no key field {route.key!r} in the row")
        fields = dict(value)
        key = fields.pop(route.key)
        return ToTable(topic, key, fields)
