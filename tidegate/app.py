"""``tidegate run``: the gateway, the bridge and (for demos) a broker and a fleet, in one process.

How this works: the log is opened by edge's file adapter and shared, under its
lock, by two threads: the gateway's writer (fed by the MQTT intake) and the
bridge's forwarder. The composition root hands the log to the bridge as a
``LogSource``, so bridge never imports edge. A third loop here prints a
one-line summary each second.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable

from bridge.forwarder import Forwarder
from bridge.transports import Transport, open_upstream
from edge.gateway import Gateway, Message
from edge.logstore import open_log
from edge.metrics import Metrics
from edge.mosquitto import Mosquitto
from edge.mqtt_intake import MqttIntake, Received
from edge.serial_intake import SerialIntake
from edge.simulator import Fleet, FleetConfig
from tidegate.config import DEFAULT_ROUTES, RunConfig

__all__ = ["RunConfig", "Service", "DEFAULT_ROUTES"]

log = logging.getLogger("tidegate")

class Service:
    """Everything ``tidegate run`` starts, with an orderly stop."""

    def __init__(self, config: RunConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.broker: Mosquitto | None = None
        self.fleet: Fleet | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.log = open_log(config.data_dir / "log", config.log)
        self.transport: Transport = open_upstream(config.upstream, config.upstream_settings)
        self.gateway = Gateway(self.log, config.routes, self.metrics, clock=clock)
        self.forwarder = Forwarder(
            self.log, self.transport, config.gateway_id, config.log.window_ms, config.batch, on_sent=self._count_sent
        )
        self.intake: MqttIntake | None = None
        self.serial_intakes: list[SerialIntake] = []
        self.upstream_ok = True

    def _count_sent(self, stream: str, readings: int, size: int) -> None:
        self.metrics.inc("tidegate_batches_out_total", labels={"stream": stream})
        self.metrics.inc("tidegate_readings_out_total", readings, {"stream": stream})
        self.metrics.inc("tidegate_uplink_bytes_total", size)

    def start(self) -> None:
        mqtt = self.config.mqtt
        if self.config.start_broker:
            self.broker = Mosquitto(self.config.data_dir / "mosquitto", port=mqtt.port)
            self.broker.start()
            log.info("started Mosquitto on 127.0.0.1:%d", self.broker.port)
        self.gateway.start()

        def on_message(received: Received) -> None:
            self.gateway.submit(
                Message("mqtt", received.topic, received.payload, int(self.clock() * 1000), lambda: intake.ack(received))
            )

        intake = MqttIntake(
            mqtt,
            on_message,
            on_event=lambda e: self.metrics.inc("tidegate_mqtt_events_total", labels={"event": e}),
            on_broker_dropped=lambda n: self.metrics.set("tidegate_broker_dropped", n),
        )
        self.intake = intake
        intake.start()
        for port in self.config.serial:
            serial_intake = SerialIntake(port, self.gateway.submit, self.metrics, clock=self.clock)
            serial_intake.start()
            self.serial_intakes.append(serial_intake)
        self._spawn(self._forward_loop, "tidegate-bridge")
        if self.config.simulate_sensors:
            self.fleet = Fleet(FleetConfig(mqtt.host, mqtt.port, self.config.simulate_sensors, self.config.simulate_rate))
            self.fleet.start()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _forward_loop(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            result = self.forwarder.forward_once(int(self.clock() * 1000))
            self.upstream_ok = not result.failed
            if result.failed:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.05
            if not result.batches:
                self._stop.wait(0.02)

    def backlog(self) -> int:
        return sum(self.forwarder.backlog(s) for s in self.log.streams() if not s.startswith("_"))

    def summary(self) -> str:
        m = self.metrics
        return (
            f"in {int(m.total('tidegate_readings_in_total')):,} readings"
            f" | rejected {int(m.total('tidegate_rejected_total')):,}"
            f" | batches out {int(m.total('tidegate_batches_out_total')):,}"
            f" | bytes out {int(m.total('tidegate_uplink_bytes_total')):,}"
            f" | backlog {self.backlog():,}"
            f" | upstream {'ok' if self.upstream_ok else 'DOWN'}"
        )

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.intake is not None:
            self.intake.stop()
        for serial_intake in self.serial_intakes:
            serial_intake.stop()
        self.gateway.stop()
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.transport.close()
        self.log.close()
        if self.broker is not None:
            self.broker.stop()

    def run_forever(self, duration_s: float | None = None, status: bool = True) -> None:
        """Run until SIGINT/SIGTERM (or ``duration_s``), printing the summary line each second."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        tty = sys.stderr.isatty()
        start = time.monotonic()
        try:
            while not self._stop.wait(1.0):
                if self.gateway.failed.is_set():
                    raise SystemExit(f"tidegate: log writer failed: {self.gateway.failure}")
                if status:
                    line = self.summary()
                    sys.stderr.write(f"\r{line}\033[K" if tty else line + "\n")
                    sys.stderr.flush()
                if duration_s is not None and time.monotonic() - start >= duration_s:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            if status and tty:
                sys.stderr.write("\n")
            self.stop()

