"""Import u-msgpack-python on MicroPython: ``from tidegate_node._umsgpack import umsgpack``.

Why this exists: the unmodified u-msgpack-python 2.8.0 (the ``umsgpack.py``
that the design card names, copied to the board's /lib by
``tidegate firmware deploy``) needs three names at import time that
MicroPython does not have:

* ``collections.abc.Hashable``: only used by the unpacker in
  ``isinstance(key, Hashable)`` before a dict insert, whose TypeError
  umsgpack already reports as UnhashableKeyException; ``object`` stands in.
* ``sys.float_info.mant_dig``: picks float64 or float32 packing. We give it
  the precision the port really has: 53 on the WebAssembly and unix ports,
  24 on the ESP32 and RP2040 builds, whose ``float`` is single precision (a
  float64 on the wire would only carry float32 noise in 4 more bytes).
* ``datetime``: umsgpack builds a UTC epoch at import time for its
  Timestamp extension. ESP32 and Pico W firmware ship without ``datetime``;
  the firmware never packs datetimes, so a stub with the two names used at
  import time is enough. Where ``datetime`` exists it is used.

How: while umsgpack's module body runs, ``sys.modules`` maps ``sys`` to a
proxy that adds ``float_info`` and ``collections.abc`` (and, if needed,
``datetime``) to stand-ins; both are restored afterwards, also on error.
umsgpack keeps the proxy as its module-level ``sys``, which forwards every
other attribute to the real module.

On CPython this module is a plain ``import umsgpack``.
"""

import sys

__all__ = ["umsgpack", "load"]


class _FloatInfo:
    def __init__(self, mant_dig):
        self.mant_dig = mant_dig


class _SysProxy:
    def __init__(self, real, mant_dig):
        self._real = real
        self.float_info = _FloatInfo(mant_dig)

    def __getattr__(self, name):
        return getattr(self._real, name)


class _Abc:
    Hashable = object


class _TimezoneStub:
    utc = None


class _DatetimeClassStub:
    def __init__(self, *args, **kwargs):
        pass


class _DatetimeStub:
    timezone = _TimezoneStub
    datetime = _DatetimeClassStub


def load(have_datetime=None):
    """Import umsgpack with the stand-ins it needs, and return the module.

    Args:
        have_datetime: whether to use the port's ``datetime``; None (the
            default) tries to import it. False forces the stub (for tests).
    """
    if "umsgpack" in sys.modules:
        return sys.modules["umsgpack"]
    if sys.implementation.name != "micropython":
        import umsgpack as module

        return module
    from tidegate_node._compat import float_mant_dig

    if have_datetime is None:
        try:
            import datetime  # noqa: F401

            have_datetime = True
        except ImportError:
            have_datetime = False
    real_sys = sys
    modules = real_sys.modules
    added = ["collections.abc"]
    modules["collections.abc"] = _Abc
    if not have_datetime:
        modules["datetime"] = _DatetimeStub
        added.append("datetime")
    modules["sys"] = _SysProxy(real_sys, float_mant_dig())
    try:
        import umsgpack as module
    finally:
        modules["sys"] = real_sys
        for name in added:
            del modules[name]
    return module


umsgpack = load()
