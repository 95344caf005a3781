"""The node's configuration: a JSON file on the board (``config.json``), validated once at start.

A config names the device, the transport (MQTT over Wi-Fi, or serial frames
over a UART or the USB port), the sensors with a sample period each, and the
power mode. Everything has a default except ``device``; pin defaults come from
the board (``"board": "esp32"`` or ``"pico_w"``), matching the wiring tables
in hardware/esp32.md and hardware/pico-w.md. firmware/config.example.json
shows every key.

Validation happens here, on the board at boot and on the host when
``tidegate firmware deploy --config`` checks the file before copying it, so a
typo is reported with its path (``sensors[1].period_s: ...``) instead of
crashing the sample loop later. The objects are plain classes with
``__slots__`` (MicroPython has no dataclasses); treat them as read-only.
"""

import json

from tidegate_node.errors import ConfigError

__all__ = [
    "ConfigError",
    "Config",
    "SensorConfig",
    "BOARDS",
    "SENSOR_TYPES",
    "SENSOR_METRICS",
    "TRANSPORTS",
    "load",
    "from_dict",
]

TRANSPORTS = ("mqtt", "uart")
POWER_MODES = ("mains", "battery")
SENSOR_TYPES = ("bme280", "sht31", "dht22", "battery")
# The metrics each driver returns (hardware/sensors.md); "prefix" keeps two
# sensors of the same kind apart.
SENSOR_METRICS = {
    "bme280": ("temp_c", "pressure_hpa", "rh_pct"),
    "sht31": ("temp_c", "rh_pct"),
    "dht22": ("temp_c", "rh_pct"),
    "battery": ("battery_v",),
}
# Added by the sample loop to report losses (tidegate_node.main).
HEALTH_METRICS = ("ring_dropped", "sensor_errors")

# Default pins per board: the wiring tables of hardware/esp32.md and
# hardware/pico-w.md. "uart_id" 1 on the ESP32 keeps UART0 (the USB bridge
# and REPL) free; on the Pico W, "usb" sends frames over the USB CDC port.
BOARDS = {
    "esp32": {
        "i2c_id": 0, "sda": 21, "scl": 22,
        "uart_id": 1, "tx": 17, "rx": 16,
        "dht_pin": 4, "battery_pin": 34, "battery_divider": 2.0,
    },
    "pico_w": {
        "i2c_id": 0, "sda": 4, "scl": 5,
        "uart_id": 0, "tx": 0, "rx": 1,
        "dht_pin": 15, "battery_pin": 26, "battery_divider": 2.0,
    },
}

_I2C_DEFAULT_ADDRESS = {"bme280": 0x76, "sht31": 0x44}


class _Reader:
    """Typed access to one JSON object, with the key path for error messages."""

    def __init__(self, data, path):
        if not isinstance(data, dict):
            raise ConfigError((path or "config") + ": must be an object")
        self.data = data
        self.path = path

    def name(self, key):
        return self.path + "." + key if self.path else key

    def get(self, key, kinds, default, check=None, why=""):
        if not isinstance(kinds, tuple):
            kinds = (kinds,)
        value = self.data.get(key, default)
        if value is None and default is None:
            return None
        # bool is an int: a number field never accepts true/false.
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(self.name(key) + ": must be " + why + ", got " + repr(value))
        if not isinstance(value, kinds) or (check is not None and not check(value)):
            raise ConfigError(self.name(key) + ": must be " + why + ", got " + repr(value))
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        return value

    def sub(self, key):
        return _Reader(self.data.get(key) or {}, self.name(key))


def _text(max_len):
    return lambda v: 0 < len(v.encode()) <= max_len


def _between(low, high):
    return lambda v: low <= v <= high


class WifiConfig:
    __slots__ = ("ssid", "password", "timeout_ms")

    def __init__(self, r):
        self.ssid = r.get("ssid", str, None, _text(32), "1..32 bytes of text")
        self.password = r.get("password", str, "", None, "text")
        self.timeout_ms = int(r.get("timeout_s", (int, float), 20, _between(1, 120), "1..120 seconds") * 1000)


class MqttConfig:
    __slots__ = ("host", "port", "user", "password", "topic", "client_id", "keepalive_s", "timeout_ms", "pack_max")

    def __init__(self, r, device):
        self.host = r.get("host", str, None, _text(253), "a host name or address")
        self.port = r.get("port", int, 1883, _between(1, 65535), "a port number")
        self.user = r.get("user", str, None, _text(255), "1..255 bytes of text")
        self.password = r.get("password", str, None, None, "text")
        topic = r.get("topic", str, "sensors/{device}", _text(200), "an MQTT topic")
        if "+" in topic or "#" in topic:
            raise ConfigError(r.name("topic") + ": must not hold wildcards")
        self.topic = topic.replace("{device}", device)
        self.client_id = r.get("client_id", str, "tidegate-" + device, _text(23), "1..23 bytes of text")
        self.keepalive_s = r.get("keepalive_s", int, 60, _between(0, 65535), "0..65535 seconds")
        self.timeout_ms = int(r.get("timeout_s", (int, float), 10, _between(1, 60), "1..60 seconds") * 1000)
        # How many buffered samples one PUBLISH may carry as a msgpack array.
        self.pack_max = r.get("pack_max", int, 10, _between(1, 100), "1..100 samples")


class UartConfig:
    __slots__ = ("id", "baudrate", "tx", "rx")

    def __init__(self, r, board):
        uart_id = r.get("id", (int, str), board["uart_id"], lambda v: v == "usb" or isinstance(v, int) and 0 <= v <= 2,
                        "0..2 or \"usb\"")
        self.id = uart_id
        self.baudrate = r.get("baudrate", int, 115200, _between(1200, 3000000), "1200..3000000")
        self.tx = r.get("tx", int, board["tx"], _between(0, 48), "a GPIO number")
        self.rx = r.get("rx", int, board["rx"], _between(0, 48), "a GPIO number")


class I2cConfig:
    __slots__ = ("id", "sda", "scl", "freq")

    def __init__(self, r, board):
        self.id = r.get("id", int, board["i2c_id"], _between(0, 1), "0 or 1")
        self.sda = r.get("sda", int, board["sda"], _between(0, 48), "a GPIO number")
        self.scl = r.get("scl", int, board["scl"], _between(0, 48), "a GPIO number")
        self.freq = r.get("freq", int, 100000, _between(10000, 1000000), "10000..1000000 Hz")


class SensorConfig:
    """One sensor: its type, where it is attached, its sample period and metric prefix."""

    __slots__ = ("type", "name", "period_ms", "address", "pin", "divider", "prefix")

    def __init__(self, r, board, default_period_s):
        kind = r.get("type", str, None, lambda v: v in SENSOR_TYPES, "one of " + ", ".join(SENSOR_TYPES))
        if kind is None:
            raise ConfigError(r.name("type") + ": is required")
        self.type = kind
        self.name = r.get("name", str, kind, _text(32), "1..32 bytes of text")
        period = r.get("period_s", (int, float), default_period_s, _between(1, 86400), "1..86400 seconds")
        self.period_ms = int(period * 1000)
        self.address = None
        self.pin = None
        self.divider = None
        if kind in _I2C_DEFAULT_ADDRESS:
            self.address = r.get("address", int, _I2C_DEFAULT_ADDRESS[kind], _between(0x08, 0x77), "an I2C address")
        elif kind == "dht22":
            self.pin = r.get("pin", int, board["dht_pin"], _between(0, 48), "a GPIO number")
        else:
            self.pin = r.get("pin", int, board["battery_pin"], _between(0, 48), "a GPIO number")
            self.divider = r.get("divider", (int, float), board["battery_divider"], _between(1.0, 20.0), "1..20")
        # Metric names are "<prefix><metric>": "" by default, e.g. "out_" for a second sensor.
        self.prefix = r.get("prefix", str, "", lambda v: len(v) <= 32, "at most 32 bytes")


class RingConfig:
    __slots__ = ("size", "file")

    def __init__(self, r, power):
        self.size = r.get("bytes", int, 8192, _between(512, 1 << 24), "512..16777216 bytes")
        # On battery the node deep-sleeps, which clears RAM: the ring must be a file.
        default_file = "tidegate.ring" if power == "battery" else None
        self.file = r.get("file", str, default_file, _text(64), "a file name")
        if power == "battery" and self.file is None:
            raise ConfigError(r.name("file") + ": is required on battery (deep sleep clears RAM)")


class Config:
    """The whole node configuration; see the module docstring and config.example.json."""

    __slots__ = (
        "device", "board", "transport", "wifi", "mqtt", "uart", "i2c", "sensors", "power",
        "send_every", "ring", "watchdog_ms", "ntp_host", "boot_delay_ms", "state_file",
    )

    def __init__(self, data):
        r = _Reader(data, "")
        self.device = r.get("device", str, None, _text(255), "1..255 bytes of text")
        if self.device is None:
            raise ConfigError("device: is required")
        board_name = r.get("board", str, "esp32", lambda v: v in BOARDS, "one of " + ", ".join(BOARDS))
        self.board = board_name
        board = BOARDS[board_name]
        self.transport = r.get("transport", str, "mqtt", lambda v: v in TRANSPORTS, "one of " + ", ".join(TRANSPORTS))
        self.wifi = None
        self.mqtt = None
        self.uart = None
        if self.transport == "mqtt":
            self.wifi = WifiConfig(r.sub("wifi"))
            if self.wifi.ssid is None:
                raise ConfigError("wifi.ssid: is required with the mqtt transport")
            self.mqtt = MqttConfig(r.sub("mqtt"), self.device)
            if self.mqtt.host is None:
                raise ConfigError("mqtt.host: is required with the mqtt transport")
        else:
            self.uart = UartConfig(r.sub("uart"), board)
        self.i2c = I2cConfig(r.sub("i2c"), board)
        default_period = r.get("period_s", (int, float), 60, _between(1, 86400), "1..86400 seconds")
        sensors = data.get("sensors", [])
        if not isinstance(sensors, list) or not sensors:
            raise ConfigError("sensors: must be a non-empty list")
        self.sensors = [SensorConfig(_Reader(s, "sensors[" + str(i) + "]"), board, default_period)
                        for i, s in enumerate(sensors)]
        names = [s.name for s in self.sensors]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError("sensors: name " + repr(name) + " is used twice; give each a \"name\"")
        metrics = list(HEALTH_METRICS)
        for i, spec in enumerate(self.sensors):
            for metric in SENSOR_METRICS[spec.type]:
                if spec.prefix + metric in metrics:
                    raise ConfigError("sensors[" + str(i) + "]: metric " + repr(spec.prefix + metric)
                                      + " is already taken; set a \"prefix\" such as \"" + spec.type + "_\"")
                metrics.append(spec.prefix + metric)
        self.power = r.get("power", str, "mains", lambda v: v in POWER_MODES, "one of " + ", ".join(POWER_MODES))
        self.send_every = r.get("send_every", int, 1, _between(1, 1000), "1..1000 samples")
        self.ring = RingConfig(r.sub("ring"), self.power)
        self.watchdog_ms = r.get("watchdog_ms", int, 8000, lambda v: v == 0 or 1000 <= v <= 8388,
                                 "0 (off) or 1000..8388 ms (the RP2040 maximum)")
        ntp = r.get("ntp", (bool, str), True, None, "true, false or a host name")
        self.ntp_host = "pool.ntp.org" if ntp is True else (ntp or None)
        self.boot_delay_ms = r.get("boot_delay_ms", int, 3000, _between(0, 60000), "0..60000 ms")
        self.state_file = r.get("state_file", str, "tidegate.state", _text(64), "a file name")


def from_dict(data):
    """Validate a parsed config.

    Raises:
        ConfigError: a key is missing or has a bad value; the message names it.
    """
    return Config(data)


def load(path="config.json"):
    """Read and validate the config file (relative names are under the board's cwd, /).

    Raises:
        ConfigError: the file is missing, is not JSON, or is invalid.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise ConfigError(path + ": cannot read: " + str(exc))
    except ValueError as exc:
        raise ConfigError(path + ": not valid JSON: " + str(exc))
    return from_dict(data)
