"""MQTT as the upstream: batches published with QoS 1 to a central broker, and read back into Kafka.

Theory of operation
-------------------
The gateway side, :class:`MqttTransport`, publishes each batch (unchanged
bytes, docs/batch_format.md) to ``<prefix>/<gateway>/<stream>`` (default
prefix ``tidegate/batches``) with QoS 1, and ``send`` returns only when the
broker's PUBACK arrived: the transport contract of bridge/transports.py, so
the forwarder's cursor moves only then. On a timeout or a lost connection the
client is dropped and ``send`` raises :class:`TransportError`; the next send
connects afresh (the forwarder's loop backs off between tries). Dropping the
client also drops whatever paho still held for it, so a long outage never
piles up copies of a batch in memory; the resend has the same reading ids,
and the central side drops what it has seen.

The central side, :class:`MqttBatchSource`, subscribes to ``<prefix>/#`` with
QoS 1 in a persistent session (a fixed client id, clean session off) and
acknowledges a batch to the broker only after the Kafka transaction that
holds its readings committed (paho's manual acks). The expansion is the Kafka
expander's (bridge/central.py): the same readings records, the same applied
ranges in the same state topic format, written in the same transaction. A
crash before the commit means the broker delivers the batch again; a crash
after it means the applied ranges drop it. One instance per state topic: MQTT
shared subscriptions do not keep a stream on one consumer, so this source
does not scale out (the Kafka batch topic does).

The central broker must queue without dropping while the source is away
(Mosquitto: ``max_queued_messages 0`` or large, as edge/mosquitto.conf.in
sets, and ``persistent_client_expiration`` long enough).
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from core.batch import BatchHeader
from core.errors import BatchFormatError
from bridge.central import (
    CentralConfig,
    Expander,
    ExpanderStats,
    load_state,
    produce,
    producer_config,
    state_reader_config,
)
from bridge.errors import BridgeError, TransportError, UpstreamConfigError

__all__ = ["DEFAULT_PREFIX", "MqttUpstreamConfig", "MqttTransport", "MqttBatchSource", "batch_topic"]

log = logging.getLogger("tidegate.mqtt_upstream")

DEFAULT_PREFIX = "tidegate/batches"


@dataclass(frozen=True, slots=True)
class MqttUpstreamConfig:
    """Where and how to reach the upstream MQTT broker.

    Raises:
        UpstreamConfigError: a value is out of range, or the prefix holds a wildcard.
    """

    host: str
    port: int = 1883
    client_id: str = "tidegate-bridge"
    prefix: str = DEFAULT_PREFIX
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    keepalive_s: int = 30
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.host:
            raise UpstreamConfigError("MQTT upstream needs a host")
        if not 0 < self.port < 65536:
            raise UpstreamConfigError(f"MQTT upstream port {self.port} is outside 1..65535")
        if not self.prefix or any(c in self.prefix for c in "+#") or self.prefix.startswith("/") \
                or self.prefix.endswith("/"):
            raise UpstreamConfigError(f"MQTT topic prefix {self.prefix!r} must be non-empty, without + # or edge slashes")
        if not 0 < self.timeout_s <= 3600:
            raise UpstreamConfigError(f"MQTT upstream timeout {self.timeout_s} s is outside (0, 3600]")
        if not 5 <= self.keepalive_s <= 65535:
            raise UpstreamConfigError(f"MQTT keepalive {self.keepalive_s} s is outside 5..65535")


def batch_topic(prefix: str, header: BatchHeader) -> str:
    """The topic of a batch: one gateway's stream is one topic, so its batches keep their order."""
    return f"{prefix}/{header.gateway}/{header.stream}"


def _new_client(config: MqttUpstreamConfig, client_id: str, clean: bool, manual_ack: bool = False) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                         manual_ack=manual_ack)
    if config.username is not None:
        client.username_pw_set(config.username, config.password)
    if config.tls:
        client.tls_set(ca_certs=config.ca_file, cert_reqs=ssl.CERT_REQUIRED)
    return client


class MqttTransport:
    """The bridge's transport to an upstream MQTT broker (QoS 1, send returns at PUBACK).

    Not thread-safe: one forwarder thread sends. Owns its paho client.
    """

    def __init__(self, config: MqttUpstreamConfig) -> None:
        self.config = config
        self._client: paho.Client | None = None
        self._connected = threading.Event()
        self._refused: str | None = None

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: object, properties: object) -> None:
        if getattr(reason, "is_failure", False):
            self._refused = str(reason)
        else:
            self._connected.set()

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object, reason: object,
                       properties: object) -> None:
        self._connected.clear()

    def _connect(self) -> paho.Client:
        """The connected client, connecting first if there is none (one try; the caller retries)."""
        if self._client is not None and self._connected.is_set():
            return self._client
        self._drop()
        client = _new_client(self.config, self.config.client_id, clean=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._connected.clear()
        self._refused = None
        try:
            client.connect(self.config.host, self.config.port, self.config.keepalive_s)
        except (OSError, ValueError) as exc:
            raise TransportError(f"cannot reach MQTT upstream {self.config.host}:{self.config.port}: {exc}") from exc
        client.loop_start()
        self._client = client
        if not self._connected.wait(self.config.timeout_s) or self._refused:
            reason = self._refused or f"no CONNACK within {self.config.timeout_s} s"
            self._drop()
            raise TransportError(f"MQTT upstream {self.config.host}:{self.config.port} refused us: {reason}")
        return client

    def _drop(self) -> None:
        client, self._client = self._client, None
        self._connected.clear()
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def send(self, batch: bytes, header: BatchHeader) -> None:
        """Publish one batch with QoS 1 and return at its PUBACK.

        Raises:
            TransportError: no connection, or no PUBACK within ``timeout_s``.
        """
        client = self._connect()
        info = client.publish(batch_topic(self.config.prefix, header), batch, qos=1)
        try:
            info.wait_for_publish(self.config.timeout_s)
        except (RuntimeError, ValueError) as exc:
            self._drop()
            raise TransportError(f"MQTT upstream did not take the batch: {exc}") from exc
        if not info.is_published():
            self._drop()
            raise TransportError(f"no PUBACK from the MQTT upstream within {self.config.timeout_s} s")

    def close(self) -> None:
        self._drop()


class MqttBatchSource:
    """The central expander fed from an upstream MQTT broker instead of the batch topic.

    Args:
        mqtt: the broker to subscribe to; ``client_id`` names the persistent
            session (keep it stable across restarts).
        config: the Kafka side (readings, state and dead-letter topics;
            ``instance_id`` gives the transactional id).
        on_transaction: called after each committed transaction with the counts.
    """

    def __init__(self, mqtt: MqttUpstreamConfig, config: CentralConfig,
                 on_transaction: Callable[[ExpanderStats], None] | None = None) -> None:
        self.mqtt = mqtt
        self.config = config
        self.stats = ExpanderStats()
        self.expander = Expander(config.value_format)
        self.transactional_id = config.transactional_id or f"{config.group_id}-mqtt-{uuid.uuid4().hex[:12]}"
        self._on_transaction = on_transaction
        self._stop = threading.Event()
        self._inbox: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self._producer: object | None = None
        self._client: paho.Client | None = None
        #: Set once the broker confirmed the subscription (the session exists from then on).
        self.subscribed = threading.Event()

    @classmethod
    def from_address(cls, address: str, config: CentralConfig,
                     on_transaction: Callable[[ExpanderStats], None] | None = None) -> MqttBatchSource:
        """From ``HOST:PORT``; the session's client id follows the instance (``<group>-<instance>``)."""
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UpstreamConfigError(f"--mqtt expects HOST:PORT, got {address!r}")
        client_id = f"{config.group_id}-{config.instance_id or 'central'}"
        return cls(MqttUpstreamConfig(host, int(port), client_id=client_id), config, on_transaction)

    def stop(self) -> None:
        self._stop.set()

    # -- the MQTT side --------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: object, properties: object) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT upstream refused the source: %s", reason)
            return
        client.subscribe(f"{self.mqtt.prefix}/#", qos=1)

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int, reasons: object, properties: object) -> None:
        log.info("subscribed to %s/# on %s:%d", self.mqtt.prefix, self.mqtt.host, self.mqtt.port)
        self.subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        self._inbox.put(message)

    def _start_mqtt(self) -> None:
        client = _new_client(self.mqtt, self.mqtt.client_id, clean=False, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(0.2, 5)
        client.max_inflight_messages_set(100)
        client.connect_async(self.mqtt.host, self.mqtt.port, self.mqtt.keepalive_s)
        client.loop_start()
        self._client = client

    # -- the Kafka side ---------------------------------------------------------

    def _new_producer(self) -> None:
        from confluent_kafka import Producer

        old, self._producer = self._producer, None
        if old is not None:
            old.purge(in_queue=True, in_flight=True, blocking=False)  # type: ignore[attr-defined]
        producer = Producer(producer_config(self.config, self.transactional_id))
        producer.init_transactions(self.config.operation_timeout_s)
        self._producer = producer

    def _load_all_state(self) -> None:
        from confluent_kafka import Consumer

        reader = Consumer(state_reader_config(self.config))
        try:
            metadata = reader.list_topics(self.config.state_topic, timeout=self.config.operation_timeout_s)
            topic = metadata.topics.get(self.config.state_topic)
            if topic is None or topic.error is not None:
                raise UpstreamConfigError(f"state topic {self.config.state_topic!r} does not exist")
            self.expander = Expander(self.config.value_format)
            load_state(reader, self.config, set(topic.partitions), self.expander, {})
            self.stats.state_loads += 1
        finally:
            reader.close()

    def _transact(self, messages: list[paho.MQTTMessage]) -> bool:
        from confluent_kafka import KafkaException

        producer = self._producer
        if producer is None:
            raise BridgeError("the source is not running")
        counts = ExpanderStats()
        try:
            producer.begin_transaction()  # type: ignore[attr-defined]
            for message in messages:
                self._expand_one(producer, message, counts)
            for key, value in self.expander.pending().items():
                # Keyed: the partitioner puts each gateway's stream in one state partition.
                produce(producer, self.config.state_topic, key.encode(), value)
            producer.commit_transaction(self.config.operation_timeout_s)  # type: ignore[attr-defined]
        except KafkaException as exc:
            self.expander.rollback()
            log.warning("transaction failed, recovering: %s", exc)
            return False
        self.expander.commit()
        self.stats.batches += counts.batches
        self.stats.readings += counts.readings
        self.stats.duplicates += counts.duplicates
        self.stats.dead_letters += counts.dead_letters
        self.stats.transactions += 1
        if self._on_transaction is not None:
            self._on_transaction(self.stats)
        return True

    def _expand_one(self, producer: object, message: paho.MQTTMessage, counts: ExpanderStats) -> None:
        try:
            expansion = self.expander.expand(message.payload)
        except BatchFormatError as exc:
            log.warning("batch on %s is not valid (%s): dead-lettered", message.topic, exc.reason)
            produce(producer, self.config.deadletter_topic, message.topic.encode(), message.payload, headers=[
                ("tg-reason", exc.reason.encode()), ("tg-error", str(exc).encode()),
                ("tg-source", f"mqtt:{message.topic}".encode()),
            ])
            counts.dead_letters += 1
            return
        for record in expansion.records:
            produce(producer, self.config.readings_topic, record.key, record.value, timestamp=record.timestamp_ms)
        counts.batches += 1
        counts.readings += len(expansion.records)
        counts.duplicates += expansion.duplicates

    def _recover(self) -> None:
        """New producer (fencing the old one's requests), state reloaded from Kafka."""
        self.stats.recoveries += 1
        while not self._stop.is_set():
            try:
                self._new_producer()
                self._load_all_state()
                return
            except Exception as exc:  # KafkaException, BridgeError: Kafka is not back yet
                log.warning("recovery failed, retrying: %s", exc)
                self._stop.wait(1.0)

    # -- life cycle -----------------------------------------------------------

    def run(self, duration_s: float | None = None) -> ExpanderStats:
        """Expand batches from MQTT until :meth:`stop` (or ``duration_s``); returns the counts."""
        self._new_producer()
        self._load_all_state()
        self._start_mqtt()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                try:
                    messages = [self._inbox.get(timeout=self.config.poll_timeout_s)]
                except queue.Empty:
                    continue
                while len(messages) < self.config.max_batches:
                    try:
                        messages.append(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                while not self._transact(messages):
                    self._recover()
                    if self._stop.is_set():
                        return self.stats
                # Only now does the broker forget them: a crash before this
                # line means they come again, and the applied ranges drop them.
                for message in messages:
                    self._client.ack(message.mid, message.qos)  # type: ignore[union-attr]
        finally:
            if self._client is not None:
                self._client.disconnect()
                self._client.loop_stop()
            self._producer = None
        return self.stats
