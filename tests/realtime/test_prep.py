"""Avatar preparation off the live path (realtime/prep.py) and its bounds (realtime/avatars.py), with the real
shipped tiny engine (onnxruntime), a real preparation process, the real scheduler and a real latents cache on
disk."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

import numpy as np
import pytest

from avatarcast.engines.avatar_world import get_avatar
from avatarcast.engines.errors import ErrorCode
from avatarcast.realtime.avatars import AvatarsFull, AvatarStore, PreparingOne
from avatarcast.realtime.engine_loader import load_engine
from avatarcast.realtime.prep import PrepFailed, PrepProcess, lower_priority, make_loop
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


def prep_lane(cache: LatentsCache) -> PrepProcess:
    """As the Hub builds it for tiny: a process with a second tiny engine of one thread, a cache on the same store."""
    return PrepProcess(Settings(engine="tiny", threads=1), cache.templates, cache.cache_dir, cache.store)


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


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@linux_only
def test_the_prep_process_makes_the_same_loop_as_the_server_would_in_a_child_at_idle_priority(tmp_path: Any) -> None:
    """The loop comes back from a child process at SCHED_IDLE (the server's own threads keep their priority),
    equal to the one an engine of the same settings makes here; close() reaps the child."""
    one_thread = load_engine(Settings(engine="tiny", threads=1))
    cache = LatentsCache(one_thread, two_templates(), tmp_path)
    params = get_avatar("random-5")

    async def here(fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def go() -> tuple[Any, ...]:
        prep = await prep_lane(cache).start()
        try:
            assert prep.pid is not None
            policy = {os.sched_getscheduler(int(t)) for t in os.listdir(f"/proc/{prep.pid}/task")}  # every thread
            loop = await prep.loop(params, "listening", 16)
        finally:
            await prep.close()
        return prep, policy, loop, await make_loop(here, one_thread, params, "listening", 16)

    prep, policy, loop, expected = run(go())
    assert prep.pid != os.getpid() and prep.priority == "SCHED_IDLE" and policy == {os.SCHED_IDLE}
    assert os.sched_getscheduler(0) != os.SCHED_IDLE
    assert loop.shape == (16, 360, 640, 4) and loop.dtype == np.uint8
    assert np.array_equal(loop, expected)
    assert not alive(prep.pid)  # reaped, not left a zombie or an orphan


def test_the_prep_process_errors_come_back_typed_and_a_dead_child_is_replaced(tmp_path: Any) -> None:
    """An error raised in the child comes back as itself; a child killed mid-life comes back as PrepFailed (an
    AvatarcastError), and the next call runs in a new child."""
    cache = LatentsCache(load_engine(Settings(engine="tiny", threads=1)), two_templates(), tmp_path)

    async def go() -> tuple[Any, ...]:
        prep = await prep_lane(cache).start()
        first = prep.pid
        try:
            with pytest.raises(ValueError, match="no template for emotion"):
                await prep.build_cache(get_avatar("pip"), "no-such-emotion")
            assert prep.pid is not None
            os.kill(prep.pid, signal.SIGKILL)
            with pytest.raises(PrepFailed) as failed:
                await prep.loop(get_avatar("pip"), "idle", 4)
            again = await prep.loop(get_avatar("pip"), "idle", 4)
            await prep.start()  # says the new child's pid
            return first, prep.pid, failed.value, again
        finally:
            await prep.close()

    first, second, failed, again = run(go())
    assert failed.code is ErrorCode.ENGINE_FAILED and second != first and not alive(first)
    assert again.shape == (4, 360, 640, 4)
    assert not alive(second)


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
            return a, store
        finally:
            await store.close()
            await prep.close()
            await sch.close()

    a, store = run(go())
    assert a.error is None and len(a.loops["idle"]) == len(a.loops["listening"]) == 16
    assert store.preparing == 0
    for emotion, variants in (("idle", 1), ("happy", 2)):
        for v in range(variants):
            assert cache.lookup(a.params, emotion, v) is not None  # the live cache has every entry, from the store


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
def test_the_served_hub_prepares_clients_avatars_in_an_idle_priority_process(server_hub: Any) -> None:
    """The child is at SCHED_IDLE, and no thread of the server's own process is: one that held the GIL while the
    kernel starved it would stall the event loop (the priority inversion realtime/prep.py is about)."""
    prep = server_hub.prep
    assert isinstance(prep, PrepProcess) and prep.priority == "SCHED_IDLE" and prep.pid != os.getpid()
    assert os.sched_getscheduler(prep.pid) == os.SCHED_IDLE
    assert all(os.sched_getscheduler(int(tid)) != os.SCHED_IDLE for tid in os.listdir("/proc/self/task"))


def test_the_served_hub_hands_the_live_engine_the_avatar_its_prep_process_prepared(server_hub: Any) -> None:
    """Motion keeps per-avatar work (the reference encoded, the atlas rendered): the child's copy comes back as
    arrays, before the avatar's loops, so a session of the new avatar finds it done instead of preparing it on the
    live engine (its reaction's chunks wait for `drawable`)."""
    from avatarcast.engines.tiny.engine import avatar_cache_key

    engine = server_hub.services.engine
    if not engine.capabilities.shared_prep:
        pytest.skip("the served engine keeps no prepared avatars")

    async def prepare() -> tuple[Any, bool, bool]:
        a = server_hub.services.avatars.get("random-4242", client="ip:test-adopt")
        # handed over first, before its loops: a reaction of its session waits for this, not for the loops
        await asyncio.wait_for(a.drawable.wait(), 150)
        held_then, ready_then = avatar_cache_key(a.params) in engine._avatars, a.ready.is_set()
        await asyncio.wait_for(a.ready.wait(), 150)
        return a, held_then, ready_then

    a, held_then, ready_then = asyncio.run_coroutine_threadsafe(prepare(), server_hub.loop).result(160)
    assert held_then and not ready_then
    assert a.error is None and len(a.loops["idle"]) == 16
    key = avatar_cache_key(a.params)
    assert key in engine._avatars  # adopted, not prepared there: nothing else on the server asked for random-4242
    # and the child let its copy go (it kept every avatar it prepared: 115 -> 730 MB over 8)
    held = asyncio.run_coroutine_threadsafe(server_hub.prep._call(_child_holds, key), server_hub.loop).result(30)
    assert held is False


def _child_holds(key: str) -> bool:
    """In the prep child: whether its engine still holds the prepared avatar `key`."""
    from avatarcast.realtime import prep

    return key in prep._child["engine"]._avatars
