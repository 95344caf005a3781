"""The firmware package: version, exports, examples and example configs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.firmware.conftest import cases_fixture
from tests.firmware.harness import FIRMWARE_DIR, SHIMS_DIR, Cases
from tests.fixtures.micropython import MicroPython
from tidegate.firmware_cmd import load_config

cases = cases_fixture("package_cases")
REPO = FIRMWARE_DIR.parent


def test_manifest_version_is_the_package_version() -> None:
    manifest = (FIRMWARE_DIR / "manifest.py").read_text()
    init = (FIRMWARE_DIR / "tidegate_node" / "__init__.py").read_text()

    version = re.search(r'version="([^"]+)"', manifest)
    assert version is not None
    assert f'__version__ = "{version.group(1)}"' in init


@pytest.mark.micropython
def test_every_exported_name_exists(cases: Cases) -> None:
    for name, count, missing in cases.check("case_exports"):
        assert count > 0 and missing == [], name


@pytest.mark.micropython
def test_submodules_load_on_first_use(cases: Cases) -> None:
    before, name, after, version = cases.check("case_lazy_submodules")

    assert (name, after) == ("tidegate_node.ring", True)
    assert version == "0.1.0"


@pytest.mark.parametrize("name", ["config.example.json", "config.battery-uart.example.json"])
def test_example_configs_are_valid(name: str) -> None:
    data = load_config(FIRMWARE_DIR / name)

    assert data["device"]


def _cpython(script: Path, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(FIRMWARE_DIR), str(SHIMS_DIR)])}
    done = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout


@pytest.mark.micropython
def test_example_encode_prints_the_same_on_both_vms(micropython: MicroPython, device_root: Path,
                                                     tmp_path: Path) -> None:
    script = FIRMWARE_DIR / "example_encode.py"

    on_micropython = micropython.check(script.read_text(), paths=[(device_root, "/")])

    assert on_micropython == _cpython(script, tmp_path)
    assert on_micropython.splitlines()[1].split()[-1] == (
        "012185a164a26e31a16207a17301a27570cd05dca676616c75657381a174cb4035800101010103176700")


SETUP_SITE = """\
import json
from fakesite import Site
site = Site()
site.sht31.time = None  # the example sleeps in real time, which the fake clock does not see
with open("config.json", "w") as f:
    json.dump({"device": "n1", "transport": "uart", "sensors": [
        {"type": "bme280"}, {"type": "sht31", "prefix": "sht_"}, {"type": "dht22", "prefix": "dht_"},
        {"type": "battery"}, {"type": "bme280", "name": "second", "address": 119, "prefix": "b2_"}]}, f)
"""


@pytest.mark.micropython
def test_example_read_sensors_reports_values_and_errors(micropython: MicroPython, device_root: Path,
                                                        tmp_path: Path) -> None:
    script = FIRMWARE_DIR / "example_read_sensors.py"
    (tmp_path / "run.py").write_text(SETUP_SITE + script.read_text())

    on_micropython = micropython.check(SETUP_SITE + script.read_text(), paths=[(device_root, "/")])

    lines = on_micropython.splitlines()
    # Same output, but for the exception's repr (MicroPython writes OSError(19,)).
    assert lines[:5] == _cpython(tmp_path / "run.py", tmp_path).splitlines()[:5]
    assert lines[0] == "i2c 0 answers at ['0x44', '0x76']"
    assert lines[1].startswith("bme280 [('temp_c', 25.08), ('pressure_hpa', 1006.53)")
    assert lines[3] == "dht22 [('temp_c', 21.5), ('rh_pct', 45.5)]"
    assert lines[4] == "battery [('battery_v', 4.1)]"
    assert lines[5].startswith("second error: i2c BME280 at 0x77: OSError(19")


def test_example_configs_parse_as_json() -> None:
    for path in FIRMWARE_DIR.glob("config*.json"):
        json.loads(path.read_text())
