"""The tickwire command line (what exists of it so far)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import websockets.exceptions
import websockets.sync.client

from tickwire.cli import main
from tickwire.sansio import (
    Data,
    DictRequest,
    Hello,
    Role,
    Schema,
    Session,
    Snapshot,
    Subscribe,
    Subscribed,
)
from tickwire.sansio.negotiation import MSGPACK_ZSTD, Negotiated
from tickwire.sansio.table import TableView

from .helpers import tickwire_serve


def test_decode_explains_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "00 94 07 05 2a a1 78"]) == 0
    out = capsys.readouterr().out
    assert "plain" in out
    assert '"kind": "DATA"' in out
    assert '"payload": "x"' in out


@pytest.mark.parametrize(
    ("hex_", "message", "status"),
    [("zz", "not hexadecimal", 2), ("80", "reserved", 1)],  # 2: a usage error; 1: bad input
)
def test_decode_reports_bad_input(
    hex_: str, message: str, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["decode", hex_]) == status
    assert message in capsys.readouterr().err


def test_feed_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["feed", "ticker", "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["type"] in ("quote", "trade") for line in lines] == [True] * 3
    assert main(["feed", "game", "--count", "2", "--entities", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(json.loads(lines[0])["snapshot"]) == 5
    assert json.loads(lines[2])["tick"] == 2


CLI = [sys.executable, "-m", "tickwire.cli"]


def read_until_closed(ws: websockets.sync.client.ClientConnection, within: float = 60) -> None:
    """Read until the server closes (ConnectionClosed); AssertionError if it goes on
    sending for *within* seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        ws.recv(timeout=10)
    raise AssertionError(f"the server was still sending after {within} s")


def test_serve_demo_ticker_end_to_end() -> None:
    """`tickwire serve --demo ticker`: any client sees HELLO and live quotes; Ctrl+C is
    a graceful shutdown (1001 with a retry hint) and exit status 0."""
    with tickwire_serve("--demo", "ticker", "--log-level", "warning", metrics=True) as served:
        assert served.metrics is not None
        negotiated = Negotiated.of(MSGPACK_ZSTD)
        client = Session(Role.CLIENT, negotiated)
        with websockets.sync.client.connect(served.url, subprotocols=[MSGPACK_ZSTD]) as ws:  # type: ignore[list-item]
            client.receive_message(ws.recv(timeout=10))
            assert isinstance(client.events_received()[0], Hello)
            # The demo compresses with a dictionary it offers in HELLO: fetch it (§5.3).
            (dict_id,) = client.dictionaries_to_fetch()
            ws.send(client.send(DictRequest(dict_id)))
            ws.send(client.send(Subscribe(1, "quotes")))
            view: TableView | None = None
            deltas = 0
            while deltas < 20:  # bounded: the demo publishes a delta every 10 ms
                client.receive_message(ws.recv(timeout=10))
                for event in client.events_received():
                    if isinstance(event, Subscribed):
                        view = TableView(Schema.from_info(event.info))
                    elif isinstance(event, Snapshot) and view is not None:
                        view.apply_snapshot(event.offset, event.payload)
                    elif isinstance(event, Data) and view is not None:
                        view.apply_delta(event.offset, event.payload)
                        deltas += 1
            assert view is not None
            assert len(view.rows) > 20  # symbols that quoted since the demo started
            row = next(iter(view.rows.values()))
            assert set(row) == {"symbol", "bid", "ask", "bid_size", "ask_size", "seq", "ts"}
            assert all(r["bid"] < r["ask"] for r in view.rows.values())
            with urllib.request.urlopen(served.metrics, timeout=10) as response:
                text = response.read().decode()
            assert "tickwire_connections_open 1.0" in text.splitlines()
            assert re.search(r'^tickwire_topic_offset\{topic="quotes"\} [1-9]', text, re.M)
            served.process.send_signal(signal.SIGINT)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
                read_until_closed(ws)
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1001
            assert info.value.rcvd.reason.startswith("retry-after=")
        assert served.process.wait(timeout=15) == 0


def test_serve_shuts_down_gracefully_on_sigterm() -> None:
    """What an orchestrator sends: clients get 1001 with a retry hint, the exit status is 0."""
    with tickwire_serve("--log-level", "warning") as served:
        with websockets.sync.client.connect(served.url, subprotocols=[MSGPACK_ZSTD]) as ws:  # type: ignore[list-item]
            ws.recv(timeout=10)  # HELLO
            served.process.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
                read_until_closed(ws)
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1001
        assert served.process.wait(timeout=15) == 0


def test_bench_runs_a_bench_script(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "deliver", "--quick", "--label", "cli"]) == 0
    out = capfd.readouterr().out
    assert out.startswith("cli: ")
    assert "ns per delivery" in out


def test_bench_outside_a_checkout_says_what_it_needs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tickwire.cli

    monkeypatch.setattr(tickwire.cli, "_bench_dir", lambda: None)
    assert main(["bench", "codecs"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_serve_on_a_port_in_use_says_which_setting() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flags, setting in (
            (["--port", "0", "--metrics-port", str(port)], "metrics_port"),
            (["--port", str(port), "--metrics-port", "off"], "port"),
        ):
            done = subprocess.run(
                [*CLI, "serve", *flags],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 1
            assert f"cannot listen on 127.0.0.1:{port} ({setting})" in done.stderr
            assert "Traceback" not in done.stderr


def test_tail_ends_with_its_summary_on_ctrl_c() -> None:
    with tickwire_serve("--demo", "ticker") as served:
        tail = subprocess.Popen(
            [*CLI, "tail", served.url, "quotes", "--stats-interval", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert tail.stderr is not None
            assert "updates/s" in tail.stderr.readline()  # running: its first counters line
            tail.send_signal(signal.SIGINT)
            out, err = tail.communicate(timeout=30)
        finally:
            if tail.poll() is None:
                tail.kill()
                tail.communicate()
        assert tail.returncode == 0
        assert " quotes #" in out
        assert "tickwire tail" in err  # the summary
        assert "Traceback" not in err


def test_serve_applies_the_topics_of_its_config_file(tmp_path: object) -> None:
    """[topics."chat"] batch_window = 0.2: three quick publishes reach a subscriber as one
    BATCH (kind 8), over the JSON variant any WebSocket client can read."""
    from pathlib import Path

    config = Path(str(tmp_path)) / "tickwire.toml"
    config.write_text('client_publish = ["chat"]\n[topics."chat"]\nbatch_window = 0.2\n')
    with tickwire_serve("--config", str(config)) as served:
        with websockets.sync.client.connect(served.url, subprotocols=["tickwire.v2.json"]) as ws:  # type: ignore[list-item]
            assert json.loads(ws.recv(timeout=10))[0] == 1  # HELLO
            ws.send(json.dumps([3, 1, "chat", None, {}]))  # SUBSCRIBE
            kinds = [json.loads(ws.recv(timeout=10))[0] for _ in range(2)]
            assert kinds == [4, 13]  # SUBSCRIBED, ACK
            for n in range(3):
                ws.send(json.dumps([12, None, "chat", f"message {n}", None]))  # PUBLISH
            batch = json.loads(ws.recv(timeout=10))
            assert batch[0] == 8
            assert batch[-1] == ["message 0", "message 1", "message 2"]
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=30) == 0


def test_the_demo_feeds_cannot_be_forged_by_a_client() -> None:
    """With no authentication (the demo's default), a client's PUBLISH to the server's own
    feed is ERROR 403, and nothing reaches the feed's subscribers; nor can a JSON client
    stop the server with a value the hub could not re-encode."""
    with tickwire_serve("--demo", "ticker") as served:
        with websockets.sync.client.connect(served.url, subprotocols=["tickwire.v2.json"]) as ws:  # type: ignore[list-item]
            assert json.loads(ws.recv(timeout=10))[0] == 1  # HELLO
            ws.send(json.dumps([12, 7, "trades.AAPL", {"price": 0.01, "size": 1000000}, None]))
            ws.send(json.dumps([12, 8, "trades.ZZZ", 1.5, None]))
            answers = []
            while len(answers) < 2:
                message = json.loads(ws.recv(timeout=10))
                if message[0] == 2:  # ERROR
                    answers.append((message[1], message[2]))
            assert answers == [(7, 403), (8, 403)]
            ws.send('[12,9,"trades.ZZZ",1e400,null]')  # what stopped the server before
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                read_until_closed(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1007
        with websockets.sync.client.connect(served.url, subprotocols=["tickwire.v2.json"]) as ws:  # type: ignore[list-item]
            assert json.loads(ws.recv(timeout=10))[0] == 1  # still serving
        assert served.process.poll() is None


def test_serve_with_unreadable_tls_files_says_so(tmp_path: object) -> None:
    from pathlib import Path

    bad = Path(str(tmp_path)) / "bad.pem"
    bad.write_text("not a certificate\n")
    done = subprocess.run(
        [
            *CLI,
            "serve",
            "--port",
            "0",
            *("--metrics-port", "off", "--tls-cert", str(bad), "--tls-key", str(bad)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "tls_cert/tls_key: cannot load them" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_game_demo_through_tail() -> None:
    with tickwire_serve("--demo", "game") as served:
        tail = subprocess.run(
            [*CLI, "tail", served.url, "world", "--json", "--count", "30", "--no-stats"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert lines[0]["type"] == "reset"
    assert len(lines[0]["rows"]) >= 200  # the entities, projectiles maybe among them
    changes = [line for line in lines[1:] if line["type"] == "change"]
    assert changes
    assert all(line["topic"] == "world" for line in changes)


# -- first contact: the command line as a new user meets it ---------------------------------


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_python_m_tickwire_and_its_version() -> None:
    from tickwire import __version__

    for command in ([sys.executable, "-m", "tickwire", "-V"], [*CLI, "--version"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert (done.returncode, done.stdout.strip()) == (0, f"tickwire {__version__}")


def test_a_mistyped_flag_gets_its_commands_usage_and_the_closest_flag() -> None:
    done = run_cli("serve", "--dmeo", "ticker")
    assert done.returncode == 2
    assert "usage: tickwire serve" in done.stderr
    assert "--dmeo: did you mean --demo?" in done.stderr


def test_help_shows_no_markup_and_what_a_flag_takes() -> None:
    serve = run_cli("serve", "--help").stdout
    assert "``" not in serve
    assert ":class:" not in serve
    assert "or None" not in serve
    assert "closing (4006), or off (default off)" in " ".join(serve.split())
    tail_help = " ".join(run_cli("tail", "--help").stdout.split())
    assert "(default 20; 0: none)" in tail_help


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tail_says_what_it_is_trying_and_gives_up_cleanly() -> None:
    port = closed_port()
    done = run_cli("tail", f"ws://127.0.0.1:{port}/", "quotes", "--retries", "2")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"tickwire tail: ws://127.0.0.1:{port}/: connection refused")
    assert "attempt 2 of 3 in" in lines[0]
    assert "attempt 3 of 3 in" in lines[1]
    assert "gave up after 3 attempts: connection refused" in lines[2]
    zero = run_cli("tail", f"ws://127.0.0.1:{port}/", "quotes", "--retries", "0")
    assert zero.returncode == 1
    assert "gave up after 1 attempt: connection refused" in zero.stderr
    assert "Traceback" not in zero.stderr


def test_tail_ends_at_once_on_what_retrying_cannot_fix() -> None:
    # The old client retried these for 33 s to 5 min; the guard timeout is far shorter.
    done = run_cli("tail", "ws://no-such-host.invalid/", "quotes", timeout=20)
    assert done.returncode == 1
    assert "the name does not resolve" in done.stderr
    assert "attempt" not in done.stderr  # no retry was announced
    with tickwire_serve() as served:
        tls = run_cli("tail", served.url.replace("ws://", "wss://"), "quotes", timeout=20)
    assert tls.returncode == 1
    assert "TLS handshake failed" in tls.stderr


def test_tail_names_a_topic_that_does_not_exist_and_counts_consistently() -> None:
    with tickwire_serve("--demo", "ticker") as served:
        typo = run_cli("tail", served.url, "quote", "trade.*", "--duration", "1")
        assert typo.returncode == 0
        assert "no topic 'quote' on this server; did you mean 'quotes'?" in typo.stderr
        assert "no topic matches 'trade.*' yet" in typo.stderr
        twenty = run_cli("tail", served.url, "quotes", "--count", "20", "--stats-interval", "0.1")
        assert twenty.returncode == 0
        assert len(twenty.stdout.splitlines()) == 20
        summary = " ".join(twenty.stderr.split())
        assert "printed 20 lines" in summary
        assert re.search(r"snapshots 1 \(\d+ rows\)", summary)
        assert re.search(r"seconds \d+\.\d\d ", summary)
        counted = run_cli(
            "tail", served.url, "quotes", "--duration", "1", "--stats-interval", "0.2"
        )
        status = [line for line in counted.stderr.splitlines() if "updates/s" in line]
        # Not a terminal: a plain line each interval, without rich's markup.
        assert len(status) >= 3
        assert all(line.startswith("tickwire tail: ") for line in status)
        assert "[dim]" not in counted.stderr


def test_dict_train_refuses_a_table_topic_at_once() -> None:
    with tickwire_serve("--demo", "ticker") as served:
        done = run_cli("dict", "train", "--url", served.url, "--topic", "quotes", timeout=20)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert "\n" not in line  # one line, not wrapped at 80 columns off a terminal
    assert line.startswith("tickwire dict train: quotes is a table topic")


@pytest.mark.parametrize(
    "example",
    ["game_server.py", "game_client.py", "ticker_server.py", "ticker_client.py", "publisher.py"],
)
def test_every_example_explains_its_arguments(example: str) -> None:
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / example
    done = subprocess.run(
        [sys.executable, str(path), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
    if example == "game_server.py":
        assert "0: until Ctrl+C" in " ".join(done.stdout.split())


def test_a_plot_without_matplotlib_is_refused_before_the_bench_runs(tmp_path: object) -> None:
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed: the refusal cannot happen here")
    bench = Path(__file__).parent.parent / "bench" / "codecs.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--quick", "--plot", str(Path(str(tmp_path)) / "x.png")],
        capture_output=True,
        text=True,
        timeout=20,  # the refusal comes before the run, which takes longer
        check=False,
    )
    assert done.returncode == 2
    assert "--plot needs the plotting extra" in done.stderr
