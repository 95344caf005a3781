"""One segment: the in-memory view of a ``.log`` file and its derived indexes.

A segment knows which bytes of its file are written and which are durable,
the sparse offset and time indexes of the frames written so far (built the
same way whether frames are being appended or found again by recovery), and
the records appended to it that are not yet written (``pending``). It does no
I/O of its own except through the :class:`~core.log.FileSystem` it is handed in
:meth:`recover` and :meth:`load_sealed`.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from itertools import accumulate

from core.log import format as fmt
from core.log._fs import AppendFile, FileSystem
from core.log._scan import Damage, FrameScanner, Reporter

__all__ = ["Segment", "BATCH_OVERHEAD", "BLOCK_BYTES", "on_disk"]

#: Bytes a batch costs beyond its records: frame header and batch header.
BATCH_OVERHEAD = fmt.FRAME_HEADER_SIZE + fmt.BATCH_HEADER_SIZE

#: The unit a file system allocates files in (ext4, tmpfs pages, FAT on SD cards alike). The quota
#: counts files in these, because a small file still takes a whole block and a log has many small ones.
BLOCK_BYTES = 4096


def on_disk(size: int) -> int:
    """The bytes a file of ``size`` bytes takes on disk: whole blocks."""
    return -(-size // BLOCK_BYTES) * BLOCK_BYTES


class Segment:
    """State of one segment file.

    ``path`` is the file's path without suffix; the data is ``path + ".log"``.
    ``size`` counts bytes handed to the file, ``durable_size`` bytes known to be
    synced (always a frame boundary); reads stop at ``durable_size``.
    ``index_bytes`` is what the index files take on disk, in whole blocks.
    """

    __slots__ = (
        "stream", "path", "base", "window", "size", "durable_size", "index_bytes",
        "first_offset", "last_offset", "record_count", "min_ts", "max_ts", "damaged_bytes",
        "idx_rel", "idx_pos", "time_ts", "time_rel", "_last_idx_pos", "_last_time_pos",
        "handle", "sealed", "deleted",
        "pend_ts", "pend_payloads", "pend_runs", "pend_next", "pend_cost", "pend_bytes",
    )

    def __init__(self, stream: str, path: str, base: int, window: tuple[int, int]) -> None:
        self.stream = stream
        self.path = path
        self.base = base
        self.window = window
        self.size = 0
        self.durable_size = 0
        self.index_bytes = 0
        self.first_offset = -1
        self.last_offset = base - 1
        self.record_count = 0
        self.min_ts = 0
        self.max_ts = 0
        self.damaged_bytes = 0
        self.idx_rel = array("I")
        self.idx_pos = array("I")
        self.time_ts = array("q")
        self.time_rel = array("I")
        self._last_idx_pos = -fmt.INDEX_INTERVAL_BYTES
        self._last_time_pos = -fmt.INDEX_INTERVAL_BYTES
        self.handle: AppendFile | None = None
        self.sealed = False
        self.deleted = False
        self.pend_ts: list[int] = []
        self.pend_payloads: list[bytes] = []
        self.pend_runs: list[tuple[int, int]] = []  # (index into pend lists, first offset)
        self.pend_next = -1
        self.pend_cost = 0
        self.pend_bytes = 0

    @property
    def log_path(self) -> str:
        return self.path + fmt.LOG_SUFFIX

    @property
    def disk_bytes(self) -> int:
        """What the segment's files take on disk (``index_bytes`` is in whole blocks already)."""
        return on_disk(self.size) + self.index_bytes

    # --- indexes ----------------------------------------------------------------------

    def note_batch(self, position: int, header: fmt.BatchHeader) -> None:
        """Account for a good batch that starts at ``position`` (written or found)."""
        rel = header.base_offset - self.base
        if position - self._last_idx_pos >= fmt.INDEX_INTERVAL_BYTES:
            self.idx_rel.append(rel)
            self.idx_pos.append(position)
            self._last_idx_pos = position
        if self.record_count:
            if (position - self._last_time_pos >= fmt.INDEX_INTERVAL_BYTES
                    and (not self.time_ts or self.max_ts > self.time_ts[-1])):
                self.time_ts.append(self.max_ts)
                self.time_rel.append(rel)
                self._last_time_pos = position
            self.min_ts = min(self.min_ts, header.base_ts)
            self.max_ts = max(self.max_ts, header.base_ts + header.ts_span)
        else:
            self.first_offset = header.base_offset
            self.min_ts = header.base_ts
            self.max_ts = header.base_ts + header.ts_span
        self.last_offset = header.last_offset
        self.record_count += header.records

    def position_for(self, offset: int) -> tuple[int, int]:
        """Return (position, first offset) of the last indexed batch starting at or below ``offset``.

        (0, -1) when no entry is at or below it: read from the start.
        """
        i = bisect_right(self.idx_rel, offset - self.base) - 1
        return (self.idx_pos[i], self.base + self.idx_rel[i]) if i >= 0 else (0, -1)

    def position_for_time(self, ts_ms: int) -> tuple[int, int]:
        """Like :meth:`position_for`, for the first record with ``ts >= ts_ms`` (see docs, ".timeindex")."""
        i = bisect_right(self.time_ts, ts_ms - 1) - 1  # last entry with max_ts_before < ts_ms
        if i < 0:
            return (0, -1)
        return self.position_for(self.base + self.time_rel[i])

    def index_files(self) -> tuple[bytes, bytes]:
        """Return the (``.index``, ``.timeindex``) bytes describing the segment as it is now."""
        header = fmt.IndexHeader(
            self.size, self.last_offset, self.record_count, self.min_ts, self.max_ts,
            self.damaged_bytes, len(self.idx_rel), len(self.time_ts),
        )
        timeindex = fmt.encode_timeindex(list(zip(self.time_ts, self.time_rel)))
        index = fmt.encode_index(header, list(zip(self.idx_rel, self.idx_pos)), timeindex)
        return index, timeindex

    @classmethod
    def load_sealed(cls, fs: FileSystem, stream: str, path: str, base: int, window: tuple[int, int],
                    log_size: int) -> Segment | None:
        """Return the segment described by its index files, or None if they are missing or do not fit the log."""
        try:
            index = fs.read(path + fmt.INDEX_SUFFIX, 0, fs.size(path + fmt.INDEX_SUFFIX))
            header = fmt.decode_index_header(index)
            if header is None or header.log_size != log_size or header.record_count < 1:
                return None
            tsize = fs.size(path + fmt.TIMEINDEX_SUFFIX)
            if tsize != header.time_entries * fmt.TIME_ENTRY_SIZE or header.offset_entries < 1:
                return None
            timeindex = fs.read(path + fmt.TIMEINDEX_SUFFIX, 0, tsize)
            if not fmt.index_crc_ok(index, timeindex):
                return None
        except FileNotFoundError:
            return None
        seg = cls(stream, path, base, window)
        entries = fmt.decode_index_entries(index, header.offset_entries)
        times = fmt.decode_time_entries(timeindex, header.time_entries)
        if any(b[0] <= a[0] or b[1] <= a[1] for a, b in zip(entries, entries[1:])):
            return None
        if any(b[0] <= a[0] for a, b in zip(times, times[1:])) or entries[-1][1] >= log_size:
            return None
        seg.idx_rel = array("I", [rel for rel, _ in entries])
        seg.idx_pos = array("I", [pos for _, pos in entries])
        seg.time_ts = array("q", [ts for ts, _ in times])
        seg.time_rel = array("I", [rel for _, rel in times])
        seg.size = seg.durable_size = log_size
        seg.index_bytes = on_disk(len(index)) + on_disk(tsize)
        seg.first_offset = base + entries[0][0]
        seg.last_offset = header.last_offset
        seg.record_count = header.record_count
        seg.min_ts, seg.max_ts = header.min_ts, header.max_ts
        seg.damaged_bytes = header.damaged_bytes
        seg.sealed = True
        if seg.last_offset < seg.first_offset:
            return None
        return seg

    def recover(self, fs: FileSystem, report: Reporter, truncate: bool = True) -> int:
        """Rebuild the segment's state by reading every frame; cut off its tail.

        Mid-file damage and frames that are not usable batches are reported and
        skipped. The tail after the last good frame is truncated (when
        ``truncate``) and reported.

        Returns:
            how many bytes were (or, without ``truncate``, would be) truncated.
        """
        size = fs.size(self.log_path)
        scanner = FrameScanner(lambda pos, n: fs.read(self.log_path, pos, n), self.log_path, 0, size, report)
        for position, frame_type, body in scanner:
            reason = None
            header = None
            if frame_type != fmt.TYPE_BATCH:
                reason = "unknown_type"
            else:
                decoded = fmt.decode_batch(body)
                if decoded is None:
                    reason = "bad_batch"
                else:
                    header = decoded[0]
                    if header.base_offset <= self.last_offset or header.base_offset < self.base:
                        reason = "offset_order"
            if reason is not None or header is None:
                scanner.report(Damage(self.log_path, position, fmt.FRAME_HEADER_SIZE + len(body), reason or "bad_batch"))
                continue
            self.note_batch(position, header)
        self.damaged_bytes = scanner.damaged_bytes
        truncated = 0
        if scanner.tail is not None:
            truncated = scanner.tail.dropped_bytes
            action = "truncated" if truncate else "would_truncate"
            report(Damage(self.log_path, scanner.tail.position, truncated, scanner.tail.reason, tail=True, action=action))
            if truncate:
                fs.truncate(self.log_path, scanner.good_end)
        self.size = self.durable_size = scanner.good_end
        return truncated

    # --- pending records --------------------------------------------------------------

    def add(self, offset: int, ts_ms: int, payload: bytes) -> int:
        """Buffer one record; return its estimated cost in bytes on disk."""
        cost = len(payload) + fmt.BATCH_RECORD_OVERHEAD
        if offset != self.pend_next:
            self.pend_runs.append((len(self.pend_ts), offset))
            cost += BATCH_OVERHEAD
        elif self.pend_bytes // fmt.BATCH_SPLIT_BYTES != (self.pend_bytes + len(payload)) // fmt.BATCH_SPLIT_BYTES:
            cost += BATCH_OVERHEAD
        self.pend_next = offset + 1
        self.pend_ts.append(ts_ms)
        self.pend_payloads.append(payload)
        self.pend_bytes += len(payload)
        self.pend_cost += cost
        return cost

    def add_many(self, first: int, times: list[int], payloads: list[bytes], nbytes: int) -> int:
        """Buffer records with consecutive offsets from ``first``; return their estimated cost."""
        cost = nbytes + fmt.BATCH_RECORD_OVERHEAD * len(times)
        if first != self.pend_next:
            self.pend_runs.append((len(self.pend_ts), first))
            cost += BATCH_OVERHEAD
        split = fmt.BATCH_SPLIT_BYTES
        cost += BATCH_OVERHEAD * ((self.pend_bytes + nbytes) // split - self.pend_bytes // split)
        self.pend_next = first + len(times)
        self.pend_ts.extend(times)
        self.pend_payloads.extend(payloads)
        self.pend_bytes += nbytes
        self.pend_cost += cost
        return cost

    def take_batches(self) -> list[tuple[int, list[int], list[bytes]]]:
        """Remove the pending records and return them as (base offset, times, payloads) batches."""
        ts_all, pay_all = self.pend_ts, self.pend_payloads
        runs = self.pend_runs + [(len(ts_all), -1)]
        batches: list[tuple[int, list[int], list[bytes]]] = []
        for (start, first), (stop, _) in zip(runs, runs[1:]):
            ts, payloads = ts_all[start:stop], pay_all[start:stop]
            batches.extend(_split(first, ts, payloads))
        self.pend_ts, self.pend_payloads, self.pend_runs = [], [], []
        self.pend_next = -1
        self.pend_cost = 0
        self.pend_bytes = 0
        return batches


def _split(first: int, ts: list[int], payloads: list[bytes]) -> list[tuple[int, list[int], list[bytes]]]:
    """Cut a run of consecutive records into batches of at most BATCH_SPLIT_BYTES payload and MAX_TS_SPAN."""
    out: list[tuple[int, list[int], list[bytes]]] = []
    ends = list(accumulate(map(len, payloads)))
    start = 0
    done = 0
    n = len(ts)
    while start < n:
        # The first record past the byte limit closes the batch (a batch always has one record).
        stop = bisect_right(ends, done + fmt.BATCH_SPLIT_BYTES, start + 1, n)
        stop = max(stop, start + 1)
        chunk = ts[start:stop]
        if max(chunk) - min(chunk) > fmt.MAX_TS_SPAN:
            low = high = chunk[0]
            stop = start + 1
            for t in chunk[1:]:
                low, high = min(low, t), max(high, t)
                if high - low > fmt.MAX_TS_SPAN:
                    break
                stop += 1
            chunk = ts[start:stop]
        out.append((first + start, chunk, payloads[start:stop]))
        done = ends[stop - 1]
        start = stop
    return out
