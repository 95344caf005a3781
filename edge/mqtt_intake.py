"""MQTT intake: a small typed shell over paho-mqtt 2.x.

How this works: the client connects with a fixed client id, MQTT v5, clean
start off and a session expiry, so the broker keeps our subscriptions and
queues QoS 1 messages while the gateway is down. ``manual_ack=True``: paho does
not acknowledge a message when the callback returns; the gateway acknowledges
it (``ack``) only once the log holds it durably, so a crash between receipt
and sync makes the broker deliver it again instead of losing it.

paho runs its network loop in its own thread and reconnects by itself with
exponential backoff (the one reconnect loop); every connect checks
``session_present`` and counts a lost session, because a broker that lost our
session may have dropped queued readings.

Mosquitto drops QoS 1 messages silently once a client's queue passes
``max_queued_messages``. It counts them in ``$SYS/broker/publish/messages/dropped``
(checked on Mosquitto 2.0.11: the counter does include QoS 1 drops), so the
intake subscribes to it and reports every rise through ``on_broker_dropped``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.errors import BrokerUnavailable

__all__ = ["MqttConfig", "Received", "MqttIntake", "BROKER_DROPPED_TOPIC"]

BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"

log = logging.getLogger("tidegate.mqtt")


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Where and how to connect to the local broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "tidegate-gateway"
    subscriptions: tuple[str, ...] = ("sensors/#",)
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86400
    receive_maximum: int = 1000
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"mqtt.port {self.port} is not a TCP port (1..65535)")
        if not self.client_id:
            raise ValueError("mqtt.client_id must not be empty: a persistent session needs a fixed id")
        if not 1 <= self.receive_maximum <= 65535:
            raise ValueError(f"mqtt.receive_maximum {self.receive_maximum} is outside 1..65535")
        if not self.subscriptions:
            raise ValueError("mqtt.subscriptions must name at least one topic filter")


@dataclass(frozen=True, slots=True)
class Received:
    """One message from the broker, and how to acknowledge it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    duplicate: bool


class MqttIntake:
    """Subscribe and hand every message to ``on_message``; acknowledge on request.

    Args:
        config: connection settings.
        on_message: called in paho's network thread for every message; it
            must not block for long (the gateway queues the message).
        on_event: called with a short event name ("connected",
            "session_lost", "disconnected") for metrics and logs.
        on_broker_dropped: called with the broker's own count of dropped
            messages (since the broker started) whenever it changes.
    """

    def __init__(
        self,
        config: MqttConfig,
        on_message: Callable[[Received], None],
        on_event: Callable[[str], None] = lambda event: None,
        on_broker_dropped: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.config = config
        self._on_message = on_message
        self._on_event = on_event
        self._on_broker_dropped = on_broker_dropped
        self._broker_dropped: int | None = None
        self._connected_once = False
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(config.receive_maximum)
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        if config.tls_ca_file or config.tls_cert_file:
            client.tls_set(
                ca_certs=config.tls_ca_file,
                certfile=config.tls_cert_file,
                keyfile=config.tls_key_file,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.message_callback_add(BROKER_DROPPED_TOPIC, self._handle_broker_dropped)
        self._client = client

    def start(self) -> None:
        """Connect and start paho's network thread (which reconnects by itself).

        Raises:
            BrokerUnavailable: the first connection attempt failed.
        """
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        props.ReceiveMaximum = self.config.receive_maximum
        try:
            self._client.connect(
                self.config.host, self.config.port, keepalive=self.config.keepalive_s,
                clean_start=False, properties=props,
            )
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(f"cannot connect to MQTT broker {self.config.host}:{self.config.port}: {exc}") from exc
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly; the session (and un-acked messages) stay on the broker."""
        self._client.disconnect()
        self._client.loop_stop()

    def ack(self, message: Received) -> None:
        """Acknowledge a message the log now holds durably. Safe from any thread."""
        self._client.ack(message.mid, message.qos)

    def _handle_connect(self, client: paho.Client, userdata: object, flags: paho.ConnectFlags,
                        reason: paho.ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            log.warning("MQTT connect refused: %s", reason)
            self._on_event("refused")
            return
        if self._connected_once and not flags.session_present:
            log.warning("broker did not keep our session: readings queued while we were away may be lost")
            self._on_event("session_lost")
        self._connected_once = True
        # Subscribing again is harmless with a kept session and necessary without one.
        client.subscribe(
            [(topic, SubscribeOptions(qos=1)) for topic in self.config.subscriptions]
            + [(BROKER_DROPPED_TOPIC, SubscribeOptions(qos=0))]
        )
        self._on_event("connected")

    def _handle_disconnect(self, client: paho.Client, userdata: object, flags: paho.DisconnectFlags,
                           reason: paho.ReasonCode, properties: Properties | None) -> None:
        self._on_event("disconnected")

    def _handle_broker_dropped(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        try:
            count = int(message.payload)
        except ValueError:
            log.warning("unexpected payload on %s: %r", message.topic, message.payload[:40])
            return
        if count != self._broker_dropped:
            if self._broker_dropped is not None and count > self._broker_dropped:
                log.error("Mosquitto dropped %d messages (max_queued_messages reached?)", count - self._broker_dropped)
            self._broker_dropped = count
            self._on_broker_dropped(count)

    def _handle_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        self._on_message(Received(message.topic, bytes(message.payload), message.mid, message.qos, bool(message.dup)))
