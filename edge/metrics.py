"""Counters, gauges and histograms, rendered in the Prometheus text format (version 0.0.4).

Thread-safe: the MQTT network thread, the log writer and the bridge all count.
A histogram keeps one count per bucket (non-cumulative inside, cumulative when
rendered, as the format wants), plus the sum and the count of observations.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Mapping

__all__ = ["Metrics", "Histogram", "LATENCY_BUCKETS", "SIZE_BUCKETS"]

#: Seconds, from 100 µs (a fast SSD fsync) to 10 s (a dying SD card).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Counts (readings per batch), powers of about 2.5.
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Mapping[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Histogram:
    """The state of one histogram series: counts per bucket, sum and count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        index = bisect.bisect_left(self.bounds, value)
        self.counts[index] += times
        self.sum += value * times
        self.count += times

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) for every bucket, ending with +Inf."""
        out = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            running += count
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float:
        """An estimate of the q-quantile (upper bound of the bucket holding it), 0.0 if empty."""
        if not self.count:
            return 0.0
        rank = q * self.count
        for bound, running in self.cumulative():
            if running >= rank:
                return bound if bound != float("inf") else self.bounds[-1]
        return self.bounds[-1]


class Metrics:
    """A registry of named series, each with a set of labels.

    ``describe`` gives a metric its TYPE and HELP lines; ``describe_histogram``
    also fixes its buckets. Undescribed metrics render as ``untyped``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, Labels], float] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._buckets: dict[str, tuple[float, ...]] = {}
        self._histograms: dict[tuple[str, Labels], Histogram] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)

    def describe_histogram(self, name: str, text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"histogram {name}: buckets must rise strictly, got {buckets!r}")
        self._help[name] = ("histogram", text)
        self._buckets[name] = tuple(float(b) for b in buckets)

    def observe(self, name: str, value: float, labels: Mapping[str, str] | None = None, times: int = 1) -> None:
        """Add ``times`` observations of ``value`` to a histogram (described first, else latency buckets)."""
        key = (name, _labels(labels))
        with self._lock:
            histogram = self._histograms.get(key)
            if histogram is None:
                histogram = self._histograms[key] = Histogram(self._buckets.get(name, LATENCY_BUCKETS))
            histogram.observe(value, times)

    def histogram(self, name: str, labels: Mapping[str, str] | None = None) -> Histogram | None:
        """A copy of one histogram series, or None if nothing was observed."""
        with self._lock:
            found = self._histograms.get((name, _labels(labels)))
            if found is None:
                return None
            copy = Histogram(found.bounds)
            copy.counts, copy.sum, copy.count = list(found.counts), found.sum, found.count
            return copy

    def snapshot(self) -> dict[tuple[str, Labels], float]:
        """Every counter and gauge value, keyed by (name, labels)."""
        with self._lock:
            return dict(self._values)

    def inc(self, name: str, amount: float = 1, labels: Mapping[str, str] | None = None) -> None:
        key = (name, _labels(labels))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def counter(self, name: str, labels: Mapping[str, str] | None = None) -> Callable[[float], None]:
        """``inc`` of one series, its key worked out once: for a count taken per message."""
        key = (name, _labels(labels))
        lock, values = self._lock, self._values

        def inc(amount: float = 1) -> None:
            with lock:
                values[key] = values.get(key, 0) + amount

        return inc

    def set(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._values[(name, _labels(labels))] = value

    def get(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        with self._lock:
            return self._values.get((name, _labels(labels)), 0)

    def total(self, name: str) -> float:
        """The sum over every label set of one metric."""
        with self._lock:
            return sum(v for (n, _), v in self._values.items() if n == name)

    def render(self) -> str:
        """Every series in the Prometheus text format, metrics sorted by name."""
        with self._lock:
            items: list[tuple[tuple[str, Labels], float | Histogram]] = list(self._values.items())
            for key, histogram in self._histograms.items():
                copy = Histogram(histogram.bounds)
                copy.counts, copy.sum, copy.count = list(histogram.counts), histogram.sum, histogram.count
                items.append((key, copy))
        items.sort(key=lambda item: item[0])
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in items:
            if name not in seen:
                seen.add(name)
                kind, text = self._help.get(name, ("untyped", name))
                lines += [f"# HELP {name} {_escape_help(text)}", f"# TYPE {name} {kind}"]
            if isinstance(value, Histogram):
                for bound, running in value.cumulative():
                    lines.append(_series(f"{name}_bucket", (*labels, ("le", _number(bound))), running))
                lines.append(_series(f"{name}_sum", labels, value.sum))
                lines.append(_series(f"{name}_count", labels, value.count))
            else:
                lines.append(_series(name, labels, value))
        return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _series(name: str, labels: Labels, value: float) -> str:
    label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{label_text}}} {_number(value)}" if label_text else f"{name} {_number(value)}"
