"""A fleet of virtual sensors publishing to MQTT, for demos, tests and benchmarks.

Each sensor publishes a temperature and a humidity reading every period, on
``sensors/<device>``, rotating the payload format between JSON, msgpack and
CBOR so every decoder is exercised. Values follow a slow random walk, like a
real room.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cbor2
import paho.mqtt.client as paho
import umsgpack
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

__all__ = ["FleetConfig", "Fleet", "encode_sample"]

_ENCODERS: tuple[Callable[[dict[str, object]], bytes], ...] = (
    lambda v: json.dumps(v, separators=(",", ":")).encode(),
    umsgpack.packb,
    cbor2.dumps,
)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    sensors: int = 20
    rate_per_sensor: float = 1.0  # samples per second per sensor
    topic_prefix: str = "sensors"
    qos: int = 1
    seed: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.sensors <= 100_000:
            raise ValueError(f"sensors {self.sensors} is outside 1..100000")
        if not 0 < self.rate_per_sensor <= 10_000:
            raise ValueError(f"rate_per_sensor {self.rate_per_sensor} is outside (0, 10000]")


def encode_sample(index: int, device: str, ts_ms: int, seq: int, temp: float, rh: float) -> bytes:
    """One sample of one sensor, in the format its sequence number selects."""
    body = {"d": device, "ts": ts_ms, "seq": seq, "values": {"temp_c": temp, "rh_pct": rh}}
    return _ENCODERS[(index + seq) % len(_ENCODERS)](body)


class Fleet:
    """Publishes until stopped, or until ``total`` samples when given.

    ``published`` counts samples the broker acknowledged (PUBACK), which is
    what an end-to-end check compares against.
    """

    def __init__(self, config: FleetConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.published = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"tidegate-sim-{config.seed}", protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.on_publish = self._handle_publish

    def _handle_publish(self, client: object, userdata: object, mid: int, reason: object, properties: object) -> None:
        with self._lock:
            self.published += 1

    def run(self, total: int | None = None, duration_s: float | None = None) -> None:
        """Publish in the calling thread; returns when done or stopped."""
        cfg = self.config
        rng = random.Random(cfg.seed)
        devices = [f"sim-{cfg.seed:02d}-{i:04d}" for i in range(cfg.sensors)]
        temps = [20 + rng.random() * 5 for _ in devices]
        self._client.connect(cfg.host, cfg.port, keepalive=30)
        self._client.loop_start()
        period = 1.0 / (cfg.rate_per_sensor * cfg.sensors)
        start = time.monotonic()
        seq = 0
        try:
            while not self._stop.is_set():
                if total is not None and self.sent >= total:
                    break
                if duration_s is not None and time.monotonic() - start >= duration_s:
                    break
                index = self.sent % cfg.sensors
                if index == 0:
                    seq += 1
                temps[index] += rng.gauss(0, 0.05)
                payload = encode_sample(
                    index, devices[index], int(self.clock() * 1000), seq,
                    round(temps[index], 2), round(45 + rng.random() * 10, 1),
                )
                self._client.publish(f"{cfg.topic_prefix}/{devices[index]}", payload, qos=cfg.qos)
                self.sent += 1
                delay = start + self.sent * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            deadline = time.monotonic() + 30
            while self.published < self.sent and time.monotonic() < deadline and cfg.qos > 0:
                time.sleep(0.01)
        finally:
            self._client.disconnect()
            self._client.loop_stop()

    def start(self, total: int | None = None) -> None:
        self._thread = threading.Thread(target=self.run, kwargs={"total": total}, name="tidegate-sim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
