"""``tidegate doctor``: checks of the things a gateway on a site needs, each with a fix.

Each check returns a :class:`Check`: a status (``ok``, ``warn``, ``fail``), a
one-line finding and, when not ok, what to do about it. Checks never change
anything and each has a short timeout, so the command answers in seconds even
with the broker and Kafka unreachable. Their inputs are plain values (the CLI
takes them from the configuration), and the probes that touch the system
(clock, sockets, statvfs) can be injected for tests.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edge.clocksync import clock_synced
from edge.mqtt_intake import MqttConfig

__all__ = ["Check", "DoctorInput", "run_checks", "OK", "WARN", "FAIL", "mqtt_probe", "check_upstream"]

OK, WARN, FAIL = "ok", "warn", "fail"

#: Below this much free space the log cannot work for long.
MIN_FREE_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class DoctorInput:
    """What the checks look at (from the configuration)."""

    data_dir: Path
    quota_bytes: int | None
    mqtt: MqttConfig
    upstream: str
    upstream_settings: dict[str, str] = field(default_factory=dict)
    serial_paths: tuple[str, ...] = ()
    timeout_s: float = 3.0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# --------------------------------------------------------------------------- clock


def _timedatectl() -> str:
    try:
        done = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "-p", "NTP", "-p", "Timezone"],
                              capture_output=True, text=True, timeout=3, check=False)
        return " ".join(done.stdout.split())
    except (OSError, subprocess.SubprocessError):
        return ""


def check_clock(synced: Callable[[], bool] = clock_synced, detail: Callable[[], str] = _timedatectl) -> Check:
    if synced():
        return Check("clock", OK, "synchronised by NTP (adjtimex)")
    extra = detail()
    return Check(
        "clock", WARN,
        "not synchronised" + (f" ({extra})" if extra else "") + ": readings without a device time get"
        " gateway time marked unsynced, windows do not close by time and nothing is deleted by age",
        "enable NTP: sudo timedatectl set-ntp true; check: timedatectl timesync-status"
        " (a Pi has no real-time clock: it needs the network at boot)",
    )


# --------------------------------------------------------------------------- disk and data dir


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(data_dir: Path, quota_bytes: int | None,
               statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> Check:
    where = _existing(data_dir.resolve())
    try:
        st = statvfs(str(where))
    except OSError as exc:
        return Check("disk", FAIL, f"cannot stat {where}: {exc.strerror}",
                     "check that the disk is mounted and readable (mount, dmesg | grep -i mmc for card errors)")
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    used_by_log = _du(data_dir / "log")
    text = f"{_human(free)} free of {_human(total)} on {where}; log uses {_human(used_by_log)}"
    if free < MIN_FREE_BYTES:
        return Check("disk", FAIL, text, "free space on the card (journalctl --vacuum-size=100M, apt-get clean) or"
                     " lower [log] retention_ms; see docs/operations.md#disk-full")
    if quota_bytes is None:
        return Check("disk", WARN, text + "; no quota: the log may fill the disk",
                     "set [log] quota_bytes (docs/configuration.md)")
    room = free + used_by_log
    if quota_bytes > room:
        return Check("disk", WARN, text + f"; quota {_human(quota_bytes)} is more than the disk can give",
                     f"lower [log] quota_bytes below {_human(room * 0.8)}")
    return Check("disk", OK, text + f"; quota {_human(quota_bytes)}")


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def check_data_dir(data_dir: Path) -> Check:
    if not data_dir.exists():
        parent = _existing(data_dir)
        if os.access(parent, os.W_OK | os.X_OK):
            return Check("data dir", OK, f"{data_dir} does not exist yet; {parent} lets this user create it")
        return Check("data dir", FAIL, f"{data_dir} does not exist and {parent} is not writable by this user",
                     f"sudo install -d -o {_user()} -m 750 {data_dir}")
    if not data_dir.is_dir():
        return Check("data dir", FAIL, f"{data_dir} is not a directory")
    if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        return Check("data dir", FAIL, f"{data_dir} is not readable and writable by user {_user()}",
                     f"sudo chown -R {_user()} {data_dir}")
    bad = [p for p in (data_dir / "log").rglob("*") if not os.access(p, os.R_OK | os.W_OK)][:3]
    if bad:
        return Check("data dir", FAIL, f"files not writable by {_user()}: {', '.join(map(str, bad))}",
                     f"sudo chown -R {_user()} {data_dir}")
    mode = data_dir.stat().st_mode & 0o777
    running = _locked(data_dir / "log")
    text = f"{data_dir} is writable (mode {mode:o})" + ("; a gateway is running on it" if running else "")
    if mode & 0o002:
        return Check("data dir", WARN, text + "; it is world-writable", f"chmod o-w {data_dir}")
    return Check("data dir", OK, text)


def _locked(log_dir: Path) -> bool:
    lock = log_dir / "LOCK"
    if not lock.exists():
        return False
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


# --------------------------------------------------------------------------- broker


_CONNACK = {
    1: "refused: unacceptable protocol version",
    2: "refused: client id rejected",
    3: "refused: server unavailable",
    4: "refused: bad user name or password",
    5: "refused: not authorised",
}


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def mqtt_probe(host: str, port: int, username: str | None, password: str | None, timeout: float,
               tls: ssl.SSLContext | None = None) -> str:
    """Connect, send an MQTT 3.1.1 CONNECT (clean session), read CONNACK; returns "" or what went wrong.

    With ``tls``, the CONNECT goes over TLS after a handshake that checks the
    broker's certificate and name against the context.
    """
    flags = 0x02
    payload = _mqtt_string(f"tidegate-doctor-{os.getpid()}")
    if username is not None:
        flags |= 0x80
        payload += _mqtt_string(username)
        if password is not None:
            flags |= 0x40
            payload += _mqtt_string(password)
    variable = _mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", 10)
    body = variable + payload
    packet = bytes([0x10, len(body)]) if len(body) < 128 else bytes([0x10, (len(body) & 0x7F) | 0x80, len(body) >> 7])
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock = tls.wrap_socket(raw, server_hostname=host) if tls is not None else raw
            sock.sendall(packet + body)
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    return "closed the connection without a CONNACK (TLS port? or not an MQTT broker)"
                answer += chunk
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except ssl.SSLError as exc:  # before OSError: it is one, and its strerror is empty
        return f"TLS handshake failed: {exc.reason or exc}"
    except OSError as exc:
        return exc.strerror or str(exc)
    if answer[0] != 0x20:
        return f"answered with packet type {answer[0] >> 4}, not CONNACK"
    return _CONNACK.get(answer[3], f"refused with code {answer[3]}") if answer[3] else ""


def _mqtt_check(name: str, where: str, problem: str, fix_down: str, fix_auth: str, fix_tls: str = "") -> Check:
    """The finding of an MQTT probe (``problem`` "" means it connected), with the fix its kind of failure needs."""
    if not problem:
        return Check(name, OK, f"{where} accepts connections")
    fix = fix_down
    if "password" in problem or "authorised" in problem:
        fix = fix_auth
    elif fix_tls and ("TLS" in problem or "CONNACK" in problem):
        fix = fix_tls
    return Check(name, FAIL, f"{where}: {problem}", fix)


def check_broker(mqtt: MqttConfig, timeout: float, probe: Callable[..., str] = mqtt_probe) -> Check:
    where = f"{mqtt.host}:{mqtt.port}"
    if mqtt.tls_ca_file or mqtt.tls_cert_file:
        try:
            with socket.create_connection((mqtt.host, mqtt.port), timeout=timeout):
                return Check("broker", OK, f"{where} accepts TCP connections (TLS: handshake not checked)")
        except OSError as exc:
            problem = exc.strerror or str(exc)
    else:
        problem = probe(mqtt.host, mqtt.port, mqtt.username, mqtt.password, timeout)
    return _mqtt_check("broker", f"MQTT broker at {where}", problem,
                       "start it: sudo systemctl enable --now mosquitto; check: journalctl -u mosquitto",
                       "check [mqtt] username and password (or password_file) against the broker's password file")


# --------------------------------------------------------------------------- upstream


def check_mqtt_upstream(upstream: str, settings: dict[str, str], timeout: float,
                        probe: Callable[..., str] = mqtt_probe) -> Check:
    """Connect to an ``mqtt://`` or ``mqtts://`` upstream as the bridge will: CONNECT with its credentials, over TLS for mqtts."""
    parts = urlsplit(upstream)
    tls = parts.scheme == "mqtts"
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    port = (8883 if tls else 1883) if port is None else port
    where = f"MQTT upstream at {host}:{port}" + (" (TLS)" if tls else "")
    context = None
    if tls:
        try:
            context = ssl.create_default_context(cafile=settings.get("ca_file"))
        except (OSError, ssl.SSLError) as exc:
            return Check("upstream", FAIL, f"{where}: cannot load ca_file {settings.get('ca_file')!r}: "
                         f"{getattr(exc, 'strerror', None) or exc}", "fix [upstream.settings] ca_file")
    problem = probe(host, port, settings.get("username", parts.username), settings.get("password", parts.password),
                    timeout, tls=context)
    return _mqtt_check(
        "upstream", where, problem,
        "check the uplink (ip route, ping), firewall and [upstream] url; the gateway keeps readings until it is back",
        "check [upstream.settings] username and password (or the user:password@ in [upstream] url)",
        "mqtts:// needs the broker's TLS port (8883) and [upstream.settings] ca_file if its CA is private",
    )


def check_upstream(upstream: str, settings: dict[str, str], timeout: float,
                   probe: Callable[..., str] = mqtt_probe) -> Check:
    """Reach the configured upstream: Kafka (check ``kafka``) or an MQTT broker (check ``upstream``)."""
    if urlsplit(upstream).scheme in ("mqtt", "mqtts"):
        return check_mqtt_upstream(upstream, settings, timeout, probe)
    return check_kafka(upstream, settings, timeout)


# --------------------------------------------------------------------------- Kafka


def check_kafka(upstream: str, settings: dict[str, str], timeout: float) -> Check:
    parts = urlsplit(upstream)
    if parts.scheme != "kafka":
        return Check("kafka", OK, f"upstream is {upstream}, not Kafka: nothing to reach")
    servers = [s for s in parts.netloc.split(",") if s]
    reachable = []
    problems = []
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host or server, int(port or 9092)), timeout=timeout):
                reachable.append(server)
        except (OSError, ValueError) as exc:
            problems.append(f"{server}: {getattr(exc, 'strerror', None) or exc}")
    if not reachable:
        return Check("kafka", FAIL, "no bootstrap server reachable: " + "; ".join(problems),
                     "check the uplink (ip route, ping), firewall and [upstream] url; the gateway keeps readings until it is back")
    topic = parts.path.strip("/") or "tidegate.batches"
    try:
        from confluent_kafka.admin import AdminClient  # only here: doctor works without librdkafka otherwise

        config: dict[str, str | int | float | bool] = {"bootstrap.servers": parts.netloc,
                                                       "socket.timeout.ms": int(timeout * 1000)}
        config.update(settings)
        metadata = AdminClient(config).list_topics(timeout=timeout)
    except ImportError:
        return Check("kafka", OK, f"{', '.join(reachable)} reachable (TCP)")
    except Exception as exc:  # KafkaException: auth, TLS, timeouts
        return Check("kafka", FAIL, f"{', '.join(reachable)} reachable, but Kafka did not answer: {exc}",
                     "check [upstream.settings] (security.protocol, sasl.*, ssl.*)")
    if topic not in metadata.topics:
        return Check("kafka", WARN, f"Kafka at {parts.netloc} answers, but topic {topic!r} does not exist",
                     f"create it (kafka-topics.sh --create --topic {topic}) or let the broker auto-create it")
    return Check("kafka", OK, f"Kafka at {parts.netloc} answers; topic {topic!r} has "
                 f"{len(metadata.topics[topic].partitions)} partition(s)")


# --------------------------------------------------------------------------- serial


def check_serial(paths: Sequence[str], by_id: Path = Path("/dev/serial/by-id")) -> Check:
    present = sorted(p.name for p in by_id.iterdir()) if by_id.is_dir() else []
    if not paths:
        found = f"; attached: {', '.join(present)}" if present else ""
        return Check("serial", OK, "no serial ports configured" + found)
    missing = [p for p in paths if not os.path.exists(p)]
    denied = [p for p in paths if os.path.exists(p) and not os.access(p, os.R_OK | os.W_OK)]
    if missing:
        hint = f"attached now: {', '.join(present)}" if present else "nothing is attached under /dev/serial/by-id"
        return Check("serial", FAIL, f"missing: {', '.join(missing)} ({hint})",
                     "plug the board in (a data cable, not a charge-only one) or fix [[serial]] path")
    if denied:
        return Check("serial", FAIL, f"no read/write permission: {', '.join(denied)}",
                     f"sudo usermod -aG dialout {_user()} (then log in again / restart the service)")
    return Check("serial", OK, f"{len(paths)} port(s) present and accessible")


# --------------------------------------------------------------------------- all


def check_tools() -> Check:
    missing = [tool for tool in ("mosquitto",) if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]
    if missing:
        return Check("packages", WARN, f"not installed: {', '.join(missing)}", "sudo apt-get install mosquitto")
    return Check("packages", OK, "mosquitto installed")


def run_checks(given: DoctorInput) -> list[Check]:
    """Run every check; never raises for what it finds."""
    return [
        check_clock(),
        check_disk(given.data_dir, given.quota_bytes),
        check_data_dir(given.data_dir),
        check_tools(),
        check_broker(given.mqtt, given.timeout_s),
        check_upstream(given.upstream, dict(given.upstream_settings), given.timeout_s),
        check_serial(given.serial_paths),
    ]
