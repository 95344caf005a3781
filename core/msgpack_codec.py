"""msgpack on the gateway: the C ``msgpack`` package, byte for byte what ``umsgpack`` writes.

Why two libraries: the firmware and its tests use ``umsgpack`` (pure Python,
runs on MicroPython), but on the gateway it costs most of the CPU of intake
(a profile of msgpack packs: 70 % of the time in umsgpack's unpacker). The C
package writes the same bytes for every value tidegate stores (integers in
their smallest form, floats as float 64, str and bin types), so the golden
vectors of docs/batch_format.md and docs/log_format.md hold for both;
tests/unit/test_msgpack_codec.py checks that they agree.
"""

from __future__ import annotations

import msgpack

__all__ = ["MsgpackError", "packb", "packer", "unpackb"]


class MsgpackError(ValueError):
    """Bytes that are not exactly one msgpack value (trailing bytes included)."""


def packb(value: object) -> bytes:
    """Encode a value (str as msgpack str, bytes as bin, floats as float 64)."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def packer() -> msgpack.Packer:
    """A packer whose ``pack`` writes what :func:`packb` writes, for many values in a row.

    Cheaper than :func:`packb` per value (which makes a packer each call).
    Not thread-safe: one owner, for as long as it packs.
    """
    return msgpack.Packer(use_bin_type=True)


def unpackb(data: bytes) -> object:
    """Decode exactly one msgpack value.

    Raises:
        MsgpackError: the bytes are not one complete msgpack value, or hold
            trailing bytes, invalid UTF-8 in a str, or nesting too deep.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except (msgpack.UnpackException, ValueError, TypeError, RecursionError) as exc:
        raise MsgpackError(str(exc) or type(exc).__name__) from exc
