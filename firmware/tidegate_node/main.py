"""The sample loop: read sensors on their schedules, pack, buffer, send, sleep.

Theory of operation
-------------------
One cycle of :meth:`Node.cycle`:

1. feed the watchdog;
2. read every sensor whose period is due (each sensor has its own period;
   a sensor that fails is counted and skipped, the others are still read);
3. pack the values read into one sample (``d``, ``b``, ``s``, ``ts`` or
   ``up``, ``values``; tidegate_node.encode) and append it to the ring
   (tidegate_node.ring), *before* trying to send it;
4. when ``send_every`` samples are waiting (1 on mains power), bring the
   link up and send from the ring, oldest first, in batches; each batch
   leaves the ring only when the transport confirms it (MQTT: PUBACK);
5. sleep until the next sensor is due: a light sleep that keeps feeding the
   watchdog on mains power, a deep sleep on battery.

Identity of samples (what the gateway deduplicates on): the boot id ``b`` is
32 random bits drawn at a cold boot; ``s`` counts samples from 0 within the
boot. A wake from deep sleep is *not* a new boot: boot id, next sequence
number, uptime and the sensors' schedules are saved to a small state file
(written to a temporary name and renamed, so it is whole or absent) just
before ``machine.deepsleep``, and restored on wake. So on battery a node's
samples keep one boot id and a rising ``s`` across sleeps, and uptime keeps
rising: it counts the time slept (as requested; the RTC's slow clock may be
off by a few percent, which ``su`` makes harmless).

Time: ``ts`` once the clock is set (NTP after Wi-Fi comes up, when
``ntp`` is on; the ESP32's RTC keeps it through deep sleep), ``up``
otherwise. A sample of this boot sent late gets ``su``, its send-time
uptime (always, for uptime samples: it tightens the gateway's mapping).
Samples left in a file ring from an earlier boot are sent without ``su``:
their uptime is from another timeline, and the gateway maps them with what it
learned about that boot.

Health: when the ring had to drop samples or a sensor failed, the next
sample carries ``ring_dropped`` and ``sensor_errors`` (totals since boot),
so losses are visible at the gateway instead of silent.

Hardware is reached through ``machine``, ``network`` and ``umqtt.simple``,
imported by name: the board's modules, or the fakes of tests/firmware/shims.
"""

import json
import os
import struct

from tidegate_node import _compat
from tidegate_node.clock import NOT_SET, Clock
from tidegate_node.config import load as load_config
from tidegate_node.drivers import open_sensor
from tidegate_node.encode import TIME_EPOCH, TIME_UPTIME, encode_sample, with_sent_uptime
from tidegate_node.errors import EncodeError, SensorError, TransportError
from tidegate_node.ring import FileStore, RamStore, Ring

__all__ = ["Node", "Hardware", "run", "ring_record", "split_record", "load_state", "save_state"]

MIN_DEEP_SLEEP_MS = 10  # a cycle that overran its period still sleeps (and wakes) on a timer
_FLAG_UPTIME = 0x01
_RECORD_PREFIX = 5  # flags u8, boot id low 32 bits


def ring_record(packed, uptime, boot):
    """A ring record: flags, the boot's low 32 bits, then the packed sample.

    The prefix lets the sender decide about ``su`` without unpacking the sample.
    """
    return struct.pack(">BI", _FLAG_UPTIME if uptime else 0, boot & 0xFFFFFFFF) + packed


def split_record(record):
    """(is_uptime, boot_low32, packed) of a ring record."""
    flags, boot32 = struct.unpack_from(">BI", record, 0)
    return bool(flags & _FLAG_UPTIME), boot32, record[_RECORD_PREFIX:]


class Hardware:
    """The buses and pins of the board, created on first use and shared.

    Args:
        machine: the ``machine`` module.
        config: the node ``Config``.
        clock: the node's clock (drivers wait with ``sleep_ms``).
    """

    def __init__(self, machine, config, clock):
        self._machine = machine
        self._config = config
        self._i2c = None
        self.sleep_ms = clock.sleep_ms

    def i2c(self):
        if self._i2c is None:
            m = self._machine
            c = self._config.i2c
            self._i2c = m.I2C(c.id, scl=m.Pin(c.scl), sda=m.Pin(c.sda), freq=c.freq)
        return self._i2c

    def pin(self, number):
        return self._machine.Pin(number)

    def adc(self, number):
        m = self._machine
        if self._config.board == "esp32":
            # 11 dB attenuation: the pin reads up to about 3.1 V (2.1 V of a full
            # LiPo behind a 1:2 divider fits).
            return m.ADC(m.Pin(number), atten=m.ADC.ATTN_11DB)
        return m.ADC(m.Pin(number))

    def dht_readinto(self):
        from tidegate_node.drivers.dht22 import find_dht_readinto

        return find_dht_readinto()


def load_state(path):
    """The state saved before deep sleep, or None if missing or unreadable."""
    try:
        with open(path) as f:
            state = json.load(f)
        if not isinstance(state, dict) or state.get("v") != 1:
            return None
        for key in ("boot", "seq", "uptime_ms"):
            if not isinstance(state.get(key), int) or state[key] < 0:
                return None
        if not isinstance(state.get("due"), list):
            return None
        return state
    except (OSError, ValueError):
        return None


def save_state(path, state):
    """Write the state whole or not at all: to ``path + ".tmp"``, then rename."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    try:
        os.remove(path)  # rename does not replace on every MicroPython VFS
    except OSError:
        pass
    os.rename(tmp, path)


class Node:
    """The sample loop over injected parts.

    Args:
        config: the node ``Config``.
        clock: a tidegate_node.clock.Clock.
        sensors: list of ``(SensorConfig, driver or None)``; a None driver is
            opened again when due (a sensor plugged in later).
        hardware: what :func:`tidegate_node.drivers.open_sensor` needs.
        ring: the tidegate_node.ring.Ring (owned by the node from now on).
        transport: an MqttTransport or UartTransport.
        boot: this boot's id; seq: the next sequence number.
        due: per sensor, the uptime (ms) at which it is next due.
        feed: feeds the watchdog.
        ntp: a function that sets the clock (``ntptime.settime``), or None.
        log: a print-like function, or None for silence.
    """

    def __init__(self, config, clock, sensors, hardware, ring, transport, boot, seq=0, due=None,
                 feed=None, ntp=None, log=None):
        self.config = config
        self.clock = clock
        self.sensors = sensors
        self.hardware = hardware
        self.ring = ring
        self.transport = transport
        self.boot = boot
        self.seq = seq
        now = clock.uptime_ms()
        self.due = list(due) if due is not None else [now for _ in sensors]
        self.feed = feed or (lambda: None)
        self.ntp = ntp
        self.log = log or (lambda *args: None)
        self.sensor_errors = 0
        self.samples = 0
        self.sent = 0
        self._reported = (0, 0)  # (ring dropped, sensor errors) last sent as metrics
        self._ntp_at = -1

    # -- sampling -------------------------------------------------------

    def _read_due(self, now):
        values = []
        for index, (spec, driver) in enumerate(self.sensors):
            if self.due[index] > now:
                continue
            # Next due one period later; after a long stall, one period from now
            # (no burst of catch-up samples).
            self.due[index] += spec.period_ms
            if self.due[index] <= now:
                self.due[index] = now + spec.period_ms
            self.feed()
            try:
                if driver is None:
                    driver = open_sensor(spec, self.hardware)
                    self.sensors[index] = (spec, driver)
                for metric, value in driver.read():
                    values.append((spec.prefix + metric, value))
            except SensorError as exc:
                self.sensor_errors += 1
                self.log("sensor", spec.name, exc.reason, exc)
        return values

    def sample(self):
        """Read the due sensors and append one sample to the ring; returns True if one was taken."""
        now = self.clock.uptime_ms()
        values = self._read_due(now)
        health = (self.ring.dropped, self.sensor_errors)
        if health != self._reported and values:
            values.append(("ring_dropped", health[0]))
            values.append(("sensor_errors", health[1]))
            self._reported = health
        if not values:
            return False
        epoch = self.clock.epoch_ms()
        key, time_ms = (TIME_UPTIME, now) if epoch is NOT_SET else (TIME_EPOCH, epoch)
        try:
            packed = encode_sample(self.config.device, self.boot, self.seq, key, time_ms, values)
        except EncodeError as exc:  # a driver returned something unsendable: skip the sample
            self.sensor_errors += 1
            self.log("encode", exc)
            return False
        self.ring.append(ring_record(packed, key == TIME_UPTIME, self.boot))
        self.seq += 1
        self.samples += 1
        return True

    # -- sending --------------------------------------------------------

    def _payloads(self, records):
        boot32 = self.boot & 0xFFFFFFFF
        now = self.clock.uptime_ms()
        out = []
        for record in records:
            uptime, rec_boot, packed = split_record(record)
            out.append(with_sent_uptime(packed, now) if uptime and rec_boot == boot32 else bytes(packed))
        return out

    def flush(self):
        """Send from the ring until it is empty or the link fails; returns the samples delivered."""
        delivered = 0
        transport = self.transport
        while len(self.ring):
            self.feed()
            if not transport.ensure_link():
                self.log("link down:", transport.last_error)
                break
            # Set the clock once per new connection while it is not set.
            if self.ntp is not None and self._ntp_at != transport.connects and self.clock.epoch_ms() is NOT_SET:
                self._ntp_at = transport.connects
                try:
                    self.ntp()
                except Exception as exc:  # NTP is a nicety: never stop sending for it
                    self.log("ntp", exc)
            records = self.ring.peek(transport.max_batch)
            try:
                transport.send(self._payloads(records))
            except TransportError as exc:
                self.ring.pop(exc.delivered)
                delivered += exc.delivered
                self.log("send failed:", exc)
                break
            self.ring.pop(len(records))
            delivered += len(records)
        self.sent += delivered
        return delivered

    # -- the loop -------------------------------------------------------

    def next_wait_ms(self):
        """Milliseconds until the next sensor is due (0 if one is due now)."""
        wait = min(self.due) - self.clock.uptime_ms()
        return wait if wait > 0 else 0

    def cycle(self):
        """One pass: sample what is due, send if it is time; returns the ms to sleep."""
        self.feed()
        self.sample()
        if len(self.ring) >= self.config.send_every:
            self.flush()
        self.feed()
        return self.next_wait_ms()

    def state(self, sleep_ms):
        """What must survive a deep sleep of ``sleep_ms``."""
        return {"v": 1, "boot": self.boot, "seq": self.seq, "uptime_ms": self.clock.uptime_ms() + sleep_ms,
                "due": self.due, "errors": self.sensor_errors, "reported": list(self._reported)}

    def restore(self, state):
        """Take back the counters of :meth:`state` after a wake from deep sleep."""
        self.sensor_errors = state.get("errors", 0)
        reported = state.get("reported")
        if isinstance(reported, list) and len(reported) == 2:
            self._reported = (reported[0], reported[1])

    def light_sleep(self, ms, chunk_ms):
        """Sleep ``ms`` in chunks of at most ``chunk_ms``, feeding the watchdog and the MQTT keepalive."""
        while ms > 0:
            step = ms if ms < chunk_ms else chunk_ms
            self.clock.sleep_ms(step)
            ms -= step
            self.feed()
            self.transport.maybe_ping()


def _open_ring(config, log):
    def report(reason, records):
        log("ring:", records, "records lost,", reason)

    if config.ring.file:
        return Ring(FileStore(config.ring.file, config.ring.size), report)
    return Ring(RamStore(config.ring.size), report)


def _open_transport(config, clock, feed, machine):
    if config.transport == "mqtt":
        from tidegate_node.transport_mqtt import MqttTransport

        return MqttTransport(config, clock, feed)
    from tidegate_node.transport_uart import UartTransport

    return UartTransport(config, machine)


def run(config_path="config.json", time_api=None, max_cycles=None):
    """Start the node: what /main.py calls at every boot and wake.

    Args:
        config_path: the config file.
        time_api: the time API for the clock (tests pass a fake).
        max_cycles: stop after this many cycles on mains power (tests); None
            runs forever. On battery, every call ends in ``machine.deepsleep``.

    Returns:
        The :class:`Node`, when ``max_cycles`` ended the loop.

    Raises:
        ConfigError: the config is invalid (the REPL shows why).
    """
    import machine

    config = load_config(config_path)
    usb = config.transport == "uart" and config.uart.id == "usb"
    log = None if usb else print  # on USB the console *is* the link
    woke = machine.reset_cause() == machine.DEEPSLEEP_RESET
    state = load_state(config.state_file) if woke else None
    base_clock = Clock(time_api)
    if state is None and config.boot_delay_ms:
        # A window for Ctrl-C (mpremote) before the loop, and before deep
        # sleep makes the board unreachable.
        base_clock.sleep_ms(config.boot_delay_ms)
    clock = Clock(time_api, state["uptime_ms"] if state else 0)
    feed = lambda: None  # noqa: E731
    # The RP2040 watchdog cannot be paused through a (light-sleep based) deep
    # sleep on the Pico W, so a battery Pico W runs without it.
    if config.watchdog_ms and not (config.power == "battery" and config.board == "pico_w"):
        wdt = machine.WDT(timeout=config.watchdog_ms)
        feed = wdt.feed
    hardware = Hardware(machine, config, clock)
    sensors = []
    for spec in config.sensors:
        try:
            sensors.append((spec, open_sensor(spec, hardware)))
        except SensorError as exc:
            if log:
                log("sensor", spec.name, "not ready:", exc)
            sensors.append((spec, None))
    ring = _open_ring(config, log or (lambda *a: None))
    transport = _open_transport(config, clock, feed, machine)
    ntp = None
    if config.ntp_host and config.transport == "mqtt":
        def ntp():
            import ntptime

            ntptime.host = config.ntp_host
            ntptime.settime()

    due = state["due"] if state and len(state["due"]) == len(sensors) else None
    boot = state["boot"] if state else _compat.random32()
    node = Node(config, clock, sensors, hardware, ring, transport, boot, state["seq"] if state else 0, due,
                feed, ntp, log)
    if state:
        node.restore(state)
    battery = config.power == "battery"
    chunk = config.watchdog_ms // 2 if config.watchdog_ms else 60000
    cycles = 0
    while True:
        wait = node.cycle()
        cycles += 1
        if battery:
            # deepsleep(0) would mean "until reset" on the ESP32: always a timed sleep.
            wait = wait if wait > MIN_DEEP_SLEEP_MS else MIN_DEEP_SLEEP_MS
            transport.close(radio_off=True)
            save_state(config.state_file, node.state(wait))
            ring.close()
            machine.deepsleep(wait)  # does not return: the board boots again
        if max_cycles is not None and cycles >= max_cycles:
            return node
        node.light_sleep(wait, chunk)
