"""The ``tidegate`` command line.

Every subcommand's ``--help`` ends with examples. Commands that read the log
(``tail``, ``query``, ``replay``) open it read-only (:class:`ReadOnlyFileSystem`):
they take no lock and write nothing, so they work beside a running gateway
and on a copy of a data directory. ``fsck`` takes the directory's lock.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.log import Log, LogConfig
    from tidegate.config import RunConfig

__all__ = [
    "main", "build_parser", "parse_time", "ReadOnlyFileSystem", "open_log_read_only", "run_config_from_args", "split_batches",
]

ROOT = Path(__file__).resolve().parents[1]

_EPILOG_RUN = """\
examples:
  tidegate run --start-broker --simulate 20
      a local Mosquitto, 20 virtual sensors, batches spooled to ./tidegate-data/spool,
      status page on http://127.0.0.1:9880/
  tidegate run --config /etc/tidegate/tidegate.toml
      what the systemd unit runs (docs/configuration.md documents every key)
  tidegate run --config tidegate.toml --check-config
      validate the file and print the effective configuration (secrets hidden)
  tidegate run --mqtt 127.0.0.1:1883 --upstream kafka://127.0.0.1:9092/tidegate.batches
      ingest from an existing broker and forward to Kafka
"""
_EPILOG_STATUS = """\
examples:
  tidegate status                                  the gateway on this machine (port 9880)
  tidegate status --config /etc/tidegate/tidegate.toml
  tidegate status --url http://10.0.0.7:9880 --json
exit status: 0 healthy, 1 unhealthy or not answering.
"""
_EPILOG_TAIL = """\
examples:
  tidegate tail                                    last 10 readings of every stream, then follow
  tidegate tail --stream sensors -n 50 --no-follow
  tidegate tail --dead-letters                     rejected input: reason, topic, raw bytes in hex
  tidegate tail --config /etc/tidegate/tidegate.toml --json
"""
_EPILOG_QUERY = """\
examples:
  tidegate query --stream sensors --from 2026-11-22T08:00Z --to 2026-11-22T09:00Z
  tidegate query --stream sensors --from -1h --format csv -o last-hour.csv
  tidegate query --stream sensors --from 1795300000000 --device sim-01-0003 --metric temp_c
times: ISO 8601 (UTC unless an offset is given), Unix milliseconds, "now", or relative: -90s, -15m, -2h, -7d.
Reads the data directory read-only; works while the gateway runs.
"""
_EPILOG_REPLAY = """\
examples:
  tidegate replay --stream sensors --from 2026-11-22T08:00Z --to 2026-11-22T09:00Z
      resend that hour to the configured upstream
  tidegate replay --config /etc/tidegate/tidegate.toml --stream sensors --from -6h \\
      --upstream kafka://10.0.0.5:9092/tidegate.batches
Replayed batches carry the readings' original ids (gateway/stream/offset): the central
expander drops the ones it already has, so a replay never duplicates.
"""
_EPILOG_DECODE = """\
examples:
  tidegate decode tidegate-data/spool/*.tgb          one JSON line per reading
  tidegate decode --headers tidegate-data/spool/     one JSON line per batch
  cat tidegate-data/spool/*.tgb | tidegate decode -  batches from stdin
  tidegate decode kafka://10.0.0.5:9092/tidegate.batches --from-beginning --no-follow
      every batch on the topic so far, then stop
  tidegate decode kafka://10.0.0.5:9092/tidegate.batches --window 2026-11-22T08:30Z --headers
      the batches of the time window that holds that moment (one per line), then stop
  tidegate decode kafka://10.0.0.5:9092/tidegate.batches --max 10
      the next 10 batches that arrive
sources:
  FILE or DIR   a batch file, or a spool directory (its *.tgb files in name order)
  -             stdin: raw batch bytes, one batch or several simply concatenated (what cat of
                spool files gives). No other framing: each batch's header says how long it is
                (docs/batch_format.md: 48 fixed bytes, two length-prefixed names, body_length).
                A batch that fails its CRC is reported and skipped; a stream that ends inside a
                batch, or where no batch magic follows one, ends the input with an error.
  kafka://HOST:PORT[,HOST:PORT]/TOPIC
                the batch topic, read without a consumer group (nothing committed). Starts at the
                end and waits for new batches unless --from-beginning or --window; stops at --max
                batches, at the end of the topic with --no-follow (or --window), or at Ctrl-C.
                librdkafka settings (TLS, SASL) come from the address's query and from
                [upstream.settings] of --config.
Readings print as {"id", "device", "metric", "ts_ms", "value", "received_ms", "time_source"};
--headers prints one line per batch with where it came from (file, or topic/partition/offset).
exit status: 0 every batch decoded, 1 a batch or source could not be read (said on stderr), 2 bad arguments.
"""
_EPILOG_FSCK = """\
examples:
  tidegate fsck                                    check ./tidegate-data; change nothing
  tidegate fsck /var/lib/tidegate                  check that data directory
  sudo systemctl stop tidegate && tidegate fsck --config /etc/tidegate/tidegate.toml --repair
exit status: 0 clean, 1 damage found (or repaired), 2 cannot check (in use, missing).
"""
_EPILOG_DOCTOR = """\
examples:
  tidegate doctor
  tidegate doctor --config /etc/tidegate/tidegate.toml --json
checks: clock synchronised, disk free and quota, data directory permissions, Mosquitto installed,
MQTT broker reachable (and credentials), Kafka reachable (and topic), serial ports present.
exit status: 0 nothing failed (warnings allowed), 1 a check failed.
"""
_EPILOG_SIMULATE = """\
examples:
  tidegate simulate --mqtt 127.0.0.1:1883 --sensors 50 --rate 2 --duration 60
  tidegate simulate --sensors 5 --count 1000       stop after 1,000 samples
"""
_EPILOG_CENTRAL = """\
examples:
  tidegate central --bootstrap kafka:9092 --create-topics
      expand tidegate.batches into tidegate.readings, one record per reading, exactly once
  tidegate central --bootstrap kafka:9092 --group tidegate-central --instance-id a --status
      one of several instances (same group, each its own --instance-id)
"""
_EPILOG_BENCH = """\
examples:
  tidegate bench                                   list the benchmarks
  tidegate bench log --quick                       run bench/bench_log.py with --quick
  tidegate bench all --quick                       every benchmark in turn, then a summary of the ratios
  tidegate bench uplink -- --help                  a benchmark's own options
"""


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (port 0 = any free port), got {text!r}")
    return host, int(port)


_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now_ms: int | None = None) -> int:
    """A time given on the command line, as Unix milliseconds.

    Accepts ``now``, relative times (``-15m``, ``-2h``, ``-7d``), Unix
    milliseconds (digits) and ISO 8601 (UTC unless it carries an offset;
    ``Z`` allowed).

    Raises:
        argparse.ArgumentTypeError: none of these.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    text = text.strip()
    if text == "now":
        return now_ms
    relative = _RELATIVE.match(text)
    if relative:
        return now_ms - int(float(relative.group(1)) * _UNITS[relative.group(2)] * 1000)
    if text.isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-22T08:00Z), Unix ms, now, or -15m/-2h/-7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp() * 1000)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help="take the data directory (and gateway id) from this config")
    parser.add_argument("--data-dir", type=Path, default=None, help="the gateway's data directory (default: ./tidegate-data)")


def _sub(sub: Any, name: str, help_text: str, description: str, epilog: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidegate",
        description="Edge IoT broker: durable, time-partitioned, lz4-batched forwarding of sensor readings to Kafka.",
        epilog="Run 'tidegate COMMAND --help' for a command's options and examples. Docs: docs/quickstart-raspberry-pi.md",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _sub(sub, "run", "run the gateway: MQTT intake, durable log, bridge upstream, status page",
               "Run the gateway: ingest from MQTT (and serial) into the durable log, forward batches upstream, "
               "serve /metrics, /healthz and the status page.", _EPILOG_RUN)
    run.add_argument("--config", type=Path, default=None, metavar="FILE",
                     help="the TOML configuration (docs/configuration.md); flags below override it")
    run.add_argument("--check-config", action="store_true",
                     help="validate the configuration, print it as JSON (secrets hidden) and exit")
    run.add_argument("--data-dir", type=Path, default=None, help="log, cursors and spool (default: ./tidegate-data)")
    run.add_argument("--mqtt", type=_host_port, default=None, help="local broker HOST:PORT (default 127.0.0.1:1883)")
    run.add_argument("--start-broker", action="store_true", default=None, help="start a Mosquitto of ours on the --mqtt port")
    run.add_argument("--upstream", default=None, help="spool:DIR or kafka://HOST:PORT[/TOPIC] (default: spool:<data-dir>/spool)")
    run.add_argument("--gateway-id", default=None, help="this gateway's id, part of every reading's id (default gw-1)")
    run.add_argument("--sync", choices=("always", "interval", "never"), default=None, help="log sync policy (default interval)")
    run.add_argument("--window", type=int, default=None, metavar="SECONDS", help="time window length (60..86400, default 3600)")
    run.add_argument("--http", type=_listen, default=None, metavar="HOST:PORT",
                     help="serve /metrics, /healthz and the status page here (default 0.0.0.0:9880)")
    run.add_argument("--no-http", action="store_true", help="no HTTP endpoint")
    run.add_argument("--log-format", choices=("text", "json"), default=None, help="log lines as text or JSON (default text)")
    run.add_argument("--simulate", type=int, default=0, metavar="N", help="also run N virtual sensors publishing to the broker")
    run.add_argument("--simulate-rate", type=float, default=1.0, metavar="HZ", help="samples per second per virtual sensor")
    run.add_argument("--simulate-count", type=int, default=None, metavar="N", help="the virtual sensors stop after N samples")
    run.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    run.add_argument("--quiet", action="store_true", help="no summary line")

    status = _sub(sub, "status", "show a running gateway's state (from its /api/status)",
                  "Ask a running gateway how it is: health, counts, backlog, uplink, streams, devices, last errors.",
                  _EPILOG_STATUS)
    status.add_argument("--url", default=None, help="the gateway's HTTP address (default http://127.0.0.1:9880)")
    status.add_argument("--config", type=Path, default=None, metavar="FILE", help="take the port from this config")
    status.add_argument("--json", action="store_true", help="print the whole status document as JSON")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")

    tail = _sub(sub, "tail", "print readings as they are written to the log (or dead letters)",
                "Print the last readings of the log and follow new ones, like tail -f. Read-only.", _EPILOG_TAIL)
    _add_data_args(tail)
    tail.add_argument("--stream", default=None, help="only this stream (default: every stream)")
    tail.add_argument("-n", "--lines", type=int, default=10, help="readings to show first, per stream (default 10)")
    tail.add_argument("--no-follow", action="store_true", help="print and exit instead of following")
    tail.add_argument("--dead-letters", action="store_true", help="show dead letters: reason, topic, message, raw bytes")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)

    query = _sub(sub, "query", "readings of a stream in a time range, as JSON lines or CSV",
                 "Read a stream's readings whose device time is in [--from, --to) from the log, read-only.",
                 _EPILOG_QUERY)
    _add_data_args(query)
    query.add_argument("--stream", required=True, help="the stream")
    query.add_argument("--from", dest="start", required=True, type=parse_time, help="start time (inclusive)")
    query.add_argument("--to", dest="end", default="now", type=parse_time, help="end time (exclusive, default now)")
    query.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="output format (default jsonl)")
    query.add_argument("--device", default=None, help="only this device")
    query.add_argument("--metric", default=None, help="only this metric")
    query.add_argument("-o", "--output", type=Path, default=None, help="write here instead of stdout")

    replay = _sub(sub, "replay", "resend a time window of a stream upstream, with a progress bar",
                  "Read a stream's readings in [--from, --to) from the log and send them upstream again as batches.",
                  _EPILOG_REPLAY)
    _add_data_args(replay)
    replay.add_argument("--stream", required=True, help="the stream")
    replay.add_argument("--from", dest="start", required=True, type=parse_time, help="start time (inclusive)")
    replay.add_argument("--to", dest="end", default="now", type=parse_time, help="end time (exclusive, default now)")
    replay.add_argument("--upstream", default=None, help="where to send (default: the configured upstream)")
    replay.add_argument("--gateway-id", default=None, help="the gateway id in the batches (default: the configured one)")
    replay.add_argument("--batch-readings", type=int, default=5000, help="readings per batch at most (default 5000)")

    decode = _sub(sub, "decode", "decode batches (files, spool, stdin or a Kafka topic) into JSON lines",
                  "Decode tidegate batches and print one JSON line per reading (or per batch).", _EPILOG_DECODE)
    decode.add_argument("paths", nargs="+", metavar="SOURCE",
                        help="batch files, spool directories, - (stdin) or kafka://HOST:PORT/TOPIC")
    decode.add_argument("--headers", action="store_true", help="print batch headers only")
    decode.add_argument("--max", type=int, default=None, metavar="N", help="stop after N batches")
    decode.add_argument("--from-beginning", action="store_true", help="kafka: start at the oldest batch on the topic")
    decode.add_argument("--window", type=parse_time, default=None, metavar="TIME",
                        help="kafka: only the batches of the time window holding TIME (found by record time); stops at the end")
    decode.add_argument("--no-follow", action="store_true", help="kafka: stop at the end of the topic")
    decode.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="kafka: take librdkafka settings (TLS, SASL) from this config's [upstream.settings]")
    decode.add_argument("--timeout", type=float, default=10.0, help="kafka: seconds to wait for the cluster (default 10)")

    fsck = _sub(sub, "fsck", "check (and repair) the log's files",
                "Check every segment, index, cursor and state file of a data directory. "
                "Needs the gateway stopped (it takes the directory's lock).", _EPILOG_FSCK)
    _add_data_args(fsck)
    fsck.add_argument("data_dir_arg", nargs="?", type=Path, default=None, metavar="DATA_DIR",
                      help="the data directory (the same as --data-dir)")
    fsck.add_argument("--repair", action="store_true", help="make the repairs (truncate torn tails, rebuild indexes)")

    doctor = _sub(sub, "doctor", "check clock, disk, permissions, broker, Kafka and serial ports",
                  "Check what a gateway on a site needs, and say how to fix what is wrong.", _EPILOG_DOCTOR)
    _add_data_args(doctor)
    doctor.add_argument("--json", action="store_true", help="one JSON object per check")
    doctor.add_argument("--timeout", type=float, default=3.0, help="seconds per network check (default 3)")

    simulate = _sub(sub, "simulate", "a fleet of virtual sensors publishing to MQTT",
                    "Publish readings from N virtual sensors to an MQTT broker (JSON, msgpack and CBOR in turn).",
                    _EPILOG_SIMULATE)
    simulate.add_argument("--mqtt", type=_host_port, default=("127.0.0.1", 1883), help="broker HOST:PORT")
    simulate.add_argument("--sensors", type=int, default=20, help="number of sensors")
    simulate.add_argument("--rate", type=float, default=1.0, help="samples per second per sensor")
    simulate.add_argument("--count", type=int, default=None, help="stop after this many samples")
    simulate.add_argument("--duration", type=float, default=None, help="stop after this many seconds")

    central = sub.add_parser("central", help="the central expander: batches -> one Kafka record per reading",
                             add_help=False, prefix_chars="\0")
    central.add_argument("args", nargs=argparse.REMAINDER)

    bench = _sub(sub, "bench", "run a benchmark from bench/",
                 "Run one of the benchmarks in bench/ (each compares against its ceiling in the same run).",
                 _EPILOG_BENCH)
    bench.add_argument("name", nargs="?", default=None, help="the benchmark (log, uplink, pipeline, ...; all: every one)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="options for the benchmark")

    try:
        from tidegate import firmware_cmd
    except ImportError:
        pass
    else:
        firmware_cmd.add_parser(sub)
    return parser


# --------------------------------------------------------------------------- run


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The configuration file (or the defaults) with the command line's flags applied.

    Raises:
        ConfigError: the file or a flag's value is not valid.
    """
    from dataclasses import replace

    from tidegate.config import ConfigError, HttpConfig, LoggingConfig, load_config

    config = load_config(args.config)
    changes: dict[str, Any] = {}
    try:
        if args.data_dir is not None:
            changes["data_dir"] = args.data_dir
            if args.upstream is None and config.upstream == f"spool:{config.data_dir / 'spool'}":
                changes["upstream"] = f"spool:{args.data_dir / 'spool'}"
        if args.upstream is not None:
            changes["upstream"] = args.upstream
        if args.gateway_id is not None:
            changes["gateway_id"] = args.gateway_id
        if args.start_broker:
            changes["start_broker"] = True
        if args.mqtt is not None:
            changes["mqtt"] = replace(config.mqtt, host=args.mqtt[0], port=args.mqtt[1])
        log_changes: dict[str, Any] = {}
        if args.sync is not None:
            log_changes["sync_policy"] = args.sync
        if args.window is not None:
            log_changes["window_ms"] = args.window * 1000
        if log_changes:
            changes["log"] = replace(config.log, **log_changes)
        if args.no_http:
            changes["http"] = None
        elif args.http is not None:
            changes["http"] = HttpConfig(host=args.http[0], port=args.http[1])
        if args.log_format is not None:
            changes["logging"] = LoggingConfig(level=config.logging.level, format=args.log_format)
        if args.verbose:
            changes["logging"] = replace(changes.get("logging", config.logging), level="debug")
        changes["simulate_sensors"] = args.simulate
        changes["simulate_rate"] = args.simulate_rate
        changes["simulate_count"] = args.simulate_count
        return replace(config, **changes)
    except ConfigError:
        raise
    except Exception as exc:  # a value object's own check (ValueError, InvalidLogConfig, ...)
        raise ConfigError("command line", [str(exc)]) from exc


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _cmd_run(args: argparse.Namespace) -> int:
    from tidegate.app import Service, setup_logging
    from tidegate.config import describe

    config = run_config_from_args(args)
    if args.check_config:
        print(json.dumps(describe(config), indent=2, default=str))
        return 0
    setup_logging(config.logging.level, config.logging.format)
    from bridge.transports import redact_url

    service = Service(config)
    try:
        service.start()
    except BaseException:
        service.stop()
        raise
    host, port = config.mqtt.host, config.mqtt.port
    print(
        f"tidegate: gateway {config.gateway_id}, MQTT {host}:{port}, upstream {redact_url(config.upstream)}, "
        f"data {config.data_dir}"
        + (f", status page http://{_display_host(config.http.host)}:{service.http_port}/" if config.http else "")
        + (f", {args.simulate} simulated sensors" if args.simulate else ""),
        file=sys.stderr, flush=True,
    )
    service.run_forever(duration_s=args.duration, status=not args.quiet)
    return 0


# --------------------------------------------------------------------------- status


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _human_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _status_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    port = 9880
    if args.config is not None:
        from tidegate.config import load_config

        config = load_config(args.config)
        if config.http is None:
            raise SystemExit(f"tidegate status: {args.config} turns the HTTP endpoint off ([http] enabled = false)")
        port = config.http.port
    return f"http://127.0.0.1:{port}"


def _print_status(doc: dict[str, Any]) -> None:
    t = doc["totals"]
    print(f"gateway {doc['gateway_id']} (tidegate {doc['version']}), up {_human_age(doc['uptime_s'])}, "
          + ("healthy" if doc["healthy"] else "UNHEALTHY: " + ", ".join(f"{k} {v}" for k, v in doc["health"].items())))
    print(f"upstream {doc['upstream']['url']} {'up' if doc['upstream']['up'] else 'DOWN'}"
          f" | MQTT {doc['mqtt']['host']}:{doc['mqtt']['port']} {'connected' if t['mqtt_connected'] else 'DISCONNECTED'}"
          f" | clock {'synchronised' if t['clock_synchronised'] else 'NOT synchronised'}")
    ratio = f", {doc['history']['compression_ratio'][-1]:.1f}x smaller than MQTT" if doc["history"].get("compression_ratio") else ""
    print(f"readings in {int(t['readings_in']):,} | rejected {int(t['rejected']):,} | duplicates {int(t['deduplicated']):,}"
          f" | out {int(t['readings_out']):,} in {int(t['batches_out']):,} batches, {_human_bytes(t['uplink_bytes'])}{ratio}")
    quota = f" of {_human_bytes(t['quota_bytes'])} quota" if t["quota_bytes"] else " (no quota)"
    print(f"backlog {int(t['backlog']):,} readings, oldest {_human_age(t['oldest_unforwarded_age_s'])}"
          f" | log {_human_bytes(t['log_bytes'])}{quota} | disk {_human_bytes(t['disk_free_bytes'])} free"
          f" | dropped by quota {int(t['dropped_by_quota']):,} | broker dropped {int(t['broker_dropped']):,}")
    if doc["streams"]:
        print()
        print(f"{'stream':<20} {'in':>12} {'rate/s':>8} {'backlog':>10} {'oldest':>8} {'log':>10}")
        for s in doc["streams"]:
            print(f"{s['stream']:<20} {int(s['readings_in']):>12,} {s['rate']:>8.1f} {int(s['backlog']):>10,}"
                  f" {_human_age(s['oldest_unforwarded_age_s']):>8} {_human_bytes(s['log_bytes']):>10}")
    if doc["devices"]:
        print()
        print(f"{len(doc['devices'])} devices; last seen longest ago:")
        for d in sorted(doc["devices"], key=lambda d: d["last_seen_ms"])[:5]:
            values = ", ".join(f"{k}={v}" for k, v in d["values"].items())
            print(f"  {d['device']:<24} {_human_age(d['age_s']):>8} ago  {d['rate']:.2f}/s  {values}")
    problems = doc["errors"][:5]
    if problems:
        print()
        print("last errors:")
        for e in problems:
            print(f"  {_iso(e['ts_ms'])} {e['level']} {e['logger']}: {e['message']}")
    if doc["dead_letters"]:
        print()
        print("last dead letters:")
        for d in doc["dead_letters"][:5]:
            print(f"  {_iso(d['received_ms'])} {d['reason']} on {d['topic']}: {d['message']}")


def _cmd_status(args: argparse.Namespace) -> int:
    url = _status_url(args)
    try:
        with urllib.request.urlopen(f"{url}/api/status", timeout=args.timeout) as response:
            doc = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"tidegate status: no gateway answering at {url}: {reason}\n"
              "  is it running? systemctl status tidegate; journalctl -u tidegate -n 50", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_status(doc)
    return 0 if doc.get("healthy") else 1


# --------------------------------------------------------------------------- reading the log


class ReadOnlyFileSystem:
    """A :class:`core.log.FileSystem` over a real directory that never changes it.

    Reads go to the directory; every change (appends, truncation of a torn
    tail, index rebuilds, renames) is dropped. Opening a log through it shows
    what a recovery would see, without doing the recovery, so it is safe
    beside the gateway that owns the directory.
    """

    def __init__(self, root: Path) -> None:
        from edge.logstore import OsFileSystem

        self._real = OsFileSystem(root)

    class _NoWrite:
        def write(self, data: bytes) -> None:
            pass

        def flush(self) -> None:
            pass

        def sync(self) -> None:
            pass

        def close(self) -> None:
            pass

    def open_append(self, path: str) -> ReadOnlyFileSystem._NoWrite:
        return self._NoWrite()

    def read(self, path: str, position: int, size: int) -> bytes:
        return self._real.read(path, position, size)

    def size(self, path: str) -> int:
        return self._real.size(path)

    def exists(self, path: str) -> bool:
        return self._real.exists(path)

    def listdir(self, path: str) -> list[str]:
        return self._real.listdir(path) if self._real.exists(path) else []

    def mkdir(self, path: str) -> None:
        pass

    def rmdir(self, path: str) -> None:
        pass

    def rename(self, source: str, target: str) -> None:
        pass

    def unlink(self, path: str) -> None:
        pass

    def truncate(self, path: str, size: int) -> None:
        pass

    def sync_file(self, path: str) -> None:
        pass

    def sync_dir(self, path: str) -> None:
        pass

    def close(self) -> None:
        self._real.close()


def open_log_read_only(data_dir: Path, config: LogConfig | None = None) -> tuple[Log, ReadOnlyFileSystem]:
    """Open the log of a data directory without changing it; close both when done.

    Raises:
        FileNotFoundError: there is no log in ``data_dir``.
    """
    from core.log import Log

    log_dir = Path(data_dir) / "log"
    if not log_dir.is_dir():
        raise FileNotFoundError(f"no log in {data_dir} (expected {log_dir}); is --data-dir or --config right?")
    fs = ReadOnlyFileSystem(log_dir)
    try:
        log = Log(fs, config, reporter=lambda damage: None)
    except BaseException:
        fs.close()
        raise
    return log, fs


def _data_config(args: argparse.Namespace) -> RunConfig:
    from dataclasses import replace

    from tidegate.config import load_config

    config = load_config(args.config)
    if getattr(args, "data_dir", None) is not None:
        config = replace(config, data_dir=args.data_dir,
                         upstream=config.upstream if args.config else f"spool:{args.data_dir / 'spool'}")
    return config


def _reading_row(gateway: str, stream: str, offset: int, payload: bytes) -> dict[str, Any] | None:
    from core.errors import CoreError
    from core.reading import decode_reading

    try:
        r = decode_reading(payload)
    except CoreError:
        return None
    return {
        "id": f"{gateway}/{stream}/{offset}", "stream": stream, "offset": offset, "device": r.device,
        "metric": r.metric, "ts_ms": r.ts_ms, "time": _iso(r.ts_ms), "value": r.value,
        "received_ms": r.received_ms, "time_source": r.time_source,
    }


_QUERY_COLUMNS = ("id", "stream", "offset", "device", "metric", "ts_ms", "time", "value", "received_ms", "time_source")


def _cmd_query(args: argparse.Namespace) -> int:
    config = _data_config(args)
    if args.end <= args.start:
        print(f"tidegate query: --to ({_iso(args.end)}) must be after --from ({_iso(args.start)})", file=sys.stderr)
        return 2
    log, fs = open_log_read_only(config.data_dir, config.log)
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    count = 0
    try:
        writer = csv.writer(out) if args.format == "csv" else None
        if writer is not None:
            writer.writerow(_QUERY_COLUMNS)
        for record in log.read_time_range(args.stream, args.start, args.end):
            row = _reading_row(config.gateway_id, args.stream, record.offset, record.payload)
            if row is None or (args.device and row["device"] != args.device) or (args.metric and row["metric"] != args.metric):
                continue
            count += 1
            if writer is not None:
                writer.writerow([row[c] for c in _QUERY_COLUMNS])
            else:
                out.write(json.dumps(row) + "\n")
    finally:
        if args.output:
            out.close()
        log.close()
        fs.close()
    print(f"{count:,} readings of {args.stream} from {_iso(args.start)} to {_iso(args.end)}", file=sys.stderr)
    return 0


def _raw_extent(row: Mapping[str, Any]) -> str:
    """"12 bytes", or "512 of 262144 bytes kept" when the log holds only the payload's start."""
    kept = len(row["raw_hex"]) // 2
    return f"{kept} bytes" if kept == row["raw_length"] else f"{kept} of {row['raw_length']} bytes kept"


def _dead_letter_row(offset: int, payload: bytes) -> dict[str, Any] | None:
    from core.deadletter import decode_dead_letter
    from core.errors import CoreError

    try:
        d = decode_dead_letter(payload)
    except CoreError:
        return None
    return {"offset": offset, "received_ms": d.received_ms, "time": _iso(d.received_ms), "source": d.source,
            "topic": d.topic, "reason": d.reason, "message": d.message, "raw_hex": d.raw.hex(),
            "raw_length": d.original_length, "raw_sha256": d.sha256.hex(), **({"counts": dict(d.counts)} if d.counts else {})}


def _tail_lines(config: RunConfig, streams: list[str], positions: dict[str, int], dead: bool, as_json: bool,
                first: int) -> Iterator[str]:
    """New lines since ``positions`` (updated); the first pass shows ``first`` records per stream."""
    log, fs = open_log_read_only(config.data_dir, config.log)
    try:
        wanted = streams or [s for s in log.streams() if s.startswith("_") == dead]
        for stream in wanted:
            end = log.durable_offset(stream)
            start = positions.get(stream)
            if start is None:
                start = max(log.start_offset(stream), end - first)
            while start < end:
                records = log.read(stream, max(start, log.start_offset(stream)), 1000)
                if not records:
                    break
                for record in records:
                    if dead:
                        row = _dead_letter_row(record.offset, record.payload)
                        if row is None:
                            continue
                        yield json.dumps(row) if as_json else (
                            f"{row['time']} {row['reason']:<14} {row['source']}:{row['topic']}  {row['message']}\n"
                            f"    raw ({_raw_extent(row)}): {row['raw_hex'][:160]}"
                            + ("..." if len(row["raw_hex"]) > 160 else ""))
                    else:
                        row = _reading_row(config.gateway_id, stream, record.offset, record.payload)
                        if row is None:
                            continue
                        yield json.dumps(row) if as_json else (
                            f"{row['time']} {stream}@{record.offset} {row['device']} {row['metric']}={row['value']}")
                start = records[-1].offset + 1
            positions[stream] = start
    finally:
        log.close()
        fs.close()


def _cmd_tail(args: argparse.Namespace) -> int:
    from core.deadletter import DEAD_LETTER_STREAM

    config = _data_config(args)
    streams = [DEAD_LETTER_STREAM] if args.dead_letters else ([args.stream] if args.stream else [])
    positions: dict[str, int] = {}
    try:
        while True:
            for line in _tail_lines(config, streams, positions, args.dead_letters, args.json, args.lines):
                print(line, flush=True)
            if args.no_follow:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


# --------------------------------------------------------------------------- replay


class _Progress:
    """A one-line progress bar on stderr (redrawn on a terminal, every 10% otherwise)."""

    def __init__(self, start_ms: int, end_ms: int, stream: Any = None) -> None:
        self.start_ms, self.end_ms = start_ms, end_ms
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._shown = -1

    def update(self, ts_ms: int, readings: int, batches: int, size: int, final: bool = False) -> None:
        span = max(1, self.end_ms - self.start_ms)
        fraction = 1.0 if final else min(1.0, max(0.0, (ts_ms - self.start_ms) / span))
        decile = int(fraction * 10)
        if not self.tty and not final and decile == self._shown:
            return
        self._shown = decile
        width = 30
        filled = int(fraction * width)
        bar = "#" * filled + "." * (width - filled)
        elapsed = time.monotonic() - self.started
        rate = readings / elapsed if elapsed > 0 else 0.0
        line = (f"[{bar}] {fraction * 100:5.1f}%  {readings:,} readings  {batches:,} batches  "
                f"{_human_bytes(size)}  {rate:,.0f} readings/s")
        if self.tty:
            self.stream.write(f"\r{line}\033[K" + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _cmd_replay(args: argparse.Namespace) -> int:
    from bridge.errors import BridgeError
    from bridge.transports import open_upstream, redact_url
    from core.batch import Entry, decode_header, encode_batch
    from core.errors import CoreError
    from core.reading import decode_reading
    from core.timewindow import window_of

    config = _data_config(args)
    if args.end <= args.start:
        print(f"tidegate replay: --to ({_iso(args.end)}) must be after --from ({_iso(args.start)})", file=sys.stderr)
        return 2
    gateway = args.gateway_id or config.gateway_id
    upstream = args.upstream or config.upstream
    log, fs = open_log_read_only(config.data_dir, config.log)
    readings = batches = size = 0
    progress = _Progress(args.start, args.end)
    try:
        transport = open_upstream(upstream, config.upstream_settings)
    except BridgeError as exc:
        log.close()
        fs.close()
        print(f"tidegate replay: {exc}", file=sys.stderr)
        return 2
    window_ms = config.log.window_ms
    pending: list[Entry] = []
    pending_window = None

    def flush() -> None:
        nonlocal batches, size, pending
        if not pending:
            return
        batch = encode_batch(gateway, args.stream, pending_window, pending)  # type: ignore[arg-type]
        transport.send(batch, decode_header(batch))
        batches += 1
        size += len(batch)
        pending = []

    try:
        last_ts = args.start
        for record in log.read_time_range(args.stream, args.start, args.end):
            try:
                reading = decode_reading(record.payload)
            except CoreError:
                continue
            window = window_of(record.ts_ms, window_ms)
            if pending and (window != pending_window or len(pending) >= args.batch_readings
                            or record.offset <= pending[-1].offset):
                flush()
                progress.update(last_ts, readings, batches, size)
            pending_window = window
            pending.append(Entry(record.offset, reading))
            readings += 1
            last_ts = record.ts_ms
        flush()
        progress.update(args.end, readings, batches, size, final=True)
    except (BridgeError, CoreError) as exc:
        print(f"\ntidegate replay: stopped after {batches} batches: {exc}", file=sys.stderr)
        return 1
    finally:
        transport.close()
        log.close()
        fs.close()
    print(f"replayed {readings:,} readings of {args.stream} in {batches:,} batches ({_human_bytes(size)}) "
          f"to {redact_url(upstream)}",
          file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- decode, fsck, doctor


#: Where a batch came from: the fields --headers prints first ("file", or "topic"/"partition"/"offset").
Origin = dict[str, Any]
#: What a source hands the decoder: where, a label for error messages, and the batch's bytes or why there are none.
Sourced = tuple[Origin, str, bytes | Exception]

# Stdin framing, from docs/batch_format.md: 48 fixed bytes (magic first,
# body_length last, a big-endian u32 at 44), then two names each preceded by
# its u8 length, then the body. decode_batch checks everything else.
_FIXED_HEADER = 48
_BODY_LENGTH_AT = 44
#: A length beyond this is damage, not a batch (the Kafka transport caps batches at 8 MiB).
_MAX_STREAM_BATCH = 64 * 1024 * 1024
_CHUNK = 1024 * 1024


def _read_exact(stream: Any, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the stream; read in chunks so a wrong length costs no memory."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = stream.read(min(n - got, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def split_batches(stream: Any) -> Iterator[bytes]:
    """Cut a byte stream of concatenated batches into batches, by each header's lengths.

    Args:
        stream: a binary file object (``sys.stdin.buffer``); read as far as needed, never seeked.

    Yields:
        Each batch's bytes, unchecked (:func:`core.batch.decode_batch` checks them).

    Raises:
        BatchFormatError: the stream ends inside a batch, or the next bytes are
            not a batch's start; what follows cannot be framed.
    """
    from core.batch import MAGIC
    from core.errors import BatchFormatError

    position = 0
    while True:
        fixed = _read_exact(stream, _FIXED_HEADER)
        if not fixed:
            return
        if fixed[:4] != MAGIC[: len(fixed[:4])]:
            raise BatchFormatError(f"no batch starts at byte {position} (magic {fixed[:4]!r})", reason="bad_magic")
        if len(fixed) < _FIXED_HEADER:
            raise BatchFormatError(f"input ends inside the batch header at byte {position}", reason="truncated")
        body_length = int.from_bytes(fixed[_BODY_LENGTH_AT:_FIXED_HEADER], "big")
        if body_length > _MAX_STREAM_BATCH:
            raise BatchFormatError(f"batch at byte {position} claims a {body_length}-byte body", reason="bad_length")
        pieces = [fixed]
        for _ in ("gateway", "stream"):
            length = _read_exact(stream, 1)
            name = _read_exact(stream, length[0]) if length else b""
            if not length or len(name) < length[0]:
                raise BatchFormatError(f"input ends inside the batch at byte {position}", reason="truncated")
            pieces += [length, name]
        body = _read_exact(stream, body_length)
        if len(body) < body_length:
            raise BatchFormatError(f"input ends inside the batch at byte {position}: {len(body)} of {body_length} body bytes",
                                   reason="truncated")
        batch = b"".join(pieces) + body
        yield batch
        position += len(batch)


def _file_sources(sources: Sequence[str]) -> Iterator[Sourced]:
    from core.errors import BatchFormatError

    for source in sources:
        if source == "-":
            try:
                for data in split_batches(sys.stdin.buffer):
                    yield {"file": "-"}, "stdin", data
            except BatchFormatError as exc:
                yield {"file": "-"}, "stdin", exc
            continue
        path = Path(source)
        for file in sorted(path.glob("*.tgb")) if path.is_dir() else [path]:
            try:
                data = file.read_bytes()
            except OSError as exc:
                yield {"file": str(file)}, str(file), exc
                continue
            yield {"file": str(file)}, str(file), data


def _kafka_sources(url: str, settings: Mapping[str, str], args: argparse.Namespace) -> Iterator[Sourced]:
    """The batch topic's records, from the start ``args`` ask for, until the end ``args`` ask for.

    No consumer group is joined and nothing is committed: decoding changes
    nothing on the cluster. With ``--window``, each partition starts at the
    first record whose time is one longest window before TIME: a batch's
    record time is its window's start (docs/batch_format.md, "Kafka
    mapping"), so no batch of that window lies before it.

    Raises:
        BridgeError: the address is not valid, or the topic cannot be read.
    """
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

    from bridge.errors import BridgeError
    from bridge.transports import KafkaUpstream, parse_upstream
    from core.timewindow import MAX_WINDOW_MS

    target = parse_upstream(url, settings)
    if not isinstance(target, KafkaUpstream):
        raise BridgeError(f"{url!r} is not a kafka:// address")
    consumer = Consumer({
        **target.settings,
        "bootstrap.servers": target.bootstrap,
        "group.id": f"tidegate-decode-{uuid.uuid4().hex[:12]}",  # required by librdkafka; never joined (assign)
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "logger": logging.getLogger("tidegate.decode.kafka"),
    })
    try:
        try:
            metadata = consumer.list_topics(target.topic, timeout=args.timeout)
        except KafkaException as exc:
            raise BridgeError(f"cannot reach Kafka at {target.bootstrap}: {exc}") from exc
        topic = metadata.topics.get(target.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise BridgeError(f"topic {target.topic!r} does not exist on {target.bootstrap}")
        partitions = sorted(topic.partitions)
        if args.window is not None:
            wanted = [TopicPartition(target.topic, p, max(args.window - MAX_WINDOW_MS, 0)) for p in partitions]
            starts = consumer.offsets_for_times(wanted, timeout=args.timeout)
            assignment = [TopicPartition(target.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
                          for tp in starts]
        else:
            start = OFFSET_BEGINNING if args.from_beginning else OFFSET_END
            assignment = [TopicPartition(target.topic, p, start) for p in partitions]
        consumer.assign(assignment)
        stop_at_end = args.no_follow or args.window is not None
        at_end: set[int] = set()
        while not (stop_at_end and len(at_end) == len(partitions)):
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    continue
                if error.fatal():
                    raise BridgeError(f"cannot read {target.topic!r}: {error}")
                print(f"tidegate decode: {target.topic}: {error}", file=sys.stderr)
                continue
            at_end.discard(message.partition())
            origin = {"topic": message.topic(), "partition": message.partition(), "offset": message.offset()}
            yield origin, f"{message.topic()}[{message.partition()}]@{message.offset()}", message.value() or b""
    finally:
        consumer.close()


def _print_batch(batch: Any, origin: Origin, size: int, headers: bool) -> None:
    h = batch.header
    if headers:
        print(json.dumps({
            **origin, "gateway": h.gateway, "stream": h.stream, "window_start_ms": h.window.start_ms,
            "window_length_ms": h.window.length_ms, "first_offset": h.first_offset, "last_offset": h.last_offset,
            "count": h.count, "bytes": size,
        }))
    else:
        for entry in batch.entries:
            r = entry.reading
            print(json.dumps({
                "id": f"{h.gateway}/{h.stream}/{entry.offset}", "device": r.device, "metric": r.metric,
                "ts_ms": r.ts_ms, "value": r.value, "received_ms": r.received_ms, "time_source": r.time_source,
            }))
    sys.stdout.flush()  # one batch at a time, so a pipe (| head, | jq) sees a followed topic as it comes


def _decode_sources(args: argparse.Namespace) -> Iterator[Sourced] | str:
    """The sources the arguments name, or what is wrong with the arguments."""
    from tidegate.config import load_config

    kafka = [s for s in args.paths if s.startswith("kafka://")]
    if kafka and len(args.paths) > 1:
        return "a kafka:// topic must be the only source"
    if args.paths.count("-") > 1:
        return "stdin (-) can be read once"
    if args.max is not None and args.max < 1:
        return f"--max {args.max}: must be at least 1"
    if not kafka:
        misplaced = [flag for flag, given in (("--from-beginning", args.from_beginning), ("--window", args.window is not None),
                                              ("--no-follow", args.no_follow), ("--config", args.config is not None)) if given]
        return f"{', '.join(misplaced)}: only for a kafka:// source" if misplaced else _file_sources(args.paths)
    if args.from_beginning and args.window is not None:
        return "--from-beginning and --window: give one (--window finds its own start)"
    settings: Mapping[str, str] = {}
    if args.config is not None:
        config = load_config(args.config)
        settings = config.upstream_settings if config.upstream.startswith("kafka://") else {}
    return _kafka_sources(kafka[0], settings, args)


def _cmd_decode(args: argparse.Namespace) -> int:
    from core.batch import decode_batch
    from core.errors import BatchFormatError

    sources = _decode_sources(args)
    if isinstance(sources, str):
        print(f"tidegate decode: {sources}", file=sys.stderr)
        return 2
    failures = shown = 0
    try:
        for origin, label, data in sources:
            if isinstance(data, Exception):
                print(f"tidegate decode: {label}: {data}", file=sys.stderr)
                failures += 1
                continue
            try:
                batch = decode_batch(data)
            except BatchFormatError as exc:
                print(f"tidegate decode: {label}: {exc}", file=sys.stderr)
                failures += 1
                continue
            if args.window is not None and not batch.header.window.contains(args.window):
                continue
            _print_batch(batch, origin, len(data), args.headers)
            shown += 1
            if args.max is not None and shown >= args.max:
                break
    except KeyboardInterrupt:
        pass
    finally:
        sources.close()  # the Kafka consumer, at once
    return 1 if failures else 0


def _cmd_fsck(args: argparse.Namespace) -> int:
    from core.log import LogError
    from edge.logstore import DataDirLocked, fsck_data_dir

    if args.data_dir_arg is not None:
        if args.data_dir is not None and args.data_dir != args.data_dir_arg:
            print("tidegate fsck: give the data directory once (DATA_DIR or --data-dir)", file=sys.stderr)
            return 2
        args.data_dir = args.data_dir_arg
    config = _data_config(args)
    log_dir = config.data_dir / "log"
    try:
        report = fsck_data_dir(log_dir, config.log, repair=args.repair)
    except DataDirLocked:
        print(f"tidegate fsck: {log_dir} is in use by a running gateway; stop it first (sudo systemctl stop tidegate)",
              file=sys.stderr)
        return 2
    except FileNotFoundError:
        print(f"tidegate fsck: no log in {config.data_dir} (expected {log_dir})", file=sys.stderr)
        return 2
    except LogError as exc:
        print(f"tidegate fsck: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    return 0 if report.clean else 1


def _cmd_doctor(args: argparse.Namespace) -> int:
    from edge.doctor import FAIL, DoctorInput, run_checks

    config = _data_config(args)
    checks = run_checks(DoctorInput(
        data_dir=config.data_dir, quota_bytes=config.log.quota_bytes, mqtt=config.mqtt, upstream=config.upstream,
        upstream_settings=dict(config.upstream_settings), serial_paths=tuple(s.path for s in config.serial),
        timeout_s=args.timeout,
    ))
    for check in checks:
        if args.json:
            print(json.dumps({"check": check.name, "status": check.status, "detail": check.detail, "fix": check.fix}))
            continue
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[check.status]
        print(f"{mark}  {check.name:<9} {check.detail}")
        if check.fix:
            print(f"{'':6}{'':<9} fix: {check.fix}")
    return 1 if any(c.status == FAIL for c in checks) else 0


# --------------------------------------------------------------------------- simulate, central, bench


def _cmd_simulate(args: argparse.Namespace) -> int:
    from edge.simulator import Fleet, FleetConfig

    host, port = args.mqtt
    fleet = Fleet(FleetConfig(host, port, args.sensors, args.rate))
    try:
        fleet.run(total=args.count, duration_s=args.duration)
    except KeyboardInterrupt:
        pass
    print(f"published {fleet.published} of {fleet.sent} samples", file=sys.stderr)
    return 0


def _cmd_central(args: argparse.Namespace) -> int:
    from bridge import central

    rest = list(args.args)
    if not rest or rest[0] in ("-h", "--help"):
        parser = central.build_parser()
        parser.prog = "tidegate central"
        parser.epilog = _EPILOG_CENTRAL
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.print_help()
        return 0 if rest else 2
    return int(central.main(rest) or 0)


def _benchmarks() -> dict[str, Path]:
    return {p.stem[len("bench_"):]: p for p in sorted((ROOT / "bench").glob("bench_*.py"))}


def _cmd_bench(args: argparse.Namespace) -> int:
    found = _benchmarks()
    if not found:
        print(f"tidegate bench: no benchmarks in {ROOT / 'bench'}; they come with the source tree (git clone)",
              file=sys.stderr)
        return 2
    if args.name is None:
        for name, path in found.items():
            doc = path.read_text(encoding="utf-8").split('"""')[1].strip().splitlines()[0] if '"""' in path.read_text(encoding="utf-8") else ""
            print(f"{name:<12} {doc}")
        print(f"{'all':<12} every benchmark in turn and a summary of their ratios (python -m bench)")
        return 0
    if args.name != "all" and args.name not in found:
        print(f"tidegate bench: no benchmark {args.name!r}; there are: {', '.join(found)}", file=sys.stderr)
        return 2
    rest = [a for a in args.args if a != "--"] if args.args[:1] == ["--"] else list(args.args)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])))
    module = "bench" if args.name == "all" else f"bench.bench_{args.name}"
    return subprocess.run([sys.executable, "-m", module, *rest], cwd=ROOT, env=env, check=False).returncode


# --------------------------------------------------------------------------- main


def _glue_relative_times(argv: Sequence[str]) -> list[str]:
    """``--from -2h`` as ``--from=-2h``: argparse would take ``-2h`` for an option."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] in ("--from", "--to") and _RELATIVE.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_glue_relative_times(sys.argv[1:] if argv is None else argv))
    if args.command != "run":
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    from bridge.errors import BridgeError
    from core.errors import CoreError
    from edge.errors import EdgeError
    from tidegate.config import ConfigError

    handlers = {
        "run": _cmd_run, "status": _cmd_status, "tail": _cmd_tail, "query": _cmd_query, "replay": _cmd_replay,
        "decode": _cmd_decode, "fsck": _cmd_fsck, "doctor": _cmd_doctor, "simulate": _cmd_simulate,
        "central": _cmd_central, "bench": _cmd_bench,
    }
    try:
        if args.command == "firmware":
            from tidegate import firmware_cmd

            return firmware_cmd.run(args)
        return handlers[args.command](args)
    except BrokenPipeError:
        sys.stderr.close()  # the reader (head, less) went away; nothing left to say
        return 0
    except ConfigError as exc:
        print(f"tidegate: configuration error in {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"tidegate {args.command}: {exc}", file=sys.stderr)
        return 2
    except (EdgeError, CoreError, BridgeError) as exc:  # a data dir in use, a broken log, a bad upstream
        print(f"tidegate {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tidegate {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
