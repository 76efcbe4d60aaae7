"""Helpers for testing code that embeds tickwire: an in-memory listener.

Imports: trio, trio.testing.

``MemoryListener`` lets a :class:`tickwire.server.Server` run without sockets, so tests can
drive time with trio's ``MockClock`` (autojump) and control how fast each peer reads.
"""

from __future__ import annotations

import math

import trio
import trio.testing

__all__ = ["MemoryListener"]


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs.

    Args:
        lockstep: use ``trio.testing.lockstep_stream_pair``, where a write waits until the
            other side reads (a peer that stops reading blocks the server's writes), instead
            of ``memory_stream_pair`` (buffered).
    """

    def __init__(self, *, lockstep: bool = False) -> None:
        self._lockstep = lockstep
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](math.inf)

    async def connect(self) -> trio.abc.Stream:
        """Open a connection to this listener; return the client's end."""
        pair = (
            trio.testing.lockstep_stream_pair if self._lockstep else trio.testing.memory_stream_pair
        )
        client, server = pair()
        await self._send.send(server)
        return client

    async def open_stream(self, url: str) -> trio.abc.Stream:
        """:meth:`connect`, for ``open_client(url, open_stream=listener.open_stream)``."""
        return await self.connect()

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError from None

    async def aclose(self) -> None:
        self._receive.close()
        await trio.lowlevel.checkpoint()
