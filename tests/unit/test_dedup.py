"""Deduplication: sliding windows per (device, boot), and the Intake and writer that use them."""

from __future__ import annotations

import json
import time

import cbor2
import pytest
import umsgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from core.dedup import DUPLICATE, NEW, STALE, Dedup
from core.errors import LocalError
from core.intake import Accepted, Duplicate, Intake, Rejected
from core.reading import TIME_DEVICE, TIME_MAPPED, Reading, decode_reading
from core.topics import Route, TopicTemplate
from edge.gateway import Gateway, Message
from edge.metrics import Metrics
from tests.unit.fakes import GatedLog

# -- the windows ----------------------------------------------------------------


def test_first_sighting_is_new_and_a_repeat_is_a_duplicate() -> None:
    d = Dedup()
    assert d.check("n1", 1, 5) == NEW
    assert d.check("n1", 1, 5) == DUPLICATE
    assert d.duplicates == 1


def test_late_and_reordered_numbers_inside_the_window_are_new_once() -> None:
    d = Dedup(window=16)
    for seq in (10, 12, 11, 9, 15):
        assert d.check("n1", 1, seq) == NEW
    for seq in (10, 12, 11, 9, 15):
        assert d.check("n1", 1, seq) == DUPLICATE


def test_numbers_below_the_window_pass_and_are_counted_stale() -> None:
    d = Dedup(window=16)
    d.check("n1", 1, 100)
    assert d.check("n1", 1, 100 - 16) == STALE
    assert d.check("n1", 1, 100 - 15) == NEW
    assert d.stale == 1


def test_a_jump_beyond_the_window_forgets_the_old_bits() -> None:
    d = Dedup(window=8)
    d.check("n1", 1, 1)
    assert d.check("n1", 1, 1000) == NEW
    assert d.check("n1", 1, 999) == NEW
    assert d.check("n1", 1, 1) == STALE


def test_boots_and_devices_are_separate() -> None:
    d = Dedup()
    assert d.check("n1", 1, 1) == NEW
    assert d.check("n1", 2, 1) == NEW  # rebooted: numbers start again
    assert d.check("n2", 1, 1) == NEW
    assert d.check("n1", "boot-a", 1) == NEW


def test_without_seq_everything_passes() -> None:
    d = Dedup()
    assert [d.check("n1", 1, None) for _ in range(3)] == [NEW, NEW, NEW]
    assert len(d) == 0


def test_without_boot_id_only_an_equal_sample_is_a_duplicate() -> None:
    d = Dedup()
    assert d.check("sim", None, 1, fingerprint=111) == NEW
    assert d.check("sim", None, 1, fingerprint=111) == DUPLICATE
    # The publisher restarted and counts from 1 again, with new content.
    assert d.check("sim", None, 1, fingerprint=222) == NEW
    assert d.check("sim", None, 1, fingerprint=222) == DUPLICATE


def test_unbooted_window_is_bounded() -> None:
    d = Dedup(unbooted_window=4)
    for seq in range(10):
        d.check("sim", None, seq, fingerprint=seq)
    assert d.check("sim", None, 9, fingerprint=9) == DUPLICATE
    assert d.check("sim", None, 0, fingerprint=0) == NEW  # forgotten


def test_memory_is_bounded_by_least_recent_use() -> None:
    d = Dedup(max_keys=2)
    d.check("a", 1, 1)
    d.check("b", 1, 1)
    d.check("a", 1, 2)  # a is now the most recent
    d.check("c", 1, 1)  # evicts b
    assert d.evicted == 1 and len(d) == 2
    assert d.check("a", 1, 2) == DUPLICATE
    assert d.check("b", 1, 1) == NEW


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(LocalError):
        Dedup(window=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3000), max_size=300))
def test_window_agrees_with_a_set_inside_the_window(seqs: list[int]) -> None:
    window = 64
    d = Dedup(window=window)
    seen: set[int] = set()
    top = -1
    for seq in seqs:
        verdict = d.check("n", 1, seq)
        if top >= 0 and seq <= top - window:
            assert verdict == STALE
        elif seq in seen:
            assert verdict == DUPLICATE
        else:
            assert verdict == NEW
            seen.add(seq)
        top = max(top, seq)


# -- the Intake -------------------------------------------------------------------

ROUTES = (Route(TopicTemplate("sensors/{device}"), "sensors"), Route(TopicTemplate("/dev/ttyX"), "serial"))
NOW = 1_700_000_000_000


def reading_msg(seq: int, boot: int | None = 1, value: float = 1.0) -> bytes:
    body: dict[str, object] = {"s": seq, "up": 1000 * seq, "values": {"t": value}}
    if boot is not None:
        body["b"] = boot
    return umsgpack.packb(body)


def test_qos1_redelivery_is_a_duplicate_in_any_format() -> None:
    intake = Intake(ROUTES)
    shape = {"d": "n1", "b": 9, "s": 3, "ts": NOW, "values": {"t": 1.5}}
    first = intake.classify("mqtt", "sensors/n1", json.dumps(shape).encode(), NOW)
    assert isinstance(first, Accepted) and first.readings == (Reading("n1", "t", NOW, 1.5, NOW, TIME_DEVICE),)
    for payload in (json.dumps(shape).encode(), umsgpack.packb(shape), cbor2.dumps(shape)):
        assert intake.classify("mqtt", "sensors/n1", payload, NOW + 5) == Duplicate("sensors", 1)
    assert intake.dedup.duplicates == 3


def test_replayed_pack_keeps_only_the_samples_not_seen() -> None:
    intake = Intake(ROUTES)
    for seq in (1, 2, 3):
        intake.classify("serial", "/dev/ttyX", umsgpack.packb({"d": "n1", "b": 4, "s": seq, "up": seq, "v": seq, "m": "x"}), NOW)
    pack = umsgpack.packb([{"d": "n1", "b": 4, "s": seq, "up": seq, "m": "x", "v": seq} for seq in (2, 3, 4, 5)])
    result = intake.classify("serial", "/dev/ttyX", pack, NOW)
    assert isinstance(result, Accepted)
    assert [r.value for r in result.readings] == [4, 5] and result.duplicates == 2


def test_rejected_message_does_not_mark_its_numbers_seen() -> None:
    intake = Intake(ROUTES)
    bad = umsgpack.packb({"d": "n1", "b": 1, "s": 7, "values": {"t": [1]}})
    assert isinstance(intake.classify("mqtt", "sensors/n1", bad, NOW), Rejected)
    good = umsgpack.packb({"d": "n1", "b": 1, "s": 7, "values": {"t": 1}})
    assert isinstance(intake.classify("mqtt", "sensors/n1", good, NOW), Accepted)


def test_intake_maps_uptime_with_memory_of_the_boot() -> None:
    intake = Intake(ROUTES)
    fresh = intake.classify("mqtt", "sensors/n1", reading_msg(10), NOW)
    assert isinstance(fresh, Accepted)
    assert fresh.readings[0].ts_ms == NOW and fresh.readings[0].time_source == TIME_MAPPED
    # A replay of seq 5 (uptime 5000) arrives a minute later: placed 5 s after boot, not at receipt.
    late = intake.classify("mqtt", "sensors/n1", reading_msg(5), NOW + 60_000)
    assert isinstance(late, Accepted) and late.readings[0].ts_ms == NOW - 5_000


def test_unsynced_gateway_time_is_counted_once_the_clock_is_observed() -> None:
    intake = Intake(ROUTES)
    unobserved = intake.classify("mqtt", "sensors/n1", b'{"m": "x", "value": 1}', NOW)
    assert isinstance(unobserved, Accepted) and unobserved.unsynced == 0
    intake.observe_clock(NOW, 1_000, False)
    result = intake.classify("mqtt", "sensors/n1", b'[{"m": "x", "value": 1}, {"m": "x", "value": 2, "ts": 5}]', NOW)
    assert isinstance(result, Accepted) and result.unsynced == 1
    intake.observe_clock(NOW + 10, 1_010, True)
    result = intake.classify("mqtt", "sensors/n1", b'{"m": "x", "value": 1}', NOW)
    assert isinstance(result, Accepted) and result.unsynced == 0
    assert intake.clock.unsynced_readings == 1


# -- through the writer ---------------------------------------------------------------


def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_writer_drops_redeliveries_counts_them_and_acks_only_after_the_first_copy_is_durable() -> None:
    log = GatedLog()
    metrics = Metrics()
    acked: list[str] = []
    gateway = Gateway(log, ROUTES, metrics, clock=lambda: NOW / 1000)
    gateway.start()
    try:
        payload = reading_msg(1)
        gateway.submit(Message("mqtt", "sensors/n1", payload, NOW, lambda: acked.append("first")))
        gateway.submit(Message("mqtt", "sensors/n1", payload, NOW, lambda: acked.append("redelivery")))
        wait_for(lambda: metrics.total("tidegate_duplicates_total") == 1)
        time.sleep(0.05)
        assert acked == []  # the first copy is not durable, so neither may be acknowledged
        log.allow_sync.set()
        wait_for(lambda: len(acked) == 2)
    finally:
        gateway.stop()
    assert [decode_reading(p).value for p in log.records["sensors"]] == [1.0]
    assert metrics.get("tidegate_duplicates_total", {"source": "mqtt"}) == 1
    assert metrics.get("tidegate_acks_total") == 2


def test_time_before_1970_is_a_dead_letter_not_an_append_error() -> None:
    result = Intake(ROUTES).classify("mqtt", "sensors/n1", b'{"m": "t", "ts": -5, "value": 1}', NOW)
    assert isinstance(result, Rejected) and (result.letter.reason, result.letter.raw) == ("bad_time", b'{"m": "t", "ts": -5, "value": 1}')


def test_content_dedup_drops_a_repeated_device_timed_reading_only() -> None:
    intake = Intake(ROUTES)
    once = b'{"m": "t", "ts": %d, "value": 1.5}' % NOW
    assert isinstance(intake.classify("mqtt", "sensors/n1", once, NOW), Accepted)
    assert isinstance(intake.classify("mqtt", "sensors/n1", once, NOW + 5), Duplicate)
    # a new value at the same time, or the same value at a new time, is a new reading
    other_value = b'{"m": "t", "ts": %d, "value": 1.6}' % NOW
    other_time = b'{"m": "t", "ts": %d, "value": 1.5}' % (NOW + 1)
    assert isinstance(intake.classify("mqtt", "sensors/n1", other_value, NOW), Accepted)
    assert isinstance(intake.classify("mqtt", "sensors/n1", other_time, NOW), Accepted)
    # 1 and 1.0 and True are different values
    assert isinstance(intake.classify("mqtt", "sensors/n1", b'{"m": "b", "ts": 5, "value": 1}', NOW), Accepted)
    assert isinstance(intake.classify("mqtt", "sensors/n1", b'{"m": "b", "ts": 5, "value": true}', NOW), Accepted)
    # without a device time nothing identifies a reading: it always passes
    no_time = b'{"m": "t", "value": 1.5}'
    assert isinstance(intake.classify("mqtt", "sensors/n1", no_time, NOW), Accepted)
    assert isinstance(intake.classify("mqtt", "sensors/n1", no_time, NOW), Accepted)


def test_content_dedup_can_be_turned_off() -> None:
    intake = Intake(ROUTES, content_dedup=False)
    once = b'{"m": "t", "ts": %d, "value": 1.5}' % NOW
    assert isinstance(intake.classify("mqtt", "sensors/n1", once, NOW), Accepted)
    assert isinstance(intake.classify("mqtt", "sensors/n1", once, NOW), Accepted)


def window_states(dedup: Dedup) -> list[object]:
    return [(key, state if isinstance(state, dict) else (state.top, state.bits)) for key, state in dedup._windows.items()]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["n1", "n2", "n3"]), st.sampled_from([1, 2, "b", None]),
                          st.integers(0, 3000), st.integers(1, 40), st.sampled_from(["run", "shuffled", "two devices"])),
                max_size=30),
       st.sampled_from([8, 64, 1024]), st.sampled_from([1, 2, 16]))
def test_columns_of_samples_are_judged_as_one_by_one(runs: list[tuple[str, object, int, int, str]], window: int,
                                                     max_keys: int) -> None:
    at_once = Dedup(window=window, max_keys=max_keys, unbooted_window=16)
    one_by_one = Dedup(window=window, max_keys=max_keys, unbooted_window=16)
    for device, boot, start, n, kind in runs:
        seqs = list(range(start, start + n))
        devices = [device] * n
        if kind == "shuffled":
            seqs = [start + (i * 7) % n for i in range(n)]
        elif kind == "two devices":
            devices = [device, "n4"] * (n // 2) + [device] * (n % 2)
        boots = [boot] * n
        fingerprints = [s % 5 for s in seqs]
        verdicts = [one_by_one.check(*sample) for sample in zip(devices, boots, seqs, fingerprints)]
        expected = None if DUPLICATE not in verdicts else [v != DUPLICATE for v in verdicts]
        assert at_once.fresh_columns(devices, boots, seqs, fingerprints) == expected
        assert (at_once.duplicates, at_once.stale, at_once.evicted) == (
            one_by_one.duplicates, one_by_one.stale, one_by_one.evicted)
        assert window_states(at_once) == window_states(one_by_one)
