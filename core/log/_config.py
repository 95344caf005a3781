"""The log's one frozen, validated configuration object, and the UNSYNCED clock sentinel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from core.log import format as fmt
from core.log._errors import InvalidLogConfig
from core.timewindow import DEFAULT_WINDOW_MS, MAX_WINDOW_MS, MIN_WINDOW_MS

__all__ = [
    "LogConfig", "UNSYNCED", "Unsynced",
    "SYNC_POLICIES", "LATE_POLICIES", "EARLY_POLICIES", "QUOTA_POLICIES",
]

SYNC_POLICIES = ("always", "interval", "never")
LATE_POLICIES = ("accept", "reject")
EARLY_POLICIES = ("accept", "reject")
QUOTA_POLICIES = ("block", "drop_oldest")


class Unsynced:
    """Type of :data:`UNSYNCED`."""

    _instance: Unsynced | None = None

    def __new__(cls) -> Unsynced:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSYNCED"


#: Pass as ``now_ms`` while the gateway's clock is not synchronised: no early
#: check, no window closes by time, no retention by age.
UNSYNCED: Final = Unsynced()


def _int(name: str, value: object, low: int, high: int | None, what: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"
        raise InvalidLogConfig(f"LogConfig.{name} = {value!r} is not allowed: must be {allowed}{what}")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidLogConfig(f"LogConfig.{name} = {value!r} is not allowed: must be one of {', '.join(allowed)}")


@dataclass(frozen=True, slots=True)
class LogConfig:
    """How the durable log partitions, syncs, keeps and bounds data (docs/log_format.md).

    Attributes:
        window_ms: length of a time window (60 000 .. 86 400 000 ms, default one hour).
        segment_bytes: a segment rolls once it holds this many bytes (64 KiB .. 1 GiB).
        sync_policy: ``"always"``, ``"interval"`` (default) or ``"never"``.
        sync_interval_ms: group-commit period for ``interval`` (and write-out period for ``never``), 1 .. 60 000.
        late_policy: ``"accept"`` (default: reopen the record's window) or ``"reject"`` (raise
            RecordRejected("late") for the caller to dead-letter) for records whose window is closed.
        late_grace_ms: a window closes this long after its end, by gateway time (default 5 minutes).
        early_policy: ``"reject"`` (default) or ``"accept"`` for records whose device time is more
            than ``early_bound_ms`` ahead of the gateway's.
        early_bound_ms: default 10 minutes.
        max_open_windows: windows per stream with an active segment (1 .. 64, default 4).
        retention_ms: forwarded windows are deleted once they ended this long ago (default 7 days).
        quota_bytes: bound on segment + index bytes (each file counted in whole 4 KiB blocks, as the
            disk allocates it), or None (default) for no bound; at least 1 MiB.
        quota_policy: default per-stream policy at the quota, ``"block"`` or ``"drop_oldest"``.
        quota_policies: per-stream overrides of ``quota_policy``.
        priorities: per-stream priority (default 0); lower-priority data is dropped first.
        forward_cursor: the cursor whose offsets count as "forwarded" for retention and quota.
    """

    window_ms: int = DEFAULT_WINDOW_MS
    segment_bytes: int = 8 * 1024 * 1024
    sync_policy: str = "interval"
    sync_interval_ms: int = 20
    late_policy: str = "accept"
    late_grace_ms: int = 300_000
    early_policy: str = "reject"
    early_bound_ms: int = 600_000
    max_open_windows: int = 4
    retention_ms: int = 7 * 86_400_000
    quota_bytes: int | None = None
    quota_policy: str = "block"
    quota_policies: Mapping[str, str] = field(default_factory=dict)
    priorities: Mapping[str, int] = field(default_factory=dict)
    forward_cursor: str = "bridge"

    def __post_init__(self) -> None:
        _int("window_ms", self.window_ms, MIN_WINDOW_MS, MAX_WINDOW_MS)
        _int("segment_bytes", self.segment_bytes, 64 * 1024, 1024 * 1024 * 1024)
        _choice("sync_policy", self.sync_policy, SYNC_POLICIES)
        _int("sync_interval_ms", self.sync_interval_ms, 1, 60_000)
        _choice("late_policy", self.late_policy, LATE_POLICIES)
        _int("late_grace_ms", self.late_grace_ms, 0, 7 * 86_400_000)
        _choice("early_policy", self.early_policy, EARLY_POLICIES)
        _int("early_bound_ms", self.early_bound_ms, 0, None)
        _int("max_open_windows", self.max_open_windows, 1, 64)
        _int("retention_ms", self.retention_ms, 0, None)
        if self.quota_bytes is not None:
            _int("quota_bytes", self.quota_bytes, 1024 * 1024, None, " (or None for no quota)")
        _choice("quota_policy", self.quota_policy, QUOTA_POLICIES)
        if not fmt.valid_name(self.forward_cursor):
            raise InvalidLogConfig(
                f"LogConfig.forward_cursor = {self.forward_cursor!r} is not allowed: must be 1..64 of [A-Za-z0-9._-]"
            )
        if not isinstance(self.quota_policies, Mapping) or not isinstance(self.priorities, Mapping):
            raise InvalidLogConfig("LogConfig.quota_policies and LogConfig.priorities must be mappings of stream names")
        for stream, policy in self.quota_policies.items():
            if not fmt.valid_name(stream):
                raise InvalidLogConfig(f"LogConfig.quota_policies has an invalid stream name {stream!r}")
            _choice(f"quota_policies[{stream!r}]", policy, QUOTA_POLICIES)
        for stream, priority in self.priorities.items():
            if not fmt.valid_name(stream):
                raise InvalidLogConfig(f"LogConfig.priorities has an invalid stream name {stream!r}")
            _int(f"priorities[{stream!r}]", priority, -(2**31), 2**31 - 1)
        object.__setattr__(self, "quota_policies", MappingProxyType(dict(self.quota_policies)))
        object.__setattr__(self, "priorities", MappingProxyType(dict(self.priorities)))

    def quota_policy_of(self, stream: str) -> str:
        return self.quota_policies.get(stream, self.quota_policy)

    def priority_of(self, stream: str) -> int:
        return self.priorities.get(stream, 0)
