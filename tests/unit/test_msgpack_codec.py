"""The gateway's C msgpack writes and reads exactly what the firmware's umsgpack does."""

from __future__ import annotations

import pytest
import umsgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from core import msgpack_codec

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=300),
    st.binary(max_size=300),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=20) | st.dictionaries(st.text(max_size=10), children, max_size=20),
    max_leaves=60,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_both_libraries_write_the_same_bytes_and_read_each_other(value: object) -> None:
    ours = msgpack_codec.packb(value)
    assert ours == umsgpack.packb(value)
    assert msgpack_codec.unpackb(ours) == umsgpack.unpackb(ours) == value


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\xa3ab", b"\xa2\xff\xfe", b"\x91" * 200_000])
def test_bad_bytes_raise_only_msgpack_error(data: bytes) -> None:
    with pytest.raises(msgpack_codec.MsgpackError):
        msgpack_codec.unpackb(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=100))
def test_garbage_decodes_or_raises_msgpack_error(data: bytes) -> None:
    try:
        msgpack_codec.unpackb(data)
    except msgpack_codec.MsgpackError:
        pass
