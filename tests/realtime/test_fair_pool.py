"""realtime/fair_pool.py: sessions take turns at the shared emotion reader and prosody."""

from __future__ import annotations

import asyncio
import threading

import pytest

from avatarcast.realtime.fair_pool import FairPool


def _blocked_pool() -> tuple[FairPool, threading.Event]:
    """A one-worker pool whose worker is busy until the returned event is set."""
    pool, gate, started = FairPool(1, "test"), threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(5)

    pool.submit_as("gate", hold)
    assert started.wait(5)
    return pool, gate


def test_owners_take_turns_whatever_their_backlog() -> None:
    pool, gate = _blocked_pool()
    order: list[str] = []
    futs = [pool.lane(name[0]).submit(order.append, name) for name in ("a1", "a2", "a3", "b1", "c1", "b2")]
    assert pool.queued() == {"a": 3, "b": 2, "c": 1}
    gate.set()
    for f in futs:
        f.result(5)
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert pool.queued() == {}
    pool.shutdown()


def test_a_lane_serves_run_in_executor_and_passes_errors_back() -> None:
    pool = FairPool(2, "test")
    lane = pool.lane("session-1")

    async def main() -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(lane, sum, [1, 2, 3])
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(lane, lambda: 1 / 0)
        return ok, threading.current_thread().name

    ok, _ = asyncio.run(main())
    assert ok == 6
    lane.shutdown()  # a lane's shutdown leaves the shared pool running
    assert pool.submit(len, "abc").result(5) == 3
    pool.shutdown()


def test_shutdown_cancels_what_is_queued_and_stops_the_workers() -> None:
    pool, gate = _blocked_pool()
    queued = [pool.lane("a").submit(int, "1") for _ in range(3)]
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    gate.set()
    for t in pool._threads:
        t.join(5)
        assert not t.is_alive()
    with pytest.raises(RuntimeError):
        pool.submit(int, "1")
