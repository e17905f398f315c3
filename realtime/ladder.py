"""The degradation ladder: what the server gives up, in order, when the engine cannot keep up.

Under load a sampled chunk that comes after its deadline makes the reaction hold a frame. Before
that happens often, the server steps down, one level at a time:

  0 "full"          the configured sampler steps
  1 "fewer_steps"   live chunks use fewer sampler steps (the tiny model is a shortcut model: 1 step
                    looks close to 2, and costs less). The latents cache keeps its own step count,
                    so cache lookups still hit. Skipped when the engine already runs 1 step, or declares
                    that fewer steps save next to nothing (EngineCapabilities.fewer_steps_cheaper False:
                    motion, whose sampler is a sliver of a chunk's cost); the rungs below then sample
                    with the configured steps.
  2 "cheaper_decode"  sampled chunks are decoded the engine's cheaper way, as it declares
                    (EngineCapabilities.cheaper_decode): the decode is most of a chunk's cost on a CPU.
                    "half_resolution" (tiny, tools/train_lowres.py): at 320x180, upscaled to 640x360
                    inside the decoder graph, about 4x cheaper. "copy_draw" (motion's residual draw):
                    the shipped copy-only decoder, without the generator's correction. Only the decode
                    changes, so a stream keeps its pose across the switch. Skipped where the engine has
                    no cheaper decode (the copy draw, the wan engine).
  3 "cached_loops"  on top of that, new reactions play their cached first chunk as a loop (forward,
                    then backward) instead of sampling: no engine time at all. Reactions already
                    playing go on. The last resort: the avatar still reacts, but without variety.

Measurement, not guesses: the scheduler reports each live batch (late or not: did it finish after
its earliest job's deadline) and the engine's busy fraction. Hysteresis keeps it from flapping:
it steps down after `down_late` late batches within `window_s`, at most once per `dwell_s`; it
steps back up only after `up_after_s` with no late batch while the engine is less than `up_busy`
busy. From the cheaper-decode rung that busy is the load as the full decode would cost it, where the
Hub has measured the two decodes' ratio (`cost_ratio`): the residual draw costs 1.7x the copy draw, so
two sessions reacting at 59% busy on the copy draw would step up to 100% and be late again at once.
Pure logic with an injected clock: the scheduler drives it, tests drive it directly.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from avatarcast.engines.contract import CheaperDecode, StreamEngine
from avatarcast.realtime.settings import Settings

log = logging.getLogger("avatarcast.ladder")

LEVELS = ("full", "fewer_steps", "cheaper_decode", "cached_loops")


class DegradationLadder:
    """The current degradation level and the live sampler steps it implies."""

    def __init__(
        self,
        full_steps: int,
        *,
        reduce_steps: bool = True,
        cheaper: CheaperDecode | None = None,
        down_late: int = 2,
        window_s: float = 4.0,
        dwell_s: float = 2.0,
        up_after_s: float = 15.0,
        up_busy: float = 0.75,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[int, int, str], None] | None = None,
    ) -> None:
        self.full_steps = int(full_steps)
        self.fewer_steps = max(1, self.full_steps // 2)
        self.reduce_steps = reduce_steps and self.fewer_steps < self.full_steps
        self.cheaper = cheaper  # what rung 2 decodes with; None: the engine has no cheaper decode, no rung 2
        # the cheaper decode's cost over the full one's, per chunk (the Hub measures it at start-up); None: unknown,
        # stepping up from rung 2 then reads the busy fraction as it is
        self.cost_ratio: float | None = None
        # the rungs this engine offers, best first
        self.levels = [0] + [1] * self.reduce_steps + [2] * (cheaper is not None) + [3]
        self.top = self.levels[-1]
        self.down_late, self.window_s, self.dwell_s = down_late, window_s, dwell_s
        self.up_after_s, self.up_busy = up_after_s, up_busy
        self.enabled = enabled
        self.clock = clock
        self.on_change = on_change
        self.level = 0
        self.changed_at = clock()
        self.last_late = -1e18
        self._late: deque[float] = deque()
        self.changes = 0

    @property
    def name(self) -> str:
        return LEVELS[self.level]

    @property
    def live_steps(self) -> int | None:
        """Sampler steps for live chunks; None: the engine's own."""
        return self.fewer_steps if self.level >= 1 and self.reduce_steps else None

    @property
    def cheaper_decode(self) -> bool:
        """Sampled chunks should be decoded the engine's cheaper way (`cheaper`)."""
        return self.level >= 2 and self.cheaper is not None

    @property
    def cached_loops(self) -> bool:
        """New reactions should play cached loops instead of sampling."""
        return self.level >= 3

    def observe(self, late: bool, busy: float) -> None:
        """One live batch finished: `late` if after its earliest deadline; `busy` the engine's busy fraction."""
        now = self.clock()
        if late:
            self.last_late = now
            self._late.append(now)
        while self._late and self._late[0] < now - self.window_s:
            self._late.popleft()
        if not self.enabled:
            return
        if len(self._late) >= self.down_late and self.level < self.top and now - self.changed_at >= self.dwell_s:
            nxt = self.levels[self.levels.index(self.level) + 1]
            self._set(nxt, now, f"{len(self._late)} late batches in {self.window_s:g} s")
            self._late.clear()
            return
        self.tick(busy)

    def tick(self, busy: float) -> None:
        """Time passed (called between batches too): step back up once load has fallen for long enough."""
        now = self.clock()
        if not self.enabled or self.level == 0:
            return
        quiet = now - max(self.last_late, self.changed_at)
        if quiet < self.up_after_s:
            return
        nxt = self.levels[self.levels.index(self.level) - 1]
        if self.level == 2 and self.cost_ratio:  # the rung above decodes the full way: its load, not this one's
            above = busy / self.cost_ratio
            if above < self.up_busy:
                self._set(nxt, now, f"no late batch for {quiet:.0f} s, engine {busy:.0%} busy ({above:.0%} above)")
        elif busy < self.up_busy:
            self._set(nxt, now, f"no late batch for {quiet:.0f} s, engine {busy:.0%} busy")

    def _set(self, level: int, now: float, why: str) -> None:
        old, self.level, self.changed_at = self.level, level, now
        self.changes += 1
        log.warning("degradation level %d (%s) -> %d (%s): %s", old, self._label(old), level, self._label(level), why)
        if self.on_change is not None:
            self.on_change(old, level, why)

    def _label(self, level: int) -> str:
        return f"{LEVELS[level]}: {self.cheaper}" if level == 2 else LEVELS[level]


def ladder_for(engine: StreamEngine, settings: Settings) -> DegradationLadder:
    """The ladder an engine can offer under these settings (the Hub's and each Ray engine replica's):
    the steps rung where fewer steps make a chunk cheaper (every engine takes a per-call step count; skipped
    at 1 step or where the engine declares them no cheaper), the cheaper-decode rung where it declares one."""
    caps = engine.capabilities
    return DegradationLadder(
        int(engine.steps or 1),
        reduce_steps=caps.fewer_steps_cheaper,
        cheaper=caps.cheaper_decode,
        up_after_s=settings.ladder_up_s,
        enabled=bool(settings.ladder),
    )
