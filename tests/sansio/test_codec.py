"""§4: every message kind, in msgpack and JSON, and the shape checks on what arrives."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import json_values, msgpack_values, uint
from tickwire.config import Limits
from tickwire.errors import DecodeError, MessageTooBig, RemoteProtocolError
from tickwire.sansio.codec import decode_body, decode_json, encode_body, encode_json, to_fields
from tickwire.sansio.compression import DictionaryInfo
from tickwire.sansio.events import (
    Ack,
    Auth,
    Batch,
    Data,
    DictData,
    DictOffer,
    DictRequest,
    Error,
    Event,
    Gap,
    Hello,
    Ignored,
    Kind,
    Outcome,
    Position,
    Publish,
    Resync,
    Snapshot,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)

LIMITS = Limits()
INFO = DictionaryInfo(2, bytes(range(32)), 16384)

EVERY_KIND: list[Event] = [
    Hello(
        "s-1",
        1_767_225_600_000_000_000,
        20_000,
        1048576,
        4194304,
        65536,
        65536,
        32,
        100,
        3,
        64,
        (INFO,),
    ),
    Hello("s-2", 0, 25_000, 65536, 262144, 1024, 1024, 16, 10),
    Error(7, 404, "no such topic"),
    Error(None, 429, "slow down"),
    Subscribe(1, "quotes.*"),
    Subscribe(2, "trades", Position(9, 41), {"policy": "drop_oldest"}),
    Subscribed(1, 3, "quotes.AAPL", 9, 41, Outcome.NEW),
    Subscribed(2, 4, "world", 9, 0, Outcome.NOT_RECOVERED, {"fields": ["x", "y"]}),
    Unsubscribe(3, "quotes.*"),
    Unsubscribed(3, "quotes.*"),
    Unsubscribed(None, "trades", 403, "permission revoked"),
    Data(3, 42, {"bid": 101.25, "ask": 101.27}),
    Batch(3, 43, ({"bid": 1}, {"bid": 2}, None)),
    Snapshot(4, 100, [[1, "a"], [2, "b"]]),
    Gap(3, 44, 50),
    Resync(4, 3, 43),
    Resync(5, 3),
    Publish(6, "orders", {"side": "B", "qty": 100}, "order-77"),
    Publish(None, "input", b"\x01\x02"),
    Ack(6, 9, 1234),
    Ack(8),
    DictOffer((INFO,)),
    DictOffer(()),
    DictRequest(2),
    DictData(2, b"\x37\xa4\x30\xec" + b"x" * 20),
    Auth(9, "eyJhbGciOiJIUzI1NiJ9.e30.sig"),
]


@pytest.mark.parametrize("event", EVERY_KIND, ids=lambda e: type(e).__name__)
def test_4_every_kind_round_trips_in_msgpack(event: Event) -> None:
    body = encode_body(event)
    assert msgpack.unpackb(body)[0] == to_fields(event)[0]
    assert decode_body(body, LIMITS) == event


@pytest.mark.parametrize("event", EVERY_KIND, ids=lambda e: type(e).__name__)
def test_4_12_every_kind_round_trips_in_json(event: Event) -> None:
    text = encode_json(event)
    assert json.loads(text)[0] == to_fields(event)[0]
    assert decode_json(text, LIMITS) == event


def test_4_6_data_golden_bytes() -> None:
    # [7, 3, 42, {"bid": 1}]
    assert encode_body(Data(3, 42, {"bid": 1})).hex() == "9407032a81a362696401"


def test_4_1_extra_positions_are_ignored() -> None:
    assert decode_body(msgpack.packb([7, 3, 42, "p", "future", 1]), LIMITS) == Data(3, 42, "p")


def test_4_1_extension_kinds_are_ignored() -> None:
    assert decode_body(msgpack.packb([64, "anything"]), LIMITS) == Ignored(64)
    assert decode_body(msgpack.packb([127]), LIMITS) == Ignored(127)


@pytest.mark.parametrize("kind", [0, 18, 63, 128, 1000])
def test_4_1_unknown_kinds_close_with_1002(kind: int) -> None:
    with pytest.raises(RemoteProtocolError, match="unknown message kind") as info:
        decode_body(msgpack.packb([kind, 1, 2, 3]), LIMITS)
    assert info.value.close_code == 1002


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"a": 1}, "non-empty array"),
        ([], "non-empty array"),
        (7, "non-empty array"),
        (["7", 1, 2, 3], "kind must be an integer"),
        ([7, 3, 42], "DATA needs 3 positions, got 2"),
        ([7, -1, 42, None], "DATA position 1: expected an unsigned integer, got int"),
        ([7, True, 42, None], "expected an unsigned integer, got bool"),
        ([7, 3, 4.0, None], "position 2: expected an unsigned integer, got float"),
        ([8, 3, 4, {"a": 1}], "BATCH position 3: expected an array"),
        ([3, 1, b"quotes", None, {}], "SUBSCRIBE position 2: expected a string"),
        ([3, 1, "q", [1], {}], "expected nil or \\[epoch, offset\\]"),
        ([3, 1, "q", None, {1: 2}], "a map with string keys"),
        ([4, 1, 3, "t", 9, 0, 7, None], "unknown outcome 7"),
        ([2, None, 404, None], "ERROR position 3: expected a string"),
        ([12, None, "t", 1, 5], "PUBLISH position 4: expected a string"),
        ([15, 0], "dictionary id must be 1-15"),
        ([15, 16], "dictionary id must be 1-15"),
        ([16, 1, "text"], "expected binary"),
        ([14, [[1, b"short", 10]]], "dictionary entries"),
        ([1, "s", 0, 1, [1, 2], None, []], "6 unsigned integer limits"),
        ([1, "s", 0, 1, [1] * 6, "zstd", []], "nil or \\[level, min_bytes\\]"),
    ],
)
def test_4_shape_errors_close_with_1007(fields: Any, match: str) -> None:
    with pytest.raises(DecodeError, match=match) as info:
        decode_body(msgpack.packb(fields), LIMITS)
    assert info.value.close_code == 1007


@pytest.mark.parametrize(
    "body",
    [
        b"\x94\x07\x03\x2a\xa2\xff\xfe",  # invalid UTF-8 in a string
        b"\x94\x07\x03\x2a\x81\x91\x01\x01",  # an array as a map key
        b"\x94\x07\x03\x2a\x81\x81\x01\x01\x01",  # a map as a map key
    ],
)
def test_4_invalid_strings_and_keys_are_decode_errors(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_body(body, LIMITS)


def test_7_body_size_limit() -> None:
    body = encode_body(Data(1, 1, "x" * 100))
    with pytest.raises(MessageTooBig):
        decode_body(body, Limits(max_message_bytes=50, max_decompressed_bytes=50))


def test_encode_refuses_what_msgpack_cannot_carry() -> None:
    with pytest.raises(TypeError):
        encode_body(Data(1, 1, object()))
    with pytest.raises(ValueError, match="cannot encode"):
        encode_body(Data(1, 1, 2**64))
    assert decode_body(encode_body(Data(1, 1, 5)), LIMITS) == Data(1, 1, 5)  # packer reset


def test_4_12_json_escapes() -> None:
    payload = {1: b"\x00\xff", "k": {"$bin": "not bytes"}, "m": {"$map": 1}}
    text = encode_json(Data(1, 2, payload))
    assert '{"$bin":"AP8="}' in text
    assert decode_json(text, LIMITS) == Data(1, 2, payload)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[7,1,2,NaN]", DecodeError),
        ("[7,1,2,Infinity]", DecodeError),
        ("[7,1,2", DecodeError),
        ('[7,1,2,{"$bin":"@@"}]', DecodeError),
        ('[7,1,2,{"$bin":1}]', DecodeError),
        ('[7,1,2,{"$map":[[[1],2]]}]', DecodeError),
        ('[7,1,2,{"$map":[1]}]', DecodeError),
        ("[" * 100_000 + "]" * 100_000, MessageTooBig),
    ],
)
def test_4_12_bad_json(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_json(text, LIMITS)


def test_4_12_json_deep_nesting_within_container_budget() -> None:
    text = "[7,1,2," + "[" * 5000 + "]" * 5000 + "]"
    with pytest.raises(RemoteProtocolError):
        decode_json(text, Limits(max_containers=10_000))


def test_4_12_json_refuses_nan_when_encoding() -> None:
    with pytest.raises(ValueError, match="JSON"):
        encode_json(Data(1, 1, float("nan")))
    with pytest.raises(ValueError, match="range"):
        encode_json(Data(1, 1, -(2**63) - 1))


@given(st.builds(Data, uint, uint, msgpack_values))
def test_data_round_trips_any_msgpack_value(event: Data) -> None:
    assert decode_body(encode_body(event), LIMITS) == event


@given(st.builds(Data, uint, uint, json_values))
def test_4_12_data_round_trips_any_finite_value_in_json(event: Data) -> None:
    assert decode_json(encode_json(event), LIMITS) == event


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_body(data, LIMITS)


@given(st.lists(msgpack_values, min_size=1, max_size=9))
def test_arbitrary_arrays_raise_only_protocol_errors(values: list[Any]) -> None:
    values[0] = values[0] if type(values[0]) is not int else values[0] % 20
    try:
        event = decode_body(msgpack.packb(values, use_bin_type=True), LIMITS)
    except RemoteProtocolError:
        return
    assert isinstance(event, Event.__args__)


def test_kind_numbers_are_stable() -> None:
    # Changing any of these changes the wire: a new subprotocol (§8).
    assert [k.value for k in Kind] == list(range(1, 18))


@pytest.mark.parametrize(
    "body",
    [
        b"\x94\x07\x01\x01\xd6\xff\x00\x00\x00\x01",  # a timestamp ext
        b"\x94\x07\x01\x01\xc1",
        b"\x94\x07\x01\x01",
        b"\x94\x07\x01\x01\xc0\xc0",
        b"\x94\x07\x01\x01\xdd\xff\xff\xff\xff",  # a lying array header
        b"\x94\x07\x01\x01" + b"\x91" * 1100 + b"\x01",  # past msgpack's own stack
    ],
)
def test_7_2_malformed_bodies_of_every_size_are_decode_errors(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_body(body, LIMITS)
    assert info.value.close_code in {1007, 1009}


def test_7_2_structure_limits_apply_above_256_bytes() -> None:
    limits = Limits(max_depth=8, max_containers=100)
    deep = [7, 1, 1, [[[[[[[["x" * 300]]]]]]]]]
    with pytest.raises(MessageTooBig, match="nesting deeper than 8"):
        decode_body(msgpack.packb(deep), limits)
    many = [7, 1, 1, [[] for _ in range(200)] + ["x" * 100]]
    with pytest.raises(MessageTooBig, match="more than 100 arrays"):
        decode_body(msgpack.packb(many), limits)
    # A small body is bounded by its size alone: at most 256 objects.
    small = [7, 1, 1, [[] for _ in range(200)]]
    assert decode_body(msgpack.packb(small), limits) == Data(1, 1, small[3])


def test_4_4_subscribed_carries_a_note_only_when_there_is_one() -> None:
    from tickwire.sansio.codec import decode_body, encode_body, to_fields
    from tickwire.sansio.events import Outcome, Subscribed

    plain = Subscribed(1, 2, "quotes", 7, 0, Outcome.NEW)
    noted = Subscribed(1, 2, "quote", 7, 0, Outcome.NEW, None, "no topic 'quote' on this server")
    assert len(to_fields(plain)) == 8  # as before: no trailing position
    assert to_fields(noted)[-1] == "no topic 'quote' on this server"
    for event in (plain, noted):
        assert decode_body(encode_body(event), Limits()) == event
