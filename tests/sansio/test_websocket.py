"""tickwire.sansio.websocket, driven synchronously against wsproto's own client (h11-style
pairs): every state and every way out of it, with the bytes each side really sends."""

from __future__ import annotations

from typing import Any

import pytest
import wsproto
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import (
    Request as WsRequest,
)

from tickwire.errors import LocalProtocolError
from tickwire.sansio.websocket import (
    Closed,
    Heartbeat,
    Message,
    Request,
    ServerWebSocket,
    State,
)

HEAD = WsRequest(host="127.0.0.1", target="/feed?x=1", subprotocols=["a", "b"])


def drain(server: ServerWebSocket) -> list[Request | Message | Closed]:
    """Every event the data fed produced (events_received() gives one message at a time)."""
    events, more = [], server.events_received()
    while more:
        events += more
        more = server.events_received()
    return events


class Pair:
    """A wsproto client and a ServerWebSocket, with the bytes between them moved by hand."""

    def __init__(self, server: ServerWebSocket | None = None) -> None:
        self.client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.server = server or ServerWebSocket(max_message_bytes=1000, max_fragments=4)

    def to_server(self, *events: object, now: float = 0.0) -> list[Request | Message | Closed]:
        data = b"".join(self.client.send(e) for e in events)  # type: ignore[arg-type]
        self.server.receive_data(data, now)
        return drain(self.server)

    def to_client(self) -> list[Any]:
        self.client.receive_data(self.server.data_to_send())
        return list(self.client.events())

    def open(self, subprotocol: str | None = "b") -> None:
        (request,) = self.to_server(HEAD)
        assert isinstance(request, Request)
        self.server.accept(subprotocol)
        (accepted,) = self.to_client()
        assert isinstance(accepted, AcceptConnection)


def test_a_handshake_gives_the_request_and_is_accepted_with_a_subprotocol() -> None:
    pair = Pair()
    (request,) = pair.to_server(HEAD)
    assert request == Request(
        "/feed?x=1",
        request.headers,  # type: ignore[union-attr]
        ("a", "b"),
    )
    assert ("host", "127.0.0.1") in request.headers  # type: ignore[union-attr]
    assert pair.server.state is State.HANDSHAKE
    pair.server.accept("b")
    (accepted,) = pair.to_client()
    assert isinstance(accepted, AcceptConnection)
    assert accepted.subprotocol == "b"
    assert pair.server.state is State.OPEN
    assert pair.server.open


def test_a_subprotocol_not_offered_cannot_be_accepted() -> None:
    pair = Pair()
    pair.to_server(HEAD)
    with pytest.raises(LocalProtocolError):
        pair.server.accept("c")
    assert pair.server.state is State.HANDSHAKE


def test_nothing_can_be_accepted_before_a_request_nor_closed_during_the_handshake() -> None:
    server = ServerWebSocket(max_message_bytes=10)
    with pytest.raises(LocalProtocolError):
        server.accept()
    with pytest.raises(LocalProtocolError):
        server.close(1000)


def test_a_rejection_sends_the_status_headers_and_body_then_closed() -> None:
    pair = Pair()
    pair.to_server(HEAD)
    pair.server.reject(503, b"server full", [(b"retry-after", b"3")])
    events = pair.to_client()
    assert isinstance(events[0], RejectConnection)
    assert events[0].status_code == 503
    assert (b"retry-after", b"3") in events[0].headers
    body = b"".join(e.data for e in events if isinstance(e, RejectData))
    assert body == b"server full"
    assert pair.server.state is State.CLOSED
    assert pair.server.close_code == 503
    with pytest.raises(LocalProtocolError):
        pair.server.reject(400)


def test_a_request_that_is_not_an_upgrade_gets_400() -> None:
    server = ServerWebSocket(max_message_bytes=10)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    (closed,) = drain(server)
    assert isinstance(closed, Closed)
    assert closed.code == 400
    assert server.data_to_send().startswith(b"HTTP/1.1 400 ")
    assert server.state is State.CLOSED


def test_a_426_names_the_version_wanted() -> None:
    server = ServerWebSocket(max_message_bytes=10)
    head = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    )
    server.receive_data(head)
    answer = server.data_to_send()
    assert answer.startswith(b"HTTP/1.1 426 ")
    assert b"sec-websocket-version: 13" in answer.lower()


def test_binary_and_text_messages_whole_and_in_fragments() -> None:
    pair = Pair()
    pair.open()
    assert pair.to_server(BytesMessage(b"abc")) == [Message(b"abc")]
    assert pair.to_server(TextMessage("héllo")) == [Message("héllo")]
    parts = pair.to_server(
        BytesMessage(b"ab", message_finished=False),
        Ping(b"p"),  # a control frame between fragments
        BytesMessage(b"cd", message_finished=False),
        BytesMessage(b"e"),
    )
    assert parts == [Message(b"abcde")]
    assert pair.to_server(TextMessage("x", message_finished=False), TextMessage("yz")) == [
        Message("xyz")
    ]
    assert [type(e) for e in pair.to_client()] == [Pong]


def test_a_message_larger_than_the_limit_is_1009_before_it_is_kept() -> None:
    pair = Pair()
    pair.open()
    events = pair.to_server(BytesMessage(b"x" * 600, message_finished=False))
    assert events == []
    events = pair.to_server(BytesMessage(b"x" * 600, message_finished=False))
    assert events == [Closed(1009, "message exceeds 1000 bytes")]
    assert pair.server.state is State.CLOSING
    assert not pair.server.open
    # What the peer still sends is not delivered; its close frame ends the handshake.
    assert pair.to_server(BytesMessage(b"more")) == []
    (close,) = pair.to_client()
    assert isinstance(close, CloseConnection)
    assert close.code == 1009
    assert pair.to_server(close.response()) == []
    assert pair.server.state is State.CLOSED
    assert pair.server.clean
    assert pair.server.close_code == 1009


def test_too_many_fragments_is_1009() -> None:
    pair = Pair()
    pair.open()
    events = pair.to_server(*(BytesMessage(b"x", message_finished=False) for _ in range(5)))
    assert events == [Closed(1009, "more than 4 fragments in one message")]


def test_the_peer_s_close_is_answered_with_its_code() -> None:
    pair = Pair()
    pair.open()
    assert pair.to_server(CloseConnection(4321, "bye")) == [Closed(4321, "bye")]
    assert pair.server.state is State.CLOSED
    assert pair.server.clean
    (answer,) = pair.to_client()
    assert isinstance(answer, CloseConnection)
    assert answer.code == 4321
    pair.server.close(1000)  # already closed: nothing more
    assert pair.server.data_to_send() == b""


def test_our_close_then_the_peer_s_answer() -> None:
    pair = Pair()
    pair.open()
    pair.server.close(1001, "going away")
    assert drain(pair.server) == [Closed(1001, "going away")]
    assert pair.server.state is State.CLOSING
    pair.server.close(1011)  # the first code stays
    (close,) = pair.to_client()
    assert isinstance(close, CloseConnection)
    assert close.code == 1001
    assert pair.to_server(close.response()) == []
    assert pair.server.state is State.CLOSED
    assert pair.server.close_code == 1001


def test_a_long_close_reason_is_cut_to_fit_the_frame() -> None:
    pair = Pair()
    pair.open()
    pair.server.close(1008, "é" * 100)
    (close,) = pair.to_client()
    assert isinstance(close, CloseConnection)
    assert len(close.reason.encode()) <= 123
    assert set(close.reason) == {"é"}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(b"\x83\x80\x00\x00\x00\x00", 1002, id="reserved opcode 3, masked"),
        pytest.param(b"\x81\x82\x00\x00\x00\x00\xc3\x28", 1007, id="text, invalid UTF-8"),
        pytest.param(b"\x82\x01x", 1002, id="an unmasked client frame"),
    ],
)
def test_a_bad_frame_closes_with_wsproto_s_code(data: bytes, code: int) -> None:
    pair = Pair()
    pair.open()
    pair.server.receive_data(data)
    assert drain(pair.server) == [Closed(code, pair.server.close_reason)]
    (close,) = pair.to_client()
    assert isinstance(close, CloseConnection)
    assert close.code == code


def test_the_stream_ending_is_1006_once() -> None:
    pair = Pair()
    pair.open()
    pair.server.receive_data(None)
    assert drain(pair.server) == [Closed(1006, "connection lost")]
    assert pair.server.state is State.CLOSED
    assert not pair.server.clean
    pair.server.receive_data(None)
    pair.server.receive_data(b"x")
    assert drain(pair.server) == []


def test_frames_that_came_with_the_request_are_read_once_accepted() -> None:
    pair = Pair()
    head = pair.client.send(HEAD)
    pair.server.receive_data(head)
    (request,) = drain(pair.server)
    assert isinstance(request, Request)
    # A client that does not wait for the 101: its first frame, masked as a client's.
    early = wsproto.connection.Connection(wsproto.ConnectionType.CLIENT).send(BytesMessage(b"hi"))
    pair.server.receive_data(early)
    assert drain(pair.server) == []
    pair.server.accept("a")
    assert drain(pair.server) == [Message(b"hi")]


def _heartbeat_pair(idle: float | None = None) -> Pair:
    heartbeat = Heartbeat(interval=10.0, timeout=5.0, idle_timeout=idle)
    pair = Pair(ServerWebSocket(max_message_bytes=1000, heartbeat=heartbeat))
    pair.open()
    pair.server.start(100.0)
    return pair


def test_a_ping_at_the_interval_and_its_pong_gives_the_round_trip() -> None:
    pair = _heartbeat_pair()
    assert pair.server.deadline() == 110.0
    pair.server.tick(109.0, b"1234")
    assert pair.server.data_to_send() == b""  # not yet
    pair.server.tick(110.0, b"1234")
    (ping,) = pair.to_client()
    assert isinstance(ping, Ping)
    assert ping.payload == b"1234"
    assert pair.server.deadline() == 115.0  # the pong's deadline
    pair.to_server(Pong(b"other"), now=111.0)  # unsolicited: ignored
    assert pair.server.rtt is None
    pair.to_server(ping.response(), now=110.25)
    assert pair.server.rtt == 0.25
    assert pair.server.pongs == 1
    assert pair.server.deadline() == 120.25


def test_a_missing_pong_is_4007() -> None:
    pair = _heartbeat_pair()
    pair.server.tick(110.0, b"abcd")
    pair.server.tick(114.9, b"efgh")  # still waiting; no second ping
    (ping,) = pair.to_client()
    assert isinstance(ping, Ping)
    pair.server.tick(115.0, b"efgh")
    assert drain(pair.server) == [Closed(4007, "heartbeat timeout")]
    (close,) = pair.to_client()
    assert isinstance(close, CloseConnection)
    assert close.code == 4007
    assert pair.server.deadline() == float("inf")


def test_silence_beyond_the_idle_timeout_is_4006_and_a_message_resets_it() -> None:
    pair = _heartbeat_pair(idle=30.0)
    assert pair.server.deadline() == 110.0
    pair.server.tick(110.0, b"abcd")
    (ping,) = pair.to_client()
    pair.to_server(ping.response(), now=110.0)  # pongs do not count as activity
    pair.to_server(BytesMessage(b"x"), now=125.0)
    assert pair.server.deadline() == 120.0  # the next ping
    pair.server.tick(120.0, b"efgh")
    (ping,) = pair.to_client()
    pair.to_server(ping.response(), now=120.0)
    assert pair.server.deadline() == 130.0
    pair.server.tick(130.0, b"ijkl")
    (ping,) = pair.to_client()
    pair.to_server(ping.response(), now=130.0)
    assert pair.server.deadline() == 140.0
    pair.server.tick(140.0, b"mnop")
    pair.to_client()
    assert pair.server.deadline() == 145.0
    pair.server.tick(155.0, b"qrst")
    assert drain(pair.server) == [Closed(4006, "idle timeout")]


def test_heartbeat_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Heartbeat(interval=0, timeout=1)
    with pytest.raises(ValueError, match="idle_timeout"):
        Heartbeat(interval=1, timeout=1, idle_timeout=0)


def test_a_message_is_given_before_a_failure_read_with_it() -> None:
    pair = Pair()
    pair.open()
    message = pair.client.send(TextMessage("first"))
    pair.server.receive_data(message + b"\x83\x80\x00\x00\x00\x00")  # reserved opcode 3
    assert pair.server.events_received() == [Message("first")]
    assert pair.server.data_to_send() == b""  # not failed yet: the answer may go first
    (closed,) = pair.server.events_received()
    assert isinstance(closed, Closed)
    assert closed.code == 1002
    assert pair.server.events_received() == []
