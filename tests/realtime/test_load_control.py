"""The load-control logic on its own, driven by an injected clock: the degradation ladder,
admission control's arithmetic, and the per-client token buckets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

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
    # no half-resolution decoder: the lower-resolution rung is skipped
    assert (lad.level, lad.name, lad.cached_loops, lad.lowres) == (3, "cached_loops", True, False)
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


def test_ladder_lowers_the_resolution_before_cached_loops() -> None:
    clock = Clock()
    lad = DegradationLadder(2, clock=clock, lower_resolution=True, up_after_s=10.0)
    seen = []
    for _ in range(6):
        clock.t += 2.0
        lad.observe(late=True, busy=1.0)
        lad.observe(late=True, busy=1.0)
        seen.append((lad.name, lad.live_steps, lad.lowres, lad.cached_loops))
    assert seen[:3] == [
        ("fewer_steps", 1, False, False),
        ("lower_resolution", 1, True, False),
        ("cached_loops", 1, True, True),
    ]
    assert lad.level == lad.top == 3  # the lowest rung: it stays there
    clock.t += 10.0
    lad.tick(busy=0.1)
    assert (lad.name, lad.lowres, lad.cached_loops) == ("lower_resolution", True, False)


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


def scheduler(busy: float, per: float | None, level: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        busy_fraction=lambda w: busy, stream_chunk_s=per, ladder=SimpleNamespace(level=level, name="x")
    )


def test_admission_counts_measured_load_plus_one_reacting_stream() -> None:
    assert check(scheduler(0.0, None), headroom=0.8, window_s=20, chunk_s=0.5).admit  # nothing measured yet
    assert check(scheduler(0.1, 0.3), headroom=0.8, window_s=20, chunk_s=0.5).admit  # 0.1 + 0.6
    v = check(scheduler(0.3, 0.3), headroom=0.8, window_s=20, chunk_s=0.5)
    assert (v.admit, v.reason) == (False, "capacity") and "retry later" in v.message
    assert check(scheduler(0.0, 0.01, level=1), headroom=0.8, window_s=20, chunk_s=0.5).reason == "degraded"
    # sessions not yet in the measurement count as reacting half the time: 0.2 * (1 + 0.5 * n)
    assert check(scheduler(0.0, 0.1), headroom=0.8, window_s=20, chunk_s=0.5, young=6).admit
    assert not check(scheduler(0.0, 0.1), headroom=0.8, window_s=20, chunk_s=0.5, young=7).admit
    assert check(scheduler(0.9, 0.3, level=2), headroom=0.8, window_s=20, chunk_s=0.5, sessions=0).admit  # the first


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
