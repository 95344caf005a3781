"""``tidegate`` with its log over a file layer that fails once, on purpose: for tests/faults only.

A real disk cannot produce a torn write or an EIO on demand, so this wraps
the real OS adapter (``edge.logstore.OsFileSystem``) in one that does, and
runs the ordinary ``tidegate`` command line on top of it, as a process of its
own that the fault tests can kill and restart like ``tidegate run``::

    TIDEGATE_TEST_FAULT=torn-crash:12:7 TIDEGATE_TEST_FAULT_LOG=faults.log \\
        python -m tests.faults.faulty_gateway run --data-dir ... (the flags of tidegate run)

``TIDEGATE_TEST_FAULT`` is ``KIND:N:SEED``: the fault strikes at the Nth
operation of its kind (1-based, counted in this process), and SEED picks the
torn length. Without the variable nothing is changed. When the fault strikes,
one line (``KIND N PATH DETAIL``) is appended to ``TIDEGATE_TEST_FAULT_LOG``
before anything else happens, so the test knows it fired even if the process
killed itself. Kinds, on the log's segment files (``*.log``) unless said:

- ``eio-write`` / ``enospc-write``: the Nth write fails with EIO / ENOSPC, nothing written;
- ``torn-write``: the Nth write puts a prefix of its bytes in the file, then fails with EIO;
- ``torn-crash``: the Nth write puts a prefix in the file, then the process SIGKILLs itself
  (a crash in the middle of a write: a torn tail);
- ``garbage-crash``: the Nth write puts its bytes in the file with the second half
  turned to random bytes, then SIGKILL (garbage after the last good record);
- ``eio-fsync``: the Nth fsync fails with EIO; what was written stays in the file, as
  in the page cache of a kernel that keeps it (found at the next start, never acknowledged);
- ``eio-fsync-lost``: the Nth fsync fails with EIO and the file is cut back to its size
  at its last good fsync, as when the kernel has dropped the dirty pages;
- ``eio-dirsync``: the Nth fsync of a directory of segments (after creating or removing
  a file in it) fails with EIO;
- ``eio-cursor``: the Nth write of a cursor file (``cursors/*/*.tmp``) fails with EIO.

The core of the log and the gateway run unchanged; only the calls that reach
the operating system are wrapped, in this process only.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import sys
from dataclasses import dataclass, field

import edge.logstore as logstore

__all__ = ["FAULT_KINDS", "FaultPlan", "FaultyOsFileSystem", "main"]

FAULT_KINDS = ("eio-write", "enospc-write", "torn-write", "torn-crash", "garbage-crash", "eio-fsync",
               "eio-fsync-lost", "eio-dirsync", "eio-cursor")
_WRITES = {"eio-write", "enospc-write", "torn-write", "torn-crash", "garbage-crash"}
_FSYNCS = {"eio-fsync", "eio-fsync-lost"}


@dataclass
class FaultPlan:
    """One fault: which operation, the how-manieth, and where to say that it struck."""

    kind: str
    nth: int
    seed: int = 0
    report_to: str | None = None
    count: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS or self.nth < 1:
            raise ValueError(f"bad fault {self.kind}:{self.nth}; kinds are {', '.join(FAULT_KINDS)}")
        self.rng = random.Random(self.seed)

    @classmethod
    def from_env(cls) -> FaultPlan | None:
        spec = os.environ.get("TIDEGATE_TEST_FAULT")
        if not spec:
            return None
        kind, nth, seed = (spec.split(":") + ["0"])[:3]
        return cls(kind, int(nth), int(seed), os.environ.get("TIDEGATE_TEST_FAULT_LOG"))

    def strikes(self, kinds: set[str] | str) -> bool:
        """Count one operation of ``kinds``; True if this is the one to fail."""
        if self.kind not in kinds:
            return False
        self.count += 1
        return self.count == self.nth

    def report(self, path: str, detail: str = "") -> None:
        if self.report_to is not None:
            fd = os.open(self.report_to, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{self.kind} {self.nth} {path} {detail}\n".encode())
            finally:
                os.close(fd)


def _error(code: int, path: str) -> OSError:
    return OSError(code, f"{os.strerror(code)} (injected by tests/faults/faulty_gateway.py)", path)


def _crash() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _FaultyAppendFile:
    """Wraps the adapter's append file; knows its size and its size at the last good fsync."""

    def __init__(self, inner: logstore._OsAppendFile, path: str, plan: FaultPlan, kinds: set[str]) -> None:
        self._inner = inner
        self._path = path
        self._plan = plan
        self._kinds = kinds
        self._size = self._synced = os.path.getsize(path)

    def write(self, data: bytes) -> None:
        plan = self._plan
        if data and plan.strikes(self._kinds - _FSYNCS):
            kind = plan.kind
            cut = plan.rng.randrange(1, len(data)) if len(data) > 1 else 0
            plan.report(self._path, f"{len(data)} bytes, {cut} kept" if kind in ("torn-write", "torn-crash") else
                        f"{len(data)} bytes")
            if kind == "eio-write" or kind == "eio-cursor":
                raise _error(errno.EIO, self._path)
            if kind == "enospc-write":
                raise _error(errno.ENOSPC, self._path)
            if kind == "garbage-crash":
                half = len(data) // 2
                self._inner.write(bytes(data[:half]) + plan.rng.randbytes(len(data) - half))
                _crash()
            self._inner.write(bytes(data[:cut]))
            if kind == "torn-crash":
                _crash()
            raise _error(errno.EIO, self._path)
        self._inner.write(data)
        self._size += len(data)

    def flush(self) -> None:
        self._inner.flush()

    def sync(self) -> None:
        plan = self._plan
        if plan.strikes(self._kinds & _FSYNCS):
            plan.report(self._path, f"{self._size - self._synced} unsynced bytes")
            if plan.kind == "eio-fsync-lost":
                os.truncate(self._path, self._synced)
                self._size = self._synced
            raise _error(errno.EIO, self._path)
        self._inner.sync()
        self._synced = self._size

    def close(self) -> None:
        self._inner.close()


class FaultyOsFileSystem(logstore.OsFileSystem):
    """The real adapter with one fault from :attr:`plan` (set before the log opens)."""

    plan: FaultPlan | None = None

    def open_append(self, path: str) -> logstore._OsAppendFile:
        handle = super().open_append(path)
        plan = self.plan
        if plan is None:
            return handle
        if path.endswith(".log"):
            kinds = _WRITES | _FSYNCS
        elif path.startswith("cursors/") and path.endswith(".tmp"):
            kinds = {"eio-cursor"}
        else:
            return handle
        return _FaultyAppendFile(handle, self._path(path), plan, kinds)  # type: ignore[return-value]

    def sync_dir(self, path: str) -> None:
        plan = self.plan
        if plan is not None and path.startswith("streams") and plan.strikes("eio-dirsync"):
            plan.report(self._path(path))
            raise _error(errno.EIO, self._path(path))
        super().sync_dir(path)


def main() -> int:
    FaultyOsFileSystem.plan = FaultPlan.from_env()
    logstore.OsFileSystem = FaultyOsFileSystem  # type: ignore[misc]  # open_log looks the name up when called
    from tidegate.cli import main as tidegate_main

    return tidegate_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
