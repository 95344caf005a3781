"""The one exception base of ``bridge``; library failures are converted at the boundary."""

from __future__ import annotations

__all__ = ["BridgeError", "TransportError", "PartialSend", "UpstreamConfigError"]


class BridgeError(Exception):
    """Base class of every error raised by ``bridge``."""


class TransportError(BridgeError):
    """The upstream did not acknowledge a batch; it must be sent again."""


class PartialSend(TransportError):
    """The upstream acknowledged only the first ``acknowledged`` batches of a train."""

    def __init__(self, message: str, acknowledged: int) -> None:
        super().__init__(message)
        self.acknowledged = acknowledged


class UpstreamConfigError(BridgeError):
    """An upstream address or setting is not valid."""
