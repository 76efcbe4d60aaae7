"""§5.3: a dictionary trained on a topic's traffic, rotated in without reconnecting anyone."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from wsproto.events import AcceptConnection

from tests.helpers import RawClient, start_memory_server
from tickwire.sansio import DictRequest, Hello, Role, Session, Subscribe
from tickwire.sansio.events import Ack, Data, Resync, Subscribed
from tickwire.sansio.negotiation import MSGPACK_ZSTD, Negotiated
from tickwire.sim import MarketFeed


class ZstdClient:
    """A raw client on ``tickwire.v2+zstd`` that fetches dictionaries as they are offered."""

    def __init__(self, raw: RawClient) -> None:
        self.raw = raw
        self.session = Session(Role.CLIENT, Negotiated.of(MSGPACK_ZSTD))
        self.pending: list[Any] = []
        self.headers: list[int] = []  # the envelope header of every message received

    async def send(self, event: Any) -> None:
        message = self.session.send(event)
        assert isinstance(message, bytes)
        await self.raw.send_bytes(message)

    async def next(self) -> Any:
        while not self.pending:
            message = await self.raw.message()
            assert isinstance(message, bytes)
            self.session.receive_message(message)
            for dict_id in self.session.dictionaries_to_fetch():
                await self.send(DictRequest(dict_id))
            self.pending.extend(self.session.events_received())
            self.headers.append(message[0])
        return self.pending.pop(0)

    def dict_ids(self) -> set[int]:
        """The dictionary ids the messages received so far were compressed with."""
        return {(h & 0x1E) >> 1 for h in self.headers}

    async def data(self, count: int) -> list[Data]:
        out: list[Data] = []
        while len(out) < count:
            event = await self.next()
            if isinstance(event, Data):
                out.append(event)
        return out


async def test_rotation_reaches_a_connected_client_and_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        server, listener = await start_memory_server(nursery)
        hub = server.hub
        raw = RawClient(await listener.connect())
        assert isinstance(await raw.handshake([MSGPACK_ZSTD]), AcceptConnection)
        client = ZstdClient(raw)
        assert isinstance(await client.next(), Hello)
        await client.send(Subscribe(1, "quotes"))
        subscribed = await client.next()
        assert isinstance(subscribed, Subscribed)
        assert await client.next() == Ack(1)
        feed = MarketFeed(seed=3)
        sent = [feed.next() for _ in range(200)]
        for quote in sent[:100]:
            hub.publish_nowait("quotes", quote)
        assert [d.payload for d in await client.data(100)] == sent[:100]
        assert client.dict_ids() == {0}
        client.headers.clear()

        first = hub.rotate_dictionary(hub.train_dictionary(["quotes"], size=4096))
        for quote in sent[100:150]:
            hub.publish_nowait("quotes", quote)
        received = await client.data(50)  # after the offer, fetched before decoding
        assert [d.payload for d in received] == sent[100:150]
        assert first.dict_id in client.dict_ids()  # the DICT_OFFER and DICT_DATA are plain
        assert client.session.dictionaries.is_loaded(first.dict_id)

        # Two more rotations: the first dictionary leaves the offer, and what is replayed
        # from history is compressed again with one still on offer.
        hub.rotate_dictionary(hub.train_dictionary(["quotes"], size=4096))
        third = hub.rotate_dictionary(hub.train_dictionary(["quotes"], size=4096))
        assert first.dict_id not in {i.dict_id for i in hub.dictionaries.offer()}
        for quote in sent[150:]:
            hub.publish_nowait("quotes", quote)
        assert [d.payload for d in await client.data(50)] == sent[150:]
        client.headers.clear()
        await client.send(Resync(2, subscribed.topic_id, 120))
        replay = await client.data(80)
        assert [d.payload for d in replay] == sent[120:]
        assert client.dict_ids() <= {0, third.dict_id}  # never the one that left
        assert len(server.connections) == 1
        nursery.cancel_scope.cancel()


def test_a_dictionary_given_to_the_hub_is_on_offer() -> None:
    from tickwire.broadcast import Hub
    from tickwire.sansio import CompressionConfig, Dictionary

    samples = [str(q).encode() for q in MarketFeed(seed=1).take(200)]
    dictionary = Dictionary.train(samples, dict_id=1, size=2048)
    hub = Hub(compression=CompressionConfig(dictionary=dictionary))
    (info,) = hub.dictionaries.offer()
    assert info.sha256 == dictionary.sha256
    assert hub.compression.dictionary is not None
    assert hub.compression.dictionary.dict_id == info.dict_id
