"""docs/PROTOCOL.md §10: the worked examples are what the implementation produces."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tickwire.config import Limits
from tickwire.sansio import events
from tickwire.sansio.codec import decode_json, encode_json
from tickwire.sansio.compression import DictionaryInfo
from tickwire.sansio.negotiation import MSGPACK_ZSTD, Negotiated
from tickwire.sansio.session import decode_message, encode_message

DOC = Path(__file__).parent.parent / "docs" / "PROTOCOL.md"
EXAMPLE = re.compile(r"^event:\s+(.+)\n(message|zstd|json):\s+(.+)$", re.MULTILINE)
NAMESPACE: dict[str, Any] = {**vars(events), "DictionaryInfo": DictionaryInfo}


def examples() -> list[tuple[str, str, str]]:
    found = [m.groups() for m in EXAMPLE.finditer(DOC.read_text())]
    assert len(found) >= 12, "the worked examples went missing from PROTOCOL.md"
    return found  # type: ignore[return-value]


@pytest.mark.parametrize(("source", "form", "wire"), examples())
def test_10_worked_example(source: str, form: str, wire: str) -> None:
    event = eval(source, NAMESPACE)  # the document's own text, in the repository
    if form == "json":
        assert encode_json(event) == wire
        assert decode_json(wire, Limits()) == event
        return
    message = bytes.fromhex(wire)
    negotiated = Negotiated.of(MSGPACK_ZSTD)
    assert decode_message(message, negotiated=negotiated, limits=Limits()) == event
    if form == "message":
        assert encode_message(event) == message
