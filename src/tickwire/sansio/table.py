"""Table topics: keyed rows with a declared schema, sent as snapshot plus deltas (§9).

Imports: attrs, decimal, enum, math, tickwire.errors, tickwire.sansio.values.

Theory of operation. A :class:`Schema` names a key field and up to 63 value fields, each
with a :class:`FieldType`. Rows travel *positionally*, as wire values: fixed-point numbers
as integer counts of their tick (a price of 189.12 with 2 decimals is ``18912``; a size in
lots of 100 declared with ``step=100`` is ``3`` for 300), enumerations as small indexes, the
rest as msgpack values. Field names cross the wire once, in the schema that SUBSCRIBED
carries.

Exactness (§9.1). A FIXED field is exact decimal arithmetic end to end: integers,
``decimal.Decimal`` and floats that are exactly a number of ticks go in, the receiver gets a
``Decimal`` (an ``int`` when the field has no decimals), and anything off the grid (1.234 in a
2-decimal field, 150 in lots of 100, a float that is not the float of a decimal with that
many places) is refused with :class:`~tickwire.errors.InvalidValue`, never rounded. Rounding
is something to ask for by name: a QUANTIZED field (game coordinates, sensor readings)
rounds floats to its grid and gives the receiver the float back. Every other field checks
its value fully (integer range, finite floats, UTF-8, the receivers' limits for ANY), so
that what a table accepts can always be sent.

The publisher's :class:`Table` keeps every row as wire values, so that a value that does not
change on the wire is not a change. What changed since the last :meth:`Table.take_delta`
accumulates in one pending :class:`Delta` (key -> changed field positions, or None for a
deletion), so repeated updates to one key inside a batch window merge into one. A delta is
encoded flat, ``[key, mask, values..., key, mask, values...]``: bit *i* of *mask* says
field *i* follows; mask 0 deletes the row. A snapshot is ``[key, v0, ..., vn-1, key, ...]``,
every field of every row.

A subscriber's :class:`TableView` rebuilds the rows as plain dicts. Deltas merge associatively
(:func:`merge_into`), which is what lets a slow subscriber's outbox conflate several queued
deltas into one (the CONFLATE policy, :mod:`tickwire.sansio.fanout`).
"""

from __future__ import annotations

import decimal
import enum
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Final, TypeAlias

import attrs

from tickwire.config import Limits
from tickwire.errors import DecodeError, InvalidValue, ValueTooLarge
from tickwire.sansio.values import ValueLimits, pack_value

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
    "decode_changes",
    "encode_changes",
    "merge_into",
]

MAX_FIELDS: Final = 63  # §9.2: the mask is a uint below 2^63
MAX_DECIMALS: Final = 18  # §9.1: -18 to 18 (wire values are int64: 9.2 with 18 decimals)
MAX_STEP: Final = 10**9  # §9.1: a tick of up to 10^9 units keeps values within 28 digits
MIN_WIRE: Final = -(2**63)  # §9.1: FIXED and QUANTIZED wire values are int64
MAX_WIRE: Final = 2**63 - 1
MIN_INT: Final = -(2**63)  # §9.1: INT is msgpack's integer range
MAX_INT: Final = 2**64 - 1
_FAST: Final = 2.0**52  # below this, a float times 10^d has one integer within half an ulp
_EXACT: Final = decimal.Context(prec=60, Emin=-(10**6), Emax=10**6, traps=[])
FIELD_LIMITS: Final = ValueLimits.for_fields(Limits())  # the default receivers' limits

Key: TypeAlias = str | int
Row: TypeAlias = dict[str, Any]
Changes: TypeAlias = dict[Key, dict[int, Any] | None]


def _identity(value: Any) -> Any:
    return value


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _fields(values: Iterable[Field]) -> tuple[Field, ...]:
    return tuple(values)


def _is_text(value: str) -> bool:
    """Whether *value* encodes to UTF-8 (no lone surrogate)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class FieldType(enum.IntEnum):
    """How a field's value travels, and what the receiver gets back (§9.1)."""

    ANY = 0  # any msgpack value, as given
    INT = 1  # an integer (msgpack's range)
    FLOAT = 2  # a float64
    FIXED = 3  # an exact decimal as an integer count of ticks: Decimal (or int) back
    STR = 4  # a string
    BOOL = 5  # true or false
    ENUM = 6  # one of the declared strings as its index (or, if open, another string)
    QUANTIZED = 7  # a float rounded to a grid of 10^-decimals, sent as an integer count


def _tick(decimals: int, step: int) -> Decimal:
    return Decimal(step).scaleb(-decimals, _EXACT)


def _decimal_units(value: Decimal, decimals: int) -> int | None:
    """*value* x 10^decimals if that is an integer (exactly), else None."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite: checked by the caller
    coefficient = int("".join(map(str, digits))) if digits else 0
    e = exponent + decimals
    units: int
    if coefficient == 0:
        return 0
    if e >= 0:
        if e > 40:  # far outside int64 whatever the coefficient
            return MAX_WIRE + 1
        units = coefficient * 10**e
    else:
        if -e >= len(digits):
            return None  # more decimal places than the coefficient has digits
        units, rest = divmod(coefficient, 10**-e)
        if rest:
            return None
    return -units if sign else units


@attrs.frozen
class Field:
    """One column of a table.

    Attributes:
        name: the key of this field in the rows that applications see.
        type: how its values travel.
        decimals: for FIXED and QUANTIZED, the digits after the decimal point (2 for cent
            prices, 8 for crypto sizes, 3 for millimetres; negative for a grid of tens,
            hundreds...).
        step: for FIXED, the tick in units of 10^-decimals: ``Field.fixed("px", 2,
            step=5)`` takes multiples of 0.05, ``Field.fixed("size", 0, step=100)`` round
            lots of 100. Values off the grid are refused, never rounded.
        choices: for ENUM, the possible values, sent as their index.
        strict: for ENUM, refuse strings outside *choices*; when False such a string
            travels as itself (a feed that grows a new kind keeps working).

    Build fields with the class methods: ``Field.fixed("bid", 5)``, ``Field.enum("side",
    ["B", "S"])``, ``Field.integer("size")``, ``Field.quantized("x", 3)``.
    """

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    type: FieldType = attrs.field(default=FieldType.ANY, converter=FieldType)
    decimals: int = attrs.field(default=0, validator=attrs.validators.instance_of(int))
    choices: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    step: int = attrs.field(default=1, validator=attrs.validators.instance_of(int))
    strict: bool = attrs.field(default=True, eq=False)
    _encode: Callable[[Any], Any] = attrs.field(init=False, eq=False, repr=False)
    _decode: Callable[[Any], Any] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.name or not _is_text(self.name):
            raise ValueError("a field needs a name (valid UTF-8)")
        scaled = self.type in (FieldType.FIXED, FieldType.QUANTIZED)
        if scaled and not -MAX_DECIMALS <= self.decimals <= MAX_DECIMALS:
            raise ValueError(f"decimals must be between -{MAX_DECIMALS} and {MAX_DECIMALS}")
        if not scaled and self.decimals:
            raise ValueError("only FIXED and QUANTIZED fields have decimals")
        if type(self.step) is not int or not 1 <= self.step <= MAX_STEP:
            raise ValueError(f"step must be an integer from 1 to {MAX_STEP}")
        if self.step != 1 and self.type is not FieldType.FIXED:
            raise ValueError("only FIXED fields have a step")
        if self.type is FieldType.ENUM:
            if not self.choices or not all(
                isinstance(c, str) and _is_text(c) for c in self.choices
            ):
                raise ValueError(f"ENUM field {self.name!r} needs string choices")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError(f"ENUM field {self.name!r} has duplicate choices")
        elif self.choices:
            raise ValueError("only ENUM fields have choices")
        object.__setattr__(self, "_encode", self._make_encoder())
        object.__setattr__(self, "_decode", self._make_decoder())

    @classmethod
    def any(cls, name: str) -> Field:
        """A field whose values travel as given (any value a stream payload may be)."""
        return cls(name, FieldType.ANY)

    @classmethod
    def integer(cls, name: str) -> Field:
        """An integer field (-2^63 to 2^64-1); the receiver gets the same int."""
        return cls(name, FieldType.INT)

    @classmethod
    def float64(cls, name: str) -> Field:
        """A float field, sent as a float64 (9 bytes; prefer :meth:`fixed` or
        :meth:`quantized`). Integers are taken when a float holds them exactly."""
        return cls(name, FieldType.FLOAT)

    @classmethod
    def fixed(cls, name: str, decimals: int, *, step: int = 1) -> Field:
        """An exact decimal field: prices (``decimals=5`` for FX, 8 for crypto), sizes
        (``decimals=0`` for shares, 8 for fractional coins). The receiver gets a
        ``Decimal``, or an ``int`` when *decimals* is 0 or less.

        *step* makes the grid coarser, as an exchange's tick or lot size does (refusing
        values off it): ``Field.fixed("bid_size", 0, step=100)`` sends 300 as 3.
        """
        return cls(name, FieldType.FIXED, decimals, step=step)

    @classmethod
    def quantized(cls, name: str, decimals: int) -> Field:
        """A float rounded (half to even) to *decimals* places on the way out, for
        measurements where that is what you want: positions in millimetres
        (``decimals=3``), headings in tenths of a degree. The receiver gets a float."""
        return cls(name, FieldType.QUANTIZED, decimals)

    @classmethod
    def string(cls, name: str) -> Field:
        """A string field."""
        return cls(name, FieldType.STR)

    @classmethod
    def boolean(cls, name: str) -> Field:
        """A boolean field."""
        return cls(name, FieldType.BOOL)

    @classmethod
    def enum(cls, name: str, choices: Iterable[str], *, strict: bool = True) -> Field:
        """A field taking one of *choices*, sent as its index (one byte for up to 128).
        With ``strict=False`` another string is sent as itself instead of refused."""
        return cls(name, FieldType.ENUM, choices=tuple(choices), strict=strict)

    # -- values -----------------------------------------------------------------------

    @property
    def tick(self) -> Decimal:
        """For FIXED and QUANTIZED, the smallest step a value can take (``Decimal('0.01')``)."""
        return _tick(self.decimals, self.step)

    def encode(self, value: Any) -> Any:
        """The wire value of *value* (None stays None: the field is empty).

        Raises:
            InvalidValue: a value of the wrong type, out of range, not finite, off the
                field's grid, or not one of the choices; it says which field and value.
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

        def wrong(value: Any, want: str) -> InvalidValue:
            return InvalidValue(f"expected {want}, got {type(value).__name__}", where=name)

        if kind is FieldType.ANY:

            def any_(value: Any) -> Any:
                pack_value(value, FIELD_LIMITS, where=name)
                return value

            return any_
        if kind is FieldType.FIXED:
            return self._fixed_encoder(wrong)
        if kind is FieldType.QUANTIZED:
            return self._quantized_encoder(wrong)
        if kind is FieldType.FLOAT:

            def float64(value: Any) -> Any:
                t = type(value)
                if t is float:
                    if value - value == 0.0:  # finite: inf - inf and nan - nan are nan
                        return value
                    raise InvalidValue(
                        f"{value!r} cannot be sent (JSON receivers cannot carry it)", where=name
                    )
                if value is None:
                    return None
                if (t is int or isinstance(value, int | Decimal)) and t is not bool:
                    try:
                        as_float = (
                            float(value)
                            if not isinstance(value, Decimal) or (value.is_finite())
                            else math.nan
                        )
                    except OverflowError:
                        as_float = math.nan
                    if math.isfinite(as_float) and as_float == value:  # an exact comparison
                        return as_float
                    raise InvalidValue(
                        f"{value!r} is not exactly a float64; use Field.integer or Field.fixed",
                        where=name,
                    )
                raise wrong(value, "a float")

            return float64
        if kind is FieldType.INT:

            def integer(value: Any) -> Any:
                if type(value) is int:
                    if MIN_INT <= value <= MAX_INT:
                        return value
                    raise InvalidValue(f"{value} is outside -2**63 to 2**64-1", where=name)
                if value is None:
                    return None
                if isinstance(value, int) and not isinstance(value, bool):
                    return integer(int(value))  # an IntEnum, say
                raise wrong(value, "an int")

            return integer
        if kind is FieldType.ENUM:
            index = {choice: i for i, choice in enumerate(self.choices)}
            choices, strict = self.choices, self.strict

            def enum_(value: Any) -> Any:
                if type(value) is str:
                    i = index.get(value)
                    if i is not None:
                        return i
                    if not strict and _is_text(value):
                        return value
                elif value is None:
                    return None
                raise InvalidValue(f"{value!r} is not one of {choices}", where=name)

            return enum_
        if kind is FieldType.STR:

            def string(value: Any) -> Any:
                if type(value) is str:
                    if _is_text(value):
                        return value
                    raise InvalidValue("a lone surrogate is not valid UTF-8", where=name)
                if value is None:
                    return None
                raise wrong(value, "a str")

            return string

        def boolean(value: Any) -> Any:
            if type(value) is bool or value is None:
                return value
            raise wrong(value, "a bool")

        return boolean

    def _fixed_encoder(self, wrong: Callable[[Any, str], InvalidValue]) -> Callable[[Any], Any]:
        name, decimals, step = self.name, self.decimals, self.step
        scale = 10**decimals if decimals >= 0 else 0
        divisor = 10**-decimals if decimals < 0 else 1
        tick = self.tick

        def off_grid(value: Any) -> InvalidValue:
            if step == 1 and decimals > 0:
                why = f"has more than {decimals} decimal places"
            elif step == 1 and decimals == 0:
                why = "is not a whole number"
            else:
                why = f"is not a multiple of {tick:f}"
            return InvalidValue(
                f"{value!r} {why}; round it yourself (nothing is rounded for you), "
                "or declare the field with a finer grid",
                where=name,
            )

        def fixed(value: Any) -> Any:
            t = type(value)
            if t is int:
                if scale:
                    units = value * scale
                else:
                    units, rest = divmod(value, divisor)
                    if rest:
                        raise off_grid(value)
            elif t is float:
                if value - value != 0.0:
                    raise InvalidValue(f"{value!r} is not a finite number", where=name)
                scaled = value * scale if scale else value / divisor
                if -_FAST < scaled < _FAST:
                    units = round(scaled)
                    if (units / scale if scale else units * divisor) != value:
                        raise off_grid(value)
                else:  # the decimal the float was written as: its shortest repr
                    exact = _decimal_units(Decimal(repr(value)), decimals)
                    if exact is None:
                        raise off_grid(value)
                    units = exact
            elif value is None:
                return None
            elif t is Decimal or isinstance(value, Decimal):
                if not value.is_finite():
                    raise InvalidValue(f"{value!r} is not a finite number", where=name)
                exact = _decimal_units(value, decimals)
                if exact is None:
                    raise off_grid(value)
                units = exact
            elif isinstance(value, int) and not isinstance(value, bool):
                return fixed(int(value))
            else:  # bool is not a number here
                raise wrong(value, "an int, a Decimal or a float")
            if step != 1:
                units, rest = divmod(units, step)
                if rest:
                    raise off_grid(value)
            if MIN_WIRE <= units <= MAX_WIRE:
                return units
            raise InvalidValue(
                f"{value!r} is out of range for {decimals} decimals "
                f"(at most {Decimal(MAX_WIRE * step).scaleb(-decimals, _EXACT):f})",
                where=name,
            )

        return fixed

    def _quantized_encoder(self, wrong: Callable[[Any, str], InvalidValue]) -> Callable[[Any], Any]:
        name, decimals = self.name, self.decimals
        scale = 10**decimals if decimals >= 0 else 0
        divisor = 10**-decimals if decimals < 0 else 1

        def quantized(value: Any) -> Any:
            t = type(value)
            if t is float or t is int:
                scaled = value * scale if scale else value / divisor
                if t is float and value - value != 0.0:
                    raise InvalidValue(f"{value!r} is not a finite number", where=name)
                units = round(scaled)
            elif value is None:
                return None
            elif isinstance(value, Decimal) and value.is_finite():
                units = round(value.scaleb(decimals, _EXACT))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                return quantized(float(value) if isinstance(value, float) else int(value))
            else:
                raise wrong(value, "a number")
            if MIN_WIRE <= units <= MAX_WIRE:
                return units
            raise InvalidValue(f"{value!r} is out of range for {decimals} decimals", where=name)

        return quantized

    def _make_decoder(self) -> Callable[[Any], Any]:
        name, kind = self.name, self.type

        def bad(what: str) -> DecodeError:
            return DecodeError(f"table field {name!r}: expected {what}")

        if kind is FieldType.ANY:
            return _identity
        if kind in (FieldType.FIXED, FieldType.QUANTIZED):
            decimals, step = self.decimals, self.step
            as_float = kind is FieldType.QUANTIZED

            def scaled(wire: Any) -> Any:
                if type(wire) is int and MIN_WIRE <= wire <= MAX_WIRE:
                    units = wire * step
                    if decimals <= 0:
                        value = units * 10**-decimals
                        return float(value) if as_float else value
                    if as_float:
                        # Correctly rounded: 18912 / 100 is exactly the float written 189.12.
                        return units / 10**decimals
                    return Decimal(units).scaleb(-decimals, _EXACT)
                if wire is None:
                    return None
                raise bad("an int64")

            return scaled
        if kind is FieldType.ENUM:
            choices = self.choices

            def enum_(wire: Any) -> Any:
                if type(wire) is int and 0 <= wire < len(choices):
                    return choices[wire]
                if wire is None or type(wire) is str:  # an open enum's other value
                    return wire
                raise DecodeError(f"table field {name!r}: not a choice index")

            return enum_
        want = {
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
            if self.step != 1:
                return [self.name, self.type.value, self.decimals, self.step]
            return [self.name, self.type.value, self.decimals]
        if self.type is FieldType.QUANTIZED:
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

    A row offered with a name that is not a field is refused (:class:`KeyError` naming
    it and the fields there are): declare every field a feed carries.

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
            InvalidValue: it is not, or it cannot be sent (a lone surrogate, an integer
                outside msgpack's range).
        """
        if self.key_type is FieldType.STR:
            if type(key) is str and _is_text(key):
                return key
        elif type(key) is int and MIN_INT <= key <= MAX_INT:
            return key
        want = "str" if self.key_type is FieldType.STR else "int"
        raise InvalidValue(
            f"expected a {want} key that can be sent, got {key!r} ({type(key).__name__})",
            where=self.key,
        )

    def encode_fields(self, values: Mapping[str, Any]) -> dict[int, Any]:
        """Field positions to wire values, for the named fields of *values*.

        Raises:
            KeyError: a name that is not a field. InvalidValue: see :meth:`Field.encode`.
        """
        return dict(self.encode_items(values))

    def encode_items(self, values: Mapping[str, Any]) -> list[tuple[int, Any]]:
        """(position, wire value) for the named fields of *values* (the key is skipped).

        Raises:
            KeyError, InvalidValue: as :meth:`encode_fields`.
        """
        encoders = self._encoders
        out: list[tuple[int, Any]] = []
        for name, value in values.items():
            slot = encoders.get(name)
            if slot is None:
                if name == self.key:
                    continue  # the key may ride along in a row dict
                fields = ", ".join(f.name for f in self.fields)
                raise KeyError(
                    f"no field {name!r} in this table's schema (fields: {fields}); declare "
                    "it, or leave it out"
                )
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
                if kind in (FieldType.FIXED, FieldType.QUANTIZED):
                    step = entry[3] if kind is FieldType.FIXED and len(entry) > 3 else 1
                    if type(entry[2]) is not int or type(step) is not int:
                        raise TypeError
                    parsed.append(Field(name, kind, entry[2], step=step))
                elif kind is FieldType.ENUM:
                    parsed.append(Field(name, kind, choices=tuple(entry[2]), strict=False))
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


def decode_changes(payload: Any, width: int) -> Changes:
    """The change set of a delta's flat wire form (:func:`encode_changes`'s inverse) for a
    table of *width* fields: the values stay wire values (a mirror of the table applies
    them as they are).

    Raises:
        DecodeError: a malformed payload.
    """
    if type(payload) is not list:
        raise DecodeError("a table delta is an array")
    limit = 1 << width
    out: Changes = {}
    i, n = 0, len(payload)
    while i < n:
        if i + 1 >= n:
            raise DecodeError("a table delta entry needs a key and a mask")
        key, mask = payload[i], payload[i + 1]
        if type(key) not in (str, int) or type(mask) is not int or not 0 <= mask < limit:
            raise DecodeError("invalid table delta entry")
        i += 2
        if mask == 0:
            out[key] = None
            continue
        fields: dict[int, Any] = {}
        bit = 0
        while mask:
            if mask & 1:
                if i >= n:
                    raise DecodeError("a table delta entry is missing values")
                fields[bit] = payload[i]
                i += 1
            mask >>= 1
            bit += 1
        out[key] = fields
    return out


def wire_size(value: Any) -> int:
    """An upper bound of the packed size of one wire value (a table's, §9)."""
    t = type(value)
    if t is int or t is float:
        return 9
    if value is None or t is bool:
        return 1
    if t is str:
        return 5 + 4 * len(value)
    if t is bytes:
        return 5 + len(value)
    return len(pack_value(value, FIELD_LIMITS))


MESSAGE_BUDGET: Final = 64 * 1024 - 64  # see :func:`message_budget`


def message_budget(limits: Limits) -> int:
    """How many packed bytes of rows or deltas one message may carry for receivers within
    *limits* (§9.6): an eighth of a message (JSON's worst case), and no more than the
    containers and items a message may hold, as each takes at least a byte."""
    return max(
        256,
        min(
            limits.max_message_bytes // 8,
            limits.max_decompressed_bytes // 8,
            limits.max_containers - 64,
            limits.max_container_items - 64,
        ),
    )


@attrs.define(eq=False)
class Table:
    """The publisher's side of a table topic: the rows and the changes not yet sent.

    Attributes:
        schema: the table's columns.
        budget: what one message may carry (:func:`message_budget`); a row that would
            not fit in one is refused, a delta or a snapshot that would not is split.
    """

    schema: Schema
    budget: int = MESSAGE_BUDGET
    _rows: dict[Key, list[Any]] = attrs.field(init=False, factory=dict)
    _pending: Changes = attrs.field(init=False, factory=dict)
    _variable: bool = attrs.field(init=False, default=False)  # fields of varying size
    _fixed: int = attrs.field(init=False, default=0)  # a row's size but its key, if fixed
    _max_key: int = attrs.field(init=False, default=9)  # the largest key's size yet

    def __attrs_post_init__(self) -> None:
        sized = (FieldType.INT, FieldType.FLOAT, FieldType.FIXED, FieldType.QUANTIZED)
        self._variable = any(
            f.type not in (*sized, FieldType.BOOL) and not (f.type is FieldType.ENUM and f.strict)
            for f in self.schema.fields
        )
        self._fixed = 18 + 9 * len(self.schema.fields)  # mask, array header, values
        if self._fixed + 64 > self.budget:
            raise ValueError("the message budget is too small for one row of this schema")

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
            KeyError, InvalidValue: a bad key, field name or value; nothing changes.
            ValueTooLarge: the row would not fit in one message; nothing changes.
        """
        return self.apply({key: values})

    def apply(self, upserts: Mapping[Any, Mapping[str, Any]], deletes: Iterable[Any] = ()) -> bool:
        """Apply *upserts* (key -> fields), then *deletes*, all or nothing: every key and
        value is checked before anything changes. Return whether anything changed.

        Raises:
            KeyError, InvalidValue, ValueTooLarge: as :meth:`upsert`; nothing changes.
        """
        schema = self.schema
        checked = [
            (schema.check_key(key), schema.encode_items(values)) for key, values in upserts.items()
        ]
        removed = [schema.check_key(key) for key in deletes]
        for key, encoded in checked:
            if self._variable:
                self._check_size(key, encoded)
            elif key not in self._rows and type(key) is str:
                size = wire_size(key)
                if size + self._fixed > self.budget:
                    raise ValueTooLarge(
                        f"a key of {len(key)} characters does not fit in one message",
                        where=self.schema.key,
                    )
        changed = False
        for key, encoded in checked:
            if key not in self._rows and type(key) is str:
                self._max_key = max(self._max_key, wire_size(key))
            changed = self._upsert(key, encoded) or changed
        for key in removed:
            changed = self.delete(key) or changed
        return changed

    def _check_size(self, key: Key, encoded: list[tuple[int, Any]]) -> None:
        row = self._rows.get(key)
        wire = list(row) if row is not None else [None] * len(self.schema.fields)
        for i, value in encoded:
            wire[i] = value
        size = 18 + wire_size(key) + sum(map(wire_size, wire))
        if size > self.budget:
            raise ValueTooLarge(
                f"row {key!r} would take about {size} bytes, more than the {self.budget} "
                "one message carries",
                where=self.schema.key,
            )

    def _upsert(self, key: Key, encoded: list[tuple[int, Any]]) -> bool:
        row = self._rows.get(key)
        if row is None:
            row = [None] * len(self.schema.fields)
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

    def apply_changes(self, changes: Mapping[Key, dict[int, Any] | None]) -> None:
        """Apply a delta that another process made (wire values, checked where it was
        made): a mirror of the table follows its writers so. Nothing becomes pending."""
        width = len(self.schema.fields)
        rows = self._rows
        for key, fields in changes.items():
            if fields is None:
                rows.pop(key, None)
                continue
            row = rows.get(key)
            if row is None:
                row = rows[key] = [None] * width
                if type(key) is str:
                    self._max_key = max(self._max_key, wire_size(key))
            for i, wire in fields.items():
                row[i] = wire

    def load(self, rows: Iterable[tuple[Key, list[Any]]]) -> None:
        """Replace every row with *rows* (key, wire values), oldest first: a mirror's
        start from a snapshot. Nothing becomes pending."""
        width = len(self.schema.fields)
        self._rows = {}
        self._pending = {}
        for key, wire in rows:
            row = (list(wire) + [None] * width)[:width]
            self._rows[key] = row
            if type(key) is str:
                self._max_key = max(self._max_key, wire_size(key))

    def resend_all(self) -> None:
        """Make every row pending with every field, as if each were new (a writer that
        publishes its whole table again)."""
        self._pending = {key: dict(enumerate(row)) for key, row in self._rows.items()}

    def delete(self, key: Key) -> bool:
        """Delete row *key*; return whether it existed."""
        if self._rows.pop(key, None) is None:
            return False
        self._pending[key] = None
        return True

    def take_delta(self) -> Delta | None:
        """The changes since the last call, or None when nothing changed (one delta,
        whatever its size: see :meth:`take_deltas`)."""
        if not self._pending:
            return None
        delta, self._pending = Delta(self._pending), {}
        return delta

    def take_deltas(self) -> list[Delta]:
        """The changes since the last call, as deltas that each fit in one message
        (usually one; more when a window changed more rows than a message carries)."""
        delta = self.take_delta()
        if delta is None:
            return []
        if not self._variable and len(delta.changes) * (self._fixed + self._max_key) <= self.budget:
            return [delta]
        out: list[Delta] = []
        part: Changes = {}
        size = 0
        for key, fields in delta.changes.items():
            if fields is None:
                entry = 18 + wire_size(key)
            elif self._variable:
                entry = 18 + wire_size(key) + sum(map(wire_size, fields.values()))
            else:
                entry = self._fixed + wire_size(key)
            if part and size + entry > self.budget:
                out.append(Delta(part))
                part, size = {}, 0
            part[key] = fields
            size += entry
        out.append(Delta(part))
        return out

    def snapshot_payload(self) -> list[Any]:
        """Every row, flat: ``[key, v0, ..., vn-1, key, ...]`` (§9.3), in one list."""
        out: list[Any] = []
        for key, row in self._rows.items():
            out.append(key)
            out.extend(row)
        return out

    def snapshot_parts(self) -> list[list[Any]]:
        """Every row, flat as in :meth:`snapshot_payload`, in parts that each fit in one
        message (one part, empty, for an empty table; §9.3)."""
        fixed = self._fixed
        if not self._variable and len(self._rows) * (fixed + self._max_key) <= self.budget:
            return [self.snapshot_payload()]
        parts: list[list[Any]] = []
        part: list[Any] = []
        size = 0
        for key, row in self._rows.items():
            if self._variable:
                entry = 18 + wire_size(key) + sum(map(wire_size, row))
            else:
                entry = fixed + wire_size(key)
            if part and size + entry > self.budget:
                parts.append(part)
                part, size = [], 0
            part.append(key)
            part.extend(row)
            size += entry
        parts.append(part)
        return parts


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
    _staged: tuple[int, dict[Key, Row]] | None = attrs.field(init=False, default=None)

    def _key(self, key: Any) -> Key:
        want = str if self.schema.key_type is FieldType.STR else int
        if type(key) is not want:
            raise DecodeError("table row key of the wrong type")
        return key

    def apply_snapshot(self, offset: int, payload: Any, *, more: bool = False) -> bool:
        """Replace the rows with a SNAPSHOT's; return whether the snapshot is complete.

        A snapshot in several parts (every part but the last sent with *more*) is
        gathered and applied whole when its last part arrives (§9.3).

        Raises:
            DecodeError: a malformed payload, or parts of different offsets (1007); the
                view is left unchanged.
        """
        width = len(self.schema.fields) + 1
        if type(payload) is not list or len(payload) % width:
            raise DecodeError(f"a snapshot holds rows of {width} values")
        staged = self._staged
        if staged is not None and staged[0] != offset:
            raise DecodeError("a snapshot part of another offset before the last part")
        rows: dict[Key, Row] = {} if staged is None else staged[1]
        for start in range(0, len(payload), width):
            key = self._key(payload[start])
            rows[key] = self.schema.row(key, payload[start + 1 : start + width])
        if more:
            self._staged = (offset, rows)
            return False
        self._staged = None
        self.rows, self.offset, self.synced = rows, offset, True
        return True

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
