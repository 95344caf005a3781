"""Sensirion SHT31 (temperature, humidity) over I2C, single shot.

Theory of operation
-------------------
Per sample: send the single-shot command 0x2400 (high repeatability, no
clock stretching: clock stretching is unreliable on the ESP32's I2C), wait
the datasheet's maximum measurement time of 15.5 ms (table 4; we wait 16 ms),
then read 6 bytes into a buffer allocated at start: temperature MSB, LSB,
CRC, humidity MSB, LSB, CRC. Reading too early makes the sensor NACK its
address, which MicroPython reports as OSError; we retry once after 5 ms.

Each 16-bit word carries a CRC-8 (polynomial 0x31, init 0xFF, datasheet
4.12; CRC of 0xBEEF is 0x92). A mismatch means a disturbed bus: the sample
is dropped (SensorError "crc"), never sent with a flipped bit.

Conversion (datasheet 4.13), in integer arithmetic rounded to 0.01:
``T = -45 + 175 * raw / 65535`` degC, ``RH = 100 * raw / 65535`` %.
"""

from tidegate_node._compat import const
from tidegate_node.drivers import SensorError

__all__ = ["SHT31", "crc8"]

_MEASURE = b"\x24\x00"  # single shot, high repeatability, clock stretching off
_MEASURE_MS = const(16)
_RETRY_MS = const(5)


def crc8(data, start=0, end=None):
    """The SHT3x CRC-8 of ``data[start:end]`` (poly 0x31, init 0xFF)."""
    crc = 0xFF
    for i in range(start, len(data) if end is None else end):
        crc ^= data[i]
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class SHT31:
    """One SHT31 (or SHT30/SHT35: same protocol) on an I2C bus.

    Args:
        i2c: a ``machine.I2C`` (shared; not owned).
        address: 0x44 (ADDR to GND) or 0x45 (ADDR to VDD).
        sleep_ms: the function to wait with.

    Raises:
        SensorError: no device answers at the address.
    """

    metrics = ("temp_c", "rh_pct")

    def __init__(self, i2c, address=0x44, sleep_ms=None):
        self._i2c = i2c
        self._address = address
        self._sleep_ms = sleep_ms
        self._buf = bytearray(6)
        try:
            i2c.writeto(address, b"\x30\xa2")  # soft reset: a known state after a brown-out
        except OSError as exc:
            raise SensorError("SHT31 at " + hex(address) + ": " + repr(exc), "i2c")
        self._wait(2)  # reset takes at most 1.5 ms

    def _wait(self, ms):
        if self._sleep_ms is not None:
            self._sleep_ms(ms)

    def read(self):
        """Take one single-shot measurement.

        Returns:
            ``[("temp_c", t), ("rh_pct", h)]``.

        Raises:
            SensorError: a bus error or a CRC mismatch.
        """
        i2c = self._i2c
        address = self._address
        buf = self._buf
        try:
            i2c.writeto(address, _MEASURE)
            self._wait(_MEASURE_MS)
            try:
                i2c.readfrom_into(address, buf)
            except OSError:
                self._wait(_RETRY_MS)  # still measuring: it NACKs until done
                i2c.readfrom_into(address, buf)
        except OSError as exc:
            raise SensorError("SHT31 at " + hex(address) + ": " + repr(exc), "i2c")
        if crc8(buf, 0, 2) != buf[2] or crc8(buf, 3, 5) != buf[5]:
            raise SensorError("SHT31 at " + hex(address) + ": CRC mismatch", "crc")
        raw_t = (buf[0] << 8) | buf[1]
        raw_h = (buf[3] << 8) | buf[4]
        temp_centi = (17500 * raw_t + 32767) // 65535 - 4500
        rh_centi = (10000 * raw_h + 32767) // 65535
        return [("temp_c", temp_centi / 100), ("rh_pct", rh_centi / 100)]
