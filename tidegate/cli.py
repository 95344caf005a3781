"""The ``tidegate`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidegate.config import RunConfig

__all__ = ["main", "build_parser"]

_EPILOG_RUN = """\
examples:
  tidegate run --start-broker --simulate 20
      a local Mosquitto, 20 virtual sensors, batches spooled to ./tidegate-data/spool
  tidegate run --mqtt 127.0.0.1:1883 --upstream kafka://127.0.0.1:9092/tidegate.batches
      ingest from an existing broker and forward to Kafka
"""
_EPILOG_DECODE = """\
examples:
  tidegate decode tidegate-data/spool/*.tgb          one JSON line per reading
  tidegate decode --headers tidegate-data/spool/     one JSON line per batch
"""
_EPILOG_SIMULATE = """\
examples:
  tidegate simulate --mqtt 127.0.0.1:1883 --sensors 50 --rate 2 --duration 60
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidegate",
        description="Edge IoT broker: durable, time-partitioned, lz4-batched forwarding of sensor readings to Kafka.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the gateway: MQTT intake, durable log, bridge upstream",
        description="Run the gateway: ingest from MQTT into the durable log and forward batches upstream.",
        epilog=_EPILOG_RUN, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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

    decode = sub.add_parser(
        "decode", help="decode batch files (spool) into JSON lines",
        description="Decode tidegate batch files and print one JSON line per reading (or per batch).",
        epilog=_EPILOG_DECODE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    decode.add_argument("paths", nargs="+", type=Path, help="batch files or spool directories")
    decode.add_argument("--headers", action="store_true", help="print batch headers only")

    simulate = sub.add_parser(
        "simulate", help="a fleet of virtual sensors publishing to MQTT",
        description="Publish readings from N virtual sensors to an MQTT broker (JSON, msgpack and CBOR in turn).",
        epilog=_EPILOG_SIMULATE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    simulate.add_argument("--mqtt", type=_host_port, default=("127.0.0.1", 1883), help="broker HOST:PORT")
    simulate.add_argument("--sensors", type=int, default=20, help="number of sensors")
    simulate.add_argument("--rate", type=float, default=1.0, help="samples per second per sensor")
    simulate.add_argument("--count", type=int, default=None, help="stop after this many samples")
    simulate.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    return parser


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The configuration file (or the defaults) with the command line's flags applied.

    Raises:
        ConfigError: the file or a flag's value is not valid.
    """
    from dataclasses import replace

    from tidegate.config import ConfigError, HttpConfig, LoggingConfig, load_config

    config = load_config(args.config)
    changes: dict[str, object] = {}
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
        log_changes: dict[str, object] = {}
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
            changes["logging"] = replace(changes.get("logging", config.logging), level="debug")  # type: ignore[arg-type]
        changes["simulate_sensors"] = args.simulate
        changes["simulate_rate"] = args.simulate_rate
        changes["simulate_count"] = args.simulate_count
        return replace(config, **changes)
    except ConfigError:
        raise
    except Exception as exc:  # a value object's own check (ValueError, InvalidLogConfig, ...)
        raise ConfigError("command line", [str(exc)]) from exc


def _cmd_run(args: argparse.Namespace) -> int:
    from tidegate.app import Service, setup_logging
    from tidegate.config import describe

    config = run_config_from_args(args)
    if args.check_config:
        print(json.dumps(describe(config), indent=2, default=str))
        return 0
    setup_logging(config.logging.level, config.logging.format)
    service = Service(config)
    try:
        service.start()
    except BaseException:
        service.stop()
        raise
    host, port = config.mqtt.host, config.mqtt.port
    print(
        f"tidegate: gateway {config.gateway_id}, MQTT {host}:{port}, upstream {config.upstream}, data {config.data_dir}"
        + (f", status page http://{_display_host(config.http.host)}:{service.http_port}/" if config.http else "")
        + (f", {args.simulate} simulated sensors" if args.simulate else ""),
        file=sys.stderr,
    )
    service.run_forever(duration_s=args.duration, status=not args.quiet)
    return 0


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _batch_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.tgb")) if path.is_dir() else [path])
    return files


def _cmd_decode(args: argparse.Namespace) -> int:
    from core.batch import decode_batch
    from core.errors import BatchFormatError

    failures = 0
    for path in _batch_files(args.paths):
        try:
            batch = decode_batch(path.read_bytes())
        except (OSError, BatchFormatError) as exc:
            print(f"tidegate decode: {path}: {exc}", file=sys.stderr)
            failures += 1
            continue
        h = batch.header
        if args.headers:
            print(json.dumps({
                "file": str(path), "gateway": h.gateway, "stream": h.stream, "window_start_ms": h.window.start_ms,
                "window_length_ms": h.window.length_ms, "first_offset": h.first_offset, "last_offset": h.last_offset,
                "count": h.count, "bytes": path.stat().st_size,
            }))
            continue
        for entry in batch.entries:
            r = entry.reading
            print(json.dumps({
                "id": f"{h.gateway}/{h.stream}/{entry.offset}", "device": r.device, "metric": r.metric,
                "ts_ms": r.ts_ms, "value": r.value, "received_ms": r.received_ms, "time_source": r.time_source,
            }))
    return 1 if failures else 0


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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from tidegate.config import ConfigError

    handler = {"run": _cmd_run, "decode": _cmd_decode, "simulate": _cmd_simulate}[args.command]
    try:
        return handler(args)
    except BrokenPipeError:
        return 0
    except ConfigError as exc:
        print(f"tidegate: configuration error in {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
