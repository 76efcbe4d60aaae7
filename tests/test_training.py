"""`tickwire dict train`: samples from files and live topics, and honest gains measured
on messages the dictionary never saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

import tickwire
from tickwire import Hub, ServerConfig
from tickwire.cli import main
from tickwire.sansio.compression import Dictionary
from tickwire.sim import MarketFeed
from tickwire.training import TrainingError, bodies, evaluate, payloads_from_lines, record


def feed_lines(count: int) -> list[str]:
    return [json.dumps(update) for update in MarketFeed(seed=5).take(count)]


def test_tail_output_gives_its_stream_payloads_and_skips_table_lines() -> None:
    lines = [
        json.dumps({"type": "message", "topic": "t", "offset": 1, "payload": {"p": 1}}),
        json.dumps({"type": "change", "topic": "q", "offset": 2, "key": "A", "row": None}),
        json.dumps({"type": "reset", "topic": "q", "offset": 2, "rows": []}),
        "",
        json.dumps({"type": "quote", "symbol": "ACME"}),  # tickwire feed: a payload itself
        "[1, 2]",
    ]
    payloads, skipped = payloads_from_lines(lines)
    assert payloads == [{"p": 1}, {"type": "quote", "symbol": "ACME"}, [1, 2]]
    assert skipped == 2
    with pytest.raises(TrainingError, match="line 2 is not JSON"):
        payloads_from_lines(["1", "{nope"])


def test_a_dictionary_trained_on_quotes_beats_plain_zstd_on_unseen_quotes() -> None:
    payloads, _ = payloads_from_lines(feed_lines(2000))
    data, result = evaluate(bodies(payloads), size=8 * 1024)
    assert (result.trained_on, result.tested_on) == (1600, 400)
    assert result.dictionary_bytes == len(data) <= 8 * 1024
    # Small messages: zstd alone barely helps, the dictionary does (measured, not assumed).
    assert result.dict_bytes < 0.7 * result.zstd_bytes
    assert result.zstd_bytes <= result.msgpack_bytes
    Dictionary.from_bytes(data, dict_id=1)  # loads as a server would load it


def test_too_few_samples_is_a_clear_error() -> None:
    with pytest.raises(TrainingError, match="at least 50"):
        evaluate(bodies([{"n": n} for n in range(10)]))


def test_the_command_writes_a_dictionary_the_server_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = tmp_path / "sample.jsonl"
    sample.write_text("\n".join(feed_lines(1000)) + "\n")
    output = tmp_path / "quotes.dict"
    assert main(["dict", "train", str(sample), "--size", "4096", "-o", str(output)]) == 0
    out = capsys.readouterr().out
    assert "zstd + dictionary" in out
    assert "saves" in out
    assert 0 < len(output.read_bytes()) <= 4096
    from tickwire.settings import load

    class Args:
        dictionary = str(output)

    assert load(Args(), environ={}).dictionary == str(output)  # type: ignore[arg-type]
    assert main(["dict", "train", str(tmp_path / "missing.jsonl")]) == 1
    assert "No such file" in capsys.readouterr().err


async def test_recording_a_live_topic() -> None:
    hub = Hub()
    config = ServerConfig(shutdown_timeout=1)
    async with tickwire.open_server(hub, "127.0.0.1", 0, config=config) as server:
        async with trio.open_nursery() as nursery:

            async def publish() -> None:
                # Bounded: the recorder stops it after 60, whenever its subscription began.
                for n in range(5000):
                    hub.publish_nowait(f"trades.S{n % 3}", {"n": n, "price": 100 + n % 7})
                    await trio.sleep(0.001)

            with trio.fail_after(20):
                results: list[tuple[list[object], int]] = []

                async def recorder() -> None:
                    url = f"ws://127.0.0.1:{server.port}/"
                    results.append(await record(url, ["trades.*"], count=60, duration=15))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(recorder)
                nursery.start_soon(publish)
    payloads, skipped = results[0]
    assert len(payloads) >= 60
    assert skipped == 0
    assert all(isinstance(p, dict) and "price" in p for p in payloads)
