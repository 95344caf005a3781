"""MQTT intake against a real Mosquitto: persistent session, manual acks, lost sessions and drops seen."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import mqtt_intake
from edge.mosquitto import Mosquitto
from edge.mqtt_intake import SESSION_MARKER_FILE, MqttConfig, MqttIntake, Received

pytestmark = pytest.mark.mosquitto


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def publish(port: int, topic: str, payloads: list[str]) -> None:
    subprocess.run(
        ["mosquitto_pub", "-p", str(port), "-q", "1", "-t", topic, "-l"],
        input="".join(p + "\n" for p in payloads).encode(), check=True, timeout=30,
    )


def receiving(mosquitto: Mosquitto, config: MqttConfig, count: int) -> tuple[MqttIntake, list[Received]]:
    """A started intake, subscribed, that has received ``count`` messages published for the test (none acknowledged)."""
    received: list[Received] = []
    intake = MqttIntake(config, received.append)
    intake.start()
    try:
        wait_for(lambda: intake._client.is_connected())
        time.sleep(0.2)  # subscription in place
        publish(mosquitto.port, "sensors/n1", [f'{{"value": {i}}}' for i in range(count)])
        wait_for(lambda: len(received) == count)
    except BaseException:
        intake.stop()
        raise
    return intake, received


def redelivered(config: MqttConfig, expected: list[Received], settle_s: float) -> None:
    """A restarted intake gets back exactly ``expected`` (the messages never acknowledged), and acknowledges them."""
    second: list[Received] = []
    intake = MqttIntake(config, second.append)
    intake.start()
    try:
        wait_for(lambda: len(second) >= len(expected))
        time.sleep(settle_s)  # nothing more comes
        assert sorted(m.payload for m in second) == sorted(m.payload for m in expected)
        with intake.batched_acks():
            for message in second:
                intake.ack(message)
    finally:
        intake.stop()


def test_unacknowledged_messages_come_back_after_a_restart_of_the_gateway(mosquitto: Mosquitto) -> None:
    config = MqttConfig(port=mosquitto.port, client_id="gw-redelivery", subscriptions=("sensors/#",))
    intake, first = receiving(mosquitto, config, 10)
    try:
        for message in first[:4]:  # the log holds only these four durably
            intake.ack(message)
        time.sleep(0.2)
    finally:
        intake.stop()  # "crash": six messages never acknowledged
    redelivered(config, first[4:], settle_s=0.3)


def start_and_subscribe(config: MqttConfig, state_dir: Path | None, **kwargs: object) -> tuple[MqttIntake, list[str]]:
    """An intake connected and subscribed (its SUBACK seen), with the events it reported."""
    events: list[str] = []
    intake = MqttIntake(config, kwargs.pop("on_message", lambda m: None), on_event=events.append,  # type: ignore[arg-type]
                        state_dir=state_dir, **kwargs)  # type: ignore[arg-type]
    intake.start()
    wait_for(lambda: "subscribed" in events)
    return intake, events


@pytest.mark.parametrize("one_packet", [True, False], ids=["one-packet", "paho-acks"])
def test_acknowledgements_batched_from_another_thread_all_reach_the_broker(
        mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch, one_packet: bool) -> None:
    """batched_acks sends a batch as one packet (or, without paho's packet queue, one by one): all go out, promptly."""
    monkeypatch.setattr(mqtt_intake, "_PAHO_QUEUES_PACKETS", one_packet)
    config = MqttConfig(port=mosquitto.port, client_id=f"gw-batched-acks-{one_packet}", subscriptions=("sensors/#",))
    intake, first = receiving(mosquitto, config, 60)
    try:
        def writer() -> None:  # as the gateway's writer thread acknowledges a group commit's messages
            with intake.batched_acks():
                for message in first[:50]:
                    intake.ack(message)
            with intake.batched_acks(), intake.batched_acks():  # nested: one wake-up, at the outer end
                intake.ack(first[50])

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join(10)
        # Sent without any other traffic to wake the network thread: the one wake-up did it.
        wait_for(lambda: not intake._client.want_write(), timeout=0.4)  # paho would sleep up to 1 s in select()
        time.sleep(0.3)
    finally:
        intake.stop()  # the last nine were never acknowledged
    redelivered(config, first[51:], settle_s=0.5)


def test_a_batch_holds_back_only_its_own_threads_acknowledgements(mosquitto: Mosquitto) -> None:
    config = MqttConfig(port=mosquitto.port, client_id="gw-batch-per-thread", subscriptions=("sensors/#",))
    intake, first = receiving(mosquitto, config, 12)
    try:
        with intake.batched_acks():
            intake.ack(first[0])  # held until the batch ends, which is after the "crash"
            thread = threading.Thread(target=lambda: [intake.ack(message) for message in first[1:10]])
            thread.start()
            thread.join(10)
            wait_for(lambda: not intake._client.want_write(), timeout=0.4)
            time.sleep(0.3)
            intake.stop()
    finally:
        intake.stop()
    redelivered(config, [first[0], *first[10:]], settle_s=0.5)


def test_messages_queued_while_the_gateway_is_away_are_delivered(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = MqttConfig(port=mosquitto.port, client_id="gw-offline", subscriptions=("sensors/#",))
    intake, _ = start_and_subscribe(config, tmp_path)
    intake.stop()
    publish(mosquitto.port, "sensors/n1", [f'{{"value": {i}}}' for i in range(300)])  # past Mosquitto's default 20 in flight
    got: list[Received] = []
    events: list[str] = []
    lock = threading.Lock()

    def take(message: Received) -> None:
        with lock:
            got.append(message)
        intake2.ack(message)

    # A new process: its first connect is checked against the session marker.
    intake2 = MqttIntake(config, take, on_event=events.append, state_dir=tmp_path)
    assert intake2.session_marker is not None and intake2.session_marker.known
    intake2.start()
    try:
        wait_for(lambda: len(got) == 300)
    finally:
        intake2.stop()
    assert [m.payload for m in got] == [f'{{"value": {i}}}'.encode() for i in range(300)]
    assert "connected" in events and "session_lost" not in events


def test_a_first_start_finds_no_session_and_reports_no_loss(mosquitto: Mosquitto, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    config = MqttConfig(port=mosquitto.port, client_id="gw-first", subscriptions=("sensors/#",))
    assert not (tmp_path / SESSION_MARKER_FILE).exists()
    intake, events = start_and_subscribe(config, tmp_path)
    intake.stop()
    assert "session_lost" not in events
    assert not [r for r in caplog.records if "did not keep our session" in r.getMessage()]
    assert (tmp_path / SESSION_MARKER_FILE).exists()  # from now on a missing session is a loss


def test_a_broker_that_lost_our_session_while_the_gateway_was_down_is_reported_on_the_first_connect(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    config = MqttConfig(port=mosquitto.port, client_id="gw-lost", subscriptions=("sensors/#",))
    intake, _ = start_and_subscribe(config, tmp_path / "data")
    intake.stop()
    # The broker restarts with a fresh persistence file while the gateway is down.
    mosquitto.stop()
    fresh = Mosquitto(tmp_path / "fresh-broker", port=mosquitto.port)
    fresh.start()
    try:
        caplog.set_level(logging.WARNING, logger="tidegate.mqtt")
        intake, events = start_and_subscribe(config, tmp_path / "data")
        intake.stop()
    finally:
        fresh.stop()
    assert events.index("session_lost") < events.index("connected")
    assert [r for r in caplog.records if r.levelno == logging.WARNING and "did not keep our session" in r.getMessage()]


def test_another_broker_address_is_a_first_start_not_a_loss(mosquitto: Mosquitto, tmp_path: Path) -> None:
    intake, _ = start_and_subscribe(MqttConfig(port=mosquitto.port, client_id="gw-move"), tmp_path)
    intake.stop()
    with Mosquitto(tmp_path / "other-broker") as other:
        intake, events = start_and_subscribe(MqttConfig(port=other.port, client_id="gw-move"), tmp_path)
        intake.stop()
    assert "session_lost" not in events


def wait_for_broker_dropped(port: int, count: int) -> None:
    """Wait until the broker's own $SYS drop counter says ``count``."""
    def current() -> str:
        return subprocess.run(
            ["mosquitto_sub", "-p", str(port), "-t", "$SYS/broker/publish/messages/dropped", "-C", "1", "-W", "3"],
            capture_output=True, text=True,
        ).stdout.strip()
    wait_for(lambda: current() == str(count))


@pytest.fixture
def small_queue_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that queues at most 5 messages per client (Mosquitto's default is 1000) and updates $SYS every second."""
    with Mosquitto(tmp_path / "small", extra_config="max_queued_messages 5\nsys_interval 1\n") as broker:
        yield broker


def test_a_broker_queue_overflow_is_seen_and_reported(small_queue_broker: Mosquitto, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    broker = small_queue_broker
    config = MqttConfig(port=broker.port, client_id="gw-drops", subscriptions=("sensors/#",))
    intake, _ = start_and_subscribe(config, tmp_path)
    intake.stop()
    publish(broker.port, "sensors/n1", [f'{{"value": {i}}}' for i in range(20)])  # while the intake is away
    wait_for_broker_dropped(broker.port, 15)
    dropped: list[int] = []
    got: list[Received] = []
    caplog.set_level(logging.WARNING, logger="tidegate.mqtt")
    intake = MqttIntake(config, lambda m: (got.append(m), intake.ack(m)), on_broker_dropped=dropped.append)
    intake.start()
    try:
        wait_for(lambda: dropped and dropped[-1] >= 15, timeout=5)
    finally:
        intake.stop()
    assert len(got) == 5
    assert dropped == [15]
    # The drops happened while tidegate was away: the first value it sees is already 15, and says so.
    assert [r for r in caplog.records
            if r.levelno == logging.WARNING and "Mosquitto has dropped 15 messages since it started" in r.getMessage()]


def test_a_drop_while_the_gateway_is_away_shows_in_the_service_metric_and_log(
    small_queue_broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    from tidegate.app import RunConfig, Service

    broker = small_queue_broker
    mqtt = MqttConfig(port=broker.port, client_id="gw-service-drops", subscriptions=("sensors/#",))
    intake, _ = start_and_subscribe(mqtt, tmp_path / "data")  # the gateway's session, as a first run leaves it
    intake.stop()
    publish(broker.port, "sensors/n1/temp_c", [f'{{"ts": {1_767_225_600_000 + i}, "value": {i}}}' for i in range(20)])
    wait_for_broker_dropped(broker.port, 15)
    caplog.set_level(logging.WARNING, logger="tidegate.mqtt")
    service = Service(RunConfig(data_dir=tmp_path / "data", mqtt=mqtt))
    service.start()
    try:
        wait_for(lambda: service.metrics.get("tidegate_broker_dropped") == 15, timeout=10)
        wait_for(lambda: service.metrics.total("tidegate_readings_in_total") == 5)
    finally:
        service.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "tidegate.mqtt"]
    assert any("Mosquitto has dropped 15 messages" in line for line in warnings), warnings
    assert service.metrics.get("tidegate_mqtt_events_total", {"event": "session_lost"}) == 0


def test_every_rise_of_the_drop_counter_is_a_warning(small_queue_broker: Mosquitto, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    broker = small_queue_broker
    config = MqttConfig(port=broker.port, client_id="gw-rises", subscriptions=("sensors/#",))
    # Another persistent client that never reads: its queue overflows while tidegate watches.
    lazy = MqttConfig(port=broker.port, client_id="lazy-client", subscriptions=("sensors/#",))
    intake, _ = start_and_subscribe(lazy, None)
    intake.stop()
    dropped: list[int] = []
    caplog.set_level(logging.WARNING, logger="tidegate.mqtt")
    intake = MqttIntake(config, lambda m: intake.ack(m), on_broker_dropped=dropped.append)
    intake.start()
    try:
        wait_for(lambda: bool(dropped), timeout=5)
        assert dropped == [0]  # the first value, 0: no warning
        assert not [r for r in caplog.records if "dropped" in r.getMessage()]
        publish(broker.port, "sensors/n1", [f'{{"value": {i}}}' for i in range(10)])
        wait_for(lambda: dropped[-1] == 5, timeout=5)
        publish(broker.port, "sensors/n1", [f'{{"value": {i}}}' for i in range(3)])
        wait_for(lambda: dropped[-1] == 8, timeout=5)
    finally:
        intake.stop()
    rises = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "dropped" in r.getMessage()]
    assert len(rises) == 2 and "dropped 5 messages" in rises[0] and "dropped 3 messages" in rises[1]
