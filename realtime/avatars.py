"""Per-avatar assets every session of that avatar shares: idle and listening loops, the latents cache.

Idle and listening frames are short sampled loops played back and forth (no seam at the
turn-around), so a quiet session costs no engine time at all; the engine is kept for reactions.
Until an avatar's loops are ready (a few seconds of engine time, once per avatar per process),
its sessions show the avatar's still reference frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avatarcast.engines.avatar_world import BUILTIN_AVATARS, get_avatar
from avatarcast.engines.avatar_world.reference import reference_frame

log = logging.getLogger("avatarcast.avatars")


def resolve_avatar(spec: str | int) -> tuple[str, Any]:
    """A client's avatar choice -> (canonical name, AvatarParams); ValueError names the choices."""
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec.strip())
    params = get_avatar(spec)
    name = params.name if not (isinstance(spec, str) and spec.lower().startswith("random-")) else spec.lower()
    return name, params


def avatar_names() -> list[str]:
    return [a.name.lower() for a in BUILTIN_AVATARS]


def pingpong(n: int, index: int) -> int:
    """Frame of a loop of n frames played forward then backward, for a global frame index."""
    if n <= 1:
        return 0
    period = 2 * n - 2
    i = index % period
    return i if i < n else period - i


@dataclass
class AvatarAssets:
    name: str
    params: Any
    still: np.ndarray  # (360, 640, 4) uint8: the reference frame, shown until the loops exist
    loops: dict[str, np.ndarray] = field(default_factory=dict)  # "idle"/"listening" -> (N,360,640,4)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    warm_s: float | None = None
    # (kind, loop frame, format, quality) -> encoded bytes: a quiet session costs no encoding either
    encoded: dict[tuple, bytes] = field(default_factory=dict)

    def loop_frame(self, kind: str, index: int) -> np.ndarray:
        frames = self.loops.get(kind)
        if frames is None or not len(frames):
            return self.still
        return frames[pingpong(len(frames), index)]

    def loop_key(self, kind: str, index: int) -> tuple | None:
        """A key for caching the encoded loop frame (None while the loops are not ready)."""
        frames = self.loops.get(kind)
        if frames is None or not len(frames):
            return None
        return kind, pingpong(len(frames), index)


class AvatarStore:
    """Avatar name -> assets, warmed once (on the engine thread, between sampler batches)."""

    def __init__(
        self,
        engine: Any,
        cache: Any,
        scheduler: Any,
        *,
        loop_frames: int = 16,
        precompute: bool = True,
        max_avatars: int = 32,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.scheduler = scheduler
        self.loop_frames = loop_frames
        self.precompute = precompute
        self.max_avatars = max_avatars
        self._assets: dict[str, AvatarAssets] = {}
        self._tasks: dict[str, asyncio.Task] = {}

    def get(self, spec: str | int) -> AvatarAssets:
        """The avatar's assets (warming starts in the background on first use)."""
        name, params = resolve_avatar(spec)
        a = self._assets.get(name)
        if a is None:
            if len(self._assets) >= self.max_avatars:
                raise ValueError(f"too many distinct avatars in this process (limit {self.max_avatars})")
            a = AvatarAssets(name, params, reference_frame(params))
            self._assets[name] = a
            self._tasks[name] = asyncio.create_task(self._warm(a), name=f"warm-{name}")
        return a

    async def warm(self, spec: str | int) -> AvatarAssets:
        """Get and wait until ready (start-up and tests)."""
        a = self.get(spec)
        await a.ready.wait()
        return a

    async def close(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        for t in self._tasks.values():
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass

    async def _warm(self, a: AvatarAssets) -> None:
        """Loops first (sessions need them at once), then the cache, one small engine task at a time
        in the scheduler's background lane, so live sessions keep their frame rate meanwhile."""
        t0 = time.perf_counter()
        run = self.scheduler.run_background
        try:
            for kind, seed, intensity in (("idle", 1, 0.5), ("listening", 2, 0.6)):
                state = await run(self.engine.start_stream, a.params, kind, intensity, seed)
                await run(self.engine.sample_chunks, [state])  # leave the rest pose
                chunks: list[np.ndarray] = []
                while sum(len(c) for c in chunks) < self.loop_frames:
                    chunks.append((await run(self.engine.next_chunk, [state]))[0])
                a.loops[kind] = np.concatenate(chunks)[: self.loop_frames]
            if self.precompute and self.cache is not None:
                stats: dict = {}
                for emotion in self.cache.templates:
                    for k, v in (await run(self.cache.precompute, [a.params], [emotion])).items():
                        stats[k] = round(stats.get(k, 0) + v, 3)
                log.info("avatar %s: latents cache %s", a.name, stats)
        except Exception as exc:  # a broken avatar must not take the server down
            a.error = f"{type(exc).__name__}: {exc}"
            log.exception("warming avatar %s failed", a.name)
        finally:
            a.warm_s = round(time.perf_counter() - t0, 3)
            a.ready.set()
            log.info("avatar %s ready in %.2f s", a.name, a.warm_s)
