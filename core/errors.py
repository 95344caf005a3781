"""The one exception hierarchy of ``core``.

As in h11, errors come in two kinds:

* :class:`LocalError`: we misused an API (a programming error in edge/ or
  bridge/, or a call on an object that is already in its ERROR state).
* :class:`RemoteError`: bytes or values that came from outside (a sensor, a
  file on disk, a peer) are not what the format allows. These carry a short
  machine-readable ``reason`` (used as a metric label and in dead letters) and,
  where it applies, the ``field`` that was wrong.

Shells (edge/, bridge/) catch :class:`CoreError` at their boundary; nothing in
core returns error codes.
"""

from __future__ import annotations

__all__ = ["CoreError", "LocalError", "RemoteError", "InvalidReading", "PayloadError", "BatchFormatError"]


class CoreError(Exception):
    """Base class of every error raised by ``core``."""


class LocalError(CoreError):
    """The caller broke an API contract; retrying the same call will fail again."""


class RemoteError(CoreError):
    """Data from outside the process is malformed.

    Args:
        message: a sentence for humans, naming what was wrong.
        reason: a short stable token (``[a-z_]+``) for metrics and dead letters.
        field: the offending field, when one can be named.
    """

    def __init__(self, message: str, *, reason: str = "malformed", field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field


class InvalidReading(RemoteError):
    """A reading's fields do not satisfy the reading model."""


class PayloadError(RemoteError):
    """A sensor payload cannot be decoded into readings."""


class BatchFormatError(RemoteError):
    """Bytes claimed to be a batch do not follow docs/batch_format.md."""
