"""How late the event loop wakes up: a probe that sleeps a short interval and records the overshoot.

Every frame, socket read and timer of every session runs on the one event loop, so the loop's lag is the delay
each of them can suffer at once. It is what a thread holding the GIL without running costs (docs/security.md,
"Avatars are prepared in a process of their own"), and what nothing else in /metrics shows: a frame interval is
one session's, a batch time the engine's. `LagWindow` is the pure part (tested with plain calls); `probe` only
sleeps and reads the clock.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

PROBE_S = 0.01  # 100 wake-ups a second: a stall of 10 ms is seen, for ~0.5% of a core
WINDOW_S = 60.0  # the figures cover the last minute: one bench run's attack


class LagWindow:
    """The lags observed in the last `window_s` seconds, and their p99 and max."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: deque[tuple[float, float]] = deque()  # (when, lag seconds), oldest first

    def observe(self, now: float, lag_s: float) -> None:
        self._seen.append((now, max(0.0, lag_s)))
        while self._seen and now - self._seen[0][0] > self.window_s:
            self._seen.popleft()

    def _lags(self, now: float) -> list[float]:
        return sorted(lag for t, lag in self._seen if now - t <= self.window_s)

    def quantile(self, now: float, q: float) -> float:
        """The q-quantile (nearest rank) of the window's lags; 0 with none."""
        lags = self._lags(now)
        if not lags:
            return 0.0
        return lags[min(len(lags) - 1, max(0, round(q * len(lags)) - 1))]

    def max(self, now: float) -> float:
        return max((lag for t, lag in self._seen if now - t <= self.window_s), default=0.0)


async def probe(observe: Callable[[float, float], None], interval_s: float = PROBE_S) -> None:
    """Forever: sleep `interval_s`, then observe(now, how much later than asked the loop woke us)."""
    while True:
        t0 = time.monotonic()
        await asyncio.sleep(interval_s)
        now = time.monotonic()
        observe(now, now - t0 - interval_s)
