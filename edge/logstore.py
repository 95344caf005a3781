"""The durable log on real files: the one thin adapter between core.log and the OS.

``OsFileSystem`` implements :class:`core.log.FileSystem` with ``os`` calls
(``pwrite``-free appends with O_APPEND, ``pread``, ``fdatasync``, directory
fsync). ``SharedLog`` puts a :class:`core.log.Log` behind one lock, because the
MQTT intake thread appends while the bridge thread reads, and runs the group
commit thread that calls ``maybe_sync`` every ``sync_interval_ms`` and wakes
anyone waiting in :meth:`SharedLog.wait_durable` (the intake, before it
acknowledges). ``open_log`` takes the data directory's lock (``flock`` on
``<data_dir>/LOCK``) so two gateways (or a gateway and fsck) never share it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence

from core.log import (
    UNSYNCED, DeleteResult, FsckReport, Log, LogConfig, LogError, LogFailed, LogRecord, Reporter, Unsynced, fsck,
)
from edge.errors import EdgeError

__all__ = ["OsFileSystem", "SharedLog", "DataDirLocked", "open_log", "fsck_data_dir"]

_READ_HANDLES = 32


class DataDirLocked(EdgeError):
    """Another process holds the data directory's lock."""


class _OsAppendFile:
    __slots__ = ("_fd", "_fs")

    def __init__(self, fd: int, fs: OsFileSystem) -> None:
        self._fd = fd
        self._fs = fs

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def flush(self) -> None:
        pass  # unbuffered: every write is a system call (the log writes whole batches)

    def sync(self) -> None:
        started = time.perf_counter()
        _fdatasync(self._fd)
        self._fs.note_sync(time.perf_counter() - started)

    def close(self) -> None:
        os.close(self._fd)


_fdatasync = getattr(os, "fdatasync", os.fsync)


class OsFileSystem:
    """:class:`core.log.FileSystem` over a real directory.

    Args:
        root: the data directory; it must exist.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self._readers: OrderedDict[str, int] = OrderedDict()
        self._readers_lock = threading.Lock()
        self.fsyncs = 0
        self.fsync_seconds = 0.0

    def note_sync(self, seconds: float) -> None:
        self.fsyncs += 1
        self.fsync_seconds += seconds

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path) if path else self.root

    def _forget(self, path: str) -> None:
        with self._readers_lock:
            fd = self._readers.pop(path, None)
        if fd is not None:
            os.close(fd)

    def open_append(self, path: str) -> _OsAppendFile:
        fd = os.open(self._path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return _OsAppendFile(fd, self)

    def read(self, path: str, position: int, size: int) -> bytes:
        with self._readers_lock:
            fd = self._readers.get(path)
            if fd is None:
                fd = os.open(self._path(path), os.O_RDONLY | os.O_CLOEXEC)
                self._readers[path] = fd
                if len(self._readers) > _READ_HANDLES:
                    os.close(self._readers.popitem(last=False)[1])
            else:
                self._readers.move_to_end(path)
            return os.pread(fd, size, position)

    def size(self, path: str) -> int:
        return os.stat(self._path(path)).st_size

    def exists(self, path: str) -> bool:
        return os.path.lexists(self._path(path))

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self._path(path)))

    def mkdir(self, path: str) -> None:
        try:
            os.mkdir(self._path(path), 0o755)
        except FileExistsError:
            pass

    def rmdir(self, path: str) -> None:
        os.rmdir(self._path(path))

    def rename(self, source: str, target: str) -> None:
        self._forget(source)
        self._forget(target)
        os.replace(self._path(source), self._path(target))

    def unlink(self, path: str) -> None:
        self._forget(path)
        os.unlink(self._path(path))

    def truncate(self, path: str, size: int) -> None:
        self._forget(path)
        os.truncate(self._path(path), size)

    def sync_file(self, path: str) -> None:
        fd = os.open(self._path(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            started = time.perf_counter()
            os.fsync(fd)
            self.note_sync(time.perf_counter() - started)
        finally:
            os.close(fd)

    def sync_dir(self, path: str) -> None:
        fd = os.open(self._path(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            started = time.perf_counter()
            os.fsync(fd)
            self.note_sync(time.perf_counter() - started)
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._readers_lock:
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()


class _Clock:
    """Sentinel: take ``now_ms`` from the SharedLog's clock."""


_CLOCK = _Clock()


def _lock_dir(data_dir: str) -> int:
    fd = os.open(os.path.join(data_dir, "LOCK"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise DataDirLocked(f"data directory {data_dir} is in use by another process") from exc
        raise
    return fd


class SharedLog:
    """A :class:`core.log.Log` safe to share between threads, with its group commit thread.

    Every method of Log is here, each run under one lock; ``now_ms`` defaults
    to the clock given to :func:`open_log`. Use :func:`open_log` to make one.
    """

    def __init__(self, log: Log, fs: OsFileSystem, lock_fd: int | None,
                 clock: Callable[[], float | Unsynced], background: bool = True) -> None:
        self._log = log
        self._fs = fs
        self._lock_fd = lock_fd
        self._clock = clock
        self._lock = threading.Lock()
        self._durable_changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.config = log.config
        self.recovery = log.recovery
        self._thread: threading.Thread | None = None
        if background and log.config.sync_policy != "always":
            self._thread = threading.Thread(target=self._run, name="tidegate-log-sync", daemon=True)
            self._thread.start()

    def _now(self, now_ms: int | Unsynced | _Clock) -> int | Unsynced:
        if now_ms is _CLOCK:
            seconds = self._clock()
            return seconds if isinstance(seconds, Unsynced) else int(seconds * 1000)
        return now_ms  # type: ignore[return-value]

    def _run(self) -> None:
        interval = self._log.config.sync_interval_ms / 1000
        next_seal = time.monotonic()
        while not self._stop.wait(interval):
            try:
                with self._lock:
                    if self._log.maybe_sync(int(time.monotonic() * 1000)):
                        self._durable_changed.notify_all()
                    if time.monotonic() >= next_seal:
                        self._log.maybe_seal(self._now(_CLOCK))
                        next_seal = time.monotonic() + 1.0
            except LogError as exc:
                self._error = exc
                with self._lock:
                    self._durable_changed.notify_all()
                return

    # --- writing ------------------------------------------------------------------
    def append(self, stream: str, ts_ms: int, payload: bytes, now_ms: int | Unsynced | _Clock = _CLOCK) -> int:
        now = self._now(now_ms)
        with self._lock:
            offset = self._log.append(stream, ts_ms, payload, now)
            if self._log.config.sync_policy == "always":
                self._durable_changed.notify_all()
            return offset

    def append_many(self, stream: str, records: Sequence[tuple[int, bytes]],
                    now_ms: int | Unsynced | _Clock = _CLOCK) -> range:
        now = self._now(now_ms)
        with self._lock:
            offsets = self._log.append_many(stream, records, now)
            if self._log.config.sync_policy == "always":
                self._durable_changed.notify_all()
            return offsets

    def maybe_sync(self, now_ms: int | None = None) -> bool:
        with self._lock:
            synced = self._log.maybe_sync(int(time.monotonic() * 1000) if now_ms is None else now_ms)
            if synced:
                self._durable_changed.notify_all()
            return synced

    def sync(self) -> None:
        with self._lock:
            self._log.sync()
            self._durable_changed.notify_all()

    def maybe_seal(self, now_ms: int | Unsynced | _Clock = _CLOCK) -> int:
        now = self._now(now_ms)
        with self._lock:
            return self._log.maybe_seal(now)

    def wait_durable(self, stream: str, offset: int, timeout: float | None = None) -> bool:
        """Block until ``offset`` of ``stream`` is durable; False on timeout.

        Raises:
            LogFailed: the log failed (e.g. an fsync error) while waiting.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._log.durable_offset(stream) <= offset:
                if self._error is not None:
                    raise LogFailed(f"the log's sync thread failed: {self._error}") from self._error
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._durable_changed.wait(remaining)
            return True

    # --- offsets and reading --------------------------------------------------------------
    def durable_offset(self, stream: str) -> int:
        with self._lock:
            return self._log.durable_offset(stream)

    def end_offset(self, stream: str) -> int:
        with self._lock:
            return self._log.end_offset(stream)

    def start_offset(self, stream: str) -> int:
        with self._lock:
            return self._log.start_offset(stream)

    def streams(self) -> list[str]:
        with self._lock:
            return self._log.streams()

    def read(self, stream: str, offset: int, max_records: int = 1000, max_bytes: int = 1024 * 1024) -> list[LogRecord]:
        with self._lock:
            return self._log.read(stream, offset, max_records, max_bytes)

    def read_time_range(self, stream: str, t1_ms: int, t2_ms: int, chunk: int = 1000) -> Iterator[LogRecord]:
        """Like Log.read_time_range; the lock is taken per chunk of records, not for the whole iteration."""
        with self._lock:
            inner = self._log.read_time_range(stream, t1_ms, t2_ms)
        while True:
            with self._lock:
                batch = [record for _, record in zip(range(chunk), inner)]
            yield from batch
            if len(batch) < chunk:
                return

    # --- cursors, retention, quota ----------------------------------------------------------
    def load_cursor(self, name: str, stream: str) -> int:
        with self._lock:
            return self._log.load_cursor(name, stream)

    def store_cursor(self, name: str, stream: str, offset: int) -> None:
        with self._lock:
            self._log.store_cursor(name, stream, offset)

    def enforce_retention(self, now_ms: int | Unsynced | _Clock = _CLOCK,
                          forwarded: Mapping[str, int] | None = None) -> DeleteResult:
        now = self._now(now_ms)
        with self._lock:
            return self._log.enforce_retention(now, forwarded)

    def enforce_quota(self) -> DeleteResult:
        with self._lock:
            return self._log.enforce_quota()

    def stats(self) -> dict[str, object]:
        with self._lock:
            out = self._log.stats()
        out["fsyncs"] = self._fs.fsyncs
        out["fsync_seconds_total"] = self._fs.fsync_seconds
        out["sync_thread_failed"] = self._error is not None
        return out

    def close(self) -> None:
        """Stop the sync thread, sync, seal and close the log, release the directory lock."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            with self._lock:
                self._log.close()
                self._durable_changed.notify_all()
        finally:
            self._fs.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> SharedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_log(data_dir: str | os.PathLike[str], config: LogConfig | None = None,
             clock: Callable[[], float | Unsynced] = time.time, *, reporter: Reporter | None = None,
             background: bool = True) -> SharedLog:
    """Open (and recover) the durable log in ``data_dir``, creating it if missing.

    Args:
        data_dir: the data directory; locked for this process until close.
        config: the log's configuration (default: LogConfig()).
        clock: wall clock in seconds (or returning UNSYNCED while the gateway
            clock is not synchronised), for ``now_ms`` defaults and sealing.
        reporter: called with every damage report (from recovery and reads).
        background: run the group-commit thread (not needed under ``always``).

    Raises:
        DataDirLocked: another process has the directory open.
        core.log.LogIOError: the files could not be opened or recovered.
    """
    root = os.fspath(data_dir)
    os.makedirs(root, exist_ok=True)
    lock_fd = _lock_dir(root)
    fs = OsFileSystem(root)
    try:
        log = Log(fs, config, reporter=reporter, timer=time.perf_counter)
    except BaseException:
        fs.close()
        os.close(lock_fd)
        raise
    return SharedLog(log, fs, lock_fd, clock, background=background)


def fsck_data_dir(data_dir: str | os.PathLike[str], config: LogConfig | None = None, *,
                  repair: bool = False) -> FsckReport:
    """Run :func:`core.log.fsck` on a data directory, holding its lock (for ``tidegate fsck``)."""
    root = os.fspath(data_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(errno.ENOENT, "no such data directory", root)
    lock_fd = _lock_dir(root)
    fs = OsFileSystem(root)
    try:
        return fsck(fs, config, repair=repair)
    finally:
        fs.close()
        os.close(lock_fd)


__all__ += ["UNSYNCED"]
