"""Start and stop a Mosquitto broker of ours on loopback.

Used by ``tidegate run`` when no broker is given, and by the test fixtures, so
the broker the tests use is configured exactly as the one users get.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edge.errors import MosquittoError

__all__ = ["find_mosquitto", "free_port", "Mosquitto"]

_TEMPLATE = Path(__file__).with_name("mosquitto.conf.in")


def find_mosquitto() -> str | None:
    """The mosquitto binary (Debian puts it in /usr/sbin, often not on PATH)."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """A Mosquitto process on 127.0.0.1 with tidegate's config.

    Args:
        state_dir: where the config, persistence file and log go; it must
            outlive the broker, and a restart with the same directory keeps
            the persistent sessions and queued messages.
        port: the listener port; a free one by default.
        extra_config: lines appended to the config.
        config_text: a whole config to use instead of tidegate's template
            (``@PORT@`` and ``@DIR@`` are filled in all the same); the tests
            start the shipped production config this way.
    """

    def __init__(self, state_dir: Path, port: int | None = None, extra_config: str = "",
                 config_text: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.extra_config = extra_config
        self.config_text = config_text
        self.log_path = self.state_dir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise MosquittoError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        conf = self.state_dir / "mosquitto.conf"
        template = self.config_text if self.config_text is not None else _TEMPLATE.read_text()
        text = template.replace("@PORT@", str(self.port)).replace("@DIR@", str(self.state_dir))
        if not text.endswith("\n"):
            text += "\n"
        if os.geteuid() == 0:
            # Started as root, Mosquitto drops to the "mosquitto" user, which
            # cannot write a state directory private to root: persistence would
            # fail (logged, not fatal) and a restart would lose every queued
            # message. This launcher runs local brokers for demos and tests;
            # the gateway's production broker is Debian's service.
            text += "user root\n"
        conf.write_text(text + self.extra_config + "\n")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self._process = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise MosquittoError(f"mosquitto did not start on port {self.port}:\n{tail}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM lets it save its persistence file; SIGKILL does not)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> "Mosquitto":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
