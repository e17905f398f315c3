"""Per-avatar assets every session of that avatar shares: idle and listening loops, the latents cache.

Idle and listening frames are short sampled loops played back and forth (no seam at the
turn-around), so a quiet session costs no engine time at all; the engine is kept for reactions.
Until an avatar's loops are ready (a few seconds of engine time, once per avatar per process),
its sessions show the avatar's still reference frame.

An avatar costs ~100 MB (loops and its cached first chunks), and `random-<seed>` offers 2^63 of them: the
store keeps at most `max_avatars`, and makes room by evicting the least recently used one that no session
holds, that is not warming, and that was not warmed at start-up. With every slot held a new avatar is
refused (503 `avatars_full`), never the process stopped taking avatars until a restart.

Avatars that clients ask for are prepared off the live path (realtime/prep.py), one at a time in the order asked.
Preparation is bounded as the slots are: at most `max_preparing` new avatars are waiting or being prepared (one
more is refused with 503 `avatars_full` and a Retry-After), and a client (its IP) has at most one of them: while
its last new avatar is being prepared, it is refused another with 429 `rate_limited`. Without the bound, one
client asking for a new random avatar every second would keep every slot warming, and the other clients would get
`avatars_full` for as long as it kept on.

A new avatar's still (its reference frame, 6-11 ms of drawing) is drawn on a worker thread before the session
opens (`ready_still`), not on the event loop, where it would hold up every session's frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avatarcast.engines.avatar_world import BUILTIN_AVATARS, get_avatar
from avatarcast.engines.avatar_world.reference import reference_frame
from avatarcast.engines.errors import AvatarcastError, ErrorCode
from avatarcast.realtime.prep import LOOPS, EngineLane, Lane
from avatarcast.realtime.ratelimit import retry_after

log = logging.getLogger("avatarcast.avatars")


def resolve_avatar(spec: str | int) -> tuple[str, Any]:
    """A client's avatar choice -> (canonical name, AvatarParams); ValueError names the choices."""
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec.strip())
    params = get_avatar(spec)
    m = re.fullmatch(r"random-(-?\d+)", spec.strip().lower()) if isinstance(spec, str) else None
    name = f"random-{int(m.group(1))}" if m else params.name  # random-007 is random-7: one entry, one cache
    return name, params


class AvatarsFull(AvatarcastError):
    """A new avatar is needed but every slot holds one in use (or still warming): retry later."""

    code = ErrorCode.AVATARS_FULL


class PreparingOne(AvatarcastError):
    """This client's last new avatar is still being prepared: one at a time per client (429, Retry-After)."""

    code = ErrorCode.RATE_LIMITED


def avatar_names() -> list[str]:
    return [a.name.lower() for a in BUILTIN_AVATARS]


def avatar_pattern(default: bool = False) -> str:
    """The avatar choices the HTTP API takes, as a regular expression (Python's, searched as JSON Schema does):
    a built-in name or index, or random-<seed>; with `default`, also "" (the server's default avatar)."""
    choices = [*map(re.escape, avatar_names()), *map(str, range(len(BUILTIN_AVATARS))), "random--?[0-9]+"]
    return rf"^(?:{'|'.join([''] * default + choices)})$"


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
    # the live engine can draw it without preparing it on its own thread (Lane.prepare done, or failed: then the
    # engine prepares it on first use, as it would without a lane); a reaction's chunks wait for it
    drawable: asyncio.Event = field(default_factory=asyncio.Event)
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
    """Avatar name -> assets, warmed once, at most `max_avatars` of them, least recently used first out, and at
    most `max_preparing` being prepared for clients (see the module docstring).

    `prep`: where clients' new avatars are prepared (realtime/prep.py); None: on the engine, between chunk jobs.
    Start-up avatars (warm()) are always prepared on the engine: nothing is live yet."""

    def __init__(
        self,
        engine: Any,
        cache: Any,
        scheduler: Any,
        *,
        loop_frames: int = 16,
        precompute: bool = True,
        max_avatars: int = 16,
        prep: Lane | None = None,
        max_preparing: int = 2,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.scheduler = scheduler
        self.loop_frames = loop_frames
        self.precompute = precompute
        self.max_avatars = max_avatars
        self.max_preparing = max_preparing
        self._engine_lane = EngineLane(engine, scheduler)
        self._prep: Lane = prep or self._engine_lane
        self._prep_turn = asyncio.Lock()  # clients' avatars are prepared one at a time, first asked first
        self._preparing: dict[str, str] = {}  # clients' new avatars not ready yet -> the client that asked
        self.prep_s = 10.0  # running estimate of one preparation's seconds (for Retry-After)
        self._assets: OrderedDict[str, AvatarAssets] = OrderedDict()  # least recently used first
        self._tasks: dict[str, asyncio.Task] = {}
        self._users: Counter[str] = Counter()  # sessions holding each avatar
        self._pinned: set[str] = set()  # warmed at start-up: never evicted
        # stills of new avatars drawn off the event loop (ready_still), until their first get() takes them; bounded
        # as preparation is (a refused or failed open leaves one behind at most until newer ones push it out)
        self._stills: OrderedDict[str, np.ndarray] = OrderedDict()
        self.evicted = 0

    @property
    def preparing(self) -> int:
        """Clients' new avatars waiting for, or in, preparation."""
        return len(self._preparing)

    def get(self, spec: str | int, client: str = "") -> AvatarAssets:
        """The avatar's assets (preparation starts in the background on first use). A new one is refused with
        PreparingOne when `client` already has one being prepared, and AvatarsFull when `max_preparing` are, or
        when it finds no slot to take."""
        return self._get(spec, client, self._prep)

    async def ready_still(self, spec: str | int, client: str = "") -> None:
        """Draw a new avatar's still on a worker thread, for the get() that follows (Hub.open_session). Refuses as
        get() would (ValueError, PreparingOne, AvatarsFull) before drawing anything."""
        name, params = resolve_avatar(spec)
        if name in self._assets or name in self._stills:
            return
        self._check_preparation(client)
        if len(self._assets) >= self.max_avatars and not self._evictable():
            raise self._full()
        still = await asyncio.to_thread(reference_frame, params)
        self._stills[name] = still
        while len(self._stills) > self.max_preparing + 2:
            self._stills.popitem(last=False)

    def _get(self, spec: str | int, client: str, lane: Lane) -> AvatarAssets:
        name, params = resolve_avatar(spec)
        a = self._assets.get(name)
        if a is None:
            if lane is self._prep:
                self._check_preparation(client)
            if len(self._assets) >= self.max_avatars and not self._evict_one():
                raise self._full()
            still = self._stills.pop(name, None)
            a = AvatarAssets(name, params, reference_frame(params) if still is None else still)
            self._assets[name] = a
            if lane is self._prep:
                self._preparing[name] = client
            self._tasks[name] = asyncio.create_task(self._warm(a, lane), name=f"warm-{name}")
        self._assets.move_to_end(name)
        return a

    def _check_preparation(self, client: str) -> None:
        """Refuse a new avatar over the preparation bounds (the module docstring)."""
        if client and client in self._preparing.values():
            raise PreparingOne(
                "this client's last new avatar is still being prepared; one at a time per client",
                retry_after=retry_after(self.prep_s * len(self._preparing)),
            )
        if len(self._preparing) >= self.max_preparing:
            raise AvatarsFull(
                f"{len(self._preparing)} new avatars are already being prepared; retry later, or use one that is ready",
                retry_after=retry_after(self.prep_s),
            )

    def acquire(self, spec: str | int, client: str = "") -> AvatarAssets:
        """get(), held for a session until release(): a held avatar is never evicted."""
        a = self.get(spec, client)
        self._users[a.name] += 1
        return a

    def release(self, name: str) -> None:
        self._users[name] -= 1
        if self._users[name] <= 0:
            del self._users[name]

    def _full(self) -> AvatarsFull:
        return AvatarsFull(
            f"all {self.max_avatars} avatar slots hold avatars in use or warming; "
            "retry later, or use one of the built-ins"
        )

    def _evictable(self) -> str | None:
        """The least recently used avatar nobody holds (warmed, not pinned), or None."""
        for name, a in self._assets.items():
            if name not in self._users and name not in self._pinned and a.ready.is_set():
                return name
        return None

    def _evict_one(self) -> bool:
        """Drop the least recently used avatar nobody holds (warmed, not pinned); False if there is none."""
        name = self._evictable()
        if name is not None:
            a = self._assets[name]
            del self._assets[name]
            self._tasks.pop(name, None)
            if self.cache is not None:  # its cached first chunks: random ones from disk too (unbounded there)
                self.cache.forget(a.params, delete_files=name.startswith("random-"))
            self.evicted += 1
            log.info("avatar %s evicted (least recently used; %d avatars kept)", name, len(self._assets))
            return True
        return False

    def __contains__(self, spec: str | int) -> bool:
        return resolve_avatar(spec)[0] in self._assets

    async def warm(self, spec: str | int) -> AvatarAssets:
        """Get, pin (start-up avatars are never evicted) and wait until ready (start-up and tests); prepared on the
        engine, outside the preparation bounds."""
        a = self._get(spec, "", self._engine_lane)
        self._pinned.add(a.name)
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

    async def _warm(self, a: AvatarAssets, lane: Lane) -> None:
        """Loops first (sessions need them at once), then the cache, one small task at a time on `lane`. A
        client's avatar waits for its turn first: one preparation at a time, in the order they were asked for."""
        client = a.name in self._preparing
        try:
            # what the engine needs to draw it first, outside the one-at-a-time turn: a call between another
            # avatar's steps there (a second or two), not behind its whole preparation (12-18 s beside a session)
            await self._make_drawable(a, lane)
            async with self._prep_turn if client else contextlib.nullcontext():
                await self._prepare(a, lane)
        finally:
            if self._preparing.pop(a.name, None) is not None and a.warm_s is not None:
                self.prep_s = 0.7 * self.prep_s + 0.3 * a.warm_s

    async def _make_drawable(self, a: AvatarAssets, lane: Lane) -> None:
        try:
            await lane.prepare(a.params)
        except Exception:  # the engine prepares it on first use instead; the loops and cache go on
            log.warning("avatar %s: preparing it for the engine failed", a.name, exc_info=True)
        finally:
            a.drawable.set()

    async def _prepare(self, a: AvatarAssets, lane: Lane) -> None:
        t0 = time.perf_counter()
        try:
            for kind, _, _ in LOOPS:
                a.loops[kind] = await lane.loop(a.params, kind, self.loop_frames)
            if self.precompute and self.cache is not None:
                stats: dict = {}
                for emotion in self.cache.templates:
                    await lane.build_cache(a.params, emotion)  # built there and written to the store...
                    # ...then read into the live cache's memory between chunk jobs (~20 ms an entry; built here only
                    # if the store refused the entries)
                    loaded = await self.scheduler.run_background(self.cache.precompute, [a.params], [emotion])
                    for k, v in loaded.items():
                        stats[k] = round(stats.get(k, 0) + v, 3)
                log.info("avatar %s: latents cache %s", a.name, stats)
        except Exception as exc:  # a broken avatar must not take the server down
            a.error = f"{type(exc).__name__}: {exc}"
            log.exception("warming avatar %s failed", a.name)
        finally:
            try:
                await lane.done(a.params)
            except Exception:  # the avatar is ready all the same; only the lane's own copy of it may linger
                log.warning("avatar %s: the preparation lane could not let its copy go", a.name, exc_info=True)
            a.warm_s = round(time.perf_counter() - t0, 3)
            a.ready.set()
            log.info("avatar %s ready in %.2f s", a.name, a.warm_s)
