"""§9: table schemas, positional rows, deltas that merge, and the subscriber's view."""

from __future__ import annotations

import contextlib
import math
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import msgpack_values
from tickwire.errors import DecodeError, InvalidValue
from tickwire.sansio.table import (
    MAX_FIELDS,
    Field,
    FieldType,
    Schema,
    Table,
    TableView,
    encode_changes,
    merge_into,
)

QUOTES = Schema(
    "symbol",
    [
        Field.fixed("bid", 2),
        Field.fixed("ask", 2),
        Field.fixed("bid_size", -2),
        Field.fixed("ask_size", -2),
        Field.integer("ts"),
    ],
)
ENTITIES = Schema(
    "id",
    [
        Field.enum("kind", ["player", "npc", "projectile"]),
        Field.fixed("x", 3),
        Field.fixed("y", 3),
        Field.integer("hp"),
        Field.string("name"),
        Field.boolean("alive"),
        Field.float64("speed"),
        Field.any("extra"),
    ],
    key_type=FieldType.INT,
)


def view_of(schema: Schema) -> TableView:
    view = TableView(Schema.from_info(schema.info()))
    view.apply_snapshot(0, [])
    return view


# -- §9.1 fields and schemas ---------------------------------------------------------------


def test_9_1_fixed_point_prices_travel_as_integer_ticks() -> None:
    bid = Field.fixed("bid", 2)
    assert bid.encode(189.12) == 18912
    assert bid.encode(Decimal("189.12")) == 18912
    assert bid.encode(189) == 18900
    assert bid.decode(18912) == Decimal("189.12")
    assert type(bid.decode(18912)) is Decimal
    lots = Field.fixed("size", 0, step=100)
    assert (lots.encode(300), lots.decode(3)) == (3, 300)
    assert type(lots.decode(3)) is int
    assert Field.fixed("size", -2).encode(300) == 3
    assert Field.fixed("n", 0).decode(7) == 7
    tick = Field.fixed("px", 2, step=5)  # a tick of 0.05
    assert (tick.encode(1.05), tick.decode(21), tick.tick) == (21, Decimal("1.05"), Decimal("0.05"))


# What a user of the first release saw (the issue's table), now exact or refused.
@pytest.mark.parametrize(
    ("field", "value", "delivered"),
    [
        (Field.fixed("bid", 5), 1.23456, Decimal("1.23456")),  # FX
        (Field.fixed("bid", 8), 0.00001234, Decimal("0.00001234")),  # crypto
        (Field.fixed("bid", 3), 0.004, Decimal("0.004")),
        (Field.fixed("bid", 3), -0.004, Decimal("-0.004")),
        (Field.fixed("bid_size", 8), 0.5, Decimal("0.5")),
        (Field.fixed("bid_size", 0), 37, 37),
        (Field.fixed("bid_size", 0), 150, 150),
        (Field.fixed("bid_size", 0), 1000050, 1000050),
        (Field.fixed("bid", 2), 12345678901234567, 12345678901234567),
        (Field.fixed("bid", 8), 493275071.9425646, Decimal("493275071.9425646")),
        (Field.fixed("bid", 8), Decimal("493275071.94256467"), Decimal("493275071.94256467")),
        (Field.fixed("bid", 18), Decimal("9.223372036854775807"), Decimal("9.223372036854775807")),
    ],
)
def test_9_1_fixed_values_arrive_exactly(field: Field, value: Any, delivered: Any) -> None:
    wire = field.encode(value)
    out = Field.fixed(field.name, field.decimals).decode(msgpack.unpackb(msgpack.packb(wire)))
    assert out == delivered == value or (out == delivered and Decimal(repr(value)) == out)
    assert type(out) is (int if field.decimals <= 0 else Decimal)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (Field.fixed("bid", 2), 1.23456, "more than 2 decimal places"),
        (Field.fixed("bid", 2), 0.004, "more than 2 decimal places"),
        (Field.fixed("bid", 2), 0.1 + 0.2, "0.30000000000000004 has more than 2"),
        (Field.fixed("bid", 2), Decimal("1.005"), "more than 2 decimal places"),
        (Field.fixed("size", 0), 0.5, "not a whole number"),
        (Field.fixed("size", 0, step=100), 37, "37 is not a multiple of 100"),
        (Field.fixed("size", 0, step=100), 150, "not a multiple of 100"),
        (Field.fixed("size", -2), 1000050, "not a multiple of 100"),
        (Field.fixed("px", 2, step=5), 1.07, "not a multiple of 0.05"),
        (Field.fixed("bid", 18), Decimal("9.3"), "out of range"),
        (Field.fixed("bid", 2), Decimal("NaN"), "not a finite number"),
    ],
)
def test_9_1_values_off_the_grid_are_refused_never_rounded(
    field: Field, value: Any, message: str
) -> None:
    with pytest.raises(InvalidValue, match=message) as caught:
        field.encode(value)
    assert caught.value.where == field.name
    assert (
        "nothing is rounded" in str(caught.value)
        or "range" in str(caught.value)
        or ("finite" in str(caught.value))
    )


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.integers(-18, 18))
def test_9_1_fixed_point_round_trips_every_wire_value(ticks: int, decimals: int) -> None:
    field = Field.fixed("f", decimals)
    value = field.decode(ticks)
    assert field.encode(value) == ticks
    assert value == Decimal(ticks).scaleb(-decimals)  # exactly the decimal, never a float


@given(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=5, min_value=-(10**12), max_value=10**12
    )
)
def test_9_1_any_decimal_with_the_declared_places_is_exact(value: Decimal) -> None:
    field = Field.fixed("px", 5)
    assert field.decode(field.encode(value)) == value


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9))
def test_9_1_a_float_is_taken_only_if_it_is_the_float_of_its_decimal(value: float) -> None:
    field = Field.fixed("px", 4)
    exact = Decimal(repr(value))
    try:
        wire = field.encode(value)
    except InvalidValue:
        assert exact.as_tuple().exponent < -4  # type: ignore[operator]
        return
    assert field.decode(wire) == exact


def test_9_1_quantized_fields_round_by_name() -> None:
    x = Field.quantized("x", 3)
    assert x.encode(512.3456) == 512346  # half to even, as asked for
    assert x.decode(512346) == 512.346
    assert type(x.decode(1)) is float
    with pytest.raises(InvalidValue, match="finite"):
        x.encode(math.inf)


def test_9_1_integers_and_floats_stay_what_they_are() -> None:
    assert Field.integer("n").encode(2**64 - 1) == 2**64 - 1
    with pytest.raises(InvalidValue, match="outside"):
        Field.integer("n").encode(2**64)
    assert Field.float64("f").encode(2**53) == 2.0**53
    with pytest.raises(InvalidValue, match="not exactly a float64"):
        Field.float64("f").encode(2**53 + 1)
    with pytest.raises(InvalidValue, match="cannot be sent"):
        Field.float64("f").encode(math.nan)
    with pytest.raises(InvalidValue, match="surrogate"):
        Field.string("s").encode("\ud800")


def test_9_1_an_open_enum_sends_other_strings_as_themselves() -> None:
    kind = Field.enum("kind", ["player", "npc"], strict=False)
    assert (kind.encode("npc"), kind.encode("vehicle")) == (1, "vehicle")
    received = Schema.from_info(Schema("id", [kind], key_type=FieldType.INT).info()).fields[0]
    assert (received.decode(1), received.decode("vehicle")) == ("npc", "vehicle")
    with pytest.raises(InvalidValue, match="vehicle"):
        Field.enum("kind", ["player", "npc"]).encode("vehicle")


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        (Field.fixed("f", 2), True, TypeError),
        (Field.fixed("f", 2), "1.5", TypeError),
        (Field.fixed("f", 2), math.nan, ValueError),
        (Field.fixed("f", 2), math.inf, ValueError),
        (Field.fixed("f", 2), 1e300, ValueError),
        (Field.integer("f"), 1.0, TypeError),
        (Field.integer("f"), False, TypeError),
        (Field.float64("f"), "x", TypeError),
        (Field.string("f"), 1, TypeError),
        (Field.boolean("f"), 1, TypeError),
        (Field.enum("f", ["a", "b"]), "c", ValueError),
        (Field.any("f"), Decimal(1), TypeError),
        (Field.any("f"), {"a": math.nan}, ValueError),
    ],
)
def test_9_1_a_bad_value_is_refused_by_the_publisher(field: Field, value: Any, error: type) -> None:
    with pytest.raises(error, match="f") as caught:
        field.encode(value)
    assert isinstance(caught.value, InvalidValue)


@pytest.mark.parametrize(
    ("field", "wire"),
    [
        (Field.fixed("f", 2), 1.5),
        (Field.integer("f"), "1"),
        (Field.float64("f"), 1),
        (Field.string("f"), b"x"),
        (Field.boolean("f"), 0),
        (Field.enum("f", ["a"]), 1),
        (Field.enum("f", ["a"]), -1),
    ],
)
def test_9_1_a_bad_wire_value_is_a_decode_error(field: Field, wire: Any) -> None:
    with pytest.raises(DecodeError, match="'f'"):
        field.decode(wire)


def test_9_1_every_type_round_trips_and_none_is_empty() -> None:
    values = {
        "kind": "npc",
        "x": 512.345,
        "y": 0.001,
        "hp": 100,
        "name": "orc",
        "alive": True,
        "speed": 1.5,
        "extra": {"a": [1]},
    }
    encoded = ENTITIES.encode_fields(values)
    assert encoded == {0: 1, 1: 512345, 2: 1, 3: 100, 4: "orc", 5: True, 6: 1.5, 7: {"a": [1]}}
    row = ENTITIES.row(7, [encoded[i] for i in range(8)])
    assert row == {"id": 7, **values, "x": Decimal("512.345"), "y": Decimal("0.001")}
    assert ENTITIES.fields[0].encode(None) is None
    assert ENTITIES.fields[0].decode(None) is None


def test_9_1_the_schema_travels_in_subscribed_info() -> None:
    info = ENTITIES.info()
    assert info[:2] == ["id", FieldType.INT]
    assert info[2][0] == ["kind", 6, ["player", "npc", "projectile"]]
    assert info[2][1] == ["x", 3, 3]
    assert info[2][3] == ["hp", 1]
    assert Schema.from_info(msgpack.unpackb(msgpack.packb(info))) == ENTITIES


@pytest.mark.parametrize(
    "info",
    [
        None,
        [],
        ["k"],
        ["k", 4, "fields"],
        [1, 4, []],
        ["k", 4, [["f"]]],
        ["k", 4, [["f", 99]]],
        ["k", 4, [["f", 3]]],  # FIXED without decimals
        ["k", 4, [["f", 3, "2"]]],
        ["k", 4, [["f", 6, []]]],  # ENUM without choices
        ["k", 4, [["f", 1], ["f", 1]]],
        ["k", 2, []],  # a float key
        ["k", 4, [[1, 1]]],
    ],
)
def test_9_1_a_malformed_schema_is_a_decode_error(info: Any) -> None:
    with pytest.raises(DecodeError, match="invalid table schema"):
        Schema.from_info(info)


@given(msgpack_values)
def test_9_1_any_value_as_a_schema_is_a_schema_or_a_decode_error(info: Any) -> None:
    with contextlib.suppress(DecodeError):
        Schema.from_info(info)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Schema("k", [Field.integer("a"), Field.integer("a")]), "unique"),
        (lambda: Schema("k", [Field.integer("k")]), "unique"),
        (lambda: Schema("", []), "key"),
        (lambda: Schema("k", [], key_type=FieldType.FLOAT), "key type"),
        (lambda: Schema("k", [Field.integer(f"f{i}") for i in range(MAX_FIELDS + 1)]), "63"),
        (lambda: Field.fixed("f", 19), "decimals"),
        (lambda: Field.fixed("f", 2, step=0), "step"),
        (lambda: Field.integer("f").__class__("f", FieldType.INT, step=2), "step"),
        (lambda: Field("f", FieldType.INT, 2), "decimals"),
        (lambda: Field.enum("f", []), "choices"),
        (lambda: Field.enum("f", ["a", "a"]), "duplicate"),
        (lambda: Field("f", FieldType.INT, choices=("a",)), "choices"),
        (lambda: Field(""), "name"),
    ],
)
def test_9_1_a_bad_schema_is_refused(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# -- §9.2 deltas ---------------------------------------------------------------------------


def test_9_2_a_new_row_carries_every_field_and_an_update_only_what_changed() -> None:
    table = Table(QUOTES)
    assert table.upsert("AAPL", {"bid": 189.12, "ask": 189.13, "ts": 1})
    delta = table.take_delta()
    assert delta is not None
    assert delta.payload() == ["AAPL", 0b11111, 18912, 18913, None, None, 1]
    assert table.upsert("AAPL", {"bid": 189.12, "ask": 189.14, "symbol": "AAPL"})
    delta = table.take_delta()
    assert delta is not None
    assert delta.payload() == ["AAPL", 0b00010, 18914]  # bid did not change on the wire
    assert not table.upsert("AAPL", {"bid": Decimal("189.120")})
    assert table.take_delta() is None
    with pytest.raises(InvalidValue, match="more than 2 decimal places"):
        table.upsert("AAPL", {"bid": 189.1200001})  # refused, not rounded to 189.12


def test_9_2_golden_bytes_of_a_delta() -> None:
    table = Table(QUOTES)
    table.upsert("AAPL", {"bid": 189.12, "ask": 189.13, "bid_size": 300, "ask_size": 500})
    table.take_delta()
    table.upsert("AAPL", {"ask": 189.14, "ts": 7})
    table.delete("MSFT")  # no such row: nothing
    delta = table.take_delta()
    assert delta is not None
    # a4 "AAPL", mask 0b10010 = 0x12, 18914 = cd 49 e2, 7
    assert msgpack.packb(delta.payload()).hex(" ") == "94 a4 41 41 50 4c 12 cd 49 e2 07"


def test_9_2_changes_inside_a_window_merge_into_one_delta() -> None:
    table = Table(QUOTES)
    table.upsert("A", {"bid": 1.0})
    table.upsert("B", {"bid": 2.0})
    table.take_delta()
    table.upsert("A", {"bid": 1.01})
    table.upsert("A", {"ask": 1.02})
    table.upsert("A", {"bid": 1.03})
    table.delete("B")
    table.upsert("C", {"ts": 5})
    table.delete("C")
    delta = table.take_delta()
    assert delta is not None
    assert delta.changes == {"A": {0: 103, 1: 102}, "B": None, "C": None}


def test_9_2_a_row_deleted_then_created_again_is_sent_whole() -> None:
    table = Table(QUOTES)
    table.upsert("A", {"bid": 1.0, "ask": 2.0})
    table.take_delta()
    table.delete("A")
    table.upsert("A", {"ts": 9})
    delta = table.take_delta()
    assert delta is not None
    assert delta.payload() == ["A", 0b11111, None, None, None, None, 9]
    view = view_of(QUOTES)
    view.apply_delta(1, ["A", 0b11, 100, 200])
    view.apply_delta(2, delta.payload())
    assert view.rows["A"] == {
        "symbol": "A",
        "bid": None,
        "ask": None,
        "bid_size": None,
        "ask_size": None,
        "ts": 9,
    }


def test_9_2_a_bad_update_changes_nothing() -> None:
    table = Table(QUOTES)
    table.upsert("A", {"bid": 1.0})
    table.take_delta()
    with pytest.raises(KeyError, match="no field 'bdi'"):
        table.upsert("A", {"ask": 3.0, "bdi": 2.0})
    with pytest.raises(TypeError, match="ask"):
        table.upsert("A", {"bid": 2.0, "ask": "3"})
    with pytest.raises(TypeError, match="str key"):
        table.upsert(1, {"bid": 1.0})
    assert table.take_delta() is None
    assert table.get("A") == {
        "symbol": "A",
        "bid": 1.0,
        "ask": None,
        "bid_size": None,
        "ask_size": None,
        "ts": None,
    }


def test_9_3_a_snapshot_holds_every_field_of_every_row() -> None:
    table = Table(QUOTES)
    table.upsert("A", {"bid": 1.0, "bid_size": 200})
    table.upsert("B", {"ask": 2.5})
    table.delete("A")
    table.upsert("C", {"ts": 3})
    assert table.snapshot_payload() == ["B", None, 250, None, None, None, "C"] + [None] * 4 + [3]
    assert (len(table), "B" in table, table.keys()) == (2, True, ["B", "C"])
    assert [r["symbol"] for r in table.rows()] == ["B", "C"]
    view = TableView(QUOTES)
    view.apply_snapshot(4, table.snapshot_payload())
    assert view.rows == {r["symbol"]: r for r in table.rows()}
    assert (view.offset, view.synced) == (4, True)


# -- §9.4 the subscriber's view -----------------------------------------------------------


def test_9_4_deltas_already_in_the_snapshot_are_ignored() -> None:
    view = TableView(QUOTES)
    view.apply_snapshot(10, ["A", 100, 101, 1, 1, 5])
    assert view.apply_delta(9, ["A", 0b1, 99]) == []
    assert view.apply_delta(10, ["A", 0b1, 99]) == []
    (change,) = view.apply_delta(14, ["A", 0b1, 102])  # a conflated jump is fine
    assert change.key == "A"
    assert change.changed == ("bid",)
    assert change.row is not None
    assert change.row["bid"] == Decimal("1.02")
    assert view.offset == 14
    (gone,) = view.apply_delta(15, ["A", 0])
    assert (gone.row, view.rows) == (None, {})


@pytest.mark.parametrize(
    "payload",
    [
        "x",
        ["A"],
        ["A", -1],
        ["A", 1 << 5],
        ["A", 0b11, 100],
        [1, 0b1, 100],
        ["A", "1", 100],
        ["A", 0b1, "x"],
    ],
)
def test_9_4_a_malformed_delta_is_a_decode_error_and_changes_nothing(payload: Any) -> None:
    view = TableView(QUOTES)
    view.apply_snapshot(1, ["A", 100, 101, 1, 1, 5])
    before = {k: dict(v) for k, v in view.rows.items()}
    with pytest.raises(DecodeError):
        view.apply_delta(2, payload)
    assert (view.rows, view.offset) == (before, 1)


@pytest.mark.parametrize("payload", ["x", ["A", 1], [1, 1, 1, 1, 1, 1], ["A", 1, 2, 3, 4, "x"]])
def test_9_4_a_malformed_snapshot_is_a_decode_error(payload: Any) -> None:
    view = TableView(QUOTES)
    with pytest.raises(DecodeError):
        view.apply_snapshot(1, payload)
    assert (view.synced, view.rows) == (False, {})


@given(msgpack_values)
def test_9_4_arbitrary_payloads_give_changes_or_a_decode_error(payload: Any) -> None:
    view = view_of(ENTITIES)
    with contextlib.suppress(DecodeError):
        view.apply_delta(1, payload)
    with contextlib.suppress(DecodeError):
        view.apply_snapshot(1, payload)


# -- merging: what conflation relies on ----------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("upsert"),
            st.sampled_from(["A", "B", "C"]),
            st.dictionaries(st.sampled_from(["bid", "ask", "ts"]), st.integers(0, 3), max_size=3),
        ),
        st.tuples(st.just("delete"), st.sampled_from(["A", "B", "C"]), st.just({})),
        st.tuples(st.just("flush"), st.just(""), st.just({})),
    ),
    max_size=40,
)


@given(ops, st.integers(0, 40))
def test_merged_deltas_give_the_same_state_as_each_one(script: Any, split: int) -> None:
    table = Table(QUOTES)
    one_by_one, conflated = view_of(QUOTES), view_of(QUOTES)
    merged: dict[Any, Any] = {}
    offset = 0
    for step, (op, key, values) in enumerate(script):
        if op == "upsert":
            table.upsert(key, values)
        elif op == "delete":
            table.delete(key)
        if op == "flush" or step == len(script) - 1:
            delta = table.take_delta()
            if delta is None:
                continue
            offset += 1
            one_by_one.apply_delta(offset, delta.payload())
            merge_into(merged, delta.changes)
            if offset >= split:  # a slow subscriber: everything from *split* on, merged
                conflated.apply_delta(offset, encode_changes(merged))
                merged = {}
    expected = {r["symbol"]: r for r in table.rows()}
    assert one_by_one.rows == expected
    if not merged:
        assert conflated.rows == expected
