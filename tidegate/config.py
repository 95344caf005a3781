"""tidegate's configuration: one TOML file, validated at start into frozen dataclasses.

How this works: :data:`SCHEMA` names every section of the file and the
dataclass that holds it. The loader walks the parsed TOML against the
dataclass fields (their type hints give each key's type), so the file can
only hold keys that exist, and a misspelt key is refused with the closest
real key. Values are checked for type here; ranges and choices are checked by
each dataclass's own ``__post_init__`` (LogConfig, MqttConfig, BatchPolicy,
Route...), and their errors are reported under the key they concern. All
errors of a file are collected and reported together, each naming the key,
the value and what is allowed.

Secrets never sit in the file: any string may be ``"${NAME}"`` (taken from the
environment), and a secret key ``k`` may be given as ``k_file`` (the path of a
file holding it, e.g. a systemd credential). Secret values are shown as
``***`` in errors and in :func:`describe`, and their dataclass fields have
``repr=False``.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from bridge.transports import (
    MQTT_SETTINGS, UPSTREAM_FORMS, InvalidUpstream, is_secret_setting, parse_upstream, redact_url,
)
from core.batching import BatchPolicy
from core.codecs import FORMATS as PAYLOAD_FORMATS
from core.log import LogConfig
from core.topics import Route, TopicTemplate
from edge.mqtt_intake import MqttConfig
from edge.serial_intake import SerialConfig

__all__ = [
    "ConfigError", "RunConfig", "HttpConfig", "LoggingConfig", "UpstreamConfig", "SCHEMA", "SECRET_KEYS",
    "DEFAULT_ROUTES", "DEFAULT_HTTP_PORT", "load_config", "parse_config", "describe", "documented_keys",
    "check_upstream", "UPSTREAM_FORMS",
]

DEFAULT_HTTP_PORT = 9880

DEFAULT_ROUTES = (
    Route(TopicTemplate("sensors/{device}/{metric}"), "sensors"),
    Route(TopicTemplate("sensors/{device}"), "sensors"),
)


class ConfigError(Exception):
    """The configuration file is missing, is not TOML, or holds keys or values that are not allowed.

    Attributes:
        problems: one line per problem, each naming the key.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        if len(problems) == 1:
            text = f"{source}: {problems[0]}"
        else:
            text = f"{source}: {len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems)
        super().__init__(text)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP endpoint: /metrics, /healthz, the status page and /api/status."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = DEFAULT_HTTP_PORT

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"http.port = {self.port!r} is not allowed: must be a TCP port in 0..65535 (0 = any free port)")
        if not self.host:
            raise ValueError("http.host = '' is not allowed: use 0.0.0.0 (every interface) or 127.0.0.1 (this machine only)")


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """What the service logs to stdout (journald under systemd)."""

    level: str = "info"
    format: str = "text"

    def __post_init__(self) -> None:
        if self.level not in LOG_LEVELS:
            raise ValueError(f"logging.level = {self.level!r} is not allowed: must be one of {', '.join(LOG_LEVELS)}")
        if self.format not in LOG_FORMATS:
            raise ValueError(f"logging.format = {self.format!r} is not allowed: must be one of {', '.join(LOG_FORMATS)}")


def check_upstream(url: str, settings: Mapping[str, str]) -> None:
    """Validate an upstream address and its settings as ``tidegate run`` will open them.

    The check is bridge.transports.parse_upstream's, so the file, the
    ``--upstream`` flag and the transport agree on what is allowed.

    Raises:
        ValueError: naming the key (``upstream.url`` or
            ``upstream.settings.<name>``), the value (secrets as ``***``) and
            what is allowed.
    """
    try:
        parse_upstream(url, settings)
    except InvalidUpstream as exc:
        key = "upstream.url" if exc.key == "url" else f"upstream.settings.{exc.key}"
        raise ValueError(f"{key} = {exc.value!r} is not allowed: {exc.allowed}") from exc


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Where batches go: one of UPSTREAM_FORMS (see bridge.transports.parse_upstream)."""

    url: str = ""
    settings: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", types.MappingProxyType(dict(self.settings)))
        if self.url:
            check_upstream(self.url, self.settings)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything ``tidegate run`` needs; built from the TOML file and the command line.

    ``upstream`` is the upstream address; when empty, ``spool:<data_dir>/spool``.
    ``upstream_settings`` are extra transport settings (librdkafka keys), which
    may hold secrets and are never shown by repr.
    """

    data_dir: Path
    upstream: str = ""
    gateway_id: str = "gw-1"
    mqtt: MqttConfig = MqttConfig()
    routes: tuple[Route, ...] = DEFAULT_ROUTES
    log: LogConfig = field(default_factory=LogConfig)
    batch: BatchPolicy = BatchPolicy()
    start_broker: bool = False
    simulate_sensors: int = 0
    simulate_rate: float = 1.0
    simulate_count: int | None = None
    upstream_settings: Mapping[str, str] = field(default_factory=dict, repr=False)
    http: HttpConfig | None = None
    logging: LoggingConfig = LoggingConfig()
    serial: tuple[SerialConfig, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not self.upstream:
            object.__setattr__(self, "upstream", f"spool:{Path(self.data_dir) / 'spool'}")
        # Again here, for --upstream on the command line and for code that builds a RunConfig.
        check_upstream(self.upstream, self.upstream_settings)
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", self.gateway_id):
            raise ValueError(
                f"gateway_id = {self.gateway_id!r} is not allowed: must be 1..64 of [A-Za-z0-9._-] (it is part of every reading's id)"
            )


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True, slots=True)
class Section:
    """One section of the file: its TOML name, the dataclass that holds it, and how keys map to fields."""

    name: str
    cls: type
    array: bool = False                      # [[name]]: an array of tables
    skip: tuple[str, ...] = ()               # fields not settable from the file
    defaults: Mapping[str, Any] = field(default_factory=dict)  # file defaults that differ from the dataclass's


#: Top-level keys of the file, and the fields of RunConfig they set.
TOP_LEVEL_KEYS = ("gateway_id", "data_dir", "start_broker")

#: Quota on a Pi: bound the log so the SD card never fills (0 in the file means no quota).
PI_QUOTA_BYTES = 2 * 1024**3

SCHEMA: tuple[Section, ...] = (
    Section("mqtt", MqttConfig),
    Section("log", LogConfig, defaults={"quota_bytes": PI_QUOTA_BYTES}),
    Section("batch", BatchPolicy),
    Section("upstream", UpstreamConfig),
    Section("http", HttpConfig),
    Section("logging", LoggingConfig),
    Section("routes", Route, array=True),
    Section("serial", SerialConfig, array=True),
)

#: (section, key) pairs that hold secrets; each may also be given as ``<key>_file``.
SECRET_KEYS = {("mqtt", "password")}

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _allowed_keys(section: Section) -> list[str]:
    keys = [f.name for f in fields(section.cls) if f.init and f.name not in section.skip]
    keys += [f"{k}_file" for s, k in SECRET_KEYS if s == section.name]
    return keys


def documented_keys() -> list[str]:
    """Every key the file accepts, as ``section.key`` (top-level keys bare); for the docs test."""
    out = list(TOP_LEVEL_KEYS)
    for section in SCHEMA:
        out += [f"{section.name}.{k}" for k in _allowed_keys(section)]
    return out


def _default_of(section: Section, name: str) -> Any:
    if name in section.defaults:
        return section.defaults[name]
    f = next(f for f in fields(section.cls) if f.name == name)
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _did_you_mean(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed: {', '.join(sorted(allowed))})"


def _show(key: str, value: object, secret: bool) -> str:
    return "'***'" if secret else repr(value)


def _expand(key: str, value: str, env: Mapping[str, str], problems: list[str], secret: bool) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            problems.append(f"{key} = {_show(key, value, secret)}: environment variable {name} is not set")
            return ""
        return env[name]

    return _ENV.sub(sub, value)


def _convert(key: str, value: object, hint: Any, env: Mapping[str, str], problems: list[str],
             secret: bool = False) -> Any:
    """Check a TOML value against a field's type hint and convert it (lists to tuples, str to Path)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _convert(key, value, inner[0], env, problems, secret)
    shown = _show(key, value, secret)
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{key} = {shown}: must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key} = {shown}: must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key} = {shown}: must be a number")
            return value
        return float(value)
    if hint is str or hint is Path:
        if not isinstance(value, str):
            problems.append(f"{key} = {shown}: must be a string")
            return value
        expanded = _expand(key, value, env, problems, secret)
        return Path(expanded) if hint is Path else expanded
    if origin is tuple:
        if not isinstance(value, list):
            problems.append(f"{key} = {shown}: must be a list, e.g. [\"a\", \"b\"]")
            return value
        return tuple(_convert(f"{key}[{i}]", v, args[0], env, problems, secret) for i, v in enumerate(value))
    if origin in (Mapping, dict) or hint is Mapping:
        if not isinstance(value, dict):
            problems.append(f"{key} = {shown}: must be a table, e.g. {{ name = value }}")
            return value
        value_hint = args[1] if len(args) == 2 else str
        return {k: _convert(f"{key}.{k}", v, value_hint, env, problems, secret) for k, v in value.items()}
    raise TypeError(f"config schema: no converter for {hint!r} ({key})")  # a bug in the schema, not the file


def _read_secret_file(key: str, path: str, problems: list[str]) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        problems.append(f"{key} = {path!r}: cannot read the secret file: {exc.strerror or exc}")
        return None


def _settings(table: dict[str, Any], env: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    """``[upstream.settings]``: librdkafka keys (or MQTT upstream settings); ``<key>_file`` reads the value from a file."""
    out: dict[str, str] = {}
    for key, value in table.items():
        full = f"upstream.settings.{key}"
        secret = is_secret_setting(key)
        if not isinstance(value, (str, int, float, bool)) or isinstance(value, dict):
            problems.append(f"{full} = {_show(full, value, secret)}: must be a string, number or boolean")
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = _expand(full, value, env, problems, secret)
        else:
            text = str(value)
        if key.endswith("_file") and key not in MQTT_SETTINGS:  # ca_file is a path, not a secret's file
            content = _read_secret_file(full, text, problems)
            if content is not None:
                out[key[: -len("_file")]] = content
        else:
            out[key] = text
    return out


def _build(section: Section, table: object, where: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if not isinstance(table, dict):
        problems.append(f"{where} must be a table ([{section.name}])")
        return None
    hints = typing.get_type_hints(section.cls)
    allowed = _allowed_keys(section)
    kwargs: dict[str, Any] = {}
    before = len(problems)
    for key, value in table.items():
        full = f"{where}.{key}"
        if key not in allowed:
            problems.append(f"{full}: unknown key{_did_you_mean(key, allowed)}")
            continue
        if key.endswith("_file") and (section.name, key[:-5]) in SECRET_KEYS:
            if not isinstance(value, str):
                problems.append(f"{full} = {value!r}: must be a string (the path of a file holding the secret)")
                continue
            if key[:-5] in table:
                problems.append(f"{full}: give either {key[:-5]} or {key}, not both")
                continue
            content = _read_secret_file(full, _expand(full, value, env, problems, False), problems)
            if content is not None:
                kwargs[key[:-5]] = content
            continue
        if section.cls is UpstreamConfig and key == "settings":
            if not isinstance(value, dict):
                problems.append(f"{full} = {value!r}: must be a table of librdkafka settings")
                continue
            kwargs[key] = _settings(value, env, problems)
            continue
        if section.cls is Route and key == "template":
            kwargs[key] = _convert(full, value, str, env, problems)
            continue
        if section.cls is LogConfig and key == "quota_bytes" and value == 0:
            kwargs[key] = None  # 0 in the file: no quota
            continue
        kwargs[key] = _convert(full, value, hints[key], env, problems, (section.name, key) in SECRET_KEYS)
    for name, default in section.defaults.items():
        kwargs.setdefault(name, default)
    if len(problems) > before:
        return None
    if section.cls is Route:
        if "template" not in kwargs or "stream" not in kwargs:
            problems.append(f"{where}: a route needs template and stream, e.g. template = \"sensors/{{device}}\", stream = \"sensors\"")
            return None
    if section.cls is Route and kwargs.get("payload_format", "auto") not in PAYLOAD_FORMATS:
        problems.append(
            f"{where}.payload_format = {kwargs['payload_format']!r} is not allowed: must be one of {', '.join(PAYLOAD_FORMATS)}"
        )
        return None
    if section.cls is SerialConfig and "path" not in kwargs:
        problems.append(f"{where}: a serial port needs path, e.g. path = \"/dev/serial/by-id/usb-...\"")
        return None
    try:
        if section.cls is Route:
            template = TopicTemplate(kwargs.pop("template"))
            return Route(template, **kwargs)
        return section.cls(**kwargs)
    except Exception as exc:  # each value object's own check: LocalError, ValueError, InvalidLogConfig
        message = str(exc).replace(f"{section.cls.__name__}.", f"{where}.")
        problems.append(message if f"{where}." in message else f"{where}: {message}")
        return None


def parse_config(text: str, source: str = "<config>", env: Mapping[str, str] | None = None) -> RunConfig:
    """Parse and validate a TOML configuration.

    Args:
        text: the file's contents.
        source: the file's name, for error messages.
        env: the environment for ``${NAME}`` (default: ``os.environ``).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: naming every problem found, key by key.
    """
    env = os.environ if env is None else env
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from exc
    problems: list[str] = []
    sections = {s.name: s for s in SCHEMA}
    allowed_top = list(TOP_LEVEL_KEYS) + list(sections)
    top: dict[str, Any] = {}
    built: dict[str, Any] = {}
    hints = typing.get_type_hints(RunConfig)
    for key, value in data.items():
        if key not in allowed_top:
            problems.append(f"{key}: unknown key{_did_you_mean(key, allowed_top)}")
            continue
        if key in TOP_LEVEL_KEYS:
            if isinstance(value, dict):
                problems.append(f"{key}: is a top-level key, not a section")
                continue
            top[key] = _convert(key, value, hints[key], env, problems)
            continue
        section = sections[key]
        if section.array:
            if not isinstance(value, list):
                problems.append(f"{key}: must be written as [[{key}]] tables")
                continue
            items = [_build(section, item, f"{key}[{i}]", env, problems) for i, item in enumerate(value)]
            built[key] = tuple(items)
        else:
            built[key] = _build(section, value, key, env, problems)
    for section in SCHEMA:
        if section.name not in data and not section.array:
            built[section.name] = _build(section, {}, section.name, env, problems)
    if problems:
        raise ConfigError(source, problems)
    upstream: UpstreamConfig = built["upstream"]
    routes = built.get("routes") or DEFAULT_ROUTES
    mqtt: MqttConfig = built["mqtt"]
    if "routes" in built and "subscriptions" not in data.get("mqtt", {}):
        # Subscribe to what the routes can take (serial routes name device paths, not topics).
        wanted = tuple(dict.fromkeys(r.template.subscription for r in routes if not r.template.template.startswith("/")))
        if wanted:
            mqtt = replace(mqtt, subscriptions=wanted)
    try:
        return RunConfig(
            data_dir=top.get("data_dir", Path("tidegate-data")),
            upstream=upstream.url,
            upstream_settings=upstream.settings,
            gateway_id=top.get("gateway_id", "gw-1"),
            start_broker=top.get("start_broker", False),
            mqtt=mqtt,
            log=built["log"],
            batch=built["batch"],
            http=built["http"] if built["http"].enabled else None,
            logging=built["logging"],
            routes=routes,
            serial=built.get("serial", ()),
        )
    except ValueError as exc:
        raise ConfigError(source, [str(exc)]) from exc


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> RunConfig:
    """Read and validate a configuration file; ``None`` gives the defaults.

    Raises:
        ConfigError: the file cannot be read, or is not valid (every problem named).
    """
    if path is None:
        return parse_config("", "<defaults>", env)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(os.fspath(path), [f"cannot read the configuration file: {exc.strerror or exc}"]) from exc
    return parse_config(text, os.fspath(path), env)


def with_overrides(config: RunConfig, **changes: Any) -> RunConfig:
    """``config`` with the given fields replaced; ``None`` values are ignored (flag not given)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


def _plain(value: Any, secret: bool = False) -> Any:
    if secret:
        return "***" if value is not None else None
    if isinstance(value, TopicTemplate):
        return value.template
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), not f.repr) for f in fields(value) if f.init}
    if isinstance(value, Mapping):
        return {k: ("***" if is_secret_setting(k) else _plain(v)) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def describe(config: RunConfig) -> dict[str, Any]:
    """The effective configuration as plain data, with every secret shown as ``***``."""
    out: dict[str, Any] = _plain(config)
    out["upstream"] = redact_url(config.upstream)
    out["upstream_settings"] = {k: "***" if is_secret_setting(k) else v for k, v in config.upstream_settings.items()}
    return out
