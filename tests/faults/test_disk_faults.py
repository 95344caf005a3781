"""Torn writes and I/O errors under the gateway's log, end to end.

The gateway runs as ``python -m tests.faults.faulty_gateway run ...``: the
ordinary ``tidegate run`` with the log's OS file adapter wrapped so that one
write, fsync or directory fsync fails (EIO, ENOSPC), is torn, or is torn and
followed by the process killing itself (tests/faults/faulty_gateway.py lists
the kinds). Each gateway process gets one fault, of a kind taken in turn, at
a random operation; it fails and exits (the log goes to its ERROR state) or
dies by SIGKILL, and is restarted as systemd would, with the next fault. The
last process runs clean. Meanwhile a publisher that is never killed keeps
going, and the expander turns batches into the readings topic.

The scenario ends with the equation of tests/faults/harness.py (nothing the
broker accepted is lost or duplicated), and ``tidegate fsck`` finds the log
clean after the recoveries. A gateway that acknowledged a reading after a
failed write or fsync would lose it here: ``eio-fsync-lost`` and the torn
kinds take back what was not synced, and the broker does not redeliver a
message the gateway acknowledged.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from edge.mosquitto import Mosquitto
from tests.faults.faulty_gateway import FAULT_KINDS
from tests.faults.harness import (
    ROOT,
    Central,
    Publisher,
    Supervise,
    Tally,
    finish,
    modes,
    start_gateway,
    wait_for_session,
)

pytestmark = [pytest.mark.mosquitto, pytest.mark.kafka, pytest.mark.slow]

#: Every kind but the cursor one: a failed cursor store does not stop the gateway (see below).
LOG_FAULTS = [kind for kind in FAULT_KINDS if kind != "eio-cursor"]


class FaultyGateways:
    """Starts gateway processes, each with the next fault of a schedule, then clean ones.

    Args:
        faults: (kind, nth) for each process in turn.
    """

    def __init__(self, port: int, data_dir: Path, upstream: str, report: Path, faults: list[tuple[str, int]]) -> None:
        self.port, self.data_dir, self.upstream, self.report = port, data_dir, upstream, report
        self.faults = faults
        self.started = 0

    def __call__(self) -> subprocess.Popen[bytes]:
        env = {"TIDEGATE_TEST_FAULT_LOG": str(self.report)}
        if self.started < len(self.faults):
            kind, nth = self.faults[self.started]
            env["TIDEGATE_TEST_FAULT"] = f"{kind}:{nth}:{self.started}"
        self.started += 1
        return start_gateway(self.port, self.data_dir, self.upstream, module="tests.faults.faulty_gateway", env=env)

    def struck(self) -> Counter[str]:
        """The faults that struck so far, by kind."""
        lines = self.report.read_text().splitlines() if self.report.exists() else []
        return Counter(line.split(" ", 1)[0] for line in lines)


def fsck(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidegate", "fsck", "--data-dir", str(data_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def fault_scenario(name: str, mode: str, faults: list[tuple[str, int]], mosquitto: Mosquitto, central: Central,
                   tmp_path: Path, supervise: Supervise, restarts: bool = True) -> tuple[Tally, Counter[str]]:
    """Publish while gateways with ``faults`` run in turn, then count; returns the tally and the faults that struck.

    Args:
        restarts: each fault stops its gateway, so wait for the clean one after the last;
            without, wait only until the faults struck, and 5 s more.
    """
    started = time.monotonic()
    data_dir = tmp_path / "gateway"
    gateways = FaultyGateways(mosquitto.port, data_dir, central.upstream, tmp_path / "faults.log", faults)
    gateway = supervise(gateways)
    expander = supervise(central.start_expander)
    wait_for_session(mosquitto.port)
    publisher = Publisher(mosquitto.port, rate_hz=300)
    publisher.start()
    deadline = time.monotonic() + 30 + 10 * len(faults)
    while sum(gateways.struck().values()) < len(faults) or (restarts and gateways.started <= len(faults)):
        assert time.monotonic() < deadline, f"only {gateways.struck()} of {len(faults)} faults struck"
        time.sleep(0.2)
    time.sleep(2.0 if restarts else 5.0)  # the clean gateway takes in what waited in the broker
    struck = gateways.struck()
    tally = finish(name, mode, len(faults), publisher, central, gateway, expander, data_dir, tmp_path, started,
                   notes="faults: " + ", ".join(f"{kind} {n}x" for kind, n in sorted(struck.items())))
    if restarts:
        assert gateway.restarts >= len(faults), "every fault should have stopped its gateway"
    return tally, struck


@modes(quick=len(LOG_FAULTS), long=240, long_timeout_s=1800)
def test_torn_writes_and_io_errors_in_the_log_lose_and_duplicate_nothing(
    mode: str, cycles: int, mosquitto: Mosquitto, central: Central, tmp_path: Path, supervise: Supervise
) -> None:
    rng = random.Random(cycles)
    # A log sync comes every 20 ms while readings arrive, so the Nth operation is a fraction of a second away.
    faults = [(LOG_FAULTS[i % len(LOG_FAULTS)], rng.randint(1, 40)) for i in range(cycles)]
    tally, struck = fault_scenario("torn writes and I/O errors in the log", mode, faults, mosquitto, central,
                                   tmp_path, supervise)
    assert set(struck) == set(LOG_FAULTS[:cycles]) and sum(struck.values()) == cycles
    assert len(tally.accepted) > 1000
    checked = fsck(tmp_path / "gateway")
    assert checked.returncode == 0, f"fsck after the recoveries: {checked.stdout[-1500:]} {checked.stderr[-500:]}"


def test_an_io_error_storing_the_bridge_cursor_does_not_stop_forwarding(
    mosquitto: Mosquitto, central: Central, tmp_path: Path, supervise: Supervise
) -> None:
    """A cursor store that fails leaves the log usable (core/log: "the old cursor stands").

    The bridge carries on: the batch is sent again under the same ids, which
    the expander drops, and every accepted reading reaches the readings topic.
    (Until commit 37824b2 the failure ended the bridge thread while the
    process ran on, acknowledging readings it never forwarded.)
    """
    fault_scenario("EIO storing the bridge cursor", "quick", [("eio-cursor", 3)], mosquitto, central, tmp_path,
                   supervise, restarts=False)
