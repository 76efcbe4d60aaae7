"""§3-§6 together: a client and a server Session, and the close code for each bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import msgpack_values
from tickwire.config import Limits
from tickwire.errors import LocalProtocolError, RemoteProtocolError
from tickwire.sansio import envelope
from tickwire.sansio.codec import encode_body
from tickwire.sansio.compression import CompressionConfig, Dictionary
from tickwire.sansio.events import Data, DictData, DictOffer, Hello, Publish, Subscribe
from tickwire.sansio.negotiation import JSON, MSGPACK, MSGPACK_ZSTD, Negotiated
from tickwire.sansio.session import Role, Session, decode_message, encode_message
from tickwire.sim import MarketFeed


def pair(subprotocol: str, **server: object) -> tuple[Session, Session]:
    negotiated = Negotiated.of(subprotocol)
    return Session(Role.CLIENT, negotiated), Session(Role.SERVER, negotiated, **server)  # type: ignore[arg-type]


@pytest.mark.parametrize("subprotocol", [MSGPACK_ZSTD, MSGPACK, JSON])
def test_publish_and_data_round_trip(subprotocol: str) -> None:
    client, server = pair(subprotocol)
    big = {"text": "tick " * 1000}
    server.receive_message(client.send(Publish(1, "chat", big)))
    assert server.events_received() == [Publish(1, "chat", big)]
    message = server.send(Data(2, 1, big))
    if subprotocol == MSGPACK_ZSTD:
        assert isinstance(message, bytes)
        assert message[0] == envelope.COMPRESSED
        assert len(message) < 100
    elif subprotocol == MSGPACK:
        assert isinstance(message, bytes)
        assert message[0] == 0
    else:
        assert isinstance(message, str)
    client.receive_message(message)
    assert client.events_received() == [Data(2, 1, big)]
    assert client.events_received() == []


def test_4_1_a_kind_from_the_wrong_side_is_1002() -> None:
    client, server = pair(MSGPACK)
    with pytest.raises(LocalProtocolError):
        client.send(Data(1, 1, None))
    with pytest.raises(LocalProtocolError):
        server.send(Subscribe(1, "t"))
    with pytest.raises(RemoteProtocolError, match="a client may not send DATA") as info:
        server.receive_message(encode_message(Data(1, 1, None)))
    assert info.value.close_code == 1002
    with pytest.raises(RemoteProtocolError, match="a server may not send SUBSCRIBE"):
        client.receive_message(encode_message(Subscribe(1, "t")))


def test_4_1_extension_kinds_produce_no_event() -> None:
    _client, server = pair(MSGPACK)
    server.receive_message(b"\x00\x92\x40\xa1x")
    assert server.events_received() == []


@pytest.mark.parametrize(
    ("subprotocol", "message", "code"),
    [
        (MSGPACK, '[12,null,"t",1,null]', 1003),  # text on a binary subprotocol
        (JSON, b"\x00\x91\x0c", 1003),  # binary on the JSON subprotocol
        (MSGPACK, b"\x01" + b"x" * 10, 1002),  # compressed where not negotiated
        (MSGPACK_ZSTD, b"\x03" + b"x" * 10, 4002),  # dictionary 1 never offered
        (MSGPACK_ZSTD, b"\x41\x90", 1002),  # a reserved bit
        (MSGPACK_ZSTD, b"\x01\x20\x05", 1007),  # a broken zstd frame
        (MSGPACK_ZSTD, b"\x00\xc1", 1007),  # not msgpack
        (MSGPACK_ZSTD, b"", 1007),
        (MSGPACK_ZSTD, b"\x00" + b"\x90" * 2000, 1009),  # over max_message_bytes
    ],
)
def test_6_each_bad_input_has_its_close_code(
    subprotocol: str, message: bytes | str, code: int
) -> None:
    server = Session(Role.SERVER, Negotiated.of(subprotocol), limits=Limits.for_message_bytes(1000))
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_message(message)
    assert info.value.close_code == code


def test_5_2_decompressed_size_limit_is_1009() -> None:
    limits = Limits(max_message_bytes=1000, max_decompressed_bytes=1000)
    client, server = pair(MSGPACK_ZSTD, limits=limits)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_message(client.send(Publish(None, "t", "x" * 5000)))
    assert info.value.close_code == 1009


def test_5_3_dictionary_use_between_sessions() -> None:
    quotes = MarketFeed(seed=3).take(1200)
    samples = [encode_body(Data(1, i, q)) for i, q in enumerate(quotes[:1000])]
    negotiated = Negotiated.of(MSGPACK_ZSTD)
    server = Session(Role.SERVER, negotiated)
    d = server.dictionaries.rotate(Dictionary.train(samples, dict_id=1, size=8192))
    server = Session(
        Role.SERVER,
        negotiated,
        compression=CompressionConfig(min_bytes=0, dictionary=d),
        dictionaries=server.dictionaries,
    )
    hello = Hello("s", 0, 20000, 1, 4, 1, 1, 2, 1, 3, 0, server.dictionaries.offer())
    client = Session(Role.CLIENT, negotiated)
    client.receive_message(server.send(hello))
    (received,) = client.events_received()
    assert isinstance(received, Hello)
    message = server.send(Data(1, 1001, quotes[1001]))
    assert isinstance(message, bytes)
    assert (message[0] & envelope.DICT_ID_MASK) >> 1 == d.dict_id
    assert client.dictionaries_to_fetch() == [d.dict_id]  # fetch it now, from HELLO
    assert client.dictionaries_to_fetch() == []  # asked once
    # Offered but not fetched yet: held, with everything after it, until DICT_DATA.
    client.receive_message(message)
    client.receive_message(server.send(Data(1, 1002, quotes[1002])))
    assert client.events_received() == []
    client.receive_message(server.send(DictData(d.dict_id, d.data)))
    assert client.events_received() == [
        DictData(d.dict_id, d.data),
        Data(1, 1001, quotes[1001]),
        Data(1, 1002, quotes[1002]),
    ]
    client.receive_message(message)  # loaded now: decoded at once
    assert client.events_received() == [Data(1, 1001, quotes[1001])]


def test_5_3_rotation_on_a_client_session() -> None:
    quotes = MarketFeed(seed=4).take(1000)
    samples = [encode_body(Data(1, i, q)) for i, q in enumerate(quotes)]
    negotiated = Negotiated.of(MSGPACK_ZSTD)
    server = Session(Role.SERVER, negotiated)
    one = server.dictionaries.rotate(Dictionary.train(samples, dict_id=1, size=4096))
    client = Session(Role.CLIENT, negotiated)
    client.receive_message(server.send(DictOffer(server.dictionaries.offer())))
    assert client.dictionaries_to_fetch() == [one.dict_id]
    client.receive_message(server.send(DictData(one.dict_id, one.data)))
    # The same bytes offered again under another id load from memory, without a fetch.
    two = server.dictionaries.rotate(one)
    client.receive_message(server.send(DictOffer(server.dictionaries.offer())))
    assert client.dictionaries_to_fetch() == []
    assert client.dictionaries.is_loaded(two.dict_id)
    # Bytes the application cached (on disk, say) work the same way.
    other = Dictionary.train(samples[::-1], dict_id=1, size=2048)
    client.remember(other.data)
    three = server.dictionaries.rotate(other)
    client.receive_message(server.send(DictOffer(server.dictionaries.offer())))
    assert client.dictionaries_to_fetch() == []
    assert client.dictionaries.is_loaded(three.dict_id)
    client.events_received()
    # A DICT_DATA whose bytes do not match the offer is a 1007.
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_message(server.send(DictData(three.dict_id, one.data)))
    assert info.value.close_code == 1007


def test_5_3_what_waits_for_a_dictionary_is_bounded() -> None:
    negotiated = Negotiated.of(MSGPACK_ZSTD)
    client = Session(Role.CLIENT, negotiated, limits=Limits.for_message_bytes(1024))
    client.receive_message(encode_message(DictOffer([_DICT.info])))
    compressed = bytes([envelope.header(compressed=True, dict_id=_DICT.dict_id)]) + b"x" * 1000
    for _ in range(4):
        client.receive_message(compressed)  # 4,000 bytes held of the 4,096 allowed
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_message(compressed)
    assert info.value.close_code == 1009


_DICT = Dictionary.train(
    [encode_body(Data(1, i, q)) for i, q in enumerate(MarketFeed(seed=11).take(600))],
    dict_id=4,
    size=4096,
)
SETTINGS = {
    "plain": (MSGPACK, CompressionConfig()),
    "zstd-1-always": (MSGPACK_ZSTD, CompressionConfig(level=1, min_bytes=0)),
    "zstd-3": (MSGPACK_ZSTD, CompressionConfig()),
    "zstd-19-always": (MSGPACK_ZSTD, CompressionConfig(level=19, min_bytes=0)),
    "zstd-dict": (MSGPACK_ZSTD, CompressionConfig(min_bytes=0, dictionary=_DICT)),
}


@pytest.mark.parametrize("setting", SETTINGS)
@given(payload=msgpack_values)
def test_any_value_round_trips_under_every_compression_setting(
    setting: str, payload: object
) -> None:
    subprotocol, config = SETTINGS[setting]
    server = Session(Role.SERVER, Negotiated.of(subprotocol), compression=config)
    client = Session(Role.CLIENT, Negotiated.of(subprotocol))
    client.dictionaries.offered([_DICT.info])
    client.dictionaries.load(_DICT.dict_id, _DICT.data)
    client.receive_message(server.send(Data(1, 2, payload)))
    assert client.events_received() == [Data(1, 2, payload)]


@pytest.mark.parametrize("subprotocol", [MSGPACK_ZSTD, MSGPACK, JSON])
@given(data=st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_input_raises_only_protocol_errors(subprotocol: str, data: bytes | str) -> None:
    server = Session(Role.SERVER, Negotiated.of(subprotocol))
    code = None
    try:
        server.receive_message(data)
    except RemoteProtocolError as exc:
        code = exc.close_code
    assert code in {None, 1002, 1003, 1007, 1009, 4002}


def test_decode_message_without_a_session() -> None:
    negotiated = Negotiated.of(MSGPACK)
    assert decode_message(b"\x00\x94\x07\x01\x01\xc0", negotiated=negotiated, limits=Limits()) == (
        Data(1, 1, None)
    )
