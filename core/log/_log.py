"""The durable log: streams of records, partitioned by time window, over an injected file system.

Theory of operation
-------------------

State lives in three layers:

* **Streams** (``_Stream``) own the offset counters: ``end`` (next offset to
  assign) and ``durable`` (everything below is synced). Offsets are per stream
  and rise across windows.
* **Windows** (``_Window``) group the segments of one (stream, window). At most
  one segment per window is *active* (has an open file and takes appends);
  ``_Stream.open`` maps a window start to a window with an active segment.
* **Segments** (:class:`~core.log._segment.Segment`) know their bytes, their
  indexes and their pending records.

``append`` only buffers (``Segment.add``). ``sync`` writes one BATCH frame per
run of consecutive offsets per segment, fsyncs every file written and every
directory changed, and only then raises ``durable`` to ``end`` for every stream.
Reads never go past ``durable`` (nor past a segment's ``durable_size``), so a
reader cannot see a record that a crash could take back.

Because late records land in their own window with the stream's next offset, a
stream's offsets interleave across segments of different windows. ``read`` by
offset therefore merges: every segment yields its batches in offset order, and
a heap over batches (not records) puts them back in stream order.

Any ``OSError`` while writing puts the log in its ERROR state (h11's rule):
after a failed fsync the kernel may have dropped dirty pages, so nothing can be
called durable any more; every later call raises ``LogFailed`` until the log is
closed and opened again, which recovers the files from what is really on disk.

Who owns what: the ``FileSystem`` belongs to the caller and must outlive the
log; the log owns the files it opens and closes them in :meth:`Log.close`.
"""

from __future__ import annotations

import errno as errno_names
import heapq
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from core.log import _policy as policy
from core.log import format as fmt
from core.log._config import UNSYNCED, LogConfig, Unsynced
from core.log._errors import (
    LogFailed, LogFull, LogIOError, LogUsageError, OffsetOutOfRange, RecordRejected,
)
from core.log._fs import FileSystem
from core.log._scan import Damage, FrameScanner, Reporter
from core.log._segment import BATCH_OVERHEAD, Segment, on_disk

_first, _second = itemgetter(0), itemgetter(1)
_INT_ONLY, _BYTES_ONLY = {int}, {bytes}

__all__ = ["Log", "LogRecord", "RecoveryReport", "DeleteResult", "PENDING_WRITE_BYTES", "DEFAULT_MAX_READ_BYTES"]

#: Under ``interval``, pending records are written to the OS (not synced) past this many bytes.
PENDING_WRITE_BYTES = 1024 * 1024
DEFAULT_MAX_READ_BYTES = 1024 * 1024
_SEAL_CHECK_MS = 1000


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record read back from the log; ``ts_ms`` is the device time used for its window."""

    stream: str
    offset: int
    ts_ms: int
    payload: bytes


@dataclass(slots=True)
class RecoveryReport:
    """What opening the log found and did."""

    segments_trusted: int = 0
    segments_recovered: int = 0
    segments_removed_empty: int = 0
    bytes_truncated: int = 0
    damage: list[Damage] = field(default_factory=list)
    deletions_finished: int = 0
    tmp_files_removed: int = 0


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What a retention or quota pass deleted."""

    windows: int = 0
    records: int = 0
    bytes: int = 0
    dropped_records: int = 0  # of ``records``, how many were never forwarded (counted in stats)


class _Window:
    __slots__ = ("start", "length", "path", "segments", "active", "touched", "last_append_ms")

    def __init__(self, start: int, length: int, path: str) -> None:
        self.start = start
        self.length = length
        self.path = path
        self.segments: list[Segment] = []
        self.active: Segment | None = None
        self.touched = 0
        self.last_append_ms = 0

    @property
    def key(self) -> tuple[int, int]:
        return (self.start, self.length)

    def max_offset(self) -> int:
        return max(s.pend_next - 1 if s.pend_ts else s.last_offset for s in self.segments)

    def records(self) -> int:
        return sum(s.record_count + len(s.pend_ts) for s in self.segments)

    def bytes(self) -> int:
        return sum(s.disk_bytes for s in self.segments)


class _Stream:
    __slots__ = ("name", "internal", "path", "windows", "open", "segments", "end", "durable", "rejected")

    def __init__(self, name: str) -> None:
        self.name = name
        self.internal = name.startswith("_")
        self.path = f"{fmt.STREAMS_DIR}/{name}"
        self.windows: dict[tuple[int, int], _Window] = {}
        self.open: dict[int, _Window] = {}
        self.segments: list[Segment] = []
        self.end = 0
        self.durable = 0
        self.rejected = {"late": 0, "early": 0, "bad_time": 0, "log_full": 0}


def _errno_name(exc: OSError) -> str:
    return errno_names.errorcode.get(exc.errno or 0, "EIO")


class Log:
    """A durable, time-partitioned log of records over an injected file system.

    Opening recovers the files (docs/log_format.md, "Recovery rules"); the
    result is in :attr:`recovery`.

    Args:
        fs: the file system, rooted at the data directory; owned by the caller.
        config: partitioning, sync, retention and quota settings.
        reporter: called with every :class:`Damage` found (recovery and reads);
            it must not call back into the log.
        timer: a monotonic clock in seconds, used only to measure sync latency.

    Raises:
        LogIOError: the file system failed while opening.
    """

    def __init__(self, fs: FileSystem, config: LogConfig | None = None, *, reporter: Reporter | None = None,
                 timer: Callable[[], float] | None = None, _verify: bool = False) -> None:
        self._fs = fs
        self.config = config if config is not None else LogConfig()
        self._reporter = reporter
        self._timer = timer if timer is not None else (lambda: 0.0)
        self._streams: dict[str, _Stream] = {}
        self._pending: dict[int, Segment] = {}
        self._unsynced: dict[int, Segment] = {}
        self._dirty_dirs: set[str] = set()
        self._cursors: dict[tuple[str, str], int] = {}
        self._dropped: dict[str, int] = {}
        self._floors: dict[str, int] = {}
        self._usage = 0
        self._pending_cost = 0
        self._failed: BaseException | None = None
        self._closed = False
        self._seq = 0
        self._last_sync_ms: int | None = None
        self._last_seal_check = -(2**63)
        self._seen_damage: set[tuple[str, int]] = set()
        self._sync_always = self.config.sync_policy == "always"
        self._fsync = self.config.sync_policy != "never"
        # counters for stats()
        self._payload_bytes = 0
        self._records_appended = 0
        self._bytes_written = 0
        self._log_bytes_written = 0
        self._syncs = 0
        self._sync_seconds = 0.0
        self._sync_seconds_max = 0.0
        self._log_full = 0
        self._deleted_forwarded = 0
        self._damage_count = 0
        self.recovery = RecoveryReport()
        self._verify = _verify
        try:
            self._open()
        except OSError as exc:
            self._close_handles()
            raise LogIOError(f"cannot open the log: {exc}", reason=_errno_name(exc)) from exc

    # ------------------------------------------------------------------ opening

    def _report(self, damage: Damage) -> None:
        self._damage_count += 1
        if len(self.recovery.damage) < 10_000 and not self._opened:
            self.recovery.damage.append(damage)
        if self._reporter is not None:
            self._reporter(damage)

    _opened = False

    def _open(self) -> None:
        fs = self._fs
        created = False
        for name in (fmt.STREAMS_DIR, fmt.CURSORS_DIR, fmt.META_DIR):
            if not fs.exists(name):
                fs.mkdir(name)
                created = True
        if created:
            fs.sync_dir("")
        self._load_state()
        self._load_cursors()
        for name in fs.listdir(fmt.STREAMS_DIR):
            if fmt.valid_name(name):
                self._load_stream(name)
            else:
                self._report(Damage(f"{fmt.STREAMS_DIR}/{name}", 0, 0, "stray_file", action="ignored"))
        for name, floor in self._floors.items():
            st = self._streams.get(name)
            if st is None and fmt.valid_name(name):
                st = self._streams[name] = _Stream(name)
            if st is not None:
                st.end = max(st.end, floor)
        for (_, stream), offset in self._cursors.items():
            st = self._streams.get(stream)
            if st is not None:
                st.end = max(st.end, offset)
        for st in self._streams.values():
            st.durable = st.end
        self._opened = True

    def _load_state(self) -> None:
        fs = self._fs
        if fs.exists(fmt.STATE_FILE + fmt.TMP_SUFFIX):
            fs.unlink(fmt.STATE_FILE + fmt.TMP_SUFFIX)
            self.recovery.tmp_files_removed += 1
        if not fs.exists(fmt.STATE_FILE):
            return
        data = fs.read(fmt.STATE_FILE, 0, fs.size(fmt.STATE_FILE))
        state = fmt.decode_state(data)
        if state is None:
            self._report(Damage(fmt.STATE_FILE, 0, len(data), "bad_state", action="ignored"))
            return
        self._dropped = {k: int(v) for k, v in state.get("dropped", {}).items()}
        self._floors = {k: int(v) for k, v in state.get("floors", {}).items()}
        for path in state.get("pending_delete", []):
            if not isinstance(path, str) or ".." in path.split("/"):
                continue
            removed = False
            for suffix in (fmt.LOG_SUFFIX, fmt.INDEX_SUFFIX, fmt.TIMEINDEX_SUFFIX):
                if fs.exists(path + suffix):
                    fs.unlink(path + suffix)
                    removed = True
            window_dir = path.rsplit("/", 1)[0]
            if fs.exists(window_dir) and not fs.listdir(window_dir):
                fs.rmdir(window_dir)
            self.recovery.deletions_finished += removed

    def _load_cursors(self) -> None:
        fs = self._fs
        for name in fs.listdir(fmt.CURSORS_DIR):
            directory = f"{fmt.CURSORS_DIR}/{name}"
            if not fmt.valid_name(name):
                continue
            for file in fs.listdir(directory):
                path = f"{directory}/{file}"
                if file.endswith(fmt.TMP_SUFFIX):
                    fs.unlink(path)
                    self.recovery.tmp_files_removed += 1
                    continue
                stream = file[: -len(fmt.CURSOR_SUFFIX)] if file.endswith(fmt.CURSOR_SUFFIX) else ""
                if not fmt.valid_name(stream):
                    continue
                data = fs.read(path, 0, fmt.CURSOR_SIZE + 1)
                offset = fmt.decode_cursor(data)
                if offset is None:
                    self._report(Damage(path, 0, len(data), "bad_cursor", action="ignored"))
                    continue
                self._cursors[(name, stream)] = offset

    def _load_stream(self, name: str) -> None:
        fs = self._fs
        st = self._streams[name] = _Stream(name)
        for wname in fs.listdir(st.path):
            parsed = fmt.parse_window_dir_name(wname)
            wpath = f"{st.path}/{wname}"
            if parsed is None:
                self._report(Damage(wpath, 0, 0, "stray_file", action="ignored"))
                continue
            win = _Window(parsed[0], parsed[1], wpath)
            groups: dict[int, set[str]] = {}
            for file in fs.listdir(wpath):
                if file.endswith(fmt.TMP_SUFFIX):
                    fs.unlink(f"{wpath}/{file}")
                    self.recovery.tmp_files_removed += 1
                    continue
                seg_name = fmt.parse_segment_name(file)
                if seg_name is None:
                    self._report(Damage(f"{wpath}/{file}", 0, 0, "stray_file", action="ignored"))
                    continue
                groups.setdefault(seg_name[0], set()).add(seg_name[1])
            for base in sorted(groups):
                seg = self._load_segment(st, win, base, groups[base])
                if seg is not None:
                    win.segments.append(seg)
            if win.segments:
                st.windows[win.key] = win
                st.segments.extend(win.segments)
                for seg in win.segments:
                    st.end = max(st.end, seg.last_offset + 1)
            elif not fs.listdir(wpath):
                fs.rmdir(wpath)
                self._dirty_dirs.add(st.path)
        st.segments.sort(key=lambda s: s.base)
        self._sync_dirs()

    def _load_segment(self, st: _Stream, win: _Window, base: int, suffixes: set[str]) -> Segment | None:
        fs = self._fs
        path = f"{win.path}/{base:020d}"
        if "log" not in suffixes:
            for suffix in suffixes:  # indexes of a removed segment: derived data, drop them
                fs.unlink(f"{path}.{suffix}")
            return None
        log_size = fs.size(path + fmt.LOG_SUFFIX)
        trusted = None
        if "index" in suffixes and "timeindex" in suffixes:
            trusted = Segment.load_sealed(fs, st.name, path, base, win.key, log_size)
        if trusted is not None and not self._verify:
            self.recovery.segments_trusted += 1
            self._usage += trusted.disk_bytes
            return trusted
        seg = Segment(st.name, path, base, win.key)
        self.recovery.segments_recovered += 1
        truncated = seg.recover(fs, self._report)
        if truncated and self._fsync:
            fs.sync_file(seg.log_path)
        self.recovery.bytes_truncated += truncated
        if seg.record_count == 0:
            for suffix in (fmt.LOG_SUFFIX, fmt.INDEX_SUFFIX, fmt.TIMEINDEX_SUFFIX):
                if fs.exists(path + suffix):
                    fs.unlink(path + suffix)
            self._dirty_dirs.add(win.path)
            self.recovery.segments_removed_empty += 1
            return None
        if trusted is not None and not truncated and _same_index(trusted, seg):
            seg.index_bytes = trusted.index_bytes
            self._usage += seg.index_bytes
        else:
            if trusted is not None:
                self._report(Damage(path + fmt.INDEX_SUFFIX, 0, trusted.index_bytes, "stale_index", action="rebuilt"))
            self._write_indexes(seg)  # counts the index files it writes in the usage
        seg.sealed = True
        self._usage += on_disk(seg.size)
        return seg

    # ------------------------------------------------------------------ guards

    def _check(self) -> None:
        if self._failed is not None:
            raise LogFailed(f"the log failed earlier ({self._failed}); close it and open it again")
        if self._closed:
            raise LogUsageError("the log is closed")

    def _fail(self, exc: OSError) -> LogIOError:
        self._failed = exc
        return LogIOError(f"log write failed, the log is now in its ERROR state: {exc}", reason=_errno_name(exc))

    def _stream(self, stream: str) -> _Stream | None:
        st = self._streams.get(stream)
        if st is None and not fmt.valid_name(stream):
            raise LogUsageError(f"invalid stream name {stream!r}: must be 1..64 of [A-Za-z0-9._-], not . or ..")
        return st

    # ------------------------------------------------------------------ appending

    def append(self, stream: str, ts_ms: int, payload: bytes, now_ms: int | Unsynced) -> int:
        """Append one record and return its offset.

        The record is buffered: it is durable (and readable) once
        :meth:`durable_offset` is above its offset, which under ``always`` is
        before this returns and otherwise after a :meth:`sync` (or a
        :meth:`maybe_sync` that syncs).

        Args:
            stream: the stream name.
            ts_ms: the record's device time (ms since the epoch, >= 0): its window.
            payload: opaque bytes, at most MAX_PAYLOAD_BYTES.
            now_ms: the gateway's wall-clock time in ms, or UNSYNCED.

        Raises:
            RecordRejected: the late/early rule or a negative time refused it (nothing written).
            LogFull: the quota is reached and the stream's policy refuses it (nothing written).
            LogUsageError: bad stream name or payload; the log is closed.
            LogIOError: writing or syncing failed; the log is now in ERROR.
            LogFailed: the log was already in ERROR.
        """
        if self._failed is not None or self._closed:
            self._check()
        st = self._streams.get(stream)
        if st is None:
            st = self._new_stream(stream)
        try:
            offset = self._add(st, ts_ms, payload, now_ms)
            if self._sync_always:
                self.sync()
            elif self._pending_cost >= PENDING_WRITE_BYTES:
                self._write_pending()
            if now_ms is not UNSYNCED and not 0 <= now_ms - self._last_seal_check < _SEAL_CHECK_MS:  # type: ignore[operator]
                self._seal_due(now_ms)  # type: ignore[arg-type]
        except OSError as exc:
            raise self._fail(exc) from exc
        return offset

    def append_many(self, stream: str, records: Sequence[tuple[int, bytes]], now_ms: int | Unsynced) -> range:
        """Append several records of one stream; return their offsets (consecutive).

        All records are checked before any is added, so a rejection or a full
        log leaves nothing appended. Under ``always`` there is one sync for all.

        Raises:
            the same as :meth:`append`.
        """
        self._check()
        st = self._streams.get(stream)
        if st is None:
            st = self._new_stream(stream)
        if not records:
            return range(st.end, st.end)
        times = list(map(_first, records))
        payloads = list(map(_second, records))
        # Fast path (the common case: bytes payloads, int times, all in one window): check the
        # extremes only, add all records to the segment in one go. Anything else goes record by record.
        fast = {*map(type, times)} == _INT_ONLY and {*map(type, payloads)} == _BYTES_ONLY
        if fast:
            low, high = min(times), max(times)
            fast = fmt.MIN_TS <= low and high <= fmt.MAX_TS and max(map(len, payloads)) <= fmt.MAX_PAYLOAD_BYTES
        if fast:
            self._check_record(st, low, b"", now_ms)   # the oldest window is the one that may be closed
            self._check_record(st, high, b"", now_ms)  # the newest time is the one that may be early
        else:
            for ts_ms, payload in records:
                self._check_record(st, ts_ms, payload, now_ms)
        config = self.config
        window_ms = config.window_ms
        nbytes = sum(map(len, payloads))
        count = len(records)
        if config.quota_bytes is not None:
            cost = nbytes + fmt.BATCH_RECORD_OVERHEAD * count + BATCH_OVERHEAD
            if self._usage + self._pending_cost + cost > config.quota_bytes:
                targets = {(ts - ts % window_ms, window_ms) for ts in times}
                try:
                    self._make_room(st, targets, cost)
                except OSError as exc:
                    raise self._fail(exc) from exc
        first = st.end
        try:
            start = low - low % window_ms if fast else -1
            if fast and high < start + window_ms and self._add_run(st, start, times, payloads, nbytes, now_ms):
                pass
            else:
                for ts_ms, payload in records:
                    self._add(st, ts_ms, payload, now_ms, checked=True)
            if self._sync_always:
                self.sync()
            elif self._pending_cost >= PENDING_WRITE_BYTES:
                self._write_pending()
            if now_ms is not UNSYNCED and not 0 <= now_ms - self._last_seal_check < _SEAL_CHECK_MS:  # type: ignore[operator]
                self._seal_due(now_ms)  # type: ignore[arg-type]
        except OSError as exc:
            raise self._fail(exc) from exc
        return range(first, st.end)

    def _add_run(self, st: _Stream, start: int, times: list[int], payloads: list[bytes], nbytes: int,
                 now_ms: int | Unsynced) -> bool:
        """Add checked records of one window in one go; False if the segment would roll (use the slow path)."""
        win = st.open.get(start)
        if win is None:
            win = self._activate(st, start)
        seg = win.active
        assert seg is not None
        count = len(times)
        cost = nbytes + fmt.BATCH_RECORD_OVERHEAD * count + BATCH_OVERHEAD
        if policy.should_roll(seg.size, seg.pend_cost, cost, self.config.segment_bytes, st.end + count - seg.base,
                              bool(seg.record_count or seg.pend_ts)):
            return False
        first = st.end
        st.end = first + count
        if not seg.pend_ts:
            self._pending[id(seg)] = seg
        self._pending_cost += seg.add_many(first, times, payloads, nbytes)
        self._payload_bytes += nbytes
        self._records_appended += count
        self._seq += 1
        win.touched = self._seq
        if now_ms is not UNSYNCED:
            win.last_append_ms = now_ms  # type: ignore[assignment]
        return True

    def _new_stream(self, stream: str) -> _Stream:
        self._check()
        if not fmt.valid_name(stream):
            raise LogUsageError(f"invalid stream name {stream!r}: must be 1..64 of [A-Za-z0-9._-], not . or ..")
        st = _Stream(stream)
        try:
            if not self._fs.exists(st.path):
                self._fs.mkdir(st.path)
                self._dirty_dirs.add(fmt.STREAMS_DIR)
        except OSError as exc:
            raise self._fail(exc) from exc
        self._streams[stream] = st
        return st

    def _check_record(self, st: _Stream, ts_ms: int, payload: bytes, now_ms: int | Unsynced) -> None:
        if type(payload) is not bytes:
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                raise LogUsageError(f"payload must be bytes, got {type(payload).__name__}")
        if len(payload) > fmt.MAX_PAYLOAD_BYTES:
            raise LogUsageError(f"payload of {len(payload)} bytes is over the {fmt.MAX_PAYLOAD_BYTES}-byte limit")
        if type(ts_ms) is not int or not fmt.MIN_TS <= ts_ms <= fmt.MAX_TS:
            if not isinstance(ts_ms, int) or isinstance(ts_ms, bool):
                raise LogUsageError(f"ts_ms must be an int, got {type(ts_ms).__name__}")
            if not fmt.MIN_TS <= ts_ms <= fmt.MAX_TS:
                st.rejected["bad_time"] += 1
                raise RecordRejected(f"device time {ts_ms} ms is outside 0..2**63-1", reason="bad_time", field="ts_ms")
        if now_ms is UNSYNCED or st.internal:
            return
        if type(now_ms) is not int:
            raise LogUsageError(f"now_ms must be an int or UNSYNCED, got {now_ms!r}")
        config = self.config
        if config.early_policy == "reject" and ts_ms > now_ms + config.early_bound_ms:
            st.rejected["early"] += 1
            raise RecordRejected(
                f"device time {ts_ms} is {ts_ms - now_ms} ms ahead of gateway time (bound {config.early_bound_ms} ms)",
                reason="early", field="ts_ms",
            )
        if config.late_policy == "reject":
            start = ts_ms - ts_ms % config.window_ms
            if now_ms >= start + config.window_ms + config.late_grace_ms:
                st.rejected["late"] += 1
                raise RecordRejected(
                    f"device time {ts_ms} falls in window {start} which closed at "
                    f"{start + config.window_ms + config.late_grace_ms}", reason="late", field="ts_ms",
                )

    def _add(self, st: _Stream, ts_ms: int, payload: bytes, now_ms: int | Unsynced, checked: bool = False) -> int:
        if not checked:
            self._check_record(st, ts_ms, payload, now_ms)
        if type(payload) is not bytes:
            payload = bytes(payload)
        config = self.config
        start = ts_ms - ts_ms % config.window_ms
        win = st.open.get(start)
        if win is None:
            win = self._activate(st, start)
        seg = win.active
        assert seg is not None  # an open window has an active segment (internal invariant)
        cost = len(payload) + fmt.BATCH_RECORD_OVERHEAD + BATCH_OVERHEAD
        if config.quota_bytes is not None and self._usage + self._pending_cost + cost > config.quota_bytes:
            if not checked:
                self._make_room(st, {win.key}, cost)
            win = st.open.get(start) or self._activate(st, start)
            seg = win.active
            assert seg is not None
        if policy.should_roll(seg.size, seg.pend_cost, cost, config.segment_bytes, st.end - seg.base,
                              bool(seg.record_count or seg.pend_ts)):
            self._seal_segment(st, win)
            win = self._activate(st, start)
            seg = win.active
            assert seg is not None
        offset = st.end
        st.end = offset + 1
        if not seg.pend_ts:
            self._pending[id(seg)] = seg
        cost = seg.add(offset, ts_ms, payload)
        self._pending_cost += cost
        self._payload_bytes += len(payload)
        self._records_appended += 1
        self._seq += 1
        win.touched = self._seq
        if now_ms is not UNSYNCED:
            win.last_append_ms = now_ms  # type: ignore[assignment]
        return offset

    def _activate(self, st: _Stream, start: int) -> _Window:
        """Give window ``start`` an active segment (opening or reopening it)."""
        fs = self._fs
        length = self.config.window_ms
        if len(st.open) >= self.config.max_open_windows:
            victim = min(st.open.values(), key=lambda w: w.touched)
            self._seal_segment(st, victim)
        win = st.windows.get((start, length))
        if win is None:
            if not st.windows and not fs.exists(st.path):  # known only from meta/state
                fs.mkdir(st.path)
                self._dirty_dirs.add(fmt.STREAMS_DIR)
            win = _Window(start, length, f"{st.path}/{fmt.window_dir_name(start, length)}")
            if not fs.exists(win.path):
                fs.mkdir(win.path)
                self._dirty_dirs.add(st.path)
            st.windows[win.key] = win
        seg = Segment(st.name, f"{win.path}/{st.end:020d}", st.end, win.key)
        seg.handle = fs.open_append(seg.log_path)
        self._dirty_dirs.add(win.path)
        win.segments.append(seg)
        win.active = seg
        st.segments.append(seg)
        st.open[start] = win
        return win

    # ------------------------------------------------------------------ writing and syncing

    def _write_segment(self, seg: Segment) -> None:
        batches = seg.take_batches()
        frames = []
        position = seg.size
        notes = []
        for base, ts, payloads in batches:
            frame = fmt.encode_frame(fmt.TYPE_BATCH, fmt.encode_batch(base, ts, payloads))
            frames.append(frame)
            notes.append((position, fmt.BatchHeader(base, len(ts), min(ts), max(ts) - min(ts))))
            position += len(frame)
        data = b"".join(frames)
        assert seg.handle is not None
        seg.handle.write(data)
        self._usage += on_disk(position) - on_disk(seg.size)
        seg.size = position
        for pos, header in notes:
            seg.note_batch(pos, header)
        self._bytes_written += len(data)
        self._log_bytes_written += len(data)
        self._unsynced[id(seg)] = seg

    def _write_pending(self) -> None:
        for seg in list(self._pending.values()):
            cost = seg.pend_cost
            self._write_segment(seg)
            self._pending_cost -= cost
            del self._pending[id(seg)]

    def _sync_dirs(self) -> None:
        if self._fsync:
            for path in sorted(self._dirty_dirs):
                if path == "" or self._fs.exists(path):  # a window removed since is gone, not dirty
                    self._fs.sync_dir(path)
        self._dirty_dirs.clear()

    def sync(self) -> None:
        """Write and fsync everything appended so far (group commit), then raise every durable offset.

        Raises:
            LogIOError: a write or fsync failed; nothing more is durable and the log is in ERROR.
            LogFailed: the log was already in ERROR.
        """
        self._check()
        started = self._timer()
        try:
            self._write_pending()
            for seg in self._unsynced.values():
                assert seg.handle is not None
                seg.handle.flush()
                if self._fsync:
                    seg.handle.sync()
            self._sync_dirs()
        except OSError as exc:
            raise self._fail(exc) from exc
        for seg in self._unsynced.values():
            seg.durable_size = seg.size
        self._unsynced.clear()
        for st in self._streams.values():
            st.durable = st.end
        elapsed = self._timer() - started
        self._syncs += 1
        self._sync_seconds += elapsed
        self._sync_seconds_max = max(self._sync_seconds_max, elapsed)

    def maybe_sync(self, now_ms: int) -> bool:
        """Sync if the policy says it is time (group commit); return True if it synced.

        ``now_ms`` is any millisecond clock that normally rises (a monotonic
        clock is best); if it goes backwards the log syncs rather than wait.
        Under ``interval`` and ``never`` something must call this every
        ``sync_interval_ms`` (``edge.logstore.SharedLog`` runs a thread for it).
        """
        self._check()
        if not self._pending and not self._unsynced:
            return False
        last = self._last_sync_ms
        if last is None or now_ms - last >= self.config.sync_interval_ms or now_ms < last:
            self.sync()
            self._last_sync_ms = now_ms
            return True
        return False

    # ------------------------------------------------------------------ sealing

    def _seal_segment(self, st: _Stream, win: _Window) -> None:
        """Seal ``win``'s active segment: write its records, sync it, write its indexes, close it."""
        seg = win.active
        if seg is None:
            return
        if seg.pend_ts:
            cost = seg.pend_cost
            self._write_segment(seg)
            self._pending_cost -= cost
            self._pending.pop(id(seg), None)
        assert seg.handle is not None
        if id(seg) in self._unsynced:
            seg.handle.flush()
            if self._fsync:
                seg.handle.sync()
            del self._unsynced[id(seg)]
            seg.durable_size = seg.size
        self._sync_dirs()
        seg.handle.close()
        seg.handle = None
        win.active = None
        if st.open.get(win.start) is win:
            del st.open[win.start]
        if seg.record_count:
            self._write_indexes(seg)
            seg.sealed = True

    def _write_indexes(self, seg: Segment) -> None:
        """Write a sealed segment's index files.

        They are derived data, so failing to write them (a full disk, an I/O
        error) is reported and tolerated: the segment is scanned at the next
        open instead. That keeps recovery on a full disk from failing, which
        would be a crash loop.
        """
        fs = self._fs
        index, timeindex = seg.index_files()
        self._usage -= seg.index_bytes
        seg.index_bytes = 0
        try:
            for suffix, data in ((fmt.TIMEINDEX_SUFFIX, timeindex), (fmt.INDEX_SUFFIX, index)):
                path = seg.path + suffix
                if fs.exists(path):
                    fs.unlink(path)
                handle = fs.open_append(path)
                try:
                    self._bytes_written += len(data)
                    handle.write(data)
                    if self._fsync:
                        handle.sync()
                finally:
                    handle.close()
        except OSError as exc:
            self._report(Damage(seg.path + fmt.INDEX_SUFFIX, 0, 0, f"index_not_written:{_errno_name(exc)}",
                                action="ignored"))
            for suffix in (fmt.INDEX_SUFFIX, fmt.TIMEINDEX_SUFFIX):
                try:
                    if fs.exists(seg.path + suffix):
                        fs.unlink(seg.path + suffix)
                except OSError:
                    pass
            return
        seg.index_bytes = on_disk(len(index)) + on_disk(len(timeindex))
        self._usage += seg.index_bytes

    def _seal_due(self, now_ms: int) -> int:
        sealed = 0
        grace = self.config.late_grace_ms
        for st in self._streams.values():
            for win in list(st.open.values()):
                if policy.sealable(win.start, win.length, win.last_append_ms, now_ms, grace):
                    self._seal_segment(st, win)
                    sealed += 1
        self._last_seal_check = now_ms
        return sealed

    def maybe_seal(self, now_ms: int | Unsynced) -> int:
        """Seal the active segments of windows that closed by gateway time; return how many.

        Append does this by itself about once a second; call it when appends
        stop, so that closed windows are sealed anyway.
        """
        self._check()
        if now_ms is UNSYNCED:
            return 0
        try:
            return self._seal_due(now_ms)  # type: ignore[arg-type]
        except OSError as exc:
            raise self._fail(exc) from exc

    # ------------------------------------------------------------------ offsets

    def _known(self, stream: str) -> _Stream | None:
        self._check()
        return self._stream(stream)

    def durable_offset(self, stream: str) -> int:
        """The next offset not yet durable: every record below it is synced (handed to the OS under ``never``)."""
        st = self._known(stream)
        return st.durable if st is not None else 0

    def end_offset(self, stream: str) -> int:
        """The next offset to be assigned."""
        st = self._known(stream)
        return st.end if st is not None else 0

    def start_offset(self, stream: str) -> int:
        """The oldest offset still held (the durable end if nothing is held)."""
        st = self._known(stream)
        if st is None:
            return 0
        firsts = [s.first_offset for s in st.segments if s.record_count]
        return min(firsts) if firsts else st.durable

    def streams(self) -> list[str]:
        """The names of all streams, sorted."""
        self._check()
        return sorted(self._streams)

    # ------------------------------------------------------------------ reading

    def _damage_once(self, damage: Damage) -> None:
        key = (damage.path, damage.position)
        if key not in self._seen_damage:
            self._seen_damage.add(key)
            self._report(damage)

    def _batches(self, seg: Segment, where: tuple[int, int]) -> Iterator[tuple[fmt.BatchHeader, fmt.DecodedBatch]]:
        """Yield the decodable batches of ``seg`` from an index position up to its durable size.

        ``where`` is (position, first offset of the batch there) from the index;
        if no batch with that offset starts there, the index is wrong, and the
        segment is read from its start instead (reported once as ``stale_index``).
        """
        fs = self._fs
        path = seg.log_path
        position, expected = where

        def read(pos: int, size: int) -> bytes:
            return fs.read(path, pos, size)

        try:
            if position > 0:
                head = read(position, fmt.FRAME_HEADER_SIZE + fmt.BATCH_HEADER_SIZE)
                if (len(head) < fmt.FRAME_HEADER_SIZE + fmt.BATCH_HEADER_SIZE or head[:4] != fmt.FRAME_MAGIC
                        or head[12] != fmt.TYPE_BATCH
                        or fmt.BATCH_HEADER.unpack_from(head, fmt.FRAME_HEADER_SIZE)[0] != expected):
                    self._damage_once(Damage(path, position, 0, "stale_index", action="ignored"))
                    position = 0
            scanner = FrameScanner(read, path, position, seg.durable_size, self._damage_once)
            last = -1
            for pos, frame_type, body in scanner:
                decoded = fmt.decode_batch(body) if frame_type == fmt.TYPE_BATCH else None
                if decoded is None:
                    reason = "bad_batch" if frame_type == fmt.TYPE_BATCH else "unknown_type"
                    self._damage_once(Damage(path, pos, fmt.FRAME_HEADER_SIZE + len(body), reason))
                    continue
                if decoded[0].base_offset <= last or decoded[0].base_offset < seg.base:
                    self._damage_once(Damage(path, pos, fmt.FRAME_HEADER_SIZE + len(body), "offset_order"))
                    continue
                last = decoded[0].last_offset
                yield decoded[0], decoded
        except FileNotFoundError:
            if seg.deleted:
                return
            raise
        if scanner.tail is not None:
            self._damage_once(scanner.tail)

    def read(self, stream: str, offset: int, max_records: int = 1000,
             max_bytes: int = DEFAULT_MAX_READ_BYTES) -> list[LogRecord]:
        """Return durable records of ``stream`` from ``offset`` on, in offset order.

        Offsets that are not held (below :meth:`start_offset`, or dropped by
        quota or damage) are skipped: the result starts at the first held
        offset at or after ``offset``, so a consumer sees a gap by comparing
        offsets. At least one record is returned when any is available, even
        if it alone is bigger than ``max_bytes``.

        Raises:
            OffsetOutOfRange: ``offset`` is beyond the stream's end offset.
            LogUsageError: negative offset or limits, bad stream name.
            LogIOError: the file system failed (the log stays usable).
        """
        st = self._known(stream)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise LogUsageError(f"offset must be a non-negative int, got {offset!r}")
        if max_records < 1 or max_bytes < 1:
            raise LogUsageError("max_records and max_bytes must be positive")
        if st is None:
            if offset > 0:
                raise OffsetOutOfRange(f"offset {offset} is beyond the end (0) of stream {stream!r}")
            return []
        if offset > st.end:
            raise OffsetOutOfRange(f"offset {offset} is beyond the end ({st.end}) of stream {stream!r}")
        high = st.durable
        if offset >= high:
            return []
        candidates = sorted(
            (s for s in st.segments if s.record_count and s.last_offset >= offset and s.first_offset < high),
            key=lambda s: s.first_offset,
        )
        out: list[LogRecord] = []
        size = 0
        heap: list[tuple[int, int, fmt.DecodedBatch, Iterator[tuple[fmt.BatchHeader, fmt.DecodedBatch]]]] = []
        i = 0
        try:
            while True:
                while i < len(candidates) and (not heap or candidates[i].first_offset <= heap[0][0]):
                    seg = candidates[i]
                    batches = self._batches(seg, seg.position_for(offset))
                    for header, decoded in batches:
                        if header.last_offset >= offset:
                            heapq.heappush(heap, (header.base_offset, i, decoded, batches))
                            break
                    i += 1
                if not heap:
                    return out
                _, j, decoded, batches = heapq.heappop(heap)
                header, deltas, ends, blob = decoded
                base = header.base_offset
                base_ts = header.base_ts
                k = max(0, offset - base)
                stop = min(header.records, high - base)
                previous = ends[k - 1] if k else 0
                while k < stop:
                    end = ends[k]
                    out.append(LogRecord(stream, base + k, base_ts + deltas[k], bytes(blob[previous:end])))
                    size += end - previous
                    previous = end
                    k += 1
                    if len(out) >= max_records or size >= max_bytes:
                        return out
                following = next(batches, None)
                if following is not None:
                    heapq.heappush(heap, (following[0].base_offset, j, following[1], batches))
        except OSError as exc:
            raise LogIOError(f"reading stream {stream!r} failed: {exc}", reason=_errno_name(exc)) from exc

    def read_time_range(self, stream: str, t1_ms: int, t2_ms: int) -> Iterator[LogRecord]:
        """Yield durable records of ``stream`` with ``t1_ms <= ts_ms < t2_ms``.

        Windows come in time order; within a window, records come in offset
        order. The iterator reads lazily; records appended after it started
        may or may not appear.

        Raises:
            LogUsageError: bad stream name; LogIOError: the file system failed.
        """
        st = self._known(stream)
        if st is None:
            return iter(())
        return self._time_range(st, t1_ms, t2_ms)

    def _time_range(self, st: _Stream, t1: int, t2: int) -> Iterator[LogRecord]:
        keys = sorted(k for k in st.windows if k[0] < t2 and k[0] + k[1] > t1)
        name = st.name
        try:
            for key in keys:
                win = st.windows.get(key)
                if win is None:
                    continue
                for seg in list(win.segments):
                    if not seg.record_count or seg.max_ts < t1 or seg.min_ts >= t2:
                        continue
                    for header, (_, deltas, ends, blob) in self._batches(seg, seg.position_for_time(t1)):
                        if header.base_ts + header.ts_span < t1 or header.base_ts >= t2:
                            continue
                        base = header.base_offset
                        base_ts = header.base_ts
                        high = st.durable
                        previous = 0
                        for k in range(header.records):
                            end = ends[k]
                            ts = base_ts + deltas[k]
                            if t1 <= ts < t2 and base + k < high:
                                yield LogRecord(name, base + k, ts, bytes(blob[previous:end]))
                            previous = end
        except OSError as exc:
            raise LogIOError(f"reading stream {name!r} failed: {exc}", reason=_errno_name(exc)) from exc

    # ------------------------------------------------------------------ cursors

    def load_cursor(self, name: str, stream: str) -> int:
        """Return consumer ``name``'s stored offset in ``stream`` (0 if it has none)."""
        self._check()
        _check_name("cursor", name)
        _check_name("stream", stream)
        return self._cursors.get((name, stream), 0)

    def store_cursor(self, name: str, stream: str, offset: int) -> None:
        """Store consumer ``name``'s offset in ``stream`` atomically and durably.

        Writes ``<file>.tmp``, fsyncs it, renames it over the cursor file and
        fsyncs the directory, whatever the sync policy.

        Raises:
            OffsetOutOfRange: ``offset`` is beyond the stream's end.
            LogIOError: the file system failed (the log stays usable; the old cursor stands).
        """
        self._check()
        _check_name("cursor", name)
        _check_name("stream", stream)
        st = self._streams.get(stream)
        end = st.end if st is not None else 0
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= end:
            raise OffsetOutOfRange(f"cursor offset {offset!r} is outside 0..{end} for stream {stream!r}")
        directory = f"{fmt.CURSORS_DIR}/{name}"
        try:
            if not self._fs.exists(directory):
                self._fs.mkdir(directory)
                self._fs.sync_dir(fmt.CURSORS_DIR)
            self._atomic_write(f"{directory}/{stream}{fmt.CURSOR_SUFFIX}", fmt.encode_cursor(offset))
        except OSError as exc:
            raise LogIOError(f"storing cursor {name!r} for {stream!r} failed: {exc}", reason=_errno_name(exc)) from exc
        self._cursors[(name, stream)] = offset

    def _atomic_write(self, path: str, data: bytes) -> None:
        fs = self._fs
        tmp = path + fmt.TMP_SUFFIX
        if fs.exists(tmp):
            fs.unlink(tmp)
        handle = fs.open_append(tmp)
        try:
            handle.write(data)
            handle.sync()
        finally:
            handle.close()
        fs.rename(tmp, path)
        fs.sync_dir(path.rsplit("/", 1)[0])
        self._bytes_written += len(data)

    # ------------------------------------------------------------------ retention and quota

    def _window_infos(self, busy_stream: _Stream | None = None, busy: set[tuple[int, int]] = frozenset()  # type: ignore[assignment]
                      ) -> list[tuple[policy.WindowInfo, _Stream, _Window]]:
        config = self.config
        out = []
        for st in self._streams.values():
            prio = config.priority_of(st.name)
            qpol = config.quota_policy_of(st.name)
            for win in st.windows.values():
                has_pending = any(s.pend_ts for s in win.segments)
                info = policy.WindowInfo(
                    st.name, win.start, win.length, win.max_offset(), win.bytes(), win.records(),
                    prio, qpol, busy=has_pending or (st is busy_stream and win.key in busy),
                )
                out.append((info, st, win))
        return out

    def _forwarded(self) -> dict[str, int]:
        name = self.config.forward_cursor
        return {stream: offset for (cursor, stream), offset in self._cursors.items() if cursor == name}

    def enforce_retention(self, now_ms: int | Unsynced, forwarded: Mapping[str, int] | None = None) -> DeleteResult:
        """Delete whole windows that are closed, forwarded and older than ``retention_ms``.

        Args:
            now_ms: gateway wall-clock time; with UNSYNCED nothing is deleted.
            forwarded: per stream, the offset below which everything is
                forwarded; default: the ``forward_cursor`` cursors.

        Returns:
            what was deleted.
        """
        self._check()
        if now_ms is UNSYNCED:
            return DeleteResult()
        fwd = dict(forwarded) if forwarded is not None else self._forwarded()
        for st in self._streams.values():
            fwd[st.name] = min(fwd.get(st.name, 0), st.durable)
        infos = self._window_infos()
        victims = policy.retention_victims(
            [i for i, _, _ in infos], fwd, now_ms, self.config.retention_ms, self.config.late_grace_ms  # type: ignore[arg-type]
        )
        chosen = {id(v) for v in victims}
        try:
            return self._delete([(st, win) for i, st, win in infos if id(i) in chosen], [])
        except OSError as exc:
            raise self._fail(exc) from exc

    def enforce_quota(self) -> DeleteResult:
        """Bring usage back under ``quota_bytes`` (e.g. after the quota was lowered).

        Deletes forwarded windows first, then windows of ``drop_oldest``
        streams, lowest priority and oldest first. Windows of ``block`` streams
        are never dropped.
        """
        self._check()
        quota = self.config.quota_bytes
        try:
            self.sync()
            if quota is None or self._usage <= quota:
                return DeleteResult()
            infos = self._window_infos()
            forwarded = self._forwarded_clamped()
            plan = policy.quota_plan([i for i, _, _ in infos], forwarded, self._usage - quota, None, "block")
            if plan is None:  # cannot get under the quota: free what costs nothing, drop nothing
                plan = policy.QuotaPlan(
                    [i for i, _, _ in infos if not i.busy and i.max_offset < forwarded.get(i.stream, 0)], []
                )
            return self._execute(plan, infos)
        except OSError as exc:
            raise self._fail(exc) from exc

    def _forwarded_clamped(self) -> dict[str, int]:
        fwd = self._forwarded()
        return {name: min(fwd.get(name, 0), st.durable) for name, st in self._streams.items()}

    def _execute(self, plan: policy.QuotaPlan,
                 infos: list[tuple[policy.WindowInfo, _Stream, _Window]]) -> DeleteResult:
        done = {id(w) for w in plan.forwarded}
        dropped = {id(w) for w in plan.dropped}
        return self._delete(
            [(st, win) for i, st, win in infos if id(i) in done],
            [(st, win) for i, st, win in infos if id(i) in dropped],
        )

    def _make_room(self, st: _Stream, targets: set[tuple[int, int]], cost: int) -> None:
        """Free room for ``cost`` bytes by the quota policy, or raise LogFull."""
        quota = self.config.quota_bytes
        assert quota is not None
        self.sync()
        need = self._usage + self._pending_cost + cost - quota
        if need <= 0:
            return
        infos = self._window_infos(st, targets)
        plan = policy.quota_plan(
            [i for i, _, _ in infos], self._forwarded_clamped(), need,
            self.config.priority_of(st.name), self.config.quota_policy_of(st.name),
        )
        if plan is None:
            st.rejected["log_full"] += 1
            self._log_full += 1
            raise LogFull(
                f"log quota of {quota} bytes reached ({self._usage} used); stream {st.name!r} "
                f"has policy {self.config.quota_policy_of(st.name)!r} and nothing more may be dropped",
                reason="log_full",
            )
        self._execute(plan, infos)

    def _records_from(self, win: _Window, offset: int) -> int:
        """How many records of ``win`` have offsets at or above ``offset``.

        A segment wholly on one side is counted from its summary; one that
        straddles the offset (records of other windows can interleave with
        its own) is counted batch by batch from its file.
        """
        count = 0
        for seg in win.segments:
            count += len(seg.pend_ts)  # not written yet: above any forwarded offset, which stops at what is durable
            if seg.record_count == 0 or seg.last_offset < offset:
                continue
            if seg.first_offset >= offset:
                count += seg.record_count
                continue
            for header, _ in self._batches(seg, (0, seg.base)):
                count += max(0, header.last_offset + 1 - max(header.base_offset, offset))
        return count

    def _delete(self, forwarded: list[tuple[_Stream, _Window]], dropped: list[tuple[_Stream, _Window]]) -> DeleteResult:
        """Delete whole windows: state (counts, floors, intent) first, then the files."""
        victims = forwarded + dropped
        if not victims:
            return DeleteResult()
        dropped_ids = {id(win) for _, win in dropped}
        new_dropped = dict(self._dropped)
        records = dropped_records = size = 0
        forwarded_below = self._forwarded_clamped() if dropped else {}
        for st, win in victims:
            n = win.records()
            records += n
            size += win.bytes()
            if id(win) in dropped_ids:
                # Only what the bridge had not forwarded is lost: the oldest
                # window left is nearly always forwarded in part.
                lost = self._records_from(win, forwarded_below.get(st.name, 0))
                dropped_records += lost
                new_dropped[st.name] = new_dropped.get(st.name, 0) + lost
        floors = dict(self._floors)
        for st, _ in victims:
            floors[st.name] = max(floors.get(st.name, 0), st.end)
        pending = [seg.path for _, win in victims for seg in win.segments]
        self._write_state(new_dropped, floors, pending)
        self._dropped, self._floors = new_dropped, floors
        fs = self._fs
        for st, win in victims:
            for seg in win.segments:
                if seg.handle is not None:
                    seg.handle.close()
                    seg.handle = None
                seg.deleted = True
                self._unsynced.pop(id(seg), None)
                self._pending.pop(id(seg), None)
                for suffix in (fmt.LOG_SUFFIX, fmt.INDEX_SUFFIX, fmt.TIMEINDEX_SUFFIX):
                    if fs.exists(seg.path + suffix):
                        fs.unlink(seg.path + suffix)
                self._usage -= seg.disk_bytes
            if fs.exists(win.path) and not fs.listdir(win.path):
                fs.rmdir(win.path)
            st.windows.pop(win.key, None)
            if st.open.get(win.start) is win:
                del st.open[win.start]
            gone = {id(s) for s in win.segments}
            st.segments = [s for s in st.segments if id(s) not in gone]
            self._dirty_dirs.add(st.path)
        self._sync_dirs()
        self._deleted_forwarded += records - dropped_records
        return DeleteResult(len(victims), records, size, dropped_records)

    def _write_state(self, dropped: dict[str, int], floors: dict[str, int], pending: list[str]) -> None:
        state = {"version": fmt.STATE_VERSION, "dropped": dropped, "floors": floors, "pending_delete": pending}
        self._atomic_write(fmt.STATE_FILE, fmt.encode_state(state))

    # ------------------------------------------------------------------ stats and closing

    def stats(self) -> dict[str, object]:
        """Counters and gauges for metrics (works in the ERROR state too).

        Keys: ``streams`` (per stream: offsets, bytes, segments, windows,
        records held, ``dropped_by_quota``, ``rejected`` by reason,
        ``forwarded_offset`` and ``backlog_records``: durable offsets not yet
        forwarded, counting gaps), ``bytes_on_disk`` (segment and index files, in whole
        blocks: what the quota counts),
        ``pending_bytes``, ``quota_bytes``, ``payload_bytes``,
        ``bytes_written``, ``write_amplification`` (bytes written per payload
        byte), ``log_write_amplification`` (segment bytes only), ``syncs``,
        ``sync_seconds_total``, ``sync_seconds_max``, ``log_full``,
        ``deleted_forwarded_records``, ``damage_reports``, ``failed``.
        """
        fwd = self._forwarded()
        streams = {}
        for name, st in sorted(self._streams.items()):
            held = [s for s in st.segments if s.record_count]
            start = min((s.first_offset for s in held), default=st.durable)
            forwarded = fwd.get(name, 0)
            streams[name] = {
                "start_offset": start,
                "end_offset": st.end,
                "durable_offset": st.durable,
                "bytes": sum(s.disk_bytes for s in st.segments),
                "segments": len(st.segments),
                "windows": len(st.windows),
                "open_windows": len(st.open),
                "records": sum(s.record_count for s in st.segments),
                "dropped_by_quota": self._dropped.get(name, 0),
                "rejected": dict(st.rejected),
                "forwarded_offset": forwarded,
                "backlog_records": max(0, st.durable - max(forwarded, start)),
            }
        payload = self._payload_bytes
        return {
            "streams": streams,
            "bytes_on_disk": self._usage,
            "pending_bytes": self._pending_cost,
            "quota_bytes": self.config.quota_bytes,
            "records_appended": self._records_appended,
            "payload_bytes": payload,
            "bytes_written": self._bytes_written,
            "log_bytes_written": self._log_bytes_written,
            "write_amplification": self._bytes_written / payload if payload else 0.0,
            "log_write_amplification": self._log_bytes_written / payload if payload else 0.0,
            "syncs": self._syncs,
            "sync_seconds_total": self._sync_seconds,
            "sync_seconds_max": self._sync_seconds_max,
            "log_full": self._log_full,
            "deleted_forwarded_records": self._deleted_forwarded,
            "damage_reports": self._damage_count,
            "failed": self._failed is not None,
        }

    def _close_handles(self) -> None:
        for st in self._streams.values():
            for win in st.windows.values():
                for seg in win.segments:
                    if seg.handle is not None:
                        try:
                            seg.handle.close()
                        except OSError:
                            pass
                        seg.handle = None

    def close(self) -> None:
        """Sync everything, seal every active segment and close the files.

        In the ERROR state, only close the files (nothing more is written).
        Closing twice is harmless.

        Raises:
            LogIOError: the final sync failed (the files are closed anyway).
        """
        if self._closed:
            return
        try:
            if self._failed is None:
                try:
                    self.sync()
                    for st in self._streams.values():
                        for win in list(st.open.values()):
                            self._seal_segment(st, win)
                except OSError as exc:
                    raise self._fail(exc) from exc
        finally:
            self._close_handles()
            self._closed = True


def _check_name(what: str, name: str) -> None:
    if not fmt.valid_name(name):
        raise LogUsageError(f"invalid {what} name {name!r}: must be 1..64 of [A-Za-z0-9._-], not . or ..")


def _same_index(a: Segment, b: Segment) -> bool:
    return (
        a.size == b.size and a.last_offset == b.last_offset and a.record_count == b.record_count
        and a.min_ts == b.min_ts and a.max_ts == b.max_ts and a.idx_rel == b.idx_rel and a.idx_pos == b.idx_pos
        and a.time_ts == b.time_ts and a.time_rel == b.time_rel
    )
