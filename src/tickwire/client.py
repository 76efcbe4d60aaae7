"""The tickwire client: connect, negotiate, subscribe, reconnect and recover, on trio.

Imports: trio, trio_websocket, attrs, tickwire.sansio, tickwire.errors, tickwire.config.

Theory of operation. :func:`open_client` runs one background task that owns the connection:
it connects (trio-websocket does the handshake), reads HELLO, restores every subscription,
then reads until the connection ends, while a keepalive task pings the server. When the
connection ends it decides from the close code, the HTTP status or the error whether to try
again (PROTOCOL.md §6): never after an authentication failure (4001, 4003, HTTP 401/403) or
when no subprotocol is shared (4004); after the server's ``retry-after`` hint (1001, 1013,
HTTP 503); otherwise after an exponential backoff with full jitter. Then it connects again.

The reader never stops reading (a full trio-websocket queue would stop its pongs): every
message is decoded by the sans-I/O :class:`~tickwire.sansio.Session`, which also fetches
dictionaries, and turned into updates in each :class:`Subscription`'s bounded buffer. A
stream's buffer drops its oldest updates when the application falls behind and says so
with a :class:`Lost` update; a table's changes merge while unread (the application reads
the latest rows), so a slow loop costs no memory beyond the table.

Continuity: every topic remembers the (epoch, offset) delivered last. A subscription to a
topic name is restored with that position (the server replays what was missed, or says it
cannot); a pattern's topics are resynchronised with RESYNC when the server's epoch is the
one remembered. Whenever continuity is lost the application receives :class:`Lost`, never
a silent gap; a table then also receives the fresh snapshot as :class:`TableReset`.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import os
import random
import socket
import ssl
import struct
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import attrs
import trio
import trio_websocket
import wsproto.utilities
from attrs.validators import ge, gt, instance_of, optional

from tickwire._groups import only, unwrapped
from tickwire.config import Limits, MiB
from tickwire.errors import (
    ConnectionClosed,
    ConnectionRefused,
    NegotiationError,
    PublishError,
    RemoteProtocolError,
    SlowConsumer,
    SubscriptionError,
    TickwireError,
)
from tickwire.sansio.events import (
    Ack,
    Batch,
    Data,
    DictData,
    DictRequest,
    Error,
    Event,
    Gap,
    Hello,
    Outcome,
    Position,
    Publish,
    Resync,
    Snapshot,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from tickwire.sansio.negotiation import client_offer, parse_selected
from tickwire.sansio.session import Role, Session
from tickwire.sansio.table import Key, Row, RowChange, Schema, TableView

__all__ = [
    "Client",
    "ClientConfig",
    "ClientStatistics",
    "Lost",
    "Message",
    "PublishResult",
    "Reconnect",
    "Subscription",
    "TableChanged",
    "TableReset",
    "Update",
    "open_client",
]

log = logging.getLogger("tickwire.client")

NO_RETRY_CLOSES: Final = frozenset({4001, 4003, 4004})  # §6: do not reconnect like this
PROMPT_CLOSES: Final = frozenset({1001, 1013, 4000})  # going away, overloaded, slow consumer
MAX_CACHED_DICTIONARIES: Final = 16


# -- what the application receives ---------------------------------------------------------


@attrs.frozen
class Message:
    """One message of a stream topic, at *offset* in the topic's epoch."""

    topic: str
    offset: int
    payload: Any


@attrs.frozen
class TableChanged:
    """Rows of a table topic changed. *changes* hold each changed row as it is now (merged
    with any later change the application had not read yet); *offset* is the table's."""

    topic: str
    offset: int
    changes: tuple[RowChange, ...]


@attrs.frozen
class TableReset:
    """A table topic's rows were replaced by a snapshot: on subscribing, after continuity
    was lost, or when a keyframe differed from what the client held. *rows* is the table."""

    topic: str
    offset: int
    rows: Mapping[Key, Row]
    reason: str


@attrs.frozen
class Lost:
    """Continuity was lost: offsets *first* to *last* (None: not known) of *topic* will not
    be delivered, for *reason* ("dropped by the server", "not recovered", "the application
    fell behind", ...). Stream state built from earlier messages may be stale; a table is
    corrected by the :class:`TableReset` that follows."""

    topic: str
    first: int | None
    last: int | None
    reason: str


Update: TypeAlias = Message | TableChanged | TableReset | Lost


@attrs.frozen
class PublishResult:
    """Where a published message went: its topic's id and its offset."""

    topic_id: int
    offset: int


@attrs.frozen
class ClientStatistics:
    """A client's counters since it was opened.

    Attributes:
        connected: whether a connection is up now.
        subprotocol: the one negotiated last.
        bytes_received: messages as they came off the wire (compressed).
        bytes_decoded: the same after decompression.
        messages_received: WebSocket messages.
        updates_received: stream messages and table row changes.
        updates_per_second: over the last whole second.
        reconnects: connections after the first.
        failed_attempts: connection attempts that ended before HELLO (refused, timed out).
        losses: :class:`Lost` updates delivered.
        conflated: table row changes merged into an unread one.
        dropped: stream messages dropped because the application fell behind.
    """

    connected: bool
    subprotocol: str | None
    bytes_received: int
    bytes_decoded: int
    messages_received: int
    updates_received: int
    updates_per_second: float
    reconnects: int
    failed_attempts: int
    losses: int
    conflated: int
    dropped: int

    @property
    def compression_ratio(self) -> float:
        """Decoded bytes per byte received (1.0 before anything arrived)."""
        return self.bytes_decoded / self.bytes_received if self.bytes_received else 1.0


# -- configuration ---------------------------------------------------------------------------


@attrs.frozen
class Attempt:
    """A connection attempt that failed, as :attr:`ClientConfig.on_retry` is told of it.

    Attributes:
        url: what the client connects to.
        failures: consecutive failed attempts, this one included.
        reason: what happened, in words ("connection refused", "HTTP 404: not found").
        permanent: whether retrying cannot help (a name that does not resolve, an HTTP
            4xx, a TLS handshake against a plain server, a refused token).
        delay: seconds until the next attempt, or None when the client gives up.
    """

    url: str
    failures: int
    reason: str
    permanent: bool
    delay: float | None


@attrs.frozen(kw_only=True)
class Reconnect:
    """How a client reconnects: exponential backoff with full jitter, and a cap.

    Attributes:
        initial_delay: the first backoff's upper bound, in seconds.
        max_delay: the cap on any backoff.
        multiplier: how the bound grows with each failed attempt.
        max_attempts: consecutive failed attempts before giving up (None: never; 0: the
            first failure ends the client).
        retry_permanent: retry failures that retrying cannot fix (a name that does not
            resolve, HTTP 404, a TLS handshake against a plain server) as well; by default
            they end the client at once with :class:`~tickwire.ConnectionRefused`.
    """

    initial_delay: float = attrs.field(default=0.25, validator=gt(0))
    max_delay: float = attrs.field(default=30.0, validator=gt(0))
    multiplier: float = attrs.field(default=2.0, validator=ge(1))
    max_attempts: int | None = attrs.field(default=None, validator=optional(ge(0)))
    retry_permanent: bool = False

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before attempt *attempt* (0 is the first retry): uniform in [0, bound]."""
        bound = min(self.max_delay, self.initial_delay * self.multiplier ** min(attempt, 64))
        return rng.uniform(0, bound)


@attrs.frozen(kw_only=True)
class ClientConfig:
    """What a client offers and how long it waits.

    Attributes:
        compression: offer ``tickwire.v2+zstd`` first (else ``tickwire.v2`` only).
        json: offer ``tickwire.v2.json`` too, last.
        connect_timeout: seconds for TCP, TLS and the upgrade.
        heartbeat_interval: seconds between the client's pings; None uses the server's
            interval from HELLO.
        heartbeat_timeout: a pong later than this ends the connection (then reconnects).
        reconnect: how to reconnect, or None to fail on the first loss.
        limits: applied to what the server sends.
        max_buffered: stream updates a subscription keeps unread before dropping the oldest.
        dictionary_cache: a directory to keep fetched dictionaries in, by SHA-256, or None.
        max_bandwidth: ask the server to send at most this many bytes a second (§2.4).
        on_retry: called with an :class:`Attempt` after each failed connection attempt,
            before waiting for the next (or giving up): what ``tickwire tail`` shows.
    """

    compression: bool = True
    json: bool = False
    connect_timeout: float = attrs.field(default=10.0, validator=gt(0))
    heartbeat_interval: float | None = attrs.field(default=None, validator=optional(gt(0)))
    heartbeat_timeout: float = attrs.field(default=10.0, validator=gt(0))
    reconnect: Reconnect | None = attrs.field(factory=Reconnect)
    limits: Limits = attrs.field(
        factory=lambda: Limits(max_message_bytes=16 * MiB, max_decompressed_bytes=64 * MiB)
    )
    max_buffered: int = attrs.field(default=10_000, validator=[instance_of(int), ge(1)])
    dictionary_cache: str | Path | None = None
    max_bandwidth: float | None = attrs.field(default=None, validator=optional(gt(0)))
    on_retry: Callable[[Attempt], None] | None = attrs.field(default=None, eq=False)


# -- subscriptions -----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Topic:
    """What a subscription knows of one topic."""

    name: str
    epoch: int = 0
    offset: int = 0  # the last offset delivered (a table's: of its state)
    topic_id: int = 0  # on the current connection
    view: TableView | None = None
    expect_snapshot: str | None = None  # a SUBSCRIBED announced one: the reset's reason
    resyncing: bool = False  # a RESYNC is out: hold this topic's data until it is answered
    held: list[Data | Batch | Snapshot] = attrs.field(factory=list)


class Subscription:
    """One SUBSCRIBE (a topic name or a ``*`` pattern), kept across reconnections.

    Iterate it for :data:`Update` objects: ``async for update in subscription``. For table
    topics, :meth:`table` is the current table (rows as plain dicts).
    """

    def __init__(
        self,
        client: Client,
        pattern: str,
        options: dict[str, Any],
        *,
        max_buffered: int,
        on_overflow: Literal["lose", "raise"],
    ) -> None:
        self.client = client
        self.pattern = pattern
        self.options = options
        self.topics: dict[str, _Topic] = {}
        self._max_buffered = max_buffered
        self._on_overflow = on_overflow
        self._queue: collections.deque[Any] = collections.deque()  # updates and markers
        self._streamed = 0  # Message objects in the queue
        self._dirty: dict[str, dict[Key, set[str] | None]] = {}  # unread table changes
        self._lost: dict[str, list[int]] = {}  # stream offsets dropped for the application
        self._wake = trio.Event()
        self._ready = trio.Event()
        self._error: BaseException | None = None
        self.request_id = 0
        self.active = True
        # What the server said of topics that may deliver nothing yet (one that does not
        # exist: "no topic 'quote' on this server; did you mean 'quotes'?"), by topic.
        self.notes: dict[str, str] = {}

    @property
    def exact(self) -> bool:
        """Whether this subscription names one topic (it can resume from a position)."""
        return "*" not in self.pattern.split(".")

    def table(self, topic: str | None = None) -> Mapping[Key, Row]:
        """The rows of table *topic* (the subscription's own topic when it names one).

        Raises:
            KeyError: not a table topic of this subscription (yet).
        """
        name = self.pattern if topic is None else topic
        state = self.topics.get(name)
        if state is None or state.view is None:
            raise KeyError(f"no table {name!r} in this subscription")
        return state.view.rows

    def position(self, topic: str | None = None) -> Position | None:
        """The (epoch, offset) delivered last for *topic*, if any."""
        state = self.topics.get(self.pattern if topic is None else topic)
        if state is None or not state.epoch:
            return None
        return Position(state.epoch, state.offset)

    # -- what the client's reader does ---------------------------------------------------

    def _push(self, update: Update) -> None:
        if isinstance(update, Message):
            if self._streamed >= self._max_buffered:
                if self._on_overflow == "raise":
                    self._fail(SlowConsumer(f"{self.pattern}: more than {self._max_buffered}"))
                    return
                self._drop_oldest()
            self._streamed += 1
        elif isinstance(update, Lost):
            self.client._stats_losses += 1
        self._queue.append(update)
        self._wake.set()

    def _drop_oldest(self) -> None:
        for i, item in enumerate(self._queue):
            if isinstance(item, Message):
                del self._queue[i]
                self._streamed -= 1
                self.client._stats_dropped += 1
                lost = self._lost.get(item.topic)
                if lost is None:
                    self._lost[item.topic] = [item.offset, item.offset]
                    self._queue.appendleft(("lost", item.topic))
                    self.client._stats_losses += 1
                else:
                    lost[1] = item.offset
                return

    def _table_changes(self, topic: str, changes: list[RowChange]) -> None:
        dirty = self._dirty.get(topic)
        if dirty is None:
            dirty = self._dirty[topic] = {}
            self._queue.append(("table", topic))
        for change in changes:
            if change.row is None:
                dirty[change.key] = None
                continue
            fields = dirty.get(change.key)
            if change.key in dirty:
                self.client._stats_conflated += 1
            if fields is None:
                dirty[change.key] = set(change.changed)
            else:
                fields.update(change.changed)
        self._wake.set()

    def _reset(self, topic: str, state: _Topic, reason: str) -> None:
        self._dirty.pop(topic, None)  # the snapshot supersedes unread changes
        assert state.view is not None
        self._push(TableReset(topic, state.view.offset, dict(state.view.rows), reason))

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._ready.set()
        self._wake.set()

    # -- what the application calls -------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Update:
        try:
            return await self.receive()
        except ConnectionClosed as exc:
            if exc.code == 1000:
                raise StopAsyncIteration from None
            raise

    async def receive(self) -> Update:
        """The next update, waiting for one.

        Raises:
            ConnectionClosed: the client closed, or gave up reconnecting.
            SlowConsumer: the buffer overflowed with ``on_overflow="raise"``.
        """
        # Cancellation-safe: a cancellation is delivered before an update is taken, or not
        # at all (trio's checkpoint_if_cancelled / cancel_shielded_checkpoint pair), so an
        # update is either returned or still queued.
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            update = self.receive_nowait()
            if update is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return update
            if self._error is not None:
                raise self._error
            self._wake = trio.Event()
            await self._wake.wait()  # cancelled here, nothing was taken

    def receive_nowait(self) -> Update | None:
        """The next update if one is waiting, else None."""
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, Message):
                self._streamed -= 1
                return item
            if not isinstance(item, tuple):
                return item  # type: ignore[no-any-return]
            kind, topic = item
            if kind == "lost":
                first, last = self._lost.pop(topic)
                return Lost(topic, first, last, "the application fell behind")
            dirty = self._dirty.pop(topic, None)
            state = self.topics.get(topic)
            if not dirty or state is None or state.view is None:
                continue
            rows = state.view.rows
            changes = tuple(
                RowChange(key, None, ())
                if fields is None or key not in rows
                else RowChange(key, dict(rows[key]), tuple(sorted(fields)))
                for key, fields in dirty.items()
            )
            return TableChanged(topic, state.view.offset, changes)
        return None

    async def aclose(self) -> None:
        """Unsubscribe (the server stops sending this subscription's topics)."""
        await self.client._unsubscribe(self)


# -- the client --------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Pending:
    """A request waiting for its answer."""

    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    message: Publish | None = None  # a publish to send again after a reconnection


class _Retry(Exception):
    """The connection ended; try again after *delay* seconds (None: the backoff), unless it
    is *permanent* (retrying cannot help)."""

    def __init__(
        self,
        why: str,
        delay: float | None = None,
        *,
        prompt: bool = False,
        permanent: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(why)
        self.delay = delay
        self.prompt = prompt
        self.permanent = permanent
        self.status = status


# HTTP answers to an upgrade that a retry may cure: timeouts, rate limits, and 5xx.
_TRANSIENT_STATUS: Final = frozenset({408, 425, 429})


def _why(exc: BaseException) -> tuple[str, bool]:
    """A connection failure in words, and whether it is permanent."""
    cause: BaseException | None = exc
    for _ in range(16):  # the chain of causes, not forever
        if cause is None:
            break
        if isinstance(cause, ssl.SSLError):
            reason = getattr(cause, "reason", None) or str(cause)
            if isinstance(cause, ssl.SSLCertVerificationError):
                hint = "its certificate is not trusted (a private CA: pass its certificates)"
            else:
                hint = "is it a wss:// server?"
            return f"TLS handshake failed ({reason}): {hint}", True
        if isinstance(cause, socket.gaierror):
            if cause.errno in _NO_SUCH_NAME:
                return f"the name does not resolve ({cause.strerror})", True
            return f"name lookup failed ({cause.strerror})", False
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (nothing listening?)", False
        if isinstance(cause, TimeoutError | trio.TooSlowError):
            return "timed out", False
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower(), False
        if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]  # trio's "all attempts to connect failed"
            continue
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__, False


_NO_SUCH_NAME: Final = frozenset(
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)
)


class Client:
    """A tickwire client. Make one with :func:`open_client`."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        config: ClientConfig | None = None,
        ssl_context: ssl.SSLContext | None = None,
        seed: int | None = None,
        open_stream: Callable[[str], Awaitable[trio.abc.Stream]] | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.config = config or ClientConfig()
        self.ssl_context = ssl_context
        self._open_stream_hook = open_stream
        self._rng = random.Random(seed)
        self._subscriptions: dict[str, Subscription] = {}
        self._by_request: dict[int, Subscription] = {}
        self._resyncs: dict[int, tuple[Subscription, _Topic]] = {}
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._stream: trio.abc.Stream | None = None  # the connection's byte stream
        self._session: Session | None = None
        self._topic_ids: dict[int, list[tuple[Subscription, _Topic]]] = {}
        self._connected = trio.Event()
        self._first = trio.Event()
        self._closed: BaseException | None = None
        self.hello: Hello | None = None
        self._known_dictionaries: dict[bytes, bytes] = {}
        self._stats_messages = self._stats_updates = self._stats_reconnects = 0
        self._stats_losses = self._stats_conflated = self._stats_dropped = 0
        self._stats_refused = 0
        self._greeted = False
        self._bytes_received = self._bytes_decoded = 0
        self._second: tuple[int, int] = (0, 0)  # (whole second, updates in it)
        self._last_second = 0
        self._load_dictionary_cache()

    # -- public API ---------------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(
        self,
        pattern: str,
        *,
        policy: Literal["disconnect", "drop_oldest", "conflate"] | None = None,
        max_rate: float | None = None,
        resume: Position | None = None,
        max_buffered: int | None = None,
        on_overflow: Literal["lose", "raise"] = "lose",
    ) -> AsyncIterator[Subscription]:
        """Subscribe to a topic name or pattern for the duration of the block.

        Args:
            pattern: a topic name, or a pattern with ``*`` for one segment.
            policy: the server's slow-consumer policy for this subscription (§9.5).
            max_rate: for table topics, at most this many merged deltas a second.
            resume: a position remembered from an earlier run (a topic name only).
            max_buffered: unread stream updates kept (default: the client's).
            on_overflow: past *max_buffered*, drop the oldest and say :class:`Lost`, or
                raise :class:`~tickwire.SlowConsumer` from :meth:`Subscription.receive`.

        Raises:
            SubscriptionError: the server refused (ERROR 400, 403, 409, 413...).
            ConnectionClosed: the client is closed.
        """
        if pattern in self._subscriptions:
            raise SubscriptionError(409, f"already subscribed to {pattern!r}")
        options: dict[str, Any] = {}
        if policy is not None:
            options["policy"] = policy
        if max_rate is not None:
            options["max_rate"] = max_rate
        subscription = Subscription(
            self,
            pattern,
            options,
            max_buffered=max_buffered or self.config.max_buffered,
            on_overflow=on_overflow,
        )
        if resume is not None:
            if not subscription.exact:
                raise ValueError("resume needs a topic name, not a pattern")
            subscription.topics[pattern] = _Topic(pattern, resume.epoch, resume.offset)
        self._subscriptions[pattern] = subscription
        try:
            if self._ws is not None and self._connected.is_set():
                with suppress(_NotConnected):  # else the next connection restores it
                    await self._send_subscribe(subscription)
            await subscription._ready.wait()
            if subscription._error is not None:
                raise subscription._error
            yield subscription
        finally:
            with trio.CancelScope(shield=True):
                await self._unsubscribe(subscription)

    async def publish(
        self, topic: str, payload: Any, *, key: str | None = None, timeout: float = 10.0
    ) -> PublishResult:
        """Publish *payload* on *topic* and wait for the server's ACK.

        With an idempotency *key* the message is sent again after a reconnection and the
        server publishes it once (§4.10); without one, a connection lost before the ACK
        raises :class:`~tickwire.ConnectionClosed` (the outcome is unknown).

        Raises:
            PublishError: the server refused it (403, 400, 409...).
            TimeoutError: no answer within *timeout* seconds.
            ConnectionClosed: the connection ended before the answer (no *key*), or the
                client is closed.
        """
        request_id = next(self._ids)
        message = Publish(request_id, topic, payload, key)
        pending = _Pending(message=message if key is not None else None)
        self._pending[request_id] = pending
        try:
            with trio.fail_after(timeout):
                while True:
                    await self._wait_connected()
                    try:
                        await self._send(message)
                        break
                    except _NotConnected:  # not sent: wait for the next connection
                        await self._next_connection()
                await pending.done.wait()
        except trio.TooSlowError:
            raise TimeoutError(f"no ACK for {topic!r} within {timeout} s") from None
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[no-any-return]

    def statistics(self) -> ClientStatistics:
        """The client's counters (a frozen copy)."""
        session = self._session
        received = self._bytes_received + (session.bytes_received if session else 0)
        decoded = self._bytes_decoded + (session.bytes_decoded if session else 0)
        second, count = self._second
        now = int(trio.current_time())
        rate = (
            float(count)
            if second == now - 1
            else float(self._last_second)
            if second == now
            else 0.0
        )
        return ClientStatistics(
            connected=self._connected.is_set(),
            subprotocol=session.negotiated.subprotocol if session else None,
            bytes_received=received,
            bytes_decoded=decoded,
            messages_received=self._stats_messages,
            updates_received=self._stats_updates,
            updates_per_second=rate,
            reconnects=self._stats_reconnects,
            failed_attempts=self._stats_refused,
            losses=self._stats_losses,
            conflated=self._stats_conflated,
            dropped=self._stats_dropped,
        )

    async def aclose(self) -> None:
        """Close the connection (1000) and end every subscription."""
        self._close_all(ConnectionClosed(1000, "client closed"))
        ws = self._ws
        if ws is not None:
            with trio.move_on_after(2):
                await ws.aclose(1000)

    # -- internals: the connection loop ----------------------------------------------------------

    async def _run(self) -> None:
        """Connect, serve, reconnect; until closed or a failure that must not be retried."""
        attempt = 0
        while self._closed is None:
            self._greeted = False
            try:
                await self._connect_and_serve()
            except _Retry as retry:
                if not self._greeted:
                    self._stats_refused += 1
                self._connection_lost()
                if self._closed is not None:
                    return  # closing: nothing to retry
                policy = self.config.reconnect
                if retry.prompt:
                    attempt = 0
                attempt += 1
                ending: BaseException | None = None
                if policy is None:
                    ending = ConnectionClosed(1006, f"connection lost: {retry}")
                elif retry.permanent and not policy.retry_permanent:
                    ending = ConnectionRefused(f"{retry}", status=retry.status)
                elif policy.max_attempts is not None and attempt > policy.max_attempts:
                    tries = "attempt" if attempt == 1 else "attempts"
                    ending = ConnectionRefused(f"gave up after {attempt} {tries}: {retry}")
                if ending is not None:
                    self._tell(Attempt(self.url, attempt, str(retry), retry.permanent, None))
                    self._close_all(ending)
                    return
                assert policy is not None
                delay = policy.delay(attempt - 1, self._rng)
                if retry.delay is not None:  # the server's hint, plus jitter (§6)
                    delay = retry.delay + self._rng.uniform(0, max(retry.delay, 0.1) / 2)
                log.info("tickwire client: %s; reconnecting in %.2f s", retry, delay)
                self._tell(Attempt(self.url, attempt, str(retry), retry.permanent, delay))
                await trio.sleep(delay)
            except TickwireError as exc:  # refused for good: authentication, negotiation
                if not self._greeted:
                    self._stats_refused += 1
                self._connection_lost()
                self._close_all(exc)
                return
            else:  # pragma: no cover - _connect_and_serve always raises
                return

    async def _connect_and_serve(self) -> None:
        config = self.config
        offer = client_offer(compression=config.compression, json=config.json)
        headers = [(b"Authorization", f"Bearer {self.token}".encode())] if self.token else []
        url = self.url
        if config.max_bandwidth is not None:
            url += ("&" if "?" in url else "?") + f"max_bandwidth={config.max_bandwidth:g}"
        ended: BaseException | None = None
        try:
            await self._connection(url, offer, headers)
        except BaseExceptionGroup as group:
            cancelled, _others = group.split(trio.Cancelled)
            if cancelled is not None and self._closed is not None:
                # Closing: what the connection's tasks raised on their way out (a pong that
                # trio-websocket may no longer send) does not matter; the cancellation does.
                raise cancelled from None
            ended = self._classify(only(group), group)
        except (_Retry, TickwireError) as exc:
            ended = exc
        raise ended or _Retry("connection ended")

    async def _connection(
        self, url: str, offer: list[str], headers: list[tuple[bytes, bytes]]
    ) -> None:
        """One connection, from connecting to its end; raises what ended it."""
        config = self.config
        ended: BaseException | None = None
        stream: trio.abc.Stream | None = None
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(config.connect_timeout):
                    stream, host, resource = await self._open_stream(url)
                    self._stream = stream  # the keepalive drops it when pongs stop
                    try:
                        ws = await trio_websocket.wrap_client_stream(
                            nursery,
                            stream,  # type: ignore[arg-type]
                            host,
                            resource,
                            subprotocols=offer,
                            extra_headers=headers,
                            message_queue_size=16,
                            max_message_size=config.limits.max_message_bytes,
                        )
                    except BaseExceptionGroup as group:  # trio-websocket's own nursery
                        raise only(group) from None
                ended = await self._serve_guarded(nursery, ws, offer)
            except trio.TooSlowError:
                ended = _Retry(f"timed out after {config.connect_timeout:g} s")
            except trio_websocket.ConnectionRejected as exc:
                ended = self._rejected(exc)
            except (OSError, trio.BrokenResourceError, trio_websocket.HandshakeError) as exc:
                reason, permanent = _why(exc)
                ended = _Retry(reason, permanent=permanent)
            finally:
                nursery.cancel_scope.cancel()
                self._stream = None
                if stream is not None:  # trio-websocket leaves it open when rejected
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(stream)
        raise ended or _Retry("connection ended")

    async def _serve_guarded(
        self, nursery: trio.Nursery, ws: trio_websocket.WebSocketConnection, offer: list[str]
    ) -> BaseException:
        try:
            await self._serve(nursery, ws, offer)
        except (_Retry, TickwireError) as exc:  # out of the nursery unwrapped
            return exc
        except _NotConnected:
            return _Retry("connection lost while sending")
        return _Retry("connection ended")  # pragma: no cover - _serve only raises

    async def _open_stream(self, url: str) -> tuple[trio.abc.Stream, str, str]:
        """TCP (and TLS for ``wss://``) to the server; the stream, Host and resource."""
        parts = urllib.parse.urlsplit(url)
        secure = parts.scheme == "wss"
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConnectionRefused(f"not a ws:// or wss:// URL: {url!r}")
        port = parts.port or (443 if secure else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        if self._open_stream_hook is not None:
            return await self._open_stream_hook(url), host, resource
        if secure:
            context = self.ssl_context or ssl.create_default_context()
            tls = await trio.open_ssl_over_tcp_stream(
                parts.hostname, port, ssl_context=context, https_compatible=True
            )
            # Here, not lazily inside trio-websocket, whose reader swallows a failed TLS
            # handshake (then only the connect timeout would end the attempt).
            try:
                await tls.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(tls)
                raise
            stream: trio.abc.Stream = tls
        else:
            stream = await trio.open_tcp_stream(parts.hostname, port)
        return stream, host, resource

    def _classify(
        self, leaf: BaseException, group: BaseExceptionGroup[BaseException]
    ) -> BaseException:
        """What an exception out of a connection's nursery means for reconnecting."""
        if isinstance(leaf, _Retry | TickwireError):
            return leaf
        if isinstance(leaf, trio_websocket.ConnectionRejected):
            return self._rejected(leaf)
        if isinstance(leaf, wsproto.utilities.LocalProtocolError):
            # trio-websocket answering a ping after our close frame went out: the
            # connection is ending anyway.
            return _Retry(f"connection ended: {leaf}")
        if isinstance(
            leaf,
            OSError
            | trio.BrokenResourceError
            | trio_websocket.HandshakeError
            | trio_websocket.ConnectionClosed,
        ):
            reason, permanent = _why(leaf)
            return _Retry(reason, permanent=permanent)
        raise group  # Cancelled, or a bug: not ours to swallow

    def _rejected(self, exc: trio_websocket.ConnectionRejected) -> BaseException:
        status = exc.status_code
        body = (exc.body or b"").decode("utf-8", "replace")[:200]
        retry_after = None
        for name, value in exc.headers:
            if name.lower() == b"retry-after":
                with suppress(ValueError):
                    retry_after = float(value)
        if status in (401, 403):
            return ConnectionRefused(f"HTTP {status}: {body}", status=status)
        permanent = 400 <= status < 500 and status not in _TRANSIENT_STATUS
        reason = f"HTTP {status}: {body}" if body else f"HTTP {status}"
        return _Retry(reason, retry_after, permanent=permanent, status=status)

    async def _serve(
        self, nursery: trio.Nursery, ws: trio_websocket.WebSocketConnection, offer: list[str]
    ) -> None:
        try:
            negotiated = parse_selected(ws.subprotocol, offer)
        except NegotiationError:
            reason = ""
            with trio.move_on_after(self.config.connect_timeout):
                try:
                    await ws.get_message()
                except trio_websocket.ConnectionClosed as closed:
                    reason = closed.reason.reason or "" if closed.reason else ""
            raise NegotiationError(
                reason or "the server selected no tickwire subprotocol"
            ) from None
        session = Session(Role.CLIENT, negotiated, limits=self.config.limits)
        for data in self._known_dictionaries.values():
            session.remember(data)
        self._ws, self._session = ws, session
        nursery.start_soon(self._keepalive, ws)
        try:
            while True:
                try:
                    message = await ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    if self._closed is not None:
                        # Our own aclose(): trio-websocket's reader, in this connection's
                        # nursery, must read the server's answering close frame for it to
                        # return. Whoever owns the client cancels this once it has.
                        await trio.sleep_forever()
                    raise self._closed_by(exc) from None
                self._stats_messages += 1
                try:
                    session.receive_message(message)
                except RemoteProtocolError as exc:
                    log.warning("tickwire client: bad message from the server: %s", exc)
                    with trio.move_on_after(2):
                        await ws.aclose(exc.close_code, str(exc)[:120])
                    raise _Retry(f"protocol error: {exc}") from None
                for dict_id in session.dictionaries_to_fetch():
                    await self._send(DictRequest(dict_id))
                for event in session.events_received():
                    await self._handle(event)
        finally:
            self._bytes_received += session.bytes_received
            self._bytes_decoded += session.bytes_decoded
            self._ws = self._session = None
            if self._connected.is_set() and self._closed is None:
                self._connected = trio.Event()

    def _closed_by(self, exc: trio_websocket.ConnectionClosed) -> BaseException:
        if self._closed is not None:
            return _Retry("closed")
        reason = exc.reason
        code = reason.code if reason else 1006
        text = (reason.reason or "") if reason else ""
        if code in NO_RETRY_CLOSES:
            if code == 4004:
                return NegotiationError(text or "no common subprotocol")
            return ConnectionClosed(code, text)
        hint = None
        if text.startswith("retry-after="):
            try:
                hint = float(text.split(";", 1)[0].split("=", 1)[1])
            except ValueError:
                hint = None
        return _Retry(f"closed with {code} {text}".rstrip(), hint, prompt=code in PROMPT_CLOSES)

    async def _keepalive(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Ping the server; a pong that does not come ends the connection (then retry)."""
        while True:
            hello = self.hello
            interval = self.config.heartbeat_interval or (
                hello.heartbeat_interval_ms / 1000 if hello else 20.0
            )
            await trio.sleep(interval)
            with trio.move_on_after(self.config.heartbeat_timeout) as scope:
                try:
                    await ws.ping(struct.pack("!Q", self._rng.getrandbits(64)))
                except trio_websocket.ConnectionClosed:
                    return
            if scope.cancelled_caught:
                log.info("tickwire client: no pong within %s s", self.config.heartbeat_timeout)
                with trio.move_on_after(1):
                    await ws.aclose(4007, "heartbeat timeout")
                if self._stream is not None:
                    await trio.aclose_forcefully(self._stream)
                return

    async def _send(self, event: Event) -> None:
        ws, session = self._ws, self._session
        if ws is None or session is None:
            raise _NotConnected
        try:
            await ws.send_message(session.send(event))
        except trio_websocket.ConnectionClosed:
            raise _NotConnected from None

    async def _wait_connected(self) -> None:
        while not self._connected.is_set():
            if self._closed is not None:
                raise self._closed
            await self._connected.wait()
        if self._closed is not None:
            raise self._closed

    async def _next_connection(self) -> None:
        """Wait for a connection to send on, after a send found none (or a closing one:
        the reader notices that within moments and clears the connected state)."""
        await trio.sleep(0.01)
        await self._wait_connected()

    def _tell(self, attempt: Attempt) -> None:
        """Tell the application of a failed attempt (``ClientConfig.on_retry``)."""
        callback = self.config.on_retry
        if callback is not None:
            try:
                callback(attempt)
            except Exception:  # the application's bug must not end the client
                log.exception("tickwire client: on_retry raised")

    def _connection_lost(self) -> None:
        self._connected = trio.Event() if self._connected.is_set() else self._connected
        self._topic_ids.clear()
        self._by_request.clear()
        self._resyncs.clear()
        for pending in list(self._pending.values()):
            if pending.message is None and not pending.done.is_set():
                pending.error = ConnectionClosed(1006, "connection lost before the ACK")
                pending.done.set()
        for subscription in self._subscriptions.values():
            for state in subscription.topics.values():
                state.topic_id, state.resyncing, state.held = 0, False, []

    def _close_all(self, error: BaseException) -> None:
        if self._closed is None:
            self._closed = error
        self._first.set()
        self._connected.set()  # wake waiters: they see _closed
        for subscription in self._subscriptions.values():
            subscription._fail(error)
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = error
                pending.done.set()

    # -- internals: restoring and handling --------------------------------------------------------

    async def _restore(self) -> None:
        """After HELLO: every subscription again, then the publishes that carry a key."""
        for subscription in list(self._subscriptions.values()):
            if subscription.active:
                await self._send_subscribe(subscription)
        for _request_id, pending in list(self._pending.items()):
            if pending.message is not None and not pending.done.is_set():
                await self._send(pending.message)

    async def _send_subscribe(self, subscription: Subscription) -> None:
        request_id = next(self._ids)
        subscription.request_id = request_id
        self._by_request[request_id] = subscription
        resume = subscription.position() if subscription.exact else None
        await self._send(Subscribe(request_id, subscription.pattern, resume, subscription.options))

    async def _unsubscribe(self, subscription: Subscription) -> None:
        if not subscription.active:
            return
        subscription.active = False
        self._subscriptions.pop(subscription.pattern, None)
        subscription._fail(ConnectionClosed(1000, "unsubscribed"))
        if self._ws is not None and self._connected.is_set():
            with suppress(_NotConnected):
                await self._send(Unsubscribe(next(self._ids), subscription.pattern))

    async def _handle(self, event: Event) -> None:
        if isinstance(event, (Data, Batch, Snapshot)):
            self._deliver(event.topic_id, event)
        elif isinstance(event, Subscribed):
            await self._subscribed(event)
        elif isinstance(event, Gap):
            await self._gap(event)
        elif isinstance(event, Ack):
            self._ack(event)
        elif isinstance(event, Error):
            self._error(event)
        elif isinstance(event, Unsubscribed):
            if event.request_id is None:  # the server ended a subscription (a revocation)
                subscription = self._subscriptions.get(event.pattern)
                if subscription is not None:
                    subscription.active = False
                    self._subscriptions.pop(event.pattern, None)
                    subscription._fail(SubscriptionError(event.code, event.text))
        elif isinstance(event, Hello):
            self.hello = event
            self._greeted = True
            if self._first.is_set():
                self._stats_reconnects += 1
            self._connected.set()
            self._first.set()
            await self._restore()
        elif isinstance(event, DictData):
            self._cache_dictionary(event.data)

    def _states(self, topic_id: int) -> list[tuple[Subscription, _Topic]]:
        return self._topic_ids.get(topic_id, [])

    def _deliver(self, topic_id: int, event: Data | Batch | Snapshot) -> None:
        for subscription, state in self._states(topic_id):
            if subscription.notes:
                subscription.notes.pop(state.name, None)  # it exists now
            if state.resyncing:
                state.held.append(event)
                continue
            self._apply(subscription, state, event)

    def _apply(
        self, subscription: Subscription, state: _Topic, event: Data | Batch | Snapshot
    ) -> None:
        name = state.name
        if isinstance(event, Snapshot):
            if state.view is None:
                return
            if event.more:  # a part: the view applies the snapshot whole with its last
                state.view.apply_snapshot(event.offset, event.payload, more=True)
                return
            reason = state.expect_snapshot
            previous = None if reason else {k: dict(v) for k, v in state.view.rows.items()}
            state.view.apply_snapshot(event.offset, event.payload)
            state.offset = event.offset
            if reason:
                state.expect_snapshot = None
                subscription._reset(name, state, reason)
            elif previous != state.view.rows:
                subscription._reset(name, state, "keyframe")
            return
        if state.view is not None:  # a table's delta, or a BATCH of every update's deltas
            deltas = (
                [(event.offset, event.payload)]
                if isinstance(event, Data)
                else [(event.first_offset + i, p) for i, p in enumerate(event.payloads)]
            )
            for offset, payload in deltas:
                changes = state.view.apply_delta(offset, payload)
                state.offset = state.view.offset
                if changes:
                    self._count(len(changes))
                    subscription._table_changes(name, changes)
            return
        payloads = [event.payload] if isinstance(event, Data) else list(event.payloads)
        first = event.offset if isinstance(event, Data) else event.first_offset
        for i, payload in enumerate(payloads):
            offset = first + i
            if offset <= state.offset:
                continue  # already delivered (a replay overlapping what came live)
            if state.offset and offset > state.offset + 1:
                subscription._push(Lost(name, state.offset + 1, offset - 1, "skipped"))
            state.offset = offset
            self._count(1)
            subscription._push(Message(name, offset, payload))

    def _count(self, updates: int) -> None:
        self._stats_updates += updates
        now = int(trio.current_time())
        second, count = self._second
        if second == now:
            self._second = (now, count + updates)
        else:
            self._last_second = count if second == now - 1 else 0
            self._second = (now, updates)

    async def _subscribed(self, event: Subscribed) -> None:
        resync = self._resyncs.pop(event.request_id, None)
        if resync is not None:
            resyncing, topic_state = resync
            self._resynced(resyncing, topic_state, event)
            return
        found = self._by_request.get(event.request_id)
        if found is None:
            return
        subscription = found
        state_or_none = subscription.topics.get(event.topic)
        known = state_or_none is not None and state_or_none.epoch != 0
        state = state_or_none or _Topic(event.topic)
        subscription.topics[event.topic] = state
        if event.note is not None:
            if subscription.notes.get(event.topic) != event.note:
                log.warning("tickwire server says of %s: %s", event.topic, event.note)
            subscription.notes[event.topic] = event.note
        else:
            subscription.notes.pop(event.topic, None)
        if state.topic_id != event.topic_id:  # a topic's id can change (a backplane's
            # registry started again): its old id no longer names it on this connection
            old = self._topic_ids.get(state.topic_id, [])
            old[:] = [(x, y) for x, y in old if y is not state]
        state.topic_id = event.topic_id
        routes = self._topic_ids.setdefault(event.topic_id, [])
        if not any(y is state for _, y in routes):  # SUBSCRIBED again: the same route
            routes.append((subscription, state))
        if event.info is None:
            state.view = None
        else:
            try:
                schema = Schema.from_info(event.info)
            except TickwireError as exc:
                subscription._fail(exc)
                return
            if state.view is None or state.view.schema != schema:
                state.view = TableView(schema)
        table = state.view is not None
        reason = "subscribed"
        if known and event.outcome is Outcome.NOT_RECOVERED:
            self._lose(subscription, state, event, "not recovered")
            reason = "not recovered"
        elif known and event.outcome is Outcome.NEW:
            # A pattern's topic after a reconnection (no resume position is possible).
            same = event.epoch == state.epoch
            if same and event.offset > state.offset and not table:
                state.resyncing = True  # hold its data until the replay is decided
                request_id = next(self._ids)
                self._resyncs[request_id] = (subscription, state)
                await self._send(Resync(request_id, event.topic_id, state.offset))
                return
            if not same or event.offset != state.offset:
                self._lose(subscription, state, event, "not recovered")
                reason = "not recovered"
            else:
                reason = "reconnected"
        state.epoch = event.epoch
        if event.outcome is not Outcome.RECOVERED:
            state.offset = event.offset
            state.expect_snapshot = reason if table else None

    def _resynced(self, subscription: Subscription, state: _Topic, event: Subscribed) -> None:
        """The answer to a RESYNC: replay or not, then what was held meanwhile."""
        if event.outcome is Outcome.NOT_RECOVERED:
            self._lose(subscription, state, event, "not recovered")
            state.offset = event.offset
            state.expect_snapshot = "not recovered" if state.view is not None else None
        state.epoch = event.epoch
        state.resyncing = False
        held, state.held = state.held, []
        for item in held:
            self._apply(subscription, state, item)

    def _lose(
        self, subscription: Subscription, state: _Topic, event: Subscribed, reason: str
    ) -> None:
        first = state.offset + 1 if state.epoch == event.epoch else None
        last = event.offset if state.epoch == event.epoch else None
        subscription._push(Lost(state.name, first, last, reason))

    async def _gap(self, event: Gap) -> None:
        for subscription, state in self._states(event.topic_id):
            subscription._push(Lost(state.name, event.first, event.last, "dropped by the server"))
            if state.view is not None:  # a table's state is stale: ask for a fresh one
                request_id = next(self._ids)
                self._resyncs[request_id] = (subscription, state)
                state.resyncing = True
                await self._send(Resync(request_id, event.topic_id, None))
            else:
                state.offset = max(state.offset, event.last)

    def _ack(self, event: Ack) -> None:
        subscription = self._by_request.get(event.request_id)
        if subscription is not None:
            subscription._ready.set()
            return
        pending = self._pending.get(event.request_id)
        if pending is not None and event.topic_id is not None and event.offset is not None:
            pending.result = PublishResult(event.topic_id, event.offset)
            pending.done.set()

    def _error(self, event: Error) -> None:
        if event.request_id is None:
            log.warning("tickwire server says: %s %s", event.code, event.text)
            return
        subscription = self._by_request.pop(event.request_id, None)
        if subscription is not None:
            self._subscriptions.pop(subscription.pattern, None)
            subscription.active = False
            subscription._fail(SubscriptionError(event.code, event.text))
            return
        resync = self._resyncs.pop(event.request_id, None)
        if resync is not None:
            resync[1].resyncing = False
            return
        pending = self._pending.get(event.request_id)
        if pending is not None:
            pending.error = PublishError(event.code, event.text)
            pending.done.set()

    # -- dictionaries on disk ---------------------------------------------------------------------

    def _cache_dir(self) -> Path | None:
        cache = self.config.dictionary_cache
        return None if cache is None else Path(cache)

    def _load_dictionary_cache(self) -> None:
        folder = self._cache_dir()
        if folder is None or not folder.is_dir():
            return
        files = sorted(folder.glob("*.zdict"), key=lambda p: p.stat().st_mtime)
        for path in files[-MAX_CACHED_DICTIONARIES:]:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == path.stem:  # never trust a damaged file
                self._known_dictionaries[hashlib.sha256(data).digest()] = data

    def _cache_dictionary(self, data: bytes) -> None:
        digest = hashlib.sha256(data).digest()
        self._known_dictionaries[digest] = data
        folder = self._cache_dir()
        if folder is None:
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{digest.hex()}.zdict"
            if not path.exists():
                temporary = path.with_suffix(f".{os.getpid()}.tmp")
                temporary.write_bytes(data)
                temporary.replace(path)
        except OSError as exc:  # a cache that cannot be written is only slower
            log.warning("tickwire client: cannot cache a dictionary: %s", exc)


class _NotConnected(Exception):
    """Nothing to send on: the connection is gone (the reconnection will resend)."""


@asynccontextmanager
async def open_client(
    url: str,
    *,
    token: str | None = None,
    config: ClientConfig | None = None,
    ssl_context: ssl.SSLContext | None = None,
    seed: int | None = None,
    open_stream: Callable[[str], Awaitable[trio.abc.Stream]] | None = None,
) -> AsyncIterator[Client]:
    """Connect to a tickwire server for the duration of the block, reconnecting as needed.

    ``async with open_client("ws://127.0.0.1:8765/") as client:``. The block starts once
    the first connection is up (HELLO received). Leaving it closes the connection.

    Args:
        url: ``ws://`` or ``wss://``.
        token: a bearer token, sent as ``Authorization: Bearer``.
        config: what to offer, timeouts, reconnection, buffers.
        ssl_context: for ``wss://`` (for example ``ssl.create_default_context(cafile=...)``).
        seed: seeds the backoff jitter (tests).
        open_stream: opens the byte stream for each connection, given *url*, instead of
            TCP and TLS: ``tickwire.testing.MemoryListener.open_stream`` runs a client
            against an in-memory server, on trio's virtual clock.

    Raises:
        ConnectionRefused: HTTP 401 or 403, an error retrying cannot fix (a name that does
            not resolve, HTTP 404, TLS against a plain server), or the reconnection
            attempts ran out.
        ConnectionClosed: the server closed with 4001 or 4003 (authentication).
        NegotiationError: no common subprotocol (4004).
    """
    client = Client(
        url,
        token=token,
        config=config,
        ssl_context=ssl_context,
        seed=seed,
        open_stream=open_stream,
    )
    with unwrapped():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run)
            await client._first.wait()
            if client._closed is not None:
                nursery.cancel_scope.cancel()
                raise client._closed
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()
                nursery.cancel_scope.cancel()
