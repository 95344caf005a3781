"""The command line's pure parts: times, flags over the config file, the read-only log view, stdin batch framing."""

from __future__ import annotations

import argparse
import hashlib
import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import BatchFormatError
from core.log import LogConfig
from core.reading import Reading, encode_reading
from edge.logstore import open_log
from tidegate.cli import (
    _glue_relative_times, build_parser, main, open_log_read_only, parse_time, run_config_from_args, split_batches,
)
from tidegate.config import ConfigError


def test_times_on_the_command_line() -> None:
    now = 1_800_000_000_000
    assert parse_time("now", now) == now
    assert parse_time("-90s", now) == now - 90_000
    assert parse_time("-15m", now) == now - 900_000
    assert parse_time("-2h", now) == now - 7_200_000
    assert parse_time("-7d", now) == now - 7 * 86_400_000
    assert parse_time("1795300000000", now) == 1_795_300_000_000
    assert parse_time("2026-11-22T08:00Z", now) == parse_time("2026-11-22T09:00+01:00", now) == 1_795_334_400_000
    assert parse_time("2026-11-22T08:00", now) == 1_795_334_400_000  # UTC when no offset is given
    with pytest.raises(argparse.ArgumentTypeError, match="is not a time"):
        parse_time("yesterday", now)


def test_relative_times_after_from_and_to_are_not_options() -> None:
    assert _glue_relative_times(["query", "--from", "-1h", "--to", "-5m", "-v"]) == ["query", "--from=-1h", "--to=-5m", "-v"]
    args = build_parser().parse_args(_glue_relative_times(["query", "--stream", "s", "--from", "-1h"]))
    assert args.start < int(time.time() * 1000)


def run_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", *argv])


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text('gateway_id = "site-3"\ndata_dir = "/srv/a"\n[mqtt]\nport = 1884\nusername = "u"\n[log]\nwindow_ms = 600000\n')
    merged = run_config_from_args(run_args("--config", str(config), "--mqtt", "10.0.0.2:1885", "--sync", "always",
                                           "--http", "127.0.0.1:0", "--log-format", "json"))
    assert merged.gateway_id == "site-3" and merged.data_dir == Path("/srv/a")
    assert (merged.mqtt.host, merged.mqtt.port, merged.mqtt.username) == ("10.0.0.2", 1885, "u")
    assert merged.log.window_ms == 600_000 and merged.log.sync_policy == "always"
    assert merged.http is not None and merged.http.port == 0 and merged.logging.format == "json"
    moved = run_config_from_args(run_args("--config", str(config), "--data-dir", "/srv/b", "--no-http"))
    assert moved.upstream == "spool:/srv/b/spool" and moved.http is None


def test_a_bad_flag_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="window_ms = 5000 is not allowed"):
        run_config_from_args(run_args("--window", "5"))
    with pytest.raises(ConfigError, match="gateway_id = 'a b'"):
        run_config_from_args(run_args("--gateway-id", "a b"))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_read_only_log_view_changes_nothing_even_with_a_torn_tail(tmp_path: Path) -> None:
    with open_log(tmp_path / "log", LogConfig(sync_policy="always")) as log:
        for i in range(10):
            r = Reading("d", "m", 1_700_000_000_000 + i, i, 1_700_000_000_000 + i)
            log.append("s", r.ts_ms, encode_reading(r), now_ms=1_700_000_000_000)
    segment = sorted((tmp_path / "log").rglob("*.log"))[0]
    with open(segment, "ab") as f:
        f.write(b"\x01\x02\x03")  # a torn write: recovery would truncate it
    before = _digest(tmp_path)
    view, fs = open_log_read_only(tmp_path)
    try:
        assert [r.offset for r in view.read("s", 0, 100)] == list(range(10))
    finally:
        view.close()
        fs.close()
    assert _digest(tmp_path) == before


def test_every_subcommand_has_examples_in_its_help() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        if name in ("central", "firmware"):
            continue  # central prints bridge.central's parser with examples; firmware has subcommands
        assert sub.epilog and "examples:" in sub.epilog and f"tidegate {name}" in sub.epilog, name


def _batches(n: int, per_batch: int = 3) -> list[bytes]:
    from core.batch import Entry, encode_batch
    from core.timewindow import window_of

    window = window_of(1_800_000_000_000, 3_600_000)
    out = []
    for b in range(n):
        entries = [Entry(b * per_batch + i, Reading(f"dev-{b}", "t", window.start_ms + b * 1000 + i, float(i), window.start_ms))
                   for i in range(per_batch)]
        out.append(encode_batch("gw", f"stream-{b}", window, entries))
    return out


def test_concatenated_batches_are_split_by_their_headers() -> None:
    batches = _batches(4)
    assert list(split_batches(io.BytesIO(b"".join(batches)))) == batches
    assert list(split_batches(io.BytesIO(b""))) == []


class Trickle(io.RawIOBase):
    """A pipe that hands out a few bytes per read, as a slow producer on stdin does."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self.data, self.step = data, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        chunk, self.data = self.data[: min(n, self.step)], self.data[min(n, self.step):]
        return chunk


def test_short_reads_from_a_pipe_still_give_whole_batches() -> None:
    batches = _batches(3)
    assert list(split_batches(Trickle(b"".join(batches)))) == batches


@pytest.mark.parametrize("after, reason, says", [
    (lambda batch: batch[:2], "truncated", "input ends inside the batch header at byte"),
    (lambda batch: batch[:20], "truncated", "input ends inside the batch header at byte"),
    (lambda batch: batch[:49], "truncated", "input ends inside the batch at byte"),
    (lambda batch: batch[:-1], "truncated", "input ends inside the batch at byte"),
    (lambda batch: b"garbage after the batch, not a header at all", "bad_magic", "no batch starts at byte"),
])
def test_a_stream_that_breaks_off_is_an_error_after_the_whole_batches(after: Callable[[bytes], bytes], reason: str,
                                                                      says: str) -> None:
    first, second = _batches(2)
    split = split_batches(io.BytesIO(first + after(second)))
    assert next(split) == first
    with pytest.raises(BatchFormatError, match=f"{says} {len(first)}") as info:
        next(split)
    assert info.value.reason == reason


def test_an_absurd_body_length_is_refused_before_reading_it() -> None:
    (batch,) = _batches(1)
    damaged = batch[:44] + (2**32 - 1).to_bytes(4, "big") + batch[48:]
    with pytest.raises(BatchFormatError, match="claims a 4294967295-byte body"):
        next(split_batches(io.BytesIO(damaged)))


@pytest.mark.parametrize("argv, problem", [
    (["decode", "kafka://k:9092/t", "spool/"], "a kafka:// topic must be the only source"),
    (["decode", "-", "-"], "stdin (-) can be read once"),
    (["decode", "spool/", "--from-beginning"], "--from-beginning: only for a kafka:// source"),
    (["decode", "spool/", "--window", "now", "--no-follow"], "--window, --no-follow: only for a kafka:// source"),
    (["decode", "kafka://k:9092/t", "--from-beginning", "--window", "now"], "give one"),
    (["decode", "spool/", "--max", "0"], "--max 0: must be at least 1"),
])
def test_decode_refuses_arguments_that_do_not_go_together(argv: list[str], problem: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert problem in capsys.readouterr().err


def test_the_upstream_shown_in_logs_and_status_carries_no_password_or_settings() -> None:
    from tidegate.app import _safe_upstream

    assert _safe_upstream("mqtts://site:s3cret@broker.example.net:8883/tg?ca_file=/ca.pem") == \
        "mqtts://site:***@broker.example.net:8883/tg"
    assert _safe_upstream("kafka://10.0.0.1:9092/batches?sasl.password=hunter2") == "kafka://10.0.0.1:9092/batches"
