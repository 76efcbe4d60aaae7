"""§4.14: the value gate. What it accepts, every receiver decodes exactly; what it refuses it
names, and where."""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickwire.config import Limits
from tickwire.errors import InvalidValue, ValueTooLarge
from tickwire.sansio import codec
from tickwire.sansio.events import Batch, Data
from tickwire.sansio.values import ValueLimits, pack_value, unpack_value

LIMITS = Limits()
PAYLOADS = ValueLimits.for_payloads(LIMITS)


class Side(enum.IntEnum):
    BUY = 1


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "where", "message"),
    [
        (decimal.Decimal("1.5"), "payload", "Decimal is not a msgpack type"),
        ({"at": datetime.datetime(2026, 1, 1)}, "payload['at']", "datetime is not a msgpack type"),
        ({1, 2}, "payload", "set is not a msgpack type"),
        (2**64, "payload", "outside msgpack's range"),
        (-(2**63) - 1, "payload", "outside msgpack's range"),
        ("\ud800", "payload", "lone surrogate"),
        ({"px": math.nan}, "payload['px']", "nan cannot be sent"),
        ([1, {"px": -math.inf}], "payload[1]['px']", "-inf cannot be sent"),
        ({(1, 2): "x"}, "payload[(1, 2)]", "a map key must be"),
        ({"k": [{"a": 1}, {frozenset(): 1}]}, "payload['k'][1][frozenset()]", "a map key"),
        (msgpack.ExtType(1, b"x"), "payload", "ext types"),
        ({"t": msgpack.Timestamp(1, 0)}, "payload['t']", "ext types"),
    ],
)
def test_4_14_what_cannot_arrive_exactly_is_refused_naming_where(
    value: Any, where: str, message: str
) -> None:
    with pytest.raises(InvalidValue, match=message) as caught:
        pack_value(value, PAYLOADS)
    assert caught.value.where == where
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TypeError)


def test_4_14_limits_are_the_receivers_less_what_the_message_wraps_around_the_value() -> None:
    assert (PAYLOADS.max_depth, PAYLOADS.max_bytes) == (30, LIMITS.max_message_bytes // 8)
    pack_value(nested(30), PAYLOADS)
    with pytest.raises(ValueTooLarge, match="deeper than the 30 levels"):
        pack_value(nested(31), PAYLOADS)
    with pytest.raises(ValueTooLarge, match="bytes packed"):
        pack_value("x" * PAYLOADS.max_bytes, PAYLOADS)
    with pytest.raises(ValueTooLarge, match="elements"):
        pack_value([0] * (LIMITS.max_container_items + 1), PAYLOADS)
    with pytest.raises(ValueTooLarge, match="arrays and maps in all"):
        pack_value([[]] * (LIMITS.max_containers - 1), PAYLOADS)


def test_4_14_accepted_values_arrive_as_msgpack_carries_them() -> None:
    value = {
        "i": 2**64 - 1,
        "n": -(2**63),
        "f": 0.1,
        "b": bytearray(b"\x00"),
        "t": (1, 2),
        "e": Side.BUY,
        "o": collections.OrderedDict(a=1),
        3: None,
        b"k": True,
    }
    got = unpack_value(pack_value(value, PAYLOADS))
    assert got == {
        "i": 2**64 - 1,
        "n": -(2**63),
        "f": 0.1,
        "b": b"\x00",
        "t": [1, 2],
        "e": 1,
        "o": {"a": 1},
        3: None,
        b"k": True,
    }


json_safe = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text() | st.integers(-10, 10), children, max_size=5)
    ),
    max_leaves=40,
)


def finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(map(finite, value))
    if isinstance(value, dict):
        return all(map(finite, value.values()))
    return True


@given(json_safe)
def test_4_14_every_accepted_value_decodes_exactly_in_every_variant(value: Any) -> None:
    if not finite(value):
        with pytest.raises(InvalidValue, match="cannot be sent"):
            pack_value(value, PAYLOADS)
        return
    packed = pack_value(value, PAYLOADS)
    want = unpack_value(packed)
    for event in (Data(1, 2, want), Batch(1, 2, [want, want])):
        assert codec.decode_body(codec.encode_body(event), LIMITS) == event
        assert codec.decode_json(codec.encode_json(event), LIMITS) == event
    assert codec.data_body(1, 2, packed) == codec.encode_body(Data(1, 2, want))


@given(st.integers(min_value=0, max_value=40))
def test_4_14_a_value_the_gate_takes_fits_in_a_batch_any_receiver_takes(depth: int) -> None:
    value = nested(depth)
    try:
        packed = pack_value(value, PAYLOADS)
    except ValueTooLarge:
        assert depth > PAYLOADS.max_depth
        return
    body = codec.batch_body(1, 1, [packed, packed])
    assert codec.decode_body(body + b"", LIMITS) == Batch(1, 1, [value, value])
