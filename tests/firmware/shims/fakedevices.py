"""Simulated sensors for the fake I2C bus: real register maps and real calibration data.

* :class:`FakeBME280`: the BME280 register map (chip id, calibration at
  0x88/0xA1/0xE1, ctrl_hum/ctrl_meas/config, status with the "measuring"
  bit, burst data at 0xF7). The temperature and pressure calibration is the
  worked example of Bosch's BMP280 datasheet (section 3.12: adc_T 519888 is
  25.08 degC, adc_P 415148 is 100653.27 Pa); the humidity calibration is
  that of a production BME280 module.
* :class:`FakeSHT31`: single-shot commands, NACK while measuring, words with
  the Sensirion CRC-8, soft reset.

Both count transfers and can be told to fail, so tests can check that a
driver reads in one burst and copes with a disturbed bus.
"""

import errno
import struct

_ENODEV = getattr(errno, "ENODEV", 19)
_EIO = getattr(errno, "EIO", 5)

# dig_T1..T3, dig_P1..P9 (BMP280 datasheet 3.12) and dig_H1..H6.
DATASHEET_CALIBRATION = {
    "T": (27504, 26435, -1000),
    "P": (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000),
    "H": (75, 362, 0, 313, 50, 30),
}


class RegisterDevice:
    """A device with 8-bit registers and auto-increment on burst reads."""

    def __init__(self):
        self.mem = bytearray(256)
        self.reads = 0
        self.writes = 0
        self.fail_next = 0  # fail this many transfers with OSError(EIO)

    def _maybe_fail(self):
        if self.fail_next:
            self.fail_next -= 1
            raise OSError(_EIO)

    def read_mem(self, reg, buf):
        self._maybe_fail()
        self.reads += 1
        for i in range(len(buf)):
            buf[i] = self.mem[(reg + i) & 0xFF]

    def write_mem(self, reg, data):
        self._maybe_fail()
        self.writes += 1
        for i in range(len(data)):
            self.mem[(reg + i) & 0xFF] = data[i]
        self.on_write(reg, data)

    def on_write(self, reg, data):
        pass


class FakeBME280(RegisterDevice):
    """A BME280 in sleep mode that measures once per forced-mode write.

    Args:
        adc_t, adc_p, adc_h: the raw readings its next measurements produce.
        calibration: dict like :data:`DATASHEET_CALIBRATION`.
        measuring_polls: how many status reads show "measuring" after a
            forced-mode write before the data is ready.
        chip_id: 0x60; 0x58 makes it a BMP280.
    """

    def __init__(self, adc_t=519888, adc_p=415148, adc_h=28000, calibration=DATASHEET_CALIBRATION,
                 measuring_polls=2, chip_id=0x60):
        super().__init__()
        self.adc_t = adc_t
        self.adc_p = adc_p
        self.adc_h = adc_h
        self.measuring_polls = measuring_polls
        self.measurements = 0
        self._busy = 0
        m = self.mem
        m[0xD0] = chip_id
        t, p, h = calibration["T"], calibration["P"], calibration["H"]
        m[0x88:0xA0] = struct.pack("<Hhh", *t) + struct.pack("<Hhhhhhhhh", *p)
        m[0xA1] = h[0]
        h4, h5 = h[3] & 0xFFF, h[4] & 0xFFF
        m[0xE1:0xE8] = struct.pack("<hB", h[1], h[2]) + bytes(
            ((h4 >> 4) & 0xFF, (h4 & 0x0F) | ((h5 & 0x0F) << 4), (h5 >> 4) & 0xFF, h[5] & 0xFF)
        )
        # Data registers hold their reset values until the first measurement.
        m[0xF7:0xFF] = b"\x80\x00\x00\x80\x00\x00\x80\x00"

    def on_write(self, reg, data):
        if reg == 0xF4 and data[0] & 0x03 in (1, 2):  # forced mode: measure once
            self.mem[0xF4] = data[0] & 0xFC  # it returns to sleep mode by itself
            self._busy = self.measuring_polls
            if not self._busy:
                self._finish()

    def read_mem(self, reg, buf):
        if reg == 0xF3:
            self.mem[0xF3] = 0x08 if self._busy else 0x00
        super().read_mem(reg, buf)
        if reg == 0xF3 and self._busy:
            self._busy -= 1
            if not self._busy:
                self._finish()  # the next status read sees it done

    def _finish(self):
        self.measurements += 1
        p, t, h = self.adc_p, self.adc_t, self.adc_h
        self.mem[0xF7:0xFF] = bytes((
            (p >> 12) & 0xFF, (p >> 4) & 0xFF, (p & 0x0F) << 4,
            (t >> 12) & 0xFF, (t >> 4) & 0xFF, (t & 0x0F) << 4,
            (h >> 8) & 0xFF, h & 0xFF,
        ))


def sht_crc8(data):
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class FakeSHT31:
    """An SHT31 answering single-shot measurements.

    Args:
        raw_t, raw_h: the raw 16-bit words its measurements return.
        time: a faketime.FakeTime; with it, reading within 15 ms of the
            command is NACKed like the real sensor. Without it, data is ready
            at once.
        corrupt_crc: flip a bit in the next answer's humidity CRC.
    """

    def __init__(self, raw_t=26214, raw_h=32768, time=None):
        self.raw_t = raw_t
        self.raw_h = raw_h
        self.time = time
        self.corrupt_crc = False
        self.commands = []
        self._started_ms = None
        self.fail_next = 0

    def _now(self):
        return self.time.monotonic_ms if self.time is not None else 0

    def write(self, data):
        if self.fail_next:
            self.fail_next -= 1
            raise OSError(_EIO)
        command = (data[0] << 8) | data[1]
        self.commands.append(command)
        if command == 0x2400:
            self._started_ms = self._now()

    def read(self, buf):
        if self._started_ms is None:
            raise OSError(_ENODEV)  # no measurement pending: NACK
        if self.time is not None and self._now() - self._started_ms < 15:
            raise OSError(_ENODEV)  # still measuring: NACK
        self._started_ms = None
        t = bytes(((self.raw_t >> 8) & 0xFF, self.raw_t & 0xFF))
        h = bytes(((self.raw_h >> 8) & 0xFF, self.raw_h & 0xFF))
        h_crc = sht_crc8(h) ^ (0x01 if self.corrupt_crc else 0)
        self.corrupt_crc = False
        answer = t + bytes((sht_crc8(t),)) + h + bytes((h_crc,))
        buf[:] = answer[: len(buf)]

    # The register-style calls are not used by the SHT31: it would NACK them.
    def read_mem(self, reg, buf):
        raise OSError(_ENODEV)

    def write_mem(self, reg, data):
        raise OSError(_ENODEV)


def dht22_bytes(temp_tenths, rh_tenths):
    """The 5 bytes a DHT22 sends for a temperature and humidity in tenths."""
    t = (abs(temp_tenths) & 0x7FFF) | (0x8000 if temp_tenths < 0 else 0)
    data = bytes(((rh_tenths >> 8) & 0xFF, rh_tenths & 0xFF, (t >> 8) & 0xFF, t & 0xFF))
    return data + bytes((sum(data) & 0xFF,))


class FakeAdcU16:
    """An ADC without read_uv, like the RP2040's: read_u16 against a 3.3 V reference."""

    def __init__(self, uv):
        self.uv = uv

    def read_u16(self):
        return min(65535, (self.uv * 65535 + 1650000) // 3300000)
