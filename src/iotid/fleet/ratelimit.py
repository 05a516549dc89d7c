"""In-process rate limiting of token-free operator API endpoints: one token bucket per client.

Scope: :class:`RateLimit` (rate per second, burst, an off switch for benches, a bound on the
clients remembered) and :class:`TokenBucketLimiter`, a thread-safe map from a client key (the
peer address) to a token bucket refilled continuously at ``rate`` up to ``burst``. ``take(key)``
spends one token and answers a :class:`Decision`: allowed, or refused with the seconds until a
token is back (the ``Retry-After`` of a 429). The clock is injectable (``time.monotonic`` by
default) so tests are deterministic. Memory is bounded: beyond ``max_clients`` the least recently
seen clients are forgotten (a forgotten client starts again with a full bucket).

Not in scope: limits shared across processes or hosts (each worker limits on its own; put a
proxy in front for a global limit), trusting ``X-Forwarded-For`` (the caller picks the key; run
the server with its proxy-headers option behind a trusted proxy), authenticated endpoints.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Decision", "RateLimit", "TokenBucketLimiter"]


@dataclass(frozen=True)
class RateLimit:
    """A token bucket's parameters: ``rate`` tokens per second, at most ``burst`` in reserve."""

    rate: float = 50.0
    burst: int = 100
    #: False lets every request through (benchmarks driving thousands of devices from one host).
    enabled: bool = True
    #: Clients remembered at once (least recently seen forgotten first).
    max_clients: int = 10_000

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError("rate must be a positive number of requests per second")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        if self.max_clients < 1:
            raise ValueError("max_clients must be at least 1")

    @classmethod
    def off(cls) -> RateLimit:
        """No limit (benchmarks)."""
        return cls(enabled=False)


@dataclass(frozen=True)
class Decision:
    """The outcome of one :meth:`TokenBucketLimiter.take`."""

    allowed: bool
    #: Seconds until the next token (0 when allowed).
    retry_after: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds, rounded up, at least 1 (RFC 9110 §10.2.3)."""
        return str(max(1, math.ceil(self.retry_after)))


class TokenBucketLimiter:
    """Per-key token buckets under one lock."""

    def __init__(
        self, limit: RateLimit | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit or RateLimit()
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> (tokens, time of the last update), least recently seen first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> Decision:
        """Spend one of ``key``'s tokens, or say how long until one is back."""
        limit = self.limit
        if not limit.enabled:
            return Decision(True)
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.pop(key, (float(limit.burst), now))
            tokens = min(float(limit.burst), tokens + max(0.0, now - last) * limit.rate)
            if tokens >= 1.0:
                decision = Decision(True)
                tokens -= 1.0
            else:
                decision = Decision(False, (1.0 - tokens) / limit.rate)
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > limit.max_clients:
                self._buckets.popitem(last=False)
            return decision

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)
