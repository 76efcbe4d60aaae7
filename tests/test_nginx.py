"""examples/nginx.conf, run by a real nginx in front of two real tickwire servers: TLS
terminated, WebSocket upgraded, connections balanced, messages flowing, client addresses
forwarded. Skipped where nginx is not installed (.ci/run installs it)."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import trio
import trustme

import tickwire
from tickwire import ClientConfig, Hub, Reconnect, ServerConfig

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
EXAMPLE = Path(__file__).parent.parent / "examples" / "nginx.conf"
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def configure(prefix: Path, listen: int, backends: list[int]) -> Path:
    """The example, with free ports and this test's certificate paths."""
    text = EXAMPLE.read_text()
    assert "listen 8443 ssl;" in text
    text = text.replace("listen 8443 ssl;", f"listen 127.0.0.1:{listen} ssl;")
    text = text.replace("127.0.0.1:8765", f"127.0.0.1:{backends[0]}")
    text = text.replace("127.0.0.1:8767", f"127.0.0.1:{backends[1]}")
    text = text.replace("worker_processes auto;", "worker_processes 1;")
    path = prefix / "nginx.conf"
    path.write_text(text)
    return path


def tls(prefix: Path) -> ssl.SSLContext:
    """The certificate the example serves (prefix/tls/cert.pem and key.pem, for
    localhost), and a client context that trusts it."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    (prefix / "tls").mkdir()
    cert.private_key_pem.write_to_path(prefix / "tls" / "key.pem")
    cert.cert_chain_pems[0].write_to_path(prefix / "tls" / "cert.pem")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@needs_nginx
async def test_nginx_terminates_tls_and_balances_websockets(tmp_path: Path) -> None:
    assert NGINX is not None
    client_tls = tls(tmp_path)

    hubs = [Hub(), Hub()]
    config = ServerConfig(
        shutdown_timeout=1, trusted_proxies=["127.0.0.1"], client_publish=["chat"]
    )
    fast = ClientConfig(reconnect=Reconnect(initial_delay=0.05, max_delay=0.2))
    listen = free_port()
    with trio.fail_after(30):
        async with (
            tickwire.open_server(hubs[0], "127.0.0.1", 0, config=config) as one,
            tickwire.open_server(hubs[1], "127.0.0.1", 0, config=config) as two,
        ):
            conf = configure(tmp_path, listen, [one.port, two.port])
            check = subprocess.run(
                [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert check.returncode == 0, check.stderr
            nginx = await trio.lowlevel.open_process([NGINX, "-p", str(tmp_path), "-c", str(conf)])
            try:
                await wait_for_port(listen)
                url = f"wss://localhost:{listen}/"
                async with (
                    tickwire.open_client(url, ssl_context=client_tls, config=fast) as a,
                    tickwire.open_client(url, ssl_context=client_tls, config=fast) as b,
                    tickwire.open_client(url, ssl_context=client_tls, config=fast) as c,
                    tickwire.open_client(url, ssl_context=client_tls, config=fast) as d,
                ):
                    # least_conn: four long-lived connections, two on each server.
                    assert (len(one.connections), len(two.connections)) == (2, 2)
                    remotes = {x.remote for s in (one, two) for x in s.connections}
                    assert remotes == {"127.0.0.1"}  # from X-Forwarded-For, via the proxy
                    for client in (a, b, c, d):
                        assert client.statistics().subprotocol == "tickwire.v2+zstd"
                    async with a.subscribe("news") as sa, d.subscribe("news") as sd:
                        for hub in hubs:
                            hub.publish_nowait("news", {"via": "nginx"})
                        assert (await sa.receive()).payload == {"via": "nginx"}  # type: ignore[union-attr]
                        assert (await sd.receive()).payload == {"via": "nginx"}  # type: ignore[union-attr]
                    ack = await b.publish("chat", "hello through the proxy")
                    assert ack.offset == 1
            finally:
                nginx.terminate()
                with trio.move_on_after(10):
                    await nginx.wait()
                if nginx.returncode is None:
                    nginx.kill()
                    await nginx.wait()


async def wait_for_port(port: int) -> None:
    """nginx is up when its port accepts (it prints nothing when it starts)."""
    while True:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.02)
            continue
        await stream.aclose()
        return


def test_the_example_keeps_what_websockets_need() -> None:
    text = EXAMPLE.read_text()
    assert "proxy_http_version 1.1;" in text
    assert re.search(r"proxy_set_header Upgrade \$http_upgrade;", text)
    assert "proxy_set_header Connection $connection_upgrade;" in text
    timeout = int(re.search(r"proxy_read_timeout (\d+)s;", text).group(1))  # type: ignore[union-attr]
    assert timeout > ServerConfig().heartbeat_interval  # longer than the heartbeat
