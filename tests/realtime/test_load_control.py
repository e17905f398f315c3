"""The load-control logic on its own, driven by an injected clock: the degradation ladder,
admission control's arithmetic, and the per-client token buckets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from avatarcast.engines.contract import CheaperDecode
from avatarcast.realtime.admission import check
from avatarcast.realtime.ladder import DegradationLadder
from avatarcast.realtime.ratelimit import FloodGuard, RateLimiter, client_keys, retry_after


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_ladder_steps_down_on_late_batches_and_back_up_with_hysteresis() -> None:
    clock, changes = Clock(), []
    lad = DegradationLadder(2, clock=clock, up_after_s=10.0, on_change=lambda a, b, why: changes.append((a, b)))
    lad.observe(late=True, busy=0.9)
    assert lad.level == 0  # one late batch is noise
    clock.t += 3.0
    lad.observe(late=True, busy=0.9)
    assert (lad.level, lad.live_steps, lad.cached_loops) == (1, 1, False)
    clock.t += 0.5
    lad.observe(late=True, busy=0.9)
    lad.observe(late=True, busy=0.9)
    assert lad.level == 1  # dwell: at most one step per 2 s
    clock.t += 2.0
    lad.observe(late=True, busy=0.9)
    lad.observe(late=True, busy=0.9)
    # no cheaper decode: its rung is skipped
    assert (lad.level, lad.name, lad.cached_loops, lad.cheaper_decode) == (3, "cached_loops", True, False)
    clock.t += 9.0
    lad.tick(busy=0.1)
    assert lad.level == 3  # not quiet for long enough
    clock.t += 2.0
    lad.tick(busy=0.9)
    assert lad.level == 3  # quiet, but the engine is still busy
    lad.tick(busy=0.1)
    assert lad.level == 1
    clock.t += 10.0
    lad.tick(busy=0.1)
    assert (lad.level, lad.live_steps) == (0, None)
    assert changes == [(0, 1), (1, 3), (3, 1), (1, 0)]


@pytest.mark.parametrize("cheaper", list(CheaperDecode))
def test_ladder_decodes_the_cheaper_way_before_cached_loops(cheaper: CheaperDecode) -> None:
    clock = Clock()
    lad = DegradationLadder(2, clock=clock, cheaper=cheaper, up_after_s=10.0)
    seen = []
    for _ in range(6):
        clock.t += 2.0
        lad.observe(late=True, busy=1.0)
        lad.observe(late=True, busy=1.0)
        seen.append((lad.name, lad.live_steps, lad.cheaper_decode, lad.cached_loops))
    assert seen[:3] == [
        ("fewer_steps", 1, False, False),
        ("cheaper_decode", 1, True, False),
        ("cached_loops", 1, True, True),
    ]
    assert lad.level == lad.top == 3  # the lowest rung: it stays there
    clock.t += 10.0
    lad.tick(busy=0.1)
    assert (lad.name, lad.cheaper, lad.cheaper_decode, lad.cached_loops) == ("cheaper_decode", cheaper, True, False)


def test_ladder_skips_the_steps_rung_an_engine_declares_no_cheaper_both_ways() -> None:
    """reduce_steps=False (EngineCapabilities.fewer_steps_cheaper: motion): down from full straight to the cheaper
    decode, then cached loops; up the same rungs; every rung samples with the configured steps."""
    clock, changes = Clock(), []
    lad = DegradationLadder(
        2,
        reduce_steps=False,
        cheaper=CheaperDecode.COPY_DRAW,
        clock=clock,
        up_after_s=10.0,
        on_change=lambda a, b, why: changes.append((a, b)),
    )
    assert lad.levels == [0, 2, 3]
    seen = []
    for _ in range(2):
        clock.t += 2.0
        lad.observe(late=True, busy=1.0)
        lad.observe(late=True, busy=1.0)
        seen.append((lad.name, lad.live_steps, lad.cheaper_decode, lad.cached_loops))
    assert seen == [("cheaper_decode", None, True, False), ("cached_loops", None, True, True)]
    for _ in range(2):
        clock.t += 10.0
        lad.tick(busy=0.1)
    assert (lad.level, lad.live_steps) == (0, None)
    assert changes == [(0, 2), (2, 3), (3, 2), (2, 0)]
    copy = DegradationLadder(2, reduce_steps=False, clock=clock)  # no cheaper decode either: the last resort next
    clock.t += 3.0
    copy.observe(True, 1.0)
    copy.observe(True, 1.0)
    assert copy.levels == [0, 3] and copy.level == 3 and copy.live_steps is None


def test_ladder_skips_the_steps_level_when_the_engine_runs_one_step() -> None:
    clock = Clock()
    lad = DegradationLadder(1, clock=clock)
    clock.t += 3.0
    lad.observe(True, 1.0)
    lad.observe(True, 1.0)
    assert lad.level == 3 and lad.live_steps is None
    off = DegradationLadder(2, clock=clock, enabled=False)
    for _ in range(5):
        off.observe(True, 1.0)
    assert off.level == 0


def scheduler(
    busy: float, per: float | None, level: int = 0, shares: dict | None = None, cheaper: float = 0.0
) -> SimpleNamespace:
    """What admission control reads of a scheduler; `shares`: busy_by_session (each session's part of busy), all of it
    decoded the full way; `cheaper`: more busy decoded the cheaper way (no session's), which full_scale leaves as is."""
    return SimpleNamespace(
        busy_fraction=lambda w, full_scale=1.0: busy * full_scale + cheaper,
        busy_by_session=lambda w, full_scale=1.0: {k: v * full_scale for k, v in (shares or {}).items()},
        stream_chunk_s=per,
        ladder=SimpleNamespace(level=level, name="x"),
    )


def young(n: int) -> list[str]:
    return [f"s{i}" for i in range(n)]


def test_admission_counts_measured_load_plus_one_reacting_stream() -> None:
    assert check(scheduler(0.0, None), headroom=0.8, window_s=20, chunk_s=0.5).admit  # nothing measured yet
    assert check(scheduler(0.1, 0.3), headroom=0.8, window_s=20, chunk_s=0.5).admit  # 0.1 + 0.6
    v = check(scheduler(0.3, 0.3), headroom=0.8, window_s=20, chunk_s=0.5)
    assert (v.admit, v.reason) == (False, "capacity") and "retry later" in v.message
    assert check(scheduler(0.0, 0.01, level=1), headroom=0.8, window_s=20, chunk_s=0.5).reason == "degraded"
    assert check(scheduler(0.9, 0.3, level=2), headroom=0.8, window_s=20, chunk_s=0.5, sessions=0).admit  # the first


def test_a_burst_of_unmeasured_sessions_at_an_idle_server_is_limited_as_before() -> None:
    """Sessions not yet in the measurement count as reacting half the time: 0.2 * (1 + 0.5 * n) <= 0.8 lets 6 in.
    Shares of other jobs (the calibration chunk, clip renders) are no young session's."""
    for shares in (None, {"calibration": 0.01, "clip": 0.02}):
        idle = scheduler(0.0, 0.1, shares=shares)
        assert check(idle, headroom=0.8, window_s=20, chunk_s=0.5, sessions=6, young=young(6)).admit
        v = check(idle, headroom=0.8, window_s=20, chunk_s=0.5, sessions=7, young=young(7))
        assert (v.admit, v.reason) == (False, "capacity")
        assert v.young_duty == pytest.approx(0.7)  # 7 x 0.5 x 0.2
        assert "70% for 7 new = 90% > 80% headroom" in v.message, v.message
        assert len(v.message.encode()) <= 120  # whole in a WebSocket close reason


def test_a_young_session_measured_reacting_is_not_counted_twice() -> None:
    """Motion's numbers: one stream chunk costs 0.17 s of 0.5 s (a reaction adds 34%), the first session reacts
    (engine 30% busy, all of it that session's) and is itself young. Its measured reacting is in `busy` already:
    30% + 34% fits under 80%, where counting it again as half a reaction (+17%) refused the second session."""
    reacting = scheduler(0.30, 0.17, shares={"s0": 0.30})
    v = check(reacting, headroom=0.8, window_s=20, chunk_s=0.5, sessions=1, young=["s0"])
    assert v.admit and v.young_duty == 0.0, v
    # measured in part: only the rest of its assumed duty counts (0.17 - 0.05)
    v = check(scheduler(0.30, 0.17, shares={"s0": 0.05}), headroom=0.8, window_s=20, chunk_s=0.5, young=["s0"])
    assert v.admit and v.young_duty == pytest.approx(0.12), v
    # the same load measured of sessions gone (none of it the young one's): counted as before, 30% + 1.5 x 34%
    v = check(scheduler(0.30, 0.17, shares={"gone": 0.30}), headroom=0.8, window_s=20, chunk_s=0.5, young=["s0"])
    assert (v.admit, v.reason) == (False, "capacity") and v.young_duty == pytest.approx(0.17)
    assert "30% busy + 34% a reaction + 17% for 1 new = 81% > 80% headroom" in v.message, v.message


def test_a_closed_sessions_reacting_is_replaced_not_added() -> None:
    """A client opening a session per clip (the live Mandarin bench): its last session reacted and closed,
    leaving the engine 60% busy, 55 points of it that session's. A new session replaces that load: 5% (the
    calibration chunk, no session's) + 34% a reaction fits under 80%. Were the same session still open, its
    reacting would go on beside the new one's: 60% + 34% is refused, as before."""
    load = scheduler(0.60, 0.17, shares={"old": 0.55, "calibration": 0.05})
    v = check(load, headroom=0.8, window_s=20, chunk_s=0.5, sessions=1, gone=["old"])
    assert v.admit and v.gone_busy == pytest.approx(0.55) and v.counted_busy == pytest.approx(0.05), v
    assert v.busy == pytest.approx(0.60)  # the engine's figure itself is unchanged
    still_open = check(load, headroom=0.8, window_s=20, chunk_s=0.5, sessions=1)
    assert (still_open.admit, still_open.reason, still_open.gone_busy) == (False, "capacity", 0.0)
    # the calibration chunk is no session's: whatever the caller names gone, its part stays counted
    v = check(scheduler(0.60, 0.17, shares={"calibration": 0.60}), headroom=0.8, window_s=20, chunk_s=0.5, gone=["x"])
    assert (v.admit, v.gone_busy) == (False, 0.0)
    # gone but not all of it: the message shows the part let out, and the sum that still does not fit
    v = check(scheduler(0.60, 0.17, shares={"old": 0.10}), headroom=0.8, window_s=20, chunk_s=0.5, gone=["old"])
    assert (v.admit, v.reason) == (False, "capacity")
    assert v.message.startswith("no engine capacity: 60% busy - 10% gone + 34% a reaction + 0% for 0 new = 84% > 80%")
    worst = scheduler(1.0, 0.6, shares={"old": 0.5, **{f"s{i}": 0.0 for i in range(10)}})
    v = check(worst, headroom=1.0, window_s=20, chunk_s=0.5, sessions=10, young=young(10), gone=["old"])
    assert not v.admit and len(v.message.encode()) <= 120, v.message  # whole in a WebSocket close reason


def test_a_burst_after_sessions_close_is_limited_as_at_an_idle_server() -> None:
    """Letting the closed sessions' load out does not let a burst in: the new sessions are unmeasured, each
    counts half a reaction, so 6 get in and the 7th is refused, as at an idle server."""
    closed = scheduler(0.6, 0.1, shares={"a": 0.3, "b": 0.3})
    assert check(closed, headroom=0.8, window_s=20, chunk_s=0.5, sessions=6, young=young(6), gone=["a", "b"]).admit
    v = check(closed, headroom=0.8, window_s=20, chunk_s=0.5, sessions=7, young=young(7), gone=["a", "b"])
    assert (v.admit, v.reason) == (False, "capacity") and v.young_duty == pytest.approx(0.7), v


def test_adaptive_admission_counts_capacity_at_the_cheaper_decode() -> None:
    """`--motion-draw adaptive` (cheaper_ratio): the residual draw costs 0.26 s a stream-chunk of 0.5 s on two cores,
    the copy draw 0.6 of that. One session reacting on the residual draw keeps the engine 52% busy: priced at full
    quality a second reaction (+52%) does not fit under 80%, priced at the copy draw (31% + 31%) it does, and the
    ladder takes the two to the copy draw when the residual is late. There two reactions at 62% busy leave no room
    for a third (+31%), and the copy draw's rung is the engine at work, not a refusal; cached loops are."""
    one = scheduler(0.52, 0.26, shares={"s0": 0.52})
    v = check(one, headroom=0.8, window_s=20, chunk_s=0.5, sessions=1)
    assert (v.admit, v.reason) == (False, "capacity"), v
    v = check(one, headroom=0.8, window_s=20, chunk_s=0.5, sessions=1, cheaper_ratio=0.6)
    assert v.admit and v.added == pytest.approx(0.312) and v.counted_busy == pytest.approx(0.312), v
    # a young session's measured share is priced the same way: all of its assumed duty is in busy already
    v = check(one, headroom=0.8, window_s=20, chunk_s=0.5, sessions=1, young=["s0"], cheaper_ratio=0.6)
    assert v.admit and v.young_duty == 0.0, v
    two = scheduler(0.0, 0.26, level=2, cheaper=0.62)
    v = check(two, headroom=0.8, window_s=20, chunk_s=0.5, sessions=2, cheaper_ratio=0.6)
    assert (v.admit, v.reason) == (False, "capacity"), v
    assert check(scheduler(0.0, 0.26, level=2, cheaper=0.3), headroom=0.8, window_s=20, chunk_s=0.5, sessions=1,
                 cheaper_ratio=0.6).admit  # fmt: skip
    # without the adaptive pricing the copy draw's rung is a late engine: nobody more until it is back at full
    assert check(scheduler(0.0, 0.26, level=2, cheaper=0.3), headroom=0.8, window_s=20, chunk_s=0.5,
                 sessions=1).reason == "degraded"  # fmt: skip
    v = check(scheduler(0.0, 0.26, level=3, cheaper=0.1), headroom=0.8, window_s=20, chunk_s=0.5, sessions=1,
              cheaper_ratio=0.6)  # fmt: skip
    assert (v.admit, v.reason) == (False, "degraded")


def test_the_ladder_steps_up_from_the_cheaper_decode_by_the_full_decodes_load() -> None:
    """With the two decodes' cost ratio measured, the ladder leaves the cheaper decode only when the full decode would
    fit: two reactions at 59% busy on the copy draw would be 98% on the residual draw (0.6 the cost), late at once."""
    clock, changes = Clock(), []
    lad = DegradationLadder(
        2, reduce_steps=False, cheaper=CheaperDecode.COPY_DRAW, clock=clock, up_after_s=10.0,
        on_change=lambda a, b, why: changes.append((a, b, why)),
    )  # fmt: skip
    lad.cost_ratio = 0.6
    clock.t += 2.0
    lad.observe(late=True, busy=1.0)
    lad.observe(late=True, busy=1.0)
    assert lad.level == 2
    clock.t += 11.0
    lad.tick(busy=0.59)
    assert lad.level == 2  # 98% above: stays
    lad.tick(busy=0.40)
    assert lad.level == 0 and changes[-1][2].endswith("engine 40% busy (67% above)"), changes
    # unmeasured, the busy fraction as it is decides (as before)
    lad.cost_ratio = None
    clock.t += 2.0
    lad.observe(late=True, busy=1.0)
    lad.observe(late=True, busy=1.0)
    clock.t += 11.0
    lad.tick(busy=0.59)
    assert lad.level == 0
    # from cached loops to the cheaper decode both decode the cheaper way: no pricing there
    lad.cost_ratio = 0.6
    lad.level = 3
    clock.t += 11.0
    lad.tick(busy=0.5)
    assert lad.level == 2


def test_token_bucket_limits_each_key_and_refills() -> None:
    clock = Clock()
    lim = RateLimiter(2.0, 4, clock=clock)
    assert [lim.take(["ip:a"]) for _ in range(4)] == [0.0] * 4
    assert lim.take(["ip:a"]) == pytest.approx(0.5)
    assert lim.take(["ip:b"]) == 0.0  # another client has its own bucket
    clock.t += 0.5
    assert lim.take(["ip:a"]) == 0.0
    # a client is all its keys: a subject over its limit is refused from any address
    for _ in range(4):
        lim.take(["ip:c", "sub:alice"])
    assert lim.take(["ip:d", "sub:alice"]) > 0
    assert RateLimiter(0, 1, clock=clock).take(["ip:a"]) == 0.0  # 0 = off
    assert retry_after(0.2) == "1" and retry_after(2.5) == "3"
    assert client_keys({"client": ("10.0.0.1", 5), "state": {"auth": {"sub": "bob"}}}) == ["ip:10.0.0.1", "sub:bob"]


def test_buckets_of_quiet_clients_are_forgotten() -> None:
    clock = Clock()
    lim = RateLimiter(10.0, 2, max_keys=3, clock=clock)
    for k in "abc":
        lim.take([k])
    clock.t += 1.0
    lim.take(["d"])
    assert len(lim) == 1


def test_flood_guard_drops_then_notifies_once_then_closes() -> None:
    clock = Clock()
    guard = FloodGuard(RateLimiter(5.0, 5, clock=clock), ["ip:a"], clock=clock)
    verdicts = [guard.check()[0] for _ in range(11)]
    assert verdicts[:5] == ["ok"] * 5
    assert verdicts[5] == "notify" and verdicts[6:10] == ["drop"] * 4
    assert verdicts[10] == "close"  # more than a burst's worth dropped within 2 s


def test_the_ray_scheduler_splits_its_replicas_batches_over_their_sessions() -> None:
    """RemoteScheduler (the Scheduler over Ray) gives admission control the same figures from its replicas'
    replies: a batch of sessions a and b on one replica, c alone on the other; every reply counts its session's
    part, the batch counts once in busy, and the parts add up to the fleet's busy fraction."""
    pytest.importorskip("ray", reason="the `ray` extra is not installed")
    import numpy as np

    from avatarcast.engines.contract import EngineCapabilities
    from avatarcast.realtime.cluster.remote import RemoteScheduler
    from avatarcast.realtime.cluster.wire import ChunkReply
    from avatarcast.realtime.scheduler import ChunkJob

    clock = Clock()
    handle = SimpleNamespace(options=lambda **kw: handle)
    sch = RemoteScheduler(SimpleNamespace(capabilities=EngineCapabilities(frames_per_chunk=4)), handle, clock=clock)

    def reply(sid: str, replica: str, batch: int, started: float, seconds: float) -> None:
        r = ChunkReply(np.zeros(1), None, replica, 0.0, seconds * 0.75, seconds * 0.25, batch, started, True)
        sch._result(ChunkJob(sid, None, clock.t + 1.0, "happy", 0.8), r, None)

    clock.t += 1.0
    reply("a", "r1", 2, 5.0, 0.3)
    reply("b", "r1", 2, 5.0, 0.3)  # the same batch: busy counts it once
    reply("c", "r2", 1, 7.0, 0.2)
    assert sch.batches == 2
    shares = sch.busy_by_session(10.0)
    # two replicas answering: the fleet's time is 2 x 10 s
    assert shares == pytest.approx({"a": 0.15 / 20, "b": 0.15 / 20, "c": 0.2 / 20})
    assert sum(shares.values()) == pytest.approx(sch.busy_fraction(10.0))
    # priced at a cheaper decode (--motion-draw adaptive): these full-quality batches count full_scale of their time
    half = sch.busy_by_session(10.0, full_scale=0.5)
    assert half == pytest.approx({k: v / 2 for k, v in shares.items()})
    assert sch.busy_fraction(10.0, full_scale=0.5) == pytest.approx(sch.busy_fraction(10.0) / 2)
    cheap = ChunkReply(np.zeros(1), None, "r2", 0.0, 0.1, 0.1, 1, 9.0, False, True)  # decoded the cheaper way
    sch._result(ChunkJob("d", None, clock.t + 1.0, "happy", 0.8), cheap, None)
    assert sch.busy_by_session(10.0, full_scale=0.5)["d"] == pytest.approx(0.2 / 20)  # not scaled
    clock.t += 30.0
    assert sch.busy_by_session(10.0) == {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}  # out of the window
