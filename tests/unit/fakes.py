"""Fakes shared by unit tests: a log whose syncs the test controls."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class FakeRecord:
    offset: int
    payload: bytes


class GatedLog:
    """An in-memory log whose records become durable only when ``allow_sync`` is set.

    ``records[stream]`` is the list of payloads appended, in offset order.
    """

    def __init__(self) -> None:
        self.records: dict[str, list[bytes]] = {}
        self.durable: dict[str, int] = {}
        self.allow_sync = threading.Event()
        self.syncs = 0

    def append(self, stream: str, ts_ms: int, payload: bytes, now_ms: int) -> int:
        records = self.records.setdefault(stream, [])
        records.append(payload)
        return len(records) - 1

    def append_many(self, stream: str, records: list[tuple[int, bytes]], now_ms: int) -> range:
        offsets = [self.append(stream, ts_ms, payload, now_ms) for ts_ms, payload in records]
        return range(offsets[0], offsets[-1] + 1)

    def maybe_sync(self, now_ms: int) -> bool:
        if not self.allow_sync.is_set():
            return False
        self.sync()
        return True

    def sync(self) -> None:
        self.syncs += 1
        self.durable = {s: len(r) for s, r in self.records.items()}

    def durable_offset(self, stream: str) -> int:
        return self.durable.get(stream, 0)

    def streams(self) -> list[str]:
        return list(self.records)

    def start_offset(self, stream: str) -> int:
        return 0

    def end_offset(self, stream: str) -> int:
        return len(self.records.get(stream, []))

    def read(self, stream: str, offset: int, max_records: int = 1000) -> list[FakeRecord]:
        payloads = self.records.get(stream, [])[offset : offset + max_records]
        return [FakeRecord(offset + i, p) for i, p in enumerate(payloads)]
