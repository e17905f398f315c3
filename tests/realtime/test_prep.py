"""Avatar preparation off the live path (realtime/prep.py) and its bounds (realtime/avatars.py), with the real
shipped tiny engine (onnxruntime), the real scheduler and a real latents cache on disk."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from avatarcast.engines.errors import ErrorCode
from avatarcast.realtime.avatars import AvatarsFull, AvatarStore, PreparingOne
from avatarcast.realtime.engine_loader import load_engine
from avatarcast.realtime.prep import PrepLane, lower_priority
from avatarcast.realtime.scheduler import EngineScheduler
from avatarcast.realtime.settings import Settings
from avatarcast.templates import load_templates
from avatarcast.templates.cache import LatentsCache

linux_only = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def engine() -> Any:
    return load_engine(Settings(engine="tiny"))  # the lane the Hub builds for tiny: a second engine of its own


def two_templates() -> dict:
    """Two emotions' templates: the cache hand-over is the same for two as for eleven, in a fraction of the time."""
    t = load_templates()
    return {k: t[k] for k in ("idle", "happy")}


def prep_lane(cache: LatentsCache) -> PrepLane:
    """As the Hub builds it: a second tiny engine on one thread, a cache on the same store."""
    return PrepLane(
        lambda: load_engine(Settings(engine="tiny", threads=1)),
        lambda e: LatentsCache(e, cache.templates, cache.cache_dir, store=cache.store, index=cache.index),
    )


@linux_only
def test_lower_priority_lowers_the_calling_thread_only() -> None:
    got: dict[str, Any] = {}

    def worker() -> None:
        got["said"] = lower_priority()
        got["policy"] = os.sched_getscheduler(0)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert got["said"] == "SCHED_IDLE" and got["policy"] == os.SCHED_IDLE
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # this thread, and so the event loop's, keeps its own


@linux_only
def test_the_prep_lane_runs_its_own_engine_on_one_idle_priority_thread(engine: Any, tmp_path: Any) -> None:
    cache = LatentsCache(engine, two_templates(), tmp_path)

    async def go() -> tuple[Any, ...]:
        prep = prep_lane(cache)
        lane = await prep.start()
        try:
            where = await lane.run(threading.get_native_id)
            state = await lane.run(lane.engine.start_stream, "bun", "idle", 0.5, 1)
            frames = (await lane.run(lane.engine.next_chunk, [state]))[0]
            return prep, lane, where, frames
        finally:
            await prep.close()

    prep, lane, where, frames = run(go())
    assert prep.priority == "SCHED_IDLE" and where == prep.thread_id != threading.get_native_id()
    assert os.sched_getscheduler(0) != os.SCHED_IDLE
    assert lane.engine is not engine and lane.cache is not cache and lane.cache.store is cache.store
    assert frames.shape == (4, 360, 640, 4)


def test_a_prepared_avatar_has_its_loops_and_its_cache_in_the_live_cache_once(engine: Any, tmp_path: Any) -> None:
    cache = LatentsCache(engine, two_templates(), tmp_path)

    async def go() -> tuple[Any, ...]:
        sch = EngineScheduler(engine)
        await sch.start()
        prep = prep_lane(cache)
        store = AvatarStore(engine, cache, sch, prep=await prep.start())
        try:
            a = store.get("random-11", client="ip:10.0.0.1")
            assert store.preparing == 1 and not a.ready.is_set()
            await asyncio.wait_for(a.ready.wait(), 120)
            return a, store, prep.lane
        finally:
            await store.close()
            await prep.close()
            await sch.close()

    a, store, lane = run(go())
    assert a.error is None and len(a.loops["idle"]) == len(a.loops["listening"]) == 16
    assert store.preparing == 0
    for emotion, variants in (("idle", 1), ("happy", 2)):
        for v in range(variants):
            assert cache.lookup(a.params, emotion, v) is not None  # the live cache has every entry...
    assert len(lane.cache) == 0  # ...and the lane's cache let go of its copies


def test_new_avatars_are_bounded_per_client_and_in_all_with_retry_after(engine: Any, tmp_path: Any) -> None:
    cache = LatentsCache(engine, two_templates(), tmp_path)

    async def go() -> list[Any]:
        sch = EngineScheduler(engine)
        await sch.start()
        prep = prep_lane(cache)
        store = AvatarStore(engine, cache, sch, precompute=False, prep=await prep.start(), max_preparing=2)
        seen: list[Any] = []
        try:
            first = store.get("random-1", client="ip:a")
            for spec, client in (("random-2", "ip:a"), ("random-3", "ip:b"), ("random-4", "ip:c")):
                try:
                    store.get(spec, client=client)
                    seen.append("ok")
                except (PreparingOne, AvatarsFull) as exc:
                    seen.append(exc)
            seen.append(store.get("random-1", client="ip:a") is first)  # an avatar already asked for: no new work
            await asyncio.wait_for(first.ready.wait(), 120)
            store.get("random-4", client="ip:c")  # a place came free
            seen.append(store.preparing)
            for name in ("pip", "bun", "random-5"):  # start-up avatars are outside the bounds
                await asyncio.wait_for(store.warm(name), 120)
            seen.append(store.preparing)
            return seen
        finally:
            await store.close()
            await prep.close()
            await sch.close()

    one_each, second_client, full, same, after, startup = run(go())
    assert isinstance(one_each, PreparingOne) and one_each.code is ErrorCode.RATE_LIMITED and one_each.status == 429
    assert int(one_each.retry_after) >= 1
    assert second_client == "ok"
    assert isinstance(full, AvatarsFull) and full.status == 503 and int(full.retry_after) >= 1
    assert same is True
    assert after == 2 and startup <= 2


def test_a_new_avatars_still_is_drawn_off_the_event_loop(engine: Any, tmp_path: Any, monkeypatch: Any) -> None:
    """Hub.open_session has the store draw a new avatar's still (its reference frame) on a worker thread; the
    session's get() then takes it without drawing on the loop. A client the bounds refuse gets nothing drawn."""
    from avatarcast.realtime import avatars

    drawn: list[tuple[str, bool]] = []
    real = avatars.reference_frame

    def spy(params: Any) -> Any:
        drawn.append((params.name, threading.current_thread() is threading.main_thread()))
        return real(params)

    monkeypatch.setattr(avatars, "reference_frame", spy)
    cache = LatentsCache(engine, two_templates(), tmp_path)

    async def go() -> tuple[Any, Any]:
        sch = EngineScheduler(engine)
        await sch.start()
        prep = prep_lane(cache)
        store = AvatarStore(engine, cache, sch, precompute=False, prep=await prep.start(), max_preparing=2)
        try:
            await store.ready_still("random-11", client="ip:a")
            a = store.get("random-11", client="ip:a")
            with pytest.raises(PreparingOne):
                await store.ready_still("random-12", client="ip:a")  # its first is still being prepared
            with pytest.raises(ValueError):
                await store.ready_still("nobody", client="ip:b")
            return a, store.preparing
        finally:
            await store.close()
            await prep.close()
            await sch.close()

    a, preparing = run(go())
    assert drawn == [("random-11", False)] and a.still.shape == (360, 640, 4) and a.still[..., 3].max() == 255
    assert preparing == 1


@linux_only
def test_the_served_hub_prepares_clients_avatars_on_an_idle_priority_thread(server_hub: Any) -> None:
    async def loop_thread() -> int:
        return threading.get_native_id()

    prep = server_hub.prep
    assert prep is not None and prep.priority == "SCHED_IDLE"
    assert os.sched_getscheduler(prep.thread_id) == os.SCHED_IDLE
    loop_tid = asyncio.run_coroutine_threadsafe(loop_thread(), server_hub.loop).result(10)
    assert loop_tid != prep.thread_id and os.sched_getscheduler(loop_tid) != os.SCHED_IDLE
