"""§3: the one-byte envelope header."""

from __future__ import annotations

import pytest

from tickwire.errors import DecodeError
from tickwire.sansio import envelope


@pytest.mark.parametrize(
    ("compressed", "dict_id", "byte"),
    [(False, 0, 0x00), (True, 0, 0x01), (True, 1, 0x03), (True, 15, 0x1F)],
)
def test_3_1_header_bits(compressed: bool, dict_id: int, byte: int) -> None:
    assert envelope.header(compressed=compressed, dict_id=dict_id) == byte
    assert envelope.split(bytes([byte]) + b"\x90")[:2] == (compressed, dict_id)


def test_3_1_body_follows_header() -> None:
    assert bytes(envelope.split(b"\x00\x91\x07")[2]) == b"\x91\x07"


@pytest.mark.parametrize("bit", [0x20, 0x40, 0x80])
def test_3_2_reserved_bits_are_rejected_with_1002(bit: int) -> None:
    with pytest.raises(DecodeError, match="reserved") as info:
        envelope.split(bytes([bit]) + b"\x90")
    assert info.value.close_code == 1002


def test_3_1_dictionary_without_compression_is_rejected() -> None:
    with pytest.raises(DecodeError, match="uncompressed") as info:
        envelope.split(b"\x02\x90")
    assert info.value.close_code == 1002


def test_3_empty_message_is_1007() -> None:
    with pytest.raises(DecodeError) as info:
        envelope.split(b"")
    assert info.value.close_code == 1007


@pytest.mark.parametrize(("compressed", "dict_id"), [(False, 1), (True, 16), (True, -1)])
def test_header_misuse_raises_value_error(compressed: bool, dict_id: int) -> None:
    with pytest.raises(ValueError, match="dictionary"):
        envelope.header(compressed=compressed, dict_id=dict_id)
