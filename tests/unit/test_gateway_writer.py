"""The gateway writer: no message is acknowledged before the log holds it durably."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from core.deadletter import DEAD_LETTER_STREAM, decode_dead_letter
from core.reading import decode_reading
from core.topics import Route, TopicTemplate
from edge.gateway import Gateway, Message, _Inbox
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


def test_a_group_of_messages_is_decided_and_acknowledged_as_one_by_one() -> None:
    """Messages queued together are appended in runs; a refused reading, garbage and a repeat in the middle change nothing."""
    from core.log import Log, LogConfig
    from tests.unit.log.memfs import MemFS

    now_ms = 1_767_225_600_000
    early = now_ms + 86_400_000
    messages = [
        ("a", b'{"ts": %d, "value": 1}' % now_ms),
        ("b", b'[{"ts": %d, "value": 2}, {"ts": %d, "value": 9}]' % (now_ms + 1, early)),  # one reading a day ahead
        ("c", b'{"ts": %d, "value": 3}' % (now_ms + 2)),
        ("garbage", b"{not json"),
        ("again", b'{"ts": %d, "value": 1}' % now_ms),  # a copy of a: a duplicate
        ("d", b'[{"ts": %d, "value": 4}, {"ts": %d, "value": 5}]' % (now_ms + 3, now_ms + 4)),
        ("e", b'{"ts": %d, "value": 6}' % (now_ms + 5)),
    ]
    outcomes = []
    for gather_s in (0.0, 0.002):
        real_log = Log(MemFS(), LogConfig(sync_policy="always"))
        acked: list[str] = []
        metrics = Metrics()
        gateway = Gateway(real_log, ROUTES, metrics, clock=lambda: now_ms / 1000, gather_s=gather_s)
        if gather_s:
            # queued before the writer starts: the writer takes all seven as one group
            for name, payload in messages:
                gateway.submit(Message("mqtt", "sensors/n1/t", payload, now_ms, lambda name=name: acked.append(name)))
            gateway.start()
        else:
            gateway.start()
            for name, payload in messages:  # one at a time
                gateway.submit(Message("mqtt", "sensors/n1/t", payload, now_ms, lambda name=name: acked.append(name)))
                wait_for(lambda name=name: name in acked)
        gateway.stop()
        assert sorted(acked) == sorted(name for name, _ in messages)
        outcomes.append((
            [(r.offset, decode_reading(r.payload).value) for r in real_log.read("sensors", 0)],
            [decode_dead_letter(r.payload).reason for r in real_log.read(DEAD_LETTER_STREAM, 0)],
            metrics.total("tidegate_readings_in_total"), metrics.total("tidegate_duplicates_total"),
            metrics.total("tidegate_acks_total"),
        ))
    assert outcomes[0] == outcomes[1]
    assert outcomes[1] == ([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)], ["early", "bad_json"], 6, 1, 7)


def test_a_big_group_is_appended_in_runs_of_bounded_size() -> None:
    from core.log import Log, LogConfig
    from edge.gateway import _RUN_RECORDS
    from tests.unit.log.memfs import MemFS

    class CountingLog:
        def __init__(self) -> None:
            self.log = Log(MemFS(), LogConfig(sync_policy="always"))
            self.calls: list[int] = []

        def append_many(self, stream, records, now_ms):  # type: ignore[no-untyped-def]
            self.calls.append(len(records))
            return self.log.append_many(stream, records, now_ms)

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self.log, name)

    now_ms = 1_767_225_600_000
    counting = CountingLog()
    acked: list[int] = []
    gateway = Gateway(counting, ROUTES, Metrics(), clock=lambda: now_ms / 1000, queue_size=200)  # type: ignore[arg-type]
    for i in range(150):  # queued before the writer starts: one group of 7,500 readings
        pack = b"[" + b",".join(b'{"ts": %d, "value": %d}' % (now_ms - 10_000 + i * 50 + k, k) for k in range(50)) + b"]"
        gateway.submit(Message("mqtt", "sensors/n1/t", pack, now_ms, lambda i=i: acked.append(i)))
    gateway.start()
    gateway.stop()
    assert sorted(acked) == list(range(150))
    assert sum(counting.calls) == 7_500 and len(counting.calls) > 1
    assert max(counting.calls) < _RUN_RECORDS + 50  # a run stops once it reaches the bound
    assert [r.offset for r in counting.log.read("sensors", 0, 10_000)] == list(range(7_500))


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


def test_a_full_quota_pauses_acknowledgements_and_intake_resumes_when_space_returns(tmp_path: Path) -> None:
    from core.log import LogConfig
    from edge.logstore import open_log

    hour = 3_600_000
    now_ms = 1_767_225_600_000 + 24 * hour
    # The locked SharedLog: the stand-in bridge thread below stores cursors while the writer appends.
    real_log = open_log(tmp_path / "log", LogConfig(sync_policy="interval", quota_bytes=1 << 20, quota_policy="block"),
                        clock=lambda: now_ms / 1000)
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
        real_log.close()
    assert sorted(acked) == list(range(i + 1))


# --------------------------------------------------------------------------- floods of garbage


def _flood_gateway(log_sink: GatedLog, metrics: Metrics, mono: list[float], **policy: int | float) -> Gateway:
    from core.deadletter import DeadLetterPolicy

    defaults: dict[str, int | float] = {"per_topic_rate": 1, "per_topic_burst": 5, "total_rate": 5, "total_burst": 10}
    return Gateway(log_sink, ROUTES, metrics, clock=lambda: 1000.0, monotonic=lambda: mono[0],
                   dead_letters=DeadLetterPolicy(**{**defaults, **policy}))  # type: ignore[arg-type]


def test_a_flood_is_counted_whole_stored_within_its_budget_and_good_readings_all_get_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = GatedLog()
    fake.allow_sync.set()
    metrics = Metrics()
    mono = [0.0]
    acked: list[str] = []
    gateway = _flood_gateway(fake, metrics, mono, summary_max_letters=100)
    caplog.set_level(logging.INFO, logger="tidegate.gateway")
    gateway.start()
    try:
        for i in range(1000):
            gateway.submit(Message("mqtt", "sensors/bad/t", b"{ garbage %d" % i, 1000, lambda i=i: acked.append(f"bad{i}")))
            if i % 10 == 0:
                gateway.submit(Message("mqtt", "sensors/n1/t", b'{"ts": %d, "value": %d}' % (i, i), 1000,
                                       lambda i=i: acked.append(f"good{i}")))
        wait_for(lambda: len([a for a in acked if a.startswith("good")]) == 100)
    finally:
        gateway.stop()  # writes the last flood summary, acknowledges what it covers
    assert len(acked) == 1100
    assert sorted(decode_reading(p).value for p in fake.records["sensors"]) == list(range(0, 1000, 10))
    letters = [decode_dead_letter(p) for p in fake.records[DEAD_LETTER_STREAM]]
    stored = [letter for letter in letters if letter.reason != "flood"]
    assert len(stored) == 5  # the topic's burst; the clock did not move
    assert sum(sum(letter.rejected().values()) for letter in letters) == 1000
    assert metrics.get("tidegate_rejected_total", {"reason": "bad_json"}) == 1000
    assert metrics.get("tidegate_dead_letters_summarised_total", {"reason": "bad_json"}) == 995
    assert len([r for r in caplog.records if r.name == "tidegate.gateway"]) <= 2


def test_a_message_in_a_flood_summary_is_acknowledged_only_once_the_summary_is_durable() -> None:
    fake = GatedLog()
    fake.allow_sync.set()
    mono = [0.0]
    acked: list[int] = []
    gateway = _flood_gateway(fake, Metrics(), mono, per_topic_burst=1, summary_interval_ms=5_000)
    gateway.start()
    try:
        for i in range(3):
            gateway.submit(Message("mqtt", "sensors/bad/t", b"{", 1000, lambda i=i: acked.append(i)))
        wait_for(lambda: acked == [0])
        time.sleep(0.2)
        assert acked == [0] and DEAD_LETTER_STREAM in fake.records and len(fake.records[DEAD_LETTER_STREAM]) == 1
        mono[0] = 5.0  # the summary interval is over
        wait_for(lambda: sorted(acked) == [0, 1, 2])
    finally:
        gateway.stop()
    summary = decode_dead_letter(fake.records[DEAD_LETTER_STREAM][-1])
    assert summary.reason == "flood" and summary.rejected() == {"bad_json": 2}


def test_a_dead_letter_the_log_refuses_is_counted_and_never_holds_up_readings() -> None:
    from core.log import LogFull

    class DeadLetterQuotaFull(GatedLog):
        def append(self, stream: str, ts_ms: int, payload: bytes, now_ms: int) -> int:
            if stream == DEAD_LETTER_STREAM:
                raise LogFull("log quota reached", reason="log_full")
            return super().append(stream, ts_ms, payload, now_ms)

    fake = DeadLetterQuotaFull()
    fake.allow_sync.set()
    metrics = Metrics()
    acked: list[str] = []
    gateway = Gateway(fake, ROUTES, metrics, clock=lambda: 1.0)
    gateway.start()
    try:
        gateway.submit(Message("mqtt", "nowhere", b"{}", 1000, lambda: acked.append("bad")))
        gateway.submit(Message("mqtt", "sensors/n1/t", b'{"ts": 1, "value": 1}', 1000, lambda: acked.append("good")))
        wait_for(lambda: len(acked) == 2)
    finally:
        gateway.stop()
    assert metrics.get("tidegate_dead_letters_dropped_total", {"reason": "no_route"}) == 1
    assert metrics.get("tidegate_intake_blocked") == 0


@pytest.mark.slow
def test_at_the_quota_dead_letters_make_room_for_readings() -> None:
    from core.deadletter import DeadLetterPolicy, with_dead_letter_quota
    from core.log import Log, LogConfig
    from tests.unit.log.memfs import MemFS

    now_ms = 1_767_225_600_000
    config = with_dead_letter_quota(LogConfig(sync_policy="always", quota_bytes=1 << 20, quota_policy="block"))
    real_log = Log(MemFS(), config)  # only the writer thread touches it until it stops
    metrics = Metrics()
    acked: list[int] = []
    # An unlimited budget, so the garbage alone would fill the quota.
    gateway = Gateway(real_log, ROUTES, metrics, clock=lambda: now_ms / 1000,
                      dead_letters=DeadLetterPolicy(per_topic_rate=1e9, per_topic_burst=10**9, total_rate=1e9,
                                                    total_burst=10**9))
    gateway.start()
    try:
        for i in range(2500):  # about 1.5 MiB of dead letters, more than the quota
            gateway.submit(Message("mqtt", "nowhere", b"x" * 600, now_ms, lambda: None))
        for i in range(100):
            gateway.submit(Message("mqtt", "sensors/n1/t", b'{"ts": %d, "value": %d}' % (now_ms + i, i), now_ms,
                                   lambda i=i: acked.append(i)))
        wait_for(lambda: len(acked) == 100, timeout=30)
    finally:
        gateway.stop()
    stats = real_log.stats()
    real_log.close()
    assert metrics.get("tidegate_intake_blocked") == 0
    assert stats["streams"][DEAD_LETTER_STREAM]["dropped_by_quota"] > 0  # type: ignore[index]


def inbox_message(i: int) -> Message:
    return Message("mqtt", "sensors/n1/t", b"%d" % i, 0, lambda: None)


def test_the_inbox_hands_over_everything_waiting_in_order_and_a_put_wakes_a_sleeping_take() -> None:
    inbox = _Inbox(10)
    stop = threading.Event()
    for i in range(3):
        assert inbox.put(inbox_message(i), stop)
    assert [m.payload for m in inbox.take(1.0)] == [b"0", b"1", b"2"]
    start = time.monotonic()
    assert inbox.take(0.05) == []  # nothing came: an empty hand after the timeout
    assert time.monotonic() - start >= 0.04
    timer = threading.Timer(0.05, lambda: inbox.put(inbox_message(3), stop))
    timer.start()
    start = time.monotonic()
    assert [m.payload for m in inbox.take(5.0)] == [b"3"]
    assert time.monotonic() - start < 2.0  # woken by the put, not by the timeout
    timer.join()


def test_a_full_inbox_makes_put_wait_for_the_writer_and_stop_gives_up_the_wait() -> None:
    inbox = _Inbox(2)
    stop = threading.Event()
    inbox.put(inbox_message(0), stop)
    inbox.put(inbox_message(1), stop)
    results: list[bool] = []
    waiting = threading.Thread(target=lambda: results.append(inbox.put(inbox_message(2), stop)))
    waiting.start()
    time.sleep(0.1)
    assert results == [] and len(inbox) == 2  # the backpressure: the transport's thread waits
    assert len(inbox.take(1.0)) == 2
    waiting.join(5)
    assert results == [True] and [m.payload for m in inbox.take(1.0)] == [b"2"]
    inbox.put(inbox_message(3), stop)
    inbox.put(inbox_message(4), stop)
    waiting = threading.Thread(target=lambda: results.append(inbox.put(inbox_message(5), stop)))
    waiting.start()
    stop.set()  # the gateway stops: the message is not queued, and never acknowledged
    waiting.join(5)
    assert results == [True, False] and len(inbox) == 2
