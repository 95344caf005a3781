"""Turn case results into JSON that is equal on MicroPython and CPython.

Floats become the hex of their float64 bits (the two VMs print floats
differently, but must compute them bit for bit alike), bytes become hex,
tuples become lists. Runs on both VMs.
"""

import struct


def canon(value):
    if isinstance(value, float):
        return {"f64": struct.pack(">d", value).hex()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"hex": bytes(value).hex()}
    if isinstance(value, (list, tuple)):
        return [canon(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canon(v) for k, v in value.items()}
    return value
