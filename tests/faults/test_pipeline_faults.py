"""Faults along the whole pipeline: publishers -> Mosquitto -> gateway -> Kafka -> expander -> readings topic.

Each scenario runs the real pieces (``tidegate run`` and ``python -m
bridge.central`` as processes of their own, Mosquitto, a Kafka broker), hurts
one of them in cycles while a publisher that is never killed keeps going, and
ends with the equation of tests/faults/harness.py:

    readings the broker accepted == readings in the readings topic (read_committed)
                                    + readings dropped by quota + readings kept as dead letters

with no reading in the readings topic twice. docs/reliability.md has the
figures of a run and what each scenario does and does not show.

Quick mode runs in CI; ``--long`` adds the ``long`` parameters (more cycles: 200 kills of the
gateway and of the expander).
"""

from __future__ import annotations

import contextlib
import errno
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.mosquitto import Mosquitto
from edge.mqtt_intake import MqttConfig
from tests.faults.harness import (
    T0,
    Central,
    MetricsSampler,
    Publisher,
    Supervise,
    Tally,
    finish,
    log_counts,
    modes,
    start_gateway,
    tail,
    wait_for_session,
)
from tests.faults.proxy import free_port
from tests.fixtures.kafka import NewKafkaTopic
from tests.kafka.broker import KafkaBroker
from tidegate.app import Service
from tidegate.config import RunConfig

pytestmark = [pytest.mark.mosquitto, pytest.mark.kafka, pytest.mark.slow]

# -- 1. kill -9 of the gateway, and of the expander, with Kafka and the expander running --------------


@modes(quick=4, long=200, long_timeout_s=1800)
@pytest.mark.parametrize("victim", ["gateway", "expander"])
def test_kill_9_cycles_along_the_pipeline_lose_and_duplicate_nothing(
    victim: str, mode: str, cycles: int, mosquitto: Mosquitto, central: Central, tmp_path: Path,
    supervise: Supervise
) -> None:
    rng = random.Random(f"{victim}{cycles}")
    started = time.monotonic()
    data_dir = tmp_path / "gateway"
    gateway = supervise(lambda: start_gateway(mosquitto.port, data_dir, central.upstream))
    expander = supervise(central.start_expander)
    wait_for_session(mosquitto.port)
    publisher = Publisher(mosquitto.port, rate_hz=300)
    publisher.start()
    for _ in range(cycles):
        time.sleep(rng.uniform(1.0, 2.5))  # start-up of either takes most of a second
        (gateway if victim == "gateway" else expander).kill()
    time.sleep(1.0)
    tally = finish(f"kill -9 {victim}", mode, cycles, publisher, central, gateway, expander, data_dir, tmp_path, started)
    assert len(tally.accepted) > 1000


# -- 2. Mosquitto stopped and started (persistence on) while publishing --------------------------------


def test_the_launcher_keeps_its_persistence_file_when_run_as_root(mosquitto: Mosquitto) -> None:
    """Without it every restart below would lose the broker's queue (it did, until edge/mosquitto.py kept root)."""
    mosquitto.stop()  # SIGTERM: Mosquitto saves its persistence file now
    assert list(mosquitto.state_dir.glob("*.db")), (mosquitto.state_dir / "mosquitto.log").read_text()[-500:]


@modes(quick=3, long=20)
def test_mosquitto_restarts_lose_and_duplicate_nothing(
    mode: str, cycles: int, mosquitto: Mosquitto, central: Central, tmp_path: Path,
    supervise: Supervise
) -> None:
    rng = random.Random(cycles)
    started = time.monotonic()
    data_dir = tmp_path / "gateway"
    gateway = supervise(lambda: start_gateway(mosquitto.port, data_dir, central.upstream))
    expander = supervise(central.start_expander)
    wait_for_session(mosquitto.port)
    publisher = Publisher(mosquitto.port, rate_hz=300)
    publisher.start()
    for _ in range(cycles):
        time.sleep(rng.uniform(1.0, 2.5))
        mosquitto.stop()  # SIGTERM: Mosquitto writes its persistence file, queued QoS 1 messages included
        time.sleep(rng.uniform(0.2, 1.5))
        mosquitto.start()
    time.sleep(2.0)  # both clients reconnect (paho backs off up to 1 s here)
    tally = finish("Mosquitto stop/start", mode, cycles, publisher, central, gateway, expander, data_dir, tmp_path,
                   started, notes="publisher and gateway reconnect; only PUBACKed readings count")
    assert len(tally.accepted) > 1000


# -- 3. the Kafka broker restarted, and killed, while the gateway forwards -----------------------------


@modes(quick=2, long=10)
def test_kafka_restarts_and_kill_9_lose_and_duplicate_nothing(
    mode: str, cycles: int, mosquitto: Mosquitto, private_kafka_broker: KafkaBroker,
    new_kafka_topic: NewKafkaTopic, tmp_path: Path, supervise: Supervise
) -> None:
    rng = random.Random(cycles)
    started = time.monotonic()
    central = Central.create(private_kafka_broker, new_kafka_topic, tmp_path / "central")
    data_dir = tmp_path / "gateway"
    gateway = supervise(lambda: start_gateway(mosquitto.port, data_dir, central.upstream))
    expander = supervise(central.start_expander)
    wait_for_session(mosquitto.port)
    publisher = Publisher(mosquitto.port, rate_hz=300)
    publisher.start()
    for cycle in range(cycles):
        time.sleep(rng.uniform(2.0, 4.0))
        if cycle % 2:
            private_kafka_broker.kill()  # SIGKILL: Kafka recovers its log at the next start
            time.sleep(rng.uniform(0.5, 2.0))
            private_kafka_broker.start()
        else:
            private_kafka_broker.restart()
    time.sleep(2.0)
    # After a crash of the broker the expander may sit in a transactional call
    # until its operation timeout (30 s) and the coordinator aborts the open
    # transaction after transaction.timeout.ms (30 s) before it redoes the
    # work; or it may be stuck inside librdkafka, and exit after 65 s for the
    # supervisor to start it again (StallWatch in bridge/central.py), which
    # then reloads its state: the topic may stand still that long without
    # anything being lost.
    tally = finish("Kafka restart / kill -9", mode, cycles, publisher, central, gateway, expander, data_dir, tmp_path,
                   started, notes="cycles alternate a clean restart and kill -9 + start", quiet_s=110.0)
    assert len(tally.accepted) > 1000


# -- 4. the gateway's clock stepped back an hour, to 1970, and days ahead ------------------------------


class SteppableClock:
    """Wall time in seconds that runs at the real pace from a chosen start and can be stepped."""

    def __init__(self, start_s: float) -> None:
        self._base = start_s - time.monotonic()

    def __call__(self) -> float:
        return self._base + time.monotonic()

    def step(self, delta_s: float) -> None:
        self._base += delta_s

    def set(self, now_s: float) -> None:
        self._base = now_s - time.monotonic()


CLOCK_STEPS: list[tuple[str, Callable[[SteppableClock, float], None]]] = [
    ("an hour back", lambda clock, device_s: clock.set(device_s - 3600)),
    ("to 1970", lambda clock, device_s: clock.set(1.0)),
    ("three days ahead", lambda clock, device_s: clock.set(device_s + 3 * 86400)),
]


@modes(quick=1, long=5)
@pytest.mark.parametrize("step", [
    pytest.param(0, id="hour-back"),
    pytest.param(1, id="to-1970"),
    pytest.param(2, id="days-ahead"),
])
def test_clock_steps_keep_device_time_and_lose_nothing(
    step: int, mode: str, cycles: int, mosquitto: Mosquitto, central: Central, tmp_path: Path,
    supervise: Supervise
) -> None:
    """The gateway runs in this process with an injected clock (a subprocess's clock cannot be stepped).

    The publisher's device time runs at the real pace from T0; the gateway's
    clock starts there too, and is stepped away and back again in cycles.
    With an injected clock there is no ClockProbe, so the gateway trusts its
    clock and the log's early rule applies: readings more than 10 minutes
    ahead of the gateway's clock are refused as ``early`` and kept as dead
    letters, which the equation counts (docs/reliability.md, "Clock steps").
    """
    started = time.monotonic()
    clock = SteppableClock(T0 / 1000)
    data_dir = tmp_path / "gateway"
    config = RunConfig(data_dir=data_dir, upstream=central.upstream, gateway_id="gw-clock",
                       mqtt=MqttConfig(port=mosquitto.port, client_id="tidegate-clock"))
    service = Service(config, clock=clock)
    expander = supervise(central.start_expander)
    service.start()
    try:
        wait_for_session(mosquitto.port)
        clock.set(T0 / 1000)
        publisher = Publisher(mosquitto.port, rate_hz=100, t0=T0, step_ms=10)
        publisher.start()

        def device_s() -> float:  # the device time of the message being published now
            return (T0 + publisher.sent * 10) / 1000

        name, stepper = CLOCK_STEPS[step]
        for _ in range(cycles):
            time.sleep(1.5)
            stepper(clock, device_s())
            time.sleep(2.0)
            clock.set(device_s())  # synchronised again
        time.sleep(1.5)
        publisher.stop()
        by_key, by_id = central.wait_for(publisher.accepted)
    finally:
        service.stop()
        expander.stop()
    counts = log_counts(data_dir)
    rejected = service.metrics.total("tidegate_rejected_total")
    tally = Tally(f"clock step {name} (in-process)", mode, cycles, publisher.accepted, by_key, by_id,
                  counts, time.monotonic() - started, notes="readings judged early are dead letters")
    tally.check(tail([central.workdir / "central.log"]))
    assert rejected == len(counts.letters) + counts.summarised, (
        "every refused reading is counted by the metric and kept as a dead letter (named, or in a flood summary)")
    assert len(tally.accepted & set(by_key)) > 300
    # Device time is kept: every reading upstream carries the time its device gave it.
    assert all(key[2] >= T0 for key in by_key)


# -- 5. the disk under the log fills up, and space returns ---------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write a ballast file until the file system says ENOSPC."""
    ballast = path / "ballast"
    chunk = b"\0" * 65536
    with ballast.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 512)
    return ballast


@modes(quick=1, long=4)
def test_a_full_disk_stops_the_gateways_acknowledgements_while_the_broker_holds_the_readings(
    mode: str, cycles: int, mosquitto: Mosquitto, central: Central, tmp_path: Path,
    supervise: Supervise
) -> None:
    """While the tmpfs under the log is full, the gateway acknowledges nothing it has not made durable.

    Two kinds of acknowledgement are at work, and only one of them stops:
    the broker's PUBACK to the publisher (Mosquitto queues the readings for
    the gateway's persistent session whatever the gateway does) and the
    gateway's PUBACK to the broker (``tidegate_acks_total``, scraped from each
    gateway process in turn). On ENOSPC the log goes to ERROR and the writer
    stops without acknowledging; ``tidegate run`` exits and is restarted, and
    each new process fails on its first write. The only acknowledgements a
    gateway may send while the disk is full are for redelivered duplicates of
    readings that were durable before (acknowledged once their first copy
    is). Once space returns, the gateway catches up from the broker's queue.
    """
    started = time.monotonic()
    http_port = free_port()
    with small_tmpfs(tmp_path / "disk") as disk:
        data_dir = disk  # the gateway's stderr goes to tmp_path/gateway.err, off the small disk
        gateway = supervise(lambda: start_gateway(mosquitto.port, data_dir, central.upstream, http_port=http_port))
        expander = supervise(central.start_expander)
        wait_for_session(mosquitto.port)
        sampler = MetricsSampler(http_port)
        publisher = Publisher(mosquitto.port, rate_hz=200)
        publisher.start()
        full: list[str] = []
        try:
            for _ in range(cycles):
                time.sleep(2.0)
                ballast = fill(disk)
                time.sleep(1.0)  # acknowledgements of what was durable before the disk filled go out
                since, broker_before, restarts_before = time.monotonic(), publisher.acked, gateway.restarts
                time.sleep(5.0)
                until, broker_acks = time.monotonic(), publisher.acked - broker_before
                ballast.unlink()  # space returns
                acks = sampler.increase("tidegate_acks_total", since, until)
                duplicates = sampler.increase("tidegate_duplicates_total", since, until)
                assert sampler.processes(since, until), "no gateway answered on /metrics while the disk was full"
                assert acks <= duplicates, f"the gateway acknowledged {acks:.0f} messages while its disk was full"
                assert broker_acks > 500, "the broker should keep taking (and holding) readings"
                assert gateway.restarts > restarts_before, "the gateway should have stopped on ENOSPC"
                while not sampler.increase("tidegate_acks_total", until, time.monotonic()):
                    assert time.monotonic() - until < 30, "acknowledgements did not resume once space returned"
                    time.sleep(0.2)
                full.append(f"{acks:.0f} gateway acks ({duplicates:.0f} duplicates), {broker_acks} broker acks, "
                            f"{gateway.restarts - restarts_before} gateway restarts in 5 s; acks again "
                            f"{time.monotonic() - until:.1f} s after space returned")
                time.sleep(2.0)
        finally:
            sampler.stop()
            tally = finish("disk full (4 MiB tmpfs)", mode, cycles, publisher, central, gateway, expander, data_dir,
                           tmp_path, started, notes="while full: " + "; ".join(full))
    assert len(tally.accepted) > 1000
