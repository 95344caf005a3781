"""MQTT over Wi-Fi: samples published to the gateway's Mosquitto with QoS 1 (umqtt.simple).

Theory of operation
-------------------
One visible reconnect path, as umqtt.robust layers it over umqtt.simple:
:meth:`MqttTransport.ensure_link` brings Wi-Fi up (polling ``isconnected``
and feeding the watchdog while it waits), then connects the MQTT client; any
failure closes what was opened and returns False, and the sample loop tries
again at its next cycle (one sample period later). Nothing here retries in a
loop, so the watchdog and the sample schedule stay in charge.

:meth:`MqttTransport.send` publishes one message with QoS 1: umqtt.simple's
``publish`` returns only after the broker's PUBACK. Only then does the sample
loop remove the samples from the ring. If the link breaks before the PUBACK,
the samples stay and are sent again: the broker may then hold them twice,
which is what QoS 1 means; the gateway drops the copy by ``(d, b, s)``
(docs/ingest.md, "Deduplication").

Several buffered samples go out as one message, a msgpack array of up to
``mqtt.pack_max`` samples (tidegate_node.encode.encode_pack), which the
gateway's codecs read as a pack: a replay after a long outage costs one
round trip per ten samples, not per sample.

Topic: ``sensors/<device>`` by default, which the gateway's default route
``sensors/{device}`` takes.

Errors from umqtt.simple are OSError (socket), ``MQTTException`` (a refused
CONNECT) and, for a malformed answer, AssertionError or AttributeError (it
checks with ``assert`` and writes to ``None`` after a failed connect); all
become :class:`TransportError` here, the one exception the sample loop sees.
"""

from tidegate_node.encode import encode_pack
from tidegate_node.errors import TransportError

__all__ = ["MqttTransport", "TransportError"]


class MqttTransport:
    """Wi-Fi station plus one umqtt.simple client.

    Args:
        config: the node ``Config`` (``wifi`` and ``mqtt`` sections).
        clock: the node's clock (for waiting while Wi-Fi associates).
        feed: a function that feeds the watchdog; called while waiting.
        network: the ``network`` module (injected for tests; the real one by default).
        client_factory: ``umqtt.simple.MQTTClient`` or a stand-in.
    """

    def __init__(self, config, clock, feed=None, network=None, client_factory=None):
        if network is None:
            import network
        if client_factory is None:
            from umqtt.simple import MQTTClient as client_factory
        self._wifi = config.wifi
        self._mqtt = config.mqtt
        self._clock = clock
        self._feed = feed or (lambda: None)
        self._network = network
        self._client_factory = client_factory
        self._wlan = None
        self._client = None
        self.max_batch = config.mqtt.pack_max
        self.connects = 0
        self.failures = 0
        self.last_error = None
        self._last_send_ms = 0

    @property
    def connected(self):
        return self._client is not None

    def _wifi_up(self):
        network = self._network
        if self._wlan is None:
            self._wlan = network.WLAN(network.STA_IF)
        wlan = self._wlan
        if not wlan.active():
            wlan.active(True)
        if wlan.isconnected():
            return True
        wlan.connect(self._wifi.ssid, self._wifi.password)
        waited = 0
        while waited < self._wifi.timeout_ms:
            self._feed()
            if wlan.isconnected():
                return True
            status = wlan.status()
            # Give up at once on answers that waiting will not change.
            if status in (getattr(network, "STAT_WRONG_PASSWORD", -3), getattr(network, "STAT_NO_AP_FOUND", -2),
                          getattr(network, "STAT_CONNECT_FAIL", -1)):
                self.last_error = "wifi status " + str(status)
                return False
            self._clock.sleep_ms(100)
            waited += 100
        self.last_error = "wifi timeout"
        return False

    def ensure_link(self):
        """Connect Wi-Fi and MQTT if needed.

        Returns:
            True when a publish can be tried; False after a failure (recorded
            in :attr:`last_error` and :attr:`failures`), with everything closed.
        """
        if self._client is not None:
            return True
        if not self._wifi_up():
            self.failures += 1
            return False
        m = self._mqtt
        client = self._client_factory(m.client_id, m.host, port=m.port, user=m.user, password=m.password,
                                      keepalive=m.keepalive_s)
        timeout_s = m.timeout_ms / 1000
        self._feed()
        try:
            try:
                client.connect(clean_session=True, timeout=timeout_s)
            except TypeError:  # umqtt.simple before 1.5 has no timeout argument
                client.connect(clean_session=True)
                sock = getattr(client, "sock", None)
                if sock is not None:
                    sock.settimeout(timeout_s)
        except Exception as exc:  # OSError, MQTTException, AssertionError: see the module docstring
            self.failures += 1
            self.last_error = "connect: " + repr(exc)
            return False
        self._client = client
        self.connects += 1
        self._last_send_ms = self._clock.uptime_ms()
        return True

    def send(self, samples):
        """Publish packed samples as one QoS 1 message and wait for the PUBACK.

        Args:
            samples: packed sample maps (1..``max_batch``), oldest first.

        Raises:
            TransportError: not connected, or the link failed before the
                PUBACK; the connection is closed.
        """
        client = self._client
        if client is None:
            raise TransportError("not connected")
        payload = samples[0] if len(samples) == 1 else encode_pack(samples)
        self._feed()
        try:
            client.publish(self._mqtt.topic, payload, qos=1)
        except Exception as exc:
            self._drop(exc)
            raise TransportError("publish: " + repr(exc))
        self._last_send_ms = self._clock.uptime_ms()

    def maybe_ping(self):
        """Send a PINGREQ when the connection was idle for half the keepalive; may do nothing."""
        client = self._client
        keepalive_ms = self._mqtt.keepalive_s * 1000
        if client is None or not keepalive_ms:
            return
        if self._clock.uptime_ms() - self._last_send_ms < keepalive_ms // 2:
            return
        try:
            client.ping()
            self._last_send_ms = self._clock.uptime_ms()
        except Exception as exc:
            self._drop(exc)

    def _drop(self, exc):
        self.failures += 1
        self.last_error = repr(exc)
        client = self._client
        self._client = None
        # The socket is in an unknown state: close it without a DISCONNECT.
        sock = getattr(client, "sock", None)
        if sock is not None:
            try:
                sock.close()
            except Exception:
                pass

    def close(self, radio_off=False):
        """Disconnect cleanly; with ``radio_off``, also switch Wi-Fi off (before deep sleep)."""
        client = self._client
        self._client = None
        if client is not None:
            try:
                client.disconnect()
            except Exception:
                pass
        if radio_off and self._wlan is not None:
            self._wlan.active(False)
