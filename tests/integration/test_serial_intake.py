"""Serial intake on real pseudo-terminals: frames and lines in, unplug and replug at a stable path."""

from __future__ import annotations

import os
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
import umsgpack

from core.deadletter import DEAD_LETTER_STREAM, decode_dead_letter
from core.intake import Accepted, Rejected, classify_message
from core.reading import decode_reading
from core.serial_frame import encode_frame
from core.topics import Route, TopicTemplate
from edge.gateway import Gateway, Message
from edge.metrics import Metrics
from edge.serial_intake import SerialConfig, SerialIntake
from tests.unit.fakes import GatedLog

pytestmark = pytest.mark.serial


class Pty:
    """A pseudo-terminal standing in for a USB serial adapter, reachable at a stable symlink."""

    def __init__(self, link: Path) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # what pyserial will set too; keeps bytes written early intact
        tmp = link.with_name(link.name + ".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(self.slave))
        os.replace(tmp, link)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def unplug(self) -> None:
        os.close(self.slave)
        os.close(self.master)


class Collector:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def frame(device: str, seq: int, value: float) -> bytes:
    return encode_frame(umsgpack.packb({"d": device, "b": 1, "s": seq, "up": 1000 + seq, "values": {"t": value}}))


@pytest.fixture
def link(tmp_path: Path) -> Path:
    return tmp_path / "ttyTIDEGATE0"


@pytest.fixture
def started(link: Path) -> Iterator[tuple[Pty, SerialIntake, Collector]]:
    pty = Pty(link)
    collector = Collector()
    intake = SerialIntake(SerialConfig(str(link), read_timeout_s=0.02, reopen_min_s=0.02, reopen_max_s=0.1), collector)
    intake.start()
    try:
        assert intake.connected.wait(5)
        yield pty, intake, collector
    finally:
        intake.stop()
        try:
            pty.unplug()
        except OSError:
            pass


def test_frames_lines_and_bad_frames_become_messages_for_the_port(started, link: Path) -> None:  # type: ignore[no-untyped-def]
    pty, intake, collector = started
    damaged = bytearray(frame("n1", 2, 2.0))
    damaged[5] ^= 0x10
    pty.write(frame("n1", 1, 1.0) + b'{"d": "n2", "ts": 1700000000000, "values": {"t": 3}}\r\n' + bytes(damaged) + frame("n1", 3, 3.0))
    wait_for(lambda: collector.count() == 4)
    routes = (Route(TopicTemplate(str(link)), "sensors"),)
    results = [classify_message(routes, m.source, m.topic, m.payload, m.received_ms) for m in collector.messages]
    assert all(m.source == "serial" and m.topic == str(link) for m in collector.messages)
    assert [type(r) for r in results] == [Accepted, Accepted, Rejected, Accepted]
    assert [r.readings[0].value for r in results if isinstance(r, Accepted)] == [1.0, 3, 3.0]
    letter = results[2].letter  # type: ignore[union-attr]
    assert (letter.reason, letter.raw, letter.topic) == ("bad_crc", bytes(damaged[:-1]), str(link))
    assert intake.metrics.get("tidegate_serial_errors_total", {"port": str(link), "reason": "bad_crc"}) == 1
    assert intake.metrics.get("tidegate_serial_frames_total", {"port": str(link)}) == 3


def test_unplug_and_replug_at_the_same_path_resumes_reading(started, link: Path) -> None:  # type: ignore[no-untyped-def]
    pty, intake, collector = started
    pty.write(frame("n1", 1, 1.0))
    wait_for(lambda: collector.count() == 1)
    pty.write(frame("n1", 2, 2.0)[:9])  # the cable comes out in the middle of a frame
    time.sleep(0.1)
    pty.unplug()
    wait_for(lambda: not intake.connected.is_set())
    wait_for(lambda: collector.count() == 2)
    truncated = collector.messages[1].payload
    assert getattr(truncated, "reason", None) == "truncated"
    time.sleep(0.3)  # the path dangles; the intake keeps retrying with backoff
    replugged = Pty(link)
    try:
        wait_for(intake.connected.is_set)
        replugged.write(frame("n1", 2, 2.0) + frame("n1", 3, 3.0))
        wait_for(lambda: collector.count() == 4)
    finally:
        replugged.unplug()
    payloads = [umsgpack.unpackb(m.payload)["s"] for m in collector.messages if not hasattr(m.payload, "reason")]
    assert payloads == [1, 2, 3]
    assert intake.metrics.get("tidegate_serial_opens_total", {"port": str(link)}) == 2


def test_port_missing_at_start_is_opened_when_it_appears(link: Path) -> None:
    collector = Collector()
    intake = SerialIntake(SerialConfig(str(link), read_timeout_s=0.02, reopen_min_s=0.02, reopen_max_s=0.05), collector)
    intake.start()
    try:
        time.sleep(0.2)
        assert not intake.connected.is_set()
        pty = Pty(link)
        try:
            wait_for(intake.connected.is_set)
            pty.write(frame("late", 1, 1.0))
            wait_for(lambda: collector.count() == 1)
        finally:
            pty.unplug()
    finally:
        intake.stop()


def test_through_the_gateway_good_frames_are_readings_and_bad_ones_dead_letters(link: Path) -> None:
    log = GatedLog()
    log.allow_sync.set()
    metrics = Metrics()
    gateway = Gateway(log, (Route(TopicTemplate(str(link)), "sensors"),), metrics)
    gateway.start()
    pty = Pty(link)
    intake = SerialIntake(SerialConfig(str(link), read_timeout_s=0.02), gateway.submit, metrics)
    intake.start()
    try:
        assert intake.connected.wait(5)
        pty.write(b"\x00boot banner\r\n" + frame("n1", 1, 21.5) + b"\x01\x05xx\x00" + frame("n1", 2, 22.0))
        wait_for(lambda: len(log.records.get("sensors", [])) == 2 and len(log.records.get(DEAD_LETTER_STREAM, [])) == 2)
    finally:
        intake.stop()
        gateway.stop()
        pty.unplug()
    assert [decode_reading(p).value for p in log.records["sensors"]] == [21.5, 22.0]
    reasons = [decode_dead_letter(p).reason for p in log.records[DEAD_LETTER_STREAM]]
    assert reasons == ["text_line", "bad_cobs"]
    assert metrics.get("tidegate_rejected_total", {"reason": "bad_cobs"}) == 1
