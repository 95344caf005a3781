"""Sensor drivers: each reads one sensor into ``(metric, value)`` pairs.

Every driver follows the same rules (micropython-async's TUTORIAL.md on
drivers under tight memory):

* buffers are allocated once, in ``__init__``, and filled with
  ``readfrom_mem_into`` / ``readfrom_into``: a sample allocates no bytearrays;
* sensors are polled from the sample loop, never from an interrupt;
* ``read()`` returns a list of ``(metric, value)`` pairs with the metric
  names of hardware/sensors.md, values rounded to the sensor's resolution
  with integer arithmetic (so a board, the test VM and CPython agree bit for
  bit);
* any bus error or implausible data raises :class:`SensorError`; the sample
  loop counts it and samples the other sensors.

Driver modules load lazily through :func:`open_sensor`, so a node only keeps
the drivers its config names in RAM (and ``tidegate firmware deploy`` only
copies those).
"""

from tidegate_node.errors import SensorError

__all__ = ["SensorError", "open_sensor"]


def open_sensor(spec, hardware):
    """Build the driver for one configured sensor.

    Args:
        spec: a ``tidegate_node.config.SensorConfig``.
        hardware: gives the shared buses and pins (``i2c()``, ``pin(n)``,
            ``adc(n)``, ``dht_readinto``); see tidegate_node.main.Hardware.

    Raises:
        SensorError: the sensor does not answer at start-up.
    """
    kind = spec.type
    if kind == "bme280":
        from tidegate_node.drivers.bme280 import BME280

        return BME280(hardware.i2c(), spec.address, hardware.sleep_ms)
    if kind == "sht31":
        from tidegate_node.drivers.sht31 import SHT31

        return SHT31(hardware.i2c(), spec.address, hardware.sleep_ms)
    if kind == "dht22":
        from tidegate_node.drivers.dht22 import DHT22

        return DHT22(hardware.pin(spec.pin), hardware.dht_readinto())
    if kind == "battery":
        from tidegate_node.drivers.battery import Battery

        return Battery(hardware.adc(spec.pin), spec.divider)
    raise ValueError("unknown sensor type " + repr(kind))
