"""Per-message zstd: compress above a threshold when it pays, decompress within limits (§5).

Imports: zstandard, attrs, tickwire.config, tickwire.errors, tickwire.sansio.envelope.

On the wire a compressed body is a zstd frame with its 4-byte magic number removed, its
content size declared, no checksum and no zstd dictionary id: the envelope header carries a
compact dictionary id instead (§3, §5.3). Decompression checks the declared size and window
before allocating, and rejects undeclared sizes, foreign dictionary ids and trailing data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

import attrs
import zstandard
from attrs.validators import ge, instance_of, le, optional

from tickwire.config import KiB
from tickwire.errors import DecodeError, MessageTooBig, UnknownDictionary
from tickwire.sansio import envelope

__all__ = [
    "ZSTD_MAGIC",
    "CompressionConfig",
    "Compressor",
    "Dictionary",
    "DictionaryInfo",
    "DictionaryRegistry",
    "decompress",
    "train_dictionary",
]

ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"  # §5.1: removed by the sender, restored by the receiver
MIN_WINDOW: Final = 1 * KiB  # zstd's smallest window


@attrs.frozen
class DictionaryInfo:
    """What HELLO and DICT_OFFER say of a dictionary (§5.3): id, SHA-256, size in bytes."""

    dict_id: int
    sha256: bytes
    size: int


@attrs.frozen(eq=False)
class Dictionary:
    """A zstd dictionary with its compact wire id (1-15) and content hash.

    Build one with :meth:`from_bytes` or :meth:`train`; the zstd objects are prepared once.
    """

    dict_id: int = attrs.field(validator=[instance_of(int), ge(1), le(envelope.MAX_DICT_ID)])
    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    sha256: bytes = attrs.field(repr=lambda h: h.hex()[:16])
    _zdict: zstandard.ZstdCompressionDict = attrs.field(repr=False)
    # Decompressors by window cap, made on first use.
    _dctx: dict[int, zstandard.ZstdDecompressor] = attrs.field(init=False, factory=dict, repr=False)

    @classmethod
    def from_bytes(cls, data: bytes, *, dict_id: int) -> Dictionary:
        """Load serialized dictionary bytes (as :attr:`data` holds them) under *dict_id*.

        Raises:
            ValueError: *data* is empty or *dict_id* is outside 1-15.
        """
        if not data:
            raise ValueError("empty dictionary")
        data = bytes(data)
        zdict = zstandard.ZstdCompressionDict(data)
        return cls(dict_id, data, hashlib.sha256(data).digest(), zdict)

    @classmethod
    def train(
        cls, samples: Sequence[bytes], *, dict_id: int, size: int = 16 * KiB, level: int = 3
    ) -> Dictionary:
        """Train a dictionary of at most *size* bytes from sample message bodies."""
        return cls.from_bytes(train_dictionary(samples, size=size, level=level), dict_id=dict_id)

    @property
    def info(self) -> DictionaryInfo:
        """The entry that offers this dictionary in HELLO or DICT_OFFER."""
        return DictionaryInfo(self.dict_id, self.sha256, len(self.data))

    def with_id(self, dict_id: int) -> Dictionary:
        """The same dictionary under another wire id."""
        return attrs.evolve(self, dict_id=dict_id)


def train_dictionary(samples: Sequence[bytes], *, size: int = 16 * KiB, level: int = 3) -> bytes:
    """Train a zstd dictionary from sample message bodies (``zstandard.train_dictionary``).

    Raises:
        ValueError: too few or too small samples for zstd's trainer.
    """
    if len(samples) < 8:
        raise ValueError(f"need at least 8 samples to train a dictionary, got {len(samples)}")
    try:
        trained = zstandard.train_dictionary(size, list(samples), level=level)
    except zstandard.ZstdError as exc:
        raise ValueError(f"cannot train a dictionary from these samples: {exc}") from exc
    return trained.as_bytes()


@attrs.frozen(kw_only=True)
class CompressionConfig:
    """How a sender compresses (§5.2).

    Attributes:
        level: zstd level (negative levels are faster, 3 is zstd's default).
        min_bytes: bodies shorter than this are sent uncompressed (zstd's frame and block
            headers outweigh what it saves on them, a dictionary or not: a 30-byte quote
            delta came out no smaller with one, bench/README.md).
        dictionary: compress with this dictionary, or none.
    """

    level: int = attrs.field(default=3, validator=[instance_of(int), ge(-7), le(22)])
    min_bytes: int = attrs.field(default=64, validator=[instance_of(int), ge(0)])
    dictionary: Dictionary | None = attrs.field(
        default=None, validator=optional(instance_of(Dictionary))
    )


@attrs.define(eq=False)
class Compressor:
    """Turns message bodies into envelope + body, compressing when it makes them smaller."""

    config: CompressionConfig = attrs.field(factory=CompressionConfig)
    _cctx: zstandard.ZstdCompressor = attrs.field(init=False)
    _header: bytes = attrs.field(init=False)
    _threshold: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self.reconfigure(self.config)

    def reconfigure(self, config: CompressionConfig) -> None:
        """Compress with *config* from now on (a dictionary rotation): everyone sharing
        this compressor switches at once."""
        self.config = config
        dictionary = config.dictionary
        self._cctx = zstandard.ZstdCompressor(
            level=config.level,
            dict_data=dictionary._zdict if dictionary else None,
            write_checksum=False,
            write_content_size=True,
            write_dict_id=False,
        )
        dict_id = dictionary.dict_id if dictionary else 0
        self._header = bytes([envelope.header(compressed=True, dict_id=dict_id)])
        self._threshold = config.min_bytes

    def pack(self, body: bytes) -> bytes:
        """Return header + body, the body compressed if that is at least a byte smaller."""
        if len(body) >= self._threshold:
            frame = self._cctx.compress(body)
            if len(frame) - len(ZSTD_MAGIC) < len(body):
                return self._header + frame[len(ZSTD_MAGIC) :]
        return envelope.PLAIN + body


def _window_cap(limit: int) -> int:
    """The largest window accepted: *limit* rounded up to a power of two, at least 1 KiB."""
    return max(MIN_WINDOW, 1 << (limit - 1).bit_length())


_plain_dctx: dict[int, zstandard.ZstdDecompressor] = {}
_UNKNOWN: Final = zstandard.CONTENTSIZE_UNKNOWN


def _decompressor(cap: int, dictionary: Dictionary | None) -> zstandard.ZstdDecompressor:
    cache = _plain_dctx if dictionary is None else dictionary._dctx
    dctx = cache.get(cap)
    if dctx is None:
        zdict = None if dictionary is None else dictionary._zdict
        dctx = cache[cap] = zstandard.ZstdDecompressor(dict_data=zdict, max_window_size=cap)
    return dctx


def decompress(
    body: bytes | memoryview, *, limit: int, dictionary: Dictionary | None = None
) -> bytes:
    """Decompress one §5 body (a zstd frame without its magic) of at most *limit* bytes.

    The frame header is checked before anything is allocated: the content size must be
    declared and within *limit*, the window within *limit*, no zstd dictionary id, and no
    bytes may follow the frame.

    Raises:
        DecodeError: a malformed or undeclared-size frame, trailing data (1007).
        MessageTooBig: a declared size or window beyond *limit* (1009).
    """
    frame = ZSTD_MAGIC + body
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"invalid zstd frame header: {exc}") from exc
    size = params.content_size
    if size == _UNKNOWN:
        raise DecodeError("zstd frame does not declare its content size")
    if size > limit:
        raise MessageTooBig(f"zstd frame declares {size} bytes, limit is {limit}")
    cap = _window_cap(limit)
    if params.window_size > cap:
        raise MessageTooBig(f"zstd window of {params.window_size} bytes exceeds the limit")
    if params.dict_id:
        raise DecodeError("zstd frame names a dictionary; the header's id is used instead")
    try:
        out = _decompressor(cap, dictionary).decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"invalid zstd frame: {exc}") from exc
    if len(out) != size:  # pragma: no cover - zstd itself enforces the declared size
        raise DecodeError("zstd frame content does not match its declared size")
    return out


@attrs.define(eq=False)
class DictionaryRegistry:
    """The dictionaries a connection may use, by wire id (§5.3).

    A sender's registry is filled by :meth:`rotate`: it keeps the *active* dictionary (used
    to compress) and the *previous* one, so that messages compressed before a rotation still
    decode. A receiver's registry records what the peer offered (:meth:`offered`) and loads
    the bytes once fetched (:meth:`load`); :meth:`get` refuses an id that was not offered.
    """

    _offered: dict[int, DictionaryInfo] = attrs.field(init=False, factory=dict)
    _loaded: dict[int, Dictionary] = attrs.field(init=False, factory=dict)
    active: Dictionary | None = attrs.field(init=False, default=None)
    previous: Dictionary | None = attrs.field(init=False, default=None)

    def rotate(self, data: bytes | Dictionary) -> Dictionary:
        """Make *data* the active dictionary under a fresh id; keep the old one as previous.

        Ids cycle through 1-15, skipping the ones still on offer. Returns the new dictionary.
        """
        source = data if isinstance(data, Dictionary) else None
        in_use = {d.dict_id for d in (self.active, self.previous) if d is not None}
        last = self.active.dict_id if self.active else 0
        new_id = next(
            i
            for i in ((last + k - 1) % envelope.MAX_DICT_ID + 1 for k in range(1, 16))
            if i not in in_use
        )
        if source is not None:
            new = source.with_id(new_id)
        else:
            assert isinstance(data, bytes | bytearray)
            new = Dictionary.from_bytes(bytes(data), dict_id=new_id)
        self.previous, self.active = self.active, new
        self._loaded = {d.dict_id: d for d in (self.previous, self.active) if d is not None}
        self._offered = {i: d.info for i, d in self._loaded.items()}
        return new

    def offer(self) -> tuple[DictionaryInfo, ...]:
        """The dictionaries on offer, for HELLO or DICT_OFFER, oldest first."""
        return tuple(self._offered.values())

    def offered(self, infos: Iterable[DictionaryInfo]) -> list[int]:
        """Record the peer's offer (it replaces the last one); return the ids to fetch."""
        self._offered = {info.dict_id: info for info in infos}
        self._loaded = {
            i: d
            for i, d in self._loaded.items()
            if i in self._offered and self._offered[i].sha256 == d.sha256
        }
        return [i for i in self._offered if i not in self._loaded]

    def load(self, dict_id: int, data: bytes) -> Dictionary:
        """Load fetched dictionary bytes; they must match the offered hash.

        Raises:
            UnknownDictionary: *dict_id* was not offered (4002).
            DecodeError: the bytes do not match the offered SHA-256 (1007).
        """
        info = self._offered.get(dict_id)
        if info is None:
            raise UnknownDictionary(f"dictionary {dict_id} was not offered")
        if hashlib.sha256(data).digest() != info.sha256:
            raise DecodeError(f"dictionary {dict_id} does not match its offered SHA-256")
        dictionary = Dictionary.from_bytes(data, dict_id=dict_id)
        self._loaded[dict_id] = dictionary
        return dictionary

    def is_offered(self, dict_id: int) -> bool:
        """Whether the peer's current offer names *dict_id*."""
        return dict_id in self._offered

    def is_loaded(self, dict_id: int) -> bool:
        """Whether the bytes of dictionary *dict_id* are here."""
        return dict_id in self._loaded

    def get(self, dict_id: int) -> Dictionary:
        """The dictionary for a received header's id.

        Raises:
            UnknownDictionary: the id was not offered, or its bytes were never loaded (4002).
        """
        dictionary = self._loaded.get(dict_id)
        if dictionary is None:
            state = "was not loaded" if dict_id in self._offered else "was not offered"
            raise UnknownDictionary(f"dictionary {dict_id} {state}")
        return dictionary
