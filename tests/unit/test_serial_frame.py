"""Serial framing: COBS + CRC-16 golden vectors, the stream decoder, and the encoder on MicroPython."""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path

import pytest
import umsgpack
from hypothesis import given, settings
from hypothesis import strategies as st

import core.serial_frame as serial_frame
from core.serial_decoder import NEED_DATA, Frame, FrameDecoder, FrameError, Line
from core.serial_frame import MAX_ENCODED, MAX_PAYLOAD, cobs_decode, cobs_encode, crc16, encode_frame

# docs/serial_format.md, "Worked example".
GOLDEN_SAMPLE = OrderedDict([("d", "n1"), ("b", 7), ("s", 1), ("up", 1500), ("values", OrderedDict([("t", 21.5)]))])
GOLDEN_PAYLOAD_HEX = "85a164a26e31a16207a17301a27570cd05dca676616c75657381a174cb403580" "0000000000"
GOLDEN_FRAME_HEX = (
    "012185a164a26e31a16207a17301a27570cd05dca676616c75657381a174cb40"
    "35800101010103176700"
)

# Wikipedia's COBS examples, which follow the reference encoder.
COBS_VECTORS = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


def events(decoder: FrameDecoder) -> list[object]:
    out = []
    while (event := decoder.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def decode_all(data: bytes, eof: bool = False) -> list[object]:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    if eof:
        decoder.receive_data(b"")
    return events(decoder)


# -- the encoder ---------------------------------------------------------------


def test_worked_example_matches_the_document_byte_for_byte() -> None:
    payload = umsgpack.packb(GOLDEN_SAMPLE)
    assert payload.hex() == GOLDEN_PAYLOAD_HEX
    assert crc16(b"\x00" + payload) == 0x1767
    assert encode_frame(payload).hex() == GOLDEN_FRAME_HEX
    assert decode_all(bytes.fromhex(GOLDEN_FRAME_HEX)) == [Frame(payload)]


def test_crc_is_ccitt_false_with_and_without_the_c_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    assert crc16(b"123456789") == 0x29B1
    data = bytes(random.Random(1).randrange(256) for _ in range(300))
    fast = crc16(data)
    monkeypatch.setattr(serial_frame, "_crc_hqx", None)
    assert crc16(b"123456789") == 0x29B1
    assert crc16(data) == fast
    assert crc16(data[100:], crc16(data[:100])) == fast


@pytest.mark.parametrize(("data", "encoded"), COBS_VECTORS)
def test_cobs_vectors(data: bytes, encoded: bytes) -> None:
    assert cobs_encode(data) == encoded
    assert cobs_decode(encoded) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200))
def test_cobs_round_trips_and_never_emits_zero(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + len(data) // 254 + 1
    assert cobs_decode(encoded) == data


def test_payload_size_is_bounded() -> None:
    assert len(encode_frame(b"\xff" * MAX_PAYLOAD)) - 1 == MAX_ENCODED
    for bad in (b"", b"x" * (MAX_PAYLOAD + 1)):
        with pytest.raises(ValueError):
            encode_frame(bad)


@pytest.mark.parametrize("bad", [b"\x05\x01", b"\x03\x00\x01", b"\x00"])
def test_cobs_decode_refuses_bad_blocks(bad: bytes) -> None:
    with pytest.raises(ValueError):
        cobs_decode(bad)


# -- the decoder -----------------------------------------------------------------


def frame_of(sample: dict[str, object]) -> bytes:
    return encode_frame(umsgpack.packb(sample))


def test_frames_split_at_every_byte_boundary_decode_the_same() -> None:
    stream = frame_of({"d": "a", "s": 1, "values": {"x": 1}}) + b'{"d": "b", "v": 2}\n' + frame_of({"d": "c", "v": 0.0})
    expected = decode_all(stream)
    assert [type(e) for e in expected] == [Frame, Line, Frame]
    for cut in range(1, len(stream)):
        decoder = FrameDecoder()
        got = []
        for piece in (stream[:cut], stream[cut:]):
            decoder.receive_data(piece)
            got += events(decoder)
        assert got == expected, cut
    decoder = FrameDecoder()
    got = []
    for byte in stream:
        decoder.receive_data(bytes([byte]))
        got += events(decoder)
    assert got == expected


def test_json_lines_and_frames_share_the_port_and_blank_lines_are_skipped() -> None:
    got = decode_all(b"\r\n  \n" + b'{"v": 1}\r\n' + b"\x00\x00" + b' [1, 2]\n' + frame_of({"v": 1}))
    assert got == [Line(b'{"v": 1}'), Line(b"[1, 2]"), Frame(umsgpack.packb({"v": 1}))]


def test_a_frame_holding_newlines_is_not_taken_for_a_line() -> None:
    payload = b"\n" * 50 + b"{\n"
    assert decode_all(encode_frame(payload)) == [Frame(payload)]


def test_flipped_bit_is_a_bad_crc_and_the_next_frame_still_decodes() -> None:
    good = frame_of({"d": "a", "v": 21.5})
    damaged = bytearray(good)
    damaged[10] ^= 0x04
    got = decode_all(bytes(damaged) + good)
    assert isinstance(got[0], FrameError) and got[0].reason == "bad_crc"
    assert got[0].raw == bytes(damaged[:-1])
    assert got[1] == Frame(umsgpack.packb({"d": "a", "v": 21.5}))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x01\x05ab\x00", "bad_cobs"),
        (b"\x01\x02\x01\x00", "too_short"),
        (b"\x7fgarbage\x00", "not_a_frame"),
        (b"MicroPython v1.22.0 on ESP32\r\n", "text_line"),
    ],
)
def test_each_kind_of_bad_chunk_has_its_reason_and_keeps_its_bytes(data: bytes, reason: str) -> None:
    (error,) = decode_all(data)
    assert isinstance(error, FrameError)
    assert error.reason == reason
    assert error.raw == data.rstrip(b"\x00").rstrip(b"\n")


def test_joining_in_the_middle_of_a_frame_loses_only_that_frame() -> None:
    good = frame_of({"d": "a", "v": 1})
    got = decode_all(good[7:] + good)
    assert [getattr(e, "reason", None) for e in got] == ["not_a_frame", None]


def test_missing_delimiter_costs_one_oversized_frame_and_the_stream_recovers() -> None:
    good = frame_of({"d": "a", "v": 1})
    runaway = b"\x01" + b"\xff" * 3000  # a frame start whose 0x00 never came
    decoder = FrameDecoder()
    for i in range(0, len(runaway), 100):
        decoder.receive_data(runaway[i : i + 100])
        assert events(decoder) == []
    decoder.receive_data(b"\x00" + good)
    error, frame = events(decoder)
    assert isinstance(error, FrameError) and error.reason == "too_long"
    assert "3001 bytes" in error.message and error.raw == runaway[:MAX_ENCODED]
    assert isinstance(frame, Frame)


def test_overlong_line_is_skipped_to_its_newline() -> None:
    decoder = FrameDecoder(max_line=100)
    decoder.receive_data(b"{" + b"x" * 500 + b"\n" + b'{"v": 1}\n')
    error, line = events(decoder)
    assert isinstance(error, FrameError) and error.reason == "too_long" and len(error.raw) == 100
    assert line == Line(b'{"v": 1}')


def test_unplug_mid_frame_reports_truncated_and_the_decoder_starts_afresh() -> None:
    good = frame_of({"d": "a", "v": 1})
    decoder = FrameDecoder()
    decoder.receive_data(good[:9])
    decoder.receive_data(b"")
    (error,) = events(decoder)
    assert isinstance(error, FrameError) and error.reason == "truncated" and error.raw == good[:9]
    decoder.receive_data(good)
    assert events(decoder) == [Frame(umsgpack.packb({"d": "a", "v": 1}))]
    decoder.receive_data(b"")
    assert events(decoder) == []


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=10))
def test_garbage_in_any_chunking_never_raises_and_every_byte_is_accounted(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_frame=64, max_line=64)
    for chunk in chunks:
        decoder.receive_data(chunk)
        for event in events(decoder):
            assert isinstance(event, (Frame, Line, FrameError))
    decoder.receive_data(b"")
    events(decoder)


def test_random_corruption_never_yields_a_frame_that_was_not_sent() -> None:
    rng = random.Random(7)
    payloads = [umsgpack.packb({"d": f"n{i}", "s": i, "values": {"t": rng.random()}}) for i in range(200)]
    stream = bytearray(b"".join(encode_frame(p) for p in payloads))
    for _ in range(60):  # bit flips, dropped bytes, inserted bytes
        pos = rng.randrange(len(stream))
        kind = rng.randrange(3)
        if kind == 0:
            stream[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del stream[pos]
        else:
            stream.insert(pos, rng.randrange(256))
    got = decode_all(bytes(stream), eof=True)
    frames = [e.payload for e in got if isinstance(e, Frame)]
    sent = set(payloads)
    # With CRC-16 a damaged frame passes about once in 65536; at most 60 are damaged here.
    assert all(p in sent for p in frames)
    assert len(frames) >= 200 - 2 * 60


# -- the encoder on MicroPython ----------------------------------------------------

MPY_PROGRAM = """
import serial_frame as sf
assert sf.crc16(b"123456789") == 0x29B1, hex(sf.crc16(b"123456789"))
payload = bytes.fromhex(PAYLOAD_HEX)
frame = sf.encode_frame(payload)
print(frame.hex())
for n in (0, 1, 253, 254, 255, 508, 1000):
    data = bytes([(i * 7 + 1) % 256 for i in range(n)])
    assert sf.cobs_decode(sf.cobs_encode(data)) == data, n
print(sf.cobs_encode(bytes(range(1, 256))).hex())
"""


@pytest.mark.micropython
def test_encoder_runs_on_micropython_and_matches_cpython(micropython) -> None:  # type: ignore[no-untyped-def]
    source = Path(serial_frame.__file__).read_text()
    program = MPY_PROGRAM.replace("PAYLOAD_HEX", repr(GOLDEN_PAYLOAD_HEX))
    out = micropython.check(program, files={"serial_frame.py": source}).split()
    assert out[0] == GOLDEN_FRAME_HEX
    assert out[1] == cobs_encode(bytes(range(1, 256))).hex()
