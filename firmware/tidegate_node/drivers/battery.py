"""Battery voltage on an ADC pin, through a resistor divider.

Theory of operation
-------------------
A LiPo cell (3.0-4.2 V) is above every ADC's range, so it goes through a
divider (two equal resistors halve it: ``divider`` 2.0; see
hardware/sensors.md for values and the 100 nF capacitor that makes a
high-impedance divider readable). The driver averages 8 conversions, which
costs under a millisecond and takes out most of the ESP32 ADC's noise.

Where the port offers ``ADC.read_uv()`` (ESP32: microvolts corrected with
the chip's eFuse calibration) it is used; otherwise ``read_u16()`` scaled
by a 3.3 V reference (RP2040: ADC_VREF is the 3.3 V rail). The result is
rounded to whole millivolts with integer arithmetic: ``battery_v``.
"""

from tidegate_node._compat import const
from tidegate_node.drivers import SensorError

__all__ = ["Battery"]

_SAMPLES = const(8)
_VREF_UV = const(3300000)


class Battery:
    """A battery voltage divider on an ADC.

    Args:
        adc: a ``machine.ADC`` (on the ESP32 built with 11 dB attenuation so
            it reads up to about 3.1 V; tidegate_node.main does that).
        divider: ``(R_top + R_bottom) / R_bottom``.
    """

    metrics = ("battery_v",)

    def __init__(self, adc, divider=2.0):
        self._adc = adc
        self._divider = divider
        self._uv = hasattr(adc, "read_uv")

    def read_mv(self):
        """The battery voltage in whole millivolts.

        Raises:
            SensorError: the ADC failed or reads zero (a broken divider).
        """
        adc = self._adc
        total = 0
        try:
            for _ in range(_SAMPLES):
                total += adc.read_uv() if self._uv else (adc.read_u16() * _VREF_UV) // 65535
        except OSError as exc:
            raise SensorError("battery ADC: " + repr(exc), "adc")
        if total == 0:
            raise SensorError("battery ADC reads 0 V: check the divider", "range")
        # total is 8 x microvolts at the pin; x divider, / 8000 for millivolts.
        return int(total * self._divider / (_SAMPLES * 1000) + 0.5)

    def read(self):
        """Returns ``[("battery_v", volts)]``, to the millivolt."""
        return [("battery_v", self.read_mv() / 1000)]
