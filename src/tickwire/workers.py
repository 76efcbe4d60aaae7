"""``tickwire serve --workers N``: N server processes on one port, supervised.

Imports: trio, attrs.

The supervisor runs N copies of the same ``tickwire serve`` command, each told its index in
``TICKWIRE_WORKER`` ("i/N"). They listen on the same port with ``SO_REUSEPORT`` (the kernel
spreads new connections over them) and share every topic through the Redis backplane, so
that a client may land on any of them. Worker *i* serves its metrics on ``metrics_port +
i``; only the first runs a demo's feed. The supervisor passes on their output, one
``[worker i]`` prefix per line; restarts a worker that dies (after 1 s, doubling up to 30 s
while it keeps dying); and on SIGTERM or SIGINT drains all of them at once: each gets
SIGTERM (tickwire serve's graceful shutdown: 1001 to every client) and has the drain
deadline before SIGKILL. A worker that fails as it starts (a port in use) stops them all:
the next would fail alike.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from typing import TextIO

import attrs
import trio

__all__ = ["WORKER_ENV", "Supervisor", "worker"]

WORKER_ENV = "TICKWIRE_WORKER"
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
STEADY = 60.0  # seconds up after which a worker's backoff starts again from FIRST_BACKOFF


def worker() -> tuple[int, int]:
    """(index, count) of this process among ``--workers``; (0, 1) when alone."""
    index, sep, count = os.environ.get(WORKER_ENV, "").partition("/")
    if sep and index.isdigit() and count.isdigit() and int(index) < int(count):
        return int(index), int(count)
    return 0, 1


def reserve_port(host: str) -> socket.socket:
    """A socket bound (not listening) to a free port of *host* with ``SO_REUSEPORT``: the
    workers can listen on its port, and no other program takes it meanwhile."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock


@attrs.define(eq=False)
class _Worker:
    index: int
    process: trio.Process | None = None
    ready: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class Supervisor:
    """Run *count* workers of *command* (``tickwire`` arguments beginning with ``serve``)
    on *port* until SIGTERM or SIGINT.

    Attributes:
        command: the serve command's arguments, as given.
        count: how many workers.
        url: what the workers serve, for the line that says they all do.
        port: the port they share (already chosen: never 0).
        metrics_port: worker 0's metrics port (None: no metrics; 0: any free one).
        drain: seconds each worker has to shut down after SIGTERM before SIGKILL.
        out: where their output goes.
    """

    command: Sequence[str]
    count: int
    url: str
    port: int
    metrics_port: int | None
    drain: float
    out: TextIO = sys.stdout
    _workers: list[_Worker] = attrs.field(init=False, factory=list)
    _stop: trio.Event = attrs.field(init=False, factory=trio.Event)
    _stopping: bool = attrs.field(init=False, default=False)
    _status: int = attrs.field(init=False, default=0)

    def _argv(self, index: int) -> list[str]:
        metrics = "off"
        if self.metrics_port is not None:
            metrics = str(self.metrics_port + index if self.metrics_port else 0)
        return [
            sys.executable,
            "-m",
            "tickwire",
            *self.command,
            "--port",
            str(self.port),
            "--metrics-port",
            metrics,
        ]

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    async def run(self, reserved: socket.socket | None = None) -> int:
        """Supervise until told to stop; return the exit status (0 after a drain, 1 when
        a worker failed as it started). *reserved* (from :func:`reserve_port`) is closed
        once every worker listens."""
        self._workers = [_Worker(i) for i in range(self.count)]
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                for w in self._workers:
                    nursery.start_soon(self._keep, w)
                nursery.start_soon(self._announce, reserved)
                nursery.start_soon(self._signalled, signals)
                await self._stop.wait()
                self._stopping = True
                await self._drain_all()
                nursery.cancel_scope.cancel()
        return self._status

    async def _signalled(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            self._say(f"tickwire: {signal.Signals(signum).name}, draining {self.count} workers")
            self._stop.set()
            return

    async def _announce(self, reserved: socket.socket | None) -> None:
        for w in self._workers:
            await w.ready.wait()
        if reserved is not None:
            reserved.close()
        self._say(f"tickwire: {self.count} workers serving on {self.url}")

    async def _keep(self, w: _Worker) -> None:
        """Run worker *w*, and again each time it dies, until the supervisor stops."""
        backoff = FIRST_BACKOFF
        env = dict(os.environ, **{WORKER_ENV: f"{w.index}/{self.count}"})
        while not self._stopping:
            process = await trio.lowlevel.open_process(
                self._argv(w.index), env=env, stdout=subprocess.PIPE
            )
            w.process = process
            started = trio.current_time()
            assert process.stdout is not None
            await self._forward(w, process.stdout)
            status = await process.wait()
            w.process = None
            if self._stopping:
                return
            if not w.ready.is_set():  # it never served: the next would fail alike
                self._say(f"tickwire: worker {w.index + 1} failed as it started (status {status})")
                self._status = 1
                self._stop.set()
                return
            if trio.current_time() - started > STEADY:
                backoff = FIRST_BACKOFF
            self._say(
                f"tickwire: worker {w.index + 1} exited (status {status}); "
                f"starting it again in {backoff:g} s"
            )
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _forward(self, w: _Worker, stdout: trio.abc.ReceiveStream) -> None:
        """Pass on a worker's output line by line, and see when it serves."""
        buffer = b""
        while True:
            chunk = await stdout.receive_some(65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                if line.startswith("tickwire serving on"):
                    w.ready.set()
                self._say(f"[worker {w.index + 1}] {line}")
        if buffer:
            self._say(f"[worker {w.index + 1}] {buffer.decode(errors='replace')}")

    async def _drain_all(self) -> None:
        """SIGTERM to every worker, then SIGKILL to those still running at the deadline."""
        running = [w.process for w in self._workers if w.process is not None]
        for process in running:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.drain if math.isfinite(self.drain) else 60.0):
            for process in running:
                await process.wait()
        for process in running:
            if process.returncode is None:
                process.kill()
                await process.wait()
        self._say(f"tickwire: {self.count} workers shut down")
