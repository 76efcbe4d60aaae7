"""The tickwire exception tree.

Imports: stdlib only. Every error a peer can provoke is a :class:`RemoteProtocolError`
carrying the WebSocket close code that docs/PROTOCOL.md §6 assigns to it.
"""

from __future__ import annotations

__all__ = [
    "BackplaneUnavailable",
    "ConnectionClosed",
    "ConnectionRefused",
    "DecodeError",
    "InvalidValue",
    "LocalProtocolError",
    "MessageTooBig",
    "NegotiationError",
    "ProtocolError",
    "PublishError",
    "RemoteProtocolError",
    "SlowConsumer",
    "SubscriptionError",
    "TickwireError",
    "UnknownDictionary",
    "ValueTooLarge",
]


class TickwireError(Exception):
    """Base class of every exception tickwire raises on purpose."""


class ProtocolError(TickwireError):
    """Raised by the sans-I/O core when a message breaks the tickwire/2 protocol."""


class LocalProtocolError(ProtocolError):
    """This side asked for something the protocol does not allow (a bug on this side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something illegal.

    Attributes:
        close_code: the WebSocket close code to send before closing (PROTOCOL.md §6).
    """

    default_close_code: int = 1002

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code: int = self.default_close_code if close_code is None else close_code


class DecodeError(RemoteProtocolError):
    """Malformed envelope, zstd frame, msgpack, JSON or message shape (close 1007)."""

    default_close_code = 1007


class MessageTooBig(RemoteProtocolError):
    """A size limit was exceeded; raised before the memory is allocated (close 1009)."""

    default_close_code = 1009


class UnknownDictionary(RemoteProtocolError):
    """A compressed message named a dictionary id that was never offered (close 4002)."""

    default_close_code = 4002


class InvalidValue(TickwireError, ValueError, TypeError):
    """A value that could not be delivered exactly to every receiver, refused at the call
    that offered it; nothing changed (no offset used, nothing stored or sent).

    It is a ``ValueError`` and a ``TypeError``, as a bad argument is.

    Attributes:
        where: which value, for example ``payload['bid']`` or ``quotes.bid``.
    """

    def __init__(self, message: str, *, where: str = "") -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


class ValueTooLarge(InvalidValue):
    """A value over a size, nesting or container limit of the receivers (ERROR 413 when a
    client published it)."""


class NegotiationError(TickwireError):
    """Client and server share no tickwire subprotocol (close 4004 on the wire)."""


class ConnectionClosed(TickwireError):
    """The connection is closed; raised on use after close.

    Attributes:
        code: the WebSocket close code (1006 when the connection was lost without one).
        reason: the close reason, possibly empty.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class SlowConsumer(TickwireError):
    """The hub dropped this subscriber because its outbox overflowed (close 4000)."""


class ConnectionRefused(TickwireError):
    """A client could not connect and will not retry: HTTP 401 or 403 at the handshake,
    or its reconnection attempts ran out.

    Attributes:
        status: the HTTP status, when the server answered with one.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SubscriptionError(TickwireError):
    """The server refused or ended a subscription (ERROR or UNSUBSCRIBED with a code).

    Attributes:
        code: the ERROR code (400, 403, 404, 409, 413, ...).
        text: the server's explanation.
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class PublishError(SubscriptionError):
    """The server refused a PUBLISH (ERROR with the request's id)."""


class BackplaneUnavailable(TickwireError):
    """The backplane (Redis) cannot take a publish now: it is unreachable, or more is
    waiting for it than :class:`~tickwire.backplane.RedisBackplane` keeps. Nothing was
    published by the call that raised it (a client's PUBLISH gets ERROR 503)."""
