"""N sessions through the server's scheduler (realtime/scheduler.EngineScheduler) and nothing else: no sockets,
ASR or encoders, so a GPU machine without the server's web stack measures what the server's engine loop delivers
(its batching, the engine's pipelining) beside `bench engine`'s one batch of all streams.

Each session asks for its next chunk as soon as it has the last (a new emotion every 4 chunks), as a session
whose player keeps a chunk ahead does; the first chunks (new streams, compiles, host workers starting) are not timed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from avatarcast.realtime.scheduler import ChunkJob, EngineScheduler
from avatarcast.vocabulary import FPS

WARM_CHUNKS = 4  # each session's first chunks, not timed


def _pct(xs: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs, np.float64), q)), 2) if len(xs) else float("nan")


def changing_emotions(engine: Any) -> list[str]:
    """The emotions the sessions go through (four of the engine's, idle left out)."""
    return [e for e in engine.emotions if e != "idle"][:4]


async def sessions_through(
    sch: EngineScheduler, engine: Any, starts: Sequence[tuple[Any, str]], seconds: float, warm_limit_s: float = 600.0
) -> dict:
    """len(starts) sessions, each (avatar, first emotion), through a started scheduler, a new emotion
    (`changing_emotions`) every 4 chunks, timed for `seconds` from the moment every session has had its first
    WARM_CHUNKS chunks (compiles, host workers starting and sending avatars take many seconds on a GPU with hundreds
    of sessions; a window fixed from the start would measure them, or nothing): frames per second over all of them,
    each session's interval between chunks (p50, p95), the scheduler's batches. The warm-up may take warm_limit_s."""
    emotions = changing_emotions(engine)
    frames_per_chunk = engine.capabilities.frames_per_chunk
    chunk_s = frames_per_chunk / FPS
    window = [float("inf"), float("inf")]  # [start, stop]: set when the last session is warm
    arrivals: list[list[float]] = [[] for _ in starts]
    warm = [0]
    counts0: list[int] = []

    async def session(i: int, state: Any) -> None:
        k = 0
        while time.monotonic() < window[1]:
            emo = emotions[(i + k // 4) % len(emotions)]  # a new emotion every 4 chunks
            res = await sch.submit(ChunkJob(f"s{i}", state.copy(), time.monotonic() + chunk_s, emo, 0.9))
            state, k = res.state, k + 1
            now = time.monotonic()
            arrivals[i].append(now)
            if k == WARM_CHUNKS:
                warm[0] += 1
                if warm[0] == len(starts):  # the last session warm: the timed window opens
                    window[:] = [now, now + seconds]
                    counts0[:] = [sch.batches, sch.jobs_done]

    # every stream started first (each new avatar is prepared on the engine thread: seconds for many), then timed
    states = [await sch.run_on_engine(engine.start_stream, a, e, 1.0, i) for i, (a, e) in enumerate(starts)]
    try:
        await asyncio.wait_for(asyncio.gather(*(session(i, st) for i, st in enumerate(states))), warm_limit_s + seconds)
    except TimeoutError:
        raise ValueError(
            f"{warm[0]} of {len(starts)} sessions had their first {WARM_CHUNKS} chunks in {warm_limit_s + seconds} s"
        ) from None
    t0 = window[0]
    # each session's chunks that arrived in the window (those asked for before it closed included), and the
    # interval before each
    gaps = [(b - a) * 1000 for xs in arrivals for a, b in zip(xs, xs[1:]) if b > t0]
    done = [x for xs in arrivals for x in xs if x > t0]
    if not done or not gaps:
        raise ValueError(f"no chunk arrived in the {seconds} s after each session's first {WARM_CHUNKS}: run longer")
    wall = max(done) - t0
    fps = len(done) * frames_per_chunk / wall
    batches = sch.batches - counts0[0]
    return {
        "sessions": len(starts),
        "fps": round(fps, 1),
        "chunk_interval_ms_p50": _pct(gaps, 50),
        "chunk_interval_ms_p95": _pct(gaps, 95),
        "chunks": len(gaps),
        "batches": batches,
        "mean_batch": round((sch.jobs_done - counts0[1]) / max(1, batches), 2),
        "pipeline_depth": sch.depth,
        "max_batch": sch.max_batch,
        "realtime_streams": int(fps // FPS),
        "realtime": bool(int(fps // FPS) >= len(starts) and _pct(gaps, 95) <= chunk_s * 1000),
    }
