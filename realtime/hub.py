"""The process-wide state: models loaded once, worker pools, the engine scheduler and the sessions.

Transports (HTTP, WebSocket, WebRTC) only talk to the Hub and to SessionRunners; model code
never sees a socket. Loading happens in threads at start-up so the first user pays nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from avatarcast.realtime.settings import Settings

log = logging.getLogger("avatarcast.hub")
ADMIT_GRACE_S = 0.5  # how long a new session waits for a leaving one before admission control refuses it


class HubError(Exception):
    """An error a client caused or must know about: `status` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after or ("5" if status == 503 else None)  # the Retry-After header (429, 503)


class Hub:
    def __init__(self, settings: Settings, make_scheduler: Callable[["Hub"], Any] | None = None) -> None:
        self.settings = settings
        self.make_scheduler = make_scheduler  # None: an EngineScheduler here; Ray Serve: realtime/cluster/remote.py
        self.engine: Any = None
        self.cache: Any = None
        self.templates: dict = {}
        self.transcriber: Any = None
        self.reader: Any = None
        self.avatars: Any = None
        self.scheduler: Any = None
        self.clips: Any = None
        self.session_config: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sessions: dict[str, Any] = {}
        self.peers: dict[str, Any] = {}  # WebRTC peers by resource id (realtime/webrtc.py)
        from avatarcast.realtime.metrics import Metrics

        self.metrics = Metrics()
        from avatarcast.realtime.ratelimit import Limits

        self.limits = Limits(settings)
        self.stats: Counter = Counter()
        self.ready = asyncio.Event()
        self.started_at = time.monotonic()
        self.draining = False  # shutting down: no new sessions
        self.open_sockets = 0  # WebSocket handlers running (realtime/ws.py): drain waits for their close frames
        self.load_s: dict[str, float] = {}
        # decode/emotion (short numpy/ORT work), ASR (long, serialized by the model's lock), JPEG/WebP
        self.cpu_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cpu")
        self.asr_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="asr")
        self.encode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")

    @property
    def emotions(self) -> tuple[str, ...]:
        return tuple(self.engine.emotions) if self.engine is not None else ()

    # -- life cycle --

    async def start(self) -> None:
        """Load everything (in threads), warm the start-up avatars, then mark ready."""
        from avatarcast.realtime.asr import Transcriber
        from avatarcast.realtime.avatars import AvatarStore
        from avatarcast.realtime.clips import ClipRenderer
        from avatarcast.realtime.emotion import EmotionReader
        from avatarcast.realtime.engine_loader import load_engine
        from avatarcast.realtime.scheduler import EngineScheduler
        from avatarcast.realtime.session import SessionConfig
        from avatarcast.templates import load_templates
        from avatarcast.templates.cache import LatentsCache

        s = self.settings
        if s.engine not in ("tiny", "wan"):
            raise HubError(500, "engine_unavailable", f"engine {s.engine!r} is not available in this build")
        if s.engine == "wan":
            s.validate_wan()  # a missing or incomplete checkpoint fails here, before anything loads
        self.loop = asyncio.get_running_loop()
        loop = self.loop

        async def timed(name: str, fn: Callable[[], Any]) -> Any:
            t0 = time.perf_counter()
            out = await loop.run_in_executor(None, fn)
            self.load_s[name] = round(time.perf_counter() - t0, 3)
            return out

        cache_root = Path(os.path.expanduser("~/.cache/avatarcast"))
        self.engine, self.transcriber, self.reader = await asyncio.gather(
            timed("engine", lambda: load_engine(s)),
            timed("asr", lambda: Transcriber.load(s.asr_model)),
            timed("emotion", lambda: EmotionReader.load(cache_dir=cache_root, threads=1)),
        )
        self.templates = load_templates()
        self.cache = LatentsCache(self.engine, self.templates, s.cache_dir or None)
        per_chunk = getattr(self.engine, "frames_per_chunk", None)  # wan: 4 video frames per latent frame
        self.session_config = SessionConfig.from_templates(self.templates, **({"chunk_frames": per_chunk} if per_chunk else {}))
        if self.make_scheduler is not None:
            self.scheduler = self.make_scheduler(self)
        else:
            self.scheduler = EngineScheduler(self.engine, on_batch=self.metrics.observe_batch)
        await self.scheduler.start()
        self._setup_load_control()
        self.metrics.bind(lambda: len(self.sessions), lambda: len(self.peers), lambda: self.scheduler.queue_depth)
        self.avatars = AvatarStore(self.engine, self.cache, self.scheduler, precompute=bool(s.precompute))
        self.clips = ClipRenderer(self, s.clip_cache_dir or None)
        t0 = time.perf_counter()
        for name in s.avatar_list():
            await self.avatars.warm(name)
        self.load_s["avatars"] = round(time.perf_counter() - t0, 3)
        log.info("ready: %s", self.load_s)
        try:
            await self._calibrate()
        except Exception:  # admission control then admits up to max_sessions until a batch is measured
            log.exception("measuring the engine's cost at start-up failed")
        self._reaper = asyncio.create_task(self._reap_idle(), name="session-reaper")
        self.ready.set()

    def _setup_load_control(self) -> None:
        """The degradation ladder on the scheduler, and the load gauges."""
        from avatarcast.realtime.ladder import ladder_for

        s, sch = self.settings, self.scheduler
        sch.ladder = ladder_for(self.engine, s)
        self.metrics.bind_load(lambda: sch.ladder.level, lambda: sch.busy_fraction(s.capacity_window_s))

    @property
    def chunk_s(self) -> float:
        """Seconds of video one chunk covers: a reacting stream needs one chunk this often."""
        c = self.session_config
        return c.chunk_frames / c.fps

    async def _calibrate(self) -> None:
        """One live-sized chunk through the scheduler, so admission control has a measured cost from the
        start, and a fresh one when it refuses sessions on an estimate nothing has updated for a while
        (a slow spell must not leave a stale, high cost that refuses everyone while the engine sits idle)."""
        import functools

        from avatarcast.realtime.scheduler import ChunkJob

        params = self.avatars.get((self.settings.avatar_list() or ["pip"])[0]).params
        state = functools.partial(self.engine.start_stream, params, "idle", 0.5, 0)
        t0 = time.perf_counter()
        self.scheduler.stream_chunk_s = None  # this measurement replaces the old estimate
        await self.scheduler.submit(ChunkJob("calibration", state, time.monotonic() + 5.0, "idle", 0.5))
        self.load_s["calibration"] = round(time.perf_counter() - t0, 3)

    async def drain(self, reason: str = "the server is shutting down") -> None:
        """Graceful shutdown: refuse new sessions, tell every session why, and close them (WebSocket 1001)."""
        self.draining = True
        sids = list(self.sessions)
        if sids:
            log.info("draining %d session(s): %s", len(sids), reason)
        for sid in sids:
            r = self.sessions.get(sid)
            if r is not None:
                r.notify_closing(reason)
        await asyncio.gather(*(self.close_session(sid) for sid in sids), return_exceptions=True)
        for _ in range(40):  # the sockets send their `closing` event and a 1001 close
            if self.open_sockets <= 0:
                break
            await asyncio.sleep(0.05)

    async def _reap_idle(self) -> None:
        """Close sessions nobody uses: created over HTTP and never attached, or left by their client."""
        while True:
            await asyncio.sleep(min(5.0, self.settings.session_idle_s / 2))
            now = time.monotonic()
            for sid, r in list(self.sessions.items()):
                if r.idle_for(now) > self.settings.session_idle_s:
                    log.info("session %s idle for %.0f s: closing it", sid, r.idle_for(now))
                    self.stats["sessions_idle_closed"] += 1
                    await self.close_session(sid)
            sch = self.scheduler
            stale = time.monotonic() - sch.cost_at > max(10.0, self.settings.capacity_window_s)
            if stale and not sch.queue_depth and self.admission().reason == "capacity":
                try:
                    await self._calibrate()
                except Exception:
                    log.exception("re-measuring the engine's cost failed")

    async def close(self) -> None:
        reaper = getattr(self, "_reaper", None)
        if reaper is not None:
            reaper.cancel()
        for sid in list(self.sessions):
            await self.close_session(sid)
        if self.avatars is not None:
            await self.avatars.close()
        if self.scheduler is not None:
            await self.scheduler.close()
        for pool in (self.cpu_pool, self.asr_pool, self.encode_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    # -- sessions --

    async def open_session(self, avatar: str = "", **kwargs: Any) -> Any:
        """create_session, but a refusal by admission control first waits up to ADMIT_GRACE_S for a
        session to leave: a client that reconnects right after closing its last socket would otherwise
        be refused for its own old session, whose close the server has not processed yet."""
        deadline = time.monotonic() + ADMIT_GRACE_S
        while (self.settings.admission and self.ready.is_set() and self.sessions and time.monotonic() < deadline
               and not self.admission().admit):
            await asyncio.sleep(0.05)
        return self.create_session(avatar, **kwargs)

    def create_session(self, avatar: str = "", *, image_format: str | None = None, quality: int | None = None,
                       language: str | None = None) -> Any:
        from avatarcast.realtime.runner import SessionRunner

        if not self.ready.is_set():
            raise HubError(503, "starting", "the server is still loading its models")
        if self.draining:
            self._reject("shutting_down")
            raise HubError(503, "shutting_down", "the server is shutting down; retry on another replica")
        if len(self.sessions) >= self.settings.max_sessions:
            self._reject("max_sessions")
            raise HubError(503, "busy", f"all {self.settings.max_sessions} session slots are taken; retry later")
        verdict = self.admission()
        if self.settings.admission and not verdict.admit:
            self._reject(verdict.reason)
            log.info("session refused (%s): %s", verdict.reason, verdict.message)
            raise HubError(503, "busy", verdict.message)
        fmt = image_format or self.settings.image_format
        if fmt not in ("jpeg", "webp"):
            raise HubError(400, "bad_image_format", f"image_format must be jpeg or webp, got {fmt!r}")
        q = self.settings.quality if quality is None else int(quality)
        if not 1 <= q <= 100:
            raise HubError(400, "bad_quality", f"quality must be 1..100, got {q}")
        lang = language if language is not None else (self.settings.language or None)
        if lang is not None and lang not in ("", "auto"):
            if not self.transcriber.multilingual and lang != "en":
                raise HubError(400, "bad_language",
                               f"the ASR model {self.transcriber.name} is English-only; start with --asr-model base")
        else:
            lang = "en" if not self.transcriber.multilingual else None
        sid = secrets.token_urlsafe(9)
        try:
            runner = SessionRunner(self, sid, avatar or (self.settings.avatar_list() or ["pip"])[0],
                                   image_format=fmt, quality=q, language=lang)
        except ValueError as exc:
            raise HubError(400, "bad_avatar", str(exc)) from None
        self.sessions[sid] = runner
        self.stats["sessions_created"] += 1
        self.metrics.sessions_created.inc()
        log.info("session %s created (avatar %s, %s, language %s)", sid, runner.avatar, fmt, lang)
        return runner

    def admission(self) -> Any:
        """Admission control's verdict on one more session (realtime/admission.py)."""
        from avatarcast.realtime.admission import check

        s = self.settings
        now = time.monotonic()
        # a session whose client has come and gone will not react again (it waits for the reaper);
        # counting it would refuse a client that reconnects right after closing its last session
        live = [r for r in self.sessions.values() if not r.abandoned]
        young = sum(1 for r in live if now - r.created < s.capacity_window_s)
        return check(self.scheduler, headroom=s.capacity_headroom, window_s=s.capacity_window_s, chunk_s=self.chunk_s,
                     sessions=len(live), young=young)

    def _reject(self, reason: str) -> None:
        self.stats["sessions_rejected"] += 1
        self.stats[f"sessions_rejected_{reason}"] += 1
        self.metrics.sessions_rejected.labels(reason).inc()

    def get_session(self, sid: str) -> Any:
        r = self.sessions.get(sid)
        if r is None:
            raise HubError(404, "no_session", f"no session {sid!r}")
        return r

    async def close_session(self, sid: str) -> bool:
        r = self.sessions.pop(sid, None)
        if r is None:
            return False
        await r.close()
        log.info("session %s closed after %d frames", sid, r.frames_sent)
        return True

    def _load_status(self) -> dict:
        sch, s = self.scheduler, self.settings
        lad = sch.ladder
        per = sch.stream_chunk_s
        return {"degradation_level": lad.level if lad else 0, "degradation": lad.name if lad else "full",
                "live_steps": (lad.live_steps if lad else None) or getattr(self.engine, "steps", None),
                "lowest_level": lad.top if lad else 0,
                "engine_busy": round(sch.busy_fraction(s.capacity_window_s), 3),
                "stream_chunk_s": None if per is None else round(per, 4), "chunk_s": self.chunk_s,
                "reaction_load": None if per is None else round(per / self.chunk_s, 3),
                "capacity_headroom": s.capacity_headroom, "late_batches": sch.late_batches,
                "admission": bool(s.admission),
                "admitting": self.ready.is_set() and (not s.admission or self.admission().admit), "draining": self.draining}

    def status(self) -> dict:
        sch = self.scheduler
        return {"ready": self.ready.is_set(), "sessions": len(self.sessions),
                "webrtc_peers": len(self.peers),
                "max_sessions": self.settings.max_sessions,
                "engine": {"name": self.settings.engine,
                           "backend": (self.settings.wan_backend if self.settings.engine == "wan"
                                       else self.settings.backend),
                           "steps": getattr(self.engine, "steps", None),
                           "weights": getattr(self.engine, "weights_hash", None),
                           # wan: False while the VAE's graphs compile in the background (slower frames)
                           "vae_compiled": getattr(self.engine, "vae_compiled", None)},
                "asr": getattr(self.transcriber, "name", None),
                "scheduler": None if sch is None else {"queue": sch.queue_depth, "batches": sch.batches,
                                                        "max_batch": getattr(sch, "max_batch", None),
                                                        "pipeline_depth": getattr(sch, "depth", 1),
                                                        "jobs": sch.jobs_done, "busy_s": round(sch.busy_s, 3),
                                                        "oom_splits": sch.oom_splits},
                "load": None if sch is None else self._load_status(),
                "cluster": sch.cluster_status() if hasattr(sch, "cluster_status") else None,
                "load_s": self.load_s, "stats": dict(self.stats),
                "uptime_s": round(time.monotonic() - self.started_at, 1)}
