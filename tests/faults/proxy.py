"""A TCP proxy on loopback that can cut, stall, reset or slow the link it carries.

Put it between a client and a server (here: the bridge and Kafka's uplink
listener) and change what the link does while the test runs:

- ``pass``: bytes flow both ways (the start state; :meth:`FaultProxy.restore`);
- ``refuse``: every open connection is reset, and every new one is accepted
  and reset at once, as when a route is gone;
- ``blackhole``: nothing flows: bytes sent are held, new connections are
  accepted and get no answer, as when packets are dropped. On
  :meth:`~FaultProxy.restore` held bytes flow again, as TCP's retransmissions
  would deliver them;
- :meth:`~FaultProxy.reset_all`: a one-off reset of every open connection,
  mid-request, while new connections keep working;
- :meth:`~FaultProxy.throttle`: a bandwidth limit in bytes per second, each way.

It counts the bytes it forwards each way. Threads: one accept loop, two pumps
per connection; all daemons, and :meth:`~FaultProxy.close` stops them.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field

__all__ = ["FaultProxy", "free_port"]

MODES = ("pass", "refuse", "blackhole")


def free_port() -> int:
    """A loopback port free right now (another process may take it; good enough for tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN: the peer sees 'connection reset'."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


@dataclass
class _Connection:
    client: socket.socket
    server: socket.socket | None
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        _reset(self.client)
        if self.server is not None:
            _reset(self.server)


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``.

    Args:
        target_port: the server's port.
        port: the port to listen on (0: any free one).
    """

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.port = int(self._listener.getsockname()[1])
        self.mode = "pass"
        self.upstream_bytes = 0  # client -> server
        self.downstream_bytes = 0
        self.connections_accepted = 0
        self._rate: float | None = None
        self._flowing = threading.Condition()
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    # -- control ----------------------------------------------------------

    def cut(self, mode: str = "refuse") -> None:
        """Break the link: ``refuse`` (reset everything, refuse new) or ``blackhole`` (hold everything)."""
        if mode not in ("refuse", "blackhole"):
            raise ValueError(f"cut mode must be refuse or blackhole, not {mode!r}")
        with self._flowing:
            self.mode = mode
        if mode == "refuse":
            self.reset_all()

    def restore(self) -> None:
        """Let bytes flow again (held bytes of a blackhole go on)."""
        with self._flowing:
            self.mode = "pass"
            self._flowing.notify_all()

    def reset_all(self) -> None:
        """Reset every open connection now (mid-request if one is in flight)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.reset()

    def throttle(self, bytes_per_s: float | None) -> None:
        """Limit each direction of each connection to ``bytes_per_s`` (None: no limit)."""
        self._rate = bytes_per_s

    def close(self) -> None:
        self._closed = True
        self.restore()
        try:
            self._listener.close()
        except OSError:
            pass
        self.reset_all()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the threads --------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections_accepted += 1
            if self.mode == "refuse":
                _reset(client)
                continue
            connection = _Connection(client, None)
            with self._lock:
                self._connections.append(connection)
            threading.Thread(target=self._open, args=(connection,), daemon=True).start()

    def _open(self, connection: _Connection) -> None:
        if not self._wait_flowing(connection):
            return
        try:
            connection.server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            connection.server.settimeout(None)
        except OSError:
            connection.reset()
            return
        threading.Thread(target=self._pump, args=(connection, connection.client, connection.server, True),
                         daemon=True).start()
        self._pump(connection, connection.server, connection.client, False)

    def _wait_flowing(self, connection: _Connection) -> bool:
        """Block while the link is a blackhole; False if the connection was reset meanwhile."""
        with self._flowing:
            while self.mode == "blackhole" and not connection.closed:
                self._flowing.wait(0.1)
        return not connection.closed and self.mode != "refuse"

    def _pump(self, connection: _Connection, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not self._wait_flowing(connection):
                    return
                rate = self._rate
                if rate:
                    time.sleep(len(data) / rate)
                sink.sendall(data)
                if upstream:
                    self.upstream_bytes += len(data)
                else:
                    self.downstream_bytes += len(data)
        except OSError:
            pass
        finally:
            # One side ended: end the other side too, as a real path would.
            connection.reset()
