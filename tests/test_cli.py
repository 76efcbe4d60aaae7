"""The tickwire command line (what exists of it so far)."""

from __future__ import annotations

import json

import pytest

from tickwire.cli import main


def test_decode_explains_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "00 94 07 05 2a a1 78"]) == 0
    out = capsys.readouterr().out
    assert "plain" in out
    assert '"kind": "DATA"' in out
    assert '"payload": "x"' in out


@pytest.mark.parametrize(("hex_", "message"), [("zz", "not hexadecimal"), ("80", "reserved")])
def test_decode_reports_bad_input(
    hex_: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["decode", hex_]) in (1, 2)
    assert message in capsys.readouterr().err


def test_feed_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["feed", "ticker", "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["type"] in ("quote", "trade") for line in lines] == [True] * 3
    assert main(["feed", "game", "--count", "2", "--entities", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(json.loads(lines[0])["snapshot"]) == 5
    assert json.loads(lines[2])["tick"] == 2
