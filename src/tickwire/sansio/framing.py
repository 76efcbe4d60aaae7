"""Server-side WebSocket framing (RFC 6455 §5.2), so one message is framed once for all.

Imports: stdlib only.

Servers send unmasked frames, so a framed message is the same bytes for every connection:
the broadcast layer frames each update once and writes it to every subscriber unchanged.
Each message goes in one final frame (FIN set, no fragmentation).
"""

from __future__ import annotations

from typing import Final

__all__ = ["frame", "frame_header"]

_BINARY: Final = 0x82  # FIN + opcode 2
_TEXT: Final = 0x81  # FIN + opcode 1


def frame_header(length: int, *, text: bool = False) -> bytes:
    """The header of one unmasked final frame carrying *length* payload bytes."""
    first = _TEXT if text else _BINARY
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def frame(message: bytes | str) -> bytes:
    """The whole frame for *message*: binary for ``bytes``, text (UTF-8) for ``str``."""
    if isinstance(message, str):
        payload = message.encode("utf-8")
        return frame_header(len(payload), text=True) + payload
    return frame_header(len(message)) + message
