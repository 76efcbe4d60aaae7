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
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import trio

from tickwire.sources.bridge import Acknowledging, Handler

log = logging.getLogger("tickwire.sources")

__all__ = [
    "AsyncioSource",
    "call_trio",
    "close_despite_cancel",
    "run_in_asyncio",
    "serve_in_asyncio",
]

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


async def close_despite_cancel(close: Callable[[], Awaitable[Any]]) -> None:
    """From asyncio code: run ``close()`` to its end even if the task is cancelled meanwhile
    (a cancel that lands in the middle of a client's close leaves its socket open), then
    let the cancellation through."""
    closing = asyncio.ensure_future(close())
    cancelled = False
    while not closing.done():
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


Consume = Callable[[trio.lowlevel.TrioToken, Callable[[], Awaitable[None]]], Awaitable[None]]


async def serve_in_asyncio(
    consume: Consume,
    *,
    what: str,
    retry_delay: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a source's asyncio side, ``consume(token, started)``, until cancelled: started
    (in trio) once ``consume`` awaits ``started()``, and run again *retry_delay* seconds
    after it fails (the broker unreachable, a connection lost), saying so in the log."""
    token = trio.lowlevel.current_trio_token()
    ready = trio.Event()

    async def started() -> None:
        ready.set()

    async def main() -> None:
        await consume(token, started)

    async def supervise() -> None:
        while True:
            try:
                await run_in_asyncio(main)
            except Exception as exc:  # the client's errors, the connection's
                log.warning("%s failed (%s); retrying", what, exc)
                await trio.sleep(retry_delay)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervise)
        await ready.wait()
        task_status.started()


class AsyncioSource(Acknowledging):
    """A source whose client is asyncio's: ``run`` is :func:`serve_in_asyncio` of its
    ``_consume(token, handle, started)``."""

    __slots__ = ()
    broker: str = "the broker"  # for the log
    name: str
    retry_delay: float

    async def _consume(self, token: trio.lowlevel.TrioToken, handle: Handler, started: Any) -> None:
        raise NotImplementedError

    async def run(
        self, handle: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume until cancelled; the broker unreachable is retried every *retry_delay*."""

        async def consume(token: trio.lowlevel.TrioToken, started: Any) -> None:
            await self._consume(token, handle, started)

        what = f"source {self.name}: {self.broker}"
        await serve_in_asyncio(
            consume, what=what, retry_delay=self.retry_delay, task_status=task_status
        )
