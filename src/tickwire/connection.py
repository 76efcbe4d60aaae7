"""One server connection: a nursery of reader, writer and heartbeat over trio-websocket.

Imports: trio, trio_websocket, wsproto, tickwire.sansio, tickwire.broadcast, tickwire.config.

Theory of operation. trio-websocket does the handshake, reads frames and answers pings; its
reader task runs in this connection's nursery. On top of it:

- the **reader** always drains trio-websocket's message queue (a full queue stops its
  reader, and with it the pongs), applies the rate limits, feeds the sans-I/O
  :class:`~tickwire.sansio.Session` and acts on the events;
- the **writer** owns every data message: it takes ready-made frames from the outbox and
  writes them straight to the byte stream under trio-websocket's own send lock, all that
  has accumulated in one write, each write bounded by ``send_timeout``. Servers send
  unmasked frames, so a broadcast frame is the same bytes for every subscriber;
- the writer also keeps the **heartbeat**: it pings at an interval, drops a peer whose
  pong is late and enforces the idle timeout (one task fewer on every connection, idle
  ones included).

When any of them ends or fails, the others are cancelled, the subscriptions are removed,
and the connection closes with the code that ended it (bounded in time). A bug in this
connection closes it with 1011 and never reaches another connection.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import trio
import trio_websocket
import wsproto
import wsproto.events
import wsproto.utilities
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, TextMessage

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
from tickwire.sansio.session import Role, Session
from tickwire.sansio.table import Changes, encode_changes
from tickwire.statistics import ServerCounters

__all__ = ["PrefixedStream", "ServerConnection", "WebSocket", "wrap_server_stream"]

log = logging.getLogger("tickwire.server")

MAX_RATE = 1000.0  # updates a second: the most a subscription's max_rate option may ask
_POLICIES = {p.value: p for p in Overflow}
CLOSE_TIMEOUT = 2.0  # seconds a close handshake may take before the stream is just closed


class WebSocket(trio_websocket.WebSocketConnection):
    """trio-websocket's connection, with a frame limit and a direct, non-waiting write path.

    ``_fd`` is the socket's file descriptor while the stream is open (None for TLS and
    in-memory streams, and from the moment the stream closes). ``_tail`` is the unsent rest
    of a frame that a direct write could not finish: every sender, trio-websocket's own
    (pongs, close frames) included, writes it first, under the send lock, so that no frame
    ever interleaves with a half-written one.
    """

    max_fragments = 64
    _fragments = 0
    _fd: int | None = None
    _tail = b""
    pong_received: Callable[[], None] | None = None  # the heartbeat's wake-up

    async def _handle_pong_event(self, event: wsproto.events.Pong) -> None:
        await super()._handle_pong_event(event)
        if self.pong_received is not None:
            self.pong_received()

    async def _send(self, event: wsproto.events.Event) -> None:
        # trio-websocket's _send, with the owed tail first.
        if (
            isinstance(event, wsproto.events.Ping | wsproto.events.Pong)
            and self._wsproto.state is not ConnectionState.OPEN
        ):
            return  # closing: a ping's answer is no longer allowed, and nobody waits for it
        data = self._wsproto.send(event)
        async with self._stream_lock:
            try:
                if self._tail:
                    tail, self._tail = self._tail, b""
                    await self._stream.send_all(tail)
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._abort_web_socket()
                assert self._close_reason is not None
                raise trio_websocket.ConnectionClosed(self._close_reason) from None

    async def _close_stream(self) -> None:
        self._fd = None  # never write to a descriptor number that may be reused
        await super()._close_stream()

    def write_nowait(self, data: bytes) -> int:
        """Write what the socket takes now, without waiting, if nobody else is sending.

        Returns the bytes written (the rest becomes the tail), or -1 when a direct write is
        not possible now (the caller queues *data* instead).

        Raises:
            OSError: the connection is broken.
        """
        # wsproto's state, read without its two property calls (this runs once per
        # subscriber per message; about 9% of a fan-out's CPU with 1,000 subscribers).
        connection = self._wsproto.connection
        if (
            self._fd is None
            or self._tail
            or connection is None
            or connection._state is not ConnectionState.OPEN
            or self._stream_lock.locked()
            or self._close_reason is not None
        ):
            return -1
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            return -1
        if sent < len(data):
            self._tail = data[sent:]
        return sent

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        if self._close_reason is not None:
            return  # closing: the rest of what came in one read is not read
        if event.frame_finished and not event.message_finished:
            self._fragments += 1
            if self._fragments > self.max_fragments:
                reason = f"more than {self.max_fragments} fragments in one message"
                self._message_size, self._message_parts = 0, []
                self._close_reason = trio_websocket.CloseReason(1009, reason)
                await self._send(CloseConnection(code=1009, reason=reason))
                await self._recv_channel.aclose()
                self._reader_running = False
                return
        elif event.message_finished:
            self._fragments = 0
        await super()._handle_message_event(event)

    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        if self._wsproto.state is ConnectionState.OPEN and self._close_reason is None:
            # Not a close frame from the peer: wsproto met a frame-level protocol error
            # (bad opcode, reserved bits, a masked... ) and reports it as a close. Say so to
            # the peer with the code it chose (1002, 1007) before the stream goes.
            self._close_reason = trio_websocket.CloseReason(event.code, event.reason or None)
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                reason = (event.reason or "")[:120]
                await self._send(CloseConnection(code=event.code, reason=reason))
        await super()._handle_close_connection_event(event)


class PrefixedStream(trio.abc.Stream):
    """A stream whose first received bytes are *prefix* (the request head the server read
    itself, §2), then the rest of *stream*; everything else goes to *stream*."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            if max_bytes is None or max_bytes >= len(self._prefix):
                data, self._prefix = self._prefix, b""
            else:
                data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def wrap_server_stream(
    nursery: trio.Nursery, stream: trio.abc.Stream, config: ServerConfig
) -> trio_websocket.WebSocketRequest:
    """Start a server WebSocket on *stream*; return the client's handshake request.

    What ``trio_websocket.wrap_server_stream`` does, with :class:`WebSocket` and the limits
    of *config*. Its reader task runs in *nursery*.
    """
    ws = WebSocket(
        stream,
        wsproto.WSConnection(wsproto.ConnectionType.SERVER),
        message_queue_size=4,
        max_message_size=config.limits.max_message_bytes,
    )
    ws.max_fragments = config.max_fragments
    inner = stream.stream if isinstance(stream, PrefixedStream) else stream
    if isinstance(inner, trio.SocketStream):
        ws._fd = inner.socket.fileno()
    nursery.start_soon(ws._reader_task)
    return await ws._get_request()


class ServerConnection:
    """One accepted client: its session, outbox and tasks. Created by the server."""

    # Thousands of these stay open at once, most of them idle: no per-instance dict.
    __slots__ = (
        "_auth_changed",
        "_auth_pending",
        "_authorize",
        "_close",
        "_created",
        "_custom",
        "_drained",
        "_expires",
        "_going_away",
        "_interrupted",
        "_last_heard",
        "_latency",
        "_next_ping",
        "_nursery",
        "_options",
        "_ping",
        "_rate",
        "_subscriptions",
        "_throttle",
        "_verify_token",
        "_wake",
        "_watching",
        "bytes_in",
        "bytes_out",
        "closed",
        "config",
        "counters",
        "hub",
        "id",
        "messages_in",
        "messages_out",
        "outbox",
        "principal",
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
    ) -> None:
        self.id = os.urandom(6).hex()
        self.counters = counters or ServerCounters()
        self._latency = hub.publish_to_send
        self.ws = ws
        self.hub = hub
        self.config = config
        self.principal = principal
        self.remote = remote
        self._authorize = authorize
        self._verify_token = verify_token
        self._auth_pending = auth_pending
        self._auth_changed = trio.Event()
        self._watching = False  # whether the credentials watcher task runs
        self._nursery: trio.Nursery | None = None
        self._expires: float | None = None  # on trio's clock
        self._set_principal(principal)
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
        self._wake = trio.Event()
        self._drained = trio.Event()
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
        # Subscription options, by request id and then by topic id: (policy, interval).
        self._options: dict[int, tuple[Overflow | None, float | None]] = {}
        self._custom: dict[int, tuple[Overflow | None, float | None]] = {}
        self._last_heard = trio.current_time()
        # The heartbeat, kept by the writer: when to ping next, and the ping in flight
        # (its pong's event, when it was sent).
        self._next_ping = self._last_heard + config.heartbeat_interval
        self._ping: tuple[trio.Event, float] | None = None
        ws.pong_received = self._pong
        self.closed = trio.Event()
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
                overflow = custom[0] or overflow
                interval = custom[1]
                if interval is not None and delta is not None:
                    outbox.hold(
                        topic_id, first, last, delta, interval=interval, now=trio.current_time()
                    )
                    self._wake.set()
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
                self._wake.set()
                return False
        elif optional and (outbox.busy() or self.ws._tail):
            return False
        throttle = self._throttle
        if not outbox.busy() and (
            throttle is None or throttle.allows(trio.current_time(), len(framed))
        ):
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
                    self._wake.set()  # the writer finishes the frame
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
        self._wake.set()
        return False

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
        return self.outbox.busy() or bool(self.ws._tail)

    def topic_added(self, topic: Topic, request_id: int) -> None:
        options = self._options.get(request_id)
        if options is not None:
            self._custom[topic.topic_id] = self._effective(options, topic)
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
            self._wake.set()

    def finish(self, code: int, reason: str = "") -> None:
        """End the connection now with close *code* (the first reason given wins)."""
        if self._close is None:
            self._close = (code, reason)
        self._drained.set()  # a publisher waiting for room need not wait any more
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _set_principal(self, principal: Any) -> None:
        self.principal = principal
        expires_at = getattr(principal, "expires_at", None)
        self._expires = (
            None if expires_at is None else trio.current_time() + seconds_until(expires_at)
        )
        self._auth_changed.set()
        self._auth_changed = trio.Event()
        if self._expires is not None and not self._watching and self._nursery is not None:
            # Credentials that expire arrived by AUTH: watch them from now on (an idle
            # connection without expiry runs no watcher task at all).
            self._watching = True
            self._nursery.start_soon(self._watch_credentials)

    # -- the tasks ----------------------------------------------------------------------

    async def run(self, hello: Hello) -> None:
        """Serve the connection until it ends; never raises but Cancelled."""
        self.send(hello)
        self.hub.attach(self)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reader)
                nursery.start_soon(self._writer)
                if self._auth_pending or self._expires is not None:
                    self._watching = True
                    nursery.start_soon(self._watch_credentials)
        except Exception:  # a bug in this connection: it alone goes
            log.exception(
                "connection %s failed; closing it with 1011",
                self.id,
                extra={"conn": self.id, "remote": self.remote},
            )
            self.finish(1011, "internal error")
        finally:
            self.hub.remove(self)
            self._subscriptions.clear()
            with trio.CancelScope(shield=True):
                await self._close_websocket()
            self.closed.set()

    async def _close_websocket(self) -> None:
        code, reason = self._close or (1000, "")
        # A close frame already went out or came in (trio-websocket closes with 1009 on a
        # message too large or too fragmented itself): a second one would be a protocol error.
        if not self._interrupted and self.ws.closed is None:
            with trio.move_on_after(CLOSE_TIMEOUT):
                # Closing already (a race with the peer's close): no second frame.
                with contextlib.suppress(wsproto.utilities.LocalProtocolError):
                    await self.ws.aclose(code, reason[:120])
        elif not self._interrupted:
            # The peer closed (or trio-websocket did): its reader is sending the answering
            # close frame; let it finish before the stream goes, or the peer waits for it.
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self.ws._close_handshake.wait()
        # else a write was cut off mid-frame: no close frame can follow it.
        await self.ws._close_stream()
        log.debug(
            "connection %s closed: %s %s",
            self.id,
            code,
            reason,
            extra={"conn": self.id, "remote": self.remote, "code": code},
        )

    async def _reader(self) -> None:
        try:
            while True:
                message = await self.ws.get_message()
                now = trio.current_time()
                self._last_heard = now
                self.messages_in += 1
                self.bytes_in += len(message)
                verdict = self._rate.check(now, len(message))
                if verdict is not RateVerdict.OK:
                    if verdict is RateVerdict.WARN:
                        self.send(Error(None, ErrorCode.RATE_LIMITED, "rate limit exceeded"))
                    elif verdict is RateVerdict.CLOSE:
                        self.finish(1008, "rate limit exceeded")
                    continue
                try:
                    self.session.receive_message(message)
                except RemoteProtocolError as exc:
                    self.finish(exc.close_code, str(exc))
                    return
                for event in self.session.events_received():
                    await self._handle(event)
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            # The peer closed, or trio-websocket closed (1009 on size or fragments).
            self.finish(reason.code if reason else 1006, (reason.reason or "") if reason else "")

    async def _writer(self) -> None:
        ws, outbox = self.ws, self.outbox
        while True:
            if outbox.overflowed:
                self.finish(4000, "slow consumer: outbox full")
                return
            now = trio.current_time()
            if self._ping is not None and now >= self._ping[1] + self.config.heartbeat_timeout:
                self.finish(4007, "heartbeat timeout")
                return
            if self._ping is None and now >= self._next_ping:
                if not await self._heartbeat(now):
                    return
                continue
            if not outbox.pending(now) and not ws._tail:
                if self._going_away is not None:
                    if not outbox.pending():
                        self.finish(*self._going_away)
                        return
                    now = math.inf  # send what rate limits hold back before leaving
                else:
                    self._wake = trio.Event()
                    with trio.move_on_at(self._next_wake(outbox.next_due())):
                        await self._wake.wait()
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
            self._drained.set()
            self._drained = trio.Event()

    async def _write(self, data: bytes) -> None:
        ws = self.ws
        if ws._wsproto.state is not ConnectionState.OPEN:
            self.finish(1000)
            return
        tail = b""
        with trio.move_on_after(self.config.send_timeout) as scope:
            async with ws._stream_lock:
                tail, ws._tail = ws._tail, b""
                self._interrupted = True  # until send_all returns: cancelled, it stays so
                try:
                    await ws._stream.send_all(tail + data if tail else data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.finish(1006, "connection lost")
                    return
                self._interrupted = False
        if scope.cancelled_caught:
            # A partial frame may be out: no close frame can follow. Drop the stream.
            self._close = self._close or (4000, "slow consumer: send timed out")
            await ws._close_stream()
            self.finish(*self._close)
            return
        self.bytes_out += len(tail) + len(data)  # the tail's frame was counted as a message

    def _next_wake(self, due: float | None) -> float:
        """When the idle writer must look again: a held delta, the next ping, or the
        deadline of the pong it waits for."""
        ping = (
            self._next_ping
            if self._ping is None
            else self._ping[1] + (self.config.heartbeat_timeout)
        )
        return min(ping, math.inf if due is None else due)

    async def _heartbeat(self, now: float) -> bool:
        """Apply the idle timeout, then send a ping; False when the connection ends."""
        idle = self.config.idle_timeout
        if idle is not None and now - self._last_heard > idle:
            self.finish(4006, "idle timeout")
            return False
        if self.ws._wsproto.state is not ConnectionState.OPEN:
            self.finish(1000)  # closing: the reader reports how
            return False
        payload = os.urandom(4)
        while payload in self.ws._pings:  # pragma: no cover - 1 in 2**32
            payload = os.urandom(4)
        event = trio.Event()
        self.ws._pings[payload] = event  # trio-websocket sets it when the pong comes
        self._ping = (event, now)
        await self._write(self.ws._wsproto.send(wsproto.events.Ping(payload=payload)))
        return self._close is None

    def _pong(self) -> None:
        """A pong arrived (trio-websocket's reader): the round trip, and the next ping."""
        if self._ping is not None and self._ping[0].is_set():
            now = trio.current_time()
            self.counters.heartbeat_rtt.observe(now - self._ping[1])
            self._ping = None
            self._next_ping = now + self.config.heartbeat_interval
            self._wake.set()

    async def _watch_credentials(self) -> None:
        """Close 4005 if AUTH never comes, 4001 when credentials expire unrefreshed."""
        if self._auth_pending:
            with trio.move_on_after(self.config.auth_timeout):
                while self._auth_pending:
                    await self._auth_changed.wait()
            if self._auth_pending:
                self.finish(4005, "authentication timeout")
                return
        while True:
            changed = self._auth_changed
            if self._expires is None:
                await changed.wait()
                continue
            with trio.move_on_at(self._expires):
                await changed.wait()
                continue
            self.finish(4001, "authentication expired")
            return

    def _authenticate(self, event: Auth) -> None:
        if self._verify_token is None:
            self.send(Ack(event.request_id))  # nothing to check on this server
            return
        try:
            principal = self._verify_token(event.token)
        except AuthenticationError as exc:
            self.finish(4003, str(exc))
            return
        old = getattr(self.principal, "subject", None)
        if old is not None and getattr(principal, "subject", None) != old:
            self.finish(4003, "a refreshed token must be for the same subject")
            return
        self._auth_pending = False
        self._set_principal(principal)
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
        elif self._auth_pending:
            self.finish(4003, "authenticate first: send AUTH")
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

    def _parse_options(self, event: Subscribe) -> tuple[Overflow | None, float | None] | str:
        """A SUBSCRIBE's options as (policy, seconds between deltas), or what is wrong."""
        options = dict(event.options)
        policy: Overflow | None = None
        interval: float | None = None
        if "policy" in options:
            name = options.pop("policy")
            if not isinstance(name, str) or name not in _POLICIES:
                return f"policy must be one of {', '.join(_POLICIES)}"
            policy = _POLICIES[name]
        if "max_rate" in options:
            rate = options.pop("max_rate")
            if type(rate) not in (int, float) or not 0 < rate <= MAX_RATE:
                return f"max_rate must be a number of updates a second in (0, {MAX_RATE:g}]"
            interval = 1.0 / rate
        if options:
            return f"unknown options: {', '.join(sorted(options))}"
        return policy, interval

    @staticmethod
    def _effective(
        options: tuple[Overflow | None, float | None], topic: Topic
    ) -> tuple[Overflow | None, float | None]:
        """A subscription's options as they apply to *topic*: a stream has no rate limit."""
        policy, interval = options
        return policy, interval if topic.table is not None else None

    async def _subscribe(self, event: Subscribe) -> None:
        request_id = event.request_id
        options = self._parse_options(event)
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
        if exact and options[1] is not None:
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
        if options != (None, None):
            self._options[request_id] = options
        for topic in topics:
            if options != (None, None):
                self._custom[topic.topic_id] = self._effective(options, topic)
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
