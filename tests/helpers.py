"""Test clients: a trio-websocket client speaking tickwire/2, and a raw wsproto client."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import trio
import trio_websocket
import wsproto
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from tickwire.broadcast import Hub
from tickwire.config import ServerConfig
from tickwire.sansio import Role, Session, client_offer
from tickwire.sansio.events import Ack, Error, Event, Hello, Subscribe
from tickwire.sansio.negotiation import MSGPACK, Negotiated, parse_selected
from tickwire.server import Server
from tickwire.testing import MemoryListener

PROBE = 4_242_424


class Client:
    """A minimal tickwire/2 client over trio-websocket, for tests."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, offer: list[str]) -> None:
        self.ws = ws
        self.session = Session(Role.CLIENT, parse_selected(ws.subprotocol, offer))
        self.pending: list[Event] = []

    async def send(self, event: Event) -> None:
        await self.ws.send_message(self.session.send(event))

    async def receive(self) -> Event:
        while not self.pending:
            self.session.receive_message(await self.ws.get_message())
            self.pending.extend(self.session.events_received())
        return self.pending.pop(0)

    async def outcome_of(self, message: bytes | str) -> int:
        """Send *message*, then a probe request: the close code it caused, or 0 when the
        connection stayed open and answered the probe."""
        probe = self.session.send(Subscribe(PROBE, "probe"))
        try:
            await self.ws.send_message(message)
            await self.ws.send_message(probe)
            while True:
                event = await self.receive()
                if isinstance(event, Ack | Error) and event.request_id == PROBE:
                    return 0
        except trio_websocket.ConnectionClosed as exc:
            return exc.reason.code if exc.reason is not None else 1006

    async def close_code(self) -> int:
        """Read until the server closes; return its close code."""
        try:
            while True:
                await self.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            return exc.reason.code if exc.reason is not None else 1006


@asynccontextmanager
async def connect(
    port: int, *, offer: list[str] | None = None, **kwargs: Any
) -> AsyncIterator[Client]:
    offer = client_offer() if offer is None else offer
    async with trio_websocket.open_websocket(
        "127.0.0.1", port, "/", use_ssl=False, subprotocols=offer, **kwargs
    ) as ws:
        try:
            yield Client(ws, offer)
        finally:
            # trio-websocket's client leaves its socket open when the server closed first.
            await trio.aclose_forcefully(ws._stream)


async def handshake(
    port: int,
    *,
    subprotocols: list[str] | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> AcceptConnection | RejectConnection:
    """One handshake over a TCP stream this test owns; the server's answer."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        return await RawClient(stream).handshake(subprotocols, extra_headers=list(headers))  # type: ignore[no-any-return]


class RawClient:
    """A wsproto client over any trio stream: it reads only when told to."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: list[Any] = []

    async def handshake(
        self, subprotocols: list[str] | None = None, *, target: str = "/", **kwargs: Any
    ) -> Any:
        request = Request(
            host="localhost", target=target, subprotocols=subprotocols or client_offer(), **kwargs
        )
        await self.stream.send_all(self.ws.send(request))
        while True:
            event = await self.next_event()
            if isinstance(event, AcceptConnection | RejectConnection):
                return event

    async def next_event(self) -> Any:
        while not self.events:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(bytes(data) or None)
            self.events.extend(self.ws.events())
            if not data and not self.events:
                raise EOFError
        return self.events.pop(0)

    async def send_bytes(self, data: bytes, *, fragments: int = 1) -> None:
        step = max(1, len(data) // fragments)
        chunks = [data[i : i + step] for i in range(0, len(data), step)]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            try:
                await self.stream.send_all(self.ws.send(BytesMessage(chunk, message_finished=last)))
            except trio.BrokenResourceError:
                return  # the server closed mid-message: read its close frame next

    async def close_code(self, *, answer_pings: bool = False) -> int:
        """Read until a close frame; return its code."""
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                return event.code
            if answer_pings and isinstance(event, Ping):
                await self.stream.send_all(self.ws.send(event.response()))

    async def messages(self, count: int) -> list[bytes | str]:
        out: list[bytes | str] = []
        while len(out) < count:
            message = await self.message()
            out.append(message)
        return out

    async def message(self, *, answer_pings: bool = False) -> bytes | str:
        """The next whole message (wsproto hands over large ones in pieces)."""
        parts: list[bytes | str] = []
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                raise ConnectionError(f"closed with {event.code} while waiting for messages")
            if answer_pings and isinstance(event, Ping):
                await self.stream.send_all(self.ws.send(event.response()))
            if isinstance(event, BytesMessage | TextMessage):
                parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
                if event.message_finished:
                    if isinstance(parts[0], str):
                        return "".join(p for p in parts if isinstance(p, str))
                    return b"".join(p for p in parts if isinstance(p, bytes))


# -- a server on memory streams, and a plain msgpack client session ----------------------

CLIENT = Session(Role.CLIENT, Negotiated.of(MSGPACK))


def encode(event: Event) -> bytes:
    """*event* as a client sends it on ``tickwire.v2``."""
    message = CLIENT.send(event)
    assert isinstance(message, bytes)
    return message


def decode(message: bytes | str) -> Any:
    """One message from the server, decoded."""
    CLIENT.receive_message(message)
    (event,) = CLIENT.events_received()
    return event


async def start_memory_server(
    nursery: trio.Nursery,
    config: ServerConfig | None = None,
    *,
    lockstep: bool = False,
    **server: Any,
) -> tuple[Server, MemoryListener]:
    """A server on a :class:`MemoryListener`, running in *nursery*."""
    listener = MemoryListener(lockstep=lockstep)
    running = Server(Hub(), config=config, **server)
    await nursery.start(functools.partial(running.serve_listeners, [listener]))
    return running, listener


async def open_raw(listener: MemoryListener, **kwargs: Any) -> RawClient:
    """A raw client through the handshake on ``tickwire.v2``, HELLO read."""
    raw = RawClient(await listener.connect())
    accepted = await raw.handshake([MSGPACK], **kwargs)
    assert isinstance(accepted, AcceptConnection)
    assert accepted.subprotocol == MSGPACK
    (hello,) = await raw.messages(1)
    assert isinstance(decode(hello), Hello)
    return raw


@attrs.frozen
class Served:
    """A `tickwire serve` subprocess, with the addresses it printed."""

    process: subprocess.Popen[str]
    url: str  # ws://127.0.0.1:PORT/
    metrics: str | None  # http://127.0.0.1:PORT/metrics, when it serves them


@contextmanager
def tickwire_serve(*flags: str, metrics: bool = False) -> Iterator[Served]:
    """Run ``tickwire serve FLAGS --port 0`` (and ``--metrics-port 0`` or ``off``) for the
    block; what still runs at the end is stopped (SIGTERM, then SIGKILL)."""
    ports = ["--port", "0", "--metrics-port", "0" if metrics else "off"]
    process = subprocess.Popen(
        [sys.executable, "-m", "tickwire.cli", "serve", *ports, *flags],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        found = re.search(r"ws://127\.0\.0\.1:\d+/", process.stdout.readline())
        assert found is not None, "tickwire serve did not say where it serves"
        endpoint = None
        if metrics:
            endpoint = re.search(r"http://127\.0\.0\.1:\d+/metrics", process.stdout.readline())
            assert endpoint is not None
        yield Served(process, found.group(0), endpoint.group(0) if endpoint else None)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
