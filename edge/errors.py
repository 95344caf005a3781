"""The one exception base of ``edge``; library failures are converted at the boundary."""

from __future__ import annotations

__all__ = ["EdgeError", "BrokerUnavailable", "MosquittoError"]


class EdgeError(Exception):
    """Base class of every error raised by ``edge``."""


class BrokerUnavailable(EdgeError):
    """The MQTT broker cannot be reached."""


class MosquittoError(EdgeError):
    """A Mosquitto process we started failed to start or died."""
