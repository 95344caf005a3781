"""The forwarder over the real log on an in-memory file system, an in-memory upstream and a fake clock.

Each test states one rule of bridge/forwarder.py: the cursor moves only after
the upstream acknowledged a batch; a failed send is repeated with the same
reading ids; a batch never spans two time windows; only durable records leave
the gateway. The central side's expander is the paired decoder.
"""

from __future__ import annotations

import pytest

import bridge.forwarder

from bridge.central import Expander, decode_reading_value
from bridge.errors import PartialSend, TransportError
from bridge.forwarder import CURSOR_NAME, Forwarder
from bridge.transports import MemoryTransport
from core.batch import BatchHeader, decode_batch
from core.batching import BatchPolicy
from core.deadletter import DEAD_LETTER_STREAM
from core.log import Log, LogConfig, LogIOError
from core.reading import Reading, encode_reading
from tests.unit.log.memfs import MemFS

T0 = 1_704_067_200_000  # 2024-01-01T00:00Z, on a window boundary
MINUTE = 60_000


class Gateway:
    """A log on a MemFS, and the readings appended to it, with a fake clock in ms."""

    def __init__(self, fs: MemFS | None = None, config: LogConfig | None = None) -> None:
        self.fs = fs or MemFS()
        self.config = config or LogConfig(window_ms=MINUTE, sync_policy="interval")
        self.log = Log(self.fs, self.config)
        self.now = T0

    def reopen(self) -> Gateway:
        """The process died (kill -9: the file system keeps everything) and came back."""
        return Gateway(self.fs, self.config)

    def ingest(self, ts_ms: int, stream: str = "sensors", device: str = "node-1", value: float = 21.5,
               sync: bool = True) -> int:
        reading = Reading(device, "temp_c", ts_ms, value, self.now)
        offset = self.log.append(stream, ts_ms, encode_reading(reading), self.now)
        if sync:
            self.log.sync()
        return offset

    def forwarder(self, transport: object, policy: BatchPolicy | None = None, **kwargs: object) -> Forwarder:
        policy = policy or BatchPolicy(mode="fixed", max_readings=100, linger_ms=0)
        kwargs.setdefault("cursor_interval_s", 0.0)  # store after every pass: each test checks the stored cursor
        return Forwarder(self.log, transport, "gw-1", MINUTE, policy, **kwargs)  # type: ignore[arg-type]


def offsets(sent: list[tuple[bytes, BatchHeader]]) -> list[tuple[int, int]]:
    return [(h.first_offset, h.last_offset) for _, h in sent]


class CursorWatchingTransport(MemoryTransport):
    """Records the stored cursor at the moment each batch is handed over."""

    def __init__(self, log: Log) -> None:
        super().__init__()
        self.log = log
        self.cursor_at_send: list[int] = []

    def send(self, batch: bytes, header: BatchHeader) -> None:
        self.cursor_at_send.append(self.log.load_cursor(CURSOR_NAME, header.stream))
        super().send(batch, header)


def test_the_cursor_moves_only_after_the_upstream_acknowledged() -> None:
    gw = Gateway()
    for i in range(250):
        gw.ingest(T0 + i * 100)
    transport = CursorWatchingTransport(gw.log)
    result = gw.forwarder(transport).forward_once(gw.now)
    assert (result.batches, result.readings) == (3, 250)
    assert offsets(transport.sent) == [(0, 99), (100, 199), (200, 249)]
    assert transport.cursor_at_send == [0, 0, 0]  # stored once the pass's batches were acknowledged, never before
    assert gw.log.load_cursor(CURSOR_NAME, "sensors") == 250


def test_a_refused_batch_is_sent_again_with_the_same_offsets_and_bytes() -> None:
    gw = Gateway()
    for i in range(150):
        gw.ingest(T0 + i * 100)
    transport = MemoryTransport()
    forwarder = gw.forwarder(transport)
    forwarder.forward_once(gw.now)  # 0..99 and 100..149 acknowledged
    for i in range(150, 180):
        gw.ingest(T0 + i * 100)
    transport.fail_next = 3
    for _ in range(3):
        result = forwarder.forward_once(gw.now)
        assert result.failed and result.batches == 0
        assert gw.log.load_cursor(CURSOR_NAME, "sensors") == 150
    result = forwarder.forward_once(gw.now)
    assert not result.failed
    assert offsets(transport.sent) == [(0, 99), (100, 149), (150, 179)]


def test_a_crash_between_acknowledgement_and_cursor_store_resends_the_same_readings() -> None:
    gw = Gateway()
    for i in range(50):
        gw.ingest(T0 + i * 100)
    transport = MemoryTransport()
    gw.fs.fail("rename")  # the cursor file's rename: the last step of store_cursor
    with pytest.raises(LogIOError):
        gw.forwarder(transport).forward_once(gw.now)
    assert offsets(transport.sent) == [(0, 49)]

    again = gw.reopen()
    assert again.log.load_cursor(CURSOR_NAME, "sensors") == 0
    again.forwarder(transport).forward_once(again.now)
    assert offsets(transport.sent) == [(0, 49), (0, 49)]
    assert transport.sent[0][0] == transport.sent[1][0]  # byte for byte: same ids, same readings
    # The central side keeps one copy.
    expander = Expander()
    first = expander.expand(transport.sent[0][0])
    expander.commit()
    assert len(first.records) == 50
    assert expander.expand(transport.sent[1][0]).records == ()


def test_batches_never_span_two_windows() -> None:
    gw = Gateway()
    for i in range(300):  # 1.5 s apart: 40 readings per one-minute window, 8 windows
        gw.ingest(T0 + i * 1500)
    transport = MemoryTransport()
    gw.forwarder(transport).forward_once(gw.now + 10 * MINUTE)
    assert sum(h.count for _, h in transport.sent) == 300
    for data, header in transport.sent:
        batch = decode_batch(data)
        assert all(header.window.contains(e.reading.ts_ms) for e in batch.entries)
    assert [h.window.start_ms for _, h in transport.sent] == [T0 + k * MINUTE for k in range(8)]


def test_late_data_goes_in_a_batch_of_its_own_old_window_in_offset_order() -> None:
    gw = Gateway()
    gw.now = T0 + 3 * MINUTE
    for i in range(5):
        gw.ingest(T0 + 2 * MINUTE + i * 1000)  # window 2: offsets 0..4
    gw.ingest(T0 + 10_000)                     # late, window 0: offset 5
    gw.ingest(T0 + 2 * MINUTE + 9000)          # window 2 again: offset 6
    transport = MemoryTransport()
    gw.forwarder(transport).forward_once(gw.now)
    assert [(h.window.start_ms, h.first_offset, h.last_offset) for _, h in transport.sent] == [
        (T0 + 2 * MINUTE, 0, 4),
        (T0, 5, 5),
        (T0 + 2 * MINUTE, 6, 6),
    ]
    assert decode_batch(transport.sent[1][0]).entries[0].reading.ts_ms == T0 + 10_000


def test_a_run_waits_for_its_linger_then_goes() -> None:
    gw = Gateway()
    for i in range(10):
        gw.ingest(T0 + i * 100)  # received at gw.now == T0
    transport = MemoryTransport()
    forwarder = gw.forwarder(transport, BatchPolicy(mode="fixed", max_readings=100, linger_ms=500))
    assert forwarder.forward_once(T0 + 499).batches == 0
    assert forwarder.forward_once(T0 + 500).batches == 1
    assert offsets(transport.sent) == [(0, 9)]


def test_a_full_batch_goes_at_once() -> None:
    gw = Gateway()
    for i in range(120):
        gw.ingest(T0 + i * 100)
    transport = MemoryTransport()
    gw.forwarder(transport, BatchPolicy(mode="fixed", max_readings=100, linger_ms=60_000)).forward_once(T0)
    assert offsets(transport.sent) == [(0, 99)]  # the other 20 linger


def test_only_durable_records_leave_the_gateway() -> None:
    gw = Gateway()
    for i in range(10):
        gw.ingest(T0 + i * 100, sync=False)
    transport = MemoryTransport()
    forwarder = gw.forwarder(transport)
    assert forwarder.forward_once(T0 + MINUTE).batches == 0
    gw.log.sync()
    assert forwarder.forward_once(T0 + MINUTE).readings == 10


def test_dead_letters_stay_on_the_gateway() -> None:
    gw = Gateway()
    gw.log.append(DEAD_LETTER_STREAM, T0, b"garbage", T0)
    gw.ingest(T0)
    transport = MemoryTransport()
    gw.forwarder(transport).forward_once(T0)
    assert {h.stream for _, h in transport.sent} == {"sensors"}


def test_streams_are_forwarded_independently() -> None:
    gw = Gateway()
    for i in range(30):
        gw.ingest(T0 + i * 100, stream="sensors")
        gw.ingest(T0 + i * 100, stream="alarms")
    transport = MemoryTransport()
    gw.forwarder(transport).forward_once(T0)
    assert sorted((h.stream, h.first_offset, h.last_offset) for _, h in transport.sent) == [
        ("alarms", 0, 29), ("sensors", 0, 29),
    ]


def test_what_the_gateway_sends_the_central_side_reads_back_exactly() -> None:
    gw = Gateway()
    readings = []
    for i in range(200):
        reading = Reading(f"node-{i % 7}", ("temp_c", "rh_pct")[i % 2], T0 + i * 250, round(20 + i * 0.01, 2), T0)
        gw.log.append("sensors", reading.ts_ms, encode_reading(reading), T0)
        readings.append(reading)
    gw.log.sync()
    transport = MemoryTransport()
    gw.forwarder(transport).forward_once(T0 + MINUTE)
    expander = Expander()
    docs = [decode_reading_value(r.value) for data, _ in transport.sent for r in expander.expand(data).records]
    assert [d["offset"] for d in docs] == list(range(200))
    assert [(d["device"], d["metric"], d["ts_ms"], d["value"], d["received_ms"]) for d in docs] == [
        (r.device, r.metric, r.ts_ms, r.value, r.received_ms) for r in readings
    ]


def test_an_upstream_error_mid_stream_keeps_earlier_acknowledged_batches() -> None:
    gw = Gateway()
    for i in range(250):
        gw.ingest(T0 + i * 100)

    class FailsThirdSend(MemoryTransport):
        def send(self, batch: bytes, header: BatchHeader) -> None:
            if len(self.sent) == 2:
                raise TransportError("link dropped")
            super().send(batch, header)

    transport = FailsThirdSend()
    result = gw.forwarder(transport).forward_once(gw.now)
    assert result.failed and result.batches == 2
    assert gw.log.load_cursor(CURSOR_NAME, "sensors") == 200


# -- the link, measured -------------------------------------------------------------


class FakeLink(MemoryTransport):
    """An upstream behind a link: each send advances a fake monotonic clock by rtt + bytes / rate."""

    def __init__(self, rtt_ms: float = 50.0, bytes_per_s: float = 100_000.0) -> None:
        super().__init__()
        self.now_s = 1000.0
        self.rtt_ms = rtt_ms
        self.bytes_per_s = bytes_per_s

    def clock(self) -> float:
        return self.now_s

    def send(self, batch: bytes, header: BatchHeader) -> None:
        self.now_s += self.rtt_ms / 1000 + len(batch) / self.bytes_per_s
        super().send(batch, header)


def test_each_send_is_timed_and_teaches_the_controller_the_link() -> None:
    gw = Gateway()
    link = FakeLink(rtt_ms=80, bytes_per_s=20_000)
    forwarder = gw.forwarder(link, BatchPolicy(mode="fixed", max_readings=2000, linger_ms=0), clock=link.clock)
    gw.ingest(T0)
    forwarder.forward_once(T0)  # one reading: the round trip
    for i in range(1, 3000):
        gw.ingest(T0 + i * 10, device=f"node-{i % 97}", value=(i * 7919 % 1000) / 10)
    forwarder.forward_once(T0)  # two big batches: the throughput
    c = forwarder.controller
    assert c.rtt_ms == pytest.approx(80, rel=0.1)
    assert c.throughput * 1000 == pytest.approx(20_000, rel=0.1)


# -- store and forward ----------------------------------------------------------


def test_priority_streams_drain_first() -> None:
    gw = Gateway()
    for i in range(300):
        gw.ingest(T0 + i * 100, stream="sensors")
        gw.ingest(T0 + i * 100, stream="alarms")
    transport = MemoryTransport()
    gw.forwarder(transport, priorities={"alarms": 10}).forward_once(T0)
    assert [h.stream for _, h in transport.sent] == ["alarms"] * 3 + ["sensors"] * 3


def test_streams_of_equal_priority_take_turns() -> None:
    gw = Gateway()
    for i in range(300):
        for stream in ("a", "b", "c"):
            gw.ingest(T0 + i * 100, stream=stream)
    transport = MemoryTransport()
    gw.forwarder(transport).forward_once(T0)
    assert [h.stream for _, h in transport.sent] == ["a", "b", "c"] * 3


def test_a_backlog_drains_in_offset_order_across_windows() -> None:
    gw = Gateway()
    for i in range(600):
        gw.ingest(T0 + i * 500)  # 5 minutes: five windows
    transport = MemoryTransport()
    gw.forwarder(transport).forward_once(T0)
    firsts = [h.first_offset for _, h in transport.sent]
    assert firsts == sorted(firsts)
    assert sum(h.count for _, h in transport.sent) == 600


def test_one_call_sends_at_most_max_batches() -> None:
    gw = Gateway()
    for i in range(1000):
        gw.ingest(T0 + i * 10)
    transport = MemoryTransport()
    forwarder = gw.forwarder(transport, max_batches=4)
    assert forwarder.forward_once(T0).batches == 4
    assert forwarder.forward_once(T0).batches == 4
    assert forwarder.backlog("sensors") == 200


def test_the_bandwidth_cap_holds_batches_back_until_the_bucket_refills() -> None:
    gw = Gateway()
    for i in range(400):
        gw.ingest(T0 + i * 10, device=f"node-{i % 40}", value=(i * 7919 % 1000) / 10)
    link = FakeLink(rtt_ms=1, bytes_per_s=10**9)
    policy = BatchPolicy(mode="fixed", max_readings=100, linger_ms=0, max_bytes_per_s=1000)
    forwarder = gw.forwarder(link, policy, clock=link.clock)
    forwarder.bucket.try_take(64 * 1024, link.now_s * 1000)  # start with an empty bucket
    result = forwarder.forward_once(T0)
    assert result.batches == 0 and result.wait_ms > 0
    sent_bytes = 0
    for _ in range(200):  # 200 s of fake time, one call a second
        link.now_s += 1.0
        sent_bytes += forwarder.forward_once(T0).bytes
    assert forwarder.backlog("sensors") == 0
    assert sent_bytes <= 1000 * 200 + max(len(b) for b, _ in link.sent)


def _sent_offsets(transport: MemoryTransport) -> list[int]:
    return [e.offset for data, _ in transport.sent for e in decode_batch(data).entries]


def test_a_fresh_lane_carries_new_readings_while_the_backlog_drains() -> None:
    gw = Gateway()
    for i in range(2000):  # an outage's backlog
        gw.ingest(T0 + i * 10)
    transport = MemoryTransport()
    policy = BatchPolicy(mode="fixed", max_readings=100, linger_ms=0, fresh_share=0.5)
    forwarder = gw.forwarder(transport, policy, max_batches=2)
    forwarder.forward_once(T0)
    assert forwarder.lane("sensors") == (2000, 2000)
    for i in range(2000, 2010):  # fresh readings arrive
        gw.ingest(T0 + i * 10)
    forwarder.forward_once(T0)
    assert (2000, 2009) in [(h.first_offset, h.last_offset) for _, h in transport.sent]  # long before the backlog is done
    while forwarder.forward_once(T0).batches:
        pass
    assert sorted(_sent_offsets(transport)) == list(range(2010))  # each once
    assert forwarder.lane("sensors") is None  # merged
    assert gw.log.load_cursor(CURSOR_NAME, "sensors") == 2010


def test_a_fresh_lane_survives_a_crash_and_the_central_side_applies_everything_once() -> None:
    gw = Gateway()
    for i in range(1000):
        gw.ingest(T0 + i * 10)
    transport = MemoryTransport()
    policy = BatchPolicy(mode="fixed", max_readings=100, linger_ms=0, fresh_share=0.5)
    forwarder = gw.forwarder(transport, policy, max_batches=3)
    forwarder.forward_once(T0)
    for i in range(1000, 1050):
        gw.ingest(T0 + i * 10)
    forwarder.forward_once(T0)

    again = gw.reopen()  # kill -9: the cursors are as stored
    for i in range(1050, 1100):
        again.ingest(T0 + i * 10)
    forwarder = again.forwarder(transport, policy, max_batches=3)
    assert forwarder.lane("sensors") is not None
    while forwarder.forward_once(T0).batches:
        pass
    assert set(_sent_offsets(transport)) == set(range(1100))
    expander = Expander()
    applied = [decode_reading_value(r.value)["offset"] for data, _ in transport.sent for r in expander.expand(data).records]
    assert sorted(applied) == list(range(1100))


def test_without_a_fresh_share_there_is_no_lane_and_order_is_strict() -> None:
    gw = Gateway()
    for i in range(2000):
        gw.ingest(T0 + i * 10)
    transport = MemoryTransport()
    forwarder = gw.forwarder(transport, max_batches=2)
    forwarder.forward_once(T0)
    for i in range(2000, 2010):
        gw.ingest(T0 + i * 10)
    while forwarder.forward_once(T0).batches:
        pass
    assert forwarder.lane("sensors") is None
    assert _sent_offsets(transport) == list(range(2010))


def test_a_clock_stepped_back_does_not_hold_a_lingering_run() -> None:
    gw = Gateway()
    gw.now = T0 + 3 * 86_400_000  # the gateway's clock is three days ahead
    for i in range(10):
        gw.ingest(T0 + i * 100)
    transport = MemoryTransport()
    forwarder = gw.forwarder(transport, BatchPolicy(mode="fixed", max_readings=100, linger_ms=500))
    assert forwarder.forward_once(gw.now).batches == 0  # lingering
    assert forwarder.forward_once(T0 + 1000).batches == 1  # the clock set right: the run goes now


# -- trains -----------------------------------------------------------------------


class TrainLink(FakeLink):
    """An upstream that takes a whole train in one round trip, as Kafka does.

    ``take`` limits how many batches of the next train it acknowledges.
    """

    def __init__(self, rtt_ms: float = 50.0, bytes_per_s: float = 100_000.0) -> None:
        super().__init__(rtt_ms, bytes_per_s)
        self.trains: list[int] = []
        self.take: int | None = None

    def send_many(self, batches: list[tuple[bytes, BatchHeader]]) -> None:
        self.now_s += self.rtt_ms / 1000 + sum(len(b) for b, _ in batches) / self.bytes_per_s
        self.trains.append(len(batches))
        take, self.take = self.take, None
        for batch, header in batches[: take if take is not None else len(batches)]:
            MemoryTransport.send(self, batch, header)
        if take is not None and take < len(batches):
            raise PartialSend("the link went down mid-train", acknowledged=take)


def test_a_backlog_of_many_windows_goes_as_one_train_in_one_round_trip() -> None:
    gw = Gateway()
    gw.now = T0 + 30 * MINUTE  # the uplink was down for half an hour
    for minute in range(30):  # 30 one-minute windows of 3 readings: a sparse backlog
        for i in range(3):
            gw.ingest(T0 + minute * MINUTE + i * 1000)
    link = TrainLink(rtt_ms=500)
    forwarder = gw.forwarder(link, clock=link.clock)
    result = forwarder.forward_once(gw.now)
    assert link.trains == [30]
    assert (result.batches, result.readings) == (30, 90)
    assert offsets(link.sent) == [(3 * m, 3 * m + 2) for m in range(30)]
    assert gw.log.load_cursor(CURSOR_NAME, "sensors") == 90
    assert link.now_s - 1000.0 < 0.6  # one round trip, not thirty


def test_a_train_cut_short_moves_the_cursor_past_what_was_taken_and_resends_the_rest() -> None:
    gw = Gateway()
    for minute in range(10):
        for i in range(3):
            gw.ingest(T0 + minute * MINUTE + i * 1000)
    link = TrainLink()
    link.take = 4
    forwarder = gw.forwarder(link, clock=link.clock)
    assert forwarder.forward_once(gw.now + 10 * MINUTE).failed
    assert gw.log.load_cursor(CURSOR_NAME, "sensors") == 12
    forwarder.forward_once(gw.now + 10 * MINUTE)
    assert link.trains == [10, 6]
    assert offsets(link.sent) == [(3 * m, 3 * m + 2) for m in range(10)]  # each once, in order
    assert gw.log.load_cursor(CURSOR_NAME, "sensors") == 30


def test_a_train_holds_every_streams_due_batches_in_priority_order() -> None:
    gw = Gateway()
    for minute in range(3):
        gw.ingest(T0 + minute * MINUTE, stream="sensors")
        gw.ingest(T0 + minute * MINUTE, stream="alarms")
    link = TrainLink()
    gw.forwarder(link, priorities={"alarms": 10}, clock=link.clock).forward_once(gw.now + 3 * MINUTE)
    assert link.trains == [6]
    assert [h.stream for _, h in link.sent] == ["alarms"] * 3 + ["sensors"] * 3


def test_a_train_is_cut_at_its_byte_size(monkeypatch: pytest.MonkeyPatch) -> None:
    gw = Gateway()
    gw.now = T0 + 40 * MINUTE
    for minute in range(40):
        for i in range(100):
            gw.ingest(T0 + minute * MINUTE + i * 500, device=f"n{i}", value=(i * 7919 + minute) % 1000 / 7)
    link = TrainLink()
    forwarder = gw.forwarder(link, clock=link.clock, max_batches=1000)
    monkeypatch.setattr(bridge.forwarder, "TRAIN_BYTES", 20_000)
    forwarder.forward_once(gw.now)
    assert len(link.trains) > 1 and sum(link.trains) == 40
    assert all(n < 40 for n in link.trains)
    assert gw.log.load_cursor(CURSOR_NAME, "sensors") == 4000


def test_cursors_are_stored_at_most_once_an_interval_and_a_crash_between_only_resends() -> None:
    gw = Gateway()
    link = FakeLink(rtt_ms=10)
    forwarder = gw.forwarder(link, clock=link.clock, cursor_interval_s=1.0)
    stores = []
    store = gw.log.store_cursor
    gw.log.store_cursor = lambda name, stream, offset: (stores.append(offset), store(name, stream, offset))[1]  # type: ignore[method-assign]
    for second in range(5):  # a reading every 0.2 s, a pass after each: 25 batches
        for tick in range(5):
            gw.ingest(T0 + second * 1000 + tick * 200)
            forwarder.forward_once(gw.now)
            link.now_s += 0.2
    assert len(link.sent) == 25
    assert 4 <= len(stores) <= 6  # about one a second, not 25
    assert stores == sorted(stores)
    stored = gw.log.load_cursor(CURSOR_NAME, "sensors")
    assert stored <= 25
    # kill -9 here: a new forwarder starts from the stored cursor and resends what came after it, with the same ids.
    again = gw.reopen()
    resent = MemoryTransport()
    again.forwarder(resent).forward_once(again.now)
    assert offsets(resent.sent)[0][0] == stored and offsets(resent.sent)[-1][1] == 24
    forwarder.store_cursors()
    assert gw.log.load_cursor(CURSOR_NAME, "sensors") == 25
