"""``tidegate run``: the gateway, the bridge and (for demos) a broker and a fleet, in one process.

How this works: the log is opened by edge's file adapter and shared, under its
lock, by two threads: the gateway's writer (fed by the MQTT and serial
intakes) and the bridge's forwarder. The composition root hands the log to the
bridge as a ``LogSource``, so bridge never imports edge.

Watching it: a telemetry thread wakes once a second. It turns the log's
statistics into gauges (bytes, backlog and age of the oldest unforwarded
reading per stream, quota drops, sync latency), reads the readings written
since its last pass to keep the per-device table and the last dead letters
(off the hot path: the writer never waits for it), and adds one sample to the
ring the status page's charts draw. The HTTP endpoint (edge/http.py) serves
``/metrics``, ``/healthz``, ``/api/status`` and the page from those. Under
systemd, the main loop sends READY=1 once everything runs and WATCHDOG=1
while the writer is healthy, so a hung or failed writer gets a restart.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bridge.forwarder import CURSOR_NAME, Forwarder
from bridge.transports import Transport, open_upstream, redact_url
from core.deadletter import DEAD_LETTER_STREAM, decode_dead_letter, with_dead_letter_quota
from core.errors import CoreError
from core.reading import decode_reading
from edge.errors import BrokerUnavailable
from edge.gateway import Gateway, Message
from edge.http import SampleRing, StatusServer
from edge.logstore import open_log
from edge.metrics import SIZE_BUCKETS, Metrics
from edge.mosquitto import Mosquitto
from edge.mqtt_intake import MqttIntake, Received
from edge.serial_intake import SerialIntake
from edge.sdnotify import Notifier
from edge.simulator import Fleet, FleetConfig
from tidegate import __version__
from tidegate.config import DEFAULT_ROUTES, RunConfig

__all__ = ["RunConfig", "Service", "DEFAULT_ROUTES", "Telemetry", "setup_logging", "JsonFormatter", "RecentErrors"]

log = logging.getLogger("tidegate")

#: Seconds between attempts to reach an MQTT broker that was not there at start.
BROKER_RETRY_S = 5
#: Samples kept for the status page's charts: one a second for 15 minutes.
HISTORY_SAMPLES = 900
#: Devices kept in the device table; the least recently seen go first.
MAX_DEVICES = 2000
#: Records the telemetry thread reads per stream per pass (it skips ahead when further behind).
TRACK_RECORDS = 20_000


def _describe(metrics: Metrics) -> None:
    d = metrics.describe
    d("tidegate_readings_out_total", "counter", "Readings acknowledged by the upstream, per stream")
    d("tidegate_batches_out_total", "counter", "Batches acknowledged by the upstream, per stream")
    d("tidegate_uplink_bytes_total", "counter", "Batch bytes acknowledged by the upstream")
    d("tidegate_uplink_failures_total", "counter", "Batches the upstream refused or did not acknowledge")
    d("tidegate_uplink_up", "gauge", "1 while the upstream takes batches, 0 while it refuses them")
    d("tidegate_log_deleted_windows_total", "counter", "Log windows deleted, by retention or quota")
    d("tidegate_log_deleted_bytes_total", "counter", "Log bytes deleted, by retention or quota")
    d("tidegate_intake_bytes_total", "counter", "Topic and payload bytes received, per source (what plain bridging would send)")
    d("tidegate_log_bytes", "gauge", "Bytes of the durable log on disk (segments and indexes), per stream")
    d("tidegate_log_bytes_on_disk", "gauge", "Bytes of the durable log on disk, all streams")
    d("tidegate_log_quota_bytes", "gauge", "The log's quota in bytes (0: none)")
    d("tidegate_backlog_readings", "gauge", "Durable readings not yet acknowledged upstream, per stream")
    d("tidegate_oldest_unforwarded_age_seconds", "gauge",
      "Age (by gateway receive time) of the oldest reading not yet acknowledged upstream, per stream")
    d("tidegate_dropped_by_quota_total", "counter", "Unforwarded readings deleted by the quota policy, per stream")
    d("tidegate_log_syncs_total", "counter", "Group commits (fsync rounds) of the log")
    d("tidegate_log_sync_seconds_max", "gauge", "The slowest log sync so far")
    d("tidegate_log_failed", "gauge", "1 once the log has failed (restart needed)")
    d("tidegate_batch_max_readings", "gauge", "Readings at which the batcher closes a batch now")
    d("tidegate_batch_linger_seconds", "gauge", "How long the batcher lets a batch wait for more readings now")
    d("tidegate_broker_dropped", "gauge", "Messages Mosquitto itself dropped since it started ($SYS publish/messages/dropped)")
    d("tidegate_mqtt_connected", "gauge", "1 while connected to the local MQTT broker")
    d("tidegate_mqtt_events_total", "counter", "MQTT connection events, per event")
    d("tidegate_disk_free_bytes", "gauge", "Free bytes on the data directory's file system")
    d("tidegate_start_time_seconds", "gauge", "When this process started (Unix time)")
    d("tidegate_info", "gauge", "Constant 1, labelled with the version and gateway id")
    metrics.describe_histogram("tidegate_log_sync_seconds", "Latency of the log's group commits (fsync rounds)")
    metrics.describe_histogram("tidegate_batch_readings", "Readings per batch sent upstream", SIZE_BUCKETS)


# --------------------------------------------------------------------------- logs


_STANDARD_RECORD_KEYS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, any ``extra=`` fields, and exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_RECORD_KEYS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text", stream: Any = None) -> logging.Handler:
    """Send log records to stdout (journald under systemd), as text or JSON lines; returns the handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("paho", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler


class RecentErrors(logging.Handler):
    """Keeps the last warnings and errors logged, for the status page."""

    def __init__(self, size: int = 50) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[dict[str, Any]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append({
                "ts_ms": int(record.created * 1000), "level": record.levelname.lower(),
                "logger": record.name, "message": record.getMessage(),
            })
        except Exception:  # a bad format string in someone's log call must not break logging
            self.handleError(record)


# --------------------------------------------------------------------------- telemetry


@dataclass
class _Device:
    device: str
    stream: str
    last_seen_ms: int = 0
    readings: int = 0
    values: dict[str, Any] = field(default_factory=dict)
    counts: deque[int] = field(default_factory=lambda: deque(maxlen=61))  # readings total, one per second


def _safe_upstream(url: str) -> str:
    """The upstream address fit to show: no query (librdkafka settings), no password."""
    parts = urlsplit(redact_url(url))
    return f"{parts.scheme}:{'//' + parts.netloc if parts.netloc else ''}{parts.path}"

class Telemetry:
    """Turns the service's state into gauges, history samples and the status document.

    ``collect`` is cheap and runs before every /metrics scrape; ``tick`` runs
    once a second in the telemetry thread and also reads new records for the
    device table and dead letters.

    Args:
        service: the running service; it owns the telemetry.
    """

    def __init__(self, service: Service, history: int = HISTORY_SAMPLES) -> None:
        self.service = service
        self.ring = SampleRing(history)
        self.devices: dict[str, _Device] = {}
        self.dead_letters: deque[dict[str, Any]] = deque(maxlen=20)
        self.stream_rates: dict[str, float] = {}
        self._positions: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stats: dict[str, Any] = {}
        self._syncs = (0, 0.0)
        self._recent: deque[tuple[float, float, float, float, float]] = deque(maxlen=11)  # (t, in, out, bytes, batches)
        self._stream_counts: dict[str, deque[float]] = {}
        self._compression = 0.0
        self._batch_size = 0.0

    # ----------------------------------------------------------------- gauges
    def collect(self) -> dict[str, Any]:
        """Refresh the gauges from the log's statistics; returns those statistics."""
        svc = self.service
        m = svc.metrics
        with self._lock:
            stats: dict[str, Any] = svc.log.stats()
            self._stats = stats
            now_ms = int(svc.clock() * 1000)
            for name, st in stats["streams"].items():
                labels = {"stream": name}
                m.set("tidegate_log_bytes", st["bytes"], labels)
                m.set("tidegate_dropped_by_quota_total", st["dropped_by_quota"], labels)
                if name.startswith("_"):
                    continue
                m.set("tidegate_backlog_readings", st["backlog_records"], labels)
                m.set("tidegate_oldest_unforwarded_age_seconds", self._oldest_age_s(name, st, now_ms), labels)
            m.set("tidegate_log_bytes_on_disk", stats["bytes_on_disk"])
            m.set("tidegate_log_quota_bytes", stats["quota_bytes"] or 0)
            m.set("tidegate_log_failed", 1 if stats["failed"] or stats.get("sync_thread_failed") else 0)
            syncs, seconds = stats["syncs"], stats["sync_seconds_total"]
            new_syncs, new_seconds = syncs - self._syncs[0], seconds - self._syncs[1]
            if new_syncs > 0:
                # The log sums its sync times; each sync of this interval is counted at the interval's mean.
                m.observe("tidegate_log_sync_seconds", new_seconds / new_syncs, times=new_syncs)
            self._syncs = (syncs, seconds)
            m.set("tidegate_log_syncs_total", syncs)
            m.set("tidegate_log_sync_seconds_max", stats["sync_seconds_max"])
            policy = svc.forwarder.controller
            m.set("tidegate_batch_max_readings", getattr(policy, "current_max_readings", policy.max_readings))
            m.set("tidegate_batch_linger_seconds", getattr(policy, "current_linger_ms", policy.linger_ms) / 1000)
            m.set("tidegate_uplink_up", 1 if svc.upstream_ok else 0)
            try:
                disk = os.statvfs(svc.config.data_dir)
                m.set("tidegate_disk_free_bytes", disk.f_bavail * disk.f_frsize)
            except OSError:
                pass
        return stats

    def _oldest_age_s(self, stream: str, st: dict[str, Any], now_ms: int) -> float:
        if not st["backlog_records"]:
            return 0.0
        offset = max(st["forwarded_offset"], st["start_offset"])
        try:
            records = self.service.log.read(stream, offset, 1)
            if records:
                return max(0.0, (now_ms - decode_reading(records[0].payload).received_ms) / 1000)
        except (CoreError, OSError) as exc:
            log.debug("cannot read the oldest unforwarded reading of %s: %s", stream, exc)
        return 0.0

    # ----------------------------------------------------------------- once a second
    def tick(self) -> None:
        """Collect, read new records for the device table, and add one history sample."""
        stats = self.collect()
        svc = self.service
        m = svc.metrics
        now = svc.clock()
        for stream in stats["streams"]:
            self._track(stream)
        with self._lock:
            for device in self.devices.values():
                device.counts.append(device.readings)
            readings_in = m.total("tidegate_readings_in_total")
            readings_out = m.total("tidegate_readings_out_total")
            uplink = m.total("tidegate_uplink_bytes_total")
            batches = m.total("tidegate_batches_out_total")
            self._recent.append((now, readings_in, readings_out, uplink, batches))
            first, last = self._recent[0], self._recent[-1]
            prev = self._recent[-2] if len(self._recent) > 1 else last
            dt = max(last[0] - prev[0], 1e-6)
            ingest_rate = (last[1] - prev[1]) / dt if len(self._recent) > 1 else 0.0
            uplink_bps = (last[3] - prev[3]) / dt if len(self._recent) > 1 else 0.0
            out_readings, out_batches = last[2] - first[2], last[4] - first[4]
            intake = m.total("tidegate_intake_bytes_total")
            if uplink > 0 and readings_in > 0:
                # Since start, not over the recent window: a window that holds only
                # the last few readings of a burst, in one small batch, would show
                # the batch header's cost rather than what the uplink saves.
                self._compression = (intake / readings_in) * readings_out / uplink
            if out_batches > 0:
                self._batch_size = out_readings / out_batches
            for name, st in stats["streams"].items():
                if name.startswith("_"):
                    continue
                counts = self._stream_counts.setdefault(name, deque(maxlen=11))
                counts.append(m.get("tidegate_readings_in_total", {"stream": name}))
                span = len(counts) - 1
                self.stream_rates[name] = (counts[-1] - counts[0]) / span if span else 0.0
            backlog = sum(st["backlog_records"] for n, st in stats["streams"].items() if not n.startswith("_"))
            self.ring.add({
                "t": int(now * 1000),
                "ingest_rate": round(ingest_rate, 2),
                "backlog": backlog,
                "uplink_bps": round(uplink_bps, 1),
                "compression_ratio": round(self._compression, 2),
                "batch_size": round(self._batch_size, 1),
            })

    def _track(self, stream: str) -> None:
        """Read what was written to ``stream`` since the last pass: device table, dead letters."""
        log_ = self.service.log
        try:
            end = log_.durable_offset(stream)
            position = self._positions.get(stream)
            if position is None:
                position = max(log_.start_offset(stream), end - 1000)  # show the recent past after a restart
            if end - position > TRACK_RECORDS:
                position = end - TRACK_RECORDS
            position = max(position, log_.start_offset(stream))
            while position < end:
                records = log_.read(stream, position, 5000)
                if not records:
                    break
                for record in records:
                    self._note(stream, record.payload)
                position = records[-1].offset + 1
            self._positions[stream] = position
        except (CoreError, OSError) as exc:
            log.debug("telemetry cannot read stream %s: %s", stream, exc)
            self._positions.pop(stream, None)

    def _note(self, stream: str, payload: bytes) -> None:
        try:
            if stream == DEAD_LETTER_STREAM:
                letter = decode_dead_letter(payload)
                self.dead_letters.append({
                    "received_ms": letter.received_ms, "source": letter.source, "topic": letter.topic,
                    "reason": letter.reason, "message": letter.message, "raw_hex": letter.raw[:64].hex(),
                    "raw_bytes": letter.original_length,
                })
                return
            if stream.startswith("_"):
                return
            reading = decode_reading(payload)
        except CoreError:
            return
        with self._lock:
            device = self.devices.get(reading.device)
            if device is None:
                if len(self.devices) >= MAX_DEVICES:
                    oldest = min(self.devices.values(), key=lambda d: d.last_seen_ms)
                    del self.devices[oldest.device]
                device = self.devices[reading.device] = _Device(reading.device, stream)
            device.readings += 1
            device.last_seen_ms = max(device.last_seen_ms, reading.received_ms)
            device.values[reading.metric] = reading.value

    # ----------------------------------------------------------------- documents
    def totals(self) -> dict[str, float]:
        """The headline figures, taken from the metrics registry (so they match /metrics)."""
        m = self.service.metrics
        names = {
            "readings_in": "tidegate_readings_in_total",
            "rejected": "tidegate_rejected_total",
            "deduplicated": "tidegate_duplicates_total",
            "readings_out": "tidegate_readings_out_total",
            "batches_out": "tidegate_batches_out_total",
            "uplink_bytes": "tidegate_uplink_bytes_total",
            "intake_bytes": "tidegate_intake_bytes_total",
            "backlog": "tidegate_backlog_readings",
            "log_bytes": "tidegate_log_bytes_on_disk",
            "quota_bytes": "tidegate_log_quota_bytes",
            "dropped_by_quota": "tidegate_dropped_by_quota_total",
            "broker_dropped": "tidegate_broker_dropped",
            "disk_free_bytes": "tidegate_disk_free_bytes",
            "uplink_up": "tidegate_uplink_up",
            "mqtt_connected": "tidegate_mqtt_connected",
            "clock_synchronised": "tidegate_clock_synced",
        }
        out = {key: m.total(name) for key, name in names.items()}
        ages = [v for (n, _), v in m.snapshot().items() if n == "tidegate_oldest_unforwarded_age_seconds"]
        out["oldest_unforwarded_age_s"] = max(ages, default=0.0)
        return out

    def status(self) -> dict[str, Any]:
        """The /api/status document the status page and ``tidegate status`` show."""
        svc = self.service
        m = svc.metrics
        self.collect()
        stats = self._stats
        now_ms = int(svc.clock() * 1000)
        streams = []
        for name, st in stats.get("streams", {}).items():
            if name.startswith("_"):
                continue
            labels = {"stream": name}
            streams.append({
                "stream": name,
                "readings_in": m.get("tidegate_readings_in_total", labels),
                "readings_out": m.get("tidegate_readings_out_total", labels),
                "rate": round(self.stream_rates.get(name, 0.0), 2),
                "backlog": m.get("tidegate_backlog_readings", labels),
                "log_bytes": m.get("tidegate_log_bytes", labels),
                "oldest_unforwarded_age_s": round(m.get("tidegate_oldest_unforwarded_age_seconds", labels), 1),
                "dropped_by_quota": m.get("tidegate_dropped_by_quota_total", labels),
                "windows": st["windows"],
                "end_offset": st["end_offset"],
            })
        with self._lock:
            devices = sorted(self.devices.values(), key=lambda d: d.device)
            device_rows = [{
                "device": d.device,
                "stream": d.stream,
                "last_seen_ms": d.last_seen_ms,
                "age_s": round(max(0, now_ms - d.last_seen_ms) / 1000, 1),
                "rate": round((d.counts[-1] - d.counts[0]) / (len(d.counts) - 1), 2) if len(d.counts) > 1 else 0.0,
                "readings": d.readings,
                "values": dict(list(d.values.items())[:8]),
            } for d in devices]
        health_ok, health = svc.health()
        policy = svc.forwarder.policy
        return {
            "gateway_id": svc.config.gateway_id,
            "version": __version__,
            "now_ms": now_ms,
            "started_ms": int(svc.started_at * 1000),
            "uptime_s": round(time.monotonic() - svc.started_mono, 1),
            "healthy": health_ok,
            "health": health,
            "upstream": {"url": _safe_upstream(svc.config.upstream), "up": svc.upstream_ok},
            "mqtt": {"host": svc.config.mqtt.host, "port": svc.config.mqtt.port},
            "totals": self.totals(),
            "batch": {
                "max_readings": m.get("tidegate_batch_max_readings"),
                "linger_s": m.get("tidegate_batch_linger_seconds"),
                "configured_max_readings": policy.max_readings,
                "configured_linger_ms": policy.linger_ms,
            },
            "log": {
                "window_ms": svc.config.log.window_ms,
                "sync_policy": svc.config.log.sync_policy,
                "syncs": stats.get("syncs", 0),
                "write_amplification": round(stats.get("write_amplification", 0.0), 3),
            },
            "streams": streams,
            "devices": device_rows,
            "dead_letters": list(self.dead_letters)[::-1],
            "errors": list(svc.recent_errors.records)[::-1],
            "history": self.ring.columns(),
        }


class Service:
    """Everything ``tidegate run`` starts, with an orderly stop."""

    def __init__(self, config: RunConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        _describe(self.metrics)
        self.started_at = clock()
        self.started_mono = time.monotonic()
        self.metrics.set("tidegate_start_time_seconds", round(self.started_at, 3))
        self.metrics.set("tidegate_info", 1, {"version": __version__, "gateway": config.gateway_id})
        self.metrics.inc("tidegate_duplicates_total", 0)
        self.metrics.inc("tidegate_rejected_total", 0)
        self.metrics.set("tidegate_mqtt_connected", 0)
        self.recent_errors = RecentErrors()
        self.notifier = Notifier()
        self.http: StatusServer | None = None
        self._stopping = False
        self._mqtt_connected = threading.Event()
        self.broker: Mosquitto | None = None
        self.fleet: Fleet | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Dead letters at drop_oldest and the lowest priority: garbage never blocks readings at the quota.
        self.log = open_log(config.data_dir / "log", with_dead_letter_quota(config.log))
        self.transport: Transport = open_upstream(config.upstream, config.upstream_settings)
        self.gateway = Gateway(self.log, config.routes, self.metrics, clock=clock)
        self.forwarder = Forwarder(
            self.log, self.transport, config.gateway_id, config.log.window_ms, config.batch, on_sent=self._count_sent,
            priorities=config.log.priorities,
        )
        self.intake: MqttIntake | None = None
        self.serial_intakes: list[SerialIntake] = []
        self.upstream_ok = True
        self.telemetry = Telemetry(self)

    def _count_sent(self, stream: str, readings: int, size: int) -> None:
        self.metrics.inc("tidegate_batches_out_total", labels={"stream": stream})
        self.metrics.inc("tidegate_readings_out_total", readings, {"stream": stream})
        self.metrics.inc("tidegate_uplink_bytes_total", size)
        self.metrics.observe("tidegate_batch_readings", readings)

    @property
    def http_port(self) -> int | None:
        """The port the HTTP endpoint listens on (useful with port 0), or None without one."""
        return self.http.port if self.http is not None else None

    def metrics_text(self) -> str:
        self.telemetry.collect()
        return self.metrics.render()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the writer and the log work; an upstream outage is normal (store and forward)."""
        failed = getattr(self.gateway, "failed", None)
        writer_ok = not (failed is not None and failed.is_set())
        log_ok = self.metrics.get("tidegate_log_failed") == 0
        detail = {
            "writer": "ok" if writer_ok else f"failed: {getattr(self.gateway, 'failure', '')}",
            "log": "ok" if log_ok else "failed",
            "upstream": "up" if self.upstream_ok else "down",
            "mqtt": "connected" if self.metrics.get("tidegate_mqtt_connected") else "disconnected",
            "intake_blocked": bool(self.metrics.get("tidegate_intake_blocked")),
        }
        return writer_ok and log_ok, detail

    def _on_mqtt_event(self, event: str) -> None:
        self.metrics.inc("tidegate_mqtt_events_total", labels={"event": event})
        if event == "connected":
            self.metrics.set("tidegate_mqtt_connected", 1)
            self._mqtt_connected.set()
            log.info("connected to MQTT broker %s:%d", self.config.mqtt.host, self.config.mqtt.port)
        elif event in ("disconnected", "refused"):
            if self.metrics.get("tidegate_mqtt_connected") and not self._stopping:
                log.warning("MQTT broker %s:%d: %s", self.config.mqtt.host, self.config.mqtt.port, event)
            self.metrics.set("tidegate_mqtt_connected", 0)

    def start(self) -> None:
        """Start everything; the HTTP endpoint first, so a taken port fails before anything else runs.

        Raises:
            OSError: the HTTP endpoint cannot listen on its address.
            edge.errors.BrokerUnavailable: the MQTT broker cannot be reached.
        """
        logging.getLogger().addHandler(self.recent_errors)
        mqtt = self.config.mqtt
        if self.config.http is not None:
            http = self.config.http
            try:
                self.http = StatusServer(http.host, http.port, self.metrics_text, self.health, self.telemetry.status)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"cannot serve the status page on {http.host}:{http.port}: {exc.strerror}"
                    " (set [http] port in the config, or --http HOST:PORT, or --no-http)"
                ) from exc
            self.http.start()
        if self.config.start_broker:
            self.broker = Mosquitto(self.config.data_dir / "mosquitto", port=mqtt.port)
            self.broker.start()
            log.info("started Mosquitto on 127.0.0.1:%d", self.broker.port)
        self.gateway.start()

        count_bytes = self.metrics.counter("tidegate_intake_bytes_total", {"source": "mqtt"})

        def on_message(received: Received) -> None:
            count_bytes(len(received.payload) + len(received.topic))
            self.gateway.submit(
                Message("mqtt", received.topic, received.payload, int(self.clock() * 1000), lambda: intake.ack(received))
            )

        intake = MqttIntake(
            mqtt,
            on_message,
            on_event=self._on_mqtt_event,
            on_broker_dropped=lambda n: self.metrics.set("tidegate_broker_dropped", n),
            state_dir=self.config.data_dir,  # the session marker: a lost session is seen on the first connect too
        )
        self.intake = intake
        self.gateway.ack_batch = intake.batched_acks
        try:
            intake.start()
        except BrokerUnavailable as exc:
            # Keep serving (the backlog still drains, the status page answers) and keep trying.
            log.warning("%s; retrying every %d s", exc, BROKER_RETRY_S)
            self._spawn(self._connect_later, "tidegate-mqtt-connect")
        for port in self.config.serial:
            serial_intake = SerialIntake(port, self.gateway.submit, self.metrics, clock=self.clock)
            serial_intake.start()
            self.serial_intakes.append(serial_intake)
        self._spawn(self._forward_loop, "tidegate-bridge")
        self._spawn(self._telemetry_loop, "tidegate-telemetry")
        self._spawn(self._housekeeping_loop, "tidegate-housekeeping")
        if self.config.simulate_sensors:
            # On a fresh broker nothing holds our subscription yet: a sample published before it
            # is in place would go to nobody. Let the intake connect and subscribe first.
            if self._mqtt_connected.wait(10):
                time.sleep(0.3)
            self.fleet = Fleet(FleetConfig(mqtt.host, mqtt.port, self.config.simulate_sensors, self.config.simulate_rate))
            self.fleet.start(total=self.config.simulate_count)
        self.notifier.ready(status=f"gateway {self.config.gateway_id} running")

    def _connect_later(self) -> None:
        """The first connection to the broker failed: try again until it works (paho reconnects after that)."""
        assert self.intake is not None
        while not self._stop.wait(BROKER_RETRY_S) and not self._stopping:
            try:
                self.intake.start()
            except BrokerUnavailable as exc:
                log.debug("still no broker: %s", exc)
                continue
            if self._stopping:  # stop() ran while we connected
                self.intake.stop()
            return

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(1.0 - (time.monotonic() - self.started_mono) % 1.0):
            try:
                self.telemetry.tick()
            except Exception:  # telemetry must never take the gateway down
                log.exception("telemetry pass failed")

    #: seconds between retention and quota passes
    housekeeping_interval_s = 30.0

    def _housekeeping_loop(self) -> None:
        """Retention and quota, every ``housekeeping_interval_s``, from the first second on.

        Retention deletes whole windows that are forwarded and older than the
        retention age (never unforwarded data; nothing while the clock is
        unsynchronised); the quota pass frees forwarded windows first, which is
        also what lets a ``block`` stream take readings again.
        """
        wait = 1.0
        while not self._stop.wait(wait):
            wait = self.housekeeping_interval_s
            try:
                retained = self.log.enforce_retention(self.gateway.log_now(), self._retainable())
                quota = self.log.enforce_quota()
            except Exception:  # a failed pass is retried; the log's own errors stop the writer
                log.exception("retention or quota pass failed")
                continue
            for result, kind in ((retained, "retention"), (quota, "quota")):
                if result.windows:
                    self.metrics.inc("tidegate_log_deleted_windows_total", result.windows, {"by": kind})
                    self.metrics.inc("tidegate_log_deleted_bytes_total", result.bytes, {"by": kind})
                    log.info("%s deleted %d windows (%d bytes, %d readings never forwarded)",
                             kind, result.windows, result.bytes, result.dropped_records)

    def _retainable(self) -> dict[str, int]:
        """Per stream, the offset below which retention may delete: what the bridge has forwarded.

        Dead letters are never forwarded (they stay on the gateway for
        ``tidegate tail --dead-letters``), so they age out by retention alone;
        without this their windows would be kept for ever and fill the disk.
        """
        done = {s: self.log.load_cursor(CURSOR_NAME, s) for s in self.log.streams() if s != DEAD_LETTER_STREAM}
        done[DEAD_LETTER_STREAM] = self.log.end_offset(DEAD_LETTER_STREAM)
        return done

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _forward_loop(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                result = self.forwarder.forward_once(int(self.clock() * 1000))
            except CoreError as exc:
                # A cursor store or a read of the log failed. The cursor on
                # disk is the old one (core/log: a failed store leaves it), so
                # the batches go again under the same reading ids, which the
                # central side drops. A log that failed for good stops the
                # writer, and the process exits for systemd to restart it.
                self.metrics.inc("tidegate_uplink_failures_total")
                log.error("bridge pass failed, retrying in %.1f s: %s", backoff, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if result.failed:
                self.metrics.inc("tidegate_uplink_failures_total")
                if self.upstream_ok:
                    log.warning("upstream %s is not taking batches; holding them in the log", _safe_upstream(self.config.upstream))
            elif not self.upstream_ok:
                log.info("upstream %s takes batches again", _safe_upstream(self.config.upstream))
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
        self._stopping = True
        self.notifier.stopping()
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
        try:
            self.forwarder.store_cursors()
        except CoreError as exc:  # the batches go again after the restart; nothing is lost
            log.error("could not store the bridge's cursors at stop: %s", exc)
        self.transport.close()
        self.log.close()
        if self.broker is not None:
            self.broker.stop()
        if self.http is not None:
            self.http.stop()
        logging.getLogger().removeHandler(self.recent_errors)
        self.notifier.close()

    def run_forever(self, duration_s: float | None = None, status: bool = True) -> None:
        """Run until SIGINT/SIGTERM (or ``duration_s``).

        The summary line is rewritten each second on a terminal, and logged
        once a minute otherwise (journald). Under systemd, WATCHDOG=1 is sent
        while the gateway is healthy, and STATUS= carries the summary.
        """
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        tty = sys.stderr.isatty()
        start = time.monotonic()
        ticks = 0
        try:
            while not self._stop.wait(1.0):
                ticks += 1
                if self.gateway.failed.is_set():
                    raise SystemExit(f"tidegate: log writer failed: {self.gateway.failure}")
                healthy, _ = self.health()
                if healthy and self.notifier.watchdog_s is not None:
                    self.notifier.watchdog()
                if self.notifier.enabled and ticks % 5 == 0:
                    self.notifier.status(self.summary())
                if status and (tty or ticks % 60 == 0):
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

