"""MQTT intake over TLS with a password and a client certificate, against a real Mosquitto."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from edge.mosquitto import Mosquitto, free_port
from edge.mqtt_intake import MqttConfig, MqttIntake, Received

pytestmark = pytest.mark.mosquitto


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tidegate test CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.crt", *ext, cwd=d)
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(d / "passwd"), "gateway", "s3cret"], check=True, capture_output=True)
    (d / "passwd").chmod(0o600)
    return d


@pytest.fixture
def tls_broker(pki: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    extra = (
        "allow_anonymous false\n"
        f"password_file {pki / 'passwd'}\n"
        f"listener {port} 127.0.0.1\n"
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\n"
    )
    with Mosquitto(tmp_path / "mq", extra_config=extra) as broker:
        yield broker, port


def config(pki: Path, port: int, password: str = "s3cret", client_cert: bool = True) -> MqttConfig:
    return MqttConfig(
        port=port, client_id="gw-tls", subscriptions=("sensors/#",), username="gateway", password=password,
        tls_ca_file=str(pki / "ca.crt"),
        tls_cert_file=str(pki / "client.crt") if client_cert else None,
        tls_key_file=str(pki / "client.key") if client_cert else None,
    )


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_intake_receives_over_tls_with_password_and_client_certificate(pki: Path, tls_broker) -> None:  # type: ignore[no-untyped-def]
    _, port = tls_broker
    got: list[Received] = []
    events: list[str] = []
    intake = MqttIntake(config(pki, port), got.append, on_event=events.append)
    intake.start()
    try:
        assert wait_for(lambda: "connected" in events)
        time.sleep(0.2)
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", "sensors/n1", "-m", '{"value": 1}',
             "--cafile", str(pki / "ca.crt"), "--cert", str(pki / "client.crt"), "--key", str(pki / "client.key"),
             "-u", "gateway", "-P", "s3cret"],
            check=True, timeout=10, capture_output=True,
        )
        assert wait_for(lambda: len(got) == 1)
        intake.ack(got[0])
    finally:
        intake.stop()
    assert got[0].payload == b'{"value": 1}'
    assert "password" not in repr(config(pki, port)) and "s3cret" not in repr(config(pki, port))


def test_a_wrong_password_is_refused_and_reported(pki: Path, tls_broker) -> None:  # type: ignore[no-untyped-def]
    _, port = tls_broker
    events: list[str] = []
    intake = MqttIntake(config(pki, port, password="wrong"), lambda m: None, on_event=events.append)
    intake.start()
    try:
        assert wait_for(lambda: "refused" in events)
        assert "connected" not in events
    finally:
        intake.stop()


def test_without_a_client_certificate_the_handshake_fails(pki: Path, tls_broker) -> None:  # type: ignore[no-untyped-def]
    _, port = tls_broker
    events: list[str] = []
    intake = MqttIntake(config(pki, port, client_cert=False), lambda m: None, on_event=events.append)
    try:
        intake.start()
    except Exception:  # the TLS handshake may fail inside connect() itself
        return
    try:
        assert not wait_for(lambda: "connected" in events, timeout=2)
    finally:
        intake.stop()
