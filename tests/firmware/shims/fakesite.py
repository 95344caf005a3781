"""A whole fake site for node tests: board with sensors, Wi-Fi, broker, clock, config file.

``Site`` wires the fakes together the way a real deployment is wired: a
BME280 at 0x76 and an SHT31 at 0x44 on I2C bus 0, a DHT22 on GPIO 4, a
battery divider on GPIO 34 (ESP32 pin map, hardware/esp32.md), an access
point "site" and a broker. :meth:`Site.config` writes a config file (in a
scratch location) from a base config plus overrides.
"""

import json

import machine
import network
import scratch
import umqtt.simple
from fakedevices import FakeBME280, FakeSHT31, dht22_bytes
from faketime import FakeTime
from tidegate_node import _compat

BASE_CONFIG = {
    "device": "node-01",
    "board": "esp32",
    "transport": "mqtt",
    "wifi": {"ssid": "site", "password": "secret"},
    "mqtt": {"host": "192.168.4.1", "keepalive_s": 0},
    "sensors": [{"type": "bme280", "period_s": 60}],
    "boot_delay_ms": 0,
    "ntp": False,
}


class _BootIds:
    """Boot ids drawn in order, so both VMs see the same ones (a board uses its RNG)."""

    def __init__(self):
        self.next = 0xB0070001

    def __call__(self):
        value = self.next
        self.next += 1
        return value


class Site:
    def __init__(self, time=None, reset_cause=machine.PWRON_RESET, sensors=True):
        _compat.random32 = _BootIds()
        self.time = time if time is not None else FakeTime()
        self.board = machine.new_board(self.time, reset_cause)
        self.air = network.new_air({"site": "secret"})
        self.broker = umqtt.simple.new_broker()
        self.bme280 = FakeBME280(measuring_polls=1)
        self.sht31 = FakeSHT31(time=self.time)
        if sensors:
            self.board.i2c_devices[0][0x76] = self.bme280
            self.board.i2c_devices[0][0x44] = self.sht31
            self.board.dht[4] = dht22_bytes(215, 455)
            self.board.adc_uv[34] = 2050000

    def config(self, name="node.json", **overrides):
        config = {}
        for key, value in BASE_CONFIG.items():
            config[key] = value
        config["state_file"] = scratch.path(name + ".state")
        for key, value in overrides.items():
            config[key] = value
        path = scratch.path(name)
        with open(path, "w") as f:
            json.dump(config, f)
        return path

    def payloads(self):
        """[topic, payload] of every message the broker stored, in order."""
        return [[topic, payload] for topic, payload, qos, retain in self.broker.messages]


def remove(name):
    import os

    try:
        os.remove(scratch.path(name))
    except OSError:
        pass
