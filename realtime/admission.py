"""Admission control: a new session is admitted only while the engine has room for one more reaction.

Idle and listening sessions cost no engine time (they play cached loops), so capacity is about
concurrent reactions. A reacting stream needs one sampled chunk every `chunk_s` seconds
(chunk frames / 8 fps: 0.5 s for the tiny engine), so one more reacting stream adds

    added = stream_chunk_s / chunk_s

of the engine's time, where stream_chunk_s is the scheduler's measured EWMA of engine seconds per
stream-chunk at full sampler steps (batch seconds / batch size; a calibration chunk at start-up
seeds it). The load already there is measured, not modelled: the fraction of the last
`window_s` seconds the engine spent on live batches (which holds the sessions' real reacting
duty). Sessions younger than the window are not fully in that measurement yet, so each of them
also counts as reacting half the time (NEW_SESSION_DUTY; a burst of arrivals at an idle server
would otherwise all get in). A session is admitted while

    busy + added * (1 + NEW_SESSION_DUTY * young) <= headroom

and never while the degradation ladder is stepped down (the engine is already late); but the first
session is always admitted (an engine too slow for even one stream degrades instead). Beyond
that the client gets HTTP 503 `busy` with Retry-After (WebSocket: close 1013). The estimate is
optimistic when many admitted-but-quiet sessions start reacting at once; the degradation ladder
(realtime/ladder.py) is what keeps their frame rate then. `max_sessions` stays as a hard cap.
"""

from __future__ import annotations

from dataclasses import dataclass

from avatarcast.realtime.scheduler import Scheduler

NEW_SESSION_DUTY = 0.5  # the share of time a session not yet measured is assumed to react


@dataclass(frozen=True)
class Verdict:
    admit: bool
    reason: str  # "ok" | "capacity" | "degraded"
    message: str
    busy: float
    added: float | None


def check(
    scheduler: Scheduler, *, headroom: float, window_s: float, chunk_s: float, sessions: int = 1, young: int = 0
) -> Verdict:
    """Whether one more reacting stream fits, from the scheduler's measurements (`sessions`: open now;
    `young`: of those, opened within the last window_s)."""
    busy = scheduler.busy_fraction(window_s)
    per = scheduler.stream_chunk_s
    added = None if per is None else per / chunk_s
    if sessions == 0:
        return Verdict(True, "ok", "", busy, added)
    ladder = scheduler.ladder
    if ladder is not None and ladder.level > 0:
        return Verdict(
            False,
            "degraded",
            f"the engine is running late (degradation level {ladder.level}, {ladder.name}); retry later",
            busy,
            added,
        )
    if added is not None and busy + added * (1 + NEW_SESSION_DUTY * young) > headroom:
        return Verdict(
            False,
            "capacity",
            f"no engine capacity for another reacting stream (engine {busy:.0%} busy, "
            f"{young} new session(s), a reaction adds {added:.0%}, "
            f"headroom {headroom:.0%}); retry later",
            busy,
            added,
        )
    return Verdict(True, "ok", "", busy, added)
