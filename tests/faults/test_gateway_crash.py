"""kill -9 of the gateway, over and over, while sensors keep publishing.

The harness is never killed: a publisher that counts what the broker
acknowledged (PUBACK) and, at the end, a reader of the upstream. The gateway
(``tidegate run``, a real process) is started and SIGKILLed at random moments:
between a receive and its log sync, between a sync and the acknowledgement to
the broker, between a batch reaching the upstream and the bridge's cursor
being stored. The equation at the end:

    readings the broker accepted == distinct readings upstream, with no reading twice

Upstream duplicates of a whole batch (a resend after a crash, same reading ids)
are removed by id, as the central expander does; a reading that appears under
two ids (written twice into the log) is a failure.

Quick mode in CI: 6 kill cycles. ``--long``: 300 cycles (about ten minutes).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from edge.mosquitto import Mosquitto
from tests.faults.harness import Publisher, Tally, modes, start_gateway, upstream_readings, wait_for_session

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


@modes(quick=6, long=300, long_timeout_s=1800)
def test_kill_9_of_the_gateway_loses_and_duplicates_nothing(
    mode: str, cycles: int, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rng = random.Random(cycles)
    started = time.monotonic()
    data_dir, spool = tmp_path / "gateway", tmp_path / "spool"
    publisher = Publisher(mosquitto.port, rate_hz=300)
    kills = 0
    try:
        for cycle in range(cycles):
            gateway = start_gateway(mosquitto.port, data_dir, spool)
            if cycle == 0:
                wait_for_session(mosquitto.port)
                publisher.start()
            time.sleep(rng.uniform(1.0, 2.5))  # start-up takes most of a second
            gateway.send_signal(signal.SIGKILL)
            gateway.wait()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.3))
    finally:
        publisher.stop()
    accepted = publisher.accepted
    assert len(accepted) > 1000

    gateway = start_gateway(mosquitto.port, data_dir, spool)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = upstream_readings(spool)
            if set(got) >= accepted:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # anything still in flight lands, so duplicates would show
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
    stderr = (tmp_path / "gateway.err").read_text(errors="replace")
    tally = Tally("kill -9 gateway, spool upstream", mode, kills, accepted, upstream_readings(spool),
                  seconds=time.monotonic() - started, notes="upstream is a spool directory, no Kafka")
    tally.check(stderr)  # a reading the publisher sent but whose PUBACK it missed may arrive; no other
