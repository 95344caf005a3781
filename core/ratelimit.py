"""A token bucket, with time passed in: the uplink's bandwidth cap and the dead-letter budget.

How this works: tokens are bytes for the uplink (core/deadletter.py counts
dead letters with them instead, one token a letter). The bucket fills at ``rate`` bytes per
second up to ``burst`` bytes. Sending ``n`` bytes needs the bucket to hold
``min(n, burst)`` tokens and then takes all ``n``, so the level may go
negative: a batch bigger than the burst still goes (when the bucket is full)
and the debt it leaves holds back what follows. Over any long stretch the
bytes taken stay within ``rate * time + burst``, which is the cap a metered
link needs, and no batch is ever too big to send.

The bridge asks :meth:`TokenBucket.try_take` before each send, and when it
is refused waits :meth:`TokenBucket.wait_ms`; the gateway's writer asks
:class:`core.deadletter.DeadLetterBudget`, which holds one bucket per topic
and one for all. The clock is the caller's
(monotonic milliseconds); nothing here reads one.
"""

from __future__ import annotations

from core.errors import LocalError

__all__ = ["TokenBucket", "Unlimited"]


class TokenBucket:
    """Bytes per second, with a burst allowance.

    Args:
        rate: bytes per second, > 0.
        burst: the bucket's size in bytes (default: one second of ``rate``,
            at least 1).
        now_ms: the caller's clock at creation; the bucket starts full.

    Raises:
        LocalError: rate or burst out of range.
    """

    def __init__(self, rate: float, burst: float | None = None, now_ms: float = 0.0) -> None:
        if not rate > 0:
            raise LocalError(f"token bucket rate must be > 0 bytes/s, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate)
        if not self.burst > 0:
            raise LocalError(f"token bucket burst must be > 0 bytes, got {burst!r}")
        self._level = self.burst
        self._at = float(now_ms)

    def _refill(self, now_ms: float) -> None:
        # A clock that steps back refills nothing rather than draining.
        if now_ms > self._at:
            self._level = min(self.burst, self._level + (now_ms - self._at) * self.rate / 1000.0)
            self._at = now_ms

    def level(self, now_ms: float) -> float:
        """Tokens (bytes) in the bucket now; negative while a big send is paid off."""
        self._refill(now_ms)
        return self._level

    def try_take(self, n: int, now_ms: float) -> bool:
        """Take ``n`` bytes if the bucket allows a send of that size now.

        Returns:
            True and the tokens are taken, or False and nothing changes.
        """
        if n < 0:
            raise LocalError(f"cannot take {n} bytes")
        self._refill(now_ms)
        if self._level < min(n, self.burst):
            return False
        self._level -= n
        return True

    def wait_ms(self, n: int, now_ms: float) -> float:
        """How long until :meth:`try_take` of ``n`` bytes would succeed (0 if now)."""
        self._refill(now_ms)
        missing = min(n, self.burst) - self._level
        return 0.0 if missing <= 0 else missing * 1000.0 / self.rate


class Unlimited:
    """The no-cap bucket: every take succeeds."""

    rate = float("inf")

    def level(self, now_ms: float) -> float:
        return float("inf")

    def try_take(self, n: int, now_ms: float) -> bool:
        return True

    def wait_ms(self, n: int, now_ms: float) -> float:
        return 0.0
