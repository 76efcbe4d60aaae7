"""`tickwire serve` settings: flags over environment over TOML over defaults, and errors
that name the setting and its source."""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import pytest

from tickwire.logs import JSONFormatter, RateLimit, TextFormatter
from tickwire.settings import SETTINGS, SettingsError, add_arguments, describe, load

DOCS = Path(__file__).parent.parent / "docs" / "configuration.md"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_the_embedded_ones() -> None:
    settings = load(parse(), environ={})
    assert (settings.host, settings.port, settings.metrics_port) == ("127.0.0.1", 8765, 8766)
    assert settings.demo is None
    assert settings.server.heartbeat_interval == 20.0
    assert settings.server.limits.max_message_bytes == 64 * 1024
    assert settings.sources == {}


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    config = tmp_path / "tickwire.toml"
    config.write_text(
        'port = 9000\nheartbeat_interval = 30\nallowed_origins = ["https://a.example"]\n'
        'demo = "game"\nmax_message_bytes = 4096\nidle_timeout = 120\n'
    )
    environ = {"TICKWIRE_PORT": "9100", "TICKWIRE_HEARTBEAT_INTERVAL": "8"}
    settings = load(parse("--config", str(config), "--port", "9200"), environ=environ)
    assert settings.port == 9200
    assert settings.sources["port"] == "--port"
    assert settings.server.heartbeat_interval == 8.0
    assert settings.server.heartbeat_timeout == 4.0  # derived: only the interval was given
    assert settings.sources["heartbeat_interval"] == "TICKWIRE_HEARTBEAT_INTERVAL"
    assert settings.server.allowed_origins == ("https://a.example",)
    assert settings.server.idle_timeout == 120
    assert settings.server.limits.max_message_bytes == 4096
    assert settings.demo == "game"
    assert settings.sources["demo"] == str(config)
    # The file may also come from the environment.
    assert load(parse(), environ={"TICKWIRE_CONFIG": str(config)}).port == 9000


def test_text_values_parse_as_their_setting_says() -> None:
    settings = load(
        parse(
            "--metrics-port",
            "off",
            "--allowed-origins",
            "https://a.example, https://b.example",
            "--allow-missing-origin",
            "no",
            "--send-bytes-per-second",
            "65536",
        ),
        environ={"TICKWIRE_IDLE_TIMEOUT": "none"},
    )
    assert settings.metrics_port is None
    assert settings.server.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.server.allow_missing_origin is False
    assert settings.server.send_bytes_per_second == 65536
    assert settings.server.idle_timeout is None


@pytest.mark.parametrize(
    ("argv", "environ", "toml", "message"),
    [
        ((), {"TICKWIRE_PORT": "abc"}, "", "port (from TICKWIRE_PORT): 'abc': not an integer"),
        (("--heartbeat-interval", "fast"), {}, "", "heartbeat_interval (from --heartbeat-inter"),
        (("--demo", "poker"), {}, "", "demo (from --demo): 'poker' is not one of ticker, game"),
        (("--max-connections", "0"), {}, "", "max_connections from --max-connections"),
        (("--port", "70000"), {}, "", "'port' is out of range: 70000 (port from --port)"),
        (("--tls-cert", "x.pem"), {}, "", "tls_cert and tls_key go together"),
        (("--workers", "2"), {}, "", "'workers' above 1 needs 'redis': the workers share"),
        (("--workers", "0"), {}, "", "'workers' is out of range: 0"),
        ((), {"TICKWIRE_REDIS": "127.0.0.1:6379"}, "", "'redis' must be a redis://, rediss://"),
        ((), {}, "heartbeat = 3", "unknown setting 'heartbeat' (did you mean 'heartbeat_"),
        ((), {}, 'port = "x"', "port (in "),
        ((), {}, "allow_missing_origin = 1", "expected a boolean"),
        ((), {}, "port = true", "not a boolean"),
        ((), {}, "port = [", "is not valid TOML"),
        (
            ("--heartbeat-timeout", "30"),
            {},
            "",
            "heartbeat_timeout must be shorter than heartbeat_interval "
            "(heartbeat_timeout from --heartbeat-timeout)",
        ),
    ],
)
def test_bad_settings_are_named_with_their_source(
    tmp_path: Path, argv: tuple[str, ...], environ: dict[str, str], toml: str, message: str
) -> None:
    if toml:
        config = tmp_path / "bad.toml"
        config.write_text(toml + "\n")
        argv = (*argv, "--config", str(config))
    with pytest.raises(SettingsError) as info:
        load(parse(*argv), environ=environ)
    assert message in str(info.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read the settings file"):
        load(parse("--config", str(tmp_path / "nothere.toml")), environ={})


def test_every_setting_is_in_the_configuration_reference() -> None:
    text = DOCS.read_text()
    assert describe() in text, "regenerate the table: python -m tickwire.settings"
    assert len(SETTINGS) > 30


def test_json_logs_carry_the_extra_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "tickwire.server", "levelno": logging.INFO, "levelname": "INFO"}
    )
    record.msg, record.args = "connection %s closed", ("ab12",)
    record.conn, record.code = "ab12", 1000
    line = json.loads(JSONFormatter().format(record))
    assert line["message"] == "connection ab12 closed"
    assert (line["conn"], line["code"], line["level"]) == ("ab12", 1000, "info")
    assert TextFormatter().format(record).endswith("connection ab12 closed conn=ab12 code=1000")


def test_warnings_are_rate_limited_per_message_and_counted() -> None:
    now = [0.0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.addFilter(RateLimit(burst=3, window=10, clock=lambda: now[0]))
    logger = logging.getLogger("tickwire.test.ratelimit")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for n in range(100):
            logger.warning("client %s misbehaved", n)
        logger.warning("another message")
        logger.debug("debug passes")  # below WARNING: not limited (the level gates it)
        now[0] = 11.0
        logger.warning("client %s misbehaved", 100)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert sum("misbehaved" in line for line in lines) == 4  # 3, then 1 in the new window
    assert lines[-1].endswith("client 100 misbehaved suppressed=97")
    assert any("another message" in line for line in lines)


def test_the_documented_toml_file_loads(tmp_path: Path) -> None:
    import re

    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert len(blocks) == 2
    config = tmp_path / "tickwire.toml"
    config.write_text(blocks[0] + "\n" + blocks[1])
    settings = load(parse("--config", str(config)), environ={})
    assert settings.server.allowed_origins == ("https://app.example.com",)
    assert settings.server.send_bytes_per_second == 262144
    assert settings.log_format == "json"
    assert [pattern for pattern, _ in settings.topics] == ["trades.*", "quotes"]


async def test_the_server_logs_a_summary_a_minute(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    import trio

    from tickwire import Hub, Server
    from tickwire.cli import _summarise

    caplog.set_level(logging.INFO, logger="tickwire.cli")
    with trio.move_on_after(125):
        await _summarise(Server(Hub()))
    summaries = [r for r in caplog.records if r.name == "tickwire.cli"]
    assert len(summaries) == 2  # at 60 and 120 seconds
    assert summaries[0].getMessage() == "0 connections open, 0 sent, 0 slow-consumer disconnects"
    assert summaries[0].connections == 0  # type: ignore[attr-defined]


def test_topics_are_configured_per_pattern_in_the_file(tmp_path: Path) -> None:
    from tickwire.sansio.fanout import Overflow

    config = tmp_path / "tickwire.toml"
    config.write_text(
        '[topics."trades.*"]\nbatch_window = 0.01\noverflow = "drop_oldest"\n'
        'history_size = 5000\n\n[topics."quotes"]\noverflow = "conflate"\n'
        'keyframe_interval = "off"\n'
    )
    settings = load(parse("--config", str(config)), environ={})
    (trades, trades_config), (quotes, quotes_config) = settings.topics
    assert (trades, quotes) == ("trades.*", "quotes")
    assert trades_config.batch_window == 0.01
    assert trades_config.overflow is Overflow.DROP_OLDEST
    assert trades_config.history_size == 5000
    assert quotes_config.overflow is Overflow.CONFLATE
    assert quotes_config.keyframe_interval is None


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[topics."a.b*"]\nhistory_size = 1', "topics.'a.b*' (in "),
        ('[topics."a"]\nbatch = 0.01', "unknown setting 'batch' (did you mean 'batch_window'?)"),
        ('[topics."a"]\noverflow = "ignore"', "overflow must be one of disconnect, drop_oldest"),
        ('[topics."a"]\nbatch_window = 60', "batch_window must be None or between 0 and 10"),
        ('[topics."a"]\nhistory_size = true', "history_size must be a number, not True"),
        ("topics = 3", 'expected tables such as [topics."trades.*"]'),
    ],
)
def test_bad_topic_settings_are_named(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml + "\n")
    with pytest.raises(SettingsError) as info:
        load(parse("--config", str(config)), environ={})
    assert message in str(info.value)
