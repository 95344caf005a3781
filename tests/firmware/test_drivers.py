"""Sensor drivers against simulated sensors, on MicroPython and CPython.

Expected values come from the sensors' datasheets (the BMP280 worked
example, the DHT22 example frame, the SHT3x CRC example) and from the
datasheets' floating-point formulas computed here independently of the
drivers' integer arithmetic.
"""

from __future__ import annotations

import pytest

from tests.firmware.conftest import cases_fixture
from tests.firmware.harness import Cases, load_cases

pytestmark = pytest.mark.micropython

cases = cases_fixture("driver_cases")
CAL = load_cases("fakedevices").DATASHEET_CALIBRATION


def _bme280_float(adc_t: int, adc_p: int, adc_h: int) -> tuple[float, float, float]:
    """BME280 datasheet section 8.1, the double-precision compensation."""
    t1, t2, t3 = CAL["T"]
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = CAL["P"]
    h1, h2, h3, h4, h5, h6 = CAL["H"]
    var1 = (adc_t / 16384.0 - t1 / 1024.0) * t2
    var2 = ((adc_t / 131072.0 - t1 / 8192.0) * (adc_t / 131072.0 - t1 / 8192.0)) * t3
    t_fine = var1 + var2
    temp = t_fine / 5120.0
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * p6 / 32768.0 + var1 * p5 * 2.0
    var2 = var2 / 4.0 + p4 * 65536.0
    var1 = (p3 * var1 * var1 / 524288.0 + p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * p1
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = p9 * p * p / 2147483648.0
    var2 = p * p8 / 32768.0
    pressure = p + (var1 + var2 + p7) / 16.0
    h = t_fine - 76800.0
    h = (adc_h - (h4 * 64.0 + h5 / 16384.0 * h)) * (
        h2 / 65536.0 * (1.0 + h6 / 67108864.0 * h * (1.0 + h3 / 67108864.0 * h))
    )
    h = h * (1.0 - h1 * h / 524288.0)
    return temp, pressure / 100, min(max(h, 0.0), 100.0)


def test_bme280_gives_the_datasheet_example_in_one_burst_per_sample(cases: Cases) -> None:
    first, second, measurements, transfers, sleeps = cases.check("case_bme280_datasheet_example")

    assert first == second
    assert first[0] == ("temp_c", 25.08)  # BMP280 datasheet 3.12: 25.08 degC
    assert first[1] == ("pressure_hpa", 1006.53)  # 100653.27 Pa, to the pascal
    assert first[2][0] == "rh_pct"
    assert first[2][1] == pytest.approx(_bme280_float(519888, 415148, 28000)[2], abs=0.02)
    assert measurements == 2  # forced mode: one measurement per read, asleep in between
    assert transfers == 4  # ctrl_meas write not counted: 3 status polls, then 8 data bytes in one read
    assert sleeps == [2, 2, 2, 2]  # polled every 2 ms while "measuring"


def test_bme280_integer_compensation_matches_the_float_formulas(cases: Cases) -> None:
    for adc_t, adc_p, adc_h, values in cases.check("case_bme280_sweep"):
        temp, pressure, rh = _bme280_float(adc_t, adc_p, adc_h)
        got = dict(values)
        assert got["temp_c"] == pytest.approx(temp, abs=0.01)
        assert got["pressure_hpa"] == pytest.approx(pressure, abs=0.02)
        assert got["rh_pct"] == pytest.approx(rh, abs=0.02)
        assert 0 <= got["rh_pct"] <= 100


def test_bme280_errors_have_reasons_and_the_driver_recovers(cases: Cases) -> None:
    missing, bmp280, never, waited, bus_error, recovered = cases.check("case_bme280_errors")

    assert (missing, bmp280, never, bus_error) == ("i2c", "chip_id", "timeout", "i2c")
    assert waited == [50]  # gave up after 50 ms of polling
    assert recovered == ("temp_c", 25.08)


def test_bme280_reset_values_are_not_a_reading(cases: Cases) -> None:
    assert cases.check("case_bme280_no_measurement_yet") == "range"


def test_sht31_conversions_follow_the_datasheet(cases: Cases) -> None:
    for raw_t, raw_h, values in cases.check("case_sht31_conversions"):
        assert values[0] == ("temp_c", pytest.approx(-45 + 175 * raw_t / 65535, abs=0.005))
        assert values[1] == ("rh_pct", pytest.approx(100 * raw_h / 65535, abs=0.005))
    assert cases.check("case_sht31_conversions")[0][2] == [("temp_c", 25.0), ("rh_pct", 50.0)]


def test_sht31_soft_resets_then_waits_out_the_measurement(cases: Cases) -> None:
    values, commands, sleeps = cases.check("case_sht31_protocol_with_timing")

    assert values == [("temp_c", 25.0), ("rh_pct", 50.0)]
    assert commands == [0x30A2, 0x2400]
    assert sleeps == [2, 16]


def test_sht31_crc_and_bus_errors(cases: Cases) -> None:
    check, crc, after, bus, early, missing = cases.check("case_sht31_errors")

    assert check == 0x92  # SHT3x datasheet 4.12: CRC of 0xBEEF
    assert (crc, bus, early, missing) == ("crc", "i2c", "i2c", "i2c")
    assert after == [("temp_c", 25.0), ("rh_pct", 50.0)]


def test_dht22_decodes_the_datasheet_frame_and_rejects_bad_ones(cases: Cases) -> None:
    example, negative, bad_sum, out_of_range, silent, unsupported = cases.check("case_dht22")

    assert example == [("temp_c", 35.1), ("rh_pct", 65.2)]
    assert negative == [("temp_c", -10.1), ("rh_pct", 100.0)]
    assert (bad_sum, out_of_range, silent, unsupported) == ("crc", "range", "timeout", "unsupported")


def test_battery_voltage_through_the_divider(cases: Cases) -> None:
    esp32, divider3, rp2040, zero, adc_error = cases.check("case_battery")

    assert esp32 == [("battery_v", 4.1)]
    assert divider3 == [("battery_v", 3.704)]
    assert rp2040 == [("battery_v", pytest.approx(3.7, abs=0.002))]
    assert (zero, adc_error) == ("range", "adc")
