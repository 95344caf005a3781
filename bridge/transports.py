"""Upstream transports: where acknowledged batches go.

Every transport has one contract: ``send`` returns only once the upstream holds
the batch durably (Kafka: acks=all from the in-sync replicas; spool: the file
and its directory entry fsynced), and raises :class:`TransportError`
otherwise. The bridge advances its cursor in the log only after ``send``
returns, so a failure means a resend, never a loss.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

from core.batch import BatchHeader, kafka_headers, kafka_key
from bridge.errors import PartialSend, TransportError, UpstreamConfigError

if TYPE_CHECKING:
    from bridge.mqtt_upstream import MqttUpstreamConfig

__all__ = [
    "Transport", "MemoryTransport", "SpoolTransport", "KafkaTransport", "open_upstream", "spool_file_name",
    "parse_upstream", "SpoolUpstream", "KafkaUpstream", "InvalidUpstream", "UPSTREAM_FORMS", "MQTT_SETTINGS",
    "is_secret_setting", "redact_url", "KAFKA_SAFETY_SETTINGS", "check_kafka_settings", "kafka_transport_config",
]
# MqttTransport lives in bridge/mqtt_upstream.py; open_upstream makes it for mqtt:// addresses.

#: The addresses an upstream may have, for error messages and help texts.
UPSTREAM_FORMS = "spool:DIR, kafka://HOST:PORT[,HOST:PORT][/TOPIC] or mqtt(s)://[USER[:PASSWORD]@]HOST[:PORT][/PREFIX]"

#: The settings an MQTT upstream takes (from the address's query or [upstream.settings]).
MQTT_SETTINGS = ("client_id", "username", "password", "ca_file", "timeout_s", "keepalive_s")


class InvalidUpstream(UpstreamConfigError):
    """An upstream address or one of its settings is not allowed.

    Attributes:
        key: ``"url"`` for the address itself, else the setting's name.
        value: the value as it may be shown (secrets as ``***``).
        allowed: what is allowed instead.
    """

    def __init__(self, key: str, value: str, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        where = f"upstream {value!r}" if key == "url" else f"upstream setting {key} = {value!r}"
        super().__init__(f"{where}: {allowed}")


def is_secret_setting(key: str) -> bool:
    """Whether a setting's value is a secret, never to be shown (``sasl.password``, ``ssl.key.pem``...)."""
    return bool(re.search(r"(password|secret|token|credential|key\.pem)", key, re.IGNORECASE))


def redact_url(url: str) -> str:
    """``url`` fit to show: the password of ``user:password@`` and secret query values as ``***``."""
    parts = urlsplit(url)
    shown = url
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        shown = shown.replace(f"{userinfo}@", f"{userinfo.split(':', 1)[0]}:***@", 1)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(is_secret_setting(k) for k, _ in pairs):
        query = urlencode([(k, "***" if is_secret_setting(k) else v) for k, v in pairs], safe="*")
        shown = shown.partition("?")[0] + "?" + query + (f"#{parts.fragment}" if parts.fragment else "")
    return shown


class Transport(Protocol):
    """An upstream. One may also offer ``send_many(batches)``: deliver a train
    of batches in one round trip, or raise :class:`PartialSend` saying how
    many of the first ones it holds (the forwarder uses it when present)."""

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


#: librdkafka settings the exactly-once guarantee rests on, and the only values
#: a user setting may give them (the ones tidegate sets anyway). A weaker
#: acks lets a broker acknowledge a batch it can still lose after the cursor
#: moved; without idempotence, librdkafka's own retries may write a batch
#: twice or out of order. Both aliases of acks are listed: librdkafka takes
#: either, and the last one given wins.
KAFKA_SAFETY_SETTINGS: Mapping[str, tuple[str, ...]] = {
    "acks": ("all", "-1"),
    "request.required.acks": ("all", "-1"),
    "enable.idempotence": ("true",),
}


def _setting_text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value).strip().lower()


def check_kafka_settings(settings: Mapping[str, object]) -> None:
    """Refuse user settings that would override the producer's safety settings.

    Raises:
        InvalidUpstream: naming the setting, its value and why it is refused.
    """
    for key, value in settings.items():
        allowed = KAFKA_SAFETY_SETTINGS.get(key)
        if allowed is not None and _setting_text(value) not in allowed:
            raise InvalidUpstream(
                key, str(value),
                f"exactly-once delivery needs acks=all and enable.idempotence=true, which tidegate sets "
                f"itself; remove {key} from [upstream.settings] (or the kafka:// address)",
            )


def kafka_transport_config(bootstrap: str, settings: Mapping[str, str] | None = None,
                           timeout_s: float = 30.0) -> dict[str, str | int | bool]:
    """The librdkafka configuration of the batch producer: tidegate's settings, then the user's.

    User settings (TLS, SASL, timeouts...) pass through unchanged and are
    applied last, except that none may weaken :data:`KAFKA_SAFETY_SETTINGS`.

    Raises:
        InvalidUpstream: a user setting overrides acks or enable.idempotence.
    """
    config: dict[str, str | int | bool] = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        # A train of batches (send_many) goes in one produce request; lz4
        # over the request folds what its batches repeat (magic, names,
        # keys, header names), which on sparse windows is most of a small
        # batch. librdkafka sends a message set uncompressed when lz4 does
        # not make it smaller, so a lone, already compressed batch costs
        # nothing extra (docs/benchmarks.md, "Uplink bytes per reading").
        "compression.type": "lz4",
        "linger.ms": 0,
        "message.timeout.ms": int(timeout_s * 1000),
        "message.max.bytes": 8 * 1024 * 1024,
        # After an outage, try the link again within 2 s rather than
        # librdkafka's 10 s: a connection attempt costs a few bytes, and
        # the backlog waits for it.
        "reconnect.backoff.max.ms": 2000,
    }
    check_kafka_settings(settings or {})
    config.update(settings or {})
    return config


def _without_secrets(text: str, settings: Mapping[str, object]) -> str:
    """``text`` with the value of every secret setting replaced by ``***`` (librdkafka may quote values)."""
    for key, value in settings.items():
        if is_secret_setting(key) and str(value):
            text = text.replace(str(value), "***")
    return text


class KafkaTransport:
    """Batches as messages on a Kafka topic, with confluent-kafka.

    The producer is idempotent with acks=all, so librdkafka's own retries never
    duplicate or reorder a batch within one producer session; duplicates from a
    resend after a crash are removed downstream by reading id (see
    docs/batch_format.md, "Reading identity"). ``send_many`` produces a
    whole train and waits once, so a backlog drains at the link's throughput
    rather than one batch per round trip. Settings that
    librdkafka finds incompatible with idempotence (retries=0,
    max.in.flight above 5, queuing.strategy=lifo) make it refuse to start.

    Args:
        bootstrap: "host:port[,host:port...]".
        topic: the batch topic.
        settings: extra librdkafka settings (TLS, SASL, ...), applied last;
            they may not override acks or enable.idempotence.
        timeout_s: how long ``send`` waits for the acknowledgement.

    Raises:
        UpstreamConfigError: a setting is refused, here or by librdkafka (the
            message never shows a secret setting's value).
    """

    def __init__(self, bootstrap: str, topic: str, settings: Mapping[str, str] | None = None, timeout_s: float = 30.0) -> None:
        from confluent_kafka import Producer  # imported here so spool-only installs never load librdkafka

        config = kafka_transport_config(bootstrap, settings, timeout_s)
        try:
            self._producer = Producer(config)
        except Exception as exc:  # KafkaException on bad settings
            # Not chained (from None): librdkafka's own exception text could
            # quote a secret into a logged traceback; ours is scrubbed.
            raise UpstreamConfigError(f"bad Kafka settings: {_without_secrets(str(exc), config)}") from None
        self.topic = topic
        self._timeout_s = timeout_s
        self._lock = threading.Lock()

    def send(self, batch: bytes, header: BatchHeader) -> None:
        self.send_many([(batch, header)])

    def send_many(self, batches: Sequence[tuple[bytes, BatchHeader]]) -> None:
        """Produce a train of batches and wait for Kafka to acknowledge all of them.

        Raises:
            PartialSend: Kafka acknowledged only the first ``acknowledged``
                batches, in train order (later ones may have arrived too;
                they are sent again, and the central side drops them by
                reading id).
        """
        # index -> error (None once acknowledged); absent: no report yet
        outcome: dict[int, object] = {}

        def reporter(index: int) -> Callable[[object, object], None]:
            def delivered(err: object, msg: object) -> None:
                outcome[index] = err
            return delivered

        with self._lock:
            produced = 0
            refusal: Exception | None = None
            for index, (batch, header) in enumerate(batches):
                try:
                    self._producer.produce(
                        self.topic,
                        value=batch,
                        key=kafka_key(header),
                        headers=kafka_headers(header),
                        timestamp=header.window.start_ms,
                        on_delivery=reporter(index),
                    )
                except (BufferError, Exception) as exc:  # KafkaException, BufferError
                    refusal = exc
                    break
                produced += 1
            remaining = self._producer.flush(self._timeout_s)
        acknowledged = 0
        while acknowledged < produced and acknowledged in outcome and outcome[acknowledged] is None:
            acknowledged += 1
        if acknowledged == len(batches):
            return
        if refusal is not None and acknowledged == produced:
            reason = f"Kafka refused batch {produced + 1} of {len(batches)}: {refusal}"
        elif remaining and acknowledged not in outcome:
            reason = f"Kafka did not acknowledge batch {acknowledged + 1} of {len(batches)} within {self._timeout_s} s"
        else:
            reason = f"Kafka did not take batch {acknowledged + 1} of {len(batches)}: {outcome.get(acknowledged)}"
        raise PartialSend(reason, acknowledged)

    def close(self) -> None:
        """Flush, then destroy the producer here and now.

        Left to the garbage collector, librdkafka handles with Python
        callbacks can be destroyed in another thread, or at interpreter exit,
        and crash the process (confluent-kafka-python issue 1761).
        """
        self._producer.flush(5)
        self._producer.close()


@dataclass(frozen=True, slots=True)
class SpoolUpstream:
    """``spool:DIR``: batch files in a directory."""

    directory: Path


@dataclass(frozen=True, slots=True)
class KafkaUpstream:
    """``kafka://HOST:PORT[,HOST:PORT]/TOPIC``: a Kafka batch topic, with its librdkafka settings."""

    bootstrap: str
    topic: str
    settings: Mapping[str, str] = field(default_factory=dict, repr=False)


def _kafka_servers(url: str, netloc: str) -> str:
    shown = redact_url(url)
    if not netloc:
        raise InvalidUpstream("url", shown, "kafka needs host:port, e.g. kafka://127.0.0.1:9092")
    for server in netloc.split(","):
        host, colon, port = server.rpartition(":")
        if server.endswith("]") and server.startswith("["):
            continue  # a bare IPv6 address: librdkafka's default port
        if not server or (colon and (not host or not port.isdigit() or not 0 < int(port) < 65536)):
            raise InvalidUpstream("url", shown, f"bootstrap server {server!r} must be HOST or HOST:PORT (port 1..65535)")
    return netloc


def _mqtt_upstream(url: str, parts: SplitResult, options: Mapping[str, str]) -> MqttUpstreamConfig:
    from bridge.mqtt_upstream import DEFAULT_PREFIX, MqttUpstreamConfig

    shown = redact_url(url)
    for key in options:
        if key not in MQTT_SETTINGS:
            raise InvalidUpstream(key, "***" if is_secret_setting(key) else options[key],
                                  f"not a setting of an MQTT upstream; allowed: {', '.join(MQTT_SETTINGS)}")
    try:
        timeout_s = float(options.get("timeout_s", 30.0))
    except ValueError:
        raise InvalidUpstream("timeout_s", options["timeout_s"], "must be a number of seconds") from None
    try:
        keepalive_s = int(options.get("keepalive_s", 30))
    except ValueError:
        raise InvalidUpstream("keepalive_s", options["keepalive_s"], "must be a whole number of seconds") from None
    try:
        port = parts.port  # raises ValueError when out of range
    except ValueError as exc:
        raise InvalidUpstream("url", shown, f"{exc}; the port must be in 1..65535") from exc
    if not parts.hostname:
        raise InvalidUpstream("url", shown, "mqtt needs a host, e.g. mqtt://broker.example.net:1883")
    try:
        return MqttUpstreamConfig(
            host=parts.hostname,
            port=(8883 if parts.scheme == "mqtts" else 1883) if port is None else port,
            prefix=parts.path.strip("/") or DEFAULT_PREFIX,
            client_id=options.get("client_id", "tidegate-bridge"),
            username=options.get("username", parts.username),
            password=options.get("password", parts.password),
            tls=parts.scheme == "mqtts",
            ca_file=options.get("ca_file"),
            timeout_s=timeout_s,
            keepalive_s=keepalive_s,
        )
    except UpstreamConfigError as exc:  # MqttUpstreamConfig's own range checks
        raise InvalidUpstream("url", shown, str(exc)) from exc


def parse_upstream(url: str, settings: Mapping[str, str] | None = None) -> SpoolUpstream | KafkaUpstream | MqttUpstreamConfig:
    """Check an upstream address and its settings, without connecting to anything.

    * ``spool:DIR`` or ``spool:///abs/dir``: batch files in a directory;
    * ``kafka://host:port[,host:port]/topic``: a Kafka batch topic (default
      topic ``tidegate.batches``); query parameters are librdkafka settings.
    * ``mqtt://[user:pass@]host[:port][/prefix]`` or ``mqtts://...`` (TLS): an
      upstream MQTT broker, batches on ``<prefix>/<gateway>/<stream>``
      (default prefix ``tidegate/batches``) with QoS 1; settings
      ``client_id``, ``username``, ``password``, ``ca_file``, ``timeout_s``,
      ``keepalive_s`` (bridge/mqtt_upstream.py).

    ``settings`` (``[upstream.settings]``) are applied over the address's query.
    This is the one check of an address: the configuration file, the command
    line and :func:`open_upstream` all use it.

    Returns:
        What the address names, validated.

    Raises:
        InvalidUpstream: the address is not one of these, or a setting is not
            allowed; its message names the setting and never shows a secret.
    """
    parts = urlsplit(url)
    if parts.fragment or url.endswith("#"):
        # urlsplit would silently drop it, and with it an MQTT wildcard or a piece of a topic name.
        raise InvalidUpstream("url", redact_url(url), f"'#' is not allowed in an upstream address; must be {UPSTREAM_FORMS}")
    merged = dict(parse_qsl(parts.query))
    merged.update(settings or {})
    if parts.scheme == "spool":
        path = parts.path if parts.netloc in ("", "localhost") else parts.netloc + parts.path
        if not path:
            raise InvalidUpstream("url", url, "spool needs a directory, e.g. spool:./spool")
        return SpoolUpstream(Path(path))
    if parts.scheme == "kafka":
        check_kafka_settings(merged)
        return KafkaUpstream(_kafka_servers(url, parts.netloc), parts.path.strip("/") or "tidegate.batches", merged)
    if parts.scheme in ("mqtt", "mqtts"):
        return _mqtt_upstream(url, parts, merged)
    raise InvalidUpstream("url", redact_url(url), f"must be {UPSTREAM_FORMS}")


def open_upstream(url: str, settings: Mapping[str, str] | None = None) -> Transport:
    """Open a transport from an upstream address (the forms of :func:`parse_upstream`).

    Raises:
        UpstreamConfigError: the address or a setting is not allowed, or
            librdkafka refuses the settings.
    """
    target = parse_upstream(url, settings)
    if isinstance(target, SpoolUpstream):
        return SpoolTransport(target.directory)
    if isinstance(target, KafkaUpstream):
        return KafkaTransport(target.bootstrap, target.topic, target.settings)
    from bridge.mqtt_upstream import MqttTransport

    return MqttTransport(target)
