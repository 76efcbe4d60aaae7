"""The settings of ``tickwire serve``: flags, then environment, then a TOML file, then the
embedded defaults, validated with errors that name the bad setting and where it came from.

Imports: argparse, tomllib, attrs, tickwire.config.

Every setting has one name, spelled three ways: ``heartbeat_interval`` in the TOML file
(top level), ``TICKWIRE_HEARTBEAT_INTERVAL`` in the environment, ``--heartbeat-interval``
on the command line. The file is ``--config PATH`` or ``TICKWIRE_CONFIG``. Every field of
:class:`~tickwire.config.ServerConfig` is a setting, plus ``max_message_bytes`` (which
sets :class:`~tickwire.config.Limits`) and the command's own (host, port, demo, ...).
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from tickwire.broadcast import TopicConfig, valid_pattern
from tickwire.config import Limits, ServerConfig
from tickwire.sansio.fanout import Overflow

__all__ = ["SETTINGS", "ServeSettings", "Setting", "SettingsError", "add_arguments", "load"]


class SettingsError(ValueError):
    """A setting is unknown, malformed or out of range; the message names it."""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("not an integer") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _optional_number(text: str) -> float | None:
    return None if text.lower() in ("none", "off", "") else _number(text)


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "off", "") else _int(text)


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean (true/false)")


def _words(text: str) -> tuple[str, ...] | None:
    items = [w.strip() for w in text.split(",") if w.strip()]
    return tuple(items) or None


def _patterns(text: str) -> tuple[str, ...]:
    return _words(text) or ()


@attrs.frozen
class Setting:
    """One setting: how to read it from text (flags, environment) and what a TOML value
    must be."""

    name: str
    parse: Callable[[str], Any]
    toml_types: tuple[type, ...]
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    server: bool = False  # a ServerConfig field

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "TICKWIRE_" + self.name.upper()

    def from_toml(self, value: Any) -> Any:
        if isinstance(value, bool) and bool not in self.toml_types:
            raise ValueError(f"expected {self._kinds()}, not a boolean")
        if value is None or not isinstance(value, self.toml_types):
            raise ValueError(f"expected {self._kinds()}, not {value!r}")
        if isinstance(value, str):
            return self.parse(value)
        if isinstance(value, list):
            return tuple(str(v) for v in value)
        return value

    def _kinds(self) -> str:
        names = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}
        return " or ".join(names.get(t, "a list of strings") for t in self.toml_types)


_N, _I, _S, _B, _L = (int, float), (int,), (str,), (bool,), (list, str)

_OWN: Final = [
    Setting("host", str, _S, "listen address", "127.0.0.1"),
    Setting("port", _int, _I, "WebSocket port (0: any free port)", 8765),
    Setting(
        "metrics_port",
        _optional_int,
        (*_I, str),
        "port of /metrics, /healthz and /readyz on the same host ('off': none)",
        8766,
    ),
    Setting("demo", str, _S, "publish a simulated feed", None, ("ticker", "game")),
    Setting(
        "dashboard",
        str,
        _S,
        "serve the live dashboard at / on the metrics port (auto: with demo)",
        "auto",
        ("auto", "on", "off"),
    ),
    Setting("rate", _number, _N, "ticker updates a second", 5000.0),
    Setting("symbols", _int, _I, "ticker symbols", 500),
    Setting("tick_rate", _number, _N, "game ticks a second", 20.0),
    Setting("entities", _int, _I, "game entities", 200),
    Setting("tls_cert", str, _S, "PEM certificate chain (with tls_key: wss://)", ""),
    Setting("tls_key", str, _S, "PEM private key", ""),
    Setting("jwt_secret", str, _S, "require HS256 JWTs signed with this secret", ""),
    Setting(
        "dictionary",
        str,
        _S,
        "compress with this zstd dictionary file (from tickwire dict train --output)",
        "",
    ),
    Setting(
        "redis",
        str,
        _S,
        "share every topic with the other servers through this Redis "
        "(redis://host:port/db, or any node of a Redis Cluster; docs/scaling.md)",
        "",
    ),
    Setting(
        "workers",
        _int,
        _I,
        "server processes on this port (SO_REUSEPORT), joined through redis",
        1,
    ),
    Setting("max_message_bytes", _int, _I, "largest message a client may send", 64 * 1024),
    Setting(
        "max_history_bytes",
        _int,
        _I,
        "history of all topics together, in bytes (the oldest messages go first past it)",
        256 * 1024 * 1024,
    ),
    Setting("max_client_topics", _int, _I, "topics clients may create, all together", 10_000),
    Setting("log_level", str, _S, "log level", "info", ("debug", "info", "warning", "error")),
    Setting("log_format", str, _S, "text, or json lines", "text", ("text", "json")),
]


def _optional_str(text: str) -> str | None:
    return None if text in ("", "off") else text


_SERVER_TYPES: Final[dict[str, tuple[Callable[[str], Any], tuple[type, ...]]]] = {
    "int": (_int, _I),
    "float": (_number, _N),
    "float | None": (_optional_number, (*_N, str)),
    "bool": (_bool, _B),
    "tuple[str, ...] | None": (_words, _L),
    "tuple[str, ...]": (_patterns, _L),
    "str": (str, _S),
    "str | None": (_optional_str, _S),
}


def _server_settings() -> list[Setting]:
    docs = _attribute_docs(ServerConfig.__doc__ or "")
    out = []
    for field in attrs.fields(ServerConfig):
        if field.name == "limits":
            continue
        parse, toml_types = _SERVER_TYPES[str(field.type)]
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = None
        text = docs.get(field.name, "")
        # What the docstring calls None, a flag spells: "off" for a number, empty for a list.
        nothing = "off" if parse in (_optional_number, _optional_int, _optional_str) else "empty"
        text = text.replace("or None", f"or {nothing}")
        choices = ("wait", "refuse") if field.name == "unknown_topics" else None
        out.append(Setting(field.name, parse, toml_types, text, default, choices, server=True))
    return out


def _attribute_docs(doc: str) -> dict[str, str]:
    """The first sentence of each attribute in a Google-style ``Attributes:`` section."""
    out: dict[str, str] = {}
    names: list[str] = []
    for line in doc.split("Attributes:", 1)[-1].splitlines():
        stripped = line.strip()
        head, sep, text = stripped.partition(": ")
        if sep and line.startswith("        ") and not line.startswith("         "):
            names = [n.strip() for n in head.split(",")]
            for name in names:
                out[name] = text
        elif stripped and names:
            for name in names:
                out[name] += " " + stripped
    out["rate_burst_seconds"] = "seconds of allowance above the client rate limits"
    return {k: _plain(v.split(". ")[0].rstrip(".")) for k, v in out.items()}


def _plain(text: str) -> str:
    """A docstring's words as ``--help`` shows them: no reStructuredText markup."""
    text = re.sub(r":(?:class|meth|attr|func|data):`~?([^`]+)`", r"\1", text)
    return text.replace("``", "").replace("%", "%%")


SETTINGS: Final[dict[str, Setting]] = {s.name: s for s in [*_OWN, *_server_settings()]}


@attrs.frozen(kw_only=True)
class ServeSettings:
    """What ``tickwire serve`` runs with, every value validated."""

    host: str
    port: int
    metrics_port: int | None
    demo: str | None
    dashboard: str
    rate: float
    symbols: int
    tick_rate: float
    entities: int
    tls_cert: str
    tls_key: str
    jwt_secret: str
    dictionary: str
    redis: str
    workers: int
    max_history_bytes: int
    max_client_topics: int
    log_level: str
    log_format: str
    server: ServerConfig
    sources: Mapping[str, str]  # setting -> where its value came from
    topics: tuple[tuple[str, TopicConfig], ...] = ()  # [topics."pattern"] tables, in order
    bridge: Any = None  # the [bridge] table: tickwire.sources.config.BridgeSettings, or None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and a flag for every setting (all defaulting to "not given")."""
    parser.add_argument("--config", metavar="PATH", help="a TOML file of settings")
    own = parser.add_argument_group("serve")
    server = parser.add_argument_group("server limits and timeouts (ServerConfig)")
    for setting in SETTINGS.values():
        group = server if setting.server else own
        optional = setting.parse in (_optional_number, _optional_int)
        if setting.default in (None, "", ()):
            shown = " (default off)" if optional else ""
        else:
            shown = f" (default {setting.default})"
        group.add_argument(
            setting.flag,
            dest=setting.name,
            metavar=_metavar(setting),
            default=argparse.SUPPRESS,
            help=setting.help + shown,
        )


def _metavar(setting: Setting) -> str:
    if setting.choices:
        return "|".join(setting.choices)
    duration = setting.name.endswith(("_interval", "_timeout", "_after", "_seconds"))
    kinds: dict[Callable[[str], Any], str] = {
        _int: "N",
        _number: "SECONDS" if duration else "NUMBER",
        _optional_number: "SECONDS|off" if duration else "NUMBER|off",
        _optional_int: "PORT|off",
        _bool: "true|false",
        _words: "A,B,...",
        _patterns: "PATTERN,...",
    }
    return kinds.get(setting.parse, setting.name.split("_")[-1].upper())


def load(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServeSettings:
    """The settings from *args* (flags), *environ* and the TOML file, over the defaults.

    Raises:
        SettingsError: naming the setting and its source.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = getattr(args, "config", None) or environ.get("TICKWIRE_CONFIG")
    topics: tuple[tuple[str, TopicConfig], ...] = ()
    bridge = None
    if path:
        for name, value in _read_toml(path).items():
            if name == "topics":
                topics = topic_tables(value, path)
                continue
            if name == "bridge":  # sources feeding this server's hub (docs/sources.md)
                from tickwire.sources.config import load_bridge

                try:
                    bridge = load_bridge({"bridge": value}, embedded=True)
                except ValueError as exc:
                    raise SettingsError(f"{path}: {exc}") from None
                continue
            setting = SETTINGS.get(name)
            if setting is None:
                raise SettingsError(f"{path}: unknown setting {name!r}{_did_you_mean(name)}")
            try:
                values[name] = setting.from_toml(value)
            except ValueError as exc:
                raise SettingsError(f"{name} (in {path}): {exc}") from None
            sources[name] = path
    for setting in SETTINGS.values():
        text = environ.get(setting.env)
        if text is not None:
            values[setting.name] = _parse(setting, text, setting.env)
            sources[setting.name] = setting.env
    for setting in SETTINGS.values():
        text = getattr(args, setting.name, None)
        if text is not None:
            values[setting.name] = _parse(setting, text, setting.flag)
            sources[setting.name] = setting.flag
    for name, value in values.items():
        choices = SETTINGS[name].choices
        if choices and value not in choices:
            raise SettingsError(
                f"{name} (from {sources[name]}): {value!r} is not one of {', '.join(choices)}"
            )
    return attrs.evolve(_build(values, sources), topics=topics, bridge=bridge)


_TOPIC_FIELDS: Final = {f.name: f for f in attrs.fields(TopicConfig)}
_OPTIONAL_TOPIC_FIELDS: Final = ("batch_window", "keyframe_interval")


def topic_tables(table: Any, path: str) -> tuple[tuple[str, TopicConfig], ...]:
    """``[topics."pattern"]`` tables: a TopicConfig for each pattern, in the file's order
    (the first pattern that matches a topic wins)."""
    if not isinstance(table, dict):
        raise SettingsError(f'topics (in {path}): expected tables such as [topics."trades.*"]')
    out = []
    for pattern, fields in table.items():
        where = f"topics.{pattern!r} (in {path})"
        if not valid_pattern(pattern):
            raise SettingsError(f"{where}: not a topic pattern")
        if not isinstance(fields, dict):
            raise SettingsError(f"{where}: expected a table of topic settings")
        kwargs: dict[str, Any] = {}
        for name, value in fields.items():
            if name not in _TOPIC_FIELDS:
                close = difflib.get_close_matches(name, _TOPIC_FIELDS, n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                known = ", ".join(_TOPIC_FIELDS)
                raise SettingsError(f"{where}: unknown setting {name!r}{hint}; known: {known}")
            if name == "overflow":
                policies = {p.value: p for p in Overflow}
                if value not in policies:
                    choices = ", ".join(policies)
                    raise SettingsError(f"{where}: overflow must be one of {choices}")
                value = policies[value]
            elif name in _OPTIONAL_TOPIC_FIELDS and value in (False, "off", "none"):
                value = None
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingsError(f"{where}: {name} must be a number, not {value!r}")
            kwargs[name] = value
        try:
            config = TopicConfig(**kwargs)
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{where}: {exc}") from None
        out.append((pattern, config))
    return tuple(out)


def _parse(setting: Setting, text: str, source: str) -> Any:
    try:
        return setting.parse(text)
    except ValueError as exc:
        raise SettingsError(f"{setting.name} (from {source}): {text!r}: {exc}") from None


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise SettingsError(f"cannot read the settings file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, SETTINGS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build(values: dict[str, Any], sources: dict[str, str]) -> ServeSettings:
    def value(name: str) -> Any:
        return values.get(name, SETTINGS[name].default)

    server_values = {n: v for n, v in values.items() if SETTINGS[n].server}
    if "heartbeat_interval" in server_values and "heartbeat_timeout" not in server_values:
        # Only the interval given: a timeout that fits inside it.
        server_values["heartbeat_timeout"] = min(10.0, server_values["heartbeat_interval"] / 2)
    try:
        limits = Limits.for_message_bytes(value("max_message_bytes"))
        server = ServerConfig(limits=limits, **server_values)
        if bool(value("tls_cert")) != bool(value("tls_key")):
            raise ValueError("tls_cert and tls_key go together")
        for name in ("max_history_bytes", "max_client_topics"):
            if value(name) < 0:
                raise ValueError(f"{name!r} is out of range: {value(name)}")
        if value("workers") < 1:
            raise ValueError(f"'workers' is out of range: {value('workers')}")
        if value("workers") > 1 and not value("redis"):
            raise ValueError("'workers' above 1 needs 'redis': the workers share topics there")
        redis = value("redis")
        if redis and not redis.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("'redis' must be a redis://, rediss:// or unix:// URL")
        for name in ("port", "symbols", "entities", "rate", "tick_rate"):
            if value(name) < (0 if name == "port" else 1e-9) or (
                name == "port" and value(name) > 65535
            ):
                raise ValueError(f"{name!r} is out of range: {value(name)}")
        if value("dictionary") and not os.path.isfile(value("dictionary")):
            raise ValueError(f"'dictionary' names no file: {value('dictionary')}")
        metrics_port = value("metrics_port")
        if metrics_port is not None and not 0 <= metrics_port <= 65535:
            raise ValueError(f"'metrics_port' is out of range: {metrics_port}")
    except (ValueError, TypeError) as exc:
        raise SettingsError(_blame(str(exc), sources)) from None
    own = {s.name: value(s.name) for s in _OWN if s.name != "max_message_bytes"}
    return ServeSettings(server=server, sources=dict(sources), **own)


def _blame(message: str, sources: Mapping[str, str]) -> str:
    """*message*, with where the settings it names came from."""
    named = [n for n in SETTINGS if n in message and n in sources]
    # The longest names first: "heartbeat_timeout" before "timeout"-like substrings.
    named = [n for n in named if not any(n != m and n in m for m in named)]
    where = "; ".join(f"{n} from {sources[n]}" for n in named) or "defaults"
    return f"{message} ({where})"


def describe() -> str:
    """A Markdown table of the settings (docs/configuration.md is generated from it)."""
    rows = ["| setting | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    for setting in SETTINGS.values():
        default = "" if setting.default in (None, "", ()) else f"`{setting.default}`"
        rows.append(
            f"| `{setting.name}` | `{setting.flag}` | `{setting.env}` | {default} | "
            f"{setting.help.replace('%%', '%')} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - regenerates docs/configuration.md's table
    print(describe())
