"""Token buckets by key, in this process: the rate limiters' arithmetic (realtime/ratelimit.py says which limits)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up."""

    __slots__ = ("rate", "burst", "tokens", "t")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.t = rate, burst, burst, now

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now

    def wait_s(self, n: float = 1.0) -> float:
        """Seconds until n tokens are there (0: now)."""
        return 0.0 if self.tokens >= n else (n - self.tokens) / self.rate

    def take(self, n: float, now: float) -> float:
        """Take n tokens if they are there (0.0), else take none and return the seconds until they are."""
        self.refill(now)
        wait = self.wait_s(n)
        if wait == 0:
            self.tokens -= n
        return wait


class RateLimiter:
    """Token buckets by key; `take(keys)` takes a token from each, or from none if any is empty."""

    def __init__(
        self, rate_per_s: float, burst: float, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = float(rate_per_s)
        self.burst = max(1.0, float(burst))
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, keys: Iterable[str]) -> float:
        """0.0 if allowed (a token was taken from every key's bucket), else seconds to wait."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        buckets = []
        for k in keys:
            b = self._buckets.get(k)
            if b is None:
                if len(self._buckets) >= self.max_keys:
                    self._forget_full(now)
                b = self._buckets[k] = TokenBucket(self.rate, self.burst, now)
            b.refill(now)
            buckets.append(b)
        wait = max((b.wait_s() for b in buckets), default=0.0)
        if wait > 0:
            return wait
        for b in buckets:
            b.tokens -= 1.0
        return 0.0

    def _forget_full(self, now: float) -> None:
        for k, b in list(self._buckets.items()):
            b.refill(now)
            if b.tokens >= b.burst:
                del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)
