"""Upstream transports: where acknowledged batches go.

Every transport has one contract: ``send`` returns only once the upstream holds
the batch durably (Kafka: acks=all from the in-sync replicas; spool: the file
and its directory entry fsynced), and raises :class:`TransportError`
otherwise. The bridge advances its cursor in the log only after ``send``
returns, so a failure means a resend, never a loss.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from core.batch import BatchHeader, kafka_headers, kafka_key
from bridge.errors import TransportError, UpstreamConfigError

__all__ = ["Transport", "MemoryTransport", "SpoolTransport", "KafkaTransport", "open_upstream", "spool_file_name"]
# MqttTransport lives in bridge/mqtt_upstream.py; open_upstream makes it for mqtt:// addresses.


class Transport(Protocol):
    def send(self, batch: bytes, header: BatchHeader) -> None:
        """Deliver one batch durably, or raise TransportError."""

    def close(self) -> None: ...


@dataclass
class MemoryTransport:
    """The in-memory twin of a real upstream, for tests: keeps what it was sent.

    ``fail_next`` makes the next N sends raise, as a cut uplink would.
    """

    sent: list[tuple[bytes, BatchHeader]] = field(default_factory=list)
    fail_next: int = 0

    def send(self, batch: bytes, header: BatchHeader) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise TransportError("memory transport told to fail")
        self.sent.append((batch, header))

    def close(self) -> None:
        pass


def spool_file_name(header: BatchHeader) -> str:
    """A name that sorts by window, then gateway, stream and offset, and is the same on a resend."""
    return (
        f"{header.window.start_ms:015d}_{header.gateway}_{header.stream}_"
        f"{header.first_offset:020d}-{header.last_offset:020d}.tgb"
    )


class SpoolTransport:
    """Batches as files in a directory: the upstream that needs no cluster.

    A resend after a crash writes the same file name again, so the spool holds
    each batch once. Files are written to a temporary name, fsynced, renamed
    and the directory fsynced, so a file either is whole or is not there.
    """

    def __init__(self, directory: Path, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync

    def send(self, batch: bytes, header: BatchHeader) -> None:
        name = spool_file_name(header)
        temp = self.directory / f".{name}.tmp"
        try:
            with open(temp, "wb") as f:
                f.write(batch)
                if self._fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(temp, self.directory / name)
            if self._fsync:
                fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise TransportError(f"cannot write batch to spool {self.directory}: {exc}") from exc

    def close(self) -> None:
        pass


class KafkaTransport:
    """Batches as messages on a Kafka topic, with confluent-kafka.

    The producer is idempotent with acks=all, so librdkafka's own retries never
    duplicate or reorder a batch within one producer session; duplicates from a
    resend after a crash are removed downstream by reading id (see
    docs/batch_format.md, "Reading identity"). Batches are already lz4
    compressed, so the producer compresses nothing again.

    Args:
        bootstrap: "host:port[,host:port...]".
        topic: the batch topic.
        settings: extra librdkafka settings (TLS, SASL, ...), applied last.
        timeout_s: how long ``send`` waits for the acknowledgement.
    """

    def __init__(self, bootstrap: str, topic: str, settings: Mapping[str, str] | None = None, timeout_s: float = 30.0) -> None:
        from confluent_kafka import Producer  # imported here so spool-only installs never load librdkafka

        config = {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "none",
            "linger.ms": 0,
            "message.timeout.ms": int(timeout_s * 1000),
            "message.max.bytes": 8 * 1024 * 1024,
            # After an outage, try the link again within 2 s rather than
            # librdkafka's 10 s: a connection attempt costs a few bytes, and
            # the backlog waits for it.
            "reconnect.backoff.max.ms": 2000,
        }
        config.update(settings or {})
        try:
            self._producer = Producer(config)
        except Exception as exc:  # KafkaException on bad settings
            raise UpstreamConfigError(f"bad Kafka settings: {exc}") from exc
        self.topic = topic
        self._timeout_s = timeout_s
        self._lock = threading.Lock()

    def send(self, batch: bytes, header: BatchHeader) -> None:
        errors: list[object] = []

        def delivered(err: object, msg: object) -> None:
            if err is not None:
                errors.append(err)

        with self._lock:
            try:
                self._producer.produce(
                    self.topic,
                    value=batch,
                    key=kafka_key(header),
                    headers=kafka_headers(header),
                    timestamp=header.window.start_ms,
                    on_delivery=delivered,
                )
            except (BufferError, Exception) as exc:  # KafkaException, BufferError
                raise TransportError(f"Kafka refused the batch: {exc}") from exc
            remaining = self._producer.flush(self._timeout_s)
        if remaining:
            raise TransportError(f"Kafka did not acknowledge the batch within {self._timeout_s} s")
        if errors:
            raise TransportError(f"Kafka did not take the batch: {errors[0]}")

    def close(self) -> None:
        """Flush, then destroy the producer here and now.

        Left to the garbage collector, librdkafka handles with Python
        callbacks can be destroyed in another thread, or at interpreter exit,
        and crash the process (confluent-kafka-python issue 1761).
        """
        self._producer.flush(5)
        self._producer.close()


def open_upstream(url: str, settings: Mapping[str, str] | None = None) -> Transport:
    """Open a transport from an upstream address.

    * ``spool:DIR`` or ``spool:///abs/dir``: batch files in a directory;
    * ``kafka://host:port[,host:port]/topic``: a Kafka batch topic (default
      topic ``tidegate.batches``); query parameters are librdkafka settings.
    * ``mqtt://[user:pass@]host[:port][/prefix]`` or ``mqtts://...`` (TLS): an
      upstream MQTT broker, batches on ``<prefix>/<gateway>/<stream>``
      (default prefix ``tidegate/batches``) with QoS 1; settings
      ``client_id``, ``username``, ``password``, ``ca_file``, ``timeout_s``,
      ``keepalive_s`` (bridge/mqtt_upstream.py).

    Raises:
        UpstreamConfigError: the address is not one of these.
    """
    parts = urlsplit(url)
    if parts.scheme == "spool":
        path = parts.path if parts.netloc in ("", "localhost") else parts.netloc + parts.path
        if not path:
            raise UpstreamConfigError(f"upstream {url!r}: spool needs a directory, e.g. spool:./spool")
        return SpoolTransport(Path(path))
    if parts.scheme == "kafka":
        if not parts.netloc:
            raise UpstreamConfigError(f"upstream {url!r}: kafka needs host:port, e.g. kafka://127.0.0.1:9092")
        topic = parts.path.strip("/") or "tidegate.batches"
        merged = dict(parse_qsl(parts.query))
        merged.update(settings or {})
        return KafkaTransport(parts.netloc, topic, merged)
    if parts.scheme in ("mqtt", "mqtts"):
        from bridge.mqtt_upstream import DEFAULT_PREFIX, MqttTransport, MqttUpstreamConfig

        if not parts.hostname:
            raise UpstreamConfigError(f"upstream {url!r}: mqtt needs a host, e.g. mqtt://broker.example.net:1883")
        options = dict(parse_qsl(parts.query))
        options.update(settings or {})
        unknown = set(options) - {"client_id", "username", "password", "ca_file", "timeout_s", "keepalive_s"}
        if unknown:
            raise UpstreamConfigError(f"upstream {url!r}: unknown MQTT settings {sorted(unknown)}")
        try:
            return MqttTransport(MqttUpstreamConfig(
                host=parts.hostname,
                port=parts.port or (8883 if parts.scheme == "mqtts" else 1883),
                prefix=parts.path.strip("/") or DEFAULT_PREFIX,
                client_id=options.get("client_id", "tidegate-bridge"),
                username=options.get("username", parts.username),
                password=options.get("password", parts.password),
                tls=parts.scheme == "mqtts",
                ca_file=options.get("ca_file"),
                timeout_s=float(options.get("timeout_s", 30.0)),
                keepalive_s=int(options.get("keepalive_s", 30)),
            ))
        except ValueError as exc:
            raise UpstreamConfigError(f"upstream {url!r}: {exc}") from exc
    raise UpstreamConfigError(f"upstream {url!r}: scheme must be spool:, kafka:// or mqtt(s)://")
