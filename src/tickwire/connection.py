"""One server connection: the trio driver of a sans-I/O WebSocket and a session.

Imports: trio, socket, tickwire.sansio, tickwire.broadcast, tickwire.auth, tickwire.config.

Theory of operation. The protocol lives in pure objects: :class:`ServerWebSocket` (handshake,
frames, control frames, the heartbeat's timing, on wsproto's public API) and
:class:`~tickwire.sansio.Session` (tickwire's messages). This module moves bytes between
them and a trio stream, with as few tasks as the moment needs:

- the **reader** is the connection's own task (the server's handler): it reads under one
  deadline, the earliest of the heartbeat's (ping due, pong late, idle) and the
  credentials' (AUTH not sent in time, expiry), applies the rate limits, feeds the session
  and answers. An idle connection is this one task, blocked in ``receive_some``;
- a **writer** task exists only while a backlog does (an outbox with frames, a tail owed,
  held table deltas, a bandwidth cap's pause, a graceful goodbye): it takes the outbox's
  frames, writes all that accumulated in one write bounded by ``send_timeout``, and ends
  when nothing is left. It runs in the server's connection nursery, beside the reader
  (no nursery of its own per connection), catches its own failures, and the reader waits
  for it before the close;
- everything else is written **directly** from the task that produced it (the publisher's,
  for a broadcast), with a synchronous non-blocking ``send`` when the socket has room: the
  hub frames a broadcast once per variant (servers send unmasked frames, so the same bytes
  go to every subscriber). What the socket does not take becomes the tail (see
  :class:`WebSocket`), which control frames queue behind and the writer finishes. Inside
  a :meth:`Hub.burst() <tickwire.broadcast.Hub.burst>` the frames are **corked**: kept,
  and written in one ``send`` per connection when the burst ends.

When the connection ends (its close code chosen by whoever ended it first), the writer is
cancelled, the subscriptions are removed, and the closing handshake runs bounded in time.
A bug in this connection closes it with 1011 and never reaches another connection.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Callable
from typing import Any

import trio

from tickwire.auth import AuthenticationError, Principal, pattern_covers, seconds_until
from tickwire.broadcast import (
    DuplicateKey,
    Hub,
    Overloaded,
    TooManyTopics,
    Topic,
    pattern_matches,
)
from tickwire.config import ServerConfig
from tickwire.errors import BackplaneUnavailable, InvalidValue, RemoteProtocolError, ValueTooLarge
from tickwire.sansio.admission import RateLimiter, RateVerdict, Throttle
from tickwire.sansio.events import (
    Ack,
    Auth,
    Data,
    DictData,
    DictRequest,
    Error,
    ErrorCode,
    Event,
    Gap,
    Hello,
    Outcome,
    Position,
    Publish,
    Resync,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from tickwire.sansio.fanout import Outbox, Overflow
from tickwire.sansio.framing import frame
from tickwire.sansio.negotiation import Negotiated
from tickwire.sansio.requests import Credentials, SubscribeOptions, subscribe_options
from tickwire.sansio.session import Role, Session
from tickwire.sansio.table import Changes, encode_changes
from tickwire.sansio.websocket import Closed, Heartbeat, Message, ServerWebSocket, State
from tickwire.statistics import ServerCounters

__all__ = ["ServerConnection", "WebSocket", "close_handshake"]

log = logging.getLogger("tickwire.server")

CLOSE_TIMEOUT = 2.0  # seconds a close handshake may take before the stream is just closed
RECEIVE_BYTES = 65536  # the most one read takes
CORK_BYTES = 65536  # the most a burst keeps for one connection before writing it


class WebSocket:
    """The trio side of one server WebSocket: a :class:`ServerWebSocket` over a trio stream,
    and the one write path every byte of the connection takes.

    ``tail`` holds bytes committed to the wire but not yet written: the rest of a frame that
    a direct write could not finish, and control frames (pongs, pings, the close) queued
    behind it. Whoever writes next writes the tail first, so no frame ever interleaves with a
    half-written one. ``sending`` is true while a task waits in ``send_all``; no direct
    write may start then.

    ``sock`` is a second Python socket object on the stream's descriptor, for the
    synchronous non-blocking ``send`` of the fast path (portable: no ``os.write``); it is
    detached (never closed) before the stream closes, and is None for TLS and in-memory
    streams, which take the writer's path.
    """

    __slots__ = ("core", "sending", "sock", "stream", "tail", "writes")

    def __init__(self, stream: trio.abc.Stream, config: ServerConfig) -> None:
        self.core = ServerWebSocket(
            max_message_bytes=config.limits.max_message_bytes,
            max_fragments=config.max_fragments,
            heartbeat=Heartbeat(
                config.heartbeat_interval, config.heartbeat_timeout, config.idle_timeout
            ),
        )
        self.stream = stream
        self.tail = b""
        self.sending = False
        self.writes = 0  # sends to the socket (writes per message: what corking saves)
        self.sock: socket.socket | None = None
        if isinstance(stream, trio.SocketStream):
            inner = stream.socket
            self.sock = socket.socket(inner.family, inner.type, inner.proto, inner.fileno())

    def detach(self) -> None:
        """Give up the descriptor (idempotent): from now on only the stream owns it."""
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.detach()

    async def receive(self) -> bytes | None:
        """The next bytes from the peer; None when the stream ended or broke."""
        try:
            data = await self.stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        return bytes(data) or None

    def write_nowait(self, data: bytes) -> int:
        """Write what the socket takes now, without waiting, if nobody else is sending.

        Returns the bytes written (the rest becomes the tail), or -1 when a direct write is
        not possible now (the caller queues *data* instead).

        Raises:
            OSError: the connection is broken.
        """
        sock = self.sock
        if sock is None or self.tail or self.sending:
            return -1
        try:
            sent = sock.send(data)
        except BlockingIOError:
            return -1
        self.writes += 1
        if sent < len(data):
            self.tail = data[sent:]
        return sent

    def push(self, data: bytes) -> bool:
        """Commit *data* (control frames) to the wire after whatever is owed: written now as
        far as the socket takes it, the rest kept in the tail. Returns whether a tail is owed
        (a writer must finish it).

        Raises:
            OSError: the connection is broken.
        """
        if self.write_nowait(data) < 0:
            self.tail += data
        return bool(self.tail)

    async def send_all(self, data: bytes = b"") -> None:
        """Write the tail, then *data*, waiting for room as needed (the caller bounds it).

        On a socket, a cancelled write leaves exactly what was not written in the tail, so
        the stream stays whole: the close frame can still follow it. On other streams a
        cancelled ``send_all`` may have written part of a frame (the caller then drops the
        stream).

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: the stream is gone.
        """
        self.sending = True
        try:
            if self.sock is None:
                while self.tail:  # control frames may join it while we wait
                    tail, self.tail = self.tail, b""
                    await self.stream.send_all(tail)
                if data:
                    await self.stream.send_all(data)
                return
            if self.tail:
                data, self.tail = self.tail + data, b""
            while data:
                await self._send_socket(data)
                data, self.tail = self.tail, b""  # control frames that came meanwhile
        finally:
            self.sending = False

    async def _send_socket(self, data: bytes) -> None:
        """Write *data* to the socket, waiting for room. Cancelled, the part not written
        goes back to the front of the tail."""
        sock = self.sock
        assert sock is not None
        view, offset = memoryview(data), 0
        try:
            while offset < len(data):
                try:
                    offset += sock.send(view[offset:])
                    self.writes += 1
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
                except OSError as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc
        finally:
            view.release()
            if offset < len(data):
                self.tail = data[offset:] + self.tail

    async def aclose(self) -> None:
        """Close the stream at once (no close frame)."""
        self.detach()
        await trio.aclose_forcefully(self.stream)


async def close_handshake(ws: WebSocket, code: int, reason: str, timeout: float) -> None:
    """Send the close frame (if the connection is still open), write what is owed and wait
    for the peer's answer, all within *timeout* seconds; the stream stays open."""
    core = ws.core
    core.close(code, reason)
    with trio.move_on_after(timeout):
        data = core.data_to_send()
        try:
            await ws.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        while core.state is State.CLOSING:  # our close is out: read until its answer
            received = await ws.receive()
            core.receive_data(received, trio.current_time())
            while core.events_received():
                pass


class ServerConnection:
    """One accepted client: its session, outbox and tasks. Created by the server."""

    # Thousands of these stay open at once, most of them idle: no per-instance dict.
    __slots__ = (
        "_authorize",
        "_close",
        "_closed",
        "_cork",
        "_cork_bytes",
        "_cork_count",
        "_cork_since",
        "_created",
        "_credentials",
        "_custom",
        "_drained",
        "_ended",
        "_going_away",
        "_interrupted",
        "_latency",
        "_nursery",
        "_options",
        "_pongs",
        "_rate",
        "_scope",
        "_subscriptions",
        "_throttle",
        "_verify_token",
        "_wake",
        "_writer_done",
        "_writer_scope",
        "_writing",
        "bytes_in",
        "bytes_out",
        "config",
        "counters",
        "echo",
        "hub",
        "id",
        "messages_in",
        "messages_out",
        "outbox",
        "remote",
        "session",
        "variant",
        "ws",
    )

    def __init__(
        self,
        ws: WebSocket,
        *,
        hub: Hub,
        config: ServerConfig,
        negotiated: Negotiated,
        principal: Any = None,
        authorize: Any = None,
        verify_token: Callable[[str], Any] | None = None,
        auth_pending: bool = False,
        remote: str = "",
        send_bytes_per_second: float | None = None,
        counters: ServerCounters | None = None,
        echo: bool = False,
    ) -> None:
        self.id = os.urandom(6).hex()
        self.echo = echo  # the opt-in echo endpoint (ServerConfig.echo_path): no session
        self.counters = counters or ServerCounters()
        self._latency = hub.publish_to_send
        self.ws = ws
        self.hub = hub
        self.config = config
        self.remote = remote
        self._authorize = authorize
        self._verify_token = verify_token
        self._nursery: trio.Nursery | None = None  # where a writer starts, while running
        self._scope: trio.CancelScope | None = None  # the reader's, while it reads
        self._writing = False  # whether a writer task runs (or is about to)
        self._writer_scope: trio.CancelScope | None = None
        self._writer_done: trio.Event | None = None  # run() waits for the writer to end
        now = trio.current_time()
        self._credentials = (
            Credentials.pending(now, config.auth_timeout)
            if auth_pending
            else Credentials.authenticated(principal, now, _expires_in(principal))
        )
        self.variant = negotiated  # what the hub encodes for it
        self.session = Session(
            Role.SERVER,
            negotiated,
            limits=config.limits,
            compression=hub.compression,
            dictionaries=hub.dictionaries,
            compressor=hub.compressor,
        )
        self.outbox = Outbox(
            max_bytes=config.outbox_max_bytes, max_items=config.outbox_max_messages
        )
        # Made when first waited for: most connections never wait for either.
        self._wake: trio.Event | None = None  # the writer, holding deltas, waits for more
        self._drained: trio.Event | None = None  # a publisher waits for room
        self._interrupted = False  # a write was cut off: the stream may end mid-frame
        self._close: tuple[int, str] | None = None
        self._going_away: tuple[int, str] | None = None
        caps = [
            c
            for c in (
                config.send_bytes_per_second,
                send_bytes_per_second,
                getattr(principal, "send_bytes_per_second", None),
            )
            if c is not None
        ]
        self._throttle = Throttle(min(caps), config.send_burst_bytes) if caps else None
        self._rate = RateLimiter(
            messages_per_second=config.messages_per_second,
            bytes_per_second=config.bytes_per_second,
            burst_seconds=config.rate_burst_seconds,
            max_strikes=config.rate_limit_strikes,
        )
        self._subscriptions: dict[str, int] = {}
        self._created = 0  # topics this connection's requests created
        # Subscription options, by request id and then by topic id.
        self._options: dict[int, SubscribeOptions] = {}
        self._custom: dict[int, SubscribeOptions] = {}
        self._pongs = 0  # the heartbeat's pongs already counted in the RTT histogram
        # What a Hub.burst() keeps for its end: frames, their bytes, how many were
        # published (and the first one when), for the publish-to-send histogram.
        self._cork: list[bytes] | None = None
        self._cork_bytes = self._cork_count = 0
        self._cork_since: float | None = None
        self._closed: trio.Event | None = None  # see closed
        self._ended = False
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0

    # -- what the hub calls -------------------------------------------------------------

    def deliver_nowait(
        self,
        framed: bytes,
        *,
        topic_id: int = 0,
        first: int = 0,
        last: int = 0,
        overflow: Overflow | None = None,
        delta: Changes | None = None,
        optional: bool = False,
        published_at: float | None = None,
    ) -> bool:
        """Send one framed message now if the socket takes it, else queue it under the
        topic's overflow policy (a control message, *overflow* None, is never dropped).

        A subscription's own policy replaces the topic's; a rate-limited subscription holds
        table deltas to merge; an *optional* message is skipped if anything is queued.
        *published_at* (trio's clock) comes back with a queued message when the writer
        sends it, for the publish-to-send histogram.

        Returns:
            Whether it was written at once (the hub counts those in the histogram).
        """
        outbox = self.outbox
        if outbox.overflowed or self._close is not None:
            return False
        if overflow is not None:
            custom = self._custom.get(topic_id)
            if custom is not None:
                overflow = custom.policy or overflow
                interval = custom.interval
                if interval is not None and delta is not None:
                    outbox.hold(
                        topic_id, first, last, delta, interval=interval, now=trio.current_time()
                    )
                    self._kick()
                    return False
            if delta is not None and outbox.has_slot(topic_id):
                # Being conflated: this delta merges too, never overtaking the merged set.
                outbox.offer(
                    framed,
                    topic_id=topic_id,
                    first=first,
                    last=last,
                    overflow=overflow,
                    delta=delta,
                )
                self._kick()
                return False
        elif optional and (outbox.busy() or self.ws.tail or self._cork is not None):
            return False
        throttle = self._throttle
        if not outbox.busy() and (
            throttle is None or throttle.allows(trio.current_time(), len(framed))
        ):
            if self.hub.corking and self.ws.sock is not None:
                self._corked(framed, published_at)  # a Hub.burst(): written at its end
                return False
            # Nothing queued: write straight away from here, without waking the writer.
            try:
                sent = self.ws.write_nowait(framed)
            except OSError:
                self.finish(1006, "connection lost")
                return False
            if sent >= 0:
                if throttle is not None:
                    throttle.spend(trio.current_time(), len(framed))
                self.messages_out += 1
                self.bytes_out += sent
                if sent < len(framed):
                    self._kick()  # a writer finishes the frame
                return True
        outbox.offer(
            framed,
            topic_id=topic_id,
            first=first,
            last=last,
            overflow=overflow,
            delta=delta,
            stamp=published_at,
        )
        self._kick()
        return False

    def _corked(self, framed: bytes, published_at: float | None) -> None:
        """Keep *framed* for the end of the hub's burst (at most CORK_BYTES: beyond, what is
        kept goes out now)."""
        cork = self._cork
        if cork is None:
            self._cork = cork = []
            self._cork_bytes = self._cork_count = 0
            self._cork_since = None
            self.hub.cork(self)
        cork.append(framed)
        self._cork_bytes += len(framed)
        self.messages_out += 1
        if published_at is not None:
            self._cork_count += 1
            if self._cork_since is None:
                self._cork_since = published_at
        if self._throttle is not None:
            self._throttle.spend(trio.current_time(), len(framed))
        if self._cork_bytes >= CORK_BYTES:
            self.uncork()

    def uncork(self) -> None:
        """Write what a burst kept, in one ``send`` if the socket takes it (the rest is the
        tail, which the writer finishes: it is behind what is owed, in order)."""
        cork = self._cork
        if cork is None:
            return
        self._cork = None
        if self._close is not None:
            return
        data = cork[0] if len(cork) == 1 else b"".join(cork)
        ws = self.ws
        try:
            sent = ws.write_nowait(data)
        except OSError:
            self.finish(1006, "connection lost")
            return
        if sent < 0:  # the socket is full, or a writer is in the middle of a write
            ws.tail += data
            sent = 0
        self.bytes_out += sent
        if ws.tail:
            self._kick()
        if self._cork_since is not None:
            self._latency.observe(trio.current_time() - self._cork_since, self._cork_count)

    @property
    def close_code(self) -> int | None:
        """The close code this connection ended (or is ending) with, None while open."""
        return None if self._close is None else self._close[0]

    def has_room(self) -> bool:
        outbox, config = self.outbox, self.config
        return (
            outbox.queued_bytes <= config.outbox_max_bytes // 2
            and len(outbox) <= config.outbox_max_messages // 2
        )

    async def wait_for_room(self) -> None:
        while not self.has_room() and self._close is None:
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()

    def slow_consumer(self) -> None:
        self.finish(4000, "slow consumer: no room in time")

    def failed(self, exc: BaseException) -> None:
        """Delivering to this connection raised (the hub logged and counted it): 1011."""
        self.finish(1011, "internal error")

    def may_receive(self, topic: Topic) -> bool:
        """Whether this connection's principal may be sent *topic*: asked for every concrete
        topic a pattern matches, so that a pattern never reaches past a permission."""
        return self._allowed("subscribe", topic.name)

    def busy(self) -> bool:
        return self.outbox.busy() or bool(self.ws.tail) or self._cork is not None

    def topic_added(self, topic: Topic, request_id: int) -> None:
        options = self._options.get(request_id)
        if options is not None:
            self._custom[topic.topic_id] = options.for_topic(topic.table is not None)
        self._announce(request_id, topic, Outcome.NEW, topic.sent_offset)

    def topic_restarted(self, topic: Topic, request_id: int) -> None:
        self.counters.recoveries["not_recovered"] += 1
        self._announce(request_id, topic, Outcome.NOT_RECOVERED, topic.sent_offset)

    def _announce(
        self, request_id: int, topic: Topic, outcome: Outcome, offset: int, note: str | None = None
    ) -> None:
        """SUBSCRIBED (with a table's schema), then a table's SNAPSHOT unless recovered."""
        self.send(
            Subscribed(
                request_id,
                topic.topic_id,
                topic.name,
                topic.epoch,
                offset,
                outcome,
                topic.info,
                note,
            )
        )
        if topic.table is not None and outcome is not Outcome.RECOVERED:
            for part in self.hub.snapshot(topic, self.variant):
                self.deliver_nowait(part)

    # -- sending ------------------------------------------------------------------------

    def send(self, event: Event) -> None:
        """Encode, frame and queue one message for this connection only."""
        self.deliver_nowait(frame(self.session.send(event)))

    def go_away(self, code: int = 1001, reason: str = "") -> None:
        """Close after the outbox drains (graceful shutdown)."""
        if self._going_away is None:
            self._going_away = (code, reason)
            self._kick()

    def finish(self, code: int, reason: str = "") -> None:
        """End the connection now with close *code* (the first reason given wins)."""
        if self._close is None:
            self._close = (code, reason)
        if self._drained is not None:  # a publisher waiting for room need not wait any more
            self._drained.set()
        if self._scope is not None:
            self._scope.cancel()
        if self._writer_scope is not None:
            self._writer_scope.cancel()

    @property
    def principal(self) -> Any:
        """Who the client is (what the authenticator returned; None while AUTH is pending)."""
        return self._credentials.principal

    def _kick(self) -> None:
        """A backlog exists: wake the writer, or start one."""
        if self._writing:
            if self._wake is not None:
                self._wake.set()
        elif self._nursery is not None and self._close is None:
            self._writing = True
            self._nursery.start_soon(self._writer)

    # -- the tasks ----------------------------------------------------------------------

    async def run(self, hello: Hello | None, nursery: trio.Nursery) -> None:
        """Serve the connection until it ends; never raises but Cancelled.

        The calling task is the reader (an idle connection is this one task, blocked in
        ``receive_some``); a writer runs in *nursery* (the server's connection nursery) only
        while there is a backlog, and ends before this returns. An echo connection gets no
        HELLO (*hello* None) and is no subscriber of the hub."""
        ws = self.ws
        core = ws.core
        now = trio.current_time()
        core.start(now)
        self._nursery = nursery
        if hello is not None:
            self.send(hello)
            self.hub.attach(self)
        del hello  # not kept for the connection's lifetime
        try:
            if self.busy() or self.outbox.pending():
                self._kick()
            while self._close is None:
                # One scope for reading, ended by finish() or by the earliest deadline (the
                # heartbeat's, the credentials'); never while a message is being handled.
                with trio.CancelScope(deadline=self._deadline()) as scope:
                    self._scope = scope
                    while True:
                        try:  # inline, not a method: one coroutine frame less when idle
                            data = bytes(await ws.stream.receive_some(RECEIVE_BYTES)) or None
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            data = None
                        scope.deadline = math.inf
                        now = trio.current_time()
                        core.receive_data(data, now)
                        await self._process(now)
                        if self._close is not None:
                            break
                        scope.deadline = self._deadline()
                self._scope = None
                if self._close is None:  # a deadline came first
                    now = trio.current_time()
                    ended = self._credentials.due(now)
                    if ended is not None:
                        self.finish(*ended)
                        break
                    core.tick(now, os.urandom(4))
                    await self._process(now)
        except Exception:  # a bug in this connection: it alone goes
            self._crashed("")
        finally:
            self._scope = None
            self._nursery = None  # no writer starts any more
            with trio.CancelScope(shield=True):
                if self._writing:  # it ends with the connection, and before the close
                    if self._writer_scope is not None:
                        self._writer_scope.cancel()
                    self._writer_done = done = trio.Event()
                    await done.wait()
                self.hub.remove(self)
                self._subscriptions.clear()
                await self._close_websocket()
            self._ended = True
            if self._closed is not None:
                self._closed.set()

    def _crashed(self, where: str) -> None:
        """A bug in this connection (the exception being handled): log it, close with 1011."""
        log.exception(
            "connection %s failed%s; closing it with 1011",
            self.id,
            where,
            extra={"conn": self.id, "remote": self.remote},
        )
        self.finish(1011, "internal error")

    @property
    def closed(self) -> trio.Event:
        """Set once the connection has ended (made when first asked for: most never are)."""
        if self._closed is None:
            self._closed = trio.Event()
            if self._ended:
                self._closed.set()
        return self._closed

    async def _close_websocket(self) -> None:
        code, reason = self._close or (1000, "")
        if not self._interrupted:
            # Our close frame (none if one crossed already), after what is owed; then the
            # peer's answer, bounded in time.
            await close_handshake(self.ws, code, reason, CLOSE_TIMEOUT)
        # else a write was cut off mid-frame: no close frame can follow it.
        await self.ws.aclose()
        log.debug(
            "connection %s closed: %s %s",
            self.id,
            code,
            reason,
            extra={"conn": self.id, "remote": self.remote, "code": code},
        )

    def _deadline(self) -> float:
        return min(self.ws.core.deadline(), self._credentials.deadline())

    async def _process(self, now: float) -> None:
        """Act on what the protocol object parsed, a message at a time: what it says first
        (a pong for a ping read before the message ends, the close for a bad frame) goes
        first, then the answer to the message."""
        core = self.ws.core
        while True:
            events = core.events_received()
            self._send_control()
            for event in events:
                if isinstance(event, Message):
                    await self._received(event.data, now)
                elif isinstance(event, Closed):
                    self.finish(event.code, event.reason)
                if self._close is not None:
                    break
            self._send_control()
            if self._close is not None or not events:
                break
        if core.pongs != self._pongs:
            self._pongs = core.pongs
            if core.rtt is not None:
                self.counters.heartbeat_rtt.observe(core.rtt)

    def _send_control(self) -> None:
        """Write the control frames the protocol object has to say (pongs, pings, close)."""
        data = self.ws.core.data_to_send()
        if not data:
            return
        try:
            owed = self.ws.push(data)
        except OSError:
            self.finish(1006, "connection lost")
            return
        if owed:
            self._kick()

    async def _received(self, message: bytes | str, now: float) -> None:
        """One whole message from the peer: rate limits, the session, the request."""
        self.messages_in += 1
        self.bytes_in += len(message)
        verdict = self._rate.check(now, len(message))
        if verdict is not RateVerdict.OK:
            if verdict is RateVerdict.WARN and not self.echo:
                self.send(Error(None, ErrorCode.RATE_LIMITED, "rate limit exceeded"))
            elif verdict is RateVerdict.CLOSE:
                self.finish(1008, "rate limit exceeded")
            return
        if self.echo:
            self.deliver_nowait(frame(message))  # text as text, binary as binary
            return
        try:
            self.session.receive_message(message)
        except RemoteProtocolError as exc:
            self.finish(exc.close_code, str(exc))
            return
        for event in self.session.events_received():
            await self._handle(event)
            if self._close is not None:
                return

    async def _writer(self) -> None:
        """Send the backlog until there is none or the connection ends: a task in the
        server's connection nursery, so it catches its own failures (1011, this connection
        alone), and :meth:`run` waits for it."""
        try:
            with trio.CancelScope() as self._writer_scope:
                await self._write_backlog()
        except Exception:
            self._crashed(" in its writer")
        finally:
            self._writing = False
            self._writer_scope = None
            if self._writer_done is not None:
                self._writer_done.set()

    async def _write_backlog(self) -> None:
        ws, outbox = self.ws, self.outbox
        while self._close is None:
            if self._cork is not None:  # older than anything queued after it
                self.uncork()
            if outbox.overflowed:
                self.finish(4000, "slow consumer: outbox full")
                return
            if not ws.core.open:
                return  # closing: the reader ends the connection
            now = trio.current_time()
            if not outbox.pending(now):
                if ws.tail:
                    await self._write(b"")
                    continue
                if self._going_away is not None:
                    if not outbox.pending():
                        self.finish(*self._going_away)
                        return
                    now = math.inf  # send what rate limits hold back before leaving
                elif not outbox.pending():
                    return  # no backlog left: no writer either
                else:  # only held table deltas, due later
                    due = outbox.next_due()
                    self._wake = wake = trio.Event()
                    with trio.move_on_at(math.inf if due is None else due):
                        await wake.wait()
                    self._wake = None
                    continue
            budget = math.inf
            throttle = self._throttle
            if throttle is not None and now != math.inf:
                delay = throttle.delay(now)
                if delay > 0:  # over the bandwidth cap: let the outbox's policies work
                    await trio.sleep(delay)
                    continue
                budget = max(1.0, throttle.available(now))
            taken = outbox.take(now, max_bytes=budget)
            # Offsets dropped come before anything still queued of their topics (§4.9).
            frames = [frame(self.session.send(Gap(*gap))) for gap in taken.gaps]
            frames += taken.frames
            for merged in taken.conflated:  # encoded for this subscriber alone
                event = Data(merged.topic_id, merged.last, encode_changes(merged.changes))
                frames.append(frame(self.session.send(event)))
            self.messages_out += len(frames)
            data = b"".join(frames)
            if throttle is not None:
                throttle.spend(trio.current_time(), len(data))
            await self._write(data)
            if taken.oldest is not None:
                self._latency.observe(trio.current_time() - taken.oldest)
            if self._drained is not None:
                self._drained.set()
                self._drained = None

    async def _write(self, data: bytes) -> None:
        """Write the tail and *data* within ``send_timeout`` (else 4000, and the stream is
        dropped: the peer is not reading, a close frame would wait behind the rest)."""
        ws = self.ws
        owed = len(ws.tail)
        with trio.move_on_after(self.config.send_timeout) as scope:
            # Until send_all returns; cancelled, it stays so (a socket's tail stays whole).
            self._interrupted = ws.sock is None
            try:
                await ws.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.finish(1006, "connection lost")
                return
            self._interrupted = False
        if scope.cancelled_caught:
            self._close = self._close or (4000, "slow consumer: send timed out")
            await ws.aclose()
            self.finish(*self._close)
            return
        self.bytes_out += owed + len(data)  # the tail's frame was counted as a message

    def _authenticate(self, event: Auth) -> None:
        if self._verify_token is None:
            self.send(Ack(event.request_id))  # nothing to check on this server
            return
        credentials = self._credentials
        try:
            principal = self._verify_token(event.token)
        except AuthenticationError as exc:
            self.finish(*credentials.refuse(str(exc)))
            return
        ended = credentials.refresh(principal, trio.current_time(), _expires_in(principal))
        if ended is not None:
            self.finish(*ended)
            return
        self.send(Ack(event.request_id))
        self._revoke()

    def _revoke(self) -> None:
        """After new credentials: end every subscription that the principal may no longer
        hold, or that delivers a topic it may no longer receive (UNSUBSCRIBED 403, §4.5)."""
        ended: dict[str, str] = {}
        for pattern in self.hub.patterns_of(self):
            if not self._allowed("subscribe", pattern):
                ended[pattern] = f"forbidden: {pattern}"
        for topic in self.hub.topics_of(self):
            if self.may_receive(topic):
                continue
            self.hub.withdraw(self, topic)
            for pattern in self.hub.patterns_of(self):
                if pattern_matches(pattern, topic.name):
                    ended.setdefault(pattern, f"forbidden: {topic.name}")
        for pattern, text in ended.items():
            self.hub.unsubscribe(self, pattern)
            self._subscriptions.pop(pattern, None)
            self.send(Unsubscribed(None, pattern, ErrorCode.FORBIDDEN, text))

    # -- requests -----------------------------------------------------------------------

    def _allowed(self, action: str, topic: str) -> bool:
        """Whether the principal may *action* ("subscribe", "publish") on *topic* (a name,
        or for a subscription's first check its pattern): the server's ``authorize``
        hook decides; else a :class:`Principal`'s permissions; else anyone may subscribe,
        and publish only where ``ServerConfig.client_publish`` says."""
        if self._authorize is not None:
            return bool(self._authorize(self.principal, action, topic))
        if isinstance(self.principal, Principal):
            return self.principal.allows(action, topic)
        if action == "publish":
            return any(pattern_covers(p, topic) for p in self.config.client_publish)
        return True

    async def _handle(self, event: Event) -> None:
        if isinstance(event, Auth):
            self._authenticate(event)
        elif not self._credentials.may_request:
            self.finish(*self._credentials.refuse("authenticate first: send AUTH"))
        elif isinstance(event, Subscribe):
            await self._subscribe(event)
        elif isinstance(event, Unsubscribe):
            if self.hub.unsubscribe(self, event.pattern):
                self._subscriptions.pop(event.pattern, None)
                self.send(Unsubscribed(event.request_id, event.pattern))
            else:
                self.send(Error(event.request_id, ErrorCode.NOT_FOUND, "not subscribed"))
        elif isinstance(event, Publish):
            await self._publish(event)
        elif isinstance(event, DictRequest):
            if self.hub.dictionaries.is_loaded(event.dict_id):
                data = self.hub.dictionaries.get(event.dict_id).data
                self.send(DictData(event.dict_id, data))
            else:
                self.send(Error(None, ErrorCode.NOT_FOUND, f"no dictionary {event.dict_id}"))
        elif isinstance(event, Resync):
            await self._resync(event)

    async def _subscribe(self, event: Subscribe) -> None:
        request_id = event.request_id
        options = subscribe_options(event.options)
        if isinstance(options, str):
            self.send(Error(request_id, ErrorCode.BAD_REQUEST, options))
            return
        if len(self._subscriptions) >= self.config.max_subscriptions:
            self.send(Error(request_id, ErrorCode.TOO_LARGE, "too many subscriptions"))
            return
        if not self._allowed("subscribe", event.pattern):
            self.send(Error(request_id, ErrorCode.FORBIDDEN, f"forbidden: {event.pattern}"))
            return
        exact = "*" not in event.pattern.split(".")
        if event.resume is not None and not exact:
            message = "resume needs an exact topic name; use RESYNC per topic"
            self.send(Error(request_id, ErrorCode.BAD_REQUEST, message))
            return
        backplane = self.hub.backplane
        if backplane is not None and not await self._join(request_id, event.pattern):
            return
        if exact and options.interval is not None:
            topic = self.hub.topic_by_name(event.pattern)
            if topic is not None and topic.table is None:
                message = "max_rate applies to table topics; this is a stream"
                self.send(Error(request_id, ErrorCode.BAD_REQUEST, message))
                return
        creates = exact and self.hub.topic_by_name(event.pattern) is None
        existing = self.hub.topic_by_name(event.pattern) if exact else None
        unknown = exact and (existing is None or self.hub.unknown(existing))
        if unknown and self.config.unknown_topics == "refuse":
            self.send(Error(request_id, ErrorCode.NOT_FOUND, self._unknown_note(event.pattern)))
            return
        if creates and self._created >= self.config.max_topics_per_connection:
            message = (
                "this connection has created the most topics it may; subscribe to existing ones"
            )
            self.send(Error(request_id, ErrorCode.RATE_LIMITED, message))
            return
        if (
            creates
            and backplane is not None
            and not await self._join(request_id, event.pattern, create=True)
        ):
            return
        if backplane is not None and event.resume is not None:
            await self._prefetch(event.pattern, event.resume)
        try:
            topics = self.hub.subscribe(self, event.pattern, request_id, client=True)
        except TooManyTopics as exc:
            self.send(Error(request_id, ErrorCode.UNAVAILABLE, str(exc)))
            return
        except ValueError as exc:
            code = ErrorCode.CONFLICT if "already" in str(exc) else ErrorCode.BAD_REQUEST
            self.send(Error(request_id, code, str(exc)))
            return
        self._created += creates
        self._subscriptions[event.pattern] = request_id
        if options.custom:
            self._options[request_id] = options
        for topic in topics:
            if options.custom:
                self._custom[topic.topic_id] = options.for_topic(topic.table is not None)
            hint = self._unknown_note(topic.name) if self.hub.unknown(topic) else None
            if event.resume is None:
                self._announce(request_id, topic, Outcome.NEW, topic.sent_offset, hint)
            else:
                self._recover(request_id, topic, event.resume, hint)
        self.send(Ack(request_id))  # §4.4: the initial matches are complete

    async def _join(self, request_id: int, pattern: str, *, create: bool = False) -> bool:
        """Follow *pattern*'s topics through the backplane; False (and ERROR 503) when it
        is unavailable."""
        try:
            await self.hub.join(pattern, create=create, client=True)
        except BackplaneUnavailable as exc:
            self.send(Error(request_id, ErrorCode.UNAVAILABLE, str(exc)))
            return False
        except TooManyTopics as exc:
            self.send(Error(request_id, ErrorCode.UNAVAILABLE, str(exc)))
            return False
        return True

    async def _prefetch(self, name: str, resume: Position) -> None:
        """Before a resume: the missed messages this server does not hold, from the
        backplane's shared history (a client that was served by another server)."""
        topic = self.hub.topic_by_name(name)
        backplane = self.hub.backplane
        if backplane is None or topic is None or topic.table is not None:
            return
        if resume.epoch == topic.epoch and resume.offset < topic.offset:
            oldest = topic.history[0].offset if topic.history else topic.offset + 1
            if oldest > resume.offset + 1:
                with contextlib.suppress(BackplaneUnavailable):
                    await backplane.prefetch(topic, resume.offset)

    def _unknown_note(self, name: str) -> str:
        """What SUBSCRIBED (or ERROR 404) says of a topic that does not exist."""
        hint = self.hub.similar(name)
        note = f"no topic {name!r} on this server"
        if hint:
            note += f"; did you mean {' or '.join(repr(h) for h in hint)}?"
        if self.config.unknown_topics == "wait":
            note += " (subscribed: it is delivered if it appears)"
        return note

    def _recover(
        self, request_id: int, topic: Topic, resume: Position, note: str | None = None
    ) -> None:
        """SUBSCRIBED with the recovery outcome, then the replay, in order (§4.4); a table
        that cannot recover gets a SNAPSHOT."""
        outcome, offset, replay = topic.recover(resume, self.hub.clock())
        self.counters.recoveries[outcome.name.lower()] += 1
        self._announce(request_id, topic, outcome, offset, note)
        for entry in replay:
            self.deliver_nowait(
                self.hub.frames(topic, entry, self.variant),
                topic_id=topic.topic_id,
                first=entry.offset,
                last=entry.offset,
                overflow=topic.config.overflow,
                delta=entry.delta,
            )

    async def _resync(self, event: Resync) -> None:
        topic = self.hub.topic_by_id(event.topic_id)
        if topic is None or self not in topic.subscribers:
            self.send(Error(event.request_id, ErrorCode.NOT_FOUND, "not subscribed to that topic"))
            return
        if event.offset is None and topic.table is not None:
            self.counters.recoveries["snapshot"] += 1
            self._announce(event.request_id, topic, Outcome.NOT_RECOVERED, topic.offset)
            return
        offset = topic.offset if event.offset is None else event.offset
        if self.hub.backplane is not None:
            await self._prefetch(topic.name, Position(topic.epoch, offset))
            if self not in topic.subscribers:  # unsubscribed meanwhile
                return
        self._recover(event.request_id, topic, Position(topic.epoch, offset))

    async def _publish(self, event: Publish) -> None:
        request_id = event.request_id
        if not self._allowed("publish", event.topic):
            self.send(Error(request_id, ErrorCode.FORBIDDEN, f"forbidden: {event.topic}"))
            return
        topic = self.hub.topic_by_name(event.topic)
        if topic is not None and topic.table is not None:
            message = f"{event.topic} is a table topic: only the server changes it"
            self.send(Error(request_id, ErrorCode.BAD_REQUEST, message))
            return
        size = self.session.last_decoded_bytes
        if size > self.config.max_publish_bytes:
            message = (
                f"a PUBLISH of {size} bytes; this server takes {self.config.max_publish_bytes}"
            )
            self.send(Error(request_id, ErrorCode.TOO_LARGE, message))
            return
        if topic is None and self._created >= self.config.max_topics_per_connection:
            message = "this connection has created the most topics it may"
            self.send(Error(request_id, ErrorCode.RATE_LIMITED, message))
            return
        try:
            if self.hub.backplane is None:
                offset = self.hub.publish_nowait(
                    event.topic, event.payload, key=event.key, client=True
                )
            else:  # acknowledged once Redis has it
                offset = await self.hub.publish(event.topic, event.payload, key=event.key)
        except BackplaneUnavailable as exc:
            self.send(Error(request_id, ErrorCode.UNAVAILABLE, str(exc)))
            return
        except DuplicateKey as exc:
            self.send(Error(request_id, ErrorCode.CONFLICT, str(exc)))
            return
        except (Overloaded, TooManyTopics) as exc:
            self.send(Error(request_id, ErrorCode.UNAVAILABLE, str(exc)))
            return
        except ValueTooLarge as exc:
            self.send(Error(request_id, ErrorCode.TOO_LARGE, str(exc)))
            return
        except (InvalidValue, ValueError, TypeError) as exc:
            self.send(Error(request_id, ErrorCode.BAD_REQUEST, str(exc)))
            return
        self._created += topic is None
        if request_id is not None:
            published = self.hub.topic_by_name(event.topic)
            if published is not None:
                topic_id = published.topic_id
            elif self.hub.backplane is not None:
                topic_id = self.hub.backplane.topic_id(event.topic) or 0
            else:
                topic_id = 0
            self.send(Ack(request_id, topic_id, offset))


def _expires_in(principal: Any) -> float | None:
    """Seconds the credentials of *principal* have left (its ``expires_at``, Unix time)."""
    expires_at = getattr(principal, "expires_at", None)
    return None if expires_at is None else seconds_until(expires_at)
