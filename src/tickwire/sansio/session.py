"""One side of a tickwire/2 connection: whole messages in, events out, and back (§3-§5).

Imports: attrs, tickwire.config, tickwire.errors, tickwire.sansio modules.

Theory of operation: the trio layer hands :meth:`Session.receive_message` each complete
WebSocket message (``bytes`` for binary frames, ``str`` for text) and then reads
:meth:`Session.events_received`. The checks run cheapest first: frame type (1003), size
(1009), envelope (1002/1007), compression allowed at all (1002), dictionary offered (4002),
zstd frame within limits (1007/1009), msgpack structure within limits (1007/1009), message
shape (1007), kind known and sent by the right side (1002). Any failure raises a
:class:`~tickwire.errors.RemoteProtocolError` whose ``close_code`` the trio layer closes
with. :meth:`Session.send` turns an event into the message to write; the module function
:func:`encode_message` does the same without a session, for the broadcast fast path.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from typing import Final

import attrs

from tickwire.config import Limits
from tickwire.errors import LocalProtocolError, MessageTooBig, RemoteProtocolError
from tickwire.sansio import codec, envelope
from tickwire.sansio.compression import (
    CompressionConfig,
    Compressor,
    DictionaryInfo,
    DictionaryRegistry,
    decompress,
)
from tickwire.sansio.events import (
    CLIENT_KINDS,
    KIND_OF,
    SERVER_KINDS,
    DictData,
    DictOffer,
    Event,
    Hello,
    Ignored,
)
from tickwire.sansio.negotiation import Codec, Negotiated

__all__ = ["Role", "Session", "decode_message", "decode_sized", "encode_message"]


# §5.3: the messages that carry dictionaries are never compressed: the receiver may not
# hold the dictionary in use yet.
_NEVER_COMPRESSED: Final = frozenset({Hello, DictOffer, DictData})
KNOWN_DICTIONARIES: Final = 4  # dictionaries a client session keeps by SHA-256


class Role(enum.Enum):
    """Which end of the connection a session is."""

    CLIENT = "client"
    SERVER = "server"


def encode_message(
    event: Event, *, codec_: Codec = Codec.MSGPACK, compressor: Compressor | None = None
) -> bytes | str:
    """The wire message for *event*: envelope + (compressed) msgpack, or JSON text.

    Pass the same *compressor* for every receiver of one variant and reuse the result: that
    is how one broadcast is encoded and compressed once for all its subscribers. HELLO,
    DICT_OFFER and DICT_DATA are never compressed (§5.3).
    """
    if codec_ is Codec.JSON:
        return codec.encode_json(event)
    body = codec.encode_body(event)
    if compressor is None or type(event) in _NEVER_COMPRESSED:
        return envelope.PLAIN + body
    return compressor.pack(body)


def decode_message(
    message: bytes | str,
    *,
    negotiated: Negotiated,
    limits: Limits,
    dictionaries: DictionaryRegistry | None = None,
) -> Event:
    """Decode one received WebSocket message under *negotiated* and *limits*.

    Raises:
        RemoteProtocolError: with the close code §6 assigns (see the module docstring).
    """
    return decode_sized(message, negotiated=negotiated, limits=limits, dictionaries=dictionaries)[0]


def decode_sized(
    message: bytes | str,
    *,
    negotiated: Negotiated,
    limits: Limits,
    dictionaries: DictionaryRegistry | None = None,
) -> tuple[Event, int]:
    """:func:`decode_message`, and the size of the body once decompressed.

    Raises:
        RemoteProtocolError: as :func:`decode_message`.
    """
    if negotiated.codec is Codec.JSON:
        if not isinstance(message, str):
            raise RemoteProtocolError("binary frame on tickwire.v2.json", close_code=1003)
        if len(message) > limits.max_message_bytes:  # a cheap bound before encoding
            raise MessageTooBig(f"message exceeds {limits.max_message_bytes} bytes")
        return codec.decode_json(message, limits), len(message)
    if not isinstance(message, bytes | bytearray):
        raise RemoteProtocolError(f"text frame on {negotiated.subprotocol}", close_code=1003)
    if len(message) > limits.max_message_bytes:
        raise MessageTooBig(f"message of {len(message)} bytes exceeds {limits.max_message_bytes}")
    compressed, dict_id, body = envelope.split(message)
    if compressed:
        if not negotiated.compression:
            raise RemoteProtocolError(
                f"compressed message on {negotiated.subprotocol}", close_code=1002
            )
        dictionary = None
        if dict_id:
            dictionary = (dictionaries or DictionaryRegistry()).get(dict_id)
        plain = decompress(body, limit=limits.max_decompressed_bytes, dictionary=dictionary)
        return codec.decode_body(plain, limits), len(plain)
    return codec.decode_body(body, limits), len(body)


@attrs.define(eq=False)
class Session:
    """The protocol state of one connection end, free of I/O.

    Attributes:
        role: which end this is; a message of a kind the other end may not send is a 1002.
        negotiated: the result of the handshake (:mod:`tickwire.sansio.negotiation`).
        limits: applied to every received message.
        compression: how :meth:`send` compresses, when the subprotocol allows it.
        dictionaries: the dictionaries this end may decode with (and, for a server, rotate).
        compressor: a compressor to share (a server's connections share the hub's, so that
            no connection holds a zstd context of its own); made from *compression* if None.
    """

    role: Role
    negotiated: Negotiated
    limits: Limits = attrs.field(factory=Limits)
    compression: CompressionConfig = attrs.field(factory=CompressionConfig)
    dictionaries: DictionaryRegistry = attrs.field(factory=DictionaryRegistry)
    compressor: Compressor | None = None
    _events: list[Event] = attrs.field(init=False, factory=list)
    bytes_received: int = attrs.field(init=False, default=0)  # messages decoded, as received
    bytes_decoded: int = attrs.field(init=False, default=0)  # their bodies, decompressed
    last_decoded_bytes: int = attrs.field(init=False, default=0)  # the last one's body
    # A client's messages waiting for a dictionary, and events decoded behind them (§5.3).
    # Small while empty: a server's session never holds or fetches anything.
    _held: list[bytes | Event] = attrs.field(init=False, factory=list)
    _held_bytes: int = attrs.field(init=False, default=0)
    _to_fetch: list[int] = attrs.field(init=False, factory=list)
    _requested: dict[tuple[int, bytes], None] = attrs.field(init=False, factory=dict)  # id, SHA
    _known: dict[bytes, bytes] = attrs.field(init=False, factory=dict)  # SHA-256 -> bytes

    def __attrs_post_init__(self) -> None:
        if not self.negotiated.compression:
            self.compressor = None
        elif self.compressor is None:
            self.compressor = Compressor(self.compression)

    def receive_message(self, message: bytes | str) -> None:
        """Decode one whole received message; read the result with :meth:`events_received`.

        Extension kinds (64-127) are dropped, as §4.1 requires. A client session keeps the
        server's dictionary offer (HELLO, DICT_OFFER) and loads DICT_DATA itself; a message
        compressed with an offered dictionary it has not loaded yet is held, with every
        later one, until the bytes arrive (§5.3): send DICT_REQUEST for each id that
        :meth:`dictionaries_to_fetch` returns.

        Raises:
            RemoteProtocolError: carrying the close code to use (§6); MessageTooBig (1009)
                when more than ``max_decompressed_bytes`` wait for a dictionary.
        """
        if self.role is Role.CLIENT and (self._held or self._must_wait(message)):
            if self._must_wait(message):
                assert isinstance(message, bytes | bytearray)
                self._held_bytes += len(message)
                if self._held_bytes > self.limits.max_decompressed_bytes:
                    raise MessageTooBig("too many messages waiting for a dictionary")
                self._held.append(bytes(message))
                return
            event = self._decode(message)
            if event is None:
                return
            if isinstance(event, DictData):
                self._load(event)
                self._events.append(event)
                self._drain()
            else:
                self._held.append(event)
            return
        event = self._decode(message)
        if event is not None:
            self._accept(event)
            self._events.append(event)

    def dictionaries_to_fetch(self) -> list[int]:
        """Dictionary ids to ask for with DICT_REQUEST (each returned once per offer)."""
        ids, self._to_fetch = self._to_fetch, []
        return ids

    def _must_wait(self, message: bytes | str) -> bool:
        if not isinstance(message, bytes | bytearray) or not message:
            return False
        dict_id = (message[0] & envelope.DICT_ID_MASK) >> envelope.DICT_ID_SHIFT
        return (
            bool(message[0] & envelope.COMPRESSED)
            and dict_id != 0
            and self.dictionaries.is_offered(dict_id)
            and not self.dictionaries.is_loaded(dict_id)
        )

    def _decode(self, message: bytes | str) -> Event | None:
        event, size = decode_sized(
            message,
            negotiated=self.negotiated,
            limits=self.limits,
            dictionaries=self.dictionaries,
        )
        self.bytes_received += len(message)
        self.bytes_decoded += size
        self.last_decoded_bytes = size
        if isinstance(event, Ignored):
            return None
        allowed = CLIENT_KINDS if self.role is Role.SERVER else SERVER_KINDS
        kind = KIND_OF[type(event)]
        if kind not in allowed:
            sender = "client" if self.role is Role.SERVER else "server"
            raise RemoteProtocolError(f"a {sender} may not send {kind.name}", close_code=1002)
        return event

    def _accept(self, event: Event) -> None:
        """What a client session does itself with the dictionary messages."""
        if self.role is not Role.CLIENT:
            return
        if isinstance(event, Hello | DictOffer):
            self._offered(event.dictionaries)
        elif isinstance(event, DictData):
            self._load(event)

    def _offered(self, infos: Iterable[DictionaryInfo]) -> None:
        infos = tuple(infos)
        self.dictionaries.offered(infos)
        for info in infos:
            if self.dictionaries.is_loaded(info.dict_id):
                continue
            known = self._known.get(info.sha256)
            if known is not None:  # the same bytes under a new id: no fetch
                self.dictionaries.load(info.dict_id, known)
            elif (info.dict_id, info.sha256) not in self._requested:
                self._requested[info.dict_id, info.sha256] = None
                self._to_fetch.append(info.dict_id)

    def _load(self, event: DictData) -> None:
        dictionary = self.dictionaries.load(event.dict_id, event.data)
        self._known[dictionary.sha256] = dictionary.data
        while len(self._known) > KNOWN_DICTIONARIES:
            del self._known[next(iter(self._known))]

    def remember(self, data: bytes) -> None:
        """Make dictionary bytes known (a client's cache): an offer of the same SHA-256 is
        then loaded without a fetch."""
        self._known[hashlib.sha256(data).digest()] = bytes(data)

    def _drain(self) -> None:
        """Decode what was held, in order, as far as the dictionaries loaded allow."""
        held = self._held
        while held:
            head = held[0]
            if isinstance(head, bytes):
                if self._must_wait(head):
                    return
                del held[0]
                self._held_bytes -= len(head)
                event = self._decode(head)
                if event is None:
                    continue
            else:
                del held[0]
                event = head
            self._accept(event)
            self._events.append(event)

    def events_received(self) -> list[Event]:
        """The events decoded since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def send(self, event: Event) -> bytes | str:
        """The wire message for *event*, compressed when negotiated and worthwhile.

        Raises:
            LocalProtocolError: this end may not send that kind.
        """
        allowed = SERVER_KINDS if self.role is Role.SERVER else CLIENT_KINDS
        if KIND_OF.get(type(event)) not in allowed:
            raise LocalProtocolError(f"a {self.role.value} may not send {type(event).__name__}")
        return encode_message(event, codec_=self.negotiated.codec, compressor=self.compressor)
