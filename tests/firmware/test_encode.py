"""The firmware's msgpack bytes are the golden bytes, on MicroPython and CPython, and the gateway decodes them.

Both directions of the contract between tidegate_node/encode.py and the
gateway: golden vectors (cases/golden.py) that the firmware must produce
byte for byte, that CPython's reference encoder (umsgpack + core/serial_frame)
also produces, that the gateway's codecs and serial decoder turn into the
expected readings, and that the firmware reads back.
"""

from __future__ import annotations

import collections
import struct

import pytest
import umsgpack

from core.codecs import SourceFields, decode_payload
from core.reading import Reading
from core.serial_decoder import NEED_DATA, Frame, FrameDecoder
from core.serial_frame import encode_frame
from tests.firmware.conftest import cases_fixture
from tests.firmware.harness import Cases, load_cases

pytestmark = pytest.mark.micropython

golden = load_cases("golden")
cases = cases_fixture("encode_cases")
VECTOR_IDS = [v["name"] for v in golden.VECTORS]


def _readings(vector: dict) -> list[Reading]:  # type: ignore[type-arg]
    return [Reading(d, m, ts, value, golden.RECEIVED_MS, src) for d, m, ts, value, src in vector["readings"]]


def test_firmware_bytes_are_the_golden_bytes_on_both_vms(cases: Cases) -> None:
    result = cases.check("case_golden_msgpack")

    assert [(name, packed.hex()) for name, packed in result] == [(v["name"], v["msgpack"]) for v in golden.VECTORS]


def test_firmware_frames_are_the_golden_frames_on_both_vms(cases: Cases) -> None:
    result = cases.check("case_golden_frames")

    assert [(name, frame.hex()) for name, frame in result] == [(v["name"], v["frame"]) for v in golden.VECTORS]


def test_worked_example_of_the_serial_format_doc_is_the_first_vector() -> None:
    first = golden.VECTORS[0]

    assert first["frame"] == (
        "01 21 85 a1 64 a2 6e 31 a1 62 07 a1 73 01 a2 75 70 cd 05 dc a6 76 61 6c 75 65 73 81 a1 74 cb 40"
        " 35 80 01 01 01 01 03 17 67 00"
    ).replace(" ", "")


@pytest.mark.parametrize("vector", golden.VECTORS, ids=VECTOR_IDS)
def test_cpython_reference_encoder_gives_the_golden_bytes(vector: dict) -> None:  # type: ignore[type-arg]
    sample = collections.OrderedDict(
        [("d", vector["device"]), ("b", vector["boot"]), ("s", vector["seq"]), (vector["time_key"], vector["time_ms"]),
         ("values", collections.OrderedDict(vector["values"]))]
    )
    if vector["sent_up_ms"] is not None:
        sample["su"] = vector["sent_up_ms"]

    packed = umsgpack.packb(sample)

    assert packed.hex() == vector["msgpack"]
    assert encode_frame(packed).hex() == vector["frame"]


@pytest.mark.parametrize("vector", golden.VECTORS, ids=VECTOR_IDS)
def test_gateway_codecs_decode_golden_bytes_into_the_readings(vector: dict) -> None:  # type: ignore[type-arg]
    readings = decode_payload(bytes.fromhex(vector["msgpack"]), SourceFields(), golden.RECEIVED_MS)

    assert readings == _readings(vector)


def test_gateway_serial_decoder_reads_all_golden_frames_from_one_stream() -> None:
    stream = b"".join(bytes.fromhex(v["frame"]) for v in golden.VECTORS)
    decoder = FrameDecoder()
    events = []
    for i in range(0, len(stream), 7):  # as a UART hands them over: in small pieces
        decoder.receive_data(stream[i : i + 7])
        while (event := decoder.next_event()) is not NEED_DATA:
            events.append(event)

    assert events == [Frame(bytes.fromhex(v["msgpack"])) for v in golden.VECTORS]


def test_firmware_reads_golden_bytes_back(cases: Cases) -> None:
    result = cases.check("case_reads_golden_bytes")

    for row, v in zip(result, golden.VECTORS, strict=True):
        assert row == [v["name"], True, v["device"], v["boot"], v["seq"], v["time_ms"], sorted(v["values"]),
                       v["sent_up_ms"]]


def test_a_pack_of_samples_decodes_to_all_their_readings(cases: Cases) -> None:
    packed = cases.check("case_pack_of_samples")

    readings = decode_payload(packed, SourceFields(), golden.RECEIVED_MS)

    assert readings == [r for v in golden.VECTORS[:3] for r in _readings(v)]


def test_pack_headers_follow_msgpack_array_encoding(cases: Cases) -> None:
    headers = cases.check("case_pack_headers")

    assert [bytes(h) for h in headers] == [umsgpack.packb([0] * n)[:-n or None] for n in (0, 1, 15, 16, 65535)]


def test_float32_samples_from_single_precision_ports_decode(cases: Cases) -> None:
    packed = cases.check("case_float32_on_single_precision_ports")

    assert packed.count(b"\xca") == 2 and b"\xcb" not in packed
    readings = decode_payload(packed, SourceFields(), 99)
    assert [(r.metric, r.value) for r in readings] == [("t", 21.5), ("rh", 40.25)]
    assert struct.unpack(">f", struct.pack(">f", readings[0].value))[0] == 21.5


def test_bad_samples_are_rejected_before_anything_is_sent(cases: Cases) -> None:
    assert cases.check("case_bad_samples_are_rejected") == ["EncodeError"] * 12


def test_umsgpack_imports_on_micropython_without_datetime(micropython, device_root) -> None:  # type: ignore[no-untyped-def]
    # ESP32 and Pico W builds have no datetime module; the shim supplies a stub.
    out = micropython.check(
        "import sys\n"
        "from tidegate_node import _umsgpack\n"
        "del sys.modules['umsgpack']\n"
        "m = _umsgpack.load(have_datetime=False)\n"
        "print(m.datetime is _umsgpack._DatetimeStub, 'collections.abc' in sys.modules, sys.modules['sys'] is sys)\n"
        "print(m.packb({'t': 21.5}).hex(), m.unpackb(m.packb([1, 'a', True])))\n",
        paths=[(device_root, "/")],
    )

    assert out.splitlines() == ["True False True", "81a174cb4035800000000000 [1, 'a', True]"]
