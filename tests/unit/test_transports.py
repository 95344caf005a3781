"""Upstream transports offline: the Kafka producer's configuration, refused overrides, settings that pass through."""

from __future__ import annotations

import logging

import pytest

from bridge.errors import UpstreamConfigError
from bridge.transports import (
    InvalidUpstream, KafkaTransport, KafkaUpstream, kafka_transport_config, open_upstream, parse_upstream,
)

TLS_AND_SASL = {
    "security.protocol": "SASL_SSL",
    "ssl.ca.location": "/etc/tidegate/ca.pem",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "site-7",
    "sasl.password": "s3cret-pass",
}


def test_the_producer_is_idempotent_with_acks_all_and_compresses_its_requests_with_lz4() -> None:
    config = kafka_transport_config("10.0.0.1:9092,10.0.0.2:9092", {}, timeout_s=12)
    assert config["bootstrap.servers"] == "10.0.0.1:9092,10.0.0.2:9092"
    assert (config["acks"], config["enable.idempotence"], config["compression.type"]) == ("all", True, "lz4")
    assert config["message.timeout.ms"] == 12_000


def test_tls_and_sasl_settings_pass_through_unchanged() -> None:
    config = kafka_transport_config("k:9093", TLS_AND_SASL)
    assert {k: config[k] for k in TLS_AND_SASL} == TLS_AND_SASL
    assert config["acks"] == "all" and config["enable.idempotence"] is True


@pytest.mark.parametrize("key, value", [
    ("acks", "1"), ("acks", "0"), ("request.required.acks", "1"), ("enable.idempotence", "false"),
    ("enable.idempotence", False),
])
def test_a_setting_that_weakens_exactly_once_is_refused_by_name(key: str, value: object) -> None:
    with pytest.raises(InvalidUpstream) as info:
        kafka_transport_config("k:9092", {key: value})  # type: ignore[dict-item]
    assert info.value.key == key
    assert str(info.value).startswith(f"upstream setting {key} = {str(value)!r}: exactly-once delivery needs acks=all")
    with pytest.raises(UpstreamConfigError, match=key):
        KafkaTransport("127.0.0.1:1", "t", {key: value})  # type: ignore[dict-item]


@pytest.mark.parametrize("key, value", [("acks", "all"), ("acks", "-1"), ("acks", "ALL"), ("enable.idempotence", "true"),
                                        ("enable.idempotence", True)])
def test_repeating_the_safe_value_is_allowed(key: str, value: object) -> None:
    assert kafka_transport_config("k:9092", {key: value})[key] == value  # type: ignore[dict-item]


def test_the_address_and_the_config_file_get_the_same_refusal() -> None:
    with pytest.raises(InvalidUpstream, match="upstream setting acks = '1'"):
        parse_upstream("kafka://k:9092/t?acks=1")
    with pytest.raises(InvalidUpstream, match="upstream setting enable.idempotence = 'false'"):
        open_upstream("kafka://k:9092/t", {"enable.idempotence": "false"})
    target = parse_upstream("kafka://k:9092/t?linger.ms=5", TLS_AND_SASL)
    assert isinstance(target, KafkaUpstream) and dict(target.settings) == {"linger.ms": "5", **TLS_AND_SASL}
    assert "s3cret-pass" not in repr(target)


def test_settings_librdkafka_finds_incompatible_with_idempotence_are_refused_too() -> None:
    with pytest.raises(UpstreamConfigError, match="retries"):
        KafkaTransport("127.0.0.1:1", "t", {"retries": "0"})


def test_a_refused_producer_never_shows_a_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # librdkafka quotes a bad value in its error; here that value is also the password.
    settings = dict(TLS_AND_SASL, **{"security.protocol": "s3cret-pass"})
    with pytest.raises(UpstreamConfigError) as info:
        KafkaTransport("127.0.0.1:1", "t", settings)
    assert 'Invalid value "***" for configuration property "security.protocol"' in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # librdkafka's text is not chained
    assert "s3cret-pass" not in str(info.value) and "s3cret-pass" not in caplog.text
