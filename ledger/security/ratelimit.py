"""Per-caller token buckets, so that one busy caller cannot starve the others."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

#: Buckets a limiter keyed by peer address keeps; past it the ones that have
#: refilled are dropped (they hold nothing), then, if still too many, all.
PEERS_TRACKED_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Rate:
    """`per_s` requests a second on average, bursts of up to `burst`; per_s 0 = no limit."""

    per_s: float = 0.0
    burst: int = 0

    @property
    def limited(self) -> bool:
        return self.per_s > 0


#: A caller without a rate of its own in the caller file gets this: weight
#: units (below) a second, bursts of DEFAULT_BURST. 0 (no limit) must be
#: written in the file, by name (docs/security.md).
DEFAULT_RATE_PER_S = 1000.0
DEFAULT_BURST = 2000
#: What a request weighs: 1, plus 1 per leg beyond its first, plus 1 per
#: WEIGHT_BYTES of request message; so that 100-leg groups with large metadata
#: cost what they store, not what one small call costs.
WEIGHT_BYTES = 4096


def weight(legs: int, message_bytes: int) -> int:
    """The rate-limit cost of a request with `legs` legs (0 or 1 for single-account
    calls) and `message_bytes` bytes on the wire."""
    return 1 + max(0, legs - 1) + message_bytes // WEIGHT_BYTES


class _Bucket:
    __slots__ = ("rate", "tokens", "updated")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate.burst)
        self.updated = now


class RateLimiter:
    """One bucket per caller id. Not thread-safe: it lives on the event loop."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, keys_max: int | None = None
    ) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._keys_max = keys_max

    def take(self, caller: str, rate: Rate, weight: float = 1.0) -> float:
        """Spend `weight` requests of `caller` (a weight above the burst costs the
        whole burst). Returns 0.0 when allowed, else the seconds until it would be
        allowed (nothing is spent then)."""
        if not rate.limited:
            return 0.0
        weight = min(weight, float(rate.burst))
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None or bucket.rate != rate:
            # New caller, or its limit changed on reload: start it with a full burst.
            if self._keys_max is not None and len(self._buckets) >= self._keys_max:
                self._prune(now)
            bucket = self._buckets[caller] = _Bucket(rate, now)
        else:
            elapsed = now - bucket.updated
            bucket.tokens = min(float(rate.burst), bucket.tokens + elapsed * rate.per_s)
            bucket.updated = now
        if bucket.tokens >= weight:
            bucket.tokens -= weight
            return 0.0
        return (weight - bucket.tokens) / rate.per_s

    def _prune(self, now: float) -> None:
        for key, b in list(self._buckets.items()):
            if b.tokens + (now - b.updated) * b.rate.per_s >= b.rate.burst:
                del self._buckets[key]
        if self._keys_max is not None and len(self._buckets) >= self._keys_max:
            self._buckets.clear()

    def forget_except(self, callers: set[str]) -> None:
        """Drop the buckets of callers that no longer exist (after a reload)."""
        for caller in list(self._buckets):
            if caller not in callers:
                del self._buckets[caller]
