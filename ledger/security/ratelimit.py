"""Per-caller token buckets, so that one busy caller cannot starve the others."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """`per_s` requests a second on average, bursts of up to `burst`; per_s 0 = no limit."""

    per_s: float = 0.0
    burst: int = 0

    @property
    def limited(self) -> bool:
        return self.per_s > 0


class _Bucket:
    __slots__ = ("rate", "tokens", "updated")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate.burst)
        self.updated = now


class RateLimiter:
    """One bucket per caller id. Not thread-safe: it lives on the event loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, caller: str, rate: Rate, weight: int = 1) -> float:
        """Spend `weight` requests of `caller` (a SubmitBatch weighs its number of
        commands). Returns 0.0 when allowed, else the seconds until it would be
        allowed (nothing is spent then). A call heavier than the burst is allowed
        once the bucket is full, and leaves it in debt: the rate holds over time."""
        if not rate.limited:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None or bucket.rate != rate:
            # New caller, or its limit changed on reload: start it with a full burst.
            bucket = self._buckets[caller] = _Bucket(rate, now)
        else:
            elapsed = now - bucket.updated
            bucket.tokens = min(float(rate.burst), bucket.tokens + elapsed * rate.per_s)
            bucket.updated = now
        need = float(min(weight, max(rate.burst, 1)))
        if bucket.tokens >= need:
            bucket.tokens -= weight
            return 0.0
        return (need - bucket.tokens) / rate.per_s

    def forget_except(self, callers: set[str]) -> None:
        """Drop the buckets of callers that no longer exist (after a reload)."""
        for caller in list(self._buckets):
            if caller not in callers:
                del self._buckets[caller]
