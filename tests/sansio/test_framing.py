"""Server frames written once for everyone match what wsproto itself would send."""

from __future__ import annotations

import pytest
from wsproto.frame_protocol import FrameProtocol

from tickwire.sansio.framing import frame, frame_header


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_binary_frames_match_wsproto(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert frame(payload) == FrameProtocol(client=False, extensions=[]).send_data(payload, True)


def test_text_frames_match_wsproto() -> None:
    text = '[7,1,2,"é"]'
    assert frame(text) == FrameProtocol(client=False, extensions=[]).send_data(text, True)


def test_header_sizes() -> None:
    assert len(frame_header(125)) == 2
    assert len(frame_header(126)) == 4
    assert len(frame_header(65536)) == 10
