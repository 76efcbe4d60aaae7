"""§7.2: the msgpack pre-scan rejects memory bombs before msgpack allocates."""

from __future__ import annotations

import contextlib
import tracemalloc

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import msgpack_values
from tickwire.config import KiB, Limits, MiB
from tickwire.errors import DecodeError, MessageTooBig, RemoteProtocolError
from tickwire.sansio.scan import scan

LIMITS = Limits()


def peak_bytes(fn: object, *args: object) -> int:
    tracemalloc.start()
    try:
        fn(*args)  # type: ignore[operator]
    except RemoteProtocolError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_one_mib_of_empty_arrays_is_refused_without_allocating() -> None:
    body = b"\xdd" + (MiB).to_bytes(4, "big") + b"\x90" * MiB
    with pytest.raises(MessageTooBig):
        scan(body, LIMITS)
    # The same in many smaller arrays: the total container budget catches it.
    body = b"\xdc" + (16 * KiB).to_bytes(2, "big") + (b"\x9f" + b"\x90" * 15) * (16 * KiB)
    with pytest.raises(MessageTooBig, match="arrays and maps"):
        scan(body, LIMITS)
    assert peak_bytes(scan, body, LIMITS) < 256 * KiB  # msgpack alone: 64 MiB (measured)


def test_nested_declared_lengths_are_refused() -> None:
    body = b"\xdc\xff\xff" * 1000  # msgpack alone preallocates 23 MiB for 3 KB of this
    with pytest.raises(DecodeError, match="declares"):
        scan(body, LIMITS)


def test_container_item_limit() -> None:
    body = msgpack.packb(list(range(20)))
    scan(body, Limits(max_container_items=20))
    with pytest.raises(MessageTooBig, match="20 items exceeds 19"):
        scan(body, Limits(max_container_items=19))


def test_depth_limit_counts_the_message_array() -> None:
    body = b"\x91" * 3 + b"\x01"  # [[[1]]]: depth 3
    scan(body, Limits(max_depth=3))
    with pytest.raises(MessageTooBig, match="deeper than 2"):
        scan(body, Limits(max_depth=2))
    scan(b"\x91" * 2 + b"\x90", Limits(max_depth=2))  # an empty container allocates nothing


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\xd6\xff\x00\x00\x00\x01", "ext types"),  # a msgpack timestamp
        (b"\xc7\x01\x05\x00", "ext types"),
        (b"\xc1", "0xc1"),
        (b"\x92\x01", "declares 2 elements"),
        (b"\x92\x01\xa2", "truncated"),
        (b"\xa5abc", "truncated"),
        (b"\xcd\x01", "truncated"),
        (b"\x01\x02", "trailing"),
        (b"", "truncated"),
    ],
)
def test_malformed(body: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match) as info:
        scan(body, LIMITS)
    assert info.value.close_code == 1007


@given(msgpack_values)
def test_accepts_every_msgpack_value(value: object) -> None:
    scan(msgpack.packb(value, use_bin_type=True), LIMITS)


@given(st.binary(max_size=64))
def test_agrees_with_msgpack_on_arbitrary_bytes(data: bytes) -> None:
    small = Limits(max_container_items=64, max_containers=64, max_depth=8)
    try:
        scan(data, small)
    except RemoteProtocolError:
        return
    # Whatever the scan accepts, msgpack parses as exactly one object (strings may still
    # fail UTF-8 and keys may be unhashable: the codec reports those).
    with contextlib.suppress(TypeError):
        msgpack.unpackb(data, raw=True, strict_map_key=False, use_list=False)
