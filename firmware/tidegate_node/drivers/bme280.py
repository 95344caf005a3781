"""Bosch BME280 (temperature, pressure, humidity) over I2C, in forced mode.

Theory of operation
-------------------
At start: check the chip id (0x60 at 0xD0), read the factory calibration
(26 bytes at 0x88, 7 bytes at 0xE1) once, set humidity oversampling x1
(0xF2; it only takes effect on the next write of 0xF4) and the IIR filter off
(0xF5).

Per sample: write 0xF4 with oversampling x1 for temperature and pressure and
mode "forced" (0b01): the sensor takes one measurement and goes back to
sleep, drawing about 0.1 uA between samples, which is what a battery node
wants. Then poll the status register (0xF3, bit 3 "measuring") every 2 ms,
up to 50 ms (a x1/x1/x1 measurement takes at most 9.3 ms, datasheet 9.1), and
read the 8 data bytes at 0xF7 in one burst into a buffer allocated at start,
so the three values belong to the same measurement.

Compensation uses the datasheet's integer formulas (BME280 datasheet
section 4.2.3: 32-bit for temperature and humidity, 64-bit for pressure;
MicroPython ints do not overflow, so the 64-bit one is exact). Results:

* ``temp_c``: 0.01 degC resolution;
* ``pressure_hpa``: from Pa rounded to an integer (the sensor's noise is
  about 1.3 Pa at x1), so two decimals;
* ``rh_pct``: 0.01 %RH (the sensor's resolution is 0.008 %RH).
"""

from tidegate_node._compat import const
from tidegate_node.drivers import SensorError

__all__ = ["BME280", "CHIP_ID"]

CHIP_ID = const(0x60)
_REG_ID = const(0xD0)
_REG_CALIB_TP = const(0x88)
_REG_CALIB_H1 = const(0xA1)
_REG_CALIB_H = const(0xE1)
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_CONFIG = const(0xF5)
_REG_DATA = const(0xF7)
_STATUS_MEASURING = const(0x08)
# ctrl_meas: osrs_t = x1 (001), osrs_p = x1 (001), mode = forced (01)
_FORCED = b"\x25"
_POLL_MS = const(2)
_MAX_WAIT_MS = const(50)


def _u16(buf, i):
    return buf[i] | (buf[i + 1] << 8)


def _s16(buf, i):
    v = _u16(buf, i)
    return v - 65536 if v > 32767 else v


class BME280:
    """One BME280 on an I2C bus.

    Args:
        i2c: a ``machine.I2C`` (shared with other sensors; not owned).
        address: 0x76 (SDO to GND) or 0x77 (SDO to VDDIO).
        sleep_ms: the function to wait with (the clock's, so tests do not wait).

    Raises:
        SensorError: no device at the address, or not a BME280 (a BMP280 has
            chip id 0x58 and no humidity sensor).
    """

    metrics = ("temp_c", "pressure_hpa", "rh_pct")

    def __init__(self, i2c, address=0x76, sleep_ms=None):
        self._i2c = i2c
        self._address = address
        self._sleep_ms = sleep_ms
        self._one = bytearray(1)
        self._data = bytearray(8)
        calib = bytearray(26)
        hum = bytearray(7)
        try:
            i2c.readfrom_mem_into(address, _REG_ID, self._one)
            if self._one[0] != CHIP_ID:
                raise SensorError("BME280 at " + hex(address) + ": chip id " + hex(self._one[0]) + ", expected 0x60",
                                  "chip_id")
            i2c.readfrom_mem_into(address, _REG_CALIB_TP, calib)
            i2c.readfrom_mem_into(address, _REG_CALIB_H1, self._one)
            h1 = self._one[0]
            i2c.readfrom_mem_into(address, _REG_CALIB_H, hum)
            i2c.writeto_mem(address, _REG_CTRL_HUM, b"\x01")  # osrs_h = x1
            i2c.writeto_mem(address, _REG_CONFIG, b"\x00")  # no standby filter
        except OSError as exc:
            raise SensorError("BME280 at " + hex(address) + ": " + repr(exc), "i2c")
        self._t1 = _u16(calib, 0)
        self._t2 = _s16(calib, 2)
        self._t3 = _s16(calib, 4)
        self._p = [_u16(calib, 6)] + [_s16(calib, 8 + 2 * i) for i in range(8)]  # dig_P1..dig_P9
        self._h1 = h1
        self._h2 = _s16(hum, 0)
        self._h3 = hum[2]
        h4 = (hum[3] << 4) | (hum[4] & 0x0F)
        h5 = (hum[5] << 4) | (hum[4] >> 4)
        self._h4 = h4 - 4096 if h4 > 2047 else h4
        self._h5 = h5 - 4096 if h5 > 2047 else h5
        self._h6 = hum[6] - 256 if hum[6] > 127 else hum[6]

    def read(self):
        """Take one forced-mode measurement.

        Returns:
            ``[("temp_c", t), ("pressure_hpa", p), ("rh_pct", h)]``.

        Raises:
            SensorError: a bus error, or the measurement did not finish in time.
        """
        i2c = self._i2c
        address = self._address
        try:
            i2c.writeto_mem(address, _REG_CTRL_MEAS, _FORCED)
            waited = 0
            while True:
                i2c.readfrom_mem_into(address, _REG_STATUS, self._one)
                if not self._one[0] & _STATUS_MEASURING:
                    break
                if waited >= _MAX_WAIT_MS:
                    raise SensorError("BME280 at " + hex(address) + ": still measuring after 50 ms", "timeout")
                if self._sleep_ms is not None:
                    self._sleep_ms(_POLL_MS)
                waited += _POLL_MS
            i2c.readfrom_mem_into(address, _REG_DATA, self._data)
        except OSError as exc:
            raise SensorError("BME280 at " + hex(address) + ": " + repr(exc), "i2c")
        d = self._data
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        if adc_t == 0x80000 or adc_p == 0x80000 or adc_h == 0x8000:
            # The reset values of the data registers: no measurement happened.
            raise SensorError("BME280 at " + hex(address) + ": no measurement (skipped values)", "range")
        t_fine, temp_centi = self._temperature(adc_t)
        pa = self._pressure_pa(adc_p, t_fine)
        rh_centi = self._humidity_centi(adc_h, t_fine)
        return [("temp_c", temp_centi / 100), ("pressure_hpa", pa / 100), ("rh_pct", rh_centi / 100)]

    # Datasheet 4.2.3, BME280_compensate_T_int32: returns (t_fine, 0.01 degC).
    def _temperature(self, adc_t):
        var1 = (((adc_t >> 3) - (self._t1 << 1)) * self._t2) >> 11
        var2 = (((((adc_t >> 4) - self._t1) * ((adc_t >> 4) - self._t1)) >> 12) * self._t3) >> 14
        t_fine = var1 + var2
        return t_fine, (t_fine * 5 + 128) >> 8

    # Datasheet 4.2.3, BME280_compensate_P_int64: Q24.8 Pa, rounded here to whole Pa.
    def _pressure_pa(self, adc_p, t_fine):
        p1, p2, p3, p4, p5, p6, p7, p8, p9 = self._p
        var1 = t_fine - 128000
        var2 = var1 * var1 * p6
        var2 = var2 + ((var1 * p5) << 17)
        var2 = var2 + (p4 << 35)
        var1 = ((var1 * var1 * p3) >> 8) + ((var1 * p2) << 12)
        var1 = (((1 << 47) + var1) * p1) >> 33
        if var1 == 0:
            raise SensorError("BME280: pressure calibration is zero", "range")
        p = 1048576 - adc_p
        p = (((p << 31) - var2) * 3125) // var1
        var1 = (p9 * (p >> 13) * (p >> 13)) >> 25
        var2 = (p8 * p) >> 19
        p = ((p + var1 + var2) >> 8) + (p7 << 4)
        return (p + 128) >> 8

    # Datasheet 4.2.3, bme280_compensate_H_int32: Q22.10 %RH, here in 0.01 %RH.
    def _humidity_centi(self, adc_h, t_fine):
        v = t_fine - 76800
        v = ((((adc_h << 14) - (self._h4 << 20) - (self._h5 * v)) + 16384) >> 15) * (
            ((((((v * self._h6) >> 10) * (((v * self._h3) >> 11) + 32768)) >> 10) + 2097152) * self._h2 + 8192) >> 14
        )
        v = v - (((((v >> 15) * (v >> 15)) >> 7) * self._h1) >> 4)
        v = 0 if v < 0 else v
        v = 419430400 if v > 419430400 else v
        q10 = v >> 12
        return (q10 * 100 + 512) >> 10
