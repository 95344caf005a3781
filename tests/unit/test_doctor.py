"""``tidegate doctor``'s checks with injected probes: what each finding says and the fix it gives."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path

from edge.doctor import FAIL, MIN_FREE_BYTES, OK, WARN, check_clock, check_disk, check_upstream

MiB = 1024 * 1024
GiB = 1024 * MiB


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


# -- clock ---------------------------------------------------------------------------------------------


def test_an_unsynchronised_clock_warns_with_what_it_means_and_the_fix() -> None:
    check = check_clock(synced=lambda: False, detail=lambda: "NTP=yes NTPSynchronized=no Timezone=Etc/UTC")
    assert (check.name, check.status) == ("clock", WARN)
    assert check.detail == (
        "not synchronised (NTP=yes NTPSynchronized=no Timezone=Etc/UTC): readings without a device time get"
        " gateway time marked unsynced, windows do not close by time and nothing is deleted by age"
    )
    assert check.fix.startswith("enable NTP: sudo timedatectl set-ntp true; check: timedatectl timesync-status")
    assert "no real-time clock" in check.fix
    bare = check_clock(synced=lambda: False, detail=lambda: "")  # timedatectl missing or silent
    assert bare.detail.startswith("not synchronised: readings without")


def test_a_synchronised_clock_is_ok_and_asks_timedatectl_nothing() -> None:
    asked: list[bool] = []

    def detail() -> str:
        asked.append(True)
        return ""

    check = check_clock(synced=lambda: True, detail=detail)
    assert (check.status, check.fix) == (OK, "") and asked == []


# -- disk ----------------------------------------------------------------------------------------------


def fake_statvfs(free: int, total: int, block: int = 4096) -> Callable[[str], os.statvfs_result]:
    """A statvfs that reports ``free`` of ``total`` bytes available to this user."""
    result = os.statvfs_result((block, block, total // block, free // block, free // block, 10**6, 10**6, 10**6, 0, 255))
    return lambda path: result


def test_too_little_free_space_fails_with_the_disk_full_fix(tmp_path: Path) -> None:
    check = check_disk(tmp_path, 1 * GiB, statvfs=fake_statvfs(free=MIN_FREE_BYTES - 4096, total=16 * GiB))
    assert (check.name, check.status) == ("disk", FAIL)
    assert check.detail.startswith("200.0 MiB free of 16.0 GiB on ") and check.detail.endswith("; log uses 0 B")
    assert "docs/operations.md#disk-full" in check.fix and "retention_ms" in check.fix


def test_no_quota_warns_that_the_log_may_fill_the_disk(tmp_path: Path) -> None:
    check = check_disk(tmp_path, None, statvfs=fake_statvfs(free=8 * GiB, total=16 * GiB))
    assert check.status == WARN and check.detail.endswith("; no quota: the log may fill the disk")
    assert check.fix == "set [log] quota_bytes (docs/configuration.md)"


def test_a_quota_larger_than_the_disk_can_give_warns_with_a_value_that_fits(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "00000000000000000000.log").write_bytes(b"x" * MiB)
    check = check_disk(tmp_path, 4 * GiB, statvfs=fake_statvfs(free=1 * GiB, total=16 * GiB))
    assert check.status == WARN
    assert check.detail.endswith("; log uses 1.0 MiB; quota 4.0 GiB is more than the disk can give")
    assert check.fix == "lower [log] quota_bytes below 820.0 MiB"  # 80% of free space plus what the log holds


def test_a_quota_that_fits_is_ok(tmp_path: Path) -> None:
    check = check_disk(tmp_path, 2 * GiB, statvfs=fake_statvfs(free=8 * GiB, total=16 * GiB))
    assert (check.status, check.fix) == (OK, "") and check.detail.endswith("; quota 2.0 GiB")


def test_a_data_dir_that_cannot_be_examined_fails(tmp_path: Path) -> None:
    def broken(path: str) -> os.statvfs_result:
        raise OSError(5, "Input/output error")

    check = check_disk(tmp_path / "not" / "yet", 2 * GiB, statvfs=broken)
    assert (check.status, check.detail) == (FAIL, f"cannot stat {tmp_path.resolve()}: Input/output error")
    assert "mounted" in check.fix
