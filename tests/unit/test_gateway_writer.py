"""The gateway writer: no message is acknowledged before the log holds it durably."""

from __future__ import annotations

import threading
import time

from core.deadletter import DEAD_LETTER_STREAM, decode_dead_letter
from core.reading import decode_reading
from core.topics import Route, TopicTemplate
from edge.gateway import Gateway, Message
from edge.metrics import Metrics
from tests.unit.fakes import GatedLog

ROUTES = (Route(TopicTemplate("sensors/{device}/{metric}"), "sensors"),)


def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_acks_wait_for_sync_and_many_messages_share_one_sync() -> None:
    fake = GatedLog()
    acked: list[int] = []
    gateway = Gateway(fake, ROUTES, Metrics(), clock=lambda: 1000.0)
    gateway.start()
    try:
        for i in range(50):
            gateway.submit(Message("mqtt", "sensors/n1/t", b'{"ts": %d, "value": %d}' % (i, i), 1000, lambda i=i: acked.append(i)))
        wait_for(lambda: len(fake.records.get("sensors", [])) == 50)
        time.sleep(0.05)
        assert acked == []  # written, not yet durable: nothing acknowledged
        fake.allow_sync.set()
        wait_for(lambda: len(acked) == 50)
        assert sorted(acked) == list(range(50))
        assert fake.syncs <= 5
    finally:
        gateway.stop()
    assert [decode_reading(p).value for p in fake.records["sensors"]] == list(range(50))


def test_garbage_is_kept_as_a_dead_letter_and_acknowledged_once_durable() -> None:
    fake = GatedLog()
    fake.allow_sync.set()
    acked: list[str] = []
    metrics = Metrics()
    gateway = Gateway(fake, ROUTES, metrics, clock=lambda: 2.0)
    gateway.start()
    try:
        gateway.submit(Message("mqtt", "sensors/n1/t", b"\xc1garbage", 2000, lambda: acked.append("bad")))
        gateway.submit(Message("mqtt", "nowhere", b"{}", 2000, lambda: acked.append("unrouted")))
        wait_for(lambda: len(acked) == 2)
    finally:
        gateway.stop()
    letters = [decode_dead_letter(p) for p in fake.records[DEAD_LETTER_STREAM]]
    assert [(l.topic, l.raw, l.received_ms) for l in letters] == [("sensors/n1/t", b"\xc1garbage", 2000), ("nowhere", b"{}", 2000)]
    assert metrics.get("tidegate_rejected_total", {"reason": "no_route"}) == 1
    assert metrics.total("tidegate_rejected_total") == 2
    assert "sensors" not in fake.records


def test_a_failing_log_stops_the_writer_without_acknowledging() -> None:
    class BrokenLog(GatedLog):
        def append(self, stream: str, ts_ms: int, payload: bytes, now_ms: int) -> int:
            raise OSError(5, "Input/output error")

    acked: list[int] = []
    gateway = Gateway(BrokenLog(), ROUTES, Metrics(), clock=lambda: 1.0)
    gateway.start()
    gateway.submit(Message("mqtt", "sensors/n1/t", b'{"value": 1}', 1000, lambda: acked.append(1)))
    assert gateway.failed.wait(5)
    assert isinstance(gateway.failure, OSError)
    assert acked == []
    gateway.stop()


def test_a_reading_the_time_rule_refuses_becomes_a_dead_letter_and_the_writer_goes_on() -> None:
    from core.log import Log, LogConfig
    from tests.unit.log.memfs import MemFS

    now_ms = 1_767_225_600_000
    real_log = Log(MemFS(), LogConfig(sync_policy="always"))
    acked: list[str] = []
    metrics = Metrics()
    gateway = Gateway(real_log, ROUTES, metrics, clock=lambda: now_ms / 1000)
    gateway.start()
    try:
        # one good reading and one a day ahead of the gateway, in one pack
        pack = b'[{"ts": %d, "value": 1}, {"ts": %d, "value": 2}]' % (now_ms, now_ms + 86_400_000)
        gateway.submit(Message("mqtt", "sensors/n1/t", pack, now_ms, lambda: acked.append("pack")))
        gateway.submit(Message("mqtt", "sensors/n1/t", b'{"ts": %d, "value": 3}' % now_ms, now_ms, lambda: acked.append("next")))
        wait_for(lambda: len(acked) == 2)
    finally:
        gateway.stop()
    assert not gateway.failed.is_set()
    assert [decode_reading(r.payload).value for r in real_log.read("sensors", 0)] == [1, 3]
    (letter,) = [decode_dead_letter(r.payload) for r in real_log.read(DEAD_LETTER_STREAM, 0)]
    assert letter.reason == "early" and letter.raw == pack and "n1/t" in letter.message
    assert metrics.get("tidegate_rejected_total", {"reason": "early"}) == 1


def test_after_a_restart_a_redelivered_message_is_not_written_twice() -> None:
    from core.log import Log, LogConfig
    from tests.unit.log.memfs import MemFS

    fs = MemFS()
    now_ms = 1_767_225_600_000
    numbered = b'{"d": "n1", "s": 7, "ts": %d, "values": {"t": 1.5}}' % now_ms  # firmware-style, seq, no boot
    plain = b'{"ts": %d, "value": 2.5}' % now_ms  # no seq, device time
    no_time = b'{"value": 3.5}'  # neither: cannot be told from a new one

    def run(messages: list[bytes]) -> list[str]:
        acked: list[str] = []
        gateway = Gateway(Log(fs, LogConfig(sync_policy="always")), ROUTES, Metrics(), clock=lambda: now_ms / 1000)
        gateway.start()
        try:
            for i, payload in enumerate(messages):
                gateway.submit(Message("mqtt", "sensors/n1/t", payload, now_ms, lambda i=i: acked.append(i)))
            wait_for(lambda: len(acked) == len(messages))
        finally:
            gateway.stop()
        return acked

    run([numbered, plain, no_time])
    # The gateway "crashed" before acknowledging; the broker delivers all three again.
    run([numbered, plain, no_time])
    values = [decode_reading(r.payload).value for r in Log(fs, LogConfig()).read("sensors", 0)]
    assert sorted(values) == [1.5, 2.5, 3.5, 3.5]


def test_an_unsynchronised_gateway_clock_does_not_judge_readings_early() -> None:
    from core.log import Log, LogConfig
    from tests.unit.log.memfs import MemFS

    device_ms = 1_767_225_600_000  # 2026
    synced = [False]
    real_log = Log(MemFS(), LogConfig(sync_policy="always"))
    acked: list[int] = []
    # The gateway booted without a real-time clock: it thinks it is 1970.
    gateway = Gateway(real_log, ROUTES, Metrics(), clock=lambda: 60.0, clock_probe=lambda: (60_000, 60_000, synced[0]))
    gateway.start()
    try:
        gateway.submit(Message("mqtt", "sensors/n1/t", b'{"ts": %d, "value": 1}' % device_ms, 60_000, lambda: acked.append(1)))
        wait_for(lambda: len(acked) == 1)
        synced[0] = True  # now the (still 1970) clock claims to be right: the early rule applies again
        gateway.submit(Message("mqtt", "sensors/n1/t", b'{"ts": %d, "value": 2}' % device_ms, 60_000, lambda: acked.append(2)))
        wait_for(lambda: len(acked) == 2)
    finally:
        gateway.stop()
    assert [decode_reading(r.payload).value for r in real_log.read("sensors", 0)] == [1]
    assert [decode_dead_letter(r.payload).reason for r in real_log.read(DEAD_LETTER_STREAM, 0)] == ["early"]


def test_a_full_quota_pauses_acknowledgements_and_intake_resumes_when_space_returns() -> None:
    from core.log import Log, LogConfig
    from tests.unit.log.memfs import MemFS

    hour = 3_600_000
    now_ms = 1_767_225_600_000 + 24 * hour
    real_log = Log(MemFS(), LogConfig(sync_policy="interval", quota_bytes=1 << 20, quota_policy="block"))
    acked: list[int] = []
    metrics = Metrics()
    gateway = Gateway(real_log, ROUTES, metrics, clock=lambda: now_ms / 1000, retry_s=0.02)
    gateway.start()
    filler = "x" * 200
    try:
        # Packs of 50 readings spread over the past twenty hours, until the 1 MiB quota is reached.
        for i in range(400):
            ts = now_ms - (20 - i // 20) * hour + (i % 20) * 50  # every reading a time of its own
            pack = "[" + ",".join('{"ts": %d, "value": "%s"}' % (ts + k, filler) for k in range(50)) + "]"
            gateway.submit(Message("mqtt", "sensors/n1/t", pack.encode(), now_ms, lambda i=i: acked.append(i)))
            if metrics.get("tidegate_intake_blocked") == 1:
                break
        wait_for(lambda: metrics.get("tidegate_intake_blocked") == 1)
        # Messages written before the quota was hit are still acknowledged as
        # they become durable; then acknowledgements stop while intake is blocked.
        stalled = -1
        while len(acked) != stalled:
            stalled = len(acked)
            time.sleep(0.3)
        assert metrics.get("tidegate_intake_blocked") == 1
        assert 0 < stalled < i + 1
        # The uplink returns: a stand-in bridge keeps forwarding what is written,
        # and forwarded windows may be deleted to make room.
        forwarding = threading.Event()

        def forward() -> None:
            while not forwarding.wait(0.02):
                real_log.store_cursor("bridge", "sensors", real_log.durable_offset("sensors"))

        bridge = threading.Thread(target=forward)
        bridge.start()
        try:
            wait_for(lambda: metrics.get("tidegate_intake_blocked") == 0)
            wait_for(lambda: len(acked) == i + 1, timeout=20)
        finally:
            forwarding.set()
            bridge.join()
    finally:
        gateway.stop()
    assert sorted(acked) == list(range(i + 1))
