"""Exceptions of the durable log (core.log).

Every one derives from :class:`LogError` (catch-all for the log) and from
core's :class:`~core.errors.LocalError` (we misused the API) or
:class:`~core.errors.RemoteError` (something outside the process: a record's
time, the disk, the quota).
"""

from __future__ import annotations

from core.errors import CoreError, LocalError, RemoteError

__all__ = [
    "LogError", "InvalidLogConfig", "LogUsageError", "OffsetOutOfRange", "LogFailed",
    "LogIOError", "LogFull", "RecordRejected",
]


class LogError(CoreError):
    """Base class of every error raised by ``core.log``."""


class InvalidLogConfig(LogError, LocalError):
    """A :class:`~core.log.LogConfig` field is out of range; the message names field, value and what is allowed."""


class LogUsageError(LogError, LocalError):
    """A call broke the log's API contract (bad name, payload type or size, call after close)."""


class OffsetOutOfRange(LogUsageError):
    """An offset beyond the stream's end was asked for (or stored as a cursor)."""


class LogFailed(LogError, LocalError):
    """The log is in its ERROR state after a failed write or fsync; close it and open it again."""


class LogIOError(LogError, RemoteError):
    """The file layer failed; ``reason`` is the errno name (``"ENOSPC"``, ``"EIO"``), the cause is chained."""


class LogFull(LogError, RemoteError):
    """The byte quota is reached and the stream's policy (or lack of droppable data) refuses the append.

    Nothing was written. ``reason`` is ``"log_full"``.
    """


class RecordRejected(LogError, RemoteError):
    """The late/early/time rule refused a record; ``reason`` is ``"late"``, ``"early"`` or ``"bad_time"``.

    Nothing was written; the caller keeps the record (the intake dead-letters it
    with this reason).
    """
