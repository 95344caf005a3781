"""A fake ``machine`` module: the parts of MicroPython's machine API the firmware uses.

It is a fake with behaviour, not a mock: the I2C bus routes transfers to
simulated sensors (fakedevices.py) and NACKs unknown addresses as the ports
do (OSError ENODEV); the UART keeps the bytes written to it; the watchdog
notices when it was fed too late; ``deepsleep`` and ``reset`` end the
"boot" the way a board does, by not returning (they raise :class:`DeepSleep`
and :class:`Reset`, which a test catches to boot the node again).

All state lives in one :class:`FakeBoard`, ``machine.board``; a test starts
from a fresh one with :func:`new_board`. The firmware cannot tell this
module from the real one: it only does ``import machine``.
"""

import errno

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_ENODEV = getattr(errno, "ENODEV", 19)
_ETIMEDOUT = getattr(errno, "ETIMEDOUT", 110)


class DeepSleep(Exception):
    """machine.deepsleep() was called: the board powers down and later boots again."""


class Reset(Exception):
    """machine.reset() was called."""


class FakeBoard:
    """Everything attached to the fake board.

    Attributes:
        time: a faketime.FakeTime the watchdog and sensors read (optional).
        i2c_devices: I2C bus id -> {address: device} (see fakedevices.py).
        adc_uv: pin number -> microvolts at the pin.
        dht: pin number -> 5 bytes the DHT22 answers, or an exception to raise.
        uart_out: UART id -> bytearray of everything written.
        reset_cause: what machine.reset_cause() returns.
        deepsleeps: every deepsleep(ms) argument.
        wdt: the WDT once the firmware started one.
        pins: pin number -> Pin, for the pins the firmware configured.
        i2c_opened: (id, scl, sda, freq) of every I2C constructed.
    """

    def __init__(self, time=None, reset_cause=PWRON_RESET):
        self.time = time
        self.i2c_devices = {0: {}, 1: {}}
        self.adc_uv = {}
        self.dht = {}
        self.uart_out = {}
        self.uart_opened = []
        self.reset_cause = reset_cause
        self.deepsleeps = []
        self.wdt = None
        self.pins = {}
        self.i2c_opened = []

    def now_ms(self):
        return self.time.monotonic_ms if self.time is not None else 0


board = FakeBoard()


def new_board(time=None, reset_cause=PWRON_RESET):
    """Replace ``machine.board`` with a fresh board and return it."""
    global board
    board = FakeBoard(time, reset_cause)
    return board


def reset_cause():
    return board.reset_cause


def deepsleep(ms=0):
    board.deepsleeps.append(ms)
    if board.wdt is not None:
        board.wdt.check()
    raise DeepSleep(ms)


def lightsleep(ms=0):
    if board.time is not None:
        board.time.sleep_ms(ms)


def reset():
    raise Reset()


def unique_id():
    return b"\xa4\xcf\x12\x34\x56\x78"


def freq(hz=None):
    return 240000000


def idle():
    pass


def _pin_id(pin):
    return pin.id if isinstance(pin, Pin) else pin


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = mode
        self.pull = pull
        self._value = 0 if value is None else value
        board.pins[id] = self

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0
        return None

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0


class I2C:
    def __init__(self, id=0, scl=None, sda=None, freq=400000, timeout=50000):
        self.id = id
        board.i2c_opened.append((id, _pin_id(scl), _pin_id(sda), freq))

    def _device(self, addr):
        device = board.i2c_devices.get(self.id, {}).get(addr)
        if device is None:
            raise OSError(_ENODEV)  # no ACK: what the ports raise
        return device

    def scan(self):
        return sorted(board.i2c_devices.get(self.id, {}))

    def readfrom_mem_into(self, addr, memaddr, buf):
        self._device(addr).read_mem(memaddr, buf)

    def readfrom_mem(self, addr, memaddr, nbytes):
        buf = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, buf)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf):
        self._device(addr).write_mem(memaddr, bytes(buf))

    def readfrom_into(self, addr, buf):
        self._device(addr).read(buf)

    def readfrom(self, addr, nbytes):
        buf = bytearray(nbytes)
        self.readfrom_into(addr, buf)
        return bytes(buf)

    def writeto(self, addr, buf):
        self._device(addr).write(bytes(buf))
        return 1


SoftI2C = I2C


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        self.pin = _pin_id(pin)
        self.atten = atten

    def _uv(self):
        value = board.adc_uv.get(self.pin, 0)
        if isinstance(value, Exception):
            raise value
        return value

    def read_uv(self):
        return self._uv()

    def read_u16(self):
        return min(65535, (self._uv() * 65535 + 1650000) // 3300000)


def dht_readinto(pin, buf):
    answer = board.dht.get(_pin_id(pin))
    if answer is None:
        raise OSError(_ETIMEDOUT)
    if isinstance(answer, Exception):
        raise answer
    buf[:] = answer


class WDT:
    """Watchdog: remembers the longest gap between feeds in fake time."""

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.last_feed_ms = board.now_ms()
        self.feeds = 0
        self.longest_gap_ms = 0
        self.expired = False
        board.wdt = self

    def check(self):
        gap = board.now_ms() - self.last_feed_ms
        self.longest_gap_ms = max(self.longest_gap_ms, gap)
        if gap > self.timeout:
            self.expired = True  # a real board would have reset here

    def feed(self):
        self.check()
        self.feeds += 1
        self.last_feed_ms = board.now_ms()


class UART:
    def __init__(self, id, baudrate=9600, tx=None, rx=None, **kwargs):
        self.id = id
        self.baudrate = baudrate
        board.uart_opened.append((id, baudrate, _pin_id(tx), _pin_id(rx)))
        board.uart_out.setdefault(id, bytearray())

    def write(self, buf):
        board.uart_out[self.id].extend(buf)
        return len(buf)

    def flush(self):
        pass

    def any(self):
        return 0

    def read(self, n=-1):
        return None
