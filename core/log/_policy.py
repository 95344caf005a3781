"""Pure decisions of the log: rolling, window closing, early data, retention and quota.

Every function here looks only at its arguments (sizes, offsets, times passed
in) and returns a decision; the log carries them out. That keeps the rules of
docs/log_format.md ("Late and early data", "Retention and quota") testable
without files or clocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from core.log import format as fmt

__all__ = [
    "WindowInfo", "should_roll", "window_closed", "is_early", "sealable",
    "retention_victims", "quota_plan", "QuotaPlan",
]


class WindowInfo(NamedTuple):
    """What the policies need to know about one (stream, window)."""

    stream: str
    start_ms: int
    length_ms: int
    max_offset: int       # largest offset held (or pending) in the window
    bytes: int            # segment and index bytes on disk
    records: int          # records held
    priority: int
    quota_policy: str
    busy: bool = False    # has pending records, or is the window being appended to

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.length_ms


def should_roll(size: int, pending_bytes: int, cost: int, segment_bytes: int,
                next_relative_offset: int, has_records: bool) -> bool:
    """True if the next record must go to a new segment.

    A segment rolls when the record would take it past ``segment_bytes``, or
    when its relative offsets or positions would no longer fit the indexes'
    u32 fields. An empty segment never rolls (a record larger than the limit
    still needs a home). There is no age-based roll: windows close by time
    (:func:`window_closed`), which bounds a segment's age, and no jitter: each
    (stream, window) rolls on its own bytes.
    """
    if not has_records:
        return False
    end = size + pending_bytes + cost
    return end > segment_bytes or end > fmt.MAX_RELATIVE or next_relative_offset > fmt.MAX_RELATIVE


def window_closed(start_ms: int, length_ms: int, now_ms: int, grace_ms: int) -> bool:
    """True once gateway time has passed the window's end by the grace period."""
    return now_ms >= start_ms + length_ms + grace_ms


def is_early(ts_ms: int, now_ms: int, bound_ms: int) -> bool:
    """True if device time is ahead of gateway time by more than the bound."""
    return ts_ms > now_ms + bound_ms


def sealable(start_ms: int, length_ms: int, last_append_ms: int, now_ms: int, grace_ms: int) -> bool:
    """True if an open window's active segment should be sealed now.

    The window must be closed and must not have been appended to for the grace
    period either, so that a burst of late records reopening a window shares one
    new segment instead of sealing one segment per record.
    """
    return window_closed(start_ms, length_ms, now_ms, grace_ms) and now_ms >= last_append_ms + grace_ms


def retention_victims(windows: Iterable[WindowInfo], forwarded: Mapping[str, int], now_ms: int,
                      retention_ms: int, grace_ms: int) -> list[WindowInfo]:
    """Windows retention deletes: closed, wholly forwarded, and ended ``retention_ms`` ago."""
    return [
        w for w in windows
        if not w.busy
        and w.max_offset < forwarded.get(w.stream, 0)
        and window_closed(w.start_ms, w.length_ms, now_ms, grace_ms)
        and w.end_ms + retention_ms <= now_ms
    ]


class QuotaPlan(NamedTuple):
    forwarded: list[WindowInfo]  # deleted, not counted as dropped
    dropped: list[WindowInfo]    # deleted and counted as dropped

    @property
    def bytes(self) -> int:
        return sum(w.bytes for w in self.forwarded) + sum(w.bytes for w in self.dropped)


def quota_plan(windows: Iterable[WindowInfo], forwarded: Mapping[str, int], need: int,
               priority: int | None, policy: str) -> QuotaPlan | None:
    """Choose windows to delete to free ``need`` bytes, or None if that is impossible.

    Order (docs/log_format.md, "Retention and quota"): forwarded windows first,
    oldest first, any stream; then windows of ``drop_oldest`` streams, by
    (priority, window start, stream): of lower priority than the appending
    stream, and of equal priority too when its own policy is ``drop_oldest``.
    ``priority=None`` means no appending stream (an explicit quota enforcement):
    every ``drop_oldest`` stream is a candidate. Busy windows never are.
    """
    pool = [w for w in windows if not w.busy]
    done = [w for w in pool if w.max_offset < forwarded.get(w.stream, 0)]
    done.sort(key=lambda w: (w.start_ms, w.stream))
    plan = QuotaPlan([], [])
    freed = 0
    for w in done:
        if freed >= need:
            return plan
        plan.forwarded.append(w)
        freed += w.bytes
    if freed >= need:
        return plan
    taken = {id(w) for w in plan.forwarded}

    def eligible(w: WindowInfo) -> bool:
        if id(w) in taken or w.quota_policy != "drop_oldest":
            return False
        if priority is None:
            return True
        return w.priority < priority or (policy == "drop_oldest" and w.priority == priority)

    candidates = sorted((w for w in pool if eligible(w)), key=lambda w: (w.priority, w.start_ms, w.stream))
    for w in candidates:
        if freed >= need:
            break
        plan.dropped.append(w)
        freed += w.bytes
    return plan if freed >= need else None
