"""Every ``tidegate`` command, run as a real subprocess against real files, a real broker and real sockets."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bridge.transports import KafkaTransport
from core.batch import Entry, decode_header, encode_batch
from core.deadletter import DEAD_LETTER_STREAM, RAW_CAP_BYTES, DeadLetter, encode_dead_letter
from core.log import LogConfig
from core.reading import Reading, encode_reading
from core.timewindow import window_of
from edge.logstore import open_log
from edge.mosquitto import Mosquitto, free_port
from tests.fixtures.kafka import NewKafkaTopic
from tests.kafka.broker import KafkaBroker
from tidegate.cli import main

ROOT = Path(__file__).resolve().parents[2]
WINDOW_MS = 60_000
# Two whole minutes an hour ago: 60 readings a minute, one a second, from 3 devices in turn.
T0 = (int(time.time() * 1000) - 3_600_000) // WINDOW_MS * WINDOW_MS
READINGS = 120


def tidegate(*args: str, cwd: Path, timeout: float = 60, env: dict[str, str] | None = None,
             check_rc: int | None = 0) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    done = subprocess.run([sys.executable, "-m", "tidegate", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check_rc is not None:
        assert done.returncode == check_rc, f"rc {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def reading(i: int) -> Reading:
    return Reading(f"dev-{i % 3}", "temp_c" if i % 2 == 0 else "rh_pct", T0 + i * 1000, 20.0 + i / 10, T0 + i * 1000 + 5)


def append_readings(data_dir: Path, indexes: range, dead: int = 0) -> None:
    with open_log(data_dir / "log", LogConfig(window_ms=WINDOW_MS, sync_policy="always")) as log:
        for i in indexes:
            r = reading(i)
            log.append("sensors", r.ts_ms, encode_reading(r))
        for i in range(dead):
            letter = DeadLetter("mqtt", f"sensors/bad-{i}", T0 + i, "bad_json", "payload is not JSON: line 1", b"{oops" + bytes([i]))
            log.append(DEAD_LETTER_STREAM, letter.received_ms, encode_dead_letter(letter))
        log.sync()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory holding 120 readings over two one-minute windows and 2 dead letters."""
    path = tmp_path / "data"
    append_readings(path, range(READINGS), dead=2)
    return path


@pytest.fixture
def config_file(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "tidegate.toml"
    path.write_text(f'gateway_id = "gw-cli"\ndata_dir = "{data_dir}"\n[log]\nwindow_ms = {WINDOW_MS}\n')
    return path


# --------------------------------------------------------------------------- help


COMMANDS = ["run", "status", "tail", "query", "replay", "decode", "fsck", "doctor", "simulate", "central", "bench"]


def test_top_level_help_lists_every_command(tmp_path: Path) -> None:
    out = tidegate("--help", cwd=tmp_path).stdout
    for command in COMMANDS + ["firmware"]:
        assert f"    {command} " in out, command


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_explains_itself_with_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"]) if command != "central" else sys.exit(main([command, "--help"]))
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"tidegate {command}" in out


# --------------------------------------------------------------------------- run, status


@pytest.mark.mosquitto
@pytest.mark.slow
def test_run_serves_metrics_health_and_status_and_tells_systemd(mosquitto: Mosquitto, tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    http_port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="4000000",
               WATCHDOG_PID="")
    process = subprocess.Popen(
        [sys.executable, "-m", "tidegate", "run", "--data-dir", str(tmp_path / "gw"), "--mqtt", f"127.0.0.1:{mosquitto.port}",
         "--http", f"127.0.0.1:{http_port}", "--simulate", "3", "--simulate-rate", "5", "--log-format", "json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        messages = [notify.recv(4096).decode()]
        assert messages[0].startswith("READY=1"), messages
        while "WATCHDOG=1" not in messages:
            messages.append(notify.recv(4096).decode())
        deadline = time.monotonic() + 20
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
                metrics = response.read().decode()
            if 'tidegate_readings_out_total{stream="sensors"}' in metrics or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for name in ("tidegate_readings_in_total", "tidegate_backlog_readings", "tidegate_log_bytes",
                     "tidegate_oldest_unforwarded_age_seconds", "tidegate_uplink_bytes_total", "tidegate_uplink_up",
                     "tidegate_batch_max_readings", "tidegate_batch_linger_seconds", "tidegate_log_sync_seconds_bucket",
                     "tidegate_dropped_by_quota_total", "tidegate_rejected_total", "tidegate_duplicates_total",
                     "tidegate_broker_dropped", "tidegate_batch_readings_bucket"):
            assert name in metrics, name
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as response:
            assert response.status == 200 and json.load(response)["healthy"] is True
        status = tidegate("status", "--url", f"http://127.0.0.1:{http_port}", cwd=tmp_path)
        assert "healthy" in status.stdout and "sensors" in status.stdout and "devices" in status.stdout
        doc = json.loads(tidegate("status", "--url", f"http://127.0.0.1:{http_port}", "--json", cwd=tmp_path).stdout)
        assert doc["gateway_id"] == "gw-1" and len(doc["devices"]) == 3
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        try:
            notify.settimeout(0.5)
            while "STOPPING=1" not in messages:
                messages.append(notify.recv(4096).decode())
        except OSError:
            pass
        notify.close()
    assert process.returncode == 0, err
    assert "STOPPING=1" in messages
    log_lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(line["msg"].startswith("connected to MQTT broker") for line in log_lines), out


def test_run_with_a_broken_config_names_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[mqtt]\nprot = 1883\n[log]\nwindow_ms = 5\n[upstream]\nurl = "ftp://x"\n')
    done = tidegate("run", "--config", str(config), cwd=tmp_path, check_rc=2)
    assert "3 problems" in done.stderr
    assert "mqtt.prot: unknown key (did you mean 'port'?)" in done.stderr
    assert "log.window_ms = 5 is not allowed: must be an integer in 60000..86400000" in done.stderr
    assert "upstream.url = 'ftp://x' is not allowed" in done.stderr


def test_check_config_prints_the_effective_config_without_secrets(tmp_path: Path) -> None:
    config = tmp_path / "tidegate.toml"
    config.write_text('[mqtt]\nusername = "u"\npassword = "${MQTT_PASSWORD}"\n')
    done = tidegate("run", "--config", str(config), "--check-config", "--window", "600", cwd=tmp_path,
                    env={"MQTT_PASSWORD": "hunter2"})
    doc = json.loads(done.stdout)
    assert doc["mqtt"]["password"] == "***" and doc["log"]["window_ms"] == 600_000
    assert "hunter2" not in done.stdout + done.stderr


@pytest.mark.slow
def test_run_without_a_broker_keeps_serving_and_says_so(tmp_path: Path) -> None:
    http_port = free_port()
    done = tidegate("run", "--data-dir", str(tmp_path / "d"), "--mqtt", f"127.0.0.1:{free_port()}",
                    "--http", f"127.0.0.1:{http_port}", "--duration", "2", cwd=tmp_path, timeout=60)
    assert "cannot connect to MQTT broker" in done.stdout and "retrying every 5 s" in done.stdout
    assert "Traceback" not in done.stderr


def test_run_with_the_status_port_taken_says_which_setting_to_change(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = tidegate("run", "--data-dir", str(tmp_path / "d"), "--http", f"127.0.0.1:{port}", cwd=tmp_path, check_rc=1)
    assert f"cannot serve the status page on 127.0.0.1:{port}" in done.stderr and "[http] port" in done.stderr


def test_status_without_a_gateway_says_none_is_answering(tmp_path: Path) -> None:
    done = tidegate("status", "--url", f"http://127.0.0.1:{free_port()}", cwd=tmp_path, check_rc=1)
    assert "no gateway answering" in done.stderr and "systemctl status tidegate" in done.stderr


# --------------------------------------------------------------------------- tail


def test_tail_shows_the_last_readings(data_dir: Path, tmp_path: Path) -> None:
    lines = tidegate("tail", "--data-dir", str(data_dir), "-n", "3", "--no-follow", cwd=tmp_path).stdout.splitlines()
    assert len(lines) == 3
    assert lines[-1].endswith(f"sensors@{READINGS - 1} dev-{(READINGS - 1) % 3} rh_pct={reading(READINGS - 1).value}")


def test_tail_dead_letters_show_reason_topic_and_raw_hex(data_dir: Path, tmp_path: Path) -> None:
    out = tidegate("tail", "--data-dir", str(data_dir), "--dead-letters", "--no-follow", cwd=tmp_path).stdout
    assert "bad_json" in out and "mqtt:sensors/bad-0" in out and "payload is not JSON" in out
    assert (b"{oops" + bytes([1])).hex() in out
    rows = [json.loads(line) for line in tidegate("tail", "--data-dir", str(data_dir), "--dead-letters", "--no-follow",
                                                  "--json", cwd=tmp_path).stdout.splitlines()]
    assert [r["reason"] for r in rows] == ["bad_json", "bad_json"] and rows[0]["raw_hex"] == (b"{oops\x00").hex()


def test_tail_dead_letters_say_how_much_of_a_capped_payload_was_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    big = bytes(range(256)) * 40  # 10,240 bytes of garbage
    with open_log(data_dir / "log", LogConfig(window_ms=WINDOW_MS, sync_policy="always")) as log:
        letter = DeadLetter("mqtt", "sensors/huge", T0, "bad_json", "payload is not JSON", big)
        log.append(DEAD_LETTER_STREAM, T0, encode_dead_letter(letter))
    out = tidegate("tail", "--data-dir", str(data_dir), "--dead-letters", "--no-follow", cwd=tmp_path).stdout
    assert f"raw ({RAW_CAP_BYTES} of 10240 bytes kept)" in out
    row = json.loads(tidegate("tail", "--data-dir", str(data_dir), "--dead-letters", "--no-follow", "--json",
                              cwd=tmp_path).stdout)
    assert row["raw_length"] == 10240 and row["raw_sha256"] == hashlib.sha256(big).hexdigest()
    assert bytes.fromhex(row["raw_hex"]) == big[:RAW_CAP_BYTES]


@pytest.mark.slow
def test_tail_follows_new_readings(data_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "tidegate", "tail", "--data-dir", str(data_dir), "-n", "1", "--json", "--interval", "0.1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first["offset"] == READINGS - 1
        append_readings(data_dir, range(READINGS, READINGS + 5))
        offsets = [json.loads(process.stdout.readline())["offset"] for _ in range(5)]
        assert offsets == list(range(READINGS, READINGS + 5))
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)


# --------------------------------------------------------------------------- query


def test_query_gives_json_lines_of_a_time_range(config_file: Path, tmp_path: Path) -> None:
    done = tidegate("query", "--config", str(config_file), "--stream", "sensors",
                    "--from", str(T0 + 10_000), "--to", str(T0 + 20_000), cwd=tmp_path)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["offset"] for r in rows] == list(range(10, 20))  # --to is exclusive
    assert rows[0] == {
        "id": "gw-cli/sensors/10", "stream": "sensors", "offset": 10, "device": "dev-1", "metric": "temp_c",
        "ts_ms": T0 + 10_000, "time": rows[0]["time"], "value": reading(10).value, "received_ms": T0 + 10_005,
        "time_source": 0,
    }
    assert "10 readings of sensors" in done.stderr


def test_query_to_csv_with_filters_while_the_gateway_holds_the_log(data_dir: Path, tmp_path: Path) -> None:
    with open_log(data_dir / "log", LogConfig(window_ms=WINDOW_MS)):  # a running gateway has it open and locked
        tidegate("query", "--data-dir", str(data_dir), "--stream", "sensors", "--from", str(T0), "--to", "now",
                 "--format", "csv", "--device", "dev-0", "--metric", "temp_c", "-o", str(tmp_path / "out.csv"), cwd=tmp_path)
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "id,stream,offset,device,metric,ts_ms,time,value,received_ms,time_source"
    offsets = [int(line.split(",")[2]) for line in lines[1:]]
    assert offsets == [i for i in range(READINGS) if i % 3 == 0 and i % 2 == 0]


def test_query_of_a_missing_data_dir_says_where_it_looked(tmp_path: Path) -> None:
    done = tidegate("query", "--data-dir", str(tmp_path / "nope"), "--stream", "s", "--from", "-1h", cwd=tmp_path, check_rc=2)
    assert "no log in" in done.stderr


# --------------------------------------------------------------------------- replay and decode


def test_replay_resends_a_window_with_the_original_ids(config_file: Path, tmp_path: Path) -> None:
    spool = tmp_path / "replayed"
    done = tidegate("replay", "--config", str(config_file), "--stream", "sensors", "--from", str(T0 + 30_000),
                    "--to", str(T0 + 90_000), "--upstream", f"spool:{spool}", "--batch-readings", "25", cwd=tmp_path)
    assert "100.0%" in done.stderr and "replayed 60 readings of sensors in 4 batches" in done.stderr
    headers = [json.loads(line) for line in tidegate("decode", "--headers", str(spool), cwd=tmp_path).stdout.splitlines()]
    # 30 readings in the first window (25 + 5), 30 in the second (25 + 5): a batch never spans two windows.
    assert [(h["first_offset"], h["last_offset"]) for h in headers] == [(30, 54), (55, 59), (60, 84), (85, 89)]
    assert {h["gateway"] for h in headers} == {"gw-cli"}
    rows = [json.loads(line) for line in tidegate("decode", str(spool), cwd=tmp_path).stdout.splitlines()]
    assert [r["id"] for r in rows] == [f"gw-cli/sensors/{i}" for i in range(30, 90)]
    assert [r["value"] for r in rows] == [reading(i).value for i in range(30, 90)]


def test_replay_to_a_bad_upstream_is_refused(config_file: Path, tmp_path: Path) -> None:
    done = tidegate("replay", "--config", str(config_file), "--stream", "sensors", "--from", str(T0),
                    "--upstream", "ftp://x", cwd=tmp_path, check_rc=2)
    assert "upstream 'ftp://x': must be spool:DIR, kafka://HOST:PORT" in done.stderr and "mqtt(s)://" in done.stderr


def window_batches(windows: int, per_window: int, per_batch: int, gateway: str = "gw-dec") -> list[bytes]:
    """Batches of ``reading(i)`` (offset i), ``per_window`` readings in each of ``windows`` one-minute windows."""
    out = []
    for w in range(windows):
        window = window_of(T0 + w * WINDOW_MS, WINDOW_MS)
        for start in range(w * per_window, (w + 1) * per_window, per_batch):
            entries = [Entry(i, reading(i)) for i in range(start, min(start + per_batch, (w + 1) * per_window))]
            out.append(encode_batch(gateway, "sensors", window, entries))
    return out


def test_decode_reads_concatenated_batches_from_stdin(tmp_path: Path) -> None:
    batches = window_batches(2, 60, 25)  # 6 batches of 25, 25, 10 per window
    damaged = bytearray(batches[1])
    damaged[-1] ^= 0xFF  # its CRC fails; its lengths still frame the stream
    stream = b"".join([batches[0], bytes(damaged), *batches[2:]])
    done = subprocess.run([sys.executable, "-m", "tidegate", "decode", "-"], input=stream, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["id"] for r in rows] == [f"gw-dec/sensors/{i}" for i in range(120) if not 25 <= i < 50]
    assert rows[0] == {"id": "gw-dec/sensors/0", "device": "dev-0", "metric": "temp_c", "ts_ms": T0,
                       "value": reading(0).value, "received_ms": T0 + 5, "time_source": 0}
    assert b"tidegate decode: stdin: batch CRC-32C does not match" in done.stderr

    headers = subprocess.run([sys.executable, "-m", "tidegate", "decode", "--headers", "-"], input=b"".join(batches[:2]) + batches[2][:30],
                             cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, timeout=60,
                             check=False)
    assert headers.returncode == 1
    assert [json.loads(line)["first_offset"] for line in headers.stdout.splitlines()] == [0, 25]
    assert json.loads(headers.stdout.splitlines()[0])["file"] == "-"
    assert f"input ends inside the batch header at byte {len(batches[0]) + len(batches[1])}".encode() in headers.stderr


def _send(bootstrap: str, topic: str, batches: list[bytes]) -> None:
    transport = KafkaTransport(bootstrap, topic)
    try:
        for data in batches:
            transport.send(data, decode_header(data))
    finally:
        transport.close()


@pytest.mark.kafka
@pytest.mark.slow
def test_decode_reads_a_kafka_topic_from_the_beginning_or_one_window(kafka_broker: KafkaBroker,
                                                                    new_kafka_topic: NewKafkaTopic, tmp_path: Path) -> None:
    topic = new_kafka_topic(partitions=2)
    batches = window_batches(2, 60, 25) + window_batches(2, 60, 30, gateway="gw-other")
    _send(kafka_broker.bootstrap, topic, batches)
    url = f"kafka://{kafka_broker.bootstrap}/{topic}"

    rows = [json.loads(line) for line in tidegate("decode", url, "--from-beginning", "--no-follow", cwd=tmp_path).stdout.splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(f"{g}/sensors/{i}" for g in ("gw-dec", "gw-other") for i in range(120))
    by_id = {r["id"]: r for r in rows}
    assert by_id["gw-dec/sensors/7"] == {"id": "gw-dec/sensors/7", "device": "dev-1", "metric": "rh_pct", "ts_ms": T0 + 7000,
                                         "value": reading(7).value, "received_ms": T0 + 7005, "time_source": 0}
    # One gateway's stream is one key, so one partition, in offset order.
    assert [r["id"] for r in rows if r["id"].startswith("gw-dec/")] == [f"gw-dec/sensors/{i}" for i in range(120)]

    second = T0 + WINDOW_MS + 30_000
    headers = [json.loads(line) for line in tidegate("decode", url, "--window", str(second), "--headers", cwd=tmp_path).stdout.splitlines()]
    assert sorted((h["gateway"], h["first_offset"], h["last_offset"]) for h in headers) == [
        ("gw-dec", 60, 84), ("gw-dec", 85, 109), ("gw-dec", 110, 119), ("gw-other", 60, 89), ("gw-other", 90, 119)]
    assert {(h["topic"], h["window_start_ms"]) for h in headers} == {(topic, T0 + WINDOW_MS)}
    assert all({"partition", "offset", "bytes"} <= set(h) for h in headers)

    first_two = tidegate("decode", url, "--from-beginning", "--max", "2", "--headers", cwd=tmp_path).stdout.splitlines()
    assert len(first_two) == 2


@pytest.mark.kafka
@pytest.mark.slow
def test_decode_follows_a_kafka_topic_from_its_end(kafka_broker: KafkaBroker, kafka_topic: str, tmp_path: Path) -> None:
    old, new = window_batches(1, 20, 10)
    _send(kafka_broker.bootstrap, kafka_topic, [old])
    process = subprocess.Popen([sys.executable, "-m", "tidegate", "decode", f"kafka://{kafka_broker.bootstrap}/{kafka_topic}",
                                "--headers", "--max", "1"], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # It starts at the end: keep sending until it has seen one (the first may go before it is assigned).
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            _send(kafka_broker.bootstrap, kafka_topic, [new])
            time.sleep(0.5)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    (line,) = out.splitlines()
    assert json.loads(line)["first_offset"] == 10  # the new batch, never the old one


def test_decode_of_a_kafka_topic_that_is_not_there_says_so(tmp_path: Path) -> None:
    done = tidegate("decode", f"kafka://127.0.0.1:{free_port()}/t", "--timeout", "1", cwd=tmp_path, check_rc=1)
    assert "cannot reach Kafka at 127.0.0.1:" in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- fsck


def _segment(data_dir: Path) -> Path:
    return sorted((data_dir / "log").rglob("*.log"))[0]


def test_fsck_clean_then_damaged_then_repaired(data_dir: Path, tmp_path: Path) -> None:
    done = tidegate("fsck", "--data-dir", str(data_dir), cwd=tmp_path)
    assert done.stdout.splitlines()[-1] == "clean" and "stream sensors: offsets 0..120" in done.stdout
    with open(_segment(data_dir), "ab") as f:
        f.write(b"\x07" * 100)  # garbage after the last record, as a torn write leaves
    done = tidegate("fsck", str(data_dir), cwd=tmp_path, check_rc=1)  # DATA_DIR as an argument
    assert done.stdout.splitlines()[-1] == "needs repair"
    done = tidegate("fsck", "--data-dir", str(data_dir), "--repair", cwd=tmp_path, check_rc=1)
    assert done.stdout.splitlines()[-1] == "repaired"
    assert tidegate("fsck", "--data-dir", str(data_dir), cwd=tmp_path).stdout.splitlines()[-1] == "clean"


def test_fsck_refuses_a_directory_in_use(data_dir: Path, tmp_path: Path) -> None:
    with open_log(data_dir / "log", LogConfig(window_ms=WINDOW_MS)):
        done = tidegate("fsck", "--data-dir", str(data_dir), cwd=tmp_path, check_rc=2)
    assert "in use by a running gateway" in done.stderr


# --------------------------------------------------------------------------- doctor


@pytest.mark.mosquitto
def test_doctor_finds_the_broker_and_fails_on_a_missing_one(mosquitto: Mosquitto, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'data_dir = "{tmp_path / "data"}"\n[mqtt]\nport = {mosquitto.port}\n')
    rows = {r["check"]: r for r in map(json.loads, tidegate("doctor", "--config", str(good), "--json", cwd=tmp_path,
                                                              check_rc=None).stdout.splitlines())}
    assert set(rows) == {"clock", "disk", "data dir", "packages", "broker", "kafka", "serial"}
    assert rows["broker"]["status"] == "ok" and rows["data dir"]["status"] == "ok" and rows["disk"]["status"] == "ok"
    assert rows["clock"]["status"] in ("ok", "warn")

    bad = tmp_path / "bad.toml"
    bad.write_text(f'data_dir = "{tmp_path / "data"}"\n[mqtt]\nport = {free_port()}\n'
                   '[upstream]\nurl = "kafka://127.0.0.1:1/t"\n[[serial]]\npath = "/dev/serial/by-id/not-there"\n')
    done = tidegate("doctor", "--config", str(bad), "--timeout", "1", cwd=tmp_path, check_rc=1)
    lines = done.stdout.splitlines()
    assert any(line.startswith("FAIL  broker") and "refused" in line.lower() for line in lines), done.stdout
    assert any(line.startswith("FAIL  kafka") for line in lines)
    assert any(line.startswith("FAIL  serial") and "not-there" in line for line in lines)
    assert "fix: start it: sudo systemctl enable --now mosquitto" in done.stdout


@pytest.mark.mosquitto
def test_doctor_connects_to_an_mqtt_upstream(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = tmp_path / "mqtt-up.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[mqtt]\nport = {mosquitto.port}\n'
                      f'[upstream]\nurl = "mqtt://127.0.0.1:{mosquitto.port}/site-1"\n')
    rows = {r["check"]: r for r in map(json.loads, tidegate("doctor", "--config", str(config), "--json", cwd=tmp_path,
                                                              check_rc=None).stdout.splitlines())}
    assert rows["upstream"]["status"] == "ok", rows["upstream"]
    assert rows["upstream"]["detail"] == f"MQTT upstream at 127.0.0.1:{mosquitto.port} accepts connections"
    assert "kafka" not in rows

    down = free_port()
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[mqtt]\nport = {mosquitto.port}\n'
                      f'[upstream]\nurl = "mqtt://127.0.0.1:{down}/site-1"\n')
    done = tidegate("doctor", "--config", str(config), "--timeout", "1", cwd=tmp_path, check_rc=1)
    assert f"FAIL  upstream  MQTT upstream at 127.0.0.1:{down}: Connection refused" in done.stdout, done.stdout


def test_doctor_flags_a_data_dir_that_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    done = tidegate("doctor", "--data-dir", str(tmp_path / "data"), "--timeout", "0.5", cwd=tmp_path, check_rc=1)
    assert f"FAIL  data dir  {tmp_path / 'data'} is not a directory" in done.stdout


# --------------------------------------------------------------------------- simulate, central, bench, firmware


@pytest.mark.mosquitto
def test_simulate_publishes_the_samples_it_was_asked_for(mosquitto: Mosquitto, tmp_path: Path) -> None:
    done = tidegate("simulate", "--mqtt", f"127.0.0.1:{mosquitto.port}", "--sensors", "4", "--rate", "50",
                    "--count", "40", cwd=tmp_path)
    assert "published 40 of 40 samples" in done.stderr


def test_central_passes_its_arguments_to_the_expander(tmp_path: Path) -> None:
    done = tidegate("central", cwd=tmp_path, check_rc=2)
    assert "usage: tidegate central" in done.stdout and "--bootstrap" in done.stdout
    done = tidegate("central", "--format", "xml", cwd=tmp_path, check_rc=2)
    assert "invalid choice: 'xml'" in done.stderr  # parsed by bridge.central's own parser


def test_bench_lists_and_refuses_unknown_benchmarks(tmp_path: Path) -> None:
    listing = tidegate("bench", cwd=tmp_path).stdout
    assert "log " in listing and "uplink " in listing
    assert "no benchmark 'nope'" in tidegate("bench", "nope", cwd=tmp_path, check_rc=2).stderr


def test_bench_runs_a_benchmark_with_its_own_options(tmp_path: Path) -> None:
    done = tidegate("bench", "log", "--help", cwd=tmp_path)
    assert "--quick" in done.stdout


def test_firmware_deploy_is_hooked_in(tmp_path: Path) -> None:
    assert "deploy" in tidegate("firmware", "--help", cwd=tmp_path).stdout
