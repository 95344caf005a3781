"""Read every sensor in config.json once and print what it returns: a wiring check.

On a board, after `tidegate firmware deploy`:

    mpremote connect /dev/ttyUSB0 run firmware/example_read_sensors.py

It prints the I2C addresses that answer (0x76/0x77 BME280, 0x44/0x45 SHT31),
then one line per configured sensor: its values, or the error and its reason.
"""

import machine

from tidegate_node.clock import Clock
from tidegate_node.config import load
from tidegate_node.drivers import open_sensor
from tidegate_node.errors import SensorError
from tidegate_node.main import Hardware


def main(path="config.json"):
    config = load(path)
    hardware = Hardware(machine, config, Clock())
    if any(s.type in ("bme280", "sht31") for s in config.sensors):
        print("i2c", config.i2c.id, "answers at", [hex(a) for a in hardware.i2c().scan()])
    for spec in config.sensors:
        try:
            print(spec.name, open_sensor(spec, hardware).read())
        except SensorError as exc:
            print(spec.name, "error:", exc.reason, exc)


main()
