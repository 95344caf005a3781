"""Fixtures of the fault suite: the central side, a supervisor for processes, and a faulty uplink."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Central, Supervise, Supervisor, UplinkBroker
from tests.faults.proxy import FaultProxy, free_port
from tests.fixtures.kafka import NewKafkaTopic
from tests.kafka.broker import KafkaBroker


@pytest.fixture
def central(kafka_broker: KafkaBroker, new_kafka_topic: NewKafkaTopic, tmp_path: Path) -> Central:
    """Batch, readings, state and dead-letter topics on the shared broker, and expanders for them."""
    return Central.create(kafka_broker, new_kafka_topic, tmp_path / "central")


@pytest.fixture
def supervise() -> Iterator[Supervise]:
    """``supervise(start, **options)`` starts a Supervisor that is stopped at teardown whatever the test did."""
    started: list[Supervisor] = []

    def make(start: Callable[[], subprocess.Popen[bytes]], **options: object) -> Supervisor:
        started.append(Supervisor(start, **options))  # type: ignore[arg-type]
        return started[-1]

    yield make
    for supervisor in started:
        supervisor.stop()


@pytest.fixture
def uplink(tmp_path: Path) -> Iterator[tuple[KafkaBroker, FaultProxy]]:
    """A private Kafka broker whose ``UPLINK`` listener is reached only through a FaultProxy."""
    uplink_port = free_port()
    with FaultProxy(uplink_port) as proxy, UplinkBroker(tmp_path / "kafka", uplink_port, proxy.port) as broker:
        yield broker, proxy
