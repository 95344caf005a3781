"""``tidegate doctor``'s checks with injected probes: what each finding says and the fix it gives."""

from __future__ import annotations

import ssl

from edge.doctor import FAIL, OK, check_upstream


class RecordingProbe:
    """An MQTT probe that answers as told and remembers how it was called."""

    def __init__(self, answer: str = "") -> None:
        self.answer = answer
        self.calls: list[tuple[str, int, str | None, str | None, ssl.SSLContext | None]] = []

    def __call__(self, host: str, port: int, username: str | None, password: str | None, timeout: float,
                 tls: ssl.SSLContext | None = None) -> str:
        self.calls.append((host, port, username, password, tls))
        return self.answer


def test_an_mqtt_upstream_is_connected_to_with_its_credentials() -> None:
    probe = RecordingProbe()
    check = check_upstream("mqtt://site:pw@broker.example.net/p", {"client_id": "gw"}, 1.0, probe)
    assert (check.name, check.status) == ("upstream", OK)
    assert check.detail == "MQTT upstream at broker.example.net:1883 accepts connections"
    assert probe.calls == [("broker.example.net", 1883, "site", "pw", None)]
    check_upstream("mqtt://broker:1999", {"username": "u", "password": "p"}, 1.0, probe)
    assert probe.calls[-1] == ("broker", 1999, "u", "p", None)


def test_an_mqtts_upstream_is_probed_over_tls_on_8883() -> None:
    probe = RecordingProbe()
    check = check_upstream("mqtts://broker.example.net", {}, 1.0, probe)
    assert check.status == OK and "(TLS)" in check.detail
    host, port, _, _, context = probe.calls[0]
    assert (host, port) == ("broker.example.net", 8883)
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_an_unreachable_mqtt_upstream_fails_with_a_fix() -> None:
    check = check_upstream("mqtt://broker:1883", {}, 1.0, RecordingProbe("Connection refused"))
    assert (check.status, check.detail) == (FAIL, "MQTT upstream at broker:1883: Connection refused")
    assert "the gateway keeps readings until it is back" in check.fix
    refused = check_upstream("mqtt://broker", {}, 1.0, RecordingProbe("refused: bad user name or password"))
    assert refused.status == FAIL and "[upstream.settings] username and password" in refused.fix
    tls = check_upstream("mqtts://broker", {}, 1.0, RecordingProbe("TLS handshake failed: CERTIFICATE_VERIFY_FAILED"))
    assert tls.status == FAIL and "ca_file" in tls.fix


def test_a_missing_ca_file_fails_before_connecting() -> None:
    probe = RecordingProbe()
    check = check_upstream("mqtts://broker", {"ca_file": "/nonexistent/ca.pem"}, 1.0, probe)
    assert check.status == FAIL and "cannot load ca_file '/nonexistent/ca.pem'" in check.detail
    assert probe.calls == []


def test_a_spool_upstream_needs_no_network() -> None:
    check = check_upstream("spool:/var/lib/tidegate/spool", {}, 1.0, RecordingProbe("never called"))
    assert (check.name, check.status) == ("kafka", OK) and "not Kafka" in check.detail
