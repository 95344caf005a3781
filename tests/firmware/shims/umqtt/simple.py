"""A fake ``umqtt.simple``: the MQTTClient API of micropython-lib, talking to an in-memory broker.

Behaviour that matters to the firmware, as umqtt.simple has it:

* ``connect()`` fails with OSError unless the WLAN station is connected
  (network.air) and the broker is up; ``timeout`` is accepted as in
  umqtt.simple 1.5+ (``old_api`` models 1.4, without it).
* ``publish(topic, msg, qos=1)`` blocks until the PUBACK and returns
  nothing; on a broken link it raises OSError. Faults can make the broker
  *store* a message and then lose the PUBACK (``broker.lose_puback``), so the
  firmware resends it: the duplicate the gateway's dedup exists for.
* no automatic reconnect (that is the firmware's job).

``broker`` (``umqtt.simple.broker``) records what was delivered.
"""


class MQTTException(Exception):
    pass


class Broker:
    def __init__(self):
        self.up = True
        self.messages = []  # (topic, payload, qos, retain) in arrival order
        self.connects = []  # (client_id, clean_session, keepalive, timeout)
        self.pings = 0
        self.fail_publish = 0  # the next N publishes fail before reaching the broker
        self.lose_puback = 0  # the next N publishes are stored, then the link breaks
        self.old_api = False  # umqtt.simple 1.4: connect() takes no timeout
        self.refuse = 0  # CONNACK return code to answer with (5: not authorised)


broker = Broker()


def new_broker():
    """Replace ``umqtt.simple.broker`` with a fresh one and return it."""
    global broker
    broker = Broker()
    return broker


def _reachable():
    import network

    return broker.up and network.air.connected


class _Sock:
    def __init__(self):
        self.timeout = None

    def settimeout(self, value):
        self.timeout = value

    def close(self):
        pass


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None):
        self.client_id = client_id
        self.server = server
        self.port = port or 1883
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.sock = None
        self.pid = 0
        self.lw = None

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.lw = (topic, msg, retain, qos)

    def _connect(self, clean_session, timeout):
        if not _reachable():
            raise OSError(113)  # EHOSTUNREACH
        if broker.refuse:
            raise MQTTException(broker.refuse)
        self.sock = _Sock()
        self.sock.settimeout(timeout)
        broker.connects.append((self.client_id, clean_session, self.keepalive, timeout))
        return 0

    def connect(self, clean_session=True, *args, **kwargs):
        if broker.old_api and (args or kwargs):
            raise TypeError("connect() takes no timeout in umqtt.simple 1.4")
        timeout = kwargs.get("timeout", args[0] if args else None)
        return self._connect(clean_session, timeout)

    def disconnect(self):
        if self.sock is None:
            raise OSError(9)  # EBADF
        self.sock = None

    def ping(self):
        if self.sock is None or not _reachable():
            raise OSError(104)
        broker.pings += 1

    def publish(self, topic, msg, retain=False, qos=0):
        if self.sock is None:
            raise AttributeError("'NoneType' object has no attribute 'write'")  # as umqtt.simple fails
        if not _reachable() or broker.fail_publish:
            if broker.fail_publish:
                broker.fail_publish -= 1
            self.sock = None
            raise OSError(104)  # ECONNRESET
        self.pid += 1
        broker.messages.append((topic if isinstance(topic, str) else topic.decode(), bytes(msg), qos, retain))
        if qos == 1 and broker.lose_puback:
            broker.lose_puback -= 1
            self.sock = None
            raise OSError(110)  # ETIMEDOUT waiting for the PUBACK
