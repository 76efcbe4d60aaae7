"""`tickwire tail`: what it prints for streams and tables, its bounds and its errors,
against a real server on loopback."""

from __future__ import annotations

import io
import json
import socket

import trio
from rich.console import Console

import tickwire
from tickwire import Hub, ServerConfig
from tickwire.auth import Principal
from tickwire.sansio.table import Field, Schema
from tickwire.tail import TailOptions, tail

SCHEMA = Schema("symbol", [Field.fixed("bid", 2), Field.integer("size")])
CONFIG = ServerConfig(shutdown_timeout=1)


def console() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, width=120, highlight=False), text


async def run_tail(options: TailOptions, hub: Hub, publish: object) -> tuple[int, str, str]:
    """Run tail until it stops by itself, calling *publish()* once it is subscribed."""
    out = io.StringIO()
    err, err_text = console()
    status: list[int] = []

    async def runner(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        status.append(await tail(options, out=out, err=err, task_status=task_status))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner)
            publish()  # type: ignore[operator]
    return status[0], out.getvalue(), err_text.getvalue()


async def run_failing(options: TailOptions) -> tuple[int, str, str]:
    out = io.StringIO()
    err, err_text = console()
    with trio.fail_after(20):
        status = await tail(options, out=out, err=err)
    return status, out.getvalue(), err_text.getvalue()


async def test_json_lines_for_a_stream_and_a_table_then_it_stops_at_count() -> None:
    hub = Hub()
    hub.table("quotes", SCHEMA)
    hub.upsert("quotes", "ACME", {"bid": 10.5, "size": 100})
    hub.upsert("quotes", "OLD", {"bid": 1.0, "size": 1})
    async with tickwire.open_server(hub, "127.0.0.1", 0, config=CONFIG) as server:

        def publish() -> None:
            hub.publish_nowait("trades.ACME", {"price": 10.5, "size": 3})
            hub.upsert("quotes", "ACME", {"bid": 10.75})
            hub.delete("quotes", "OLD")
            hub.publish_nowait("trades.ACME", {"price": 10.6, "size": 1})

        options = TailOptions(
            url=f"ws://127.0.0.1:{server.port}/",
            topics=("quotes", "trades.*"),
            json=True,
            count=5,  # the snapshot, two trades, two row changes: then it stops
            stats_interval=None,
        )
        status, out, err = await run_tail(options, hub, publish)
    assert status == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 5
    assert lines[0] == {
        "type": "reset",
        "topic": "quotes",
        "offset": 2,  # two upserts before anybody subscribed
        "reason": "subscribed",
        "rows": [
            {"symbol": "ACME", "bid": "10.50", "size": 100},  # exact: as a string of digits
            {"symbol": "OLD", "bid": "1.00", "size": 1},
        ],
    }
    trades = [line for line in lines if line["type"] == "message"]
    assert [t["payload"]["price"] for t in trades] == [10.5, 10.6]
    assert all(t["topic"] == "trades.ACME" for t in trades)
    changes = [line for line in lines if line["type"] == "change"]
    assert changes[0]["row"] == {"symbol": "ACME", "bid": "10.75", "size": 100}
    assert changes[0]["changed"] == ["bid"]
    assert (changes[1]["key"], changes[1]["row"]) == ("OLD", None)  # the deletion
    assert "compression" in err  # the summary
    assert "updates" in err


async def test_readable_lines_and_live_counters() -> None:
    hub = Hub()
    async with tickwire.open_server(hub, "127.0.0.1", 0, config=CONFIG) as server:
        options = TailOptions(
            url=f"ws://127.0.0.1:{server.port}/",
            topics=("news",),
            count=3,
            stats_interval=0.01,
        )
        out = io.StringIO()
        err, err_text = console()
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                status: list[int] = []

                async def runner(task_status: trio.TaskStatus[None]) -> None:
                    status.append(await tail(options, out=out, err=err, task_status=task_status))

                await nursery.start(runner)
                hub.publish_nowait("news", {"headline": "rates up"})
                while "updates/s" not in err_text.getvalue():
                    await trio.sleep(0.01)  # a counters line every 10 ms
                hub.publish_nowait("news", "plain text")
                hub.publish_nowait("news", [1, 2])
                hub.publish_nowait("news", "past --count")
    assert status == [0]
    lines = out.getvalue().splitlines()
    assert lines[0].endswith('news #1 headline="rates up"')
    assert lines[1].endswith('news #2 "plain text"')
    assert lines[2].endswith("news #3 [1, 2]")
    assert len(lines) == 3
    counters = next(line for line in err_text.getvalue().splitlines() if "updates/s" in line)
    assert "gaps" in counters
    assert "compression x" in counters


async def test_a_refused_subscription_is_exit_status_1_with_the_servers_reason() -> None:
    async def authenticate(request: object) -> object:
        return Principal(subject="ann", subscribe=("public.*",))

    hub = Hub()
    async with tickwire.open_server(
        hub, "127.0.0.1", 0, config=CONFIG, authenticate=authenticate
    ) as server:
        options = TailOptions(url=f"ws://127.0.0.1:{server.port}/", topics=("secret",))
        status, out, err = await run_failing(options)
    assert status == 1
    assert out == ""
    assert "subscription refused: 403" in err


async def test_no_server_is_exit_status_1_after_the_retries() -> None:
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = TailOptions(url=f"ws://127.0.0.1:{port}/", topics=("x",), retries=1)
    status, _, err = await run_failing(options)
    assert status == 1
    assert "gave up after" in err


async def test_tail_over_wss_trusting_a_private_ca(tmp_path: object) -> None:
    import ssl
    from pathlib import Path

    import trustme

    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_tls)
    cafile = Path(str(tmp_path)) / "ca.pem"
    ca.cert_pem.write_to_path(cafile)
    hub = Hub()
    async with tickwire.open_server(
        hub, "127.0.0.1", 0, config=CONFIG, ssl_context=server_tls
    ) as server:
        options = TailOptions(
            url=f"wss://localhost:{server.port}/",
            topics=("news",),
            json=True,
            count=1,
            stats_interval=None,
            cafile=str(cafile),
        )
        status, out, _ = await run_tail(options, hub, lambda: hub.publish_nowait("news", "tls"))
    assert status == 0
    assert json.loads(out)["payload"] == "tls"


async def test_on_a_terminal_the_counters_stay_on_its_last_line(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With standard error a terminal, the counters are a status line that rich keeps at the
    bottom (redrawn in place, bold), not one more line among the updates."""
    from tickwire.testing import MemoryListener

    hub = Hub()
    listener = MemoryListener()
    server = tickwire.Server(hub, config=CONFIG)
    text = io.StringIO()
    err = Console(file=text, width=120, force_terminal=True, highlight=False, soft_wrap=True)
    out = io.StringIO()
    options = TailOptions(url="ws://memory/", topics=("ticks",), duration=10.0, stats_interval=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])

        async def feed() -> None:
            for n in range(100):
                hub.publish_nowait("ticks", n)
                await trio.sleep(0.1)

        nursery.start_soon(feed)
        status = await tail(options, out=out, err=err, open_stream=listener.open_stream)
        nursery.cancel_scope.cancel()
    assert status == 0
    shown = text.getvalue()
    assert "updates/s" in shown
    assert "\x1b[1m" in shown  # bold: the status line
    assert "tickwire tail: " not in shown  # no plain counter lines, only the status line
    assert "\x1b[2K" in shown or "\x1b[1A" in shown  # redrawn in place (erase, cursor up)
    assert len(out.getvalue().splitlines()) >= 90  # the updates, on standard output
