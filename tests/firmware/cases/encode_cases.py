"""Encoding cases: the firmware's bytes for the golden vectors, and its reading of gateway bytes."""

import golden
from tidegate_node import encode
from tidegate_node._umsgpack import umsgpack

try:
    import serial_frame  # on a board and in the VM: /lib/serial_frame.py
except ImportError:  # CPython in the repository
    from core import serial_frame


def _encode(vector):
    packed = encode.encode_sample(
        vector["device"], vector["boot"], vector["seq"], vector["time_key"], vector["time_ms"], vector["values"]
    )
    if vector["sent_up_ms"] is not None:
        packed = encode.with_sent_uptime(packed, vector["sent_up_ms"])
    return packed


def case_golden_msgpack():
    return [[v["name"], _encode(v)] for v in golden.VECTORS]


def case_golden_frames():
    return [[v["name"], serial_frame.encode_frame(_encode(v))] for v in golden.VECTORS]


def case_reads_golden_bytes():
    # The reverse direction: bytes the gateway side wrote (golden) read back
    # on the node, as the ring buffer does on replay.
    out = []
    for v in golden.VECTORS:
        frame = bytes.fromhex(v["frame"])
        content = serial_frame.cobs_decode(frame[:-1])
        crc_ok = serial_frame.crc16(content[:-2]) == (content[-2] << 8 | content[-1])
        sample = umsgpack.unpackb(content[1:-2])
        values = sorted(sample["values"].items())
        time_ms = sample[v["time_key"]]
        out.append([v["name"], crc_ok, sample["d"], sample["b"], sample["s"], time_ms, values, sample.get("su")])
    return out


def case_pack_of_samples():
    samples = [_encode(v) for v in golden.VECTORS[:3]]
    return encode.encode_pack(samples)


def case_pack_headers():
    return [encode.pack_header(n) for n in (0, 1, 15, 16, 65535)]


def case_float32_on_single_precision_ports():
    # What an ESP32 or RP2040 build sends: the same map with float32 values.
    return encode.encode_sample("n1", 7, 1, "up", 1500, [("t", 21.5), ("rh", 40.25)], float_precision="single")


def case_bad_samples_are_rejected():
    bad = [
        ("n1", 1, 1, "t", 5, [("a", 1)]),
        ("", 1, 1, "up", 5, [("a", 1)]),
        ("x" * 256, 1, 1, "up", 5, [("a", 1)]),
        ("n1", -1, 1, "up", 5, [("a", 1)]),
        ("n1", 1, 1 << 64, "up", 5, [("a", 1)]),
        ("n1", 1, 1, "up", True, [("a", 1)]),
        ("n1", 1, 1, "up", 5, []),
        ("n1", 1, 1, "up", 5, [("a", 1), ("a", 2)]),
        ("n1", 1, 1, "up", 5, [("a", None)]),
        ("n1", 1, 1, "up", 5, [("a", [1])]),
        ("n1", 1, 1, "up", 5, [("m" + str(i), "v" * 100) for i in range(10)]),
    ]
    out = []
    for args in bad:
        try:
            encode.encode_sample(*args)
            out.append("accepted")
        except encode.EncodeError as exc:
            out.append(type(exc).__name__)
    try:
        encode.with_sent_uptime(b"\x93\x01\x02\x03", 5)
        out.append("accepted")
    except encode.EncodeError as exc:
        out.append(type(exc).__name__)
    return out
