"""Admission control: a new session is admitted only while the engine has room for one more reaction.

Idle and listening sessions cost no engine time (they play cached loops), so capacity is about
concurrent reactions. A reacting stream needs one sampled chunk every `chunk_s` seconds
(chunk frames / 8 fps: 0.5 s for the tiny engine), so one more reacting stream adds

    added = stream_chunk_s / chunk_s

of the engine's time, where stream_chunk_s is the scheduler's measured EWMA of engine seconds per
stream-chunk at full sampler steps (batch seconds / batch size; a calibration chunk at start-up
seeds it). The load already there is measured, not modelled: busy, the fraction of the last
`window_s` seconds the engine spent on live batches (which holds the sessions' real reacting
duty). Part of it may be the reacting of sessions already gone (closed, or left by their client):
clients that open a session per voice clip replace such a session's load rather than add to it
(25-33 points of 26-34% busy in the live Mandarin bench, docs/bench/admission_2026-12-05), so the
scheduler's split of each live batch's seconds over the sessions in it (busy_by_session) lets the
gone sessions' shares out:

    counted = max(0, busy - sum of busy_by_session over the gone sessions)

Work no session owns (the calibration chunk, clip renders) keeps counting. The caller names the gone
sessions, not the open ones: only it knows which scheduler keys are sessions it closed, and under
Ray (realtime/cluster/remote.py) a gateway's busy also holds other gateways' sessions in the same
batches, which it cannot tell open from closed: their load keeps counting (the estimate errs high).
A session younger than the window is not fully in that measurement yet, so it is assumed
to react half the time (NEW_SESSION_DUTY; a burst of arrivals at an idle server would otherwise
all get in), less what busy already holds of it: counting that part twice refused a second session
while a young first one reacted. Each young session counts max(0, NEW_SESSION_DUTY * added - its
measured share); in units of one unmeasured young session,

    unmeasured = sum over young sessions of max(0, 1 - measured share / (NEW_SESSION_DUTY * added))

and a session is admitted while

    counted + added * (1 + NEW_SESSION_DUTY * unmeasured) <= headroom

With nothing measured of them (a burst at an idle server, or at one whose sessions have just
closed) unmeasured is the young sessions' count, so such a burst is limited exactly as before. No
session is admitted while the degradation ladder is stepped down (the engine is already late); but
the first session always is (an engine too slow for even one stream degrades instead). Beyond that
the client gets HTTP 503 `busy` with Retry-After (WebSocket: close 1013) and a message with the
figures used. The estimate is optimistic when many admitted-but-quiet sessions start reacting at
once; the degradation ladder (realtime/ladder.py) is what keeps their frame rate then.
`max_sessions` stays as a hard cap.

The ladder's cheaper rungs are not counted as capacity by default: stream_chunk_s is measured on full-quality
batches only, and a session is admitted only while its reactions fit at full quality. Counting the cheaper decode
(tiny's half resolution, the residual draw's copy draw) would admit sessions the engine can hold only degraded: an
operator who chose `--motion-draw residual` would get the copy draw's picture for most of each reaction. There the
cheaper rung is for surges among the admitted sessions.

`--motion-draw adaptive` asks for the other policy (`cheaper_ratio`): capacity is what the engine holds at the
cheaper decode (the copy draw, as many sessions as the copy draw's own server admits), and the full decode is what
sessions get while there is room for it. The load is priced at the cheaper decode: batches decoded the full way count
`cheaper_ratio` (the cheaper decode's cost over the full one's, measured at start-up) of their seconds, a new
reaction adds stream_chunk_s * cheaper_ratio, and a ladder at the cheaper-decode rung is the engine at work, not late:
only below it (cached loops) are new sessions refused as "degraded".
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from avatarcast.realtime.ladder import LEVELS
from avatarcast.realtime.scheduler import Scheduler

NEW_SESSION_DUTY = 0.5  # the share of time a session not yet measured is assumed to react
CHEAPER_RUNG = LEVELS.index("cheaper_decode")


@dataclass(frozen=True)
class Verdict:
    admit: bool
    reason: str  # "ok" | "capacity" | "degraded"
    message: str
    busy: float  # the engine's busy fraction over the window, every live batch in it
    added: float | None
    young_duty: float = 0.0  # the young sessions' assumed duty beyond their measured share (of the engine, 0..)
    gone_busy: float = 0.0  # the part of busy that was sessions now gone, not counted

    @property
    def counted_busy(self) -> float:
        """The load admission control counts: busy less the gone sessions' part."""
        return max(0.0, self.busy - self.gone_busy)


def check(
    scheduler: Scheduler,
    *,
    headroom: float,
    window_s: float,
    chunk_s: float,
    sessions: int = 1,
    young: Collection[str] = (),
    gone: Collection[str] = (),
    cheaper_ratio: float | None = None,
) -> Verdict:
    """Whether one more reacting stream fits, from the scheduler's measurements.

    Args:
        sessions: how many sessions are open now (not counting those left by their client).
        young: the ids of the open sessions opened within the last window_s.
        gone: the ids of sessions closed (or left by their client) that may have engine time in the window:
            their shares of busy are not counted. Ids the scheduler has no time for are ignored.
        cheaper_ratio: count capacity at the ladder's cheaper decode, whose cost over the full decode's this is
            (`--motion-draw adaptive`); None: at full quality.
    """
    scale = 1.0 if cheaper_ratio is None else cheaper_ratio
    busy = scheduler.busy_fraction(window_s, full_scale=scale)
    per = scheduler.stream_chunk_s
    added = None if per is None else per * scale / chunk_s
    measured = scheduler.busy_by_session(window_s, full_scale=scale) if young or gone else {}
    gone_busy = min(busy, sum(measured.get(sid, 0.0) for sid in set(gone)))
    counted = busy - gone_busy
    unmeasured = 0.0
    if added is not None and young:
        assumed = NEW_SESSION_DUTY * added
        # in whole young sessions, so that nothing measured gives exactly the count (and the same limit as ever)
        unmeasured = sum(max(0.0, 1.0 - measured.get(sid, 0.0) / assumed) if assumed > 0 else 1.0 for sid in young)
    young_duty = 0.0 if added is None else added * NEW_SESSION_DUTY * unmeasured
    if sessions == 0:
        return Verdict(True, "ok", "", busy, added, young_duty, gone_busy)
    ladder = scheduler.ladder
    if ladder is not None and ladder.level > (0 if cheaper_ratio is None else CHEAPER_RUNG):
        return Verdict(
            False,
            "degraded",
            f"the engine is running late (degradation level {ladder.level}, {ladder.name}); retry later",
            busy,
            added,
            young_duty,
            gone_busy,
        )
    if added is not None and counted + added * (1 + NEW_SESSION_DUTY * unmeasured) > headroom:
        # the gone sessions' part only when there is one: the message must fit a WebSocket close reason (123 bytes)
        less = f" - {gone_busy:.0%} gone" if gone_busy >= 0.005 else ""
        return Verdict(
            False,
            "capacity",
            f"no engine capacity: {busy:.0%} busy{less} + {added:.0%} a reaction + {young_duty:.0%} for {len(young)} "
            f"new = {counted + added + young_duty:.0%} > {headroom:.0%} headroom; retry later",
            busy,
            added,
            young_duty,
            gone_busy,
        )
    return Verdict(True, "ok", "", busy, added, young_duty, gone_busy)
