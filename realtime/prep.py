"""Where a new avatar is prepared: off the live path, in a process of its own at the lowest CPU priority.

Preparing an avatar (its idle and listening loops, then its latents cache) costs ~6.5 s of a CPU core with the
tiny engine, and a client may ask for a new random avatar every second. Measured (issue 19, docs/security.md
"Under attack"): with that work in the engine thread's background lane, the engine thread was busy with it 76 s
of an 80 s run, its runtime's threads took the cores from the JPEG encoders and the event loop, and a healthy
session's frames left 30-90 ms late. So clients' avatars are prepared elsewhere, at a priority live work preempts.

In a process, not a thread at that priority (`PrepProcess`): a thread at SCHED_IDLE still takes the server's one
GIL, and when the kernel starves it (both cores busy) while it holds the GIL, every other thread of the server,
the event loop included, waits for it: a priority inversion. Measured (docs/bench/prep_process_2026-12-06): the
event loop stalled up to 1.4 s with the prep thread at SCHED_IDLE beside two busy cores, and the server got 0.15
of a core. The child has its own GIL, so starving it costs the server nothing. It runs:
- one call at a time, at most one core (one runtime thread);
- at SCHED_IDLE for the whole child (every thread the runtime starts there inherits it), else nice 19, and the
  log says which;
- with an engine and latents cache of its own, loaded once at start-up. The entries it builds go to the shared
  store, and the live cache reads them between chunk jobs; the loops come back as arrays (15 MB a loop). An
  engine that keeps per-avatar work (motion: the cut-out's layers, atlas and sprites drawn, 1.7-1.9 s of a core)
  gets it handed over as arrays (`PrepEngineSource.adopt_avatar`), so it never prepares the avatar again.
Engines that cannot be loaded twice (wan) prepare in the scheduler's background lane (`EngineLane`), as before.

The avatar store (realtime/avatars.py) decides what to prepare and bounds how many clients may ask for at once.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

import numpy as np

from avatarcast.engines.errors import AvatarcastError, ErrorCode

log = logging.getLogger("avatarcast.prep")
T = TypeVar("T")
Run = Callable[..., Awaitable[Any]]  # run(fn, *args) -> fn(*args), awaited
LOOPS = (("idle", 1, 0.5), ("listening", 2, 0.6))  # (kind, seed, intensity) of an avatar's two loops


class PrepFailed(AvatarcastError):
    """The preparation process died (killed, out of memory) before it answered; the next call starts a new one."""

    code = ErrorCode.ENGINE_FAILED


def lower_priority(every_thread: bool = False) -> str:
    """Put the calling thread (with every_thread: each thread of this process, on Linux) at the lowest CPU priority
    it can get; says which it got. Threads started afterwards inherit it."""
    tids = [0]  # 0: the calling thread (Linux keeps a policy per thread)
    if every_thread and os.path.isdir("/proc/self/task"):
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    if hasattr(os, "SCHED_IDLE"):
        try:
            for tid in tids:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:  # a seccomp profile may refuse it
            pass
    try:
        os.nice(19 - os.nice(0))  # the child's own process: renicing it touches nothing of the server's
        return "nice 19"
    except OSError:
        return "normal"


class Lane(Protocol):
    """Where an avatar's loops and latents cache entries are made."""

    async def prepare(self, params: Any) -> None:
        """Make what the live engine needs to draw the avatar (motion: its reference encoded, its atlas and sprites)
        and hand it over, so that a reaction never prepares the avatar on the live engine's thread (nothing: the
        live engine prepares it on first use)."""
        ...

    async def loop(self, params: Any, kind: str, frames: int) -> np.ndarray:
        """`frames` frames of the avatar's `kind` loop (LOOPS), (frames, 360, 640, 4) uint8."""
        ...

    async def build_cache(self, params: Any, emotion: str) -> None:
        """Build the avatar's entries of `emotion` into the shared store (nothing: the live cache builds them)."""
        ...

    async def done(self, params: Any) -> None:
        """The avatar's preparation is over (or failed): what the lane kept of it for the next call may go."""
        ...


async def make_loop(run: Run, engine: Any, params: Any, kind: str, frames: int) -> np.ndarray:
    """One loop, a small engine call at a time through `run` (the live engine's lane lets chunk jobs between)."""
    seed, intensity = next((s, i) for k, s, i in LOOPS if k == kind)
    state = await run(engine.start_stream, params, kind, intensity, seed)
    await run(engine.sample_chunks, [state])  # leave the rest pose
    chunks: list[np.ndarray] = []
    while sum(len(c) for c in chunks) < frames:
        chunks.append((await run(engine.next_chunk, [state]))[0])
    return np.concatenate(chunks)[:frames]


class EngineLane:
    """The live engine, between its chunk jobs (the scheduler's background lane): start-up avatars, and engines
    that cannot be loaded twice. The live cache builds the entries itself."""

    def __init__(self, engine: Any, scheduler: Any) -> None:
        self.engine, self.scheduler = engine, scheduler

    async def prepare(self, params: Any) -> None:
        return None  # the live engine is the lane: its first use prepares the avatar, between chunk jobs here

    async def loop(self, params: Any, kind: str, frames: int) -> np.ndarray:
        return await make_loop(self.scheduler.run_background, self.engine, params, kind, frames)

    async def build_cache(self, params: Any, emotion: str) -> None:
        return None

    async def done(self, params: Any) -> None:
        return None  # the live engine keeps its avatars: sessions draw from them


# -- the child process's side: module-level, so that spawn's child finds them by name --
_child: dict[str, Any] = {}


def _child_start(settings: Any, templates: dict, cache_dir: Any, store: Any) -> str:
    """The child's initializer: its engine and cache, then the lowest priority for each of its threads. Loaded at
    normal priority: at SCHED_IDLE beside two busy cores the load (a second or two of a core) gets almost no CPU,
    and the server's start waits for it. The index is rebuilt from the settings (a Redis client does not cross
    processes)."""
    from avatarcast.realtime.engine_loader import load_engine
    from avatarcast.realtime.latents_index import index_for
    from avatarcast.realtime.shared_state import make_shared_state
    from avatarcast.templates.cache import LatentsCache

    engine = load_engine(settings)
    _child["engine"] = engine
    _child["cache"] = LatentsCache(
        engine, templates, cache_dir, store=store, index=index_for(make_shared_state(settings.redis_url))
    )
    _child["priority"] = lower_priority(every_thread=True)  # the runtime's threads too, and the pool's feeder after
    return _child["priority"]


def _child_hello() -> tuple[int, str]:
    return os.getpid(), _child["priority"]


def _child_loop(params: Any, kind: str, frames: int) -> np.ndarray:
    async def direct(fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    return asyncio.run(make_loop(direct, _child["engine"], params, kind, frames))


def _child_build_cache(params: Any, emotion: str) -> None:
    """Build the entries into the store, and drop the child's copies: the live cache reads them from there."""
    _child["cache"].precompute([params], [emotion])
    _child["cache"].forget(params)


def _child_prepared_avatar(params: Any) -> tuple[str, Any]:
    return _child["engine"].prepared_avatar(params)


def _child_release(params: Any) -> None:
    _child["engine"].release_avatar(params)


class PrepProcess:
    """One child process (spawned: no fork of a threaded server) at the lowest CPU priority, with its own engine
    and latents cache (see the module docstring). start() waits until it has loaded them; close() ends it."""

    def __init__(self, settings: Any, templates: dict, cache_dir: Any, store: Any, adopt: Any = None) -> None:
        """settings: the engine's (one runtime thread) and --redis-url; templates, cache_dir, store: the live
        cache's, so the child builds the entries the live cache looks for, where it looks. adopt: the live engine
        when it takes prepared avatars over (PrepEngineSource): each avatar's is handed to it after its first loop,
        so the live engine never prepares it again."""
        self._initargs = (settings, templates, cache_dir, store)
        self._adopt = adopt
        self._pool: ProcessPoolExecutor | None = None
        self.pid: int | None = None
        self.priority = "not started"  # what lower_priority() got in the child

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_start,
            initargs=self._initargs,
        )

    async def start(self) -> PrepProcess:
        self.pid, self.priority = await self._call(_child_hello)  # the first call spawns it and loads the engine
        level = logging.INFO if self.priority == "SCHED_IDLE" else logging.WARNING
        log.log(level, "avatars are prepared in process %d at CPU priority %s", self.pid, self.priority)
        return self

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in the child, after every call queued before it. Its exceptions come back as raised there
        (pickled); a child that died comes back as PrepFailed, and the next call spawns a new one. Cancelling the
        await drops a call that has not started; one that has runs to its end there (one loop or one emotion's
        entries: a second or so), and close() waits for it."""
        if self._pool is None:
            self._pool = self._new_pool()
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool as exc:
            if self._pool is pool:
                self._pool = None
                await asyncio.to_thread(pool.shutdown, wait=True)
            raise PrepFailed(f"the avatar preparation process died: {exc}") from exc

    async def prepare(self, params: Any) -> None:
        # prepared there (1.7-1.9 s of a core) and handed over as arrays (a motion avatar, the cut-out draw's,
        # pickles to ~42 MB, ~50 ms of the child to write); the loops that follow there reuse the child's copy
        if self._adopt is not None:
            self._adopt.adopt_avatar(*await self._call(_child_prepared_avatar, params))

    async def loop(self, params: Any, kind: str, frames: int) -> np.ndarray:
        return await self._call(_child_loop, params, kind, frames)

    async def build_cache(self, params: Any, emotion: str) -> None:
        await self._call(_child_build_cache, params, emotion)

    async def done(self, params: Any) -> None:
        """The live engine holds the avatar (adopted by prepare()): the child's copy goes."""
        if self._adopt is not None and self._pool is not None:  # a child that died took its copies with it
            await self._call(_child_release, params)

    async def close(self) -> None:
        """Drop queued calls, wait for the running one, and reap the child (no process outlives the server)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
