"""A real single-node Apache Kafka broker on loopback, for integration tests.

Theory of operation
-------------------
No Kafka distribution is installed on the machine. ``tests/kafka/pom.xml``
lists Apache Kafka's own jars (``org.apache.kafka:kafka_2.13``) and a logging
binding; ``ensure_kafka_jars`` has Maven copy that runtime classpath once into

    ${TIDEGATE_CACHE:-~/.cache/tidegate}/kafka/<kafka.version>/libs

and then writes a marker file naming the pom's hash and the jars it copied.
Later calls see the marker and never run Maven again. An ``fcntl`` lock on
the version directory makes concurrent test runs wait for one download
instead of racing; the copy goes to a scratch directory that is renamed into
place, so a crash never leaves a half-filled ``libs`` that looks finished.

``KafkaBroker`` runs one combined KRaft node (``process.roles=broker,
controller``, no ZooKeeper) the way ``bin/kafka-server-start.sh`` would,
minus the shell scripts:

1. pick two free loopback ports (client listener and controller listener);
2. write ``server.properties`` and a log4j2 configuration into a work dir;
3. ``kafka.tools.StorageTool format --standalone`` the data directory with a
   fresh cluster id (a single-voter dynamic quorum, as in Kafka's quickstart);
4. start ``java -cp 'libs/*' kafka.Kafka server.properties`` in its own
   session, stdout and stderr appended to ``broker.log`` in the work dir;
5. wait until the listener accepts TCP connections and a metadata request
   lists the broker (i.e. it is unfenced and serving), then have it create
   ``__consumer_offsets`` so that the first consumer group joins at once.

``restart()`` and ``start()`` after ``stop()``/``kill()`` reuse the same ports
and the same data directory, so fault tests see exactly what a restarted
production broker would: only what Kafka had written before it went away.
All internal topics use replication factor 1 and few partitions, which keeps
a cold start a few seconds long on a small machine.

Start-up time is mostly class loading. The first broker that is stopped
cleanly dumps the classes it loaded into a class-data-sharing archive
(``-XX:ArchiveClassesAtExit``) next to the jars; later JVMs map it
(``-XX:SharedArchiveFile``), which takes about a second off every start and
restart. The archive is named after the Java binary, written under a
temporary name and renamed into place, and removed with the jars when they
are fetched again. If the JVM finds it unusable it ignores it
(``-Xshare:auto``) and says so in ``broker.log``.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

__all__ = [
    "KAFKA_POM",
    "KafkaBroker",
    "KafkaSetupError",
    "KafkaStartError",
    "ensure_kafka_jars",
    "kafka_version",
]

KAFKA_POM = Path(__file__).with_name("pom.xml")
_MARKER_NAME = "libs.complete"
_LOG_TAIL_LINES = 60
_MAVEN_NS = "{http://maven.apache.org/POM/4.0.0}"

# Start-up flags for a short-lived test JVM on a small machine: a serial GC
# and the C1 compiler only start faster and use less memory than the
# server defaults; throughput is irrelevant for tests.
_JVM_FLAGS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
)

_LOG4J2_PROPERTIES = """\
# Written by tests/kafka/broker.py. Everything goes to stdout, which the
# fixture appends to broker.log next to this file.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.kafkaorg.name = org.apache.kafka
logger.kafkaorg.level = INFO
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
"""

_logger = logging.getLogger(__name__)

# Brokers whose JVM may be running. The JVMs run in their own sessions, so
# nothing else stops them if the test run ends without tearing down (an
# interrupted run, a forgotten stop()); kill them when Python exits.
_live_brokers: weakref.WeakSet[KafkaBroker] = weakref.WeakSet()


@atexit.register
def _kill_live_brokers() -> None:
    for broker in list(_live_brokers):
        broker.kill()


class KafkaSetupError(RuntimeError):
    """The Kafka jars or tools could not be prepared (Maven, Java, format)."""


class KafkaStartError(RuntimeError):
    """The broker process exited or did not become ready in time."""


# --------------------------------------------------------------------------
# The classpath
# --------------------------------------------------------------------------


def kafka_version(pom: Path = KAFKA_POM) -> str:
    """Return the ``kafka.version`` property of ``pom``.

    Raises:
        KafkaSetupError: the pom has no ``kafka.version`` property.
    """
    root = ET.parse(pom).getroot()
    node = root.find(f"{_MAVEN_NS}properties/{_MAVEN_NS}kafka.version")
    if node is None or not (node.text or "").strip():
        raise KafkaSetupError(f"{pom}: no <kafka.version> property")
    return (node.text or "").strip()


def cache_root() -> Path:
    """Return ``$TIDEGATE_CACHE``, or ``~/.cache/tidegate`` when unset."""
    configured = os.environ.get("TIDEGATE_CACHE")
    return Path(configured or "~/.cache/tidegate").expanduser()


def ensure_kafka_jars(pom: Path = KAFKA_POM) -> Path:
    """Return a directory holding the broker's complete runtime classpath.

    Downloads with Maven only when the cache for this Kafka version is
    missing, incomplete or was made from a different pom. Safe to call from
    several processes at once: one downloads, the others wait on a lock.

    Returns:
        The ``libs`` directory; use it as ``-cp 'libs/*'``.

    Raises:
        KafkaSetupError: Maven is missing or failed; its output is included.
    """
    version_dir = cache_root() / "kafka" / kafka_version(pom)
    libs = version_dir / "libs"
    marker = version_dir / _MARKER_NAME
    pom_digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if _cache_is_complete(libs, marker, pom_digest):
        return libs

    version_dir.mkdir(parents=True, exist_ok=True)
    with _locked(version_dir / ".lock"):
        # Another process may have finished the download while we waited.
        if _cache_is_complete(libs, marker, pom_digest):
            return libs
        scratch = version_dir / f"libs.partial-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        _run_maven_copy(pom, scratch)
        jars = sorted(p.name for p in scratch.glob("*.jar"))
        if not any(name.startswith("kafka_") for name in jars):
            raise KafkaSetupError(f"Maven copied no Kafka jar into {scratch}")
        marker.unlink(missing_ok=True)
        # A class-data archive records the jars it was made from.
        shutil.rmtree(version_dir / "cds", ignore_errors=True)
        shutil.rmtree(libs, ignore_errors=True)
        scratch.rename(libs)
        marker.write_text("\n".join([f"pom-sha256 {pom_digest}", *jars]) + "\n")
    return libs


def _cache_is_complete(libs: Path, marker: Path, pom_digest: str) -> bool:
    try:
        first, *jars = marker.read_text().splitlines()
    except (FileNotFoundError, ValueError):
        return False
    if first != f"pom-sha256 {pom_digest}" or not jars:
        return False
    return all((libs / name).is_file() for name in jars)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_maven_copy(pom: Path, output_dir: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError("mvn not found on PATH; install Maven 3.8+")
    command = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={output_dir}",
        "-DincludeScope=runtime",
    ]
    _logger.info("fetching Kafka jars: %s", " ".join(command))
    result = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        raise KafkaSetupError(
            f"{' '.join(command)} failed with exit code {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and Path(java_home, "bin", "java").is_file():
        return str(Path(java_home, "bin", "java"))
    java = shutil.which("java")
    if java is None:
        raise KafkaSetupError("java not found on PATH; install Java 17+")
    return java


def _cds_archive(libs: Path, java: str) -> Path:
    """Where the class-data archive for ``libs`` run by ``java`` lives."""
    binary = Path(java).resolve()
    identity = f"{binary}:{binary.stat().st_mtime_ns}".encode()
    return libs.parent / "cds" / f"kafka-{hashlib.sha256(identity).hexdigest()[:16]}.jsa"


# --------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------


def random_cluster_id() -> str:
    """Return a Kafka cluster id: 16 random bytes, URL-safe base64, unpadded.

    Same format as ``kafka-storage random-uuid``; like Kafka's
    ``Uuid.randomUuid`` it never starts with ``-`` (which would read as a
    command-line flag).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _free_loopback_ports(count: int) -> list[int]:
    # All sockets stay bound until every port is picked, so the ports differ.
    # Another process can still take one before Kafka binds it; start()
    # retries with new ports when that happens on the first start.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


class KafkaBroker:
    """One combined broker+controller Kafka node on 127.0.0.1.

    Use as a context manager (starts on enter, stops and cleans up on exit)
    or call ``start()``/``stop()`` yourself. Not thread-safe.

    Args:
        workdir: directory for the config, data and ``broker.log``. When
            ``None`` a temporary directory is made and removed on ``close()``;
            a given directory is left in place.
        properties: extra or overriding ``server.properties`` entries.
        startup_timeout: seconds to wait for the broker to serve requests.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        properties: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="tidegate-kafka-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "broker.log"
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "server.properties"
        self._log4j_path = self.workdir / "log4j2.properties"
        self._java_tmp = self.workdir / "tmp"
        self._extra_properties = dict(properties or {})
        self.startup_timeout = startup_timeout
        self.cluster_id = random_cluster_id()
        self.port, self.controller_port = _free_loopback_ports(2)
        self._process: subprocess.Popen[bytes] | None = None
        self._formatted = False
        self._libs: Path | None = None
        # Set while the running JVM is to dump a class-data archive at exit:
        # (the temporary file it writes, the final name).
        self._cds_dump: tuple[Path, Path] | None = None

    # -- public API --------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``bootstrap.servers`` for clients: ``"127.0.0.1:<port>"``."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the broker process exists (it may not be ready yet)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker JVM's process id, or None when it is not running."""
        return self._process.pid if self.running and self._process else None

    def start(self) -> None:
        """Start the broker and block until it serves metadata requests.

        The first call formats the data directory; later calls (after
        ``stop()`` or ``kill()``) reuse it, with the same ports.

        Raises:
            KafkaSetupError: jars, Java or the storage format step failed.
            KafkaStartError: the broker exited or was not ready in time; the
                message holds the tail of ``broker.log``.
        """
        if self.running:
            raise KafkaStartError(f"broker already running (pid {self.pid})")
        attempts = 1 if self._formatted else 3
        for attempt in range(1, attempts + 1):
            if not self._formatted:
                self._write_config()
                self._format_storage()
            try:
                self._launch()
                self._wait_ready()
                return
            except KafkaStartError:
                lost_port = self._port_was_taken()
                self._reap()
                if attempt == attempts or not lost_port:
                    raise
                # A port picked as free was taken before Kafka bound it.
                # Nothing useful is on disk yet: start over with new ports.
                _logger.warning("Kafka port already in use; retrying with new ports")
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self._formatted = False
                self.port, self.controller_port = _free_loopback_ports(2)

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the broker down cleanly (SIGTERM), or SIGKILL after ``timeout``.

        Does nothing when it is not running.
        """
        process = self._process
        if process is None:
            return
        clean_exit = False
        if process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                process.wait(timeout)
                clean_exit = True
            except subprocess.TimeoutExpired:
                _logger.warning("Kafka did not stop in %.0f s; killing it", timeout)
        self._reap(clean_exit)

    def kill(self) -> None:
        """Kill the broker with SIGKILL, as a crash or power cut would.

        Nothing is flushed; a later ``start()`` runs Kafka's log recovery.
        """
        self._reap()

    def restart(self, timeout: float = 30.0) -> None:
        """``stop()`` (if running) and ``start()`` again on the same ports and data."""
        self.stop(timeout)
        self.start()

    def close(self) -> None:
        """Stop the broker and remove the work dir if this object created it."""
        try:
            self.stop()
        finally:
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def admin(self) -> AdminClient:
        """Return a new AdminClient for this broker."""
        # librdkafka's own log lines go to Python logging, not to stderr.
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": _logger}
        return AdminClient(config)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Create ``name`` and wait until every partition has a leader.

        Raises:
            KafkaException: the broker refused (e.g. the topic exists).
            TimeoutError: the partitions got no leader within ``timeout``.
        """
        admin = self.admin()
        topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config or {}))
        futures = admin.create_topics([topic], operation_timeout=timeout, request_timeout=timeout)
        futures[name].result(timeout)
        # The controller answers once the topic is in the metadata log; the
        # broker may take a moment longer to become leader. Wait for that so
        # that the first produce does not race it.
        deadline = time.monotonic() + timeout
        while True:
            metadata = admin.list_topics(name, timeout=max(0.1, deadline - time.monotonic()))
            found = metadata.topics.get(name)
            if (
                found is not None
                and found.error is None
                and len(found.partitions) == partitions
                and all(p.leader >= 0 and p.error is None for p in found.partitions.values())
            ):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"topic {name!r} has no leader for every partition after {timeout} s")
            time.sleep(0.05)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last ``lines`` lines of ``broker.log`` (empty if none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> KafkaBroker:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<KafkaBroker {self.bootstrap} {state} in {self.workdir}>"

    # -- internals ---------------------------------------------------------

    def _server_properties(self) -> dict[str, str]:
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # Topics are created explicitly, as on a managed central cluster:
            # a misspelt topic must fail rather than appear.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # Internal topics: one replica, and few partitions so that the
            # first consumer group or transaction does not create 50.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a kill the restarted controller keeps the dead broker's
            # registration until its session times out (9 s by default) and
            # refuses the new one until then; keep that wait short.
            "broker.session.timeout.ms": "2000",
            "broker.heartbeat.interval.ms": "500",
            # Small segments so retention and recovery have several files to
            # work on; 1 MiB is the smallest Kafka 4 accepts.
            "log.segment.bytes": str(1024 * 1024),
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
        }
        properties.update(self._extra_properties)
        return properties

    def _write_config(self) -> None:
        lines = [f"{key}={value}" for key, value in self._server_properties().items()]
        self.config_path.write_text("# Written by tests/kafka/broker.py\n" + "\n".join(lines) + "\n")
        self._log4j_path.write_text(_LOG4J2_PROPERTIES)
        self._java_tmp.mkdir(exist_ok=True)

    def _java_command(self, main_class: str, *args: str, dump_cds: bool = False) -> list[str]:
        """Build a java command line on the cached classpath.

        Uses the class-data archive when there is one; otherwise, when
        ``dump_cds`` is set, asks this JVM to write it at exit (see
        ``_maybe_publish_cds``).
        """
        if self._libs is None:
            self._libs = ensure_kafka_jars()
        java = _java()
        archive = _cds_archive(self._libs, java)
        cds_flags: list[str] = []
        if archive.is_file():
            cds_flags.append(f"-XX:SharedArchiveFile={archive}")
        elif dump_cds:
            archive.parent.mkdir(parents=True, exist_ok=True)
            scratch = archive.with_name(f"{archive.name}.partial-{os.getpid()}-{id(self)}")
            scratch.unlink(missing_ok=True)
            cds_flags.append(f"-XX:ArchiveClassesAtExit={scratch}")
            self._cds_dump = (scratch, archive)
        return [
            java,
            *_JVM_FLAGS,
            *cds_flags,
            f"-Dlog4j2.configurationFile={self._log4j_path}",
            # Native compression libraries (lz4, zstd, snappy) unpack here; a
            # killed JVM would otherwise leave copies behind in /tmp.
            f"-Djava.io.tmpdir={self._java_tmp}",
            "-cp",
            f"{self._libs}/*",
            main_class,
            *args,
        ]

    def _maybe_publish_cds(self, clean_exit: bool) -> None:
        """Move a class-data archive dumped at JVM exit into place.

        Only after a clean stop: a JVM killed while dumping leaves a partial
        file, which is deleted instead.
        """
        if self._cds_dump is None:
            return
        scratch, archive = self._cds_dump
        self._cds_dump = None
        if clean_exit and scratch.is_file() and scratch.stat().st_size > 0:
            scratch.replace(archive)
        else:
            scratch.unlink(missing_ok=True)

    def _format_storage(self) -> None:
        command = self._java_command(
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(self.config_path),
            "--cluster-id",
            self.cluster_id,
            "--standalone",
        )
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False
        )
        with self.log_path.open("a") as log:
            log.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise KafkaSetupError(
                f"kafka-storage format failed with exit code {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        self._formatted = True

    def _launch(self) -> None:
        command = self._java_command("kafka.Kafka", str(self.config_path), dump_cds=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        _live_brokers.add(self)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        # Cheap, silent check first: librdkafka logs every refused connection.
        while not self._accepts_connections():
            self._check_alive()
            if time.monotonic() >= deadline:
                self._fail_start(f"port {self.port} not open after {self.startup_timeout:.0f} s")
            time.sleep(0.1)
        admin = self.admin()
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail_start(f"no metadata from {self.bootstrap} after {self.startup_timeout:.0f} s")
            try:
                metadata = admin.list_topics(timeout=min(2.0, remaining))
            except KafkaException:
                continue
            if metadata.brokers:
                self._warm_up_group_coordinator(admin)
                return

    def _warm_up_group_coordinator(self, admin: AdminClient) -> None:
        # A fresh broker creates __consumer_offsets on the first
        # FindCoordinator request and answers "not available" meanwhile;
        # librdkafka then backs off for about 3 s before it asks again. An
        # offset fetch for a group that does not exist triggers the creation
        # now (about 0.2 s), so the first consumer in a test joins at once,
        # as it would on a long-running cluster. Best effort only.
        #
        # The fetch is made by a consumer, not by AdminClient's
        # list_consumer_group_offsets: in librdkafka 2.16.0 the admin client's
        # OffsetFetch response handler dereferences the consumer-group handle
        # an admin client does not have, and crashes the process
        # (rd_kafka_handle_OffsetFetch -> rd_kafka_cgrp_op, seen in a core dump).
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "tidegate-fixture-warm-up",
                             "enable.auto.commit": False})
        try:
            consumer.committed([TopicPartition("__consumer_offsets", 0)], timeout=10)
        except KafkaException as exc:
            _logger.info("group coordinator warm-up failed: %s", exc)
        finally:
            consumer.close()

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _check_alive(self) -> None:
        process = self._process
        if process is not None and process.poll() is not None:
            self._fail_start(f"broker exited with code {process.returncode}")

    def _fail_start(self, reason: str) -> None:
        raise KafkaStartError(
            f"Kafka broker did not start: {reason}.\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def _port_was_taken(self) -> bool:
        tail = self.log_tail(200)
        return "Address already in use" in tail or "BindException" in tail

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None:
            return
        # The JVM leads its own session (start_new_session=True), so its
        # process group id is its pid; signal the group to catch any child.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signum)

    def _reap(self, clean_exit: bool = False) -> None:
        """SIGKILL the process if it still runs, and wait for it."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._signal(signal.SIGKILL)
        process.wait()
        self._process = None
        self._maybe_publish_cds(clean_exit)
