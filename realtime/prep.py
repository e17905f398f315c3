"""Where a new avatar is prepared: off the live path, on one thread at the lowest CPU priority.

Preparing an avatar (its idle and listening loops, then its latents cache) costs ~6.5 s of a CPU core with the
tiny engine, and a client may ask for a new random avatar every second. Measured (issue 19, docs/security.md
"Under attack"): with that work in the engine thread's background lane, the engine thread was busy with it 76 s
of an 80 s run, its runtime's threads took the cores from the JPEG encoders and the event loop, and a healthy
session's frames left 30-90 ms late (p99 frame interval 198-228 ms against 142 ms quiet). The live chunks did not
suffer: frames go out on time whether or not a chunk is ready; it was the CPU.

So a PrepLane prepares avatars instead:
- on one worker thread: one call at a time, at most one core;
- at SCHED_IDLE (Linux schedules threads, so this is the worker's alone; lowering a priority needs no privilege):
  the kernel gives it only CPU time no other thread wants, and a live thread that wakes (the frame loop, an
  encoder, the engine) preempts it at once. Where SCHED_IDLE is missing: nice 19 for the thread (Linux), else
  nothing, and the log says which;
- with an engine of its own (loaded on that thread, one runtime thread), so it never waits on or holds the live
  engine's thread. Only engines that are cheap to load twice get one (tiny: +80 MB RSS, 0.2 s); the others
  prepare in the scheduler's background lane (`engine_lane`), as before.

The avatar store (realtime/avatars.py) decides what to prepare and bounds how many clients may ask for at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("avatarcast.prep")
T = TypeVar("T")


def lower_priority() -> str:
    """Put the calling thread, and only it, at the lowest CPU priority it can get; says which it got."""
    if hasattr(os, "SCHED_IDLE"):
        try:  # pid 0: the calling thread (Linux keeps a policy per thread)
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:  # a seccomp profile may refuse it
            pass
    if sys.platform.startswith("linux"):  # elsewhere setpriority(PRIO_PROCESS, 0) would renice the whole process
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 19)
            return "nice 19"
        except OSError:
            pass
    return "normal"


@dataclass(frozen=True)
class Lane:
    """Where preparation calls run: an engine, its latents cache (None: no cache), and how to call them."""

    engine: Any
    cache: Any
    run: Callable[..., Awaitable[Any]]  # run(fn, *args) -> fn(*args), awaited


def engine_lane(engine: Any, cache: Any, scheduler: Any) -> Lane:
    """The live engine, between its chunk jobs (the scheduler's background lane): start-up avatars, and engines
    that cannot be loaded twice."""
    return Lane(engine, cache, scheduler.run_background)


class PrepLane:
    """One worker thread at the lowest CPU priority, with its own engine and latents cache (see the module
    docstring); start() loads them on that thread."""

    def __init__(self, load_engine: Callable[[], Any], make_cache: Callable[[Any], Any]) -> None:
        self._load_engine, self._make_cache = load_engine, make_cache
        self.priority = "not started"  # what lower_priority() got on the worker
        self.thread_id: int | None = None  # the worker's kernel thread id, once it runs
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prep", initializer=self._init)
        self.lane: Lane | None = None

    def _init(self) -> None:
        self.priority = lower_priority()
        self.thread_id = threading.get_native_id()

    async def start(self) -> Lane:
        engine = await self.run(self._load_engine)  # on the worker: threads the runtime starts inherit its priority
        self.lane = Lane(engine, self._make_cache(engine), self.run)
        level = logging.INFO if self.priority == "SCHED_IDLE" else logging.WARNING
        log.log(level, "avatars are prepared on their own engine at CPU priority %s", self.priority)
        return self.lane

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on the worker, after every call queued before it. Cancelling the await drops a call that has
        not started; one that has runs to its end (a thread cannot be interrupted)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
