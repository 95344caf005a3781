"""The whole node (tidegate_node.main.run) on a fake site, decoded by the gateway's own codecs.

Every case runs on MicroPython and CPython (same results, bit for bit); the
assertions here decode what the fake broker or UART received with
core/codecs.py and core/serial_decoder.py, so they check the firmware
against the gateway, not against itself.
"""

from __future__ import annotations

from typing import Any

import pytest
import umsgpack

from core.codecs import SourceFields, decode_payload, decode_samples
from core.reading import TIME_DEVICE, TIME_MAPPED
from core.sample import TIME_KIND_EPOCH, TIME_KIND_UPTIME, Sample
from core.serial_decoder import NEED_DATA, Frame, FrameDecoder
from tests.firmware.conftest import cases_fixture
from tests.firmware.harness import Cases

pytestmark = pytest.mark.micropython

cases = cases_fixture("node_cases")


def _samples(messages: list[list[Any]]) -> list[Sample]:
    out: list[Sample] = []
    for topic, payload in messages:
        assert topic == "sensors/node-01"
        out.extend(decode_samples(payload, SourceFields()))
    return out


def _metrics(sample: Sample) -> list[str]:
    return [metric for metric, _ in sample.values]


BME = ["temp_c", "pressure_hpa", "rh_pct"]
SHT = ["sht_temp_c", "sht_rh_pct"]


def test_mains_node_samples_each_sensor_on_its_own_period(cases: Cases) -> None:
    r = cases.check("case_mains_mqtt_follows_each_sensors_schedule")
    samples = _samples(r["messages"])

    assert len(r["messages"]) == 11 and r["qos"] == [1] * 11
    assert [s.seq for s in samples] == list(range(11)) and r["seq"] == 11 and r["ring_left"] == 0
    assert len({s.boot for s in samples}) == 1
    assert all(s.time_kind == TIME_KIND_UPTIME for s in samples)
    ups = [s.time_ms for s in samples]
    assert [u - ups[0] for u in ups] == [30_000 * k for k in range(11)]
    expected = [BME + SHT + ["battery_v"]] + [SHT if k % 2 else BME + SHT for k in range(1, 10)] + [
        BME + SHT + ["battery_v"]]
    assert [_metrics(s) for s in samples] == expected
    assert dict(samples[0].values)["temp_c"] == 25.08 and dict(samples[0].values)["battery_v"] == 4.1
    assert all(s.sent_up_ms is not None and 0 <= s.sent_up_ms - s.time_ms < 1000 for s in samples)


def test_mains_node_keeps_one_connection_and_feeds_the_watchdog(cases: Cases) -> None:
    r = cases.check("case_mains_mqtt_follows_each_sensors_schedule")

    assert (r["wifi_connects"], r["mqtt_connects"], r["connect_timeout"]) == (1, 1, 10)
    assert r["wdt_timeout"] == 8000 and not r["wdt_expired"]
    assert r["wdt_longest_gap"] <= 4000 + 200  # slept in chunks of half the timeout
    assert r["max_sleep"] <= 4000
    assert r["elapsed"] >= 300_000
    assert r["i2c"] == [(0, 22, 21, 100000)]  # one shared bus, ESP32 default pins


def test_readings_from_the_node_decode_with_mapped_time(cases: Cases) -> None:
    r = cases.check("case_mains_mqtt_follows_each_sensors_schedule")
    topic, payload = r["messages"][1]

    readings = decode_payload(payload, SourceFields(), received_ms=1_767_225_630_000)

    assert [(x.device, x.metric, x.time_source) for x in readings] == [
        ("node-01", "sht_temp_c", TIME_MAPPED), ("node-01", "sht_rh_pct", TIME_MAPPED)]


def test_an_outage_is_replayed_in_order_in_packs(cases: Cases) -> None:
    r = cases.check("case_outage_is_replayed_in_order_in_packs")
    samples = _samples(r["messages"])
    kinds = [type(umsgpack.unpackb(p)).__name__ for _, p in r["messages"]]

    assert [s.seq for s in samples] == list(range(16)) and r["ring_left"] == 0
    assert "list" in kinds  # the backlog went out as packs
    assert max(len(umsgpack.unpackb(p)) for _, p in r["messages"] if p[0] & 0xF0 == 0x90) == 10
    late = [s for s in samples if s.sent_up_ms - s.time_ms > 1000]
    assert late and all(s.sent_up_ms >= 400_000 for s in late)  # sent after the broker came back
    assert r["failures"] >= 10  # one failed attempt per cycle during the outage


def test_a_lost_puback_resends_and_the_copy_is_identical(cases: Cases) -> None:
    r = cases.check("case_lost_puback_sends_the_sample_again")
    samples = _samples(r["messages"])
    keys = [(s.boot, s.seq) for s in samples]

    assert len(keys) == len(set(keys)) + 1  # exactly one duplicate ...
    assert sorted({k[1] for k in keys}) == list(range(r["seq"]))  # ... and nothing missing
    assert r["mqtt_connects"] == 2


def test_uart_node_sends_frames_the_gateway_decoder_reads(cases: Cases) -> None:
    r = cases.check("case_uart_frames")
    stream = r["bytes"]
    decoder = FrameDecoder()
    decoder.receive_data(stream)
    events = []
    while (event := decoder.next_event()) is not NEED_DATA:
        events.append(event)

    assert stream[0] == 0  # resynchronise the gateway's decoder first
    assert r["opened"] == [(1, 115200, 17, 16)]
    assert all(isinstance(e, Frame) for e in events)
    samples = [s for e in events for s in decode_samples(e.payload, SourceFields())]
    assert [s.seq for s in samples] == list(range(r["seq"])) and r["ring_left"] == 0
    assert samples[0].values == [("temp_c", 21.5), ("rh_pct", 45.5), ("battery_v", 4.1)]


def test_battery_node_deep_sleeps_and_keeps_boot_and_sequence(cases: Cases) -> None:
    r = cases.check("case_battery_node_deep_sleeps_and_keeps_its_identity")
    samples = _samples(r["messages"])
    first_boot = samples[0].boot
    series = [s for s in samples if s.boot == first_boot]
    second = [s for s in samples if s.boot != first_boot]

    assert [s.seq for s in series] == list(range(7))
    assert [s.time_ms for s in series] == [60_000 * k for k in range(7)]  # uptime counts the sleeps
    assert [s.seq for s in second] == [0, 1] and len({s.boot for s in second}) == 1
    # The sample left in the ring from the first boot went out after the power cycle, without su.
    assert series[-1].sent_up_ms is None
    assert all(s.sent_up_ms is not None for s in series[:-1] + second)
    assert all(59_000 < ms <= 60_000 for ms in r["deepsleeps"])
    assert r["radio_on_at_sleep"][2:] == [False] * 5  # Wi-Fi off before sleeping
    assert r["wifi_connects"] == 3  # once every three samples (send_every)


def test_a_battery_node_that_overruns_its_period_still_wakes_on_a_timer(cases: Cases) -> None:
    r = cases.check("case_battery_node_that_overruns_its_period_still_sleeps_on_a_timer")

    assert r["deepsleeps"] and min(r["deepsleeps"]) >= 10  # never deepsleep(0): that is "until reset"
    assert r["messages"] == 3


def test_ntp_sets_the_clock_and_later_samples_carry_device_time(cases: Cases) -> None:
    r = cases.check("case_ntp_sets_the_clock_after_the_first_connect")
    samples = _samples(r["messages"])

    assert samples[0].time_kind == TIME_KIND_UPTIME  # taken before Wi-Fi was up
    assert [s.time_kind for s in samples[1:]] == [TIME_KIND_EPOCH, TIME_KIND_EPOCH]
    assert samples[2].time_ms - samples[1].time_ms == 60_000
    assert 0 < samples[1].time_ms - r["world_start"] < 61_000
    readings = decode_payload(r["messages"][1][1], SourceFields(), received_ms=0)
    assert {x.time_source for x in readings} == {TIME_DEVICE}


def test_uptime_keeps_rising_across_the_ticks_wrap(cases: Cases) -> None:
    samples = _samples(cases.check("case_uptime_survives_the_ticks_wrap")["messages"])
    ups = [s.time_ms for s in samples]

    assert [b - a for a, b in zip(ups, ups[1:])] == [30_000] * 5


def test_a_full_ring_drops_the_oldest_and_the_loss_is_reported(cases: Cases) -> None:
    r = cases.check("case_full_ring_drops_oldest_and_says_so")
    samples = _samples(r["messages"])
    reported = [dict(s.values).get("ring_dropped") for s in samples]

    assert r["dropped"] > 0
    assert len(samples) + r["dropped"] == r["seq"]  # every sample is either delivered or counted
    assert [s.seq for s in samples] == list(range(r["dropped"], r["seq"]))  # the newest survive
    assert max(x for x in reported if x is not None) >= r["dropped"] - len(samples)


def test_a_sensor_plugged_in_later_is_picked_up_and_errors_are_reported(cases: Cases) -> None:
    r = cases.check("case_sensor_plugged_in_later")
    samples = _samples(r["messages"])

    assert r["errors"] == 3
    assert dict(samples[0].values)["sensor_errors"] == 3
    assert _metrics(samples[1]) == BME  # reported once, not on every sample


def test_idle_mqtt_connection_is_kept_alive_with_pings(cases: Cases) -> None:
    r = cases.check("case_keepalive_pings_while_idle")

    assert r["messages"] == 3
    assert r["pings"] >= 15  # about every 30 s (half the keepalive) over 10 minutes


def test_cold_boot_waits_for_ctrl_c_before_starting(cases: Cases) -> None:
    assert cases.check("case_boot_delay_on_cold_boot_only") == 3000


def test_configs_are_validated_with_the_key_named(cases: Cases) -> None:
    *errors, pico, uart = cases.check("case_configs_are_validated")

    assert errors == [
        "device: is required",
        "transport: must be one of mqtt, uart, got 'lora'",
        "wifi.ssid: is required with the mqtt transport",
        "mqtt.host: is required with the mqtt transport",
        "sensors: must be a non-empty list",
        "sensors[0].period_s: must be 1..86400 seconds, got 0",
        "sensors[0].period_s: must be 1..86400 seconds, got True",
        "sensors[1]: metric 'temp_c' is already taken; set a \"prefix\" such as \"sht31_\"",
        "sensors[0].address: must be an I2C address, got 300",
        "watchdog_ms: must be 0 (off) or 1000..8388 ms (the RP2040 maximum), got 9000",
        "mqtt.topic: must not hold wildcards",
        "ring.file: must be a file name, got None",
        "board: must be one of esp32, pico_w, got 'arduino'",
    ]
    assert pico == [4, 5, 15, 26, "sensors/n1", "tidegate-n1", None, 8000]
    assert uart == ["usb", "tidegate.ring", None, 4]
