"""Admission control: a new session is admitted only while the engine has room for one more reaction.

Idle and listening sessions cost no engine time (they play cached loops), so capacity is about
concurrent reactions. A reacting stream needs one sampled chunk every `chunk_s` seconds
(chunk frames / 8 fps: 0.5 s for the tiny engine), so one more reacting stream adds

    added = stream_chunk_s / chunk_s

of the engine's time, where stream_chunk_s is the scheduler's measured EWMA of engine seconds per
stream-chunk at full sampler steps (batch seconds / batch size; a calibration chunk at start-up
seeds it). The load already there is measured, not modelled: busy, the fraction of the last
`window_s` seconds the engine spent on live batches (which holds the sessions' real reacting
duty). A session younger than the window is not fully in that measurement yet, so it is assumed
to react half the time (NEW_SESSION_DUTY; a burst of arrivals at an idle server would otherwise
all get in), less what busy already holds of it: the scheduler splits each live batch's seconds
over the sessions in it (busy_by_session), and counting that part twice refused a second session
while a young first one reacted. Each young session counts max(0, NEW_SESSION_DUTY * added - its
measured share); in units of one unmeasured young session,

    unmeasured = sum over young sessions of max(0, 1 - measured share / (NEW_SESSION_DUTY * added))

and a session is admitted while

    busy + added * (1 + NEW_SESSION_DUTY * unmeasured) <= headroom

With nothing measured of them (a burst at an idle server) unmeasured is the young sessions' count,
so such a burst is limited exactly as before they were measured. No session is admitted while the
degradation ladder is stepped down (the engine is already late); but the first session always is
(an engine too slow for even one stream degrades instead). Beyond that the client gets HTTP 503
`busy` with Retry-After (WebSocket: close 1013) and a message with the figures used. The estimate
is optimistic when many admitted-but-quiet sessions start reacting at once; the degradation ladder
(realtime/ladder.py) is what keeps their frame rate then. `max_sessions` stays as a hard cap.
"""

from __future__ import annotations

from collections.abc import Collection
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
    young_duty: float = 0.0  # the young sessions' assumed duty beyond their measured share (of the engine, 0..)


def check(
    scheduler: Scheduler,
    *,
    headroom: float,
    window_s: float,
    chunk_s: float,
    sessions: int = 1,
    young: Collection[str] = (),
) -> Verdict:
    """Whether one more reacting stream fits, from the scheduler's measurements (`sessions`: open now;
    `young`: the ids of those opened within the last window_s)."""
    busy = scheduler.busy_fraction(window_s)
    per = scheduler.stream_chunk_s
    added = None if per is None else per / chunk_s
    unmeasured = 0.0
    if added is not None and young:
        measured, assumed = scheduler.busy_by_session(window_s), NEW_SESSION_DUTY * added
        # in whole young sessions, so that nothing measured gives exactly the count (and the same limit as ever)
        unmeasured = sum(max(0.0, 1.0 - measured.get(sid, 0.0) / assumed) if assumed > 0 else 1.0 for sid in young)
    young_duty = 0.0 if added is None else added * NEW_SESSION_DUTY * unmeasured
    if sessions == 0:
        return Verdict(True, "ok", "", busy, added, young_duty)
    ladder = scheduler.ladder
    if ladder is not None and ladder.level > 0:
        return Verdict(
            False,
            "degraded",
            f"the engine is running late (degradation level {ladder.level}, {ladder.name}); retry later",
            busy,
            added,
            young_duty,
        )
    if added is not None and busy + added * (1 + NEW_SESSION_DUTY * unmeasured) > headroom:
        return Verdict(
            False,
            "capacity",
            # short enough for a WebSocket close reason (123 bytes), figures first
            f"no engine capacity: {busy:.0%} busy + {added:.0%} a reaction + {young_duty:.0%} for {len(young)} new "
            f"session(s) = {busy + added + young_duty:.0%} > {headroom:.0%} headroom; retry later",
            busy,
            added,
            young_duty,
        )
    return Verdict(True, "ok", "", busy, added, young_duty)
