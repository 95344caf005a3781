"""Run firmware test cases on CPython (in this process) and on the MicroPython VM.

A *case module* (tests/firmware/cases/*_cases.py) holds functions named
``case_*`` that take no arguments, use only the firmware and the fakes in
tests/firmware/shims, and return plain data. The same module runs:

* on CPython, imported here, where tests also make detailed assertions on
  what each case returns;
* on MicroPython, in one fresh VM per case module, whose results must equal
  the CPython ones after :func:`vmcanon.canon` (floats compared bit for bit).

The VM's file system is laid out exactly as ``tidegate firmware deploy``
lays out a board (tidegate.firmware_cmd.deploy_plan), plus the shims and the
case modules in /lib: a module missing from the deploy plan fails here first.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.fixtures.micropython import MicroPython
from tidegate.firmware_cmd import deploy_plan

HERE = Path(__file__).resolve().parent
FIRMWARE_DIR = HERE.parent.parent / "firmware"
SHIMS_DIR = HERE / "shims"
CASES_DIR = HERE / "cases"

for _path in (str(FIRMWARE_DIR), str(SHIMS_DIR), str(CASES_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import vmcanon  # noqa: E402  (from CASES_DIR)


def stage_device(root: Path) -> Path:
    """Lay out a board's file system under ``root``: the deploy plan, shims and cases in /lib."""
    for item in deploy_plan():
        target = root / item.target.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.source, target)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(SHIMS_DIR, root / "lib", dirs_exist_ok=True, ignore=ignore)
    shutil.copytree(CASES_DIR, root / "lib", dirs_exist_ok=True, ignore=ignore)
    return root


def load_cases(name: str) -> ModuleType:
    """Import a case module on CPython."""
    return importlib.import_module(name)


def case_names(module: ModuleType) -> list[str]:
    return sorted(n for n in dir(module) if n.startswith("case_"))


_RUNNER = """\
import sys, io, json
import vmcanon
import {module} as cases
out = {{}}
for name in {names!r}:
    try:
        out[name] = vmcanon.canon(getattr(cases, name)())
    except Exception as exc:
        buf = io.StringIO()
        sys.print_exception(exc, buf)
        out[name] = {{"raised": buf.getvalue()}}
print("RESULTS " + json.dumps(out))
"""


def run_on_micropython(vm: MicroPython, device_root: Path, module: ModuleType) -> dict[str, Any]:
    """Run every case of ``module`` in one fresh MicroPython VM; name -> canonical result."""
    names = case_names(module)
    result = vm.run(_RUNNER.format(module=module.__name__, names=names), paths=[(device_root, "/")], timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"case runner failed on MicroPython:\n{result.stderr}\n{result.stdout}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


class Cases:
    """One case module, run on both VMs; :meth:`check` returns the CPython result."""

    def __init__(self, module: ModuleType, micropython_results: dict[str, Any]) -> None:
        self.module = module
        self.micropython_results = micropython_results

    def check(self, name: str) -> Any:
        """Run case ``name`` on CPython, and assert MicroPython returned the same."""
        try:
            ours = getattr(self.module, name)()
        except Exception:
            raise AssertionError(f"{name} raised on CPython:\n{traceback.format_exc()}") from None
        theirs = self.micropython_results[name]
        if isinstance(theirs, dict) and "raised" in theirs:
            raise AssertionError(f"{name} raised on MicroPython:\n{theirs['raised']}")
        ours_canon = json.loads(json.dumps(vmcanon.canon(ours)))
        if ours_canon != theirs:
            raise AssertionError(f"{name}: MicroPython and CPython differ\n{_first_difference(ours_canon, theirs)}")
        return ours


def _first_difference(cpython: Any, micropython: Any, path: str = "") -> str:
    if isinstance(cpython, dict) and isinstance(micropython, dict):
        for key in sorted(set(cpython) | set(micropython)):
            if cpython.get(key) != micropython.get(key):
                return _first_difference(cpython.get(key), micropython.get(key), f"{path}[{key!r}]")
    if isinstance(cpython, list) and isinstance(micropython, list) and len(cpython) == len(micropython):
        for i, (a, b) in enumerate(zip(cpython, micropython)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
    return f"at {path or 'the top'}: CPython {cpython!r:.300} != MicroPython {micropython!r:.300}"


_NODE_RUNNER = """\
import json
from fakesite import Site
from tidegate_node import main
site = Site()
if {clock!r} is not None:
    site.time.set_epoch_ms({clock!r})
config = json.loads({config!r})
path = site.config("node.json", **config)
node = main.run(path, site.time, max_cycles={cycles!r})
uart = site.board.uart_out.get(node.config.uart.id if node.config.uart else -1, b"")
print("RESULTS " + json.dumps({{
    "uart": bytes(uart).hex(),
    "messages": [[t, p.hex()] for t, p in site.payloads()],
    "seq": node.seq,
    "boot": node.boot,
}}))
"""


def run_node(vm: MicroPython, device_root: Path, config: dict[str, Any], cycles: int,
             clock_set_at_ms: int | None = None) -> dict[str, Any]:
    """Run the firmware's sample loop on MicroPython against the fake site and return what it sent.

    For tests that feed a node's real output into the gateway (through a pty,
    or through Mosquitto): the node is ``tidegate_node.main.run`` with its
    config given as overrides of ``fakesite.BASE_CONFIG`` (MQTT, one BME280 at
    60 s); the site has a BME280, an SHT31, a DHT22 on GPIO4 and a battery on
    GPIO34. Fake time only moves when the node sleeps, so ``cycles`` cycles
    take no wall time.

    Args:
        vm: the ``micropython`` fixture.
        device_root: the ``device_root`` fixture.
        config: node config keys, e.g. ``{"transport": "uart", "sensors": [...]}``.
        cycles: sample-loop cycles to run (mains power; battery configs deep-sleep after one).
        clock_set_at_ms: Unix ms the node's clock reads at its start (samples then
            carry ``ts``); None leaves it unset (samples carry ``up`` and ``su``).

    Returns:
        ``uart``: the bytes written to the UART (frames, after one 0x00);
        ``messages``: ``(topic, payload)`` of each MQTT publish, in order;
        ``seq``: samples taken; ``boot``: the boot id.
    """
    source = _NODE_RUNNER.format(clock=clock_set_at_ms, config=json.dumps(config), cycles=cycles)
    result = vm.run(source, paths=[(device_root, "/")], timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"node failed on MicroPython:\n{result.stderr}\n{result.stdout}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULTS "))
    out = json.loads(line[len("RESULTS "):])
    out["uart"] = bytes.fromhex(out["uart"])
    out["messages"] = [(topic, bytes.fromhex(payload)) for topic, payload in out["messages"]]
    return out  # type: ignore[no-any-return]
