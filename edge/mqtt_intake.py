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

That includes the first connect of a process. A missing session is normal
only the very first time this gateway meets this broker; after that it means
the broker lost what it queued while the gateway was down (a broker restarted
without its persistence file, or a session that outlived its expiry). So once
the broker has acknowledged our subscriptions, :class:`SessionMarker` notes it
in a small file of the data directory, keyed by client id and broker address,
and a later process whose first connect finds no session reports
``session_lost`` as well.

Mosquitto drops QoS 1 messages silently once a client's queue passes
``max_queued_messages``. It counts them in ``$SYS/broker/publish/messages/dropped``
(checked on Mosquitto 2.0.11: the counter does include QoS 1 drops), so the
intake subscribes to it and reports its value through ``on_broker_dropped``
and a warning: for the first value seen if it is not zero (drops that happened
while tidegate was away, or before it started; the counter is the broker's,
since its start, for all clients), and for every rise after that.

Acknowledgements come from the gateway's writer thread, a batch at a time
(every message the last group commit made durable). paho queues one packet
per acknowledgement, writes a byte to a socket pair to wake its network thread
for each, and sends each with its own system call: for one reading per
message, that was a third of the writer's time and a tenth of the network
thread's. Inside :meth:`MqttIntake.batched_acks` the writer's
acknowledgements are collected, and at the end they go to paho as one
packet of back-to-back PUBACKs (each is four bytes: ``0x40``, remaining
length 2, the packet id), so one wake-up and one ``send``. That relies on
paho's private ``_packet_queue``; if paho has none (or changes it), they go
out one by one through :meth:`paho.mqtt.client.Client.ack`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.errors import BrokerUnavailable

__all__ = ["MqttConfig", "Received", "MqttIntake", "SessionMarker", "BROKER_DROPPED_TOPIC", "SESSION_MARKER_FILE"]

BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"

#: The session marker's file name in the data directory.
SESSION_MARKER_FILE = "mqtt-sessions.json"

log = logging.getLogger("tidegate.mqtt")

#: A PUBACK as a big-endian 32-bit word less its packet id: type 4 (``0x40``), remaining length 2.
_PUBACK_WORD = 0x4002_0000

#: How much one read of the broker connection asks for.
_READ_SIZE = 65536

#: Whether paho has the private method that queues a ready-made packet (paho-mqtt 1.x and 2.x do).
_PAHO_QUEUES_PACKETS = callable(getattr(paho.Client, "_packet_queue", None))


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


@dataclass(slots=True)
class Received:
    """One message from the broker, and how to acknowledge it.

    Not frozen, like :class:`edge.gateway.Message`: one is made per message on
    paho's thread, and a frozen dataclass takes four times as long to make.
    """

    topic: str
    payload: bytes
    mid: int
    qos: int
    duplicate: bool


class _ReadBuffered:
    """A TCP socket whose reads come from a buffer filled 64 KiB at a time.

    paho reads each packet with two or three ``recv`` calls (the type byte, the
    length bytes one by one, then the rest). Each is a system call that drops
    the interpreter lock, and with the gateway's writer waiting for that lock
    every drop can hand it over: three system calls and as many thread
    switches per one-reading message. From the buffer, those reads are
    slices. ``pending`` is what paho asks an SSL socket before it sleeps in
    ``select()``: while it is not zero, paho reads on without waiting.
    Everything else is the socket's own.
    """

    __slots__ = ("sock", "_buffer", "_position")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self._position = 0

    def recv(self, size: int) -> bytes:
        buffer, position = self._buffer, self._position
        if position == len(buffer):
            data = self.sock.recv(max(size, _READ_SIZE))
            if len(data) <= size:
                return data
            self._buffer = buffer = data
            position = 0
        end = min(position + size, len(buffer))
        self._position = end
        return buffer[position:end]

    def pending(self) -> int:
        return len(self._buffer) - self._position

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


class _ReadBufferedClient(paho.Client):
    """paho's client, reading a plain TCP connection through :class:`_ReadBuffered`.

    A TLS socket is left as it is: it already reads a whole record at a time
    and answers ``pending`` itself.
    """

    def _create_socket(self):  # type: ignore[no-untyped-def]
        sock = super()._create_socket()
        if type(sock) is socket.socket:
            return _ReadBuffered(sock)
        return sock


class SessionMarker:
    """Whether a broker has held this gateway's session before, remembered in a file.

    The file is a JSON object ``{"<client id>@<host>:<port>": <first ms>}``,
    written once per broker (atomically: a temporary file, fsync, rename), so
    it costs the SD card nothing in normal running.

    Args:
        path: the file (``<data dir>/mqtt-sessions.json``); its directory is made if missing.
        key: which session, ``client_id@host:port``.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path = Path(path)
        self.key = key
        self._known = key in self._read()

    def _read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("cannot read the MQTT session marker %s (%s); a lost session on the first connect "
                        "will not be noticed", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def known(self) -> bool:
        """True once the broker has held our session (in this process or an earlier one)."""
        return self._known

    def remember(self) -> None:
        """Note that the broker holds our session now; does nothing if already noted."""
        if self._known:
            return
        data = self._read()
        data[self.key] = int(time.time() * 1000)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot write the MQTT session marker %s: %s", self.path, exc)
            return
        self._known = True


class MqttIntake:
    """Subscribe and hand every message to ``on_message``; acknowledge on request.

    Args:
        config: connection settings.
        on_message: called in paho's network thread for every message; it
            must not block for long (the gateway queues the message).
        on_event: called with a short event name ("connected",
            "subscribed", "session_lost", "disconnected", "refused") for
            metrics and logs.
        on_broker_dropped: called with the broker's own count of dropped
            messages (since the broker started) whenever it changes.
        state_dir: the data directory, where the session marker is kept
            (:data:`SESSION_MARKER_FILE`); without one only reconnects within
            this process are checked for a lost session.
    """

    def __init__(
        self,
        config: MqttConfig,
        on_message: Callable[[Received], None],
        on_event: Callable[[str], None] = lambda event: None,
        on_broker_dropped: Callable[[int], None] = lambda count: None,
        state_dir: Path | None = None,
    ) -> None:
        self.config = config
        self._on_message = on_message
        self._on_event = on_event
        self._on_broker_dropped = on_broker_dropped
        self._broker_dropped: int | None = None
        self._connected_once = False
        self._subscribe_mid: int | None = None
        self._batches = threading.local()  # per thread: the packet ids of an open batched_acks(), or None
        self.session_marker = (
            SessionMarker(Path(state_dir) / SESSION_MARKER_FILE, f"{config.client_id}@{config.host}:{config.port}")
            if state_dir is not None else None
        )
        client = _ReadBufferedClient(
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
        client.on_subscribe = self._handle_subscribe
        # The broker's drop counter is told apart in _handle_message: a
        # message_callback_add would make paho match every message's topic
        # against a tree of filters first.
        client.on_message = self._handle_message
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
        batch: list[int] | None = getattr(self._batches, "mids", None)
        if batch is not None and message.qos == 1:
            batch.append(message.mid)
            return
        self._client.ack(message.mid, message.qos)

    @contextmanager
    def batched_acks(self) -> Iterator[None]:
        """This thread's acknowledgements inside go to the broker together, at the end: one packet, one wake-up.

        Nested uses send at the outer end. Other threads' acknowledgements are
        not held back.
        """
        batches = self._batches
        if getattr(batches, "mids", None) is not None:
            yield
            return
        batches.mids = mids = []
        try:
            yield
        finally:
            batches.mids = None
            self._send_pubacks(mids)

    def _send_pubacks(self, mids: list[int]) -> None:
        if not mids:
            return
        if not _PAHO_QUEUES_PACKETS:
            for mid in mids:
                self._client.ack(mid, 1)
            return
        # paho writes a queued packet's bytes as they are, so several PUBACKs can share one.
        self._client._packet_queue(paho.PUBACK, struct.pack(f"!{len(mids)}I", *[_PUBACK_WORD | mid for mid in mids]), 0, 0)

    def _handle_connect(self, client: paho.Client, userdata: object, flags: paho.ConnectFlags,
                        reason: paho.ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            log.warning("MQTT connect refused: %s", reason)
            self._on_event("refused")
            return
        had_session = self._connected_once or (self.session_marker is not None and self.session_marker.known)
        if had_session and not flags.session_present:
            log.warning("MQTT broker %s:%d did not keep our session (client id %s): readings it queued while we "
                        "were away are lost (broker restarted without its persistence, or the session expired)",
                        self.config.host, self.config.port, self.config.client_id)
            self._on_event("session_lost")
        self._connected_once = True
        # Subscribing again is harmless with a kept session and necessary without one.
        _, self._subscribe_mid = client.subscribe(
            [(topic, SubscribeOptions(qos=1)) for topic in self.config.subscriptions]
            + [(BROKER_DROPPED_TOPIC, SubscribeOptions(qos=0))]
        )
        self._on_event("connected")

    def _handle_subscribe(self, client: paho.Client, userdata: object, mid: int, reasons: list[paho.ReasonCode],
                          properties: Properties | None) -> None:
        if mid != self._subscribe_mid:
            return
        topics = [*self.config.subscriptions, BROKER_DROPPED_TOPIC]
        refused = {topic: str(reason) for topic, reason in zip(topics, reasons) if reason.is_failure}
        if BROKER_DROPPED_TOPIC in refused:
            log.warning("MQTT broker refused %s (%s): its drops will not show in tidegate's metrics",
                        BROKER_DROPPED_TOPIC, refused.pop(BROKER_DROPPED_TOPIC))
        if refused:
            log.warning("MQTT broker refused subscriptions %s: their readings will not arrive", refused)
            return
        if self.session_marker is not None:
            self.session_marker.remember()
        self._on_event("subscribed")

    def _handle_disconnect(self, client: paho.Client, userdata: object, flags: paho.DisconnectFlags,
                           reason: paho.ReasonCode, properties: Properties | None) -> None:
        self._on_event("disconnected")

    def _handle_broker_dropped(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        try:
            count = int(message.payload)
        except ValueError:
            log.warning("unexpected payload on %s: %r", message.topic, message.payload[:40])
            return
        previous = self._broker_dropped
        if count == previous:
            return
        if previous is None or count < previous:  # first value seen, or the broker restarted (its counter with it)
            if count:
                log.warning("Mosquitto has dropped %d messages since it started, before tidegate saw its counter "
                            "(queued while tidegate was away? max_queued_messages reached? the count is for all "
                            "clients)", count)
        else:
            log.warning("Mosquitto dropped %d messages (max_queued_messages reached? the count is for all clients)",
                        count - previous)
        self._broker_dropped = count
        self._on_broker_dropped(count)

    def _handle_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        topic = message.topic
        if topic == BROKER_DROPPED_TOPIC:
            self._handle_broker_dropped(client, userdata, message)
            return
        self._on_message(Received(topic, bytes(message.payload), message.mid, message.qos, bool(message.dup)))
