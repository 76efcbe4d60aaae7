"""The gate every value entering a topic passes: deliverable exactly, or refused (§4.14).

Imports: msgpack, re, math, attrs, tickwire.config, tickwire.errors.

Theory of operation. Whoever offers a value (the program's ``publish_nowait`` or a client's
PUBLISH, a table's ANY field), it is packed with msgpack here, once, before anything else
happens: before an offset is used, anything is stored or anyone is told. What cannot be
packed (a ``Decimal``, a ``datetime``, a ``set``, an integer outside msgpack's range, a
string with a lone surrogate) is refused, and so is what packs but some receiver would
refuse or could not carry: NaN and infinities (JSON receivers), msgpack ext types, maps
keyed by arrays or maps, and anything over the receivers' size, nesting or container
limits. The packed bytes are what the hub then frames, so checking costs one pack.

Checking is cheap in the common case: after packing, one C-level pass keeps only the bytes
that could be a container header, a float64 or an ext header. A value with none of them is a
scalar; with at most one container header and no non-finite float pattern it is a flat
container of scalars; either way nothing more needs looking at. Only values with nested
containers, ext candidates or what looks like NaN are walked, in Python, and the walk also
says where the problem is (``payload['legs'][2]['px']``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import attrs
import msgpack

from tickwire.config import Limits
from tickwire.errors import InvalidValue, ValueTooLarge

__all__ = ["ValueLimits", "pack_trusted", "pack_value", "unpack_value"]

# What a message around a value costs in nesting and containers (§4.14): DATA puts a stream
# payload one array deep, BATCH two; a table's ANY field sits inside a delta entry, which a
# BATCH of deltas puts three deep.
PAYLOAD_WRAPPING: Final = 2
FIELD_WRAPPING: Final = 3
# A value's packed bytes may take at most this share of the receivers' message size: JSON
# spells a control character in six, and base64 spends four bytes on three (§4.12).
JSON_EXPANSION: Final = 8

_CONTAINERS: Final = frozenset([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_MAPS: Final = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_FLOAT64: Final = 0xCB
_EXT: Final = frozenset([0xC1, 0xC7, 0xC8, 0xC9, 0xCA, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8])
_KEEP: Final = _CONTAINERS | _EXT | {_FLOAT64}
_DELETE: Final = bytes(b for b in range(256) if b not in _KEEP)
_NOT_MAPS: Final = bytes(b for b in range(256) if b not in _MAPS)
_NOT_CONTAINERS: Final = bytes(b for b in range(256) if b not in _CONTAINERS)
_ANY_EXT: Final = re.compile(b"[" + bytes(sorted(_EXT)).replace(b"\\", b"\\\\") + b"]")
# A float64 whose exponent bits are all ones: an infinity or a NaN.
_NON_FINITE: Final = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]")

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)
_SCALAR_KEYS: Final = (str, int, bytes, bool, type(None), float)
_SCALARS: Final = frozenset({str, int, float, bool, type(None), bytes})
_STR: Final = frozenset({str})


@attrs.frozen
class ValueLimits:
    """What one value may be, so that every receiver within *limits* accepts the messages
    that carry it.

    Attributes:
        max_bytes: its packed size.
        max_depth: nesting levels of arrays and maps inside it (a scalar has none).
        max_containers: arrays and maps in it, all levels together.
        max_items: elements of one array or map.
    """

    max_bytes: int
    max_depth: int
    max_containers: int
    max_items: int

    @classmethod
    def for_payloads(cls, limits: Limits) -> ValueLimits:
        """What a stream payload may be for receivers holding *limits* (in DATA or BATCH)."""
        return cls._wrapped(limits, PAYLOAD_WRAPPING)

    @classmethod
    def for_fields(cls, limits: Limits) -> ValueLimits:
        """What a table ANY field's value may be (in deltas, batches and snapshots)."""
        return cls._wrapped(limits, FIELD_WRAPPING)

    @classmethod
    def _wrapped(cls, limits: Limits, levels: int) -> ValueLimits:
        return cls(
            max_bytes=max(1, min(limits.max_message_bytes, limits.max_decompressed_bytes))
            // JSON_EXPANSION,
            max_depth=max(0, limits.max_depth - levels),
            max_containers=max(0, limits.max_containers - levels),
            max_items=limits.max_container_items,
        )


def pack_value(value: Any, limits: ValueLimits, *, where: str = "payload") -> bytes:
    """*value* packed with msgpack, if every receiver will get it exactly.

    Args:
        value: None, bool, int (-2^63 to 2^64-1), finite float, str, bytes (also
            bytearray and memoryview), lists and tuples (they arrive as arrays), and maps
            whose keys are scalars.
        limits: the receivers' limits, as :class:`ValueLimits`.
        where: how error messages name the value.

    Raises:
        InvalidValue: a type or value no receiver can get exactly; the message says where.
        ValueTooLarge: over a size, nesting or container limit.
    """
    try:
        packed: bytes = _packer.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
        _packer.reset()
        _Walk(limits, where).value(value, 0)  # says where; raises
        raise InvalidValue(f"cannot be sent: {exc}", where=where) from exc  # pragma: no cover
    if len(packed) > limits.max_bytes:
        raise ValueTooLarge(
            f"{len(packed)} bytes packed, more than the {limits.max_bytes} a receiver takes",
            where=where,
        )
    if _flat(value, limits):
        # Packing checked the types, integer ranges and UTF-8; what is left is NaN.
        if b"\xcb" in packed and _NON_FINITE.search(packed):
            _Walk(limits, where).value(value, 0)
        return packed
    marks = packed.translate(None, _DELETE)
    if marks and _needs_walk(packed, marks, limits):
        floats = _FLOAT64 in marks and _NON_FINITE.search(packed) is not None
        _Walk(limits, where, floats=floats).value(value, 0)
    return packed


def _flat(value: Any, limits: ValueLimits) -> bool:
    """Whether *value* is a scalar, or one map with string keys or one array, of scalars
    (the common payload), found with C-level loops only."""
    t = type(value)
    if t in _SCALARS:
        return True
    if t is dict:
        return (
            len(value) <= limits.max_items
            and limits.max_depth >= 1
            and limits.max_containers >= 1
            and set(map(type, value)) <= _STR
            and set(map(type, value.values())) <= _SCALARS
        )
    if t is list or t is tuple:
        return (
            len(value) <= limits.max_items
            and limits.max_depth >= 1
            and limits.max_containers >= 1
            and set(map(type, value)) <= _SCALARS
        )
    return False


def _needs_walk(packed: bytes, marks: bytes, limits: ValueLimits) -> bool:
    """Whether the cheap bounds leave any doubt (they over-count: a byte inside a string or
    an integer may look like a header, never the reverse)."""
    if _ANY_EXT.search(marks) or (_FLOAT64 in marks and _NON_FINITE.search(packed)):
        return True
    containers = len(marks.translate(None, _NOT_CONTAINERS))
    if containers > 1 and marks.translate(None, _NOT_MAPS):
        return True  # a map among several containers: its keys might be containers
    return (
        containers > limits.max_depth
        or containers > limits.max_containers
        or len(packed) > limits.max_items
    )


class _Walk:
    """The slow path: find what makes a value undeliverable and raise for it, naming where.

    With *floats* False (the packed bytes hold nothing that looks like NaN), scalars and
    flat containers need no look at all: only the structure is walked.
    """

    def __init__(self, limits: ValueLimits, where: str, *, floats: bool = True) -> None:
        self.limits = limits
        self.root = where
        self.floats = floats
        self.path: list[Any] = []
        self.containers = 0

    def fail(self, message: str, *, too_large: bool = False) -> InvalidValue:
        where = self.root + "".join(f"[{key!r}]" for key in self.path)
        return (ValueTooLarge if too_large else InvalidValue)(message, where=where)

    def value(self, value: Any, depth: int) -> None:
        t = type(value)
        if t in _SCALARS:
            if t is float or t is str or t is int:
                self.scalar(value)
            return
        if t is dict or t is list or t is tuple:
            self.container(value, depth)
            return
        if value is None or isinstance(value, bool | bytes | bytearray | memoryview):
            return
        if isinstance(value, int | float | str):
            self.scalar(value)
            return
        if isinstance(value, msgpack.ExtType | msgpack.Timestamp):
            raise self.fail("msgpack ext types (timestamps included) are never valid in tickwire")
        if isinstance(value, list | tuple | dict):
            self.container(value, depth)
            return
        raise self.fail(
            f"{type(value).__name__} is not a msgpack type; convert it first (a Decimal to "
            "a string, or into a table's Field.fixed; a datetime to nanoseconds)"
        )

    def scalar(self, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            if not -(2**63) <= value <= 2**64 - 1:
                raise self.fail(
                    f"the integer {value} is outside msgpack's range (-2**63 to 2**64-1)"
                )
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise self.fail(
                    f"{value!r} cannot be sent (JSON receivers cannot carry NaN or "
                    "infinities); send None or a sentinel instead"
                )
        elif not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise self.fail(
                    f"a lone surrogate at index {exc.start} is not valid UTF-8"
                ) from None

    def container(self, value: list[Any] | tuple[Any, ...] | dict[Any, Any], depth: int) -> None:
        limits = self.limits
        if value and depth >= limits.max_depth:  # as §7.2 counts: empty ones nest nothing
            raise self.fail(
                f"nested deeper than the {limits.max_depth} levels receivers accept",
                too_large=True,
            )
        self.containers += 1
        if self.containers > limits.max_containers:
            raise self.fail(
                f"more than {limits.max_containers} arrays and maps in all", too_large=True
            )
        if len(value) > limits.max_items:
            raise self.fail(
                f"{len(value)} elements, more than the {limits.max_items} receivers accept",
                too_large=True,
            )
        path, quick = self.path, not self.floats
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            path.append(key)
            if type(value) is not list and type(value) is not tuple and isinstance(value, dict):
                if not isinstance(key, _SCALAR_KEYS):
                    raise self.fail(
                        "a map key must be a string, number, bytes, bool or None, "
                        f"not {type(key).__name__}"
                    )
                if not quick:
                    self.value(key, depth + 1)
            if quick:
                t = type(item)
                if t in _SCALARS:
                    path.pop()
                    continue
                if (t is dict or t is list or t is tuple) and _flat(item, limits):
                    if item and depth + 1 >= limits.max_depth:
                        self.container(item, depth + 1)  # raises
                    self.containers += 1
                    if self.containers > limits.max_containers:
                        raise self.fail(
                            f"more than {limits.max_containers} arrays and maps in all",
                            too_large=True,
                        )
                    path.pop()
                    continue
            self.value(item, depth + 1)
            path.pop()


def unpack_value(packed: bytes) -> Any:
    """The value *packed* stands for, as a receiver decodes it (arrays as lists)."""
    return msgpack.unpackb(packed, raw=False, strict_map_key=False)


def pack_trusted(value: Any) -> bytes:
    """*value* packed without the gate's checks: for what tickwire builds itself from values
    that passed them (a table delta's or snapshot's payload)."""
    return _packer.pack(value)  # type: ignore[no-any-return]
