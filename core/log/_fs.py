"""The file interface the log runs on.

core.log never opens a file: it is handed a :class:`FileSystem` (the real one
is ``edge.logstore.OsFileSystem``; tests use an in-memory one with fault
injection). Paths are relative, ``/``-separated, and ``""`` is the root (the
data directory). Every method may raise :class:`OSError`; the log converts it
to :class:`~core.log.LogIOError` at its boundary and keeps the cause.

Ownership: the log owns every :class:`AppendFile` it opens and closes it; the
file system must outlive the log (``Log.close`` does not close it).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["AppendFile", "FileSystem"]


class AppendFile(Protocol):
    """A file opened for appending; ``write`` always appends at the end."""

    def write(self, data: bytes) -> None:
        """Append all of ``data`` (loop over short writes) or raise OSError; a failure may leave a prefix written."""

    def flush(self) -> None:
        """Hand buffered bytes to the OS (no-op for unbuffered files)."""

    def sync(self) -> None:
        """Make everything written durable (fsync/fdatasync)."""

    def close(self) -> None:
        """Release the file; does not sync."""


class FileSystem(Protocol):
    def open_append(self, path: str) -> AppendFile:
        """Open ``path`` for appending, creating it if missing (its directory entry is not yet durable)."""

    def read(self, path: str, position: int, size: int) -> bytes:
        """Return up to ``size`` bytes at ``position`` (fewer at end of file)."""

    def size(self, path: str) -> int:
        """Return the size of the file at ``path``."""

    def exists(self, path: str) -> bool:
        """True if a file or directory is at ``path``."""

    def listdir(self, path: str) -> list[str]:
        """Return the names in directory ``path``, sorted; raise FileNotFoundError if missing."""

    def mkdir(self, path: str) -> None:
        """Create directory ``path`` (its parent exists); no error if it exists."""

    def rmdir(self, path: str) -> None:
        """Remove the empty directory ``path``."""

    def rename(self, source: str, target: str) -> None:
        """Atomically rename ``source`` over ``target`` (same directory)."""

    def unlink(self, path: str) -> None:
        """Remove the file at ``path``; raise FileNotFoundError if missing."""

    def truncate(self, path: str, size: int) -> None:
        """Cut the file at ``path`` to ``size`` bytes (durable once the file is synced)."""

    def sync_file(self, path: str) -> None:
        """fsync the file at ``path`` (used after truncate)."""

    def sync_dir(self, path: str) -> None:
        """fsync directory ``path`` so that entries created, renamed or removed in it are durable."""
