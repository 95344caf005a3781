"""An in-memory file system for the log's tests, with a crash model and fault injection.

Crash model (after SQLite's crash tests and the ALICE study of file systems):

* File data written since the file's last fsync may, at a crash, be lost,
  kept, torn at any byte, or torn and followed by garbage or zeros.
* Directory changes (create, rename, unlink, mkdir, rmdir) are durable only
  after an fsync of that directory; at a crash each directory keeps a random
  prefix of its changes since its last fsync (changes within one directory
  reach the disk in order, as with a journaling file system).
* A process crash (``kill -9``) loses nothing: use :meth:`MemFS.reopen_view`,
  i.e. just open a new log on the same MemFS.

Faults: ``fail(op, nth, errno)`` makes the nth call of an operation raise
OSError (``torn=True``: a write first writes a prefix of its bytes);
``capacity`` makes writes past it write what fits, then raise ENOSPC.
:class:`FaultInjection` holds that plan; ``tests/unit/log/realfs.py`` puts the
same plan in front of the real ``OsFileSystem``.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned failure: the errno to raise and, for a write, whether a prefix gets written first."""

    code: int
    torn: bool = False

    def kept(self, data: bytes) -> bytes:
        """The bytes a failing write still writes: half of them when torn, else none."""
        return bytes(data[: len(data) // 2]) if self.torn else b""

    def error(self, op: str, n: int) -> OSError:
        return OSError(self.code, f"injected {errno.errorcode.get(self.code, self.code)} on {op} #{n}")


class FaultInjection:
    """Counts calls per operation and fails the planned ones.

    Operation names: ``open``, ``write``, ``sync`` (a file's fsync, by handle
    or by path), ``sync_dir``, ``mkdir``, ``rmdir``, ``rename``, ``unlink``,
    ``truncate``, ``read``.
    """

    def __init__(self) -> None:
        self._faults: dict[str, list[tuple[int, Fault]]] = {}
        self.calls: dict[str, int] = {}

    def fail(self, op: str, nth: int = 1, code: int = errno.EIO, *, torn: bool = False) -> None:
        """Make the ``nth`` next call of ``op`` raise OSError(code); ``torn``: a write keeps a prefix."""
        done = self.calls.get(op, 0)
        self._faults.setdefault(op, []).append((done + nth, Fault(code, torn)))

    def clear_faults(self) -> None:
        self._faults.clear()

    def _due(self, op: str) -> Fault | None:
        """Count a call of ``op``; return the fault planned for it, if any."""
        n = self.calls[op] = self.calls.get(op, 0) + 1
        for at, fault in self._faults.get(op, []):
            if at == n:
                return fault
        return None

    def _fault(self, op: str) -> None:
        fault = self._due(op)
        if fault is not None:
            raise fault.error(op, self.calls[op])


class CrashNow(BaseException):
    """Raised by a MemFS at its ``crash_at`` operation: the power goes off here.

    A BaseException, so that the code under test cannot take it for an OSError.
    """


class Inode:
    __slots__ = ("data", "durable")

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.durable = bytes(data)


class Dir:
    __slots__ = ("entries", "durable", "ops")

    def __init__(self) -> None:
        self.entries: dict[str, Inode | Dir] = {}
        self.durable: dict[str, Inode | Dir] = {}
        self.ops: list[tuple] = []

    def apply(self, op: tuple) -> None:
        _apply(self.entries, op)


def _apply(entries: dict, op: tuple) -> None:
    kind = op[0]
    if kind == "set":
        entries[op[1]] = op[2]
    elif kind == "del":
        entries.pop(op[1], None)
    elif kind == "mv":
        if op[1] in entries:
            entries[op[2]] = entries.pop(op[1])


class _Handle:
    def __init__(self, fs: MemFS, inode: Inode, path: str) -> None:
        self._fs = fs
        self._inode = inode
        self._path = path
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ValueError("write to a closed file")
        fs = self._fs
        fault = fs._due("write")
        if fault is not None:
            kept = fault.kept(data)
            self._inode.data += kept
            fs.bytes_written += len(kept)
            raise fault.error("write", fs.calls["write"])
        if fs.capacity is not None and fs.used() + len(data) > fs.capacity:
            room = max(0, fs.capacity - fs.used())
            self._inode.data += data[:room]
            fs.bytes_written += room
            raise OSError(errno.ENOSPC, "No space left on device (memfs)", self._path)
        self._inode.data += data
        fs.bytes_written += len(data)

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        if self.closed:
            raise ValueError("sync of a closed file")
        self._fs._fault("sync")
        self._inode.durable = bytes(self._inode.data)
        self._fs.syncs += 1

    def close(self) -> None:
        self.closed = True


class MemFS(FaultInjection):
    """Implements core.log.FileSystem in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Dir()
        self.capacity: int | None = None
        self.crash_at: int | None = None  # raise CrashNow at this mutating operation (1-based)
        self.mutations = 0
        self.bytes_written = 0
        self.syncs = 0

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> MemFS:
        """A file system holding exactly ``files`` (path -> bytes), all durable."""
        fs = cls()
        for path, data in sorted(files.items()):
            parts = path.split("/")
            d = fs.root
            for part in parts[:-1]:
                child = d.entries.get(part)
                if child is None:
                    child = d.entries[part] = Dir()
                    d.durable[part] = child
                d = child  # type: ignore[assignment]
            d.entries[parts[-1]] = d.durable[parts[-1]] = Inode(data)
        return fs

    # --- faults -------------------------------------------------------------------
    def _due(self, op: str) -> Fault | None:
        if op != "read":
            self.mutations += 1
            if self.crash_at is not None and self.mutations >= self.crash_at:
                raise CrashNow(f"crash at {op} (operation {self.mutations})")
        return super()._due(op)

    def used(self, block: int = 1) -> int:
        """Bytes held by files; with ``block``, each file rounded up to whole blocks, as a disk allocates them."""
        total = 0
        seen: set[int] = set()

        def walk(d: Dir) -> None:
            nonlocal total
            for child in d.entries.values():
                if isinstance(child, Dir):
                    walk(child)
                elif id(child) not in seen:
                    seen.add(id(child))
                    total += -(-len(child.data) // block) * block

        walk(self.root)
        return total

    # --- paths --------------------------------------------------------------------
    def _dir(self, path: str) -> Dir:
        d = self.root
        if path == "":
            return d
        for part in path.split("/"):
            child = d.entries.get(part)
            if not isinstance(child, Dir):
                raise FileNotFoundError(errno.ENOENT, "no such directory", path)
            d = child
        return d

    def _split(self, path: str) -> tuple[Dir, str]:
        parent, _, name = path.rpartition("/")
        return self._dir(parent), name

    def _inode(self, path: str) -> Inode:
        d, name = self._split(path)
        node = d.entries.get(name)
        if not isinstance(node, Inode):
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        return node

    def _change(self, d: Dir, op: tuple) -> None:
        d.apply(op)
        d.ops.append(op)

    # --- FileSystem -----------------------------------------------------------------
    def open_append(self, path: str) -> _Handle:
        self._fault("open")
        d, name = self._split(path)
        node = d.entries.get(name)
        if node is None:
            node = Inode()
            self._change(d, ("set", name, node))
        if not isinstance(node, Inode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        return _Handle(self, node, path)

    def read(self, path: str, position: int, size: int) -> bytes:
        self._fault("read")
        return bytes(self._inode(path).data[position:position + size])

    def size(self, path: str) -> int:
        return len(self._inode(path).data)

    def exists(self, path: str) -> bool:
        if path == "":
            return True
        try:
            d, name = self._split(path)
        except FileNotFoundError:
            return False
        return name in d.entries

    def listdir(self, path: str) -> list[str]:
        return sorted(self._dir(path).entries)

    def mkdir(self, path: str) -> None:
        self._fault("mkdir")
        d, name = self._split(path)
        if name not in d.entries:
            self._change(d, ("set", name, Dir()))

    def rmdir(self, path: str) -> None:
        self._fault("rmdir")
        d, name = self._split(path)
        node = d.entries.get(name)
        if not isinstance(node, Dir):
            raise FileNotFoundError(errno.ENOENT, "no such directory", path)
        if node.entries:
            raise OSError(errno.ENOTEMPTY, "directory not empty", path)
        self._change(d, ("del", name))

    def rename(self, source: str, target: str) -> None:
        self._fault("rename")
        d, name = self._split(source)
        d2, name2 = self._split(target)
        if d is not d2:
            raise OSError(errno.EXDEV, "memfs renames within one directory only")
        if name not in d.entries:
            raise FileNotFoundError(errno.ENOENT, "no such file", source)
        self._change(d, ("mv", name, name2))

    def unlink(self, path: str) -> None:
        self._fault("unlink")
        d, name = self._split(path)
        if not isinstance(d.entries.get(name), Inode):
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        self._change(d, ("del", name))

    def truncate(self, path: str, size: int) -> None:
        self._fault("truncate")
        del self._inode(path).data[size:]

    def sync_file(self, path: str) -> None:
        self._fault("sync")
        inode = self._inode(path)
        inode.durable = bytes(inode.data)
        self.syncs += 1

    def sync_dir(self, path: str) -> None:
        self._fault("sync_dir")
        d = self._dir(path)
        d.durable = dict(d.entries)
        d.ops = []
        self.syncs += 1

    # --- crashes --------------------------------------------------------------------
    def crash(self, rng: random.Random, modes: tuple[str, ...] = ("lose", "keep", "torn", "garbage", "zeros")) -> MemFS:
        """Return the file system as a power cut at this moment could leave it."""
        new = MemFS()
        inodes: dict[int, Inode] = {}

        def file_after(inode: Inode) -> Inode:
            if id(inode) not in inodes:
                inodes[id(inode)] = Inode(_crashed(inode, rng, modes))
            return inodes[id(inode)]

        def dir_after(d: Dir) -> Dir:
            entries = dict(d.durable)
            for op in d.ops[: rng.randint(0, len(d.ops))]:
                _apply(entries, op)
            out = Dir()
            for name, child in entries.items():
                out.entries[name] = dir_after(child) if isinstance(child, Dir) else file_after(child)
            out.durable = dict(out.entries)
            return out

        new.root = dir_after(self.root)
        return new

    def snapshot(self) -> dict[str, bytes]:
        """Every file's current bytes by path (for assertions)."""
        out: dict[str, bytes] = {}

        def walk(d: Dir, prefix: str) -> None:
            for name, child in d.entries.items():
                path = f"{prefix}{name}"
                if isinstance(child, Dir):
                    walk(child, path + "/")
                else:
                    out[path] = bytes(child.data)

        walk(self.root, "")
        return out

    def files(self, suffix: str = "") -> list[str]:
        return sorted(p for p in self.snapshot() if p.endswith(suffix))


def _crashed(inode: Inode, rng: random.Random, modes: tuple[str, ...]) -> bytes:
    current, durable = bytes(inode.data), inode.durable
    if current == durable:
        return current
    common = len(durable) if current.startswith(durable) else 0
    limit = min(len(current), len(durable))
    while common < limit and current[common] == durable[common]:
        common += 1
    mode = rng.choice(modes)
    if mode == "lose":
        return durable
    if mode == "keep":
        return current
    torn = current[: common + rng.randint(0, len(current) - common)]
    if mode == "torn":
        return torn
    if mode == "garbage":
        return torn + rng.randbytes(rng.randint(1, 64))
    return torn + bytes(rng.randint(1, 4096))
