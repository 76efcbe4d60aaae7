"""The server end of one WebSocket connection, free of I/O: handshake, frames in, control
frames out, and the heartbeat's timing.

Imports: attrs, wsproto (its public names only), tickwire.errors.

Theory of operation. :class:`ServerWebSocket` is the connection's protocol state, driven by
the bytes the trio layer reads (:meth:`~ServerWebSocket.receive_data`) and the clock it
passes in (:meth:`~ServerWebSocket.tick`); what it has to say goes out through
:meth:`~ServerWebSocket.data_to_send`. It never reads a clock, never waits and never owns a
socket, so synchronous tests drive every state (as wsproto's and h11's own tests do).

States, in order::

    HANDSHAKE --accept()--> OPEN --close() or a protocol error--> CLOSING --peer's close--> CLOSED
        |                    |                                                          ^
        +--reject()----------+--peer's close (answered at once) or the stream ends ------+

- HANDSHAKE: the request head goes to wsproto's ``H11Handshake``; a :class:`Request` comes
  out, answered by :meth:`accept` or :meth:`reject`. Accepting keeps wsproto's frame-level
  ``Connection`` and drops the handshake object (h11's buffers with it).
- OPEN: wsproto parses frames (masking, opcodes, reserved bits, UTF-8 of text, control-frame
  rules, close codes). Here: messages are assembled within ``max_message_bytes`` and
  ``max_fragments`` (1009 otherwise, before the bytes are kept); a ping is answered with a
  pong; a pong ends the heartbeat's wait; the peer's close is answered with the same code.
  Parsing is lazy, a message at a time (:meth:`~ServerWebSocket.events_received`), so that
  the application answers a message before a bad frame read with it fails the connection.
- Data frames do not pass through here: a server's frames are unmasked, so the broadcast
  layer frames a message once (:mod:`tickwire.sansio.framing`) and the trio layer writes the
  same bytes to every subscriber. :attr:`ServerWebSocket.open` says whether it still may.
- CLOSING: our close frame is out (or queued); what arrives is parsed only for the peer's
  close frame; the trio layer bounds this state in time.
- CLOSED: nothing more is sent; :attr:`ServerWebSocket.close_code` says how it ended.

The heartbeat (:class:`Heartbeat`) is timing only: when to ping, when a missing pong or a
silent peer ends the connection. :meth:`ServerWebSocket.deadline` is the next moment that
:meth:`ServerWebSocket.tick` must be called, so the one task that reads the connection also
keeps its heartbeat, with no task of its own.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Final

import attrs
import wsproto.events as ws_events
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError as WsLocalProtocolError
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from tickwire.errors import LocalProtocolError

__all__ = [
    "ABNORMAL_CLOSURE",
    "HEARTBEAT_TIMEOUT",
    "IDLE_TIMEOUT",
    "MESSAGE_TOO_BIG",
    "Closed",
    "Heartbeat",
    "Message",
    "Request",
    "ServerWebSocket",
    "State",
]

ABNORMAL_CLOSURE: Final = 1006  # RFC 6455 §7.4.1: the stream ended without a close frame
MESSAGE_TOO_BIG: Final = 1009
HEARTBEAT_TIMEOUT: Final = 4007  # docs/PROTOCOL.md §6
IDLE_TIMEOUT: Final = 4006  # docs/PROTOCOL.md §6
MAX_REASON_BYTES: Final = 123  # a close frame's payload is at most 125 bytes, 2 for the code


class State(enum.Enum):
    """Where a :class:`ServerWebSocket` is (see the module's theory of operation)."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@attrs.frozen
class Request:
    """A client's opening handshake: its target, headers (names lowercased, ``Host``
    included) and offered subprotocols, in the order offered."""

    target: str
    headers: tuple[tuple[str, str], ...]
    subprotocols: tuple[str, ...]


@attrs.frozen
class Message:
    """One whole data message: ``bytes`` from binary frames, ``str`` from text frames."""

    data: bytes | str


@attrs.frozen
class Closed:
    """The connection ended for the application: the peer closed (its *code*), a protocol
    error or a limit closed it (the code sent), or the stream ended (1006). Comes once."""

    code: int
    reason: str


@attrs.define(eq=False)
class Heartbeat:
    """When to ping, and when silence ends a connection; pure timing on a clock given in.

    Args:
        interval: seconds from the last pong (or the start) to the next ping.
        timeout: seconds a ping may wait for its pong (then 4007).
        idle_timeout: seconds without a data message from the peer (then 4006); None for
            no limit (pongs keep a connection alive, not busy).
    """

    interval: float
    timeout: float
    idle_timeout: float | None = None
    _next_ping: float = attrs.field(init=False, default=math.inf)
    _ping: tuple[bytes, float] | None = attrs.field(init=False, default=None)
    _last_heard: float = attrs.field(init=False, default=0.0)

    def __attrs_post_init__(self) -> None:
        if not self.interval > 0 or not self.timeout > 0:
            raise ValueError("heartbeat interval and timeout must be positive")
        if self.idle_timeout is not None and not self.idle_timeout > 0:
            raise ValueError("idle_timeout must be positive or None")

    def start(self, now: float) -> None:
        """The connection opened at *now*."""
        self._last_heard = now
        self._next_ping = now + self.interval
        self._ping = None

    def heard(self, now: float) -> None:
        """A data message arrived at *now*."""
        self._last_heard = now

    def deadline(self) -> float:
        """The next moment :meth:`due` may have something to say."""
        wake = self._next_ping if self._ping is None else self._ping[1] + self.timeout
        if self.idle_timeout is not None:
            wake = min(wake, self._last_heard + self.idle_timeout)
        return wake

    def due(self, now: float, payload: bytes) -> bytes | int | None:
        """What is due at *now*: the payload of a ping to send (*payload*, remembered), a
        close code (:data:`IDLE_TIMEOUT`, :data:`HEARTBEAT_TIMEOUT`), or None."""
        if self.idle_timeout is not None and now >= self._last_heard + self.idle_timeout:
            return IDLE_TIMEOUT
        if self._ping is not None:
            return HEARTBEAT_TIMEOUT if now >= self._ping[1] + self.timeout else None
        if now >= self._next_ping:
            self._ping = (bytes(payload), now)
            return self._ping[0]
        return None

    def pong(self, payload: bytes, now: float) -> float | None:
        """A pong arrived at *now*: the round trip in seconds when it answers the ping in
        flight (the next ping is then due an interval later), else None (unsolicited)."""
        if self._ping is None or bytes(payload) != self._ping[0]:
            return None
        rtt = now - self._ping[1]
        self._ping = None
        self._next_ping = now + self.interval
        return rtt


@attrs.define(eq=False)
class ServerWebSocket:
    """The server end of one WebSocket connection (see the module's theory of operation).

    Args:
        max_message_bytes: the largest message taken, counted as it arrives (1009 beyond).
        max_fragments: the most frames one message may come in (1009 beyond).
        heartbeat: the pings' timing; None for none.
    """

    max_message_bytes: int
    max_fragments: int = 64
    heartbeat: Heartbeat | None = None
    _handshake: H11Handshake | None = attrs.field(init=False)
    _connection: Connection | None = attrs.field(init=False, default=None)
    _state: State = attrs.field(init=False, default=State.HANDSHAKE)
    _out: bytearray = attrs.field(init=False, factory=bytearray)
    _events: list[Request | Message | Closed] = attrs.field(init=False, factory=list)
    _parts: list[bytes | str] = attrs.field(init=False, factory=list)
    _size: int = attrs.field(init=False, default=0)
    _frames: int = attrs.field(init=False, default=0)
    _trailing: bytes = attrs.field(init=False, default=b"")
    close_code: int | None = attrs.field(init=False, default=None)
    close_reason: str = attrs.field(init=False, default="")
    clean: bool = attrs.field(init=False, default=False)  # both close frames crossed
    rtt: float | None = attrs.field(init=False, default=None)  # the last heartbeat's
    pongs: int = attrs.field(init=False, default=0)  # pongs that answered our pings
    _now: float = attrs.field(init=False, default=0.0)  # when the bytes being parsed came
    _head: bytearray = attrs.field(init=False, factory=bytearray)
    _requested: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self._handshake = H11Handshake(ConnectionType.SERVER)

    @property
    def state(self) -> State:
        return self._state

    @property
    def open(self) -> bool:
        """Whether data frames may be sent now."""
        return self._state is State.OPEN

    # -- the handshake --------------------------------------------------------------------

    def accept(
        self, subprotocol: str | None = None, extra_headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """Answer the :class:`Request` with 101 and *subprotocol* (one the client offered).

        Raises:
            LocalProtocolError: not in HANDSHAKE with a request, or *subprotocol* was not
                offered.
        """
        handshake = self._expect_request()
        try:
            self._out += handshake.send(
                ws_events.AcceptConnection(
                    subprotocol=subprotocol, extra_headers=list(extra_headers)
                )
            )
        except WsLocalProtocolError as exc:
            raise LocalProtocolError(str(exc)) from exc
        self._connection = handshake.connection
        self._handshake = None  # h11's connection and buffers go with it
        self._state = State.OPEN
        trailing, self._trailing = self._trailing, b""
        if trailing:  # frames sent before our answer
            self._feed(trailing, self._now)

    def reject(
        self,
        status: int,
        body: bytes = b"",
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Refuse the handshake with HTTP *status*, *headers* and *body*; then CLOSED.

        Raises:
            LocalProtocolError: not in HANDSHAKE.
        """
        if self._state is not State.HANDSHAKE or self._handshake is None:
            raise LocalProtocolError(f"cannot reject in state {self._state.value}")
        handshake = self._handshake
        all_headers = [(b"content-type", b"text/plain; charset=utf-8"), *headers]
        all_headers.append((b"content-length", str(len(body)).encode()))
        self._out += handshake.send(
            ws_events.RejectConnection(status_code=status, headers=all_headers, has_body=True)
        )
        self._out += handshake.send(ws_events.RejectData(data=body, body_finished=True))
        self._handshake = None
        self._ended(status, body.decode("utf-8", "replace"), clean=False)

    def _expect_request(self) -> H11Handshake:
        if self._state is not State.HANDSHAKE or self._handshake is None:
            raise LocalProtocolError(f"cannot accept in state {self._state.value}")
        if not self._requested or self._handshake.state is not ConnectionState.CONNECTING:
            raise LocalProtocolError("no handshake request to accept")
        return self._handshake

    # -- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes | None, now: float = 0.0) -> None:
        """Feed bytes read from the stream at *now* (the caller's clock, for the
        heartbeat); None: the stream ended. Read what they caused with
        :meth:`events_received`; answers wait in :meth:`data_to_send`."""
        if self._state is State.CLOSED:
            return
        if data is None:
            if self._connection is not None:
                self._connection.receive_data(None)  # wsproto's CLOSED, for its own sake
            self._ended(ABNORMAL_CLOSURE, "connection lost", clean=False)
            return
        if self._state is State.HANDSHAKE:
            self._now = now
            self._receive_head(data)
            return
        self._feed(data, now)

    def _receive_head(self, data: bytes) -> None:
        handshake = self._handshake
        assert handshake is not None
        if self._requested:
            self._trailing += data  # frames sent before our answer: read once accepted
            return
        # The head goes to h11, what follows it (a client that does not wait for the 101)
        # is kept here: h11 would keep it to itself.
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            head = bytes(self._head)
            self._head.clear()
        else:
            head, self._trailing = bytes(self._head[: end + 4]), bytes(self._head[end + 4 :])
            self._head = bytearray()
            self._requested = True
        try:
            handshake.receive_data(head)
            requests = [e for e in handshake.events() if isinstance(e, ws_events.Request)]
        except WsRemoteProtocolError as exc:
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, ws_events.RejectConnection) else 400
            extra = list(hint.headers) if isinstance(hint, ws_events.RejectConnection) else []
            self.reject(status, str(exc).encode(), extra)
            return
        for request in requests:
            headers = [("host", request.host)]
            headers += [
                (bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1"))
                for k, v in request.extra_headers
            ]
            self._events.append(
                Request(request.target, tuple(headers), tuple(request.subprotocols))
            )

    def _feed(self, data: bytes, now: float) -> None:
        connection = self._connection
        assert connection is not None
        if connection.state not in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
            return
        connection.receive_data(data)  # parsed by events_received(), a message at a time
        self._now = now

    def _parse(self) -> None:
        """Parse what was fed, up to and including the next whole message."""
        connection, now = self._connection, self._now
        if connection is None or self._state is State.CLOSED:
            return
        for event in connection.events():  # wsproto keeps the rest parsed or buffered
            if isinstance(event, ws_events.Message):
                if self._state is State.OPEN and self._message(event, now):
                    return
            elif isinstance(event, ws_events.Ping):
                if self._state is State.OPEN:
                    self._out += connection.send(event.response())
            elif isinstance(event, ws_events.Pong):
                if self.heartbeat is not None:
                    rtt = self.heartbeat.pong(bytes(event.payload), now)
                    if rtt is not None:
                        self.rtt = rtt
                        self.pongs += 1
            elif isinstance(event, ws_events.CloseConnection):
                self._close_event(connection, event)
                if self.state is State.CLOSED:  # the property: _close_event changed it
                    return

    def _message(self, event: ws_events.Message, now: float) -> bool:  # type: ignore[type-arg]
        """Add a frame's data; True when it completed a message (then in the events)."""
        data = event.data
        self._size += len(data)
        if event.frame_finished:
            self._frames += 1
        if self._size > self.max_message_bytes:
            self._fail(MESSAGE_TOO_BIG, f"message exceeds {self.max_message_bytes} bytes")
            return False
        if self._frames > self.max_fragments and not event.message_finished:
            self._fail(MESSAGE_TOO_BIG, f"more than {self.max_fragments} fragments in one message")
            return False
        if event.message_finished and not self._parts:
            whole: bytes | str = bytes(data) if isinstance(data, bytearray) else data
        else:
            self._parts.append(bytes(data) if isinstance(data, bytearray) else data)
            if not event.message_finished:
                return False
            whole = "".join(self._parts) if isinstance(data, str) else b"".join(self._parts)  # type: ignore[arg-type]
            self._parts = []
        self._size = self._frames = 0
        if self.heartbeat is not None:
            self.heartbeat.heard(now)
        self._events.append(Message(whole))
        return True

    def _close_event(self, connection: Connection, event: ws_events.CloseConnection) -> None:
        code, reason = event.code, event.reason or ""
        if connection.state is ConnectionState.REMOTE_CLOSING:
            # The peer's close: answer with its code (RFC 6455 §5.5.1), then CLOSED.
            self._out += connection.send(event.response())
            self._ended(code, reason, clean=True)
        elif connection.state is ConnectionState.CLOSED:
            # The answer to our close.
            self._ended(self.close_code or code, self.close_reason or reason, clean=True)
        else:
            # Still OPEN: not a close frame but wsproto's report of a protocol error
            # (1002, or 1007 for bad UTF-8). Say so to the peer with its code.
            self._fail(code, reason)

    def events_received(self) -> list[Request | Message | Closed]:
        """What the data fed produced, in order, up to and including the next message: call
        again until it returns nothing, sending the answer to a message in between. So a
        frame that fails the connection, read together with the message before it, closes
        it only after that message has been answered (Autobahn's 3.2, 4.1.3, 5.15, ...)."""
        self._parse()
        events, self._events = self._events, []
        return events

    # -- sending --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The bytes this object wants written (handshake answers and control frames), in
        order; written before any later data frame."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with *code*: the close frame is queued and the state
        becomes CLOSING (the peer's answer then makes it CLOSED). Does nothing once
        closing; the first code given is the one reported."""
        if self._state is State.HANDSHAKE:
            raise LocalProtocolError("accept or reject the handshake first")
        if self._state is not State.OPEN:
            return
        self._fail(code, reason)

    def _fail(self, code: int, reason: str) -> None:
        connection = self._connection
        assert connection is not None
        text = _truncated(reason)
        self.close_code, self.close_reason = code, reason
        self._state = State.CLOSING
        self._parts, self._size, self._frames = [], 0, 0
        if connection.state is ConnectionState.OPEN:
            self._out += connection.send(ws_events.CloseConnection(code=code, reason=text))
        self._events.append(Closed(code, reason))

    def _ended(self, code: int, reason: str, *, clean: bool) -> None:
        was_open = self._state in (State.OPEN, State.HANDSHAKE)
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.clean = clean
        self._state = State.CLOSED
        if was_open:
            self._events.append(Closed(self.close_code, self.close_reason))

    # -- the heartbeat --------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Start the heartbeat's clock (the connection opened at *now*)."""
        if self.heartbeat is not None:
            self.heartbeat.start(now)

    def deadline(self) -> float:
        """When :meth:`tick` must next be called (math.inf: never)."""
        if self.heartbeat is None or self._state is not State.OPEN:
            return math.inf
        return self.heartbeat.deadline()

    def tick(self, now: float, payload: bytes) -> None:
        """Let the heartbeat act at *now*: queue a ping carrying *payload* (random bytes
        from the caller, at most 125), or close with 4007 (no pong) or 4006 (idle)."""
        if self.heartbeat is None or self._state is not State.OPEN:
            return
        due = self.heartbeat.due(now, payload)
        if isinstance(due, int):
            text = "heartbeat timeout" if due == HEARTBEAT_TIMEOUT else "idle timeout"
            self._fail(due, text)
        elif due is not None:
            assert self._connection is not None
            self._out += self._connection.send(ws_events.Ping(payload=due))


def _truncated(reason: str) -> str:
    """*reason* cut to what fits in a close frame, on a character boundary."""
    data = reason.encode("utf-8")
    if len(data) <= MAX_REASON_BYTES:
        return reason
    return data[:MAX_REASON_BYTES].decode("utf-8", "ignore")
