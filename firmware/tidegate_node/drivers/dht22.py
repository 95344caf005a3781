"""DHT22 / AM2302 (temperature, humidity) on one GPIO pin.

Theory of operation
-------------------
The DHT22 answers a start pulse with 40 bits whose value is a pulse width;
decoding that needs microsecond timing with interrupts off, which the ports
do in C: ``dht_readinto(pin, buf)`` (``machine.dht_readinto`` on ports that
have it, ``esp.dht_readinto`` on the ESP32, ``rp2``'s on the Pico), the same
primitive MicroPython's own ``dht`` module uses. It fills our 5-byte buffer,
allocated at start: humidity MSB, LSB, temperature MSB (bit 7 is the sign),
LSB, checksum (the low byte of the sum of the first four).

The sensor needs 2 s between reads (datasheet); a read sooner gets the
previous answer or garbage, so the sample loop's minimum period for a DHT22
is 2 s (tidegate_node.config enforces periods of at least 1 s; set 2 s or
more). Units are 0.1 %RH and 0.1 degC, so values are ``raw / 10``.
"""

from tidegate_node.drivers import SensorError

__all__ = ["DHT22", "find_dht_readinto"]


def find_dht_readinto():
    """The port's ``dht_readinto(pin, buf)``, or None where the port has none."""
    import sys

    try:
        import machine

        if hasattr(machine, "dht_readinto"):
            return machine.dht_readinto
    except ImportError:
        pass
    name = "esp" if sys.platform.startswith("esp") else sys.platform
    try:
        return getattr(__import__(name), "dht_readinto")
    except (ImportError, AttributeError):
        return None


class DHT22:
    """One DHT22 on a GPIO pin.

    Args:
        pin: a ``machine.Pin`` (open drain with a 4.7-10 kohm pull-up; see
            hardware/sensors.md).
        readinto: the port's ``dht_readinto``; see :func:`find_dht_readinto`.

    Raises:
        SensorError: the port has no ``dht_readinto``.
    """

    metrics = ("temp_c", "rh_pct")

    def __init__(self, pin, readinto):
        if readinto is None:
            raise SensorError("DHT22: this MicroPython port has no dht_readinto", "unsupported")
        self._pin = pin
        self._readinto = readinto
        self._buf = bytearray(5)

    def read(self):
        """Read the sensor.

        Returns:
            ``[("temp_c", t), ("rh_pct", h)]``.

        Raises:
            SensorError: no answer ("timeout"), a checksum mismatch ("crc"), or
                values outside the sensor's range ("range").
        """
        buf = self._buf
        try:
            self._readinto(self._pin, buf)
        except OSError as exc:
            raise SensorError("DHT22: no answer: " + repr(exc), "timeout")
        if (buf[0] + buf[1] + buf[2] + buf[3]) & 0xFF != buf[4]:
            raise SensorError("DHT22: checksum mismatch", "crc")
        rh_tenths = (buf[0] << 8) | buf[1]
        t_tenths = ((buf[2] & 0x7F) << 8) | buf[3]
        if buf[2] & 0x80:
            t_tenths = -t_tenths
        if rh_tenths > 1000 or not -400 <= t_tenths <= 800:
            raise SensorError("DHT22: out of range (" + str(t_tenths) + ", " + str(rh_tenths) + ")", "range")
        return [("temp_c", t_tenths / 10), ("rh_pct", rh_tenths / 10)]
