"""Serial intake: a small shell over pyserial that feeds the gateway.

How this works: one thread owns the port. It opens it by its stable path
(``/dev/serial/by-id/...`` or a udev symlink, so a replug that gives the
adapter a new ``ttyUSBn`` still lands on the same path), reads whatever
arrived, and hands it to :class:`core.serial_decoder.FrameDecoder`. Each event
becomes one :class:`edge.gateway.Message` with ``source="serial"`` and the
port's path as the topic (routes match it like an MQTT topic):

* a good frame: its msgpack payload;
* a JSON line: the line's bytes;
* a bad frame or line: the raw bytes as a :class:`core.intake.DamagedPayload`
  carrying the reason, which the intake turns into a dead letter.

When the port fails (unplug: ``SerialException``/``OSError``), the decoder is
told the stream ended (a partial frame becomes a ``truncated`` dead letter),
the port is closed, and the loop reopens it with exponential backoff until it
comes back. That loop is the only reconnect logic.

Serial has no acknowledgements, so ``ack`` is a no-op: a frame is durable
when the log next syncs, and a crash before that loses it on the gateway
side. The firmware's ring buffer covers link loss, and deduplication makes its
replays safe (docs/serial_format.md, "Guarantees").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import serial

from core.intake import DamagedPayload
from core.serial_decoder import NEED_DATA, Frame, FrameDecoder, FrameError, Line
from edge.gateway import Message
from edge.metrics import Metrics

__all__ = ["SerialConfig", "SerialIntake", "SerialPort"]

log = logging.getLogger("tidegate.serial")


class SerialPort(Protocol):
    """What the intake needs of an open port (a ``serial.Serial``)."""

    @property
    def in_waiting(self) -> int: ...
    def read(self, size: int = 1) -> bytes: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SerialConfig:
    """One serial port to read.

    Attributes:
        path: the port's stable path; also the topic that routes its messages.
        baudrate: line speed (USB CDC-ACM ports ignore it).
        read_timeout_s: how long one read waits for a first byte; bounds how
            fast :meth:`SerialIntake.stop` returns.
        reopen_min_s: first wait after the port failed or could not be opened.
        reopen_max_s: the longest wait between attempts (the backoff doubles up to it).
        exclusive: take an advisory lock so that no second reader steals bytes.
    """

    path: str
    baudrate: int = 115200
    read_timeout_s: float = 0.1
    reopen_min_s: float = 0.1
    reopen_max_s: float = 5.0
    exclusive: bool = True

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("serial.path must name the port (a stable /dev/serial/by-id/... path)")
        if self.baudrate <= 0:
            raise ValueError(f"serial.baudrate {self.baudrate} must be positive")
        if not 0 < self.read_timeout_s <= 5:
            raise ValueError(f"serial.read_timeout_s {self.read_timeout_s} is outside (0, 5]")
        if not 0 < self.reopen_min_s <= self.reopen_max_s:
            raise ValueError("serial.reopen_min_s must be positive and at most serial.reopen_max_s")


def _no_ack() -> None:
    """Serial has no acknowledgements."""


def _describe(metrics: Metrics) -> None:
    metrics.describe("tidegate_serial_frames_total", "counter", "Frames and JSON lines read from serial ports")
    metrics.describe("tidegate_serial_errors_total", "counter", "Bad frames and lines read from serial ports, per reason")
    metrics.describe("tidegate_serial_opens_total", "counter", "Times a serial port was opened")
    metrics.describe("tidegate_serial_connected", "gauge", "1 while the serial port is open")


class SerialIntake:
    """Reads one serial port in its own thread and submits what it decodes.

    Args:
        config: the port.
        submit: where messages go (``Gateway.submit``); may block (backpressure).
        metrics: where counts go.
        clock: wall-clock time in seconds, for ``received_ms``.
        opener: opens the port; ``serial.Serial`` unless a test injects another.
    """

    def __init__(
        self,
        config: SerialConfig,
        submit: Callable[[Message], None],
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        opener: Callable[[SerialConfig], SerialPort] | None = None,
    ) -> None:
        self.config = config
        self._submit = submit
        self.metrics = metrics or Metrics()
        self._clock = clock
        self._opener = opener or _open_serial
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._labels = {"port": config.path}
        self.connected = threading.Event()
        _describe(self.metrics)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"tidegate-serial:{self.config.path}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading; a partial frame is submitted as a ``truncated`` dead letter."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def run(self) -> None:
        """The reconnect loop: open, read until the port fails, wait, open again."""
        delay = self.config.reopen_min_s
        failing = False
        while not self._stop.is_set():
            try:
                port = self._opener(self.config)
            except (serial.SerialException, OSError, ValueError) as exc:
                if not failing:
                    log.warning("cannot open serial port %s: %s; retrying", self.config.path, exc)
                    failing = True
                self._stop.wait(delay)
                delay = min(delay * 2, self.config.reopen_max_s)
                continue
            failing = False
            delay = self.config.reopen_min_s
            log.info("serial port %s open", self.config.path)
            self.metrics.inc("tidegate_serial_opens_total", labels=self._labels)
            self.metrics.set("tidegate_serial_connected", 1, self._labels)
            self.connected.set()
            try:
                self._read(port)
            finally:
                self.connected.clear()
                self.metrics.set("tidegate_serial_connected", 0, self._labels)
                try:
                    port.close()
                except (serial.SerialException, OSError):
                    pass
            if not self._stop.is_set():
                self._stop.wait(delay)

    def _read(self, port: SerialPort) -> None:
        decoder = FrameDecoder()
        try:
            while not self._stop.is_set():
                data = port.read(max(1, port.in_waiting))
                if data:
                    decoder.receive_data(data)
                    self._drain(decoder)
        except (serial.SerialException, OSError) as exc:
            log.warning("serial port %s failed: %s; reopening", self.config.path, exc)
        decoder.receive_data(b"")  # the stream ended: report a partial frame
        self._drain(decoder)

    def _drain(self, decoder: FrameDecoder) -> None:
        received_ms = int(self._clock() * 1000)
        while True:
            event = decoder.next_event()
            if event is NEED_DATA:
                return
            if isinstance(event, Frame):
                payload: bytes = event.payload
                self.metrics.inc("tidegate_serial_frames_total", labels=self._labels)
            elif isinstance(event, Line):
                payload = event.text
                self.metrics.inc("tidegate_serial_frames_total", labels=self._labels)
            elif isinstance(event, FrameError):
                payload = DamagedPayload(event.raw, event.reason, event.message)
                self.metrics.inc("tidegate_serial_errors_total", labels={**self._labels, "reason": event.reason})
            else:  # pragma: no cover - the decoder returns nothing else
                continue
            self._submit(Message("serial", self.config.path, payload, received_ms, _no_ack))


def _open_serial(config: SerialConfig) -> SerialPort:
    port: SerialPort = serial.Serial(
        config.path, config.baudrate, timeout=config.read_timeout_s, exclusive=config.exclusive
    )
    return port
