"""The on-disk format against docs/log_format.md: golden vector and codec round trips."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.log import LogConfig
from core.log import format as fmt
from tests.unit.log.conftest import T0, open_log

DOC = Path(__file__).resolve().parents[3] / "docs" / "log_format.md"

GOLDEN_SEGMENT_HEX = (
    "c154474c9b7ceae7330000000100000000000000000200000000f451c28c010000fa00000000000000fa00000005000000"
    "0600000068656c6c6f776f726c6421c154474cfacd25a02100000001020000000000000001000000e8f751c28c010000"
    "00000000000000000100000021"
)


def _doc_example_bytes() -> bytes:
    """The hex in the worked example's code blocks: leading two-digit hex tokens of each line."""
    text = DOC.read_text()
    section = text.split("### Worked example", 1)[1].split("## Index files", 1)[0]
    out = bytearray()
    for block in re.findall(r"```\n(.*?)```", section, re.S):
        for line in block.splitlines():
            for token in line.split():
                if not re.fullmatch(r"[0-9a-f]{2}", token):
                    break
                out.append(int(token, 16))
    return bytes(out)


def test_doc_example_hex_is_the_golden_segment() -> None:
    assert _doc_example_bytes() == bytes.fromhex(GOLDEN_SEGMENT_HEX)


def test_log_writes_the_golden_segment_byte_for_byte(fs) -> None:
    log = open_log(fs, LogConfig(sync_policy="interval"))
    assert log.append("sensors", T0, b"hello", T0) == 0
    assert log.append("sensors", T0 + 250, b"world!", T0) == 1
    log.sync()
    assert log.append("sensors", T0 + 1000, b"!", T0) == 2
    log.sync()
    path = "streams/sensors/00000001704067200000-03600000/00000000000000000000.log"
    assert fs.snapshot()[path] == bytes.fromhex(GOLDEN_SEGMENT_HEX)


def test_mask_and_unmask_are_inverse() -> None:
    for crc in (0, 1, 0xFFFFFFFF, 0xA282EAD8, 0x12345678):
        assert fmt.unmask_crc(fmt.mask_crc(crc)) == crc
        assert fmt.mask_crc(crc) != crc or crc in ()


def test_crc32c_is_castagnoli() -> None:
    assert fmt.crc32c(b"123456789") == 0xE3069283  # the standard check value


@given(
    base=st.integers(0, 2**63),
    records=st.lists(st.tuples(st.integers(0, 2**40), st.binary(max_size=300)), min_size=1, max_size=50),
)
def test_batch_round_trip(base, records) -> None:
    low = min(t for t, _ in records)
    records = [(low + (t - low) % (2**32), p) for t, p in records]
    body = fmt.encode_batch(base, [t for t, _ in records], [p for _, p in records])
    header, deltas, ends, blob = fmt.decode_batch(body)
    assert header.base_offset == base and header.records == len(records)
    previous = 0
    for i, (ts, payload) in enumerate(records):
        assert header.base_ts + deltas[i] == ts
        assert bytes(blob[previous:ends[i]]) == payload
        previous = ends[i]


@pytest.mark.parametrize("body", [
    b"",
    fmt.BATCH_HEADER.pack(0, 0, 0, 0),                     # count 0
    fmt.BATCH_HEADER.pack(0, 2, 0, 0) + b"\0" * 8,          # columns cut short
    fmt.BATCH_HEADER.pack(0, 1, 0, 0) + b"\x05\0\0\0" + b"\x01\0\0\0" + b"x",  # delta above span
    fmt.BATCH_HEADER.pack(0, 1, 0, 9) + b"\0\0\0\0" + b"\x02\0\0\0" + b"x",    # lengths do not add up
])
def test_batches_that_break_the_rules_decode_to_none(body) -> None:
    assert fmt.decode_batch(body) is None


def test_cursor_and_state_round_trip_and_reject_damage() -> None:
    data = fmt.encode_cursor(12345)
    assert len(data) == fmt.CURSOR_SIZE and fmt.decode_cursor(data) == 12345
    assert fmt.decode_cursor(data[:-1] + bytes([data[-1] ^ 1])) is None
    state = {"version": 1, "dropped": {"a": 3}, "floors": {}, "pending_delete": []}
    blob = fmt.encode_state(state)
    assert fmt.decode_state(blob) == state
    assert fmt.decode_state(blob.replace(b'"a"', b'"b"')) is None
    assert fmt.decode_state(b"garbage") is None


def test_names_sort_in_time_and_offset_order() -> None:
    windows = [fmt.window_dir_name(s, 3_600_000) for s in (0, 3_600_000, 10 * 3_600_000, T0)]
    assert sorted(windows) == windows
    segments = [fmt.segment_name(b) for b in (0, 9, 10, 2**63)]
    assert sorted(segments) == segments
    assert fmt.parse_window_dir_name(windows[-1]) == (T0, 3_600_000)
    assert fmt.parse_segment_name("00000000000000000042.timeindex") == (42, "timeindex")
    assert fmt.parse_window_dir_name("00000000000000000001-03600000") is None  # not aligned


@pytest.mark.parametrize("name,ok", [
    ("sensors", True), ("_deadletter", True), ("a.b-c_d", True), ("x" * 64, True),
    ("", False), (".", False), ("..", False), ("a/b", False), ("x" * 65, False), ("sé", False), (3, False),
])
def test_valid_names(name, ok) -> None:
    assert fmt.valid_name(name) is ok
