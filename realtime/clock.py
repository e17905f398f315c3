"""The stream's frame clock: frame k is due at t0 + k/fps; which frames are due now, which were dropped.

Pure: every call takes `now` (seconds on the caller's monotonic clock). The session plans frames
with it; the runner waits on it.
"""

from __future__ import annotations

import math
from fractions import Fraction

from avatarcast.vocabulary import FPS

EPS = 1e-9  # float slack when comparing frame times


class FrameClock:
    """pts <-> time at a fixed rate; frame k is due at t0 + k/fps, computed, never accumulated."""

    def __init__(self, t0: float, fps: int = FPS, late_tolerance_s: float | None = None) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.t0 = float(t0)
        self.fps = int(fps)
        self.time_base = Fraction(1, self.fps)
        self.late_tolerance_s = 0.5 / self.fps if late_tolerance_s is None else float(late_tolerance_s)
        self._next = 0  # first index not yet handed out by due()
        self.dropped = 0  # frames skipped because due() was called too late for them
        self.late_sent = 0  # frames sent more than late_tolerance_s after their due time
        self.max_late_s = 0.0
        self._unreported: tuple[int, int] | None = None  # (first dropped index, count) since take_late()

    def time_of(self, index: int) -> float:
        return self.t0 + index / self.fps

    def pts_of(self, index: int) -> int:
        return index  # pts counts frames in 1/fps units from the stream start

    def index_at(self, now: float) -> int:
        """The newest frame index due at `now` (-1 before t0)."""
        return math.floor((now - self.t0) * self.fps + EPS)

    @property
    def next_index(self) -> int:
        """The first frame index due() has not handed out yet."""
        return self._next

    def upcoming(self, now: float) -> int:
        """The index the next due() call will hand out (a new state shows from this frame)."""
        return max(self._next, self.index_at(now))

    def due(self, now: float) -> list[int]:
        """Frame indices to send now: at most one (the newest due); older missed ones are dropped."""
        k = self.index_at(now)
        if k < self._next:
            return []
        missed = k - self._next
        if missed:
            self.dropped += missed
            first = self._next if self._unreported is None else self._unreported[0]
            count = missed + (0 if self._unreported is None else self._unreported[1])
            self._unreported = (first, count)
        self._next = k + 1
        return [k]

    def pull_in(self, now: float, min_interval_s: float) -> bool:
        """Make the next frame due `now`, or `min_interval_s` after the previous one if that is later
        (shifting every later frame by the same amount), when that is sooner than its tick.

        Used when something visible must happen at once (speech onset, a reaction starting): the
        client sees it up to one frame sooner, and no interval gets longer than 1/fps.
        """
        k = self._next
        target = now if k == 0 else max(now, self.time_of(k - 1) + min_interval_s)
        if target >= self.time_of(k) - EPS:
            return False
        self.t0 = target - k / self.fps
        return True

    def report_sent(self, index: int, now: float) -> float:
        """Record that frame `index` went out at `now`; returns how late it was (s, >= 0)."""
        late = max(0.0, now - self.time_of(index))
        self.max_late_s = max(self.max_late_s, late)
        if late > self.late_tolerance_s + EPS:
            self.late_sent += 1
        return late

    def take_late(self) -> tuple[int, int] | None:
        """(first dropped index, count) since the last call, or None."""
        r, self._unreported = self._unreported, None
        return r
