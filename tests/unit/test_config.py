"""The TOML configuration: defaults, validation naming key/value/allowed, secrets, and its documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tidegate.config import (
    DEFAULT_ROUTES, PI_QUOTA_BYTES, SCHEMA, ConfigError, RunConfig, describe, documented_keys, load_config, parse_config,
)

ROOT = Path(__file__).resolve().parents[2]


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml", env or {})
    return info.value.problems


def test_an_empty_file_gives_defaults_that_suit_a_pi() -> None:
    config = parse_config("", env={})
    assert config.gateway_id == "gw-1"
    assert config.data_dir == Path("tidegate-data")
    assert config.upstream == "spool:tidegate-data/spool"
    assert config.mqtt.port == 1883 and config.mqtt.subscriptions == ("sensors/#",)
    assert config.log.quota_bytes == PI_QUOTA_BYTES
    assert config.http is not None and config.http.port == 9880
    assert config.routes == DEFAULT_ROUTES
    assert config.logging.format == "text"


def test_the_example_file_is_valid() -> None:
    config = load_config(ROOT / "tidegate.example.toml", env={})
    assert config.gateway_id == "site-1"
    assert config.upstream == "spool:/var/lib/tidegate/spool"


def test_values_reach_the_dataclasses() -> None:
    config = parse_config(
        """
        gateway_id = "site-7"
        data_dir = "/srv/tg"
        [mqtt]
        port = 1884
        subscriptions = ["a/#", "b/#"]
        [log]
        window_ms = 600000
        quota_bytes = 0
        quota_policies = { debug = "drop_oldest" }
        priorities = { alarms = 10 }
        [batch]
        max_readings = 100
        linger_ms = 50
        [upstream]
        url = "kafka://10.0.0.1:9092/t"
        [http]
        enabled = false
        [logging]
        format = "json"
        [[serial]]
        path = "/dev/ttyACM0"
        baudrate = 9600
        """,
        env={},
    )
    assert config.gateway_id == "site-7" and config.data_dir == Path("/srv/tg")
    assert config.mqtt.port == 1884 and config.mqtt.subscriptions == ("a/#", "b/#")
    assert config.log.window_ms == 600_000 and config.log.quota_bytes is None
    assert dict(config.log.quota_policies) == {"debug": "drop_oldest"} and dict(config.log.priorities) == {"alarms": 10}
    assert config.batch.max_readings == 100 and config.batch.linger_ms == 50
    assert config.upstream == "kafka://10.0.0.1:9092/t"
    assert config.http is None
    assert config.logging.format == "json"
    assert config.serial[0].path == "/dev/ttyACM0" and config.serial[0].baudrate == 9600


def test_routes_set_the_subscriptions_unless_given() -> None:
    config = parse_config(
        '[[routes]]\ntemplate = "plant/{device}/{metric}"\nstream = "plant"\n'
        '[[routes]]\ntemplate = "/dev/ttyACM0"\nstream = "serial"\n',
        env={},
    )
    assert [r.stream for r in config.routes] == ["plant", "serial"]
    assert config.mqtt.subscriptions == ("plant/+/+",)


def test_unknown_keys_are_refused_with_a_did_you_mean() -> None:
    assert problems_of("[mqtt]\nprot = 1883\n") == ["mqtt.prot: unknown key (did you mean 'port'?)"]
    assert problems_of("gatway_id = 'x'\n") == ["gatway_id: unknown key (did you mean 'gateway_id'?)"]
    (problem,) = problems_of("[zzz]\n")
    assert problem.startswith("zzz: unknown key (allowed: ") and "mqtt" in problem


@pytest.mark.parametrize(
    "text, key, value, allowed",
    [
        ("[mqtt]\nport = 70000", "mqtt.port", "70000", "1..65535"),
        ("[mqtt]\nport = 'x'", "mqtt.port", "'x'", "integer"),
        ("[mqtt]\nreceive_maximum = 0", "mqtt.receive_maximum", "0", "1..65535"),
        ("[log]\nwindow_ms = 5", "log.window_ms", "5", "60000..86400000"),
        ("[log]\nsync_policy = 'sometimes'", "log.sync_policy", "'sometimes'", "always, interval, never"),
        ("[log]\nquota_bytes = 10", "log.quota_bytes", "10", ">= 1048576"),
        ("[log]\nquota_policy = 'panic'", "log.quota_policy", "'panic'", "block, drop_oldest"),
        ("[batch]\nmax_readings = 0", "max_readings", "0", "1..1000000"),
        ("[batch]\nlinger_ms = -1", "linger_ms", "-1", "0..3600000"),
        ("[upstream]\nurl = 'http://x'", "upstream.url", "'http://x'", "spool:DIR, kafka://HOST:PORT"),
        ("[upstream]\nurl = 'http://x'", "upstream.url", "'http://x'", "mqtt(s)://[USER[:PASSWORD]@]HOST[:PORT]"),
        ("[upstream]\nurl = 'kafka://'", "upstream.url", "'kafka://'", "kafka needs host:port"),
        ("[upstream]\nurl = 'kafka://h:99999/t'", "upstream.url", "'kafka://h:99999/t'", "port 1..65535"),
        ("[upstream]\nurl = 'mqtt:///t'", "upstream.url", "'mqtt:///t'", "mqtt needs a host"),
        ("[upstream]\nurl = 'mqtt://h:0'", "upstream.url", "'mqtt://h:0'", "1..65535"),
        ("[upstream]\nurl = 'mqtt://h/a/#'", "upstream.url", "'mqtt://h/a/#'", "'#' is not allowed"),
        ("[upstream]\nurl = 'mqtt://h/a/+'", "upstream.url", "'mqtt://h/a/+'", "without + #"),
        ("[upstream]\nurl = 'mqtt://h'\n[upstream.settings]\ncolour = 'blue'", "upstream.settings.colour", "'blue'",
         "allowed: client_id, username, password, ca_file, timeout_s, keepalive_s"),
        ("[upstream]\nurl = 'mqtts://h'\n[upstream.settings]\ntimeout_s = 'soon'", "upstream.settings.timeout_s", "'soon'",
         "a number"),
        ("[upstream]\nurl = 'kafka://k:9092/t'\n[upstream.settings]\nacks = '1'", "upstream.settings.acks", "'1'",
         "exactly-once delivery needs acks=all and enable.idempotence=true"),
        ("[upstream]\nurl = 'kafka://k:9092/t'\n[upstream.settings]\n'enable.idempotence' = false",
         "upstream.settings.enable.idempotence", "'false'", "remove enable.idempotence from [upstream.settings]"),
        ("[http]\nport = -1", "http.port", "-1", "0..65535"),
        ("[logging]\nformat = 'xml'", "logging.format", "'xml'", "text, json"),
        ("[logging]\nlevel = 'loud'", "logging.level", "'loud'", "debug, info"),
        ("gateway_id = 'a b'", "gateway_id", "'a b'", "[A-Za-z0-9._-]"),
        ("start_broker = 'yes'", "start_broker", "'yes'", "true or false"),
        ("[[routes]]\ntemplate = 'a/#/b'\nstream = 's'", "routes[0]", "'a/#/b'", "'#' must be the last level"),
        ("[[routes]]\ntemplate = 'a'\nstream = '_x'", "routes[0]", "'_x'", "not starting with '_'"),
        ("[[routes]]\ntemplate = 'a'\nstream = 's'\npayload_format = 'xml'", "routes[0].payload_format", "'xml'", "senml"),
        ("[[serial]]\npath = '/dev/x'\nread_timeout_s = 9", "serial[0]", "9", "(0, 5]"),
    ],
)
def test_every_error_names_the_key_the_value_and_what_is_allowed(text: str, key: str, value: str, allowed: str) -> None:
    (problem,) = problems_of(text)
    assert key in problem and value in problem and allowed in problem, problem


@pytest.mark.parametrize("url", ["mqtt://broker.example.net:1883/site-7", "mqtts://broker.example.net", "mqtt://10.0.0.5"])
def test_an_mqtt_upstream_is_accepted_in_the_file(url: str) -> None:
    config = parse_config(f'[upstream]\nurl = "{url}"\n[upstream.settings]\nclient_id = "gw-7"\nca_file = "/etc/ca.pem"\n',
                          env={})
    assert config.upstream == url and dict(config.upstream_settings) == {"client_id": "gw-7", "ca_file": "/etc/ca.pem"}


def test_an_mqtt_password_in_the_url_never_shows() -> None:
    config = parse_config('[upstream]\nurl = "mqtt://site:hunter2@broker:1883"\n', env={})
    assert config.upstream == "mqtt://site:hunter2@broker:1883"
    assert describe(config)["upstream"] == "mqtt://site:***@broker:1883"
    (problem,) = problems_of('[upstream]\nurl = "mqtt://site:hunter2@broker:99999"\n')
    assert problem.startswith("upstream.url = 'mqtt://site:***@broker:99999' is not allowed") and "hunter2" not in problem
    (problem,) = problems_of('[upstream]\nurl = "mqtt://broker"\n[upstream.settings]\n"sasl.password" = "s3cret"\n')
    assert problem.startswith("upstream.settings.sasl.password = '***' is not allowed: not a setting of an MQTT upstream")


def test_the_command_line_upstream_gets_the_same_check_as_the_file() -> None:
    with pytest.raises(ValueError, match=r"upstream.url = 'mqtt:///x' is not allowed: mqtt needs a host"):
        RunConfig(data_dir=Path("d"), upstream="mqtt:///x")
    assert RunConfig(data_dir=Path("d"), upstream="mqtts://broker:8884/p").upstream == "mqtts://broker:8884/p"


def test_all_problems_of_a_file_are_reported_together() -> None:
    problems = problems_of("[mqtt]\nport = 0\n[log]\nwindow_ms = 1\n[http]\nprot = 1\n")
    assert len(problems) == 3
    with pytest.raises(ConfigError, match=r"test.toml: 3 problems:\n  "):
        parse_config("[mqtt]\nport = 0\n[log]\nwindow_ms = 1\n[http]\nprot = 1\n", "test.toml", {})


def test_not_toml_says_where() -> None:
    (problem,) = problems_of("[mqtt\nport = 1")
    assert problem.startswith("not valid TOML:") and "line 1" in problem


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(tmp_path / "nope.toml")


def test_secrets_come_from_the_environment_and_never_show() -> None:
    config = parse_config(
        '[mqtt]\nusername = "tg"\npassword = "${MQTT_PASSWORD}"\n'
        '[upstream]\nurl = "kafka://${KAFKA}/t"\n[upstream.settings]\n"sasl.password" = "${KAFKA_PASSWORD}"\n'
        '"sasl.username" = "site"\n',
        env={"MQTT_PASSWORD": "hunter2", "KAFKA": "10.0.0.9:9093", "KAFKA_PASSWORD": "s3cret"},
    )
    assert config.mqtt.password == "hunter2"
    assert config.upstream == "kafka://10.0.0.9:9093/t"
    assert config.upstream_settings["sasl.password"] == "s3cret"
    shown = repr(config) + str(describe(config))
    assert "hunter2" not in shown and "s3cret" not in shown
    assert describe(config)["upstream_settings"] == {"sasl.password": "***", "sasl.username": "site"}


def test_an_unset_variable_names_the_key_but_not_a_secret_value() -> None:
    (problem,) = problems_of('[mqtt]\npassword = "x${NOPE}"\n')
    assert problem == "mqtt.password = '***': environment variable NOPE is not set"


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "mqtt.pass").write_text("hunter2\n")
    (tmp_path / "kafka.pass").write_text("s3cret\n")
    config = parse_config(
        f'[mqtt]\npassword_file = "{tmp_path}/mqtt.pass"\n'
        f'[upstream.settings]\n"sasl.password_file" = "{tmp_path}/kafka.pass"\n',
        env={},
    )
    assert config.mqtt.password == "hunter2"
    assert dict(config.upstream_settings) == {"sasl.password": "s3cret"}
    (problem,) = problems_of(f'[mqtt]\npassword_file = "{tmp_path}/missing"\n')
    assert problem.startswith("mqtt.password_file = ") and "cannot read the secret file" in problem
    (problem,) = problems_of('[mqtt]\npassword = "a"\npassword_file = "b"\n')
    assert "either password or password_file" in problem


def test_run_config_is_frozen() -> None:
    config = parse_config("", env={})
    with pytest.raises(AttributeError):
        config.gateway_id = "x"  # type: ignore[misc]
    assert isinstance(config, RunConfig)


def _doc_sections(text: str) -> dict[str, str]:
    """The doc's text per section: '' for the top level, else the name in the `## [name]` heading."""
    out: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        heading = re.match(r"^## `\[+([a-z_]+)\]+`", line)
        if heading:
            current = heading.group(1)
        elif line.startswith("## Top-level"):
            current = ""
        elif line.startswith("## "):
            current = "#other"
        out[current] = out.get(current, "") + line + "\n"
    return out


def test_every_key_is_documented_with_its_default() -> None:
    sections = _doc_sections((ROOT / "docs" / "configuration.md").read_text())
    missing = []
    for key in documented_keys():
        section, _, name = key.rpartition(".")
        table_row = re.search(rf"^\| `{re.escape(name)}` \| [^|]+ \| [^|]+", sections.get(section, ""), re.MULTILINE)
        if not table_row:
            missing.append(key)
    assert missing == []
    assert {s.name for s in SCHEMA} <= set(sections)
