"""Hub.listen: the program reads what clients publish (game input), with ACKs that keep
their promise: a full listener refuses with 503 rather than losing a message."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import tickwire
from tickwire import ClientConfig, Hub, Overloaded, PublishError, Reconnect, ServerConfig

FAST = ClientConfig(reconnect=Reconnect(initial_delay=0.01, max_delay=0.05), heartbeat_interval=5)
CONFIG = ServerConfig(shutdown_timeout=1, client_publish=["input.*"])


async def test_client_publishes_reach_the_listener_in_order_with_their_offsets() -> None:
    hub = Hub()
    with hub.listen("input.*") as inputs:
        async with tickwire.open_server(hub, "127.0.0.1", 0, config=CONFIG) as server:
            async with tickwire.open_client(f"ws://127.0.0.1:{server.port}/", config=FAST) as c:
                first = await c.publish("input.ann", {"move": [1, 0]})
                second = await c.publish("input.ann", {"move": [0, 1]})
                other = await c.publish("input.bob", {"fire": True})
                hub.publish_nowait("input.ann", {"move": [0, 0]})  # the program's own
                hub.publish_nowait("chat.lobby", "not listened to")
        received = [inputs.receive_nowait() for _ in range(4)]
        assert inputs.receive_nowait() is None
    assert [(m.topic, m.offset, m.payload) for m in received if m is not None] == [
        ("input.ann", first.offset, {"move": [1, 0]}),
        ("input.ann", second.offset, {"move": [0, 1]}),
        ("input.bob", other.offset, {"fire": True}),
        ("input.ann", 3, {"move": [0, 0]}),
    ]


async def test_a_full_listener_refuses_with_503_and_loses_nothing() -> None:
    hub = Hub()
    with hub.listen("input.*", max_buffered=2) as inputs:
        async with tickwire.open_server(hub, "127.0.0.1", 0, config=CONFIG) as server:
            async with tickwire.open_client(f"ws://127.0.0.1:{server.port}/", config=FAST) as c:
                await c.publish("input.ann", 1)
                await c.publish("input.ann", 2)
                with pytest.raises(PublishError) as info:
                    await c.publish("input.ann", 3)
                assert info.value.code == 503
                assert (await inputs.receive()).payload == 1  # the game loop catches up
                ack = await c.publish("input.ann", 3)  # the client retries: accepted
                assert ack.offset == 3
                with pytest.raises(Overloaded):
                    hub.publish_nowait("input.ann", 4)
        assert [inputs.receive_nowait() for _ in range(2)] == [
            tickwire.Published("input.ann", 2, 2),
            tickwire.Published("input.ann", 3, 3),
        ]
    assert hub.topic("input.ann").offset == 3  # the refused ones were not published


def test_closing_stops_listening() -> None:
    hub = Hub()
    listener = hub.listen("input.ann")
    hub.publish_nowait("input.ann", "a")
    listener.close()
    hub.publish_nowait("input.ann", "b")
    assert listener.receive_nowait() == tickwire.Published("input.ann", 1, "a")
    assert listener.receive_nowait() is None
    with pytest.raises(ValueError, match="invalid topic pattern"):
        hub.listen("input.a*")


async def test_publish_with_backpressure_waits_for_the_listener(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub()
    with hub.listen("jobs", max_buffered=1) as jobs:
        await hub.publish("jobs", "first")
        async with trio.open_nursery() as nursery:
            done: list[int] = []

            async def second() -> None:
                done.append(await hub.publish("jobs", "second"))

            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            assert done == []  # waiting for room
            assert (await jobs.receive()).payload == "first"
        assert done == [2]
        assert (await jobs.receive()).payload == "second"
        await hub.publish("jobs", "third")
        with pytest.raises(Overloaded):
            await hub.publish("jobs", "fourth", timeout=0.01)  # nobody reads: gives up
        assert len(jobs) == 1


async def test_receive_waits_for_a_message() -> None:
    hub = Hub()
    with hub.listen("jobs") as jobs:
        async with trio.open_nursery() as nursery:
            got: list[object] = []

            async def reader() -> None:
                async for message in jobs:
                    got.append(message.payload)
                    if len(got) == 2:
                        return

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            hub.publish_nowait("jobs", "a")
            hub.publish_nowait("jobs", "b")
        assert got == ["a", "b"]


async def test_publish_many_refuses_the_tail_after_a_full_listener(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = Hub()
    with hub.listen("jobs", max_buffered=1) as jobs:
        answers = await hub.publish_many(
            [("jobs", "a", None), ("jobs", "b", None), ("other", "c", None)], timeout=1.0
        )
        assert answers[0] == 1
        # "b" found no room: neither it nor what follows it was published, so publishing
        # that tail again keeps the order.
        assert [type(a) for a in answers[1:]] == [Overloaded, Overloaded]
        assert hub.topic_by_name("other") is None
        assert len(jobs) == 1
