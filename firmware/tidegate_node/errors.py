"""The firmware's exceptions: one base, :class:`NodeError`, and one class per kind of failure.

* Local errors (our own misuse, or a bad config): :class:`ConfigError`,
  :class:`EncodeError`, :class:`RingError`.
* Remote errors (the world misbehaved): :class:`SensorError` (a sensor did
  not answer or sent data failing its checks), :class:`TransportError` (the
  link failed).

The sample loop (tidegate_node.main) catches the remote ones, counts them and
carries on; local ones stop the node at start-up with a clear message.
"""

__all__ = ["NodeError", "ConfigError", "EncodeError", "RingError", "SensorError", "TransportError"]


class NodeError(Exception):
    """Base of every exception the firmware raises on purpose."""


class ConfigError(NodeError):
    """The configuration is invalid; the message names the key."""


class EncodeError(NodeError):
    """A sample cannot be encoded (a value out of range, or too large)."""


class RingError(NodeError):
    """Misuse of the ring: a record that can never fit, or a store too small."""


class SensorError(NodeError):
    """A sensor did not answer, or answered with data that fails its checks.

    Attributes:
        reason: a short tag for the error counter: ``"i2c"``, ``"crc"``,
            ``"chip_id"``, ``"timeout"``, ``"range"``, ``"adc"``, ``"unsupported"``.
    """

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


class TransportError(NodeError):
    """The link failed.

    Attributes:
        delivered: how many of the samples handed to ``send`` were delivered
            before the failure (the sample loop removes those from the ring).
    """

    def __init__(self, message, delivered=0):
        super().__init__(message)
        self.delivered = delivered
