"""The MicroPython fixture runs code on a real MicroPython VM.

The umsgpack tests show the pattern firmware tests follow: run the shared code
on MicroPython and compare the bytes it produces with golden bytes from the
same code on CPython.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import umsgpack

from tests.fixtures.micropython import UMSGPACK_COMPAT, MicroPython, umsgpack_dir

pytestmark = pytest.mark.micropython

# One value of each kind a reading carries, in a fixed key order.  The floats
# have exact float64 encodings that differ from float32, so a wrong precision
# would show in the bytes.
READING = {
    "dev": "pump-7",
    "seq": 40_001,
    "ts_ms": 1_767_225_600_123,
    "offset": -300,
    "temp_c": 21.5,
    "ratio": 0.1,
    "ok": True,
    "alarm": False,
    "raw": b"\x00\x01\xfe\xff",
    "note": "h\u00e9llo",
}


def _umsgpack_files() -> dict[str, str]:
    return {"umsgpack_compat.py": UMSGPACK_COMPAT}


def test_runs_on_micropython_not_cpython(micropython: MicroPython) -> None:
    out = micropython.check("import sys\nprint(sys.implementation.name)\n")

    assert out == "micropython\n"


def test_modules_firmware_relies_on_are_available(micropython: MicroPython) -> None:
    out = micropython.check(
        "import binascii, gc, struct, time\n"
        "from micropython import const\n"
        "N = const(3)\n"
        "print(N, hex(binascii.crc32(b'123456789')), struct.pack('>Hd', 1, 0.5).hex())\n"
        "print(time.ticks_diff(time.ticks_add(time.ticks_ms(), 5), time.ticks_ms()) >= 4)\n"
        "print(gc.mem_free() > 0)\n"
    )

    assert out.splitlines() == ["3 0xcbf43926 00013fe0000000000000", "True", "True"]


def test_exception_gives_non_zero_status_and_traceback(micropython: MicroPython) -> None:
    result = micropython.run("def decode():\n    raise ValueError('bad frame')\n\nprint('before')\ndecode()\n")

    assert result.returncode == 1
    assert result.stdout == "before\n"
    assert "Traceback (most recent call last):" in result.stderr
    assert 'File "<snippet>", line 2, in decode' in result.stderr
    assert result.stderr.endswith("ValueError: bad frame\n")


def test_check_raises_with_the_traceback(micropython: MicroPython) -> None:
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        micropython.check("1 // 0\n")


def test_sys_exit_status_is_the_return_code(micropython: MicroPython) -> None:
    assert micropython.run("import sys\nsys.exit(3)\n").returncode == 3
    assert micropython.run("raise SystemExit\n").returncode == 0


def test_files_passed_in_are_importable(micropython: MicroPython) -> None:
    out = micropython.check(
        "import helper\nfrom pkg import codec\nprint(helper.double(21), codec.NAME, open('blob.bin', 'rb').read())\n",
        files={
            "helper.py": "def double(x):\n    return 2 * x\n",
            "/lib/pkg/codec.py": "NAME = 'cobs'\n",
            "blob.bin": b"\x00\xff",
        },
    )

    assert out == "42 cobs b'\\x00\\xff'\n"


def test_host_directories_are_importable_as_packages(micropython: MicroPython, tmp_path: Path) -> None:
    package = tmp_path / "firmware"
    (package / "sensors").mkdir(parents=True)
    (package / "sensors" / "bme280.py").write_text("ADDRESS = 0x76\n")
    flat = tmp_path / "device_root"
    flat.mkdir()
    (flat / "boot_config.py").write_text("NODE = 'n1'\n")

    out = micropython.check(
        "import firmware.sensors.bme280 as bme\nimport boot_config\nprint(hex(bme.ADDRESS), boot_config.NODE)\n",
        paths=[package, (flat, "/lib")],
    )

    assert out == "0x76 n1\n"


def test_each_run_gets_a_fresh_vm(micropython: MicroPython) -> None:
    micropython.check("import sys\nsys.modules['leaked'] = 1\n")

    assert micropython.check("import sys\nprint('leaked' in sys.modules)\n") == "False\n"


def test_umsgpack_round_trips_a_dict_on_micropython(micropython: MicroPython) -> None:
    out = micropython.check(
        "import umsgpack_compat\nimport umsgpack\n"
        f"value = {READING!r}\n"
        "back = umsgpack.unpackb(umsgpack.packb(value))\n"
        "assert back == value, back\n"
        "print(sorted((k, type(v).__name__) for k, v in back.items()))\n",
        files=_umsgpack_files(),
        paths=[umsgpack_dir()],
    )

    assert out == f"{sorted((k, type(v).__name__) for k, v in READING.items())}\n"


def test_umsgpack_bytes_match_cpython_golden_bytes(micropython: MicroPython) -> None:
    golden = umsgpack.packb(READING)

    # MicroPython's plain dict iterates in hash order, so an OrderedDict built
    # in CPython's insertion order is what makes the map bytes comparable.
    out = micropython.check(
        "import umsgpack_compat\nimport umsgpack\nfrom collections import OrderedDict\n"
        f"value = OrderedDict({list(READING.items())!r})\n"
        "print(umsgpack.packb(value).hex())\n"
        f"decoded = umsgpack.unpackb(bytes.fromhex({golden.hex()!r}))\n"
        "assert decoded == dict(value), decoded\n",
        files=_umsgpack_files(),
        paths=[umsgpack_dir()],
    )

    assert bytes.fromhex(out.strip()) == golden
    assert umsgpack.unpackb(golden, use_ordered_dict=True) == collections.OrderedDict(READING)

