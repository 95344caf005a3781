"""A fake ``network`` module: a WLAN station and the radio environment it sees.

``network.air`` says which access points exist (ssid -> password), whether
they are reachable (``air.up``) and how many ``isconnected()`` polls an
association takes. The status codes are those of the ESP32 and RP2040 ports.
An MQTT client (umqtt/simple.py here) can only reach the broker while the
station is connected.
"""

STA_IF = 0
AP_IF = 1

STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_WRONG_PASSWORD = -3
STAT_NO_AP_FOUND = -2
STAT_CONNECT_FAIL = -1
STAT_GOT_IP = 3


class Air:
    def __init__(self, aps=None, polls_to_connect=3):
        self.aps = dict(aps or {})
        self.up = True
        self.polls_to_connect = polls_to_connect
        self.connects = 0  # connect() calls, for assertions
        self.station = None

    @property
    def connected(self):
        return self.station is not None and self.station.isconnected()


air = Air()


def new_air(aps=None, polls_to_connect=3):
    """Replace ``network.air`` with a fresh radio environment and return it."""
    global air
    air = Air(aps, polls_to_connect)
    return air


class WLAN:
    def __init__(self, interface=STA_IF):
        self.interface = interface
        self._active = False
        self._status = STAT_IDLE
        self._polls = 0
        self._ssid = None
        air.station = self

    def active(self, value=None):
        if value is None:
            return self._active
        self._active = bool(value)
        if not value:
            self._status = STAT_IDLE
        return None

    def connect(self, ssid, key=None):
        if not self._active:
            raise OSError("WLAN not active")
        air.connects += 1
        self._ssid = ssid
        self._polls = 0
        self._status = STAT_CONNECTING

    def disconnect(self):
        self._status = STAT_IDLE

    def _advance(self):
        if self._status != STAT_CONNECTING:
            return
        self._polls += 1
        if not air.up or self._ssid not in air.aps:
            if self._polls >= air.polls_to_connect:
                self._status = STAT_NO_AP_FOUND
        elif self._polls >= air.polls_to_connect:
            self._status = STAT_GOT_IP

    def status(self, param=None):
        self._advance()
        return self._status

    def isconnected(self):
        self._advance()
        if self._status == STAT_GOT_IP and not air.up:
            self._status = STAT_CONNECT_FAIL  # the AP went away
        return self._active and self._status == STAT_GOT_IP

    def ifconfig(self):
        return ("192.168.4.23", "255.255.255.0", "192.168.4.1", "192.168.4.1")

    def config(self, *args, **kwargs):
        if args == ("mac",):
            return b"\xa4\xcf\x12\x34\x56\x78"
        return None
