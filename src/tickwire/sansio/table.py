"""Table topics: keyed rows with a declared schema, sent as snapshot plus deltas (§9).

Imports: attrs, enum, math, tickwire.errors.

Theory of operation. A :class:`Schema` names a key field and up to 63 value fields, each
with a :class:`FieldType`. Rows travel *positionally*, as wire values: fixed-point numbers
as integers (a price of 189.12 with 2 decimals is ``18912``; sizes in round lots of 100 with
-2 decimals are ``1`` to ``50``), enumerations as small indexes, the rest as msgpack values.
Field names cross the wire once, in the schema that SUBSCRIBED carries.

The publisher's :class:`Table` keeps every row as wire values, so that a value that does not
change on the wire (189.120001 after 189.12) is not a change. What changed since the last
:meth:`Table.take_delta` accumulates in one pending :class:`Delta` (key -> changed field
positions, or None for a deletion), so repeated updates to one key inside a batch window
merge into one. A delta is encoded flat, ``[key, mask, values..., key, mask, values...]``:
bit *i* of *mask* says field *i* follows; mask 0 deletes the row. A snapshot is
``[key, v0, ..., vn-1, key, ...]``, every field of every row.

A subscriber's :class:`TableView` rebuilds the rows as plain dicts. Deltas merge associatively
(:func:`merge_into`), which is what lets a slow subscriber's outbox conflate several queued
deltas into one (the CONFLATE policy, :mod:`tickwire.sansio.fanout`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, TypeAlias

import attrs

from tickwire.errors import DecodeError

__all__ = [
    "MAX_FIELDS",
    "Changes",
    "Delta",
    "Field",
    "FieldType",
    "Key",
    "Row",
    "RowChange",
    "Schema",
    "Table",
    "TableView",
    "encode_changes",
    "merge_into",
]

MAX_FIELDS: Final = 63  # §9.2: the mask is a uint below 2^63
MAX_DECIMALS: Final = 15  # a float holds about 15 significant decimal digits
MAX_FIXED: Final = 2**63 - 1
_INFINITIES: Final = (math.inf, -math.inf)

Key: TypeAlias = str | int
Row: TypeAlias = dict[str, Any]
Changes: TypeAlias = dict[Key, dict[int, Any] | None]


def _identity(value: Any) -> Any:
    return value


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _fields(values: Iterable[Field]) -> tuple[Field, ...]:
    return tuple(values)


class FieldType(enum.IntEnum):
    """How a field's value travels (§9.1)."""

    ANY = 0  # any msgpack value, as given
    INT = 1  # an integer
    FLOAT = 2  # a float64
    FIXED = 3  # a decimal number as an integer: round(value * 10**decimals)
    STR = 4  # a string
    BOOL = 5  # true or false
    ENUM = 6  # one of the declared strings, as its index


@attrs.frozen
class Field:
    """One column of a table.

    Attributes:
        name: the key of this field in the rows that applications see.
        type: how its values travel.
        decimals: for FIXED, the digits after the decimal point that the wire keeps (2 for
            cent prices, 3 for millimetres; negative for round lots: -2 counts hundreds).
        choices: for ENUM, the possible values, sent as their index.

    Build fields with the class methods: ``Field.fixed("bid", 2)``, ``Field.enum("side",
    ["B", "S"])``, ``Field.integer("size")``.
    """

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    type: FieldType = attrs.field(default=FieldType.ANY, converter=FieldType)
    decimals: int = attrs.field(default=0, validator=attrs.validators.instance_of(int))
    choices: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    _encode: Callable[[Any], Any] = attrs.field(init=False, eq=False, repr=False)
    _decode: Callable[[Any], Any] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.name:
            raise ValueError("a field needs a name")
        if self.type is FieldType.FIXED and not -MAX_DECIMALS <= self.decimals <= MAX_DECIMALS:
            raise ValueError(f"decimals must be between -{MAX_DECIMALS} and {MAX_DECIMALS}")
        if self.type is not FieldType.FIXED and self.decimals:
            raise ValueError("only FIXED fields have decimals")
        if self.type is FieldType.ENUM:
            if not self.choices or not all(isinstance(c, str) for c in self.choices):
                raise ValueError(f"ENUM field {self.name!r} needs string choices")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError(f"ENUM field {self.name!r} has duplicate choices")
        elif self.choices:
            raise ValueError("only ENUM fields have choices")
        object.__setattr__(self, "_encode", self._make_encoder())
        object.__setattr__(self, "_decode", self._make_decoder())

    @classmethod
    def any(cls, name: str) -> Field:
        """A field whose values travel as given (any msgpack value)."""
        return cls(name, FieldType.ANY)

    @classmethod
    def integer(cls, name: str) -> Field:
        """An integer field."""
        return cls(name, FieldType.INT)

    @classmethod
    def float64(cls, name: str) -> Field:
        """A float field, sent as a float64 (9 bytes; prefer :meth:`fixed`)."""
        return cls(name, FieldType.FLOAT)

    @classmethod
    def fixed(cls, name: str, decimals: int) -> Field:
        """A fixed-point field: prices in ticks (``decimals=2``), positions in millimetres
        (``decimals=3``), sizes in lots (``decimals=-2``)."""
        return cls(name, FieldType.FIXED, decimals)

    @classmethod
    def string(cls, name: str) -> Field:
        """A string field."""
        return cls(name, FieldType.STR)

    @classmethod
    def boolean(cls, name: str) -> Field:
        """A boolean field."""
        return cls(name, FieldType.BOOL)

    @classmethod
    def enum(cls, name: str, choices: Iterable[str]) -> Field:
        """A field taking one of *choices*, sent as its index (one byte for up to 128)."""
        return cls(name, FieldType.ENUM, choices=tuple(choices))

    # -- values -----------------------------------------------------------------------

    def encode(self, value: Any) -> Any:
        """The wire value of *value* (None stays None: the field is empty).

        Raises:
            TypeError: a value of the wrong type. ValueError: out of range, not finite, or
                not one of the choices.
        """
        return self._encode(value)

    def decode(self, wire: Any) -> Any:
        """The value an application sees for wire value *wire*.

        Raises:
            DecodeError: a wire value of the wrong type or out of range (1007).
        """
        return self._decode(wire)

    def _make_encoder(self) -> Callable[[Any], Any]:
        """One function per field, chosen once: tables encode millions of values."""
        name, kind = self.name, self.type

        def wrong(value: Any, want: str) -> TypeError:
            return TypeError(f"{name}: expected {want}, got {type(value).__name__}")

        if kind is FieldType.ANY:
            return _identity
        if kind is FieldType.FIXED:
            decimals = self.decimals
            scale = 10**decimals if decimals >= 0 else 0
            divisor = 10**-decimals if decimals < 0 else 1

            def fixed(value: Any) -> Any:
                t = type(value)
                if t is int:
                    wire = value * scale if scale else round(value / divisor)
                elif t is float:
                    scaled = value * scale if scale else value / divisor
                    if scaled != scaled or scaled in _INFINITIES:
                        raise ValueError(f"{name}: {value!r} is not finite")
                    wire = round(scaled)
                elif value is None:
                    return None
                else:  # bool is not a number here
                    raise wrong(value, "a number")
                if -MAX_FIXED <= wire <= MAX_FIXED:
                    return wire
                raise ValueError(f"{name}: {value!r} is out of range")

            return fixed
        if kind is FieldType.FLOAT:

            def float64(value: Any) -> Any:
                t = type(value)
                if t is float:
                    return value
                if t is int:
                    return float(value)
                if value is None:
                    return None
                raise wrong(value, "a number")

            return float64
        if kind is FieldType.ENUM:
            index = {choice: i for i, choice in enumerate(self.choices)}
            choices = self.choices

            def enum_(value: Any) -> Any:
                if type(value) is str:
                    i = index.get(value)
                    if i is not None:
                        return i
                elif value is None:
                    return None
                raise ValueError(f"{name}: {value!r} is not one of {choices}")

            return enum_
        want = {FieldType.INT: int, FieldType.STR: str, FieldType.BOOL: bool}[kind]
        label = {int: "an int", str: "a str", bool: "a bool"}[want]

        def exact(value: Any) -> Any:
            if type(value) is want or value is None:
                return value
            raise wrong(value, label)

        return exact

    def _make_decoder(self) -> Callable[[Any], Any]:
        name, kind = self.name, self.type

        def bad(what: str) -> DecodeError:
            return DecodeError(f"table field {name!r}: expected {what}")

        if kind is FieldType.ANY:
            return _identity
        if kind is FieldType.FIXED and self.decimals > 0:
            divisor = 10**self.decimals

            def fixed(wire: Any) -> Any:
                if type(wire) is int:
                    # Correctly rounded: 18912 / 100 is exactly the float written 189.12.
                    return wire / divisor
                if wire is None:
                    return None
                raise bad("an integer")

            return fixed
        if kind is FieldType.FIXED and self.decimals < 0:
            factor = 10**-self.decimals

            def lots(wire: Any) -> Any:
                if type(wire) is int:
                    return wire * factor
                if wire is None:
                    return None
                raise bad("an integer")

            return lots
        if kind is FieldType.ENUM:
            choices = self.choices

            def enum_(wire: Any) -> Any:
                if type(wire) is int and 0 <= wire < len(choices):
                    return choices[wire]
                if wire is None:
                    return None
                raise DecodeError(f"table field {name!r}: not a choice index")

            return enum_
        want = {
            FieldType.FIXED: int,
            FieldType.INT: int,
            FieldType.FLOAT: float,
            FieldType.STR: str,
            FieldType.BOOL: bool,
        }[kind]
        label = {int: "an integer", float: "a float", str: "a string", bool: "a boolean"}[want]

        def exact(wire: Any) -> Any:
            if type(wire) is want or wire is None:
                return wire
            raise bad(label)

        return exact

    def info(self) -> list[Any]:
        """This field as the schema in SUBSCRIBED carries it (§9.1)."""
        if self.type is FieldType.FIXED:
            return [self.name, self.type.value, self.decimals]
        if self.type is FieldType.ENUM:
            return [self.name, self.type.value, list(self.choices)]
        return [self.name, self.type.value]


@attrs.frozen
class Schema:
    """A table's columns: the key field and the value fields, in wire order.

    Attributes:
        key: the name of the key field (``"symbol"``, ``"id"``).
        fields: the value fields, at most 63.
        key_type: STR or INT.

    Raises:
        ValueError: duplicate names, the key among the fields, too many fields, a key type
            other than STR or INT.
    """

    key: str
    fields: tuple[Field, ...] = attrs.field(converter=_fields)
    key_type: FieldType = attrs.field(default=FieldType.STR, converter=FieldType)
    _index: dict[str, int] = attrs.field(init=False, eq=False, repr=False)
    _encoders: dict[str, tuple[int, Callable[[Any], Any]]] = attrs.field(
        init=False, eq=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if not isinstance(self.key, str) or not self.key:
            raise ValueError("a schema needs a key field name")
        if len(names) > MAX_FIELDS:
            raise ValueError(f"a table has at most {MAX_FIELDS} fields, got {len(names)}")
        if len(set(names)) != len(names) or self.key in names:
            raise ValueError("field names must be unique and differ from the key")
        if not all(isinstance(f, Field) for f in self.fields):
            raise TypeError("fields must be Field objects")
        if self.key_type not in (FieldType.STR, FieldType.INT):
            raise ValueError("the key type is STR or INT")
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(names)})
        encoders = {f.name: (i, f._encode) for i, f in enumerate(self.fields)}
        object.__setattr__(self, "_encoders", encoders)

    def index(self, name: str) -> int:
        """The position of field *name*.

        Raises:
            KeyError: no such field.
        """
        return self._index[name]

    def check_key(self, key: Any) -> Key:
        """*key*, if it is of the key type.

        Raises:
            TypeError: it is not.
        """
        want = str if self.key_type is FieldType.STR else int
        if type(key) is not want:
            raise TypeError(f"{self.key}: expected a {want.__name__} key, got {type(key).__name__}")
        return key

    def encode_fields(self, values: Mapping[str, Any]) -> dict[int, Any]:
        """Field positions to wire values, for the named fields of *values*.

        Raises:
            KeyError: a name that is not a field. TypeError, ValueError: see :meth:`Field.encode`.
        """
        return dict(self.encode_items(values))

    def encode_items(self, values: Mapping[str, Any]) -> list[tuple[int, Any]]:
        """(position, wire value) for the named fields of *values* (the key is skipped).

        Raises:
            KeyError, TypeError, ValueError: as :meth:`encode_fields`.
        """
        encoders = self._encoders
        out: list[tuple[int, Any]] = []
        for name, value in values.items():
            slot = encoders.get(name)
            if slot is None:
                if name == self.key:
                    continue  # the key may ride along in a row dict
                raise KeyError(f"no field {name!r} in this table")
            out.append((slot[0], slot[1](value)))
        return out

    def row(self, key: Key, wire: list[Any]) -> Row:
        """A whole row as an application sees it: the key, then every field decoded."""
        row: Row = {self.key: key}
        for field, value in zip(self.fields, wire, strict=True):
            row[field.name] = field.decode(value)
        return row

    def info(self) -> list[Any]:
        """The schema as SUBSCRIBED's ``info`` position carries it (§9.1)."""
        return [self.key, self.key_type.value, [f.info() for f in self.fields]]

    @classmethod
    def from_info(cls, info: Any) -> Schema:
        """Read a schema sent by a server (SUBSCRIBED's ``info``).

        Raises:
            DecodeError: not a valid schema (1007).
        """
        try:
            key, key_type, fields = info[0], info[1], info[2]
            if type(key) is not str or type(fields) is not list or type(key_type) is not int:
                raise TypeError
            parsed = []
            for entry in fields:
                if type(entry) is not list or len(entry) < 2:
                    raise TypeError
                name, kind = entry[0], FieldType(entry[1])
                if type(name) is not str:
                    raise TypeError
                if kind is FieldType.FIXED:
                    if type(entry[2]) is not int:
                        raise TypeError
                    parsed.append(Field(name, kind, entry[2]))
                elif kind is FieldType.ENUM:
                    parsed.append(Field(name, kind, choices=tuple(entry[2])))
                else:
                    parsed.append(Field(name, kind))
            return cls(key, parsed, FieldType(key_type))
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise DecodeError(f"invalid table schema: {exc or 'malformed'}") from exc


def merge_into(target: Changes, changes: Mapping[Key, dict[int, Any] | None]) -> None:
    """Apply *changes* (later) on top of *target* (earlier), in place.

    A deletion replaces whatever was pending for its key; a row created after a deletion
    carries every field, so it replaces the deletion; field changes merge, later winning.
    The inner dicts of *changes* are copied, never shared.
    """
    for key, fields in changes.items():
        if fields is None:
            target[key] = None
            continue
        current = target.get(key)
        if current is None:
            target[key] = dict(fields)
        else:
            current.update(fields)


@attrs.define(eq=False)
class Delta:
    """What changed in a table between two offsets: key -> changed field positions (wire
    values), or None for a deleted row. Immutable once published (subscribers share it)."""

    changes: Changes = attrs.field(factory=dict)

    def __len__(self) -> int:
        return len(self.changes)

    def payload(self) -> list[Any]:
        """The flat wire form, ``[key, mask, values..., ...]`` (§9.2)."""
        return encode_changes(self.changes)


def encode_changes(changes: Mapping[Key, dict[int, Any] | None]) -> list[Any]:
    """The flat wire form of *changes* (§9.2)."""
    out: list[Any] = []
    for key, fields in changes.items():
        if fields is None:
            out += (key, 0)
            continue
        mask = 0
        for i in fields:
            mask |= 1 << i
        out.append(key)
        out.append(mask)
        out.extend(fields[i] for i in sorted(fields))
    return out


@attrs.define(eq=False)
class Table:
    """The publisher's side of a table topic: the rows and the changes not yet sent.

    Attributes:
        schema: the table's columns.
    """

    schema: Schema
    _rows: dict[Key, list[Any]] = attrs.field(init=False, factory=dict)
    _pending: Changes = attrs.field(init=False, factory=dict)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def keys(self) -> list[Key]:
        """Every key, oldest row first."""
        return list(self._rows)

    def get(self, key: Key) -> Row | None:
        """Row *key* as subscribers see it (decoded), or None."""
        wire = self._rows.get(key)
        return None if wire is None else self.schema.row(key, wire)

    def rows(self) -> Iterator[Row]:
        """Every row, decoded."""
        for key, wire in self._rows.items():
            yield self.schema.row(key, wire)

    @property
    def pending(self) -> bool:
        """Whether there are changes not yet taken."""
        return bool(self._pending)

    def upsert(self, key: Key, values: Mapping[str, Any]) -> bool:
        """Create row *key* or update the given fields; return whether anything changed.

        A new row carries every field (those not given are None). A field whose wire value
        is unchanged is not a change.

        Raises:
            TypeError, ValueError, KeyError: a bad key, field name or value; nothing changes.
        """
        schema = self.schema
        schema.check_key(key)
        encoded = schema.encode_items(values)  # validates everything before changing
        row = self._rows.get(key)
        if row is None:
            row = [None] * len(schema.fields)
            for i, wire in encoded:
                row[i] = wire
            self._rows[key] = row
            self._pending[key] = dict(enumerate(row))
            return True
        pending = self._pending.get(key)  # a dict or missing: a deleted row is not in _rows
        changed = False
        for i, wire in encoded:
            old = row[i]
            if old != wire or type(old) is not type(wire):
                row[i] = wire
                changed = True
                if pending is None:
                    pending = self._pending[key] = {}
                pending[i] = wire
        return changed

    def delete(self, key: Key) -> bool:
        """Delete row *key*; return whether it existed."""
        if self._rows.pop(key, None) is None:
            return False
        self._pending[key] = None
        return True

    def take_delta(self) -> Delta | None:
        """The changes since the last call, or None when nothing changed."""
        if not self._pending:
            return None
        delta, self._pending = Delta(self._pending), {}
        return delta

    def snapshot_payload(self) -> list[Any]:
        """Every row, flat: ``[key, v0, ..., vn-1, key, ...]`` (§9.3)."""
        out: list[Any] = []
        for key, row in self._rows.items():
            out.append(key)
            out.extend(row)
        return out


@attrs.frozen
class RowChange:
    """One row's change as a subscriber sees it.

    Attributes:
        key: the row's key.
        row: the row after the change (None: it was deleted).
        changed: the names of the fields this change carried (every field for a new row;
            empty for a deletion).
    """

    key: Key
    row: Row | None
    changed: tuple[str, ...]


@attrs.define(eq=False)
class TableView:
    """A subscriber's copy of a table, rebuilt from SNAPSHOT and DATA payloads (§9.4).

    Deltas at or below the offset of the last snapshot applied are ignored (they are
    already in it); a delta's offset may jump (a conflated delta carries every change up to
    its offset).

    Attributes:
        schema: from SUBSCRIBED's ``info``.
        rows: key -> row (plain dicts, the key included).
        offset: the offset of the state held, 0 before the first snapshot.
    """

    schema: Schema
    rows: dict[Key, Row] = attrs.field(init=False, factory=dict)
    offset: int = attrs.field(init=False, default=0)
    synced: bool = attrs.field(init=False, default=False)

    def _key(self, key: Any) -> Key:
        want = str if self.schema.key_type is FieldType.STR else int
        if type(key) is not want:
            raise DecodeError("table row key of the wrong type")
        return key

    def apply_snapshot(self, offset: int, payload: Any) -> None:
        """Replace the rows with a SNAPSHOT's.

        Raises:
            DecodeError: a malformed payload (1007); the view is left unchanged.
        """
        width = len(self.schema.fields) + 1
        if type(payload) is not list or len(payload) % width:
            raise DecodeError(f"a snapshot holds rows of {width} values")
        rows: dict[Key, Row] = {}
        for start in range(0, len(payload), width):
            key = self._key(payload[start])
            rows[key] = self.schema.row(key, payload[start + 1 : start + width])
        self.rows, self.offset, self.synced = rows, offset, True

    def apply_delta(self, offset: int, payload: Any) -> list[RowChange]:
        """Apply a delta; return the row changes (empty when it was already in the state).

        Raises:
            DecodeError: a malformed payload (1007); the view is left unchanged.
        """
        if offset <= self.offset:
            return []
        entries = self.decode_delta(payload)
        out: list[RowChange] = []
        rows, fields, key_name = self.rows, self.schema.fields, self.schema.key
        for key, values in entries:
            if values is None:
                rows.pop(key, None)
                out.append(RowChange(key, None, ()))
                continue
            row = rows.get(key)
            if row is None:
                row = rows[key] = {key_name: key, **{f.name: None for f in fields}}
            row.update(values)
            out.append(RowChange(key, dict(row), tuple(values)))
        self.offset = offset
        return out

    def decode_delta(self, payload: Any) -> list[tuple[Key, Row | None]]:
        """The entries of a delta payload: (key, decoded changed fields or None).

        Raises:
            DecodeError: a malformed payload (1007).
        """
        if type(payload) is not list:
            raise DecodeError("a table delta is an array")
        fields = self.schema.fields
        decoders = [(f.name, f._decode) for f in fields]
        limit = 1 << len(fields)
        out: list[tuple[Key, Row | None]] = []
        i, n = 0, len(payload)
        while i < n:
            if i + 1 >= n:
                raise DecodeError("a table delta entry needs a key and a mask")
            key, mask = self._key(payload[i]), payload[i + 1]
            if type(mask) is not int or not 0 <= mask < limit:
                raise DecodeError("invalid table delta mask")
            i += 2
            if mask == 0:
                out.append((key, None))
                continue
            values: Row = {}
            bit = 0
            while mask:
                if mask & 1:
                    if i >= n:
                        raise DecodeError("a table delta entry is missing values")
                    name, decode = decoders[bit]
                    values[name] = decode(payload[i])
                    i += 1
                mask >>= 1
                bit += 1
            out.append((key, values))
        return out
