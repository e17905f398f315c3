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
    sch: EngineScheduler, engine: Any, starts: Sequence[tuple[Any, str]], seconds: float
) -> dict:
    """len(starts) sessions, each (avatar, first emotion), through a started scheduler for `seconds` after their first
    WARM_CHUNKS chunks, a new emotion (`changing_emotions`) every 4 chunks: frames per second over all of them, each
    session's interval between chunks (p50, p95), the scheduler's batches."""
    emotions = changing_emotions(engine)
    frames_per_chunk = engine.capabilities.frames_per_chunk
    chunk_s = frames_per_chunk / FPS
    t_stop = [float("inf")]
    arrivals: list[list[float]] = [[] for _ in starts]
    batches0, jobs0 = sch.batches, sch.jobs_done

    async def session(i: int, state: Any) -> None:
        k = 0
        while time.monotonic() < t_stop[0]:
            emo = emotions[(i + k // 4) % len(emotions)]  # a new emotion every 4 chunks
            res = await sch.submit(ChunkJob(f"s{i}", state.copy(), time.monotonic() + chunk_s, emo, 0.9))
            state, k = res.state, k + 1
            arrivals[i].append(time.monotonic())

    # every stream started first (each new avatar is prepared on the engine thread: seconds for many), then timed
    states = [await sch.run_on_engine(engine.start_stream, a, e, 1.0, i) for i, (a, e) in enumerate(starts)]
    t_stop[0] = time.monotonic() + seconds + WARM_CHUNKS * chunk_s
    await asyncio.gather(*(session(i, st) for i, st in enumerate(states)))
    gaps = [(b - a) * 1000 for xs in arrivals for a, b in zip(xs[WARM_CHUNKS - 1 :], xs[WARM_CHUNKS:])]
    done = [x for xs in arrivals for x in xs[WARM_CHUNKS:]]
    first = [xs[WARM_CHUNKS - 1] for xs in arrivals if len(xs) >= WARM_CHUNKS]
    if not done or not gaps:
        raise ValueError(f"no chunk was timed in {seconds} s after each session's first {WARM_CHUNKS}: run longer")
    wall = max(done) - min(first)
    fps = len(done) * frames_per_chunk / wall
    batches = sch.batches - batches0
    return {
        "sessions": len(starts),
        "fps": round(fps, 1),
        "chunk_interval_ms_p50": _pct(gaps, 50),
        "chunk_interval_ms_p95": _pct(gaps, 95),
        "chunks": len(gaps),
        "batches": batches,
        "mean_batch": round((sch.jobs_done - jobs0) / max(1, batches), 2),
        "pipeline_depth": sch.depth,
        "max_batch": sch.max_batch,
        "realtime_streams": int(fps // FPS),
        "realtime": bool(int(fps // FPS) >= len(starts) and _pct(gaps, 95) <= chunk_s * 1000),
    }
