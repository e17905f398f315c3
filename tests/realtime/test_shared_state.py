"""Shared state on a real redis-server (started here on a free loopback port): one rate budget across gateways,
one render per clip request across gateways, and what happens when Redis goes away."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from avatarcast.realtime import shared_state
from avatarcast.realtime.clips import ClipRenderer, ClipRequest
from avatarcast.realtime.ratelimit import Limits, RateLimiter, SharedRateLimiter
from avatarcast.realtime.settings import Settings
from avatarcast.realtime.shared_state import LocalState, RedisState, SharedStateError
from tests.conftest import RedisServer, app_in_process, free_port


def test_two_gateways_share_one_rate_budget(redis_server: RedisServer) -> None:
    s = Settings(redis_url=redis_server.url, rate_http_per_s=0.01)  # burst 2 s worth: at least 1 token
    gateways = [Limits(s, shared=RedisState(redis_server.url)) for _ in range(2)]
    assert all(isinstance(g.http, SharedRateLimiter) for g in gateways)
    a, b = (SharedRateLimiter("t", g.http.shared, 0.01, 5) for g in gateways if isinstance(g.http, SharedRateLimiter))
    answers = [(a if i % 2 else b).take(["ip:203.0.113.7"]) for i in range(10)]
    assert [w == 0 for w in answers] == [True] * 5 + [False] * 5, answers
    assert 99 < answers[-1] <= 100  # 1 token at 0.01/s
    assert b.take(["ip:203.0.113.8"]) == 0  # another client has its own bucket
    # a client is every key it has: an empty `sub` bucket refuses, and takes nothing from the full `ip` one
    assert a.take(["ip:198.51.100.1", "sub:alice"]) == 0 and all(a.take(["sub:alice"]) == 0 for _ in range(4))
    assert b.take(["ip:198.51.100.1", "sub:alice"]) > 0
    assert [a.take(["ip:198.51.100.1"]) == 0 for _ in range(5)] == [True] * 4 + [False]
    # without Redis (the default), each gateway has its own budget: two gateways allow twice the rate
    local = [RateLimiter(0.01, 5), RateLimiter(0.01, 5)]
    assert sum(local[i % 2].take(["ip:203.0.113.7"]) == 0 for i in range(10)) == 10
    assert not isinstance(Limits(Settings(), shared=LocalState()).http, SharedRateLimiter)


def test_redis_going_away_falls_back_to_local_limits_logged(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_state, "RETRY_S", 0.3)
    lim = SharedRateLimiter("t", RedisState(redis_server.url), 0.01, 3)
    assert lim.take(["ip:a"]) == 0 and len(lim) == 0  # Redis holds the bucket, not this process
    redis_server.stop()
    with caplog.at_level(logging.WARNING, "avatarcast.shared_state"):
        t0 = time.monotonic()
        # this process's own bucket answers: a full one, so 3 more (a gateway alone keeps its own limit)
        assert [lim.take(["ip:a"]) == 0 for _ in range(5)] == [True, True, True, False, False]
        assert time.monotonic() - t0 < 2.0  # one failed call (short timeout), then the breaker skips Redis
        assert len(lim) == 1
        assert sum("shared state unavailable" in r.message for r in caplog.records) == 1  # logged once per outage
        redis_server.start()  # empty (no persistence): a fresh bucket
        time.sleep(0.35)
        assert lim.take(["ip:a"]) == 0
        assert any("answers again" in r.message for r in caplog.records)
    # at start-up an unreachable Redis is a typed error (the Hub's start fails with it)
    redis_server.stop()
    with pytest.raises(SharedStateError, match="redis at redis://127.0.0.1"):
        RedisState(redis_server.url).check()


def test_an_unreachable_redis_fails_the_start() -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(RuntimeError, match=r"did not start: SharedStateError: redis at redis://127\.0\.0\.1"):
        with app_in_process(redis_url=nobody):
            pass


def test_redis_url_is_a_setting() -> None:
    assert Settings.from_env({"AVATARCAST_REDIS_URL": "redis://10.0.0.5:6379/1"}).redis_url == "redis://10.0.0.5:6379/1"
    with pytest.raises(ValueError, match="redis_url"):
        Settings(redis_url="10.0.0.5:6379").validate()


def test_two_gateways_render_a_clip_once(
    redis_server: RedisServer, server_hub: Any, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two gateways' clip renderers (own Redis connections, one shared directory) asked for the same clip at once."""
    hub = server_hub
    shared_dir = str(tmp_path / "clips")
    a, b = (ClipRenderer(hub.services, shared_dir, shared=RedisState(redis_server.url)) for _ in range(2))
    req = ClipRequest(emotion="happy", seconds=0.5, seed=7)

    def on_hub(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, hub.loop).result(120)

    async def both(r: ClipRequest) -> list:
        return list(await asyncio.gather(a.render(r), b.render(r)))

    ra, rb = on_hub(both(req))
    assert a.renders + b.renders == 1 and ra.path == rb.path and ra.path.is_file()
    assert ra.key == rb.key and ra.frames == rb.frames == 4
    assert on_hub(b.render(req)).cached and a.renders + b.renders == 1  # later: from the shared directory
    # a claim whose gateway died (never released) lapses, and the next request renders it itself
    stale = ClipRequest(emotion="sad", seconds=0.5, seed=7)
    key = a.key(*_resolved(a, stale), stale)
    assert a.shared.claim(f"clip:claim:{key}", "a-dead-gateway", 0.5)
    out = on_hub(b.render(stale))
    assert out.path.is_file() and b.renders + a.renders == 2
    # Redis gone: a gateway renders on its own (logged) rather than failing the request
    redis_server.stop()
    with caplog.at_level(logging.WARNING, "avatarcast.shared_state"):
        alone = ClipRequest(emotion="happy", seconds=0.5, seed=8)
        assert on_hub(a.render(alone)).path.is_file() and a.renders + b.renders == 3
    assert sum("shared state unavailable" in r.message for r in caplog.records) == 1


def _resolved(r: ClipRenderer, req: ClipRequest) -> tuple[Any, str, float]:
    _, params, emotion, intensity = r._validate(req)
    return params, emotion, intensity
