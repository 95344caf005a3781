"""Deduplication: drop samples the gateway already has, by (device, boot, seq).

Strategy
--------
QoS 1 redelivers a message whose acknowledgement was lost, and firmware
replays its ring buffer after a reconnect; both send samples again with the
same device, boot id and sequence number. For each (device, boot) the
gateway keeps a sliding window over the last ``window`` sequence numbers, as
IPsec does against replays (RFC 4303 section 3.4.3): the highest number seen,
``top``, and a bitmap in which bit *i* says ``top - i`` was seen. A sample
whose number

* is above ``top`` is new: the window slides up;
* is inside the window is new if its bit is clear (late or reordered), else
  a duplicate;
* is below the window cannot be judged: it passes, and is counted as
  ``stale`` (a very old replay, or a device that restarted its counter without
  a new boot id).

Samples without a sequence number pass unchanged. Samples with a sequence
number but no boot id are judged more carefully, because a sender that
restarts (a test publisher, a device without a boot id) reuses numbers: the
window then remembers a fingerprint of each sample (its time and values), and
only a sample equal to the one remembered under its number is a duplicate.

Memory is bounded: at most ``max_keys`` (device, boot) windows, the least
recently used dropped first (counted as ``evicted``). A window costs about
``window / 8`` bytes plus ~150 bytes of overhead; a fingerprint window about
100 bytes per remembered number.

Readings without a sequence number but with the device's own time are judged
by :class:`ContentDedup`: two readings of one series (device, metric) at one
device time with one value are the same reading, so at least the last
``max_keys // 2`` such keys (at most ``max_keys``) are remembered and a repeat
is a duplicate. Readings with neither a
sequence number nor a device time cannot be told from new ones and pass.

The windows live in memory, and are rebuilt after a restart from the tail of
the log (every reading record of a numbered sample carries its boot, sequence
number and fingerprint; see :meth:`core.intake.Intake.remember`), so a
message written to the log but not acknowledged before a crash is recognised
when the broker delivers it again.

Pure: no clock, no I/O. Not thread-safe: one owner (the writer) calls it.
"""

from __future__ import annotations

from collections import OrderedDict

from core.errors import LocalError
from core.reading import TIME_DEVICE, Reading

__all__ = ["Dedup", "ContentDedup", "NEW", "DUPLICATE", "STALE"]

NEW = 0
DUPLICATE = 1
STALE = 2

Key = tuple[str, "int | str | None"]


class _Window:
    __slots__ = ("top", "bits")

    def __init__(self, top: int) -> None:
        self.top = top
        self.bits = 1


class Dedup:
    """Sliding windows of sequence numbers per (device, boot).

    Args:
        window: how many sequence numbers below the highest one are remembered.
        max_keys: how many (device, boot) windows are kept.
        unbooted_window: how many numbers a window without a boot id remembers.
    """

    def __init__(self, window: int = 1024, max_keys: int = 4096, unbooted_window: int = 256) -> None:
        if window < 1 or max_keys < 1 or unbooted_window < 1:
            raise LocalError("Dedup window sizes and max_keys must be positive")
        self.window = window
        self.max_keys = max_keys
        self.unbooted_window = unbooted_window
        self._mask = (1 << window) - 1
        self._windows: OrderedDict[Key, _Window | dict[int, int]] = OrderedDict()
        self.duplicates = 0
        self.stale = 0
        self.evicted = 0

    def check(self, device: str, boot: int | str | None, seq: int | None, fingerprint: int = 0) -> int:
        """Judge one sample and remember it.

        Args:
            device: the sample's device.
            boot: its boot id, or None.
            seq: its sequence number, or None (then it is always :data:`NEW`).
            fingerprint: a hash of the sample's content; used only without a boot id.

        Returns:
            :data:`NEW` (keep it; now remembered), :data:`DUPLICATE` (drop it;
            counted) or :data:`STALE` (keep it; below the window, counted).
        """
        if seq is None:
            return NEW
        key = (device, boot)
        state = self._windows.get(key)
        if state is None:
            self._windows[key] = {seq: fingerprint} if boot is None else _Window(seq)
            if len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
                self.evicted += 1
            return NEW
        self._windows.move_to_end(key)
        if isinstance(state, dict):
            return self._check_fingerprint(state, seq, fingerprint)
        top = state.top
        if seq > top:
            shift = seq - top
            state.bits = ((state.bits << shift) | 1) & self._mask if shift < self.window else 1
            state.top = seq
            return NEW
        offset = top - seq
        if offset >= self.window:
            self.stale += 1
            return STALE
        bit = 1 << offset
        if state.bits & bit:
            self.duplicates += 1
            return DUPLICATE
        state.bits |= bit
        return NEW

    def fresh_columns(self, devices: list[str], boots: list[int | str | None], seqs: list[int],
                      fingerprints: list[int]) -> list[bool] | None:
        """Judge numbered samples given as columns, in order, as :meth:`check` would one by one.

        A run of one booted device with consecutive numbers above its
        window's highest (what a node's pack is) is judged and remembered in
        one step: it is all new, and its window's bits shift once.

        Returns:
            None if no sample is a duplicate (all are now remembered; stale
            ones counted), else whether each one is kept.
        """
        count = len(seqs)
        device, boot, first, last = devices[0], boots[0], seqs[0], seqs[-1]
        if (boot is not None and last - first == count - 1 and devices.count(device) == count
                and boots.count(boot) == count and seqs == list(range(first, last + 1))):
            key = (device, boot)
            state = self._windows.get(key)
            if state is None:
                self.check(device, boot, first)
                state = self._windows[key]
                first += 1
            if state.__class__ is _Window and first > state.top:  # type: ignore[union-attr]
                self._windows.move_to_end(key)
                shift = last - state.top  # type: ignore[union-attr]
                fresh = (1 << (last - first + 1)) - 1
                # As ``count`` single steps would leave it: the old bits moved up by the whole jump.
                state.bits = ((state.bits << shift) | fresh) & self._mask if shift < self.window else fresh & self._mask  # type: ignore[union-attr]
                state.top = last  # type: ignore[union-attr]
                return None
        verdicts = list(map(self.check, devices, boots, seqs, fingerprints))
        if DUPLICATE not in verdicts:
            return None
        return [verdict != DUPLICATE for verdict in verdicts]

    def _check_fingerprint(self, seen: dict[int, int], seq: int, fingerprint: int) -> int:
        if seen.get(seq) == fingerprint:
            self.duplicates += 1
            return DUPLICATE
        seen.pop(seq, None)
        seen[seq] = fingerprint
        if len(seen) > self.unbooted_window:
            del seen[next(iter(seen))]
        return NEW

    def __len__(self) -> int:
        return len(self._windows)


class _Values(list):  # type: ignore[type-arg]
    """Several values seen at one device time of one series (distinct readings at one time)."""


_MISSING = object()


def _holds(times: dict[int, object] | None, ts_ms: int, value: object) -> bool:
    """Whether ``times`` (one series' map of device time to value) has this value at this time."""
    if times is None:
        return False
    seen = times.get(ts_ms, _MISSING)
    if seen is _MISSING:
        return False
    # The class keeps 1, 1.0 and True apart (they are equal).
    if seen.__class__ is _Values:
        return any(v.__class__ is value.__class__ and v == value for v in seen)  # type: ignore[attr-defined]
    return seen.__class__ is value.__class__ and seen == value


class ContentDedup:
    """The most recent readings without sequence numbers, by content.

    A key is (device, metric, device time, value type, value). Only readings
    timed by the device's own clock are judged: a time the gateway supplied
    changes on every delivery, so it identifies nothing.

    How the keys are kept: per series (device, metric), a map from device time
    to the value seen at that time (a list of them when distinct readings share
    a time). So a pack of one series, the common case, is judged with one
    disjointness test of its times against the series' map, and remembered
    with one update: integers hash to themselves, and no object is made per
    reading. The maps come in two generations: new keys go into the current
    one, and when it holds ``max_keys // 2`` keys it becomes the previous one
    and the old previous one is forgotten. So at least the last
    ``max_keys // 2`` keys, and at most ``max_keys``, are remembered.

    Args:
        max_keys: at most how many recent keys are remembered (at least half of them).
    """

    def __init__(self, max_keys: int = 65_536) -> None:
        if max_keys < 2:
            raise LocalError("ContentDedup max_keys must be at least 2")
        self.max_keys = max_keys
        self._generation = max_keys // 2
        self._current: dict[tuple[str, str], dict[int, object]] = {}
        self._previous: dict[tuple[str, str], dict[int, object]] = {}
        self._current_keys = 0
        self._previous_keys = 0
        self.duplicates = 0

    def check(self, device: str, metric: str, ts_ms: int, value: object) -> int:
        """:data:`NEW` (and now remembered) or :data:`DUPLICATE` (counted)."""
        series = (device, metric)
        if _holds(self._current.get(series), ts_ms, value) or _holds(self._previous.get(series), ts_ms, value):
            self.duplicates += 1
            return DUPLICATE
        self._remember(series, ts_ms, value)
        return NEW

    def _remember(self, series: tuple[str, str], ts_ms: int, value: object) -> None:
        times = self._current.get(series)
        if times is None:
            times = self._current[series] = {}
        seen = times.get(ts_ms, _MISSING)
        if seen is _MISSING:
            times[ts_ms] = value
        elif seen.__class__ is _Values:
            seen.append(value)  # type: ignore[attr-defined]
        else:
            times[ts_ms] = _Values((seen, value))
        self._current_keys += 1
        if self._current_keys >= self._generation:
            self._turn()

    def _turn(self) -> None:
        self._previous, self._current = self._current, {}
        self._previous_keys, self._current_keys = self._current_keys, 0

    def fresh(self, readings: list[Reading]) -> list[Reading]:
        """The readings that are not duplicates, in order; each is judged as :meth:`check` judges it.

        Only readings timed by the device's own clock are judged (and
        remembered); the others are kept as they are.
        """
        return [r for r in readings
                if r.time_source != TIME_DEVICE or self.check(r.device, r.metric, r.ts_ms, r.value) == NEW]

    def fresh_columns(self, devices: list[str], metrics: list[str], times: list[int],
                      values: list[object], series: tuple[str, str] | None = None) -> list[bool] | None:
        """Judge device-timed readings given as columns, in order, as :meth:`check` would one by one.

        ``series``: the one (device, metric) of every reading, if the caller
        knows they are all of one; found out here otherwise.

        Returns:
            None if every reading is new (all are now remembered), else
            whether each one is new.
        """
        count = len(times)
        if series is None and len(set(devices)) == 1 and len(set(metrics)) == 1:
            series = (devices[0], metrics[0])
        if series is not None and count < self._generation - self._current_keys:
            current = self._current.get(series)
            previous = self._previous.get(series)
            if ((current is None or current.keys().isdisjoint(times))
                    and (previous is None or previous.keys().isdisjoint(times))):
                if current is None:
                    current = self._current[series] = {}
                before = len(current)
                current.update(zip(times, values))
                if len(current) - before == count:
                    self._current_keys += count
                    return None
                # A time repeated inside the pack: undo, and judge reading by reading.
                for ts_ms in times:
                    current.pop(ts_ms, None)
        return [self.check(device, metric, ts_ms, value) == NEW
                for device, metric, ts_ms, value in zip(devices, metrics, times, values)]

    def __len__(self) -> int:
        return self._current_keys + self._previous_keys
