"""A structural pre-scan of msgpack bytes, run before msgpack allocates anything (§7.2).

Imports: tickwire.errors, tickwire.config.

Why: msgpack preallocates a list of the *declared* length when it meets an array header,
so a few bytes can ask for megabytes, and nested headers multiply that (3 KB of ``dc ff ff``
became 23 MiB here). And a message of empty arrays, 1 byte each, grows 64-fold once
decoded. This scan walks the headers without building objects and rejects: a container
declaring more elements than bytes remain, more than ``max_container_items`` elements, more
than ``max_containers`` containers in all, nesting deeper than ``max_depth``, ext types,
the never-used byte 0xc1, and truncation. What passes decodes in memory proportional to
its size.
"""

from __future__ import annotations

from typing import Final

from tickwire.config import Limits
from tickwire.errors import DecodeError, MessageTooBig

__all__ = ["scan"]

# For each first byte: (kind, n) where kind is
#   0: scalar of fixed total size n        1: str/bin with an n-byte length after the byte
#   2: array, n-byte count follows        3: map, n-byte count follows
#   4: fixarray (count in the byte)        5: fixmap (count in the byte)
#   6: forbidden (ext types, 0xc1)
_SCALAR, _LEN, _ARRAY, _MAP, _FIXARRAY, _FIXMAP, _BAD = range(7)


def _table() -> tuple[tuple[int, int], ...]:
    t: list[tuple[int, int]] = []
    for b in range(256):
        if b <= 0x7F or b >= 0xE0:
            t.append((_SCALAR, 1))
        elif b <= 0x8F:
            t.append((_FIXMAP, b & 0x0F))
        elif b <= 0x9F:
            t.append((_FIXARRAY, b & 0x0F))
        elif b <= 0xBF:
            t.append((_SCALAR, 1 + (b & 0x1F)))  # fixstr
        elif b in (0xC0, 0xC2, 0xC3):
            t.append((_SCALAR, 1))  # nil, false, true
        elif b in (0xC4, 0xD9):
            t.append((_LEN, 1))
        elif b in (0xC5, 0xDA):
            t.append((_LEN, 2))
        elif b in (0xC6, 0xDB):
            t.append((_LEN, 4))
        elif b == 0xCA:
            t.append((_SCALAR, 5))
        elif b == 0xCB:
            t.append((_SCALAR, 9))
        elif b in (0xCC, 0xD0):
            t.append((_SCALAR, 2))
        elif b in (0xCD, 0xD1):
            t.append((_SCALAR, 3))
        elif b in (0xCE, 0xD2):
            t.append((_SCALAR, 5))
        elif b in (0xCF, 0xD3):
            t.append((_SCALAR, 9))
        elif b == 0xDC:
            t.append((_ARRAY, 2))
        elif b == 0xDD:
            t.append((_ARRAY, 4))
        elif b == 0xDE:
            t.append((_MAP, 2))
        elif b == 0xDF:
            t.append((_MAP, 4))
        else:  # 0xc1 (never used), 0xc7-0xc9 and 0xd4-0xd8 (ext)
            t.append((_BAD, 0))
    return tuple(t)


_TABLE: Final = _table()


def scan(body: bytes | memoryview, limits: Limits) -> None:
    """Check that *body* is exactly one msgpack object within *limits*, without decoding it.

    Raises:
        DecodeError: truncated, trailing bytes, ext type or 0xc1 (1007).
        MessageTooBig: a container limit was exceeded (1009).
    """
    data = body if isinstance(body, bytes) else bytes(body)
    end = len(data)
    table = _TABLE
    max_items = limits.max_container_items
    containers_left = limits.max_containers
    max_depth = limits.max_depth
    # left: elements still to read in the current container (a map counts 2 per entry);
    # parents: the same for each enclosing container. The root is a container of one.
    left = 1
    parents: list[int] = []
    pos = 0
    try:
        while True:
            if not left:
                if not parents:
                    break
                left = parents.pop()
                continue
            left -= 1
            b = data[pos]
            # The common cases first: positive fixint, fixstr, float64, negative fixint.
            if b < 0x80:
                pos += 1
                continue
            if 0xA0 <= b <= 0xBF:
                pos += 1 + (b & 0x1F)
                continue
            kind, n = table[b]
            if kind == _SCALAR:
                pos += n
                continue
            if kind == _LEN:
                pos += 1 + n + int.from_bytes(data[pos + 1 : pos + 1 + n], "big")
                continue
            if kind == _BAD:
                what = "ext types are not allowed" if b != 0xC1 else "byte 0xc1 is never valid"
                raise DecodeError(f"msgpack {what} (at offset {pos})")
            if kind in (_FIXARRAY, _FIXMAP):
                count = n
                pos += 1
            else:
                count = int.from_bytes(data[pos + 1 : pos + 1 + n], "big")
                pos += 1 + n
            if count > max_items:
                raise MessageTooBig(f"container of {count} items exceeds {max_items}")
            containers_left -= 1
            if containers_left < 0:
                raise MessageTooBig(f"more than {limits.max_containers} arrays and maps")
            if kind in (_MAP, _FIXMAP):
                count *= 2
            # Every element takes at least one byte: a larger count is a lie or a truncation.
            if count > end - pos:
                raise DecodeError(
                    f"container declares {count} elements, {max(0, end - pos)} bytes remain"
                )
            if count:
                if len(parents) >= max_depth:  # the root slot is not in parents
                    raise MessageTooBig(f"nesting deeper than {max_depth}")
                parents.append(left)
                left = count
    except IndexError:
        raise DecodeError("truncated msgpack") from None
    if pos != end:
        if pos > end:
            raise DecodeError("truncated msgpack")
        raise DecodeError(f"{end - pos} trailing bytes after the msgpack object")
