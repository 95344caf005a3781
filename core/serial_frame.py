"""Serial frames: COBS with a CRC-16, shared by the gateway and the firmware.

This module runs unchanged on CPython and MicroPython: no dataclasses, no
typing, no annotations, only ``bytes``/``bytearray`` operations both have. The
firmware copies it (or imports it) to encode frames; the gateway uses it
through core/serial_decoder.py to decode them. The format is specified in
docs/serial_format.md; the constants below are the ones it names.

A frame on the wire is::

    COBS( 0x00 || payload || crc16_be(0x00 || payload) ) || 0x00

* ``payload`` is a msgpack reading map (docs/serial_format.md), 1..1024 bytes.
* The leading 0x00 of the frame content is a marker: COBS turns it into a
  first wire byte of 0x01, which no text line starts with, so
  newline-delimited JSON can share the port.
* The CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, not reflected, no
  final xor; check value 0x29B1 for ``b"123456789"``), big-endian.
* COBS (Cheshire and Baker, 1999) removes every 0x00 from the content, so
  0x00 delimits frames and a receiver that joins mid-stream resynchronises at
  the next 0x00.

Public functions (firmware API): :func:`crc16`, :func:`cobs_encode`,
:func:`cobs_decode`, :func:`encode_frame`.
"""

try:  # the MicroPython const() shim: a no-op on CPython
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - CPython

    def const(value):  # type: ignore[no-untyped-def]
        return value


__all__ = [
    "DELIMITER",
    "MARKER",
    "MAX_PAYLOAD",
    "MAX_ENCODED",
    "crc16",
    "cobs_encode",
    "cobs_decode",
    "encode_frame",
]

DELIMITER = const(0x00)  # ends every frame on the wire
MARKER = const(0x00)  # first byte of the frame content; 0x01 on the wire after COBS
MAX_PAYLOAD = const(1024)  # largest msgpack payload a frame may carry
# Content = marker + payload + 2 CRC bytes; COBS adds one byte per 254 and one in front.
MAX_ENCODED = const(1 + 1024 + 2 + (1 + 1024 + 2) // 254 + 1)

_POLY = const(0x1021)


def _make_table():
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ _POLY) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        table.append(crc)
    return tuple(table)


_TABLE = None
try:
    from binascii import crc_hqx as _crc_hqx  # CPython: the same CRC, in C
except ImportError:  # MicroPython
    _crc_hqx = None


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE of ``data``.

    Args:
        data: bytes-like.
        crc: a running CRC to continue from; 0xFFFF (the initial value) to start.

    Returns:
        The CRC as an int in 0..0xFFFF.
    """
    if _crc_hqx is not None:
        return _crc_hqx(data, crc)
    global _TABLE
    if _TABLE is None:  # built on first use: 256 small ints, about 1 KiB on MicroPython
        _TABLE = _make_table()
    table = _TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def cobs_encode(data):
    """COBS-encode ``data``: the result holds no 0x00 byte and is at most len/254 + 1 longer.

    Follows the reference encoder: a run of 254 non-zero bytes at the very end
    gets no extra code byte.
    """
    out = bytearray()
    parts = bytes(data).split(b"\x00")
    last = len(parts) - 1
    for index, part in enumerate(parts):
        start = 0
        size = len(part)
        while size - start >= 254:
            out.append(0xFF)
            out.extend(part[start : start + 254])
            start += 254
        if start < size or index < last or size == 0:
            out.append(size - start + 1)
            out.extend(part[start:])
    return bytes(out)


def cobs_decode(data):
    """Decode COBS bytes (without the 0x00 delimiter).

    Raises:
        ValueError: ``data`` holds a 0x00 or a code byte that runs past the end.
    """
    out = bytearray()
    index = 0
    size = len(data)
    while index < size:
        code = data[index]
        if code == 0:
            raise ValueError("COBS data holds a zero byte at " + str(index))
        end = index + code
        if end > size:
            raise ValueError("COBS code at " + str(index) + " runs past the end")
        block = data[index + 1 : end]
        if 0 in block:
            raise ValueError("COBS data holds a zero byte in the block at " + str(index))
        out.extend(block)
        index = end
        if code != 0xFF and index < size:
            out.append(0)
    return bytes(out)


def encode_frame(payload):
    """One frame, ready to write to the UART, delimiter included.

    Raises:
        ValueError: ``payload`` is empty or longer than :data:`MAX_PAYLOAD`.
    """
    size = len(payload)
    if size == 0 or size > MAX_PAYLOAD:
        raise ValueError("frame payload must be 1.." + str(MAX_PAYLOAD) + " bytes, got " + str(size))
    content = bytearray(1 + size + 2)
    content[0] = MARKER
    content[1 : 1 + size] = payload
    crc = crc16(memoryview(content)[: 1 + size])
    content[1 + size] = crc >> 8
    content[2 + size] = crc & 0xFF
    return cobs_encode(content) + b"\x00"
