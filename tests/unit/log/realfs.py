"""The log's tests on real files: a fault-injecting wrapper around OsFileSystem, and "disks" to parametrize over.

``FaultyFileSystem`` is a fake in front of a real file system: every call goes
through to the real files, except the ones planned with ``fail(op, nth, errno)``
(the plan of :class:`~tests.unit.log.memfs.FaultInjection`, so the same test
can drive MemFS or the real adapter), which raise instead; a torn write writes
a prefix of its bytes to the real file first, as a full disk does, and a
failed fsync of a handle drops what the handle wrote since its last good one.

A *disk* is where a test puts a set of files and opens the log on them:
:class:`MemDisk` on a MemFS, :class:`OsDisk` in a real directory through
``edge.logstore.open_log`` (the lock, the real adapter, ``SharedLog``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from core.log import AppendFile, FileSystem, LogConfig
from edge.logstore import OsFileSystem, SharedLog
from edge.logstore import open_log as open_real_log
from tests.unit.log.conftest import open_log
from tests.unit.log.memfs import FaultInjection, MemFS


class _FaultyFile:
    """An append handle whose failed fsync also loses what was written since the last good one.

    That is the worst a kernel may do after a failed fsync (it can drop the
    dirty pages and mark them clean), so a test sees any record that was
    acknowledged without a good fsync behind it go missing.
    """

    def __init__(self, fs: FaultyFileSystem, path: str, inner: AppendFile, size: int) -> None:
        self._fs = fs
        self._path = path
        self._inner = inner
        self._size = size
        self._synced = size

    def write(self, data: bytes) -> None:
        fault = self._fs._due("write")
        if fault is not None:
            kept = fault.kept(data)
            if kept:
                self._inner.write(kept)
                self._size += len(kept)
            raise fault.error("write", self._fs.calls["write"])
        self._inner.write(data)
        self._size += len(data)

    def flush(self) -> None:
        self._inner.flush()

    def sync(self) -> None:
        fault = self._fs._due("sync")
        if fault is not None:
            self._fs.real.truncate(self._path, self._synced)
            self._size = self._synced
            raise fault.error("sync", self._fs.calls["sync"])
        self._inner.sync()
        self._synced = self._size

    def close(self) -> None:
        self._inner.close()


class FaultyFileSystem(FaultInjection):
    """core.log.FileSystem over ``real``, failing the planned calls (names as in FaultInjection)."""

    def __init__(self, real: FileSystem) -> None:
        super().__init__()
        self.real = real

    def open_append(self, path: str) -> AppendFile:
        self._fault("open")
        size = self.real.size(path) if self.real.exists(path) else 0
        return _FaultyFile(self, path, self.real.open_append(path), size)

    def read(self, path: str, position: int, size: int) -> bytes:
        self._fault("read")
        return self.real.read(path, position, size)

    def size(self, path: str) -> int:
        return self.real.size(path)

    def exists(self, path: str) -> bool:
        return self.real.exists(path)

    def listdir(self, path: str) -> list[str]:
        return self.real.listdir(path)

    def mkdir(self, path: str) -> None:
        self._fault("mkdir")
        self.real.mkdir(path)

    def rmdir(self, path: str) -> None:
        self._fault("rmdir")
        self.real.rmdir(path)

    def rename(self, source: str, target: str) -> None:
        self._fault("rename")
        self.real.rename(source, target)

    def unlink(self, path: str) -> None:
        self._fault("unlink")
        self.real.unlink(path)

    def truncate(self, path: str, size: int) -> None:
        self._fault("truncate")
        self.real.truncate(path, size)

    def sync_file(self, path: str) -> None:
        self._fault("sync")
        self.real.sync_file(path)

    def sync_dir(self, path: str) -> None:
        self._fault("sync_dir")
        self.real.sync_dir(path)


class MemDisk:
    """Files in a MemFS; the log is core.log.Log on it (left open, as a crashed process leaves it)."""

    kind = "memfs"

    def __init__(self) -> None:
        self.fs = MemFS()

    def put(self, files: dict[str, bytes]) -> None:
        """Replace everything with exactly ``files`` (path -> bytes)."""
        self.fs = MemFS.from_files(files)

    def truncate(self, path: str, size: int) -> None:
        del self.fs._inode(path).data[size:]

    def open(self, config: LogConfig | None = None, damage: list | None = None):
        return open_log(self.fs, config, damage)

    def snapshot(self) -> dict[str, bytes]:
        return self.fs.snapshot()

    def size(self, path: str) -> int:
        return self.fs.size(path)

    def close(self) -> None:
        pass


class OsDisk:
    """Files in a real directory; the log is opened with edge.logstore.open_log (no sync thread).

    Only one log is open at a time (the directory's lock): opening again, or
    putting new files, closes the previous one first. Each ``put`` makes a new
    directory under ``base`` (removing the old one costs more than the test).
    """

    kind = "os"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "0"
        self._puts = 0
        self._log: SharedLog | None = None

    def put(self, files: dict[str, bytes]) -> None:
        self.close()
        self._puts += 1
        self.root = self.base / str(self._puts)
        self.root.mkdir(parents=True)
        for name in ("streams", "cursors", "meta"):  # as the log creates them, even when empty
            (self.root / name).mkdir()
        for path, data in files.items():
            target = self.root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def truncate(self, path: str, size: int) -> None:
        os.truncate(self.root / path, size)

    def open(self, config: LogConfig | None = None, damage: list | None = None) -> SharedLog:
        self.close()
        self._log = open_real_log(self.root, config, reporter=damage.append if damage is not None else None,
                                  background=False)
        return self._log

    def snapshot(self) -> dict[str, bytes]:
        out = {}
        for path in sorted(self.root.rglob("*")):
            name = path.relative_to(self.root).as_posix()
            if path.is_file() and name != "LOCK":
                out[name] = path.read_bytes()
        return out

    def size(self, path: str) -> int:
        return (self.root / path).stat().st_size

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class FaultyDisks:
    """Fresh fault-injecting file systems of one kind, for tests that fail the Nth call of something.

    ``memfs``: a MemFS. ``os``: a FaultyFileSystem over OsFileSystem in a new
    directory under ``base``, so the log under test runs on real files.
    """

    def __init__(self, kind: str, base: Path) -> None:
        self.kind = kind
        self.base = base
        self._made: list[OsFileSystem] = []

    def new(self) -> MemFS | FaultyFileSystem:
        if self.kind == "memfs":
            return MemFS()
        root = self.base / f"fs{len(self._made)}"
        root.mkdir(parents=True)
        real = OsFileSystem(root)
        self._made.append(real)
        return FaultyFileSystem(real)

    def after(self, fs: MemFS | FaultyFileSystem, rng: random.Random) -> list[FileSystem]:
        """What a reopen may find: first the files as they are, then (MemFS only) as a power cut leaves them."""
        if isinstance(fs, MemFS):
            return [fs, fs.crash(rng)]
        real = OsFileSystem(fs.real.root)
        self._made.append(real)
        return [real]

    def close(self) -> None:
        for real in self._made:
            real.close()
