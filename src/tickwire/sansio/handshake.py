"""The opening handshake's request head, checked before any WebSocket library sees it (§2).

Imports: base64, binascii, tickwire.config.

wsproto accepts what RFC 6455 §4.1 says a server must refuse: an upgrade over HTTP/1.0, and a
``Sec-WebSocket-Key`` that is not 16 bytes in base64. The server reads the request head
itself (bounded in size and time), asks :func:`head_problem`, and answers HTTP 400 to a
problem; a good head is handed on, byte for byte.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from tickwire.config import KiB

__all__ = ["MAX_HEAD_BYTES", "head_complete", "head_problem", "rejection"]

MAX_HEAD_BYTES: Final = 16 * KiB  # the request line and headers, together
_END: Final = b"\r\n\r\n"


def head_complete(data: bytes) -> bool:
    """Whether *data* holds a whole request head (it ends with an empty line), or cannot be
    the start of one (then :func:`head_problem` says so at once, without waiting for more:
    a TLS handshake sent to a plain server, say)."""
    return _END in data or not _plausible(data)


def _plausible(data: bytes) -> bool:
    """Whether *data* may begin an HTTP request: a method of capital letters, then a space."""
    head = data[:8]
    method = head.split(b" ", 1)[0]
    if not method:
        return not head  # nothing yet: plausible; a leading space: not
    return method.isalpha() and method.isupper() and (len(method) < len(head) or len(data) < 8)


def head_problem(data: bytes) -> str | None:
    """What makes the request head at the start of *data* unacceptable, or None.

    Only what wsproto does not check itself is checked here: the request line's form and
    HTTP version, the head's size, and the ``Sec-WebSocket-Key``'s form.
    """
    if not _plausible(data):
        first = data[:1].hex()
        return f"not an HTTP request (first byte 0x{first}: TLS to a plain ws:// server?)"
    end = data.find(_END)
    if end < 0:
        return (
            f"request head larger than {MAX_HEAD_BYTES} bytes"
            if len(data) > MAX_HEAD_BYTES
            else "incomplete request head"
        )
    if end > MAX_HEAD_BYTES:
        return f"request head larger than {MAX_HEAD_BYTES} bytes"
    line, *lines = data[:end].split(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[1]:
        return "malformed request line"
    method, _, version = parts
    if version != b"HTTP/1.1":
        return "a WebSocket handshake needs HTTP/1.1 (RFC 6455 §4.1)"
    if method != b"GET":
        return "a WebSocket handshake is a GET request"
    keys = [
        value.strip()
        for name, _, value in (h.partition(b":") for h in lines)
        if name.strip().lower() == b"sec-websocket-key"
    ]
    if len(keys) > 1:
        return "more than one Sec-WebSocket-Key"
    if keys:
        try:
            raw = base64.b64decode(keys[0], validate=True)
        except (binascii.Error, ValueError):
            return "Sec-WebSocket-Key is not base64"
        if len(raw) != 16:
            return "Sec-WebSocket-Key must be 16 bytes, base64-encoded (RFC 6455 §4.1)"
    return None


def rejection(reason: str) -> bytes:
    """The HTTP 400 response that refuses a handshake for *reason*."""
    body = reason.encode("utf-8")
    return (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )
