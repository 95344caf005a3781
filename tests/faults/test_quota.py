"""The log's byte quota end to end, while the uplink (Kafka) is away.

The uplink is cut with the TCP proxy of tests/faults/proxy.py (see
test_uplink_outage.py), so the gateway holds everything it takes in its log,
and a 1 MiB quota (the smallest allowed) fills in seconds: the publishers'
plain readings carry 1 KB string values, and their device time runs 30 times
faster than real time so that one-minute windows close every two seconds
(quota and retention delete whole windows only).

- ``block``: at the quota the gateway stops acknowledging (the broker keeps
  the readings), says so in ``tidegate_intake_blocked``, and takes readings
  again by itself once the uplink is back and the forwarded windows can go.
  Nothing is dropped.
- ``drop_oldest`` with two streams: ``bulk`` (priority 0) and ``alarms``
  (priority 10). At the quota the oldest windows of ``bulk`` are deleted,
  each of their readings counted; ``alarms`` loses nothing and intake never
  stops.

Both end with the equation of tests/faults/harness.py, where the quota term
is the log's durable ``dropped_by_quota`` count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.mosquitto import Mosquitto
from tests.faults.harness import (
    T0,
    Central,
    Key,
    Publisher,
    Supervise,
    Supervisor,
    finish,
    gateway_metrics,
    modes,
    start_gateway,
    wait_for_session,
)
from tests.faults.proxy import FaultProxy, free_port
from tests.fixtures.kafka import NewKafkaTopic
from tests.kafka.broker import KafkaBroker

pytestmark = [pytest.mark.mosquitto, pytest.mark.kafka, pytest.mark.slow]

QUOTA = 1024 * 1024
WINDOW_MS = 60_000
STEP_MS = 100  # device time per message: 30 s of device time a second at 300 messages/s
# "Usage stays within quota_bytes plus one segment's index files" (docs/log_format.md);
# an index entry is 8 bytes per 4 KiB of segment, so this is generous.
QUOTA_SLACK = 64 * 1024


def wait_metric(port: int, name: str, ok: Callable[[float], bool], timeout: float) -> float:
    """Poll the gateway's /metrics until ``ok(value of name)``; return how long it took."""
    started = time.monotonic()
    value = None
    while time.monotonic() - started < timeout:
        metrics = gateway_metrics(port)
        value = metrics.get(name) if metrics else None
        if value is not None and ok(value):
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{name} is {value} after {timeout:.0f} s")


def metric(port: int, name: str) -> float:
    metrics = gateway_metrics(port, timeout=5)
    assert metrics is not None, "the gateway's /metrics did not answer"
    return metrics.get(name, 0.0)


def drained(port: int) -> None:
    """Wait until the gateway has forwarded every reading it holds (its backlog is 0)."""
    wait_metric(port, "tidegate_backlog_readings", lambda v: v == 0, timeout=90)


def start_pipeline(mosquitto: Mosquitto, uplink: tuple[KafkaBroker, FaultProxy], new_kafka_topic: NewKafkaTopic,
                   tmp_path: Path, supervise: Supervise, log: str, routes: str = "",
                   ) -> tuple[Central, FaultProxy, int, Supervisor, Supervisor]:
    """A gateway with the given ``[log]`` settings forwarding through the proxy, and an expander.

    Returns:
        the central side, the proxy, the gateway's HTTP port, the gateway's and the expander's supervisors.
    """
    broker, proxy = uplink
    central = Central.create(broker, new_kafka_topic, tmp_path / "central")
    config = tmp_path / "tidegate.toml"
    config.write_text(f"[log]\nwindow_ms = {WINDOW_MS}\nquota_bytes = {QUOTA}\n{log}\n{routes}")
    port = free_port()
    upstream = f"kafka://127.0.0.1:{proxy.port}/{central.batches}"
    gateway = supervise(lambda: start_gateway(mosquitto.port, tmp_path / "gateway", upstream, config=config,
                                              http_port=port))
    expander = supervise(central.start_expander)
    wait_for_session(mosquitto.port)
    return central, proxy, port, gateway, expander


@modes(quick=1, long=5, long_timeout_s=900)
def test_block_at_the_quota_stops_acknowledgements_until_the_uplink_drains_the_backlog(
    mode: str, cycles: int, mosquitto: Mosquitto, uplink: tuple[KafkaBroker, FaultProxy],
    new_kafka_topic: NewKafkaTopic, tmp_path: Path, supervise: Supervise
) -> None:
    started = time.monotonic()
    central, proxy, port, gateway, expander = start_pipeline(mosquitto, uplink, new_kafka_topic, tmp_path, supervise,
                                                             log='quota_policy = "block"')
    publisher = Publisher(mosquitto.port, rate_hz=300, step_ms=STEP_MS, value_bytes=1000)
    publisher.start()
    notes = []
    for _ in range(cycles):
        time.sleep(3.0)
        proxy.cut("refuse")
        to_block = wait_metric(port, "tidegate_intake_blocked", lambda v: v == 1, timeout=60)
        time.sleep(1.0)  # what was durable before the block is acknowledged by now
        acks, broker_acks = metric(port, "tidegate_acks_total"), publisher.acked
        time.sleep(4.0)
        assert metric(port, "tidegate_acks_total") == acks, "the gateway acknowledged while blocked at the quota"
        assert metric(port, "tidegate_intake_blocked") == 1
        assert publisher.acked > broker_acks + 500, "the broker should keep taking (and holding) readings"
        on_disk = metric(port, "tidegate_log_bytes_on_disk")
        assert on_disk <= QUOTA + QUOTA_SLACK, f"{on_disk:.0f} bytes on disk with a quota of {QUOTA}"
        proxy.restore()
        to_resume = wait_metric(port, "tidegate_intake_blocked", lambda v: v == 0, timeout=60)
        wait_metric(port, "tidegate_acks_total", lambda v: v > acks + 500, timeout=30)
        notes.append(f"blocked {to_block:.1f} s after the cut, resumed {to_resume:.1f} s after the uplink returned,"
                     f" {on_disk / 1024:.0f} KiB on disk while blocked")
    time.sleep(3.0)
    tally = finish("quota block, uplink cut", mode, cycles, publisher, central, gateway, expander,
                   tmp_path / "gateway", tmp_path, started, notes="; ".join(notes), drained=lambda: drained(port))
    assert tally.dropped_by_quota == 0 and not tally.missing, "block must drop nothing"
    assert gateway.restarts == 0


def window_of(key: Key) -> int:
    return key[2] - key[2] % WINDOW_MS


@modes(quick=1, long=3, long_timeout_s=900)
def test_drop_oldest_at_the_quota_drops_the_lower_priority_streams_oldest_windows_and_counts_them(
    mode: str, cycles: int, mosquitto: Mosquitto, uplink: tuple[KafkaBroker, FaultProxy],
    new_kafka_topic: NewKafkaTopic, tmp_path: Path, supervise: Supervise
) -> None:
    started = time.monotonic()
    central, proxy, port, gateway, expander = start_pipeline(
        mosquitto, uplink, new_kafka_topic, tmp_path, supervise,
        log='quota_policy = "drop_oldest"\npriorities = { alarms = 10 }',
        routes='[[routes]]\ntemplate = "bulk/{device}"\nstream = "bulk"\n\n'
               '[[routes]]\ntemplate = "alarms/{device}"\nstream = "alarms"\n',
    )
    bulk = Publisher(mosquitto.port, rate_hz=300, client_id="bulk", step_ms=STEP_MS, topic="bulk/x", tag="-b",
                     value_bytes=1000)
    alarms = Publisher(mosquitto.port, rate_hz=30, client_id="alarms", step_ms=STEP_MS, topic="alarms/x", tag="-a")
    bulk.start()
    alarms.start()
    notes = []
    for _ in range(cycles):
        time.sleep(3.0)
        proxy.cut("refuse")
        dropped_before = metric(port, "tidegate_dropped_by_quota_total")
        to_drop = wait_metric(port, "tidegate_dropped_by_quota_total", lambda v: v > dropped_before, timeout=60)
        acks = metric(port, "tidegate_acks_total")
        time.sleep(4.0)
        assert metric(port, "tidegate_acks_total") > acks + 500, "drop_oldest keeps taking readings at the quota"
        assert metric(port, "tidegate_intake_blocked") == 0
        assert metric(port, 'tidegate_dropped_by_quota_total{stream="alarms"}') == 0
        on_disk = metric(port, "tidegate_log_bytes_on_disk")
        assert on_disk <= QUOTA + QUOTA_SLACK, f"{on_disk:.0f} bytes on disk with a quota of {QUOTA}"
        proxy.restore()
        notes.append(f"first drop {to_drop:.1f} s after the cut")
    time.sleep(4.0)
    tally = finish("quota drop_oldest, two priorities, uplink cut", mode, cycles, [bulk, alarms], central,
                   gateway, expander, tmp_path / "gateway", tmp_path, started,
                   notes="; ".join(notes), drained=lambda: drained(port), quota_overcount=True)
    dropped = tally.log.dropped_by_stream
    assert dropped.get("alarms", 0) == 0 and dropped["bulk"] == tally.dropped_by_quota > 0
    lost = tally.missing
    assert lost and not lost & alarms.accepted, "only the lower-priority stream loses readings"

    # Whole windows, oldest first: the bulk windows that lost readings are one
    # run in time order; windows before and after it are complete upstream, and
    # every window of the run but its first (whose start may have been sent
    # before the uplink went) lost every reading it had.
    windows = sorted({window_of(k) for k in bulk.accepted})
    hit = sorted({window_of(k) for k in lost})
    first, last = windows.index(hit[0]), windows.index(hit[-1])
    assert windows[first:last + 1] == hit, f"dropped windows are not one run: {hit} of {windows}"
    by_window: dict[int, set[Key]] = {}
    for key in bulk.accepted:
        by_window.setdefault(window_of(key), set()).add(key)
    for start in hit[1:]:
        assert by_window[start] <= lost, f"window {start} was dropped only in part"
    # (the readings of windows outside the run are upstream: the equation above says so)
    print(f"bulk windows {len(windows)}, dropped {len(hit)} (from the {first + 1}th), alarms lost none")
    if tally.overcounted:
        pytest.xfail(f"known problem: the quota counted {tally.dropped_by_quota} readings as dropped, of which "
                     f"{tally.overcounted} reached the readings topic (in flight when their window was "
                     "dropped; docs/reliability.md)")


def test_a_window_dropped_by_quota_counts_only_its_unforwarded_readings(tmp_path: Path) -> None:
    """The count behind the drop_oldest scenario's imbalance, on real files in one process."""
    from core.log import UNSYNCED, LogConfig
    from edge.logstore import open_log

    config = LogConfig(window_ms=WINDOW_MS, quota_bytes=QUOTA, quota_policy="drop_oldest")
    with open_log(tmp_path / "log", config, background=False) as log:
        for window in range(30):
            for i in range(100):
                log.append("s", T0 + window * WINDOW_MS + i, b"x" * 1000, UNSYNCED)
            log.sync()
            if window == 2:
                log.store_cursor("bridge", "s", 60)  # 60 of the first window's 100 readings are forwarded
            if log.stats()["streams"]["s"]["dropped_by_quota"]:  # type: ignore[index]
                break
        streams = log.stats()["streams"]
        assert streams["s"]["start_offset"] == 100  # type: ignore[index]  # the first window went
        assert streams["s"]["dropped_by_quota"] == 40  # type: ignore[index]  # not the window's 100
