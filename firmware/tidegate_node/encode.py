"""Samples to msgpack bytes, in the exact shape the gateway decodes.

Theory of operation
-------------------
One *sample* is the values of one node at one time. It is packed as the
msgpack map of docs/serial_format.md ("Payload"), with short keys in this
fixed order::

    {"d": device, "b": boot, "s": seq, "ts" | "up": time_ms, "values": {metric: value, ...}}

* ``ts`` (ms since the Unix epoch) when the node's clock is set, else ``up``
  (ms since boot, never wrapping: see tidegate_node.clock).
* ``values`` keeps the metrics in the order the drivers returned them.

Why a fixed order: MicroPython's ``dict`` iterates in hash order, not
insertion order, so packing a plain dict gives bytes that differ between a
board and CPython. The gateway does not care about key order, but golden
byte vectors (tests/firmware/golden_vectors.json) do, so every map here is an
``OrderedDict`` built from a list of pairs. Same input, same bytes, on
ESP32, Pico W, the test VM and CPython (floats aside: see below).

``su`` (the uptime when the sample is sent) is added at send time, not at
sample time, because a sample may sit in the ring buffer for days. The ring
holds the packed sample, so :func:`with_sent_uptime` appends ``"su": n`` to
the packed map by bumping its fixmap header (0x85 -> 0x86) instead of
unpacking and repacking it: no allocation beyond the result.

Floats: umsgpack packs ``float`` as float64 where the port's float is a
double (test VM, CPython) and as float32 on the ESP32 and RP2040 builds,
whose float is single precision (tidegate_node._umsgpack). The gateway reads
both.
"""

from collections import OrderedDict

from tidegate_node._compat import const
from tidegate_node._umsgpack import umsgpack
from tidegate_node.errors import EncodeError

__all__ = [
    "TIME_EPOCH",
    "TIME_UPTIME",
    "MAX_SAMPLE",
    "EncodeError",
    "encode_sample",
    "with_sent_uptime",
    "encode_pack",
    "pack_header",
]

TIME_EPOCH = "ts"  # device clock, ms since 1970-01-01 UTC
TIME_UPTIME = "up"  # ms since boot, when the clock is not set
# A sample must fit one serial frame (core/serial_frame.MAX_PAYLOAD) with
# room for the "su" key added at send time (3 + 9 bytes).
MAX_SAMPLE = const(1024 - 12)
_SU_KEY = b"\xa2su"


def encode_sample(device, boot, seq, time_key, time_ms, values, float_precision=None):
    """Pack one sample.

    Args:
        device: the device id, 1..255 bytes of UTF-8.
        boot: the boot id (int 0..2**64-1).
        seq: the sample's sequence number within the boot.
        time_key: :data:`TIME_EPOCH` or :data:`TIME_UPTIME`.
        time_ms: the time, in ms, as ``time_key`` says.
        values: a list of ``(metric, value)`` pairs, in the order to pack
            them; values are float, int, bool or str.
        float_precision: ``"single"`` or ``"double"`` to override the
            port's default (see the module docstring).

    Returns:
        The packed map, at most :data:`MAX_SAMPLE` bytes.

    Raises:
        EncodeError: a field is out of range, ``values`` is empty or names a
            metric twice, or the result is too large.
    """
    if time_key != TIME_EPOCH and time_key != TIME_UPTIME:
        raise EncodeError("time_key must be 'ts' or 'up', got " + repr(time_key))
    if not device or len(device.encode()) > 255:
        raise EncodeError("device must be 1..255 bytes")
    for name, number in (("boot", boot), ("seq", seq), ("time_ms", time_ms)):
        if not isinstance(number, int) or isinstance(number, bool) or number < 0 or number >= 1 << 64:
            raise EncodeError(name + " must be an integer in 0..2**64-1, got " + repr(number))
    if not values:
        raise EncodeError("a sample needs at least one value")
    metrics = OrderedDict()
    for metric, value in values:
        if metric in metrics:
            raise EncodeError("metric " + repr(metric) + " appears twice")
        # bool is listed on its own: on MicroPython isinstance(True, int) is False.
        if value is None or not isinstance(value, (float, int, bool, str)):
            raise EncodeError("value of " + repr(metric) + " must be a number, bool or str")
        metrics[metric] = value
    sample = OrderedDict()
    sample["d"] = device
    sample["b"] = boot
    sample["s"] = seq
    sample[time_key] = time_ms
    sample["values"] = metrics
    if float_precision is None:
        packed = umsgpack.packb(sample)
    else:
        packed = umsgpack.packb(sample, force_float_precision=float_precision)
    if len(packed) > MAX_SAMPLE:
        raise EncodeError("sample is " + str(len(packed)) + " bytes, over " + str(MAX_SAMPLE))
    return packed


def with_sent_uptime(packed, sent_up_ms):
    """A packed sample with ``"su": sent_up_ms`` appended, for a sample sent late.

    Args:
        packed: bytes from :func:`encode_sample` (a fixmap of at most 14 keys).
        sent_up_ms: the uptime now, at least the sample's ``up``.

    Raises:
        EncodeError: ``packed`` is not a fixmap with room for one more key.
    """
    head = packed[0]
    if head < 0x80 or head >= 0x8F:
        raise EncodeError("not a packed sample map (first byte " + hex(head) + ")")
    out = bytearray(packed)
    out[0] = head + 1
    out.extend(_SU_KEY)
    out.extend(umsgpack.packb(sent_up_ms))
    return bytes(out)


def pack_header(count):
    """The msgpack array header for ``count`` elements."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return bytes((0xDC, count >> 8, count & 0xFF))
    raise EncodeError("pack of " + str(count) + " samples is too large")


def encode_pack(packed_samples):
    """A msgpack array of already-packed samples (one MQTT message, one replay)."""
    out = bytearray(pack_header(len(packed_samples)))
    for packed in packed_samples:
        out.extend(packed)
    return bytes(out)
