"""fsck: check a data directory and say what recovery would do (or do it).

``fsck(fs)`` opens the log over a dry-run wrapper of the file system that lets
reads through and records every change instead of making it, with every
segment read in full (sealed ones too) and its index compared with the
frames. ``fsck(fs, repair=True)`` does the same on the real file system, so it
truncates damaged tails (of sealed segments too), rebuilds stale indexes,
removes ``.tmp`` files and finishes deletions, exactly as an open would.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from core.log._config import LogConfig
from core.log._fs import AppendFile, FileSystem
from core.log._log import Log
from core.log._scan import Damage

__all__ = ["fsck", "FsckReport"]


@dataclass(slots=True)
class FsckReport:
    """What fsck found (``damage``) and did or would do (``actions``)."""

    repair: bool
    damage: list[Damage] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    segments: int = 0
    streams: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # start, end, records

    @property
    def clean(self) -> bool:
        return not self.damage and not self.actions

    def lines(self) -> list[str]:
        """A human-readable report, one finding per line."""
        out = [f"{len(self.streams)} streams, {self.segments} segments"]
        for name, (start, end, records) in sorted(self.streams.items()):
            out.append(f"stream {name}: offsets {start}..{end}, {records} records")
        for d in self.damage:
            where = "tail" if d.tail else "mid-file"
            out.append(f"{d.action}: {d.path} at {d.position}: {d.dropped_bytes} bytes, {d.reason} ({where})")
        verb = "did" if self.repair else "would do"
        out.extend(f"{verb}: {a}" for a in self.actions)
        out.append("clean" if self.clean else ("repaired" if self.repair else "needs repair"))
        return out


class _DryHandle:
    def __init__(self, fs: _DryRunFileSystem, path: str) -> None:
        self._fs = fs
        self._path = path

    def write(self, data: bytes) -> None:
        self._fs.actions.append(f"write {len(data)} bytes to {self._path}")

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class _DryRunFileSystem:
    """Reads go to the real file system; changes are recorded, not made."""

    def __init__(self, real: FileSystem) -> None:
        self._real = real
        self.actions: list[str] = []
        self._gone: set[str] = set()
        self._made: set[str] = set()

    def open_append(self, path: str) -> AppendFile:
        self._gone.discard(path)
        return _DryHandle(self, path)

    def read(self, path: str, position: int, size: int) -> bytes:
        return self._real.read(path, position, size)

    def size(self, path: str) -> int:
        return self._real.size(path)

    def exists(self, path: str) -> bool:
        if path in self._gone:
            return False
        return path in self._made or self._real.exists(path)

    def listdir(self, path: str) -> list[str]:
        if path in self._made and not self._real.exists(path):
            return []
        prefix = f"{path}/" if path else ""
        return [n for n in self._real.listdir(path) if prefix + n not in self._gone]

    def mkdir(self, path: str) -> None:
        if not self._real.exists(path):
            self._made.add(path)
            self.actions.append(f"create directory {path}")

    def rmdir(self, path: str) -> None:
        self._gone.add(path)
        self.actions.append(f"remove empty directory {path}")

    def rename(self, source: str, target: str) -> None:
        self.actions.append(f"rename {source} to {target}")

    def unlink(self, path: str) -> None:
        self._gone.add(path)
        self.actions.append(f"remove {path}")

    def truncate(self, path: str, size: int) -> None:
        self.actions.append(f"truncate {path} to {size} bytes")

    def sync_file(self, path: str) -> None:
        pass

    def sync_dir(self, path: str) -> None:
        pass


class _RecordingFileSystem(_DryRunFileSystem):
    """Like the dry run, but changes are made too."""

    def open_append(self, path: str) -> AppendFile:
        inner = self._real.open_append(path)
        outer = self

        class _Handle:
            def write(self, data: bytes) -> None:
                outer.actions.append(f"write {len(data)} bytes to {path}")
                inner.write(data)

            def flush(self) -> None:
                inner.flush()

            def sync(self) -> None:
                inner.sync()

            def close(self) -> None:
                inner.close()

        return _Handle()

    def exists(self, path: str) -> bool:
        return self._real.exists(path)

    def listdir(self, path: str) -> list[str]:
        return self._real.listdir(path)

    def mkdir(self, path: str) -> None:
        if not self._real.exists(path):
            self.actions.append(f"create directory {path}")
            self._real.mkdir(path)

    def rmdir(self, path: str) -> None:
        self.actions.append(f"remove empty directory {path}")
        self._real.rmdir(path)

    def rename(self, source: str, target: str) -> None:
        self.actions.append(f"rename {source} to {target}")
        self._real.rename(source, target)

    def unlink(self, path: str) -> None:
        self.actions.append(f"remove {path}")
        self._real.unlink(path)

    def truncate(self, path: str, size: int) -> None:
        self.actions.append(f"truncate {path} to {size} bytes")
        self._real.truncate(path, size)

    def sync_file(self, path: str) -> None:
        self._real.sync_file(path)

    def sync_dir(self, path: str) -> None:
        self._real.sync_dir(path)


_WOULD = {"truncated": "would_truncate", "rebuilt": "would_rebuild"}


def fsck(fs: FileSystem, config: LogConfig | None = None, *, repair: bool = False) -> FsckReport:
    """Check every segment, index, cursor and state file under ``fs``.

    Must not run while a gateway has the data directory open (the edge CLI
    takes the directory's lock first).

    Args:
        fs: the data directory.
        config: only its sync policy matters (repairs fsync unless ``never``).
        repair: make the repairs instead of listing them.

    Returns:
        the findings; ``report.lines()`` formats them.

    Raises:
        LogIOError: the file system failed.
    """
    wrapped = _RecordingFileSystem(fs) if repair else _DryRunFileSystem(fs)
    report = FsckReport(repair=repair)
    log = Log(wrapped, config, reporter=report.damage.append, _verify=True)
    try:
        for name in log.streams():
            st = log._streams[name]
            report.segments += len(st.segments)
            report.streams[name] = (log.start_offset(name), log.end_offset(name), sum(s.record_count for s in st.segments))
    finally:
        log.close()
    if not repair:
        report.damage = [replace(d, action=_WOULD.get(d.action, d.action)) for d in report.damage]
    report.actions = list(wrapped.actions)
    return report
