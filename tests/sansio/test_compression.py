"""§5: per-message zstd, bounded decompression, dictionaries and their registry."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
import zstandard

from tickwire.config import KiB
from tickwire.errors import DecodeError, MessageTooBig, UnknownDictionary
from tickwire.sansio.codec import encode_body
from tickwire.sansio.compression import (
    ZSTD_MAGIC,
    CompressionConfig,
    Compressor,
    Dictionary,
    DictionaryRegistry,
    decompress,
    train_dictionary,
)
from tickwire.sansio.events import Data
from tickwire.sim import MarketFeed

LIMIT = 64 * KiB


def frame(data: bytes, **kwargs: object) -> bytes:
    """A zstd frame as §5 sends it: magic removed."""
    options: dict[str, object] = {
        "write_content_size": True,
        "write_checksum": False,
        "write_dict_id": False,
    }
    options.update(kwargs)
    full = zstandard.ZstdCompressor(**options).compress(data)  # type: ignore[arg-type]
    assert full.startswith(ZSTD_MAGIC)
    return full[4:]


@pytest.fixture(scope="module")
def quotes() -> list[bytes]:
    return [encode_body(Data(3, i, u)) for i, u in enumerate(MarketFeed(seed=7).take(2000))]


def test_5_1_round_trip() -> None:
    body = b"tick " * 100
    assert decompress(frame(body), limit=LIMIT) == body


def test_5_2_the_known_13_byte_bomb_is_refused_without_allocating() -> None:
    bomb = bytes.fromhex("28b52ffde06c06060663636363")
    tracemalloc.start()
    with pytest.raises(MessageTooBig, match="declares") as info:
        decompress(bomb[4:], limit=LIMIT)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert info.value.close_code == 1009
    assert peak < 64 * KiB


@pytest.mark.parametrize("declared", [LIMIT + 1, 2**32, 2**40, 2**63])
def test_5_2_relatives_of_the_bomb(declared: int) -> None:
    # Single-segment frame header with an 8-byte content size and nothing after it.
    body = b"\xe0" + declared.to_bytes(8, "little")
    with pytest.raises(MessageTooBig):
        decompress(body, limit=LIMIT)


def test_5_2_undeclared_content_size_is_refused() -> None:
    with pytest.raises(DecodeError, match="declare"):
        decompress(frame(b"x" * 100, write_content_size=False), limit=LIMIT)


def test_5_2_declared_size_smaller_than_content_is_refused() -> None:
    lying = bytearray(frame(b"hello world" * 10))
    assert lying[1] == 110  # FHD, then the 1-byte content size
    lying[1] = 20
    with pytest.raises(DecodeError, match="invalid zstd frame"):
        decompress(bytes(lying), limit=LIMIT)


def test_5_2_trailing_data_is_refused() -> None:
    with pytest.raises(DecodeError, match="unused data"):
        decompress(frame(b"x" * 100) + b"\x00", limit=LIMIT)
    with pytest.raises(DecodeError):
        decompress(frame(b"x" * 100) + ZSTD_MAGIC + frame(b"y" * 100), limit=LIMIT)


def raw_block(data: bytes) -> bytes:
    """One last zstd block of type raw holding *data*."""
    return ((len(data) << 3) | 1).to_bytes(3, "little") + data


def test_5_2_large_window_is_refused() -> None:
    # Not single-segment (FHD 0x40: 2-byte content size), window descriptor 0x68: 8 MiB.
    body = b"\x40\x68" + (300 - 256).to_bytes(2, "little") + raw_block(b"a" * 300)
    with pytest.raises(MessageTooBig, match="window"):
        decompress(body, limit=LIMIT)
    assert decompress(body, limit=8 * 1024 * KiB) == b"a" * 300


def test_5_3_a_zstd_dictionary_id_in_the_frame_is_refused() -> None:
    # FHD 0x21: single segment, 1-byte dictionary id (7), then the 1-byte content size.
    body = b"\x21\x07\x05" + raw_block(b"hello")
    with pytest.raises(DecodeError, match="names a dictionary"):
        decompress(body, limit=LIMIT)
    assert decompress(b"\x20\x05" + raw_block(b"hello"), limit=LIMIT) == b"hello"


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"\xff" * 10, b"\x20\x05\x00\x00"])
def test_5_2_garbage_is_a_decode_error(garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        decompress(garbage, limit=LIMIT)


def test_5_2_compress_only_above_the_threshold_and_only_when_smaller() -> None:
    packer = Compressor(CompressionConfig(min_bytes=64))
    short = b"\x94\x07\x01\x02\xa3abc"
    assert packer.pack(short) == b"\x00" + short  # under min_bytes
    random_like = bytes(range(200))
    assert packer.pack(random_like)[0] == 0  # compresses larger: sent plain
    repetitive = b"abcd" * 100
    packed = packer.pack(repetitive)
    assert packed[0] == 0x01
    assert len(packed) < 40
    assert decompress(packed[1:], limit=LIMIT) == repetitive


def test_5_3_dictionary_shrinks_single_quotes(quotes: list[bytes]) -> None:
    d = Dictionary.train(quotes[:1000], dict_id=5)
    plain, with_dict = (
        Compressor(CompressionConfig(min_bytes=0)),
        Compressor(CompressionConfig(min_bytes=0, dictionary=d)),
    )
    sample = quotes[1000:1100]
    plain_size = sum(len(plain.pack(q)) for q in sample)
    dict_size = sum(len(m := with_dict.pack(q)) for q in sample)
    assert dict_size < 0.6 * sum(len(q) for q in sample)  # measured: about 40 %
    assert dict_size < plain_size
    m = with_dict.pack(sample[0])
    assert m[0] == 0x01 | (5 << 1)
    assert decompress(m[1:], limit=LIMIT, dictionary=d) == sample[0]


def test_dictionary_identity_and_serialization(quotes: list[bytes]) -> None:
    data = train_dictionary(quotes[:500], size=4 * KiB)
    a = Dictionary.from_bytes(data, dict_id=1)
    b = Dictionary.from_bytes(a.data, dict_id=1)
    assert a.sha256 == b.sha256
    assert len(a.sha256) == 32
    assert a.info.size == len(data) <= 4 * KiB
    assert a.with_id(2).dict_id == 2


def test_training_needs_samples() -> None:
    with pytest.raises(ValueError, match="samples"):
        train_dictionary([b"x"] * 3)
    with pytest.raises(ValueError, match="empty"):
        Dictionary.from_bytes(b"", dict_id=1)
    with pytest.raises(ValueError, match="dict_id"):
        Dictionary.from_bytes(b"x" * 100, dict_id=16)


def test_registry_rotation_keeps_the_previous_dictionary(quotes: list[bytes]) -> None:
    sender, receiver = DictionaryRegistry(), DictionaryRegistry()
    first = sender.rotate(train_dictionary(quotes[:500], size=4 * KiB))
    old = Compressor(CompressionConfig(min_bytes=0, dictionary=first)).pack(quotes[600])
    second = sender.rotate(train_dictionary(quotes[500:1000], size=4 * KiB))
    assert (first.dict_id, second.dict_id) == (1, 2)
    assert [i.dict_id for i in sender.offer()] == [1, 2]
    # A receiver fetches what is offered; a message compressed before rotating decodes.
    to_fetch = receiver.offered(sender.offer())
    assert to_fetch == [1, 2]
    for i in to_fetch:
        receiver.load(i, sender.get(i).data)
    assert decompress(old[1:], limit=LIMIT, dictionary=receiver.get(old[0] >> 1)) == quotes[600]
    third = sender.rotate(first.data)
    assert third.dict_id == 3
    assert [i.dict_id for i in sender.offer()] == [2, 3]
    assert receiver.offered(sender.offer()) == [3]  # 2 is kept, 1 is forgotten
    with pytest.raises(UnknownDictionary, match="not offered") as info:
        receiver.get(1)
    assert info.value.close_code == 4002


def test_registry_ids_cycle_and_skip_ids_in_use() -> None:
    sender = DictionaryRegistry()
    ids = [sender.rotate(bytes([i]) * 64).dict_id for i in range(40)]
    assert ids[:16] == [*range(1, 16), 1]
    assert all(a != b for a, b in itertools.pairwise(ids))


def test_registry_refuses_unoffered_and_mismatched_loads() -> None:
    receiver = DictionaryRegistry()
    with pytest.raises(UnknownDictionary):
        receiver.load(1, b"x" * 64)
    sender = DictionaryRegistry()
    sender.rotate(b"a" * 64)
    receiver.offered(sender.offer())
    with pytest.raises(UnknownDictionary, match="not loaded"):
        receiver.get(1)
    assert not receiver.is_loaded(1)
    with pytest.raises(DecodeError, match="SHA-256"):
        receiver.load(1, b"b" * 64)
    receiver.load(1, b"a" * 64)
    assert receiver.is_loaded(1)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="level"):
        CompressionConfig(level=23)
    with pytest.raises(TypeError):
        CompressionConfig(dictionary=b"raw")  # type: ignore[arg-type]
