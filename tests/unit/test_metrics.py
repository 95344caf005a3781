"""Metrics (Prometheus text, histograms), the HTTP endpoint, sd_notify on a real socket, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.http import METRICS_CONTENT_TYPE, SampleRing, StatusServer
from edge.metrics import Metrics
from edge.sdnotify import Notifier
from tidegate.app import JsonFormatter, RecentErrors, setup_logging


def test_counters_and_gauges_render_with_help_type_and_labels() -> None:
    m = Metrics()
    m.describe("tidegate_readings_in_total", "counter", "Readings in")
    m.inc("tidegate_readings_in_total", 3, {"stream": "sensors"})
    m.inc("tidegate_readings_in_total", 2, {"stream": 'we"ird\\'})
    m.set("tidegate_uplink_up", 1)
    text = m.render()
    assert text.splitlines() == [
        "# HELP tidegate_readings_in_total Readings in",
        "# TYPE tidegate_readings_in_total counter",
        'tidegate_readings_in_total{stream="sensors"} 3',
        'tidegate_readings_in_total{stream="we\\"ird\\\\"} 2',
        "# HELP tidegate_uplink_up tidegate_uplink_up",
        "# TYPE tidegate_uplink_up untyped",
        "tidegate_uplink_up 1",
    ]
    assert m.total("tidegate_readings_in_total") == 5


def test_a_histogram_renders_cumulative_buckets_sum_and_count() -> None:
    m = Metrics()
    m.describe_histogram("tidegate_log_sync_seconds", "Sync latency", (0.001, 0.01, 0.1))
    for value in (0.0005, 0.001, 0.005, 0.05, 3.0):
        m.observe("tidegate_log_sync_seconds", value)
    m.observe("tidegate_log_sync_seconds", 0.002, times=5)
    assert m.render().splitlines() == [
        "# HELP tidegate_log_sync_seconds Sync latency",
        "# TYPE tidegate_log_sync_seconds histogram",
        'tidegate_log_sync_seconds_bucket{le="0.001"} 2',
        'tidegate_log_sync_seconds_bucket{le="0.01"} 8',
        'tidegate_log_sync_seconds_bucket{le="0.1"} 9',
        'tidegate_log_sync_seconds_bucket{le="+Inf"} 10',
        "tidegate_log_sync_seconds_sum 3.0665",
        "tidegate_log_sync_seconds_count 10",
    ]
    histogram = m.histogram("tidegate_log_sync_seconds")
    assert histogram is not None and histogram.quantile(0.5) == 0.01 and histogram.quantile(1.0) == 0.1


def test_histogram_labels_come_before_le() -> None:
    m = Metrics()
    m.describe_histogram("x", "x", (1,))
    m.observe("x", 0.5, {"stream": "s"})
    assert 'x_bucket{stream="s",le="1"} 1' in m.render()


def test_histogram_buckets_must_rise() -> None:
    with pytest.raises(ValueError, match="must rise"):
        Metrics().describe_histogram("x", "x", (1, 1, 2))


def test_sample_ring_keeps_the_newest_and_gives_columns() -> None:
    ring = SampleRing(3)
    for i in range(5):
        ring.add({"t": i, "rate": i * 10})
    assert len(ring) == 3
    assert ring.columns() == {"t": [2, 3, 4], "rate": [20, 30, 40]}
    assert ring.latest() == {"t": 4, "rate": 40}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[StatusServer]:
    (tmp_path / "index.html").write_text("<html>page</html>")
    (tmp_path / "app.js").write_text("1;")
    state = {"healthy": True}
    srv = StatusServer(
        "127.0.0.1", 0,
        metrics_text=lambda: "tidegate_up 1\n",
        health=lambda: (state["healthy"], {"writer": "ok" if state["healthy"] else "failed"}),
        status=lambda: {"gateway_id": "gw-t"},
        static_dir=tmp_path,
    )
    srv.start()
    srv.state = state  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def get(server: StatusServer, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_http_serves_metrics_health_status_and_the_page(server: StatusServer) -> None:
    assert get(server, "/metrics") == (200, METRICS_CONTENT_TYPE, b"tidegate_up 1\n")
    status, kind, body = get(server, "/healthz")
    assert (status, kind, json.loads(body)) == (200, "application/json", {"healthy": True, "writer": "ok"})
    assert json.loads(get(server, "/api/status")[2]) == {"gateway_id": "gw-t"}
    assert get(server, "/")[2] == b"<html>page</html>"
    status, kind, _ = get(server, "/static/app.js")
    assert status == 200 and "javascript" in kind
    assert get(server, "/static/../../etc/passwd")[0] == 404
    assert get(server, "/nope")[0] == 404


def test_healthz_is_503_when_unhealthy(server: StatusServer) -> None:
    server.state["healthy"] = False  # type: ignore[attr-defined]
    status, _, body = get(server, "/healthz")
    assert status == 503 and json.loads(body)["writer"] == "failed"


def test_a_taken_port_is_an_oserror(server: StatusServer) -> None:
    with pytest.raises(OSError):
        StatusServer("127.0.0.1", server.port, lambda: "", lambda: (True, {}), dict)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    yield sock
    sock.close()


def test_sd_notify_sends_ready_watchdog_status_and_stopping(notify_socket: socket.socket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "30000000",
                         "WATCHDOG_PID": str(os.getpid())})
    assert notifier.enabled and notifier.watchdog_s == 30.0 and notifier.watchdog_interval_s == 15.0
    assert notifier.ready(status="running")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=running"
    assert notifier.watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert notifier.status("in 5\nreadings")
    assert notify_socket.recv(4096) == b"STATUS=in 5 readings"
    assert notifier.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_sd_notify_abstract_socket() -> None:
    name = f"tidegate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(100) == b"READY=1"
        notifier.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.ready() and notifier.watchdog_s is None


def test_watchdog_for_another_pid_is_ignored() -> None:
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_s is None


def test_json_logs_have_ts_level_logger_msg_and_extras() -> None:
    stream = io.StringIO()
    handler = setup_logging("info", "json", stream)
    try:
        logging.getLogger("tidegate.test").warning("disk %s full", "/data", extra={"stream": "sensors"})
        logging.getLogger("tidegate.test").debug("not shown")
    finally:
        logging.getLogger().removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "warning" and record["logger"] == "tidegate.test"
    assert record["msg"] == "disk /data full" and record["stream"] == "sensors"
    assert record["ts"].endswith("Z")
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)


def test_recent_errors_keep_warnings_only() -> None:
    recent = RecentErrors(size=2)
    logger = logging.getLogger("tidegate.test.recent")
    logger.addHandler(recent)
    logger.propagate = False
    try:
        logger.setLevel(logging.INFO)
        logger.info("fine")
        for i in range(3):
            logger.error("bad %d", i)
    finally:
        logger.removeHandler(recent)
    assert [r["message"] for r in recent.records] == ["bad 1", "bad 2"]


def test_a_bound_counter_adds_to_the_same_series_as_inc() -> None:
    metrics = Metrics()
    count = metrics.counter("tidegate_intake_bytes_total", {"source": "mqtt"})
    count(10)
    metrics.inc("tidegate_intake_bytes_total", 5, {"source": "mqtt"})
    count(1)
    assert metrics.get("tidegate_intake_bytes_total", {"source": "mqtt"}) == 16
    assert metrics.total("tidegate_intake_bytes_total") == 16
