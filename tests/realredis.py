"""Real redis-server processes for the backplane's tests, each on a free loopback port.

Never the instance on the default port: every test starts its own, and stops it by its
process id. Readiness is read from the server's own log line, not waited for by sleeping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
needs_redis = pytest.mark.skipif(
    not os.access(REDIS_SERVER, os.X_OK), reason="redis-server is not installed"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1:*port*, without persistence (a restart
    starts it empty, as after a crash of a cache-only Redis)."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.log: list[str] = []
        self._drain: threading.Thread | None = None
        self._logged = threading.Condition()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start it and return once it accepts connections."""
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--loglevel",
            "notice",
            *self.extra,
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        seen = []
        for raw in self.process.stdout:  # blocks on the server's own log, line by line
            line = raw.decode(errors="replace")
            seen.append(line)
            if "Ready to accept connections" in line:
                break
            if time.monotonic() > deadline:
                break
        else:
            self.process.stdout.close()
            self.process.wait(timeout=10)
            raise RuntimeError("redis-server ended before it was ready:\n" + "".join(seen))
        if not any("Ready to accept connections" in line for line in seen):
            self.kill()
            raise RuntimeError("redis-server was not ready in time:\n" + "".join(seen))
        # From now on its log is drained (and kept) by a thread, so the pipe never fills.
        stream = self.process.stdout
        self.log = seen

        def drain() -> None:
            with stream:
                for line in stream:
                    with self._logged:
                        seen.append(line.decode(errors="replace"))
                        self._logged.notify_all()

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()

    def wait_logged(self, text: str, timeout: float = 20.0) -> None:
        """Return once the server's log has a line with *text* (it is woken by each line)."""
        with self._logged:
            if not self._logged.wait_for(lambda: any(text in x for x in self.log), timeout):
                raise RuntimeError(f"redis-server on {self.port} never logged {text!r}")

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is written, nothing is said to its clients."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._joined()

    def _joined(self) -> None:
        """The log's drain ends with the process (its pipe closes)."""
        if self._drain is not None:
            self._drain.join(timeout=10)
            self._drain = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._joined()

    def cli(self, *args: str) -> str:
        """Run one redis-cli command against it; its output."""
        result = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), *args],
            capture_output=True,
            check=True,
            timeout=10,
        )
        return result.stdout.decode()


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[RedisServer]:
    """A started redis-server, stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="tickwire-redis-") as directory:
        server = RedisServer(Path(directory), None, *extra)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def redis_cluster(size: int = 3) -> Iterator[list[RedisServer]]:
    """A Redis Cluster of *size* primaries (no replicas), each a redis-server started here
    with ``--cluster-enabled yes`` and joined by ``redis-cli --cluster create``; stopped at
    the end. It returns once every node has logged that the cluster is ok."""
    with tempfile.TemporaryDirectory(prefix="tickwire-cluster-") as directory:
        nodes = []
        try:
            for index in range(size):
                path = Path(directory) / str(index)
                path.mkdir()
                node = RedisServer(
                    path,
                    None,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(path / "nodes.conf"),
                    "--cluster-port",  # the bus port (else port + 10000, maybe taken)
                    str(free_port()),
                    "--cluster-node-timeout",
                    "5000",
                )
                nodes.append(node)
                node.start()
            subprocess.run(
                [
                    REDIS_CLI,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{node.port}" for node in nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                check=True,
                timeout=60,
            )
            for node in nodes:
                node.wait_logged("Cluster state changed: ok")
            yield nodes
        finally:
            for node in nodes:
                node.stop()


class Proxy:
    """A TCP relay to a Redis server that can go silent on chosen connections: it keeps
    reading both ways but forwards nothing, as a half-dead link does (the peer's writes
    succeed, nothing comes back). Run it with ``await nursery.start(proxy.run)``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._frozen: set[int] = set()
        self._pubsub: set[int] = set()
        self._ids = iter(range(1, 1 << 30))
        self.connections = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def freeze_pubsub(self) -> int:
        """Silence every connection open now that subscribed to something; how many."""
        self._frozen |= self._pubsub
        return len(self._pubsub)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, client: trio.SocketStream) -> None:
        ident = next(self._ids)
        self.connections += 1
        async with client, await trio.open_tcp_stream("127.0.0.1", self.target_port) as server:
            async with trio.open_nursery() as nursery:

                async def pump(
                    source: trio.SocketStream, sink: trio.SocketStream, up: bool
                ) -> None:
                    try:
                        while data := await source.receive_some(65536):
                            if up and b"SUBSCRIBE" in data:
                                self._pubsub.add(ident)
                            if ident not in self._frozen:
                                await sink.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(pump, client, server, True)
                nursery.start_soon(pump, server, client, False)
