"""Message bodies: events to msgpack arrays (or JSON text) and back, with shape checks (§4).

Imports: msgpack, json, base64, tickwire.config, tickwire.errors, tickwire.sansio.events,
tickwire.sansio.scan.

Decoding raises only :class:`~tickwire.errors.RemoteProtocolError` subclasses: never
msgpack's, json's, ``TypeError``, ``OverflowError`` or ``MemoryError``. Encoding a payload
that msgpack cannot represent raises ``TypeError`` or ``ValueError`` (a caller's bug).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import msgpack

from tickwire.config import Limits
from tickwire.errors import DecodeError, MessageTooBig, RemoteProtocolError
from tickwire.sansio.compression import DictionaryInfo
from tickwire.sansio.events import (
    EXTENSION_KINDS,
    KIND_OF,
    Ack,
    Auth,
    Batch,
    Data,
    DictData,
    DictOffer,
    DictRequest,
    Error,
    Event,
    Gap,
    Hello,
    Ignored,
    Kind,
    Outcome,
    Position,
    Publish,
    Resync,
    Snapshot,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from tickwire.sansio.scan import scan

__all__ = [
    "batch_body",
    "data_body",
    "decode_body",
    "decode_json",
    "encode_body",
    "encode_json",
    "from_fields",
    "to_fields",
]

MAX_UINT: Final = 2**64 - 1  # §4.1: uint is below 2^64
MIN_INT: Final = -(2**63)  # §4.1: int is msgpack's range
# §7.2: bodies up to this size are decoded without the structural pre-scan. At most 256
# objects fit in them, so they cost at most about 16 KiB once decoded, and msgpack's own
# per-container limits (capped at the body's size) bound what a lying header preallocates.
SCAN_MIN_BYTES: Final = 256

# -- event <-> positional fields ---------------------------------------------------------


def _infos(infos: tuple[DictionaryInfo, ...]) -> list[list[Any]]:
    return [[i.dict_id, i.sha256, i.size] for i in infos]


def to_fields(event: Event) -> list[Any]:
    """The message array for *event*: its kind, then its positions (§4)."""
    kind = KIND_OF[type(event)]
    if isinstance(event, Data):
        return [Kind.DATA.value, event.topic_id, event.offset, event.payload]
    if isinstance(event, Batch):
        return [Kind.BATCH.value, event.topic_id, event.first_offset, list(event.payloads)]
    if isinstance(event, Snapshot):
        fields = [Kind.SNAPSHOT.value, event.topic_id, event.offset, event.payload]
        return [*fields, True] if event.more else fields
    if isinstance(event, Hello):
        compression = (
            None
            if event.compression_level is None
            else [event.compression_level, event.compression_min_bytes]
        )
        limits = [
            event.max_message_bytes,
            event.max_decompressed_bytes,
            event.max_container_items,
            event.max_containers,
            event.max_depth,
            event.max_subscriptions,
        ]
        return [
            kind.value,
            event.session_id,
            event.server_time_ns,
            event.heartbeat_interval_ms,
            limits,
            compression,
            _infos(event.dictionaries),
        ]
    if isinstance(event, Subscribe):
        resume = None if event.resume is None else [event.resume.epoch, event.resume.offset]
        return [kind.value, event.request_id, event.pattern, resume, event.options]
    if isinstance(event, Subscribed):
        fields = [
            kind.value,
            event.request_id,
            event.topic_id,
            event.topic,
            event.epoch,
            event.offset,
            event.outcome.value,
            event.info,
        ]
        return fields if event.note is None else [*fields, event.note]
    if isinstance(event, DictOffer):
        return [kind.value, _infos(event.dictionaries)]
    if isinstance(event, Ignored):  # pragma: no cover - KIND_OF has no entry for it
        raise TypeError("Ignored is received, never sent")
    # The rest map one field to one position, in declaration order.
    return [kind.value, *(getattr(event, a.name) for a in attrs.fields(type(event)))]


class _Fields:
    """Typed access to a message's positions; every failure is a DecodeError (1007)."""

    __slots__ = ("kind", "values")

    def __init__(self, kind: Kind, values: list[Any]) -> None:
        self.kind = kind
        self.values = values

    def _fail(self, i: int, want: str) -> DecodeError:
        got = type(self.values[i]).__name__
        return DecodeError(f"{self.kind.name} position {i}: expected {want}, got {got}")

    def uint(self, i: int) -> int:
        v = self.values[i]
        if type(v) is not int or v < 0:
            raise self._fail(i, "an unsigned integer")
        if v > MAX_UINT:  # only JSON can say so
            raise DecodeError(f"{self.kind.name} position {i}: an unsigned integer below 2^64")
        return v

    def opt_uint(self, i: int) -> int | None:
        return None if self.values[i] is None else self.uint(i)

    def int_(self, i: int) -> int:
        v = self.values[i]
        if type(v) is not int or not MIN_INT <= v <= MAX_UINT:
            raise self._fail(i, "an integer")
        return v

    def opt_bool(self, i: int) -> bool:
        """An optional trailing position: false when absent."""
        if len(self.values) <= i:
            return False
        v = self.values[i]
        if type(v) is not bool:
            raise self._fail(i, "a boolean")
        return v

    def str_(self, i: int) -> str:
        v = self.values[i]
        if type(v) is not str:
            raise self._fail(i, "a string")
        return v

    def opt_str(self, i: int) -> str | None:
        return None if self.values[i] is None else self.str_(i)

    def bytes_(self, i: int) -> bytes:
        v = self.values[i]
        if type(v) is not bytes:
            raise self._fail(i, "binary")
        return v

    def list_(self, i: int) -> list[Any]:
        v = self.values[i]
        if type(v) is not list:
            raise self._fail(i, "an array")
        return v

    def map_(self, i: int) -> dict[str, Any]:
        v = self.values[i]
        if type(v) is not dict or not all(type(k) is str for k in v):
            raise self._fail(i, "a map with string keys")
        return v

    def any_(self, i: int) -> Any:
        return self.values[i]

    def infos(self, i: int) -> tuple[DictionaryInfo, ...]:
        out = []
        for entry in self.list_(i):
            if (
                type(entry) is not list
                or len(entry) < 3
                or type(entry[0]) is not int
                or not 1 <= entry[0] <= 15
                or type(entry[1]) is not bytes
                or len(entry[1]) != 32
                or type(entry[2]) is not int
                or entry[2] < 1
            ):
                raise self._fail(i, "dictionary entries [id 1-15, sha256, size]")
            out.append(DictionaryInfo(entry[0], entry[1], entry[2]))
        return tuple(out)


def _hello(f: _Fields) -> Hello:
    limits = f.list_(4)
    if len(limits) < 6 or any(type(x) is not int or x < 0 for x in limits[:6]):
        raise DecodeError("HELLO position 4: expected 6 unsigned integer limits")
    compression = f.values[5]
    if compression is None:
        level, min_bytes = None, 0
    elif (
        type(compression) is list
        and len(compression) >= 2
        and type(compression[0]) is int
        and type(compression[1]) is int
        and compression[1] >= 0
    ):
        level, min_bytes = compression[0], compression[1]
    else:
        raise DecodeError("HELLO position 5: expected nil or [level, min_bytes]")
    max_msg, max_decompressed, max_items, max_containers, max_depth, max_subs = limits[:6]
    return Hello(
        f.str_(1),
        f.int_(2),
        f.uint(3),
        max_msg,
        max_decompressed,
        max_items,
        max_containers,
        max_depth,
        max_subs,
        level,
        min_bytes,
        f.infos(6),
    )


def _resume(f: _Fields, i: int) -> Position | None:
    v = f.values[i]
    if v is None:
        return None
    if type(v) is not list or len(v) < 2 or any(type(x) is not int or x < 0 for x in v[:2]):
        raise DecodeError(f"{f.kind.name} position {i}: expected nil or [epoch, offset]")
    return Position(v[0], v[1])


def _outcome(f: _Fields, i: int) -> Outcome:
    v = f.uint(i)
    try:
        return Outcome(v)
    except ValueError:
        raise DecodeError(f"SUBSCRIBED position {i}: unknown outcome {v}") from None


def _dict_id(f: _Fields, i: int) -> int:
    v = f.uint(i)
    if not 1 <= v <= 15:
        raise DecodeError(f"{f.kind.name} position {i}: dictionary id must be 1-15")
    return v


# kind -> (number of positions after the kind, builder)
_DECODERS: Final[dict[Kind, tuple[int, Callable[[_Fields], Event]]]] = {
    Kind.HELLO: (6, _hello),
    Kind.ERROR: (3, lambda f: Error(f.opt_uint(1), f.uint(2), f.str_(3))),
    Kind.SUBSCRIBE: (
        4,
        lambda f: Subscribe(f.uint(1), f.str_(2), _resume(f, 3), f.map_(4)),
    ),
    Kind.SUBSCRIBED: (
        7,
        lambda f: Subscribed(
            f.uint(1),
            f.uint(2),
            f.str_(3),
            f.uint(4),
            f.uint(5),
            _outcome(f, 6),
            f.any_(7),
            f.opt_str(8) if len(f.values) > 8 else None,
        ),
    ),
    Kind.UNSUBSCRIBE: (2, lambda f: Unsubscribe(f.uint(1), f.str_(2))),
    Kind.UNSUBSCRIBED: (
        4,
        lambda f: Unsubscribed(f.opt_uint(1), f.str_(2), f.uint(3), f.str_(4)),
    ),
    Kind.DATA: (3, lambda f: Data(f.uint(1), f.uint(2), f.any_(3))),
    Kind.BATCH: (3, lambda f: Batch(f.uint(1), f.uint(2), f.list_(3))),
    Kind.SNAPSHOT: (3, lambda f: Snapshot(f.uint(1), f.uint(2), f.any_(3), f.opt_bool(4))),
    Kind.GAP: (3, lambda f: Gap(f.uint(1), f.uint(2), f.uint(3))),
    Kind.RESYNC: (3, lambda f: Resync(f.uint(1), f.uint(2), f.opt_uint(3))),
    Kind.PUBLISH: (
        4,
        lambda f: Publish(f.opt_uint(1), f.str_(2), f.any_(3), f.opt_str(4)),
    ),
    Kind.ACK: (3, lambda f: Ack(f.uint(1), f.opt_uint(2), f.opt_uint(3))),
    Kind.DICT_OFFER: (1, lambda f: DictOffer(f.infos(1))),
    Kind.DICT_REQUEST: (1, lambda f: DictRequest(_dict_id(f, 1))),
    Kind.DICT_DATA: (2, lambda f: DictData(_dict_id(f, 1), f.bytes_(2))),
    Kind.AUTH: (2, lambda f: Auth(f.uint(1), f.str_(2))),
}


def from_fields(values: Any) -> Event:
    """Build the event for a decoded message array, checking every position's type.

    Positions past the ones a kind defines are ignored (§4.1).

    Raises:
        DecodeError: not an array, missing positions, or a position of the wrong type (1007).
        RemoteProtocolError: an unknown kind outside the extension range (1002).
    """
    if type(values) is not list or not values:
        raise DecodeError("a message must be a non-empty array")
    raw_kind = values[0]
    # The hot kinds, checked inline: DATA [7, uint, uint, any], BATCH [8, uint, uint, list].
    if (
        (raw_kind == 7 or raw_kind == 8)
        and len(values) >= 4
        and type(values[1]) is int
        and type(values[2]) is int
        and values[1] >= 0
        and values[2] >= 0
    ):
        if raw_kind == 7:
            return Data(values[1], values[2], values[3])
        if type(values[3]) is list:
            return Batch(values[1], values[2], values[3])
    if type(raw_kind) is not int:
        raise DecodeError("the message kind must be an integer")
    try:
        kind = Kind(raw_kind)
    except ValueError:
        if raw_kind in EXTENSION_KINDS:
            return Ignored(raw_kind)
        raise RemoteProtocolError(f"unknown message kind {raw_kind}", close_code=1002) from None
    count, build = _DECODERS[kind]
    if len(values) <= count:
        raise DecodeError(f"{kind.name} needs {count} positions, got {len(values) - 1}")
    return build(_Fields(kind, values))


# -- msgpack -----------------------------------------------------------------------------

_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def encode_body(event: Event) -> bytes:
    """The msgpack body of *event* (§4).

    Raises:
        TypeError: the payload holds a type msgpack cannot represent.
        ValueError: an integer outside msgpack's range.
    """
    try:
        return _packer.pack(to_fields(event))  # type: ignore[no-any-return]
    except OverflowError as exc:
        _packer.reset()
        raise ValueError(f"cannot encode {type(event).__name__}: {exc}") from exc
    except (TypeError, ValueError):
        _packer.reset()
        raise


def data_body(topic_id: int, offset: int, payload: bytes) -> bytes:
    """The msgpack body of ``Data(topic_id, offset, <payload>)`` around an already packed
    *payload* (the value gate's bytes): the payload is never packed twice."""
    return b"\x94\x07" + _packer.pack(topic_id) + _packer.pack(offset) + payload  # type: ignore[no-any-return]


def batch_body(topic_id: int, first_offset: int, payloads: Sequence[bytes]) -> bytes:
    """The msgpack body of ``Batch(topic_id, first_offset, <payloads>)`` around payloads
    already packed."""
    head = b"\x94\x08" + _packer.pack(topic_id) + _packer.pack(first_offset)
    return head + _packer.pack_array_header(len(payloads)) + b"".join(payloads)  # type: ignore[no-any-return]


def decode_body(body: bytes | memoryview, limits: Limits) -> Event:
    """Decode one msgpack message body within *limits* (§4, §7).

    The bytes are pre-scanned (:func:`tickwire.sansio.scan.scan`) before msgpack allocates.

    Raises:
        DecodeError, MessageTooBig, RemoteProtocolError: see :func:`from_fields` and §7.
    """
    if len(body) > limits.max_decompressed_bytes:
        raise MessageTooBig(f"body of {len(body)} bytes exceeds {limits.max_decompressed_bytes}")
    size = len(body)
    if size > SCAN_MIN_BYTES:
        scan(body, limits)
    # Below SCAN_MIN_BYTES the size itself bounds the cost (§7.2); msgpack's per-container
    # limits, capped by the size, keep any one preallocation small.
    items = min(limits.max_container_items, size)
    try:
        values = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=False,
            max_str_len=limits.max_decompressed_bytes,
            max_bin_len=limits.max_decompressed_bytes,
            max_array_len=items,
            max_map_len=items,
            max_ext_len=0,
        )
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 in a msgpack string: {exc.reason}") from exc
    except TypeError as exc:  # an array or map used as a map key: "unhashable type"
        raise DecodeError(f"invalid msgpack map key: {exc}") from exc
    except (ValueError, msgpack.UnpackException) as exc:
        raise DecodeError(f"invalid msgpack: {str(exc) or type(exc).__name__}") from exc
    return from_fields(values)


# -- JSON (tickwire.v2.json, §4.12) -------------------------------------------------------

_BIN: Final = "$bin"
_MAP: Final = "$map"


def _to_json(value: Any) -> Any:
    if isinstance(value, dict):
        if all(type(k) is str for k in value) and not (
            len(value) == 1 and (_BIN in value or _MAP in value)
        ):
            return {k: _to_json(v) for k, v in value.items()}
        return {_MAP: [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BIN: base64.b64encode(bytes(value)).decode("ascii")}
    if type(value) is int and not -(2**63) <= value <= MAX_UINT:
        raise ValueError(f"integer {value} is outside msgpack's range")
    return value


def encode_json(event: Event) -> str:
    """The JSON text of *event* for ``tickwire.v2.json`` (§4.12): the same array as msgpack.

    Raises:
        TypeError: a value JSON cannot carry even escaped. ValueError: NaN or infinity.
    """
    return json.dumps(
        _to_json(to_fields(event)), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _from_json_object(obj: dict[str, Any]) -> Any:
    if len(obj) != 1:
        return obj
    if _BIN in obj:
        v = obj[_BIN]
        if type(v) is not str:
            raise DecodeError('"$bin" must hold a base64 string')
        try:
            return base64.b64decode(v, validate=True)
        except binascii.Error as exc:
            raise DecodeError(f'invalid base64 in "$bin": {exc}') from exc
    if _MAP in obj:
        pairs = obj[_MAP]
        if type(pairs) is not list or not all(type(p) is list and len(p) == 2 for p in pairs):
            raise DecodeError('"$map" must hold [key, value] pairs')
        try:
            return {k: v for k, v in pairs}
        except TypeError as exc:
            raise DecodeError(f'invalid "$map" key: {exc}') from exc
    return obj


def _no_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not valid JSON")


def _json_int(text: str) -> int:
    value = int(text)
    if not MIN_INT <= value <= MAX_UINT:
        raise DecodeError("a JSON integer outside msgpack's range (-2^63 to 2^64-1)")
    return value


def _json_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # 1e400 parses as infinity
        raise DecodeError(f"the JSON number {text[:40]} is not a finite float64")
    return value


# A JSON string, escapes included: what a bracket count must not look into.
_JSON_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"')


def _containers(text: str) -> int:
    """Arrays and objects in a JSON text: brackets outside strings."""
    bare = _JSON_STRING.sub("", text)
    return bare.count("[") + bare.count("{")


def _check_json(value: Any, limits: Limits, depth: int, strings: bool) -> None:
    """The limits msgpack's pre-scan applies (§7), and no lone surrogate (from ``\ud800``
    escapes), over a decoded JSON message."""
    t = type(value)
    if t is list or t is dict:
        if value and depth >= limits.max_depth:
            raise MessageTooBig(f"nesting deeper than {limits.max_depth}")
        if len(value) > limits.max_container_items:
            raise MessageTooBig(f"container exceeds {limits.max_container_items} items")
        if t is dict:
            for key, item in value.items():
                if strings:
                    _check_json(key, limits, depth + 1, strings)
                _check_json(item, limits, depth + 1, strings)
        else:
            for item in value:
                _check_json(item, limits, depth + 1, strings)
    elif strings and t is str and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DecodeError("a JSON string escapes a lone surrogate") from None


def decode_json(text: str, limits: Limits) -> Event:
    """Decode one ``tickwire.v2.json`` text message within *limits*.

    The limits of §7 apply as to msgpack (containers, items, nesting), and what msgpack
    could not carry is refused: NaN and infinities (``1e400`` too), integers outside
    msgpack's range, lone surrogates.

    Raises:
        DecodeError, MessageTooBig, RemoteProtocolError: as :func:`decode_body`.
    """
    # Brackets bound the containers; only when they might exceed the limit are the ones
    # inside strings told apart.
    brackets = text.count("[") + text.count("{")
    if brackets > limits.max_containers and _containers(text) > limits.max_containers:
        raise MessageTooBig(f"more than {limits.max_containers} arrays and objects")
    try:
        values = json.loads(
            text,
            object_hook=_from_json_object,
            parse_constant=_no_constant,
            parse_int=_json_int,
            parse_float=_json_float,
        )
    except RemoteProtocolError:
        raise
    except RecursionError as exc:
        raise MessageTooBig("JSON nested too deeply") from exc
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise DecodeError(f"invalid JSON: {exc}") from exc
    strings = "\\u" in text
    if strings or brackets > limits.max_depth or len(text) > limits.max_container_items:
        _check_json(values, limits, 0, strings)
    return from_fields(values)
