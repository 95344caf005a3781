"""The durable edge log: time-partitioned segments with group commit, recovery, retention and quota.

Format: docs/log_format.md (constants in :mod:`core.log.format`). The log runs
on an injected :class:`FileSystem`; ``edge.logstore`` supplies the real one.
"""

from core.log._config import EARLY_POLICIES, LATE_POLICIES, QUOTA_POLICIES, SYNC_POLICIES, UNSYNCED, LogConfig, Unsynced
from core.log._errors import (
    InvalidLogConfig, LogError, LogFailed, LogFull, LogIOError, LogUsageError, OffsetOutOfRange, RecordRejected,
)
from core.log._fs import AppendFile, FileSystem
from core.log._fsck import FsckReport, fsck
from core.log._log import DeleteResult, Log, LogRecord, RecoveryReport
from core.log._policy import should_roll
from core.log._scan import Damage, Reporter

__all__ = [
    "LogConfig", "UNSYNCED", "Unsynced", "SYNC_POLICIES", "LATE_POLICIES", "EARLY_POLICIES", "QUOTA_POLICIES",
    "Log", "LogRecord", "RecoveryReport", "DeleteResult", "Damage", "Reporter",
    "FileSystem", "AppendFile", "fsck", "FsckReport", "should_roll",
    "LogError", "InvalidLogConfig", "LogUsageError", "OffsetOutOfRange", "LogFailed", "LogIOError", "LogFull",
    "RecordRejected",
]
