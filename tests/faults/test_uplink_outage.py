"""Uplink faults between the bridge and Kafka: store and forward, then exactly once and in order.

The uplink is a TCP proxy (tests/faults/proxy.py) in front of a Kafka listener
of its own: the broker advertises the proxy's port on that listener, so every
connection of the gateway's producer goes through the proxy, while the
expander and the checks use the broker's ordinary listener and never see the
fault. A publisher keeps going the whole time; the proxy refuses, blackholes,
resets or throttles the uplink for a while, then lets it be.

Each scenario ends with the equation of tests/faults/harness.py (every reading
the broker accepted is in the readings topic once) and checks the order of
every series in the readings topic. It also measures how fast the backlog
drains once the uplink is back, against the ingest rate (goal: at least 5x).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from edge.mosquitto import Mosquitto
from tests.faults.harness import (
    BatchWatcher,
    Central,
    Publisher,
    Tally,
    log_counts,
    read_committed,
    start_gateway,
    stop_process,
    tail,
    wait_for_session,
)
from tests.faults.proxy import FaultProxy
from tests.fixtures.kafka import NewKafkaTopic
from tests.kafka.broker import KafkaBroker

pytestmark = [pytest.mark.mosquitto, pytest.mark.kafka, pytest.mark.slow]

RATE_HZ = 300  # messages per second; half carry two readings


def check_series_order(docs: list[dict[str, object]]) -> int:
    """Within each series the readings topic holds rising offsets; returns the number of series."""
    last: dict[tuple[object, ...], int] = {}
    for doc in docs:
        key = (doc["gateway"], doc["stream"], doc["device"], doc["metric"])
        offset = int(doc["offset"])  # type: ignore[call-overload]
        assert offset > last.get(key, -1), f"series {key}: offset {offset} after {last[key]}"
        last[key] = offset
    return len(last)


def outage_scenario(fault: str, outage_s: float, mosquitto: Mosquitto, uplink: tuple[KafkaBroker, FaultProxy],
                    new_kafka_topic: NewKafkaTopic, tmp_path: Path, mode: str = "quick") -> None:
    broker, proxy = uplink
    central = Central.create(broker, new_kafka_topic, tmp_path / "central")
    data_dir = tmp_path / "gateway"
    upstream = f"kafka://127.0.0.1:{proxy.port}/{central.batches}"
    gateway = start_gateway(mosquitto.port, data_dir, upstream)
    expander = central.start_expander()
    watcher = BatchWatcher(broker.bootstrap, central.batches)
    publisher: Publisher | None = None
    started = time.monotonic()
    try:
        wait_for_session(mosquitto.port)
        publisher = Publisher(mosquitto.port, RATE_HZ)
        publisher.start()
        publishing = time.monotonic()
        time.sleep(4)
        if fault == "throttle":
            proxy.throttle(4_000)  # bytes/s: a 300 msg/s stream in small batches would need more
        elif fault == "reset":
            for _ in range(int(outage_s)):  # a reset of every connection each second, mid-request or not
                proxy.reset_all()
                time.sleep(1)
        else:
            proxy.cut(fault)
        if fault != "reset":
            time.sleep(outage_s)
        accepted_at_restore = publisher.acked
        on_kafka_at_restore = watcher.contiguous()
        restored = time.monotonic()
        proxy.restore()
        proxy.throttle(None)
        time.sleep(6)
        publisher.stop()
        ingest_rate = publisher.acked / (time.monotonic() - publishing)
        by_key, by_id = central.wait_for(publisher.accepted)
        caught_up = watcher.reached(accepted_at_restore)
    finally:
        if publisher is not None:
            publisher.stop(settle_s=1)
        watcher.stop()
        stop_process(gateway)
        stop_process(expander)
    backlog = accepted_at_restore - on_kafka_at_restore
    assert caught_up is not None, "the backlog never reached Kafka"
    drain_s = max(caught_up - restored, 1e-3)
    drain_rate = backlog / drain_s
    notes = (f"uplink {fault} for {outage_s:.0f} s; backlog {backlog} readings at restore, on Kafka "
             f"{drain_s:.1f} s later: {drain_rate:,.0f} readings/s drained vs {ingest_rate:,.0f}/s ingest "
             f"({drain_rate / ingest_rate:.1f}x); proxy carried {proxy.upstream_bytes:,} bytes up")
    tally = Tally(f"uplink {fault}", mode, 1, publisher.accepted, by_key, by_id, log_counts(data_dir),
                  time.monotonic() - started, notes)
    tally.check(tail([tmp_path / "gateway.err", central.workdir / "central.log"]))
    series = check_series_order(read_committed(broker.bootstrap, central.readings))
    print(f"{notes}; {series} series in order")
    if fault in ("refuse", "blackhole"):
        assert backlog > ingest_rate * outage_s * 0.5, "the outage did not hold readings back"


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_an_uplink_outage_loses_nothing_and_the_backlog_drains_in_order(
        fault: str, mosquitto: Mosquitto, uplink: tuple[KafkaBroker, FaultProxy], new_kafka_topic: NewKafkaTopic,
        tmp_path: Path) -> None:
    outage_scenario(fault, 12, mosquitto, uplink, new_kafka_topic, tmp_path)


@pytest.mark.long
@pytest.mark.parametrize("fault, outage_s", [("refuse", 75), ("blackhole", 75), ("reset", 15), ("throttle", 20)])
def test_long_and_rough_uplink_faults_lose_nothing(
        fault: str, outage_s: float, mosquitto: Mosquitto, uplink: tuple[KafkaBroker, FaultProxy],
        new_kafka_topic: NewKafkaTopic, tmp_path: Path) -> None:
    # 75 s is past the producer's 30 s delivery timeout: the bridge gives the
    # batch up, keeps its cursor and sends it again, with the same ids.
    outage_scenario(fault, outage_s, mosquitto, uplink, new_kafka_topic, tmp_path, mode="long")


def test_the_proxy_holds_resumes_refuses_and_counts() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    def echo() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)

            def serve(c: socket.socket = conn) -> None:
                try:
                    while data := c.recv(1024):
                        c.sendall(data)
                except OSError:
                    pass

            threading.Thread(target=serve, daemon=True).start()

    threading.Thread(target=echo, daemon=True).start()
    try:
        with FaultProxy(port) as proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as client:
            client.sendall(b"ping")
            assert client.recv(4) == b"ping"
            proxy.cut("blackhole")
            client.sendall(b"held")
            client.settimeout(0.3)
            with pytest.raises(socket.timeout):
                client.recv(4)
            proxy.restore()
            client.settimeout(2)
            assert client.recv(4) == b"held"
            proxy.cut("refuse")
            with pytest.raises(OSError):  # reset: the open connection is gone
                for _ in range(50):
                    client.sendall(b"x" * 10_000)
                    time.sleep(0.01)
            with pytest.raises(OSError):  # and new ones are reset on arrival
                with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as again:
                    again.sendall(b"x")
                    if not again.recv(1):
                        raise ConnectionResetError("closed")
            assert proxy.upstream_bytes >= 8 and proxy.downstream_bytes >= 8
    finally:
        server.close()
        for conn in accepted:
            conn.close()
