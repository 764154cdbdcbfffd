"""The circuit breaker of one exporter: stop calling a failing backend for a while.

Closed → open after `failure_threshold` consecutive failures → half-open after `open_duration`
→ closed on a success, or open again (for `reopen_duration`) on a failure. Nothing is dropped
while it is open: the batch waits, and the backlog waits in caudal-sampled.
"""

from __future__ import annotations

from streams.config import CircuitBreakerConfig

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """Closed → open after `failure_threshold` consecutive failures → half-open after the open
    duration → closed on a success, or open again (for `reopen_duration`) on a failure."""

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self.config = config
        self.failures = 0
        self.open_until: float | None = None
        self.half_open = False

    def wait_time(self, now: float) -> float:
        """Seconds until a call is allowed (0: now). Passing the open period half-opens it."""
        if self.open_until is None:
            return 0.0
        if now < self.open_until:
            return self.open_until - now
        self.open_until = None
        self.half_open = True
        return 0.0

    def success(self) -> None:
        """A call went through: close."""
        self.failures = 0
        self.half_open = False

    def failure(self, now: float) -> bool:
        """A call failed; return True if this opened the breaker."""
        if self.half_open:
            self.half_open = False
            self.open_until = now + self.config.reopen_duration
            return True
        self.failures += 1
        if self.failures >= self.config.failure_threshold:
            self.force_open(now)
            return True
        return False

    def force_open(self, now: float) -> None:
        """Open for `open_duration` (also used when a batch ran out of retries)."""
        self.failures = 0
        self.open_until = now + self.config.open_duration
