"""The tickwire/2 message kinds as frozen events (PROTOCOL.md §4).

Imports: attrs, tickwire.sansio.compression (for DictionaryInfo).

Each event is one message; its fields are the message's positions after the kind, in order.
Offsets count a topic's messages from 1; a :class:`Position` is (epoch, offset).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, Final, TypeAlias

import attrs

from tickwire.sansio.compression import DictionaryInfo

__all__ = [
    "CLIENT_KINDS",
    "EXTENSION_KINDS",
    "SERVER_KINDS",
    "Ack",
    "Auth",
    "Batch",
    "Data",
    "DictData",
    "DictOffer",
    "DictRequest",
    "Error",
    "ErrorCode",
    "Event",
    "Gap",
    "Hello",
    "Ignored",
    "Kind",
    "Outcome",
    "Position",
    "Publish",
    "Resync",
    "Snapshot",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "Unsubscribed",
]


def _infos(infos: Iterable[DictionaryInfo]) -> tuple[DictionaryInfo, ...]:
    return tuple(infos)


def _payloads(payloads: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(payloads)


class Kind(enum.IntEnum):
    """The first element of every message (§4.1)."""

    HELLO = 1
    ERROR = 2
    SUBSCRIBE = 3
    SUBSCRIBED = 4
    UNSUBSCRIBE = 5
    UNSUBSCRIBED = 6
    DATA = 7
    BATCH = 8
    SNAPSHOT = 9
    GAP = 10
    RESYNC = 11
    PUBLISH = 12
    ACK = 13
    DICT_OFFER = 14
    DICT_REQUEST = 15
    DICT_DATA = 16
    AUTH = 17


EXTENSION_KINDS: Final = range(64, 128)  # §4.1: a receiver MUST ignore unknown ones


class Outcome(enum.IntEnum):
    """How a subscription started (§4.4)."""

    NEW = 0  # no resume asked: live from the next offset
    RECOVERED = 1  # resumed: every missed message follows, in order
    NOT_RECOVERED = 2  # resume impossible: nothing replayed; tables get a SNAPSHOT


class ErrorCode(enum.IntEnum):
    """Codes of ERROR and UNSUBSCRIBED (§4.3), modelled on HTTP's."""

    OK = 0
    BAD_REQUEST = 400
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    CONFLICT = 409
    TOO_LARGE = 413
    RATE_LIMITED = 429
    INTERNAL = 500
    UNAVAILABLE = 503


@attrs.frozen
class Position:
    """Where a subscriber is in a topic: the topic's *epoch* and the last *offset* seen."""

    epoch: int
    offset: int


@attrs.frozen
class Hello:
    """Server to client, first message of every connection (§4.2)."""

    session_id: str
    server_time_ns: int
    heartbeat_interval_ms: int
    max_message_bytes: int
    max_decompressed_bytes: int
    max_container_items: int
    max_containers: int
    max_depth: int
    max_subscriptions: int
    compression_level: int | None = None  # None: the server will not compress
    compression_min_bytes: int = 0
    dictionaries: tuple[DictionaryInfo, ...] = attrs.field(default=(), converter=_infos)


@attrs.frozen
class Error:
    """Server to client: a request failed, or a connection-level warning (§4.3)."""

    request_id: int | None
    code: int
    text: str


@attrs.frozen
class Subscribe:
    """Client to server: subscribe to a topic name or a ``*`` pattern (§4.4)."""

    request_id: int
    pattern: str
    resume: Position | None = None
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Subscribed:
    """Server to client: one per topic a SUBSCRIBE (or RESYNC) matched (§4.4). *note* is
    the server's word on a topic that may deliver nothing yet (one that does not exist:
    "no topic 'quote' yet; did you mean 'quotes'?"), or None."""

    request_id: int
    topic_id: int
    topic: str
    epoch: int
    offset: int
    outcome: Outcome = attrs.field(converter=Outcome)
    info: Any = None
    note: str | None = None


@attrs.frozen
class Unsubscribe:
    """Client to server: end the subscription made with this exact *pattern* (§4.5)."""

    request_id: int
    pattern: str


@attrs.frozen
class Unsubscribed:
    """Server to client: a subscription ended, on request (code 0) or not (§4.5)."""

    request_id: int | None
    pattern: str
    code: int = 0
    text: str = ""


@attrs.frozen
class Data:
    """Server to client: one message of a topic (§4.6)."""

    topic_id: int
    offset: int
    payload: Any


@attrs.frozen
class Batch:
    """Server to client: consecutive messages of one topic, from *first_offset* on (§4.7)."""

    topic_id: int
    first_offset: int
    payloads: tuple[Any, ...] = attrs.field(converter=_payloads)


@attrs.frozen
class Snapshot:
    """Server to client: a table topic's whole state as of *offset* (§4.8), or a part of
    it: *more* says that further parts of the same snapshot follow (§9.3)."""

    topic_id: int
    offset: int
    payload: Any
    more: bool = False


@attrs.frozen
class Gap:
    """Server to client: offsets *first* to *last* of a topic will never arrive (§4.9)."""

    topic_id: int
    first: int
    last: int


@attrs.frozen
class Resync:
    """Client to server: replay a topic after *offset*, or send a fresh state (§4.9)."""

    request_id: int
    topic_id: int
    offset: int | None = None


@attrs.frozen
class Publish:
    """Client to server: publish *payload* on *topic*; no ACK without a request id (§4.10)."""

    request_id: int | None
    topic: str
    payload: Any
    key: str | None = None  # idempotency key


@attrs.frozen
class Ack:
    """Server to client: a PUBLISH (or AUTH) succeeded (§4.10)."""

    request_id: int
    topic_id: int | None = None
    offset: int | None = None


@attrs.frozen
class DictOffer:
    """Server to client: the dictionaries on offer from now on (§5.3)."""

    dictionaries: tuple[DictionaryInfo, ...] = attrs.field(converter=_infos)


@attrs.frozen
class DictRequest:
    """Client to server: send me dictionary *dict_id* (§5.3)."""

    dict_id: int


@attrs.frozen
class DictData:
    """Server to client: the bytes of dictionary *dict_id* (§5.3)."""

    dict_id: int
    data: bytes


@attrs.frozen
class Auth:
    """Client to server: a bearer token, first or refreshed (§4.11)."""

    request_id: int
    token: str


@attrs.frozen
class Ignored:
    """An extension kind (64-127) this implementation does not know; §4.1 says ignore it."""

    kind: int


Event: TypeAlias = (
    Hello
    | Error
    | Subscribe
    | Subscribed
    | Unsubscribe
    | Unsubscribed
    | Data
    | Batch
    | Snapshot
    | Gap
    | Resync
    | Publish
    | Ack
    | DictOffer
    | DictRequest
    | DictData
    | Auth
    | Ignored
)

KIND_OF: Final[dict[type, Kind]] = {
    Hello: Kind.HELLO,
    Error: Kind.ERROR,
    Subscribe: Kind.SUBSCRIBE,
    Subscribed: Kind.SUBSCRIBED,
    Unsubscribe: Kind.UNSUBSCRIBE,
    Unsubscribed: Kind.UNSUBSCRIBED,
    Data: Kind.DATA,
    Batch: Kind.BATCH,
    Snapshot: Kind.SNAPSHOT,
    Gap: Kind.GAP,
    Resync: Kind.RESYNC,
    Publish: Kind.PUBLISH,
    Ack: Kind.ACK,
    DictOffer: Kind.DICT_OFFER,
    DictRequest: Kind.DICT_REQUEST,
    DictData: Kind.DICT_DATA,
    Auth: Kind.AUTH,
}

# §4.1: who may send what. A receiver MUST close with 1002 on a kind from the wrong side.
SERVER_KINDS: Final = frozenset(
    {
        Kind.HELLO,
        Kind.ERROR,
        Kind.SUBSCRIBED,
        Kind.UNSUBSCRIBED,
        Kind.DATA,
        Kind.BATCH,
        Kind.SNAPSHOT,
        Kind.GAP,
        Kind.ACK,
        Kind.DICT_OFFER,
        Kind.DICT_DATA,
    }
)
CLIENT_KINDS: Final = frozenset(Kind) - SERVER_KINDS
