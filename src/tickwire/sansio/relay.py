"""The backplane's messages between tickwire processes, as pure functions (docs/scaling.md).

Imports: attrs, msgpack, tickwire.errors.

Theory of operation. A publishing process sends each topic's new messages to Redis in one
script call: a *relay* holding the packed payloads and, when the process could guess the
offsets Redis will give them, the wire messages already encoded (and compressed) for each
variant. The script gives the messages their offsets (one sequence per topic for the whole
cluster), appends them to the topic's history and publishes the relay with a header in front
of it: the topic's epoch, the first offset, and whether the guess was right. Every server
then forwards the encoded messages as they are (compressed once for the whole cluster), or
encodes them itself when the guess was wrong::

    PUBLISH tw:{<topic id>}:c   <header: msgpack epoch, first, valid> <relay: msgpack array>

    relay = [1, topic_id, kind, publisher, stamp, payloads, groups, frames, dict_digest]

``payloads`` are the messages' packed values (a table delta's packed entries); ``groups``
says how many consecutive messages each wire message carries (1: a DATA; more: a BATCH);
``frames`` maps a subprotocol token to the encoded messages, one per group, without their
WebSocket framing; ``dict_digest`` is the first 8 bytes of the SHA-256 of the zstd
dictionary the compressed variant used (empty for none): a server forwards compressed
messages only when it holds that same dictionary under that id.

A server keeps, per topic, the epoch and the last offset it delivered; :func:`place` says
what an arriving relay is: the next messages, an old copy, messages after a gap (fetch the
missing ones from the history first) or a new epoch (Redis lost the topic: every subscriber
is told it was not recovered).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import msgpack

from tickwire.errors import DecodeError

__all__ = [
    "RELAY_VERSION",
    "Kind",
    "Placement",
    "Relay",
    "pack_relay",
    "place",
    "unpack_relay",
]

RELAY_VERSION: Final = 1


class Kind(enum.IntEnum):
    """What a relay's payloads are."""

    STREAM = 0  # stream messages: each payload is a packed value
    TABLE = 1  # table deltas: each payload is a packed delta (encode_changes)


@attrs.frozen
class Relay:
    """One topic's messages between processes.

    Attributes:
        topic_id: the topic's id in the cluster's registry.
        kind: stream messages or table deltas.
        publisher: the publishing process's id (8 bytes).
        stamp: when it was published, in seconds on the publisher's wall clock.
        payloads: the messages' packed values, in offset order.
        groups: how many messages each wire message carries, in order (sums to
            ``len(payloads)``).
        frames: encoded wire messages per subprotocol token, one per group.
        dict_digest: the zstd dictionary of the compressed variant (b"" for none).
        epoch: the topic's epoch (set by Redis; 0 in what a publisher sends).
        first: the first message's offset (set by Redis).
        valid: whether *frames* carry the offsets Redis gave (set by Redis).
    """

    topic_id: int
    kind: Kind
    publisher: bytes
    stamp: float
    payloads: tuple[bytes, ...]
    groups: tuple[int, ...]
    frames: Mapping[str, Sequence[bytes]] = attrs.field(factory=dict)
    dict_digest: bytes = b""
    epoch: int = 0
    first: int = 0
    valid: bool = False

    @property
    def last(self) -> int:
        """The last message's offset."""
        return self.first + len(self.payloads) - 1


def pack_relay(relay: Relay) -> bytes:
    """The relay as the publishing process sends it to the script (without the header)."""
    return msgpack.packb(  # type: ignore[no-any-return]
        [
            RELAY_VERSION,
            relay.topic_id,
            int(relay.kind),
            relay.publisher,
            relay.stamp,
            list(relay.payloads),
            list(relay.groups),
            {token: list(messages) for token, messages in relay.frames.items()},
            relay.dict_digest,
        ],
        use_bin_type=True,
    )


def unpack_relay(data: bytes) -> Relay:
    """A relay as a server receives it: the script's header, then the relay.

    Raises:
        DecodeError: not a relay this version of tickwire understands.
    """
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=len(data) + 1)
    unpacker.feed(data)
    try:
        epoch, first, valid = next(unpacker), next(unpacker), next(unpacker)
        fields: Any = next(unpacker)
    except (StopIteration, ValueError, msgpack.ExtraData) as exc:
        raise DecodeError(f"not a relay: {exc}") from None
    if not (isinstance(fields, list) and len(fields) >= 9 and fields[0] == RELAY_VERSION):
        raise DecodeError("not a relay of version 1")
    _, topic_id, kind, publisher, stamp, payloads, groups, frames, digest = fields[:9]
    if sum(groups) != len(payloads) or any(len(m) != len(groups) for m in frames.values()):
        raise DecodeError("a relay whose groups do not match its payloads")
    return Relay(
        topic_id,
        Kind(kind),
        publisher,
        float(stamp),
        tuple(payloads),
        tuple(groups),
        frames,
        digest,
        epoch,
        first,
        bool(valid),
    )


class Placement(enum.Enum):
    """Where an arriving relay stands against what a server has delivered."""

    NEXT = "next"  # its first message follows the last one delivered
    OLD = "old"  # everything in it was delivered already (a copy: a retry, a fetch)
    OVERLAP = "overlap"  # it starts before the next offset and ends after it
    AFTER_GAP = "after gap"  # messages are missing before it: fetch them first
    NEW_EPOCH = "new epoch"  # the topic's sequence started again (Redis lost it)


def place(epoch: int, offset: int, relay: Relay) -> Placement:
    """Where *relay* stands for a server that delivered up to *offset* in *epoch*."""
    if relay.epoch != epoch:
        return Placement.NEW_EPOCH
    if relay.first == offset + 1:
        return Placement.NEXT
    if relay.last <= offset:
        return Placement.OLD
    if relay.first <= offset:
        return Placement.OVERLAP
    return Placement.AFTER_GAP
