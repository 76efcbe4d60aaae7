"""The tickwire server: accept, admit, check, negotiate, authenticate, then supervise.

Imports: trio, tickwire.connection, tickwire.broadcast, tickwire.auth, tickwire.sansio.

Embed it with ``async with open_server(hub, host, port) as server:`` or
``server = await nursery.start(serve, hub, host, port)``. Every connection is a task of the
server's connection nursery (:class:`~tickwire.connection.ServerConnection`: one task while
idle, a writer beside it while it has a backlog); a failure in one closes that one with
1011. Cancelling :func:`serve` shuts down gracefully within ``shutdown_timeout``:
stop accepting, report not ready, send 1001 with a reconnect hint to every client, let
writers drain, then cancel what is left.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from tickwire._groups import unwrapped
from tickwire.auth import PENDING, Authenticator, Authorizer, HandshakeRequest, Refusal
from tickwire.broadcast import Hub
from tickwire.config import ServerConfig
from tickwire.connection import CLOSE_TIMEOUT, ServerConnection, WebSocket, close_handshake
from tickwire.errors import NegotiationError
from tickwire.sansio.admission import (
    AdmissionControl,
    client_address,
    in_networks,
    origin_allowed,
    parse_networks,
)
from tickwire.sansio.events import Hello
from tickwire.sansio.handshake import MAX_HEAD_BYTES, head_complete, head_problem, rejection
from tickwire.sansio.negotiation import (
    MSGPACK,
    NO_COMMON_SUBPROTOCOL,
    Negotiated,
    NegotiationPolicy,
    select,
    token_from_offer,
)
from tickwire.sansio.websocket import Request
from tickwire.statistics import ServerCounters, ServerStatistics, TopicStatistics

__all__ = [
    "HandshakeRequest",
    "Refusal",
    "Server",
    "open_server",
    "serve",
]

log = logging.getLogger("tickwire.server")

# ServerStatistics.handshakes_refused labels for the admission reasons.
_ADMISSION_LABELS = {
    "server full": "server_full",
    "too many handshakes in progress": "handshakes",
    "too many connections from this address": "per_address_limit",
    "too many new connections": "connection_rate",
}


def _remote(stream: trio.abc.Stream) -> str:
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    if sock is None:
        return "local"
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return "unknown"


def _query_number(target: str, name: str) -> float | None:
    """A positive number from the query of request target *target*, if given and valid."""
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query).get(name)
    try:
        number = float(values[0]) if values else None
    except ValueError:
        return None
    return number if number is not None and 0 < number < math.inf else None


async def _answer(ws: WebSocket) -> bool:
    """Write the handshake's answer (a 101, or a refusal); False if the peer is gone."""
    try:
        await ws.send_all(ws.core.data_to_send())
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


def _bearer(headers: Sequence[tuple[str, str]], subprotocols: Sequence[str]) -> str | None:
    for name, value in headers:
        if name == "authorization" and value[:7].lower() == "bearer ":
            return value[7:].strip() or None
    return token_from_offer(subprotocols)


class Server:
    """A running tickwire server: its hub, config, connections, and readiness."""

    def __init__(
        self,
        hub: Hub,
        *,
        config: ServerConfig | None = None,
        negotiation: NegotiationPolicy | None = None,
        authenticate: Authenticator | None = None,
        authorize: Authorizer | None = None,
    ) -> None:
        self.hub = hub
        self.config = config or ServerConfig()
        self.negotiation = negotiation or NegotiationPolicy()
        self._authenticate = authenticate
        self._authorize = authorize
        self.admission = AdmissionControl(
            max_connections=self.config.max_connections,
            max_per_address=self.config.max_connections_per_address,
            new_per_second=self.config.max_new_connections_per_second,
            retry_after=self.config.retry_after,
            max_handshakes=self.config.max_handshakes,
        )
        self.connections: dict[ServerConnection, None] = {}
        self.counters = ServerCounters()
        self._trusted = parse_networks(self.config.trusted_proxies or ())
        self.ports: list[int] = []
        self.ready = False
        self._accepting: trio.CancelScope | None = None
        self._handler_scope: trio.CancelScope | None = None
        self._handlers: trio.Nursery | None = None  # the connections' tasks: readers, writers
        self._idle = trio.Event()
        self._idle.set()

    @property
    def port(self) -> int:
        """The first listening port (useful with port 0)."""
        return self.ports[0]

    async def run(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on *host*:*port* and serve until cancelled or :meth:`aclose`; then shut
        down gracefully, within ``config.shutdown_timeout`` plus a close handshake.

        With *reuse_port* (Linux, BSD) several processes listen on the same port and the
        kernel spreads the new connections over them (``tickwire serve --workers``).
        """
        listeners: list[trio.abc.Listener[Any]]
        if reuse_port:
            listeners = [await _reuse_port_listener(host, port)]
        else:
            listeners = list(await trio.open_tcp_listeners(port, host=host))
        self.ports = [listener.socket.getsockname()[1] for listener in listeners]  # type: ignore[attr-defined]
        if ssl_context is not None:
            listeners = [
                trio.SSLListener(listener, ssl_context, https_compatible=True)
                for listener in listeners
            ]
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve connections from *listeners* (any trio listeners, such as
        :class:`tickwire.testing.MemoryListener`) until cancelled or :meth:`aclose`."""
        async with trio.open_nursery() as outer:
            # Connections live in a shielded nursery: cancelling this starts the graceful
            # shutdown below instead of killing them all at once.
            handlers: trio.Nursery = await outer.start(self._host_handlers)
            outer.start_soon(self.hub.run)
            try:
                with trio.CancelScope() as self._accepting:
                    self.ready = True
                    task_status.started(self)
                    log.info("tickwire serving on ports %s", self.ports)
                    await trio.serve_listeners(
                        self._handle, list(listeners), handler_nursery=handlers
                    )
            finally:
                with trio.CancelScope(shield=True):
                    await self._shutdown()
                outer.cancel_scope.cancel()  # the batch task: the connections are gone

    async def _host_handlers(self, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        with trio.CancelScope(shield=True) as self._handler_scope:
            async with trio.open_nursery() as handlers:
                self._handlers = handlers
                task_status.started(handlers)
                await trio.sleep_forever()

    def statistics(self) -> ServerStatistics:
        """The server's figures now: counters since the start, plus the open connections'
        own (summed here, not on every message)."""
        c = self.counters
        messages_in, messages_out, bytes_in, bytes_out = (
            c.messages_in,
            c.messages_out,
            c.bytes_in,
            c.bytes_out,
        )
        dropped, conflated = c.dropped, c.conflated
        queued = queued_bytes = largest = 0
        for connection in self.connections:
            messages_in += connection.messages_in
            messages_out += connection.messages_out
            bytes_in += connection.bytes_in
            bytes_out += connection.bytes_out
            outbox = connection.outbox
            dropped += outbox.dropped
            conflated += outbox.conflated
            queued += len(outbox)
            queued_bytes += outbox.queued_bytes
            largest = max(largest, outbox.queued_bytes)
        topics = tuple(
            TopicStatistics(
                t.name,
                t.table is not None,
                t.offset,
                len(t.subscribers),
                t.bytes_before_compression,
                t.bytes_after_compression,
            )
            for t in self.hub.topics
            if not t.client_created
        )
        return ServerStatistics(
            ready=self.ready,
            connections_open=len(self.connections),
            connections_opened=c.connections_opened,
            connections_closed=dict(c.closed),
            handshakes_refused=dict(c.refused),
            messages_in=messages_in,
            messages_out=messages_out,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            outbox_messages=queued,
            outbox_bytes=queued_bytes,
            largest_outbox_bytes=largest,
            dropped=dropped,
            conflated=conflated,
            recoveries=dict(c.recoveries),
            publish_to_send=self.hub.publish_to_send.statistics(),
            heartbeat_rtt=c.heartbeat_rtt.statistics(),
            topics=topics,
            history_bytes=self.hub.history_bytes,
            client_topics=self.hub.client_topics,
            values_refused=self.hub.refused_values,
            internal_errors=self.hub.internal_errors,
            backplane=None if self.hub.backplane is None else self.hub.backplane.counters(),
        )

    def _absorb(self, connection: ServerConnection) -> None:
        """Add a closed connection's counts to the server's."""
        c = self.counters
        c.closed[connection.close_code or 1000] += 1
        c.messages_in += connection.messages_in
        c.messages_out += connection.messages_out
        c.bytes_in += connection.bytes_in
        c.bytes_out += connection.bytes_out
        c.dropped += connection.outbox.dropped
        c.conflated += connection.outbox.conflated

    def _refused(self, reason: str, remote: str, status: int) -> None:
        self.counters.refused[reason] += 1
        log.debug(
            "handshake from %s refused: %s (%s)",
            remote,
            reason,
            status,
            extra={"remote": remote, "reason": reason, "status": status},
        )

    async def aclose(self) -> None:
        """Shut down gracefully, as cancelling :meth:`run` does."""
        await self._shutdown()

    async def _shutdown(self) -> None:
        self.ready = False
        if self._accepting is not None:
            self._accepting.cancel()
        self.hub.flush()  # what was published is sent before the goodbye
        hint = f"retry-after={self.config.retry_after:g}; server shutting down"
        for connection in list(self.connections):
            connection.go_away(1001, hint)
        with trio.move_on_after(self.config.shutdown_timeout):
            await self._idle.wait()
        if self._handler_scope is not None:
            self._handler_scope.cancel()

    async def _handle(self, stream: trio.abc.Stream) -> None:
        remote = _remote(stream)
        proxy = in_networks(remote, self._trusted)
        admission = self.admission.admit(remote, trio.current_time(), per_address=not proxy)
        # The address the admission counts it under (a proxy's client), and whether it
        # counts as established yet (a handshake in progress does not hold a connection).
        counted: list[Any] = [remote, False]
        ws: WebSocket | None = None
        try:
            ws = WebSocket(stream, self.config)  # inside: a peer gone already is its own
            accepted = await self._handshake(
                ws, counted, admission.admitted, admission.reason, admission.retry_after
            )
            # The handshake's request, headers and principal lookups are gone with its
            # frame: an idle connection keeps only what it needs, and is this one task.
            if accepted is not None:  # run here, not in a coroutine of its own: one frame less
                connection, compression = accepted
                del accepted
                self._opened(connection)
                try:
                    assert self._handlers is not None  # _handle runs in it
                    await connection.run(
                        None if connection.echo else self._hello(compression), self._handlers
                    )
                finally:
                    self._ended(connection)
        except Exception:
            log.exception(
                "connection from %s failed during the handshake", remote, extra={"remote": remote}
            )
        finally:
            if admission.admitted:
                self.admission.release(counted[0], established=counted[1])
            with trio.CancelScope(shield=True):
                if ws is not None:
                    await ws.aclose()
                else:
                    await trio.aclose_forcefully(stream)

    async def _handshake(
        self,
        ws: WebSocket,
        counted: list[Any],
        admitted: bool,
        refusal: str,
        retry_after: float,
    ) -> tuple[ServerConnection, bool] | None:
        """Upgrade, admit, check and authenticate: the connection to run and whether it
        compresses, or None when refused (the refusal already sent)."""
        config = self.config
        remote = counted[0]
        stream, core = ws.stream, ws.core
        request: Request | None = None
        with trio.move_on_after(config.handshake_timeout) as scope:
            head = await self._read_head(stream)
            if head is None:
                return None
            problem = head_problem(head)
            if problem is not None:
                self._refused("bad_request", remote, 400)
                with trio.move_on_after(1.0):
                    await stream.send_all(rejection(problem))
                return None
            core.receive_data(head, trio.current_time())
            request = next((e for e in core.events_received() if isinstance(e, Request)), None)
            if request is None:  # refused by wsproto's checks (400, 426): say why
                self._refused("bad_request", remote, 400)
                await _answer(ws)
                return None
        if scope.cancelled_caught or request is None:
            log.debug("handshake timeout from %s", remote, extra={"remote": remote})
            return None
        headers = request.headers
        negotiated: Negotiated | None = None
        with trio.move_on_after(config.handshake_timeout):
            if admitted and self._trusted:
                forwarded = ", ".join(v for k, v in headers if k == "x-forwarded-for")
                client = client_address(remote, forwarded or None, self._trusted)
                moved = self.admission.readdress(remote, client)
                if moved.admitted:
                    counted[0] = remote = client
                else:
                    admitted, refusal, retry_after = False, moved.reason, moved.retry_after
            if admitted:
                established = self.admission.establish()
                if established.admitted:
                    counted[1] = True
                else:
                    admitted, refusal = False, established.reason
                    retry_after = established.retry_after
            if not admitted or not self.ready:
                why = refusal or "server shutting down"
                self._refused(_ADMISSION_LABELS.get(refusal, "shutting_down"), remote, 503)
                core.reject(
                    503,
                    body=why.encode(),
                    headers=[(b"Retry-After", f"{max(1, round(retry_after))}".encode())],
                )
                await _answer(ws)
                return None
            offered = request.subprotocols
            origin = next((v for k, v in headers if k == "origin"), None)
            if not origin_allowed(
                origin, config.allowed_origins, allow_missing=config.allow_missing_origin
            ):
                self._refused("origin", remote, 403)
                core.reject(403, body=b"origin not allowed")
                await _answer(ws)
                return None
            principal: Any = None
            pending = False
            if self._authenticate is not None:
                info = HandshakeRequest(
                    request.target, headers, offered, remote, _bearer(headers, offered)
                )
                principal = await self._authenticate(info)
                if principal is PENDING:
                    principal, pending = None, True
                elif principal is None or isinstance(principal, Refusal):
                    refusal_ = principal or Refusal()
                    label = "forbidden" if refusal_.status == 403 else "unauthorized"
                    self._refused(label, remote, refusal_.status)
                    core.reject(refusal_.status, body=refusal_.reason.encode())
                    await _answer(ws)
                    return None
            echo = config.echo_path is not None and (
                request.target.partition("?")[0] == config.echo_path
            )
            if echo:  # plain WebSocket, no subprotocol: what it is sent, it sends back
                chosen = Negotiated.of(MSGPACK)  # unused: it is sent no tickwire message
                core.accept()
            else:
                try:
                    chosen = select(offered, self.negotiation)
                except NegotiationError as exc:
                    self._refused("subprotocol", remote, 101)
                    core.accept()
                    await close_handshake(ws, NO_COMMON_SUBPROTOCOL, str(exc), CLOSE_TIMEOUT)
                    return None
                core.accept(subprotocol=chosen.subprotocol)
            if await _answer(ws):
                negotiated = chosen
        if negotiated is None:  # the handshake timed out (or the peer left) while answering
            return None
        connection = ServerConnection(
            ws,
            send_bytes_per_second=_query_number(request.target, "max_bandwidth"),
            hub=self.hub,
            config=config,
            negotiated=negotiated,
            principal=principal,
            authorize=self._authorize,
            verify_token=getattr(self._authenticate, "verify", None),
            auth_pending=pending,
            remote=remote,
            counters=self.counters,
            echo=echo,
        )
        log.debug(
            "connection %s from %s: %s",
            connection.id,
            remote,
            negotiated.subprotocol,
            extra={"conn": connection.id, "remote": remote},
        )
        return connection, negotiated.compression

    @staticmethod
    async def _read_head(stream: trio.abc.Stream) -> bytes | None:
        """The bytes of the request head (and any that came with it), read within
        MAX_HEAD_BYTES; None when the peer closed first."""
        data = b""
        while not head_complete(data) and len(data) <= MAX_HEAD_BYTES:
            try:
                chunk = await stream.receive_some(4096)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def _opened(self, connection: ServerConnection) -> None:
        """An accepted connection starts: counted among the open ones."""
        self.counters.connections_opened += 1
        self.connections[connection] = None
        self._idle = trio.Event() if len(self.connections) == 1 else self._idle

    def _ended(self, connection: ServerConnection) -> None:
        del self.connections[connection]
        self._absorb(connection)
        if not self.connections:
            self._idle.set()

    def _hello(self, compression: bool) -> Hello:
        limits, config = self.config.limits, self.config
        zstd = self.hub.compression
        return Hello(
            os.urandom(8).hex(),
            time.time_ns(),
            int(config.heartbeat_interval * 1000),
            limits.max_message_bytes,
            limits.max_decompressed_bytes,
            limits.max_container_items,
            limits.max_containers,
            limits.max_depth,
            config.max_subscriptions,
            zstd.level if compression else None,
            zstd.min_bytes if compression else 0,
            self.hub.dictionaries.offer() if compression else (),
        )


async def serve(
    hub: Hub,
    host: str,
    port: int,
    *,
    config: ServerConfig | None = None,
    ssl_context: ssl.SSLContext | None = None,
    negotiation: NegotiationPolicy | None = None,
    authenticate: Authenticator | None = None,
    authorize: Authorizer | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *hub* on *host*:*port*: ``server = await nursery.start(serve, hub, ...)``.

    Runs until cancelled or until ``server.aclose()``; either shuts down gracefully
    (bounded by ``config.shutdown_timeout``).
    """
    server = Server(
        hub, config=config, negotiation=negotiation, authenticate=authenticate, authorize=authorize
    )
    await server.run(host, port, ssl_context=ssl_context, task_status=task_status)


async def _reuse_port_listener(host: str, port: int) -> trio.SocketListener:
    """A listener on *host*:*port* that other processes may share (SO_REUSEPORT)."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


@asynccontextmanager
async def open_server(
    hub: Hub,
    host: str,
    port: int,
    *,
    config: ServerConfig | None = None,
    ssl_context: ssl.SSLContext | None = None,
    negotiation: NegotiationPolicy | None = None,
    authenticate: Authenticator | None = None,
    authorize: Authorizer | None = None,
) -> AsyncIterator[Server]:
    """Run a server for the duration of the block; leaving it shuts down gracefully.

    An exception raised in the block comes out as itself, not inside an exception group.
    """
    with unwrapped():
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(
                functools.partial(
                    serve,
                    hub,
                    host,
                    port,
                    config=config,
                    ssl_context=ssl_context,
                    negotiation=negotiation,
                    authenticate=authenticate,
                    authorize=authorize,
                )
            )
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
