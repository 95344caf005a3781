"""The expander's pure part: applied ranges, dedup of resent readings, pending state."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.batch import Entry, encode_batch
from core.errors import BatchFormatError
from core.reading import TIME_MAPPED, Reading
from core.timewindow import window_of
from bridge.central import (
    FORMAT_MSGPACK,
    AppliedRanges,
    Expander,
    StateError,
    decode_reading_value,
)

T0 = 1704067200000
WINDOW = window_of(T0)


def batch(first: int, last: int, gateway: str = "gw-1", stream: str = "sensors", devices: int = 2) -> bytes:
    entries = [
        Entry(o, Reading(f"node-{o % devices}", "temp_c", T0 + o * 1000, 20.0 + o / 10, T0 + o * 1000 + 5))
        for o in range(first, last + 1)
    ]
    return encode_batch(gateway, stream, WINDOW, entries)


def offsets_of(expander: Expander, data: bytes) -> list[int]:
    return [decode_reading_value(r.value)["offset"] for r in expander.expand(data).records]  # type: ignore[misc]


def test_ranges_merge_touching_and_overlapping_runs() -> None:
    ranges = AppliedRanges()
    ranges.add(10, 19)
    ranges.add(30, 39)
    assert ranges.ranges == [(10, 20), (30, 40)]
    ranges.add(20, 29)
    assert ranges.ranges == [(10, 40)]
    ranges.add(0, 4)
    ranges.add(3, 12)
    assert ranges.ranges == [(0, 40)]


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 30)), max_size=30))
def test_ranges_contain_exactly_the_offsets_added(runs: list[tuple[int, int]]) -> None:
    ranges = AppliedRanges()
    expected: set[int] = set()
    for first, length in runs:
        ranges.add(first, first + length)
        expected.update(range(first, first + length + 1))
    assert {o for o in range(0, 240) if ranges.contains(o)} == expected
    assert all(e < s2 for (_, e), (s2, _) in zip(ranges.ranges, ranges.ranges[1:]))  # disjoint, not touching
    assert AppliedRanges.from_bytes(ranges.to_bytes()) == ranges


@pytest.mark.parametrize("raw", [b"", b"{}", b'{"v":2,"applied":[]}', b'{"v":1,"applied":[[5,5]]}',
                                 b'{"v":1,"applied":[[9,10],[1,2]]}', b"\xff"])
def test_bad_state_records_are_rejected(raw: bytes) -> None:
    with pytest.raises(StateError):
        AppliedRanges.from_bytes(raw)


def test_every_reading_becomes_one_record_keyed_by_series() -> None:
    expansion = Expander().expand(batch(0, 3))
    assert [r.key for r in expansion.records] == [b"gw-1/sensors/node-0/temp_c", b"gw-1/sensors/node-1/temp_c"] * 2
    first = json.loads(expansion.records[0].value)
    assert first == {
        "id": "gw-1/sensors/0", "gateway": "gw-1", "stream": "sensors", "offset": 0, "device": "node-0",
        "metric": "temp_c", "ts_ms": T0, "value": 20.0, "received_ms": T0 + 5, "time_source": 0,
        "window_start_ms": T0, "window_length_ms": 3_600_000,
    }
    assert expansion.records[0].timestamp_ms == T0
    assert expansion.duplicates == 0


def test_msgpack_values_carry_the_same_fields() -> None:
    entries = [Entry(7, Reading("n", "state", T0, "open", T0 + 1, TIME_MAPPED))]
    record = Expander(FORMAT_MSGPACK).expand(encode_batch("gw", "s", WINDOW, entries)).records[0]
    doc = decode_reading_value(record.value)
    assert (doc["id"], doc["value"], doc["time_source"]) == ("gw/s/7", "open", TIME_MAPPED)


def test_a_resent_batch_yields_nothing_after_commit() -> None:
    expander = Expander()
    assert offsets_of(expander, batch(0, 9)) == list(range(10))
    expander.commit()
    expansion = expander.expand(batch(0, 9))
    assert expansion.records == () and expansion.duplicates == 10


def test_a_resend_cut_differently_yields_only_the_new_readings() -> None:
    # The bridge crashed after Kafka took 0..9 but before its cursor moved;
    # after the restart its batcher cut 0..14 in one batch.
    expander = Expander()
    offsets_of(expander, batch(0, 9))
    expander.commit()
    assert offsets_of(expander, batch(0, 14)) == list(range(10, 15))


def test_batches_of_one_transaction_see_each_other() -> None:
    expander = Expander()
    offsets_of(expander, batch(0, 9))
    assert offsets_of(expander, batch(5, 12)) == [10, 11, 12]
    assert json.loads(expander.pending()["gw-1/sensors"]) == {"v": 1, "applied": [[0, 13]]}


def test_rollback_forgets_the_pending_ranges() -> None:
    expander = Expander()
    offsets_of(expander, batch(0, 9))
    expander.rollback()
    assert expander.pending() == {}
    assert offsets_of(expander, batch(0, 9)) == list(range(10))


def test_a_fresh_lane_ahead_of_the_backlog_is_applied_once() -> None:
    expander = Expander()
    offsets_of(expander, batch(0, 9))
    offsets_of(expander, batch(100, 109))  # fresh data sent while 10..99 is backlog
    expander.commit()
    assert expander.applied("gw-1/sensors").ranges == [(0, 10), (100, 110)]
    assert offsets_of(expander, batch(10, 99)) == list(range(10, 100))
    assert offsets_of(expander, batch(100, 109)) == []
    expander.commit()
    assert expander.applied("gw-1/sensors").ranges == [(0, 110)]


def test_keys_are_independent() -> None:
    expander = Expander()
    offsets_of(expander, batch(0, 9, gateway="gw-1"))
    expander.commit()
    assert offsets_of(expander, batch(0, 9, gateway="gw-2")) == list(range(10))
    assert offsets_of(expander, batch(0, 9, stream="other")) == list(range(10))


def test_loaded_state_drops_what_a_previous_instance_applied() -> None:
    expander = Expander()
    expander.load("gw-1/sensors", AppliedRanges([(0, 50)]).to_bytes())
    assert offsets_of(expander, batch(40, 59)) == list(range(50, 60))
    expander.forget(["gw-1/sensors"])
    expander.rollback()
    assert offsets_of(expander, batch(40, 59)) == list(range(40, 60))


def test_an_invalid_batch_raises_and_changes_nothing() -> None:
    expander = Expander()
    data = bytearray(batch(0, 9))
    data[-1] ^= 0xFF
    with pytest.raises(BatchFormatError):
        expander.expand(bytes(data))
    assert expander.pending() == {}


# -- the stall watch ---------------------------------------------------------


def test_the_stall_watch_fires_once_for_a_stretch_that_runs_past_its_limit() -> None:
    from bridge.central import StallWatch

    now = [100.0]
    fired: list[float] = []
    watch = StallWatch(10.0, fired.append, clock=lambda: now[0])
    now[0] += 60
    assert not watch.check()  # nothing watched: an idle expander is not stuck
    with watch.watching():
        now[0] += 10
        assert not watch.check()
        now[0] += 0.5
        assert watch.check() and fired == [10.5]
        now[0] += 30
        assert not watch.check() and fired == [10.5]  # at most once


def test_a_transaction_stuck_inside_the_producer_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading
    import time

    from bridge import central

    monkeypatch.setattr(central, "STALL_MARGIN_S", 0.2)
    stalled: list[float] = []
    release = threading.Event()

    class StuckProducer:
        """Stands in for a producer whose commit waits for ever (librdkafka issue 3013's shape)."""

        def begin_transaction(self) -> None: ...
        def produce(self, *args: object, **kwargs: object) -> None: ...
        def send_offsets_to_transaction(self, *args: object) -> None: ...
        def poll(self, timeout: float) -> None: ...

        def commit_transaction(self, timeout: float) -> None:
            release.wait(10)

    config = central.CentralConfig(bootstrap="127.0.0.1:9", batch_topic="b", readings_topic="r",
                                   operation_timeout_s=0.1)
    expander = central.KafkaExpander(config, on_stall=stalled.append)
    try:
        expander._producer = StuckProducer()  # type: ignore[assignment]
        expander._watch._tick_s = 0.05  # type: ignore[union-attr]
        expander._watch.start()  # type: ignore[union-attr]
        stuck = threading.Thread(target=expander._transact, args=([],))
        stuck.start()
        deadline = time.monotonic() + 5
        while not stalled and time.monotonic() < deadline:
            time.sleep(0.02)
        release.set()
        stuck.join(5)
        assert len(stalled) == 1 and stalled[0] > 0.4
        assert expander.stats.transactions == 1
    finally:
        release.set()
        expander._watch.stop()  # type: ignore[union-attr]
        expander.close()


def test_a_stalled_expander_process_exits_with_its_own_status() -> None:
    import subprocess
    import sys

    from bridge.central import EXIT_STALLED

    done = subprocess.run(
        [sys.executable, "-c", "import logging; logging.basicConfig(); import bridge.central as c; c._exit_stalled(70.4)"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == EXIT_STALLED == 3
    assert "stuck for 70 s inside librdkafka" in done.stderr
