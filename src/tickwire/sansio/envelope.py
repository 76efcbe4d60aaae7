"""The one-byte envelope header in front of every binary tickwire/2 message (PROTOCOL.md §3).

Imports: tickwire.errors.

::

    bit  7 6 5 | 4 3 2 1 | 0
         R R R | D D D D | C
    C     COMPRESSED: the body is a zstd frame without its 4-byte magic number (§5)
    DDDD  dictionary id 1-15 the frame was compressed with, 0 for none (§5.3)
    RRR   reserved: a receiver MUST reject a message with any of them set
"""

from __future__ import annotations

from typing import Final

from tickwire.errors import DecodeError

__all__ = [
    "COMPRESSED",
    "DICT_ID_MASK",
    "MAX_DICT_ID",
    "RESERVED_MASK",
    "header",
    "split",
]

COMPRESSED: Final = 0x01  # §3.1
DICT_ID_SHIFT: Final = 1  # §3.1
DICT_ID_MASK: Final = 0x1E  # §3.1
RESERVED_MASK: Final = 0xE0  # §3.2: receivers MUST reject these bits
MAX_DICT_ID: Final = 15  # §5.3

PLAIN: Final = b"\x00"  # the header of every uncompressed message


def header(*, compressed: bool, dict_id: int = 0) -> int:
    """Return the header byte for a body, compressed or not, with dictionary *dict_id*.

    Raises:
        ValueError: *dict_id* is outside 0-15, or set on an uncompressed body.
    """
    if not 0 <= dict_id <= MAX_DICT_ID:
        raise ValueError(f"dictionary id must be 0-{MAX_DICT_ID}, not {dict_id}")
    if dict_id and not compressed:
        raise ValueError("a dictionary id needs a compressed body")
    return (dict_id << DICT_ID_SHIFT) | (COMPRESSED if compressed else 0)


def split(message: bytes) -> tuple[bool, int, memoryview]:
    """Split a binary message into (compressed, dictionary id, body).

    Raises:
        DecodeError: empty message (1007), reserved bits set or a dictionary id on an
            uncompressed body (1002).
    """
    if not message:
        raise DecodeError("empty message: no envelope header")
    first = message[0]
    if first & RESERVED_MASK:
        raise DecodeError(f"reserved header bits set: {first:#04x}", close_code=1002)
    compressed = bool(first & COMPRESSED)
    dict_id = (first & DICT_ID_MASK) >> DICT_ID_SHIFT
    if dict_id and not compressed:
        raise DecodeError(f"dictionary id {dict_id} on an uncompressed body", close_code=1002)
    return compressed, dict_id, memoryview(message)[1:]
