"""systemd's sd_notify protocol over a plain unix datagram socket, no library.

How this works: systemd starts a ``Type=notify`` service with
``$NOTIFY_SOCKET`` naming a unix datagram socket (a path, or an abstract name
starting with ``@``). The service sends newline-separated ``KEY=VALUE``
datagrams: ``READY=1`` once it is serving, ``WATCHDOG=1`` at least every
``$WATCHDOG_USEC`` microseconds while healthy (systemd restarts it when they
stop, so a hung writer thread gets a restart), ``STATUS=...`` for
``systemctl status``, and ``STOPPING=1``. Without ``$NOTIFY_SOCKET`` every call
does nothing, so the same binary runs outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger("tidegate.systemd")


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET`` if it is set.

    Args:
        environ: where to find ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
            ``WATCHDOG_PID`` (default: ``os.environ``).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self.address = address or None
        self.watchdog_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half the watchdog timeout, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; False if not under systemd or the send failed.

        Keys are given in lower case and sent in upper case: ``notify(ready=1, status="ok")``.
        """
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message, self.address)
            return True
        except OSError as exc:
            log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify(ready=1, **({"status": status} if status else {}))

    def watchdog(self) -> bool:
        return self.notify(watchdog=1)

    def status(self, text: str) -> bool:
        return self.notify(status=text.replace("\n", " "))

    def stopping(self) -> bool:
        return self.notify(stopping=1)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
