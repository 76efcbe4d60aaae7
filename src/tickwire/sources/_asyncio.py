"""Running an asyncio broker client beside trio: its own event loop in a worker thread.

Imports: asyncio, trio.

The well-kept clients of NATS (nats-py) and RabbitMQ (aio-pika) are asyncio-only. Rather
than writing those protocols again, a source runs its client's coroutine on an asyncio loop
in one worker thread (:func:`run_in_asyncio`) and calls back into trio for each message
(:func:`call_trio`), from an executor thread so that the asyncio loop keeps serving its
connection (heartbeats, flow control) while trio publishes. Cancelling the trio side
cancels the asyncio task and waits for it to finish cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import trio

__all__ = ["call_trio", "run_in_asyncio"]

T = TypeVar("T")


async def run_in_asyncio(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on a new asyncio loop in a worker thread until it returns (its result)
    or raises (re-raised here); cancelling this cancels it and waits for it to end."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    def thread() -> T:
        async def wrapper() -> T:
            box["loop"], box["task"] = asyncio.get_running_loop(), asyncio.current_task()
            ready.set()
            return await main()

        try:
            return asyncio.run(wrapper())
        finally:
            ready.set()

    async def cancel_when_cancelled(task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(ready.wait)
            loop, task = box.get("loop"), box.get("task")
            if loop is not None and task is not None and not loop.is_closed():
                # RuntimeError: the loop closed meanwhile, so it has ended anyway.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(task.cancel)

    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(cancel_when_cancelled)
        try:
            # Not abandoned on cancel: the thread always ends, told by the task above. It
            # has a limiter of its own: it would hold one of trio's default ones for ever.
            result = await trio.to_thread.run_sync(thread, limiter=trio.CapacityLimiter(1))
        except asyncio.CancelledError:
            await trio.lowlevel.checkpoint()  # cancelled from here: raises trio's Cancelled
            failure = RuntimeError("the asyncio client was cancelled")
        except Exception as exc:  # raised as itself below, not inside this nursery's group
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result


def call_trio(
    token: trio.lowlevel.TrioToken, function: Callable[..., Awaitable[T]], *args: Any
) -> Awaitable[T]:
    """From asyncio code: await ``function(*args)`` run in trio (where *token* came from),
    without blocking the asyncio loop."""
    loop = asyncio.get_running_loop()
    return loop.run_in_executor(
        None, lambda: trio.from_thread.run(function, *args, trio_token=token)
    )
