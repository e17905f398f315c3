"""The process: loads the models once, builds the services every session shares, and keeps the sessions.

The Hub owns lifecycle (start, drain, close), the session registry, admission control and the
idle reaper. What a session needs (engine, scheduler, avatars, cache, ASR, emotion reader, pools,
metrics) it gets as one frozen `Services` bundle (realtime/services.py), never the Hub itself.
Transports (HTTP, WebSocket, WebRTC) talk to the Hub and to SessionRunners; model code never sees a
socket. Loading happens in threads at start-up so the first user pays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from avatarcast.artifacts import store_under
from avatarcast.engines.contract import PrepEngineSource, StreamEngine, StreamStart
from avatarcast.engines.errors import AvatarcastError, ErrorCode
from avatarcast.realtime import loop_errors
from avatarcast.realtime.admission import Verdict, check
from avatarcast.realtime.asr import Transcriber
from avatarcast.realtime.avatars import AvatarStore
from avatarcast.realtime.clips import ClipRenderer
from avatarcast.realtime.decode_cost import measure_decodes
from avatarcast.realtime.emotion import EmotionReader
from avatarcast.realtime.engine_loader import load_engine
from avatarcast.realtime.ladder import ladder_for
from avatarcast.realtime.latents_index import index_for
from avatarcast.realtime.loop_lag import LagWindow, probe
from avatarcast.realtime.metrics import Metrics
from avatarcast.realtime.prep import Lane, PrepProcess
from avatarcast.realtime.ratelimit import ClientSockets, Limits
from avatarcast.realtime.runner import SessionRunner
from avatarcast.realtime.scheduler import ChunkJob, EngineScheduler, Scheduler
from avatarcast.realtime.services import Pools, Services
from avatarcast.realtime.session import SessionConfig
from avatarcast.realtime.settings import ENGINES, Settings, default_engine
from avatarcast.realtime.shared_state import make_shared_state
from avatarcast.templates import load_templates
from avatarcast.templates.cache import LatentsCache
from avatarcast.vocabulary import IMAGE_FORMATS

log = logging.getLogger("avatarcast.hub")
ADMIT_GRACE_S = 0.5  # how long a new session waits for a leaving one before admission control refuses it


class HubError(AvatarcastError):
    """A session or request the Hub refuses (or cannot find); `code` says how each transport answers it."""

    def __init__(self, code: ErrorCode, message: str, retry_after: str | None = None) -> None:
        super().__init__(message, code=code, retry_after=retry_after)


class Hub:
    """Lifecycle, the session registry, admission and drain; what sessions share is in `services`."""

    def __init__(
        self, settings: Settings, make_scheduler: Callable[[StreamEngine, Metrics], Scheduler] | None = None
    ) -> None:
        self.settings = settings
        # None: an EngineScheduler here; Ray Serve: a RemoteScheduler (realtime/cluster/app.py)
        self.make_scheduler = make_scheduler
        self.services: Services | None = None  # set once the models are loaded
        self.clips: ClipRenderer | None = None
        self.prep: PrepProcess | None = None  # where clients' new avatars are prepared (realtime/prep.py)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sessions: dict[str, SessionRunner] = {}
        # session id -> when it closed, while its engine time may still be in admission control's window
        self.closed_at: dict[str, float] = {}
        self.peers: dict[str, Any] = {}  # WebRTC peers by resource id (realtime/webrtc.py)
        self.metrics = Metrics()
        self.shared = make_shared_state(settings.redis_url)  # what the gateways share (realtime/shared_state.py)
        self.limits = Limits(settings, shared=self.shared)
        # an ASR worker per session: they wait in the model's PriorityLock (finals before partials), not in
        # a pool's FIFO queue, where an urgent final would sit behind a partial waiting for the model
        self.pools = Pools(asr=ThreadPoolExecutor(max_workers=max(2, settings.max_sessions), thread_name_prefix="asr"))
        self.stats: Counter = Counter()
        self.ready = asyncio.Event()
        self.started_at = time.monotonic()
        self.draining = False  # shutting down: no new sessions
        self.open_sockets = 0  # WebSocket handlers running (realtime/ws.py): drain waits for their close frames
        self.sockets = ClientSockets(settings.max_connections_per_ip)  # open sockets per client IP
        self.load_s: dict[str, float] = {}
        self.start_error: str | None = None  # why start() failed ("Type: message"), set by the server
        self._reaper: asyncio.Task | None = None
        self.loop_lag = LagWindow()
        self._lag_probe: asyncio.Task | None = None
        self.metrics.bind_loop_lag(
            lambda: self.loop_lag.quantile(time.monotonic(), 0.99), lambda: self.loop_lag.max(time.monotonic())
        )
        self._closers: list[Callable[[], Awaitable[None]]] = []  # what start() started, to close in reverse

    @property
    def emotions(self) -> tuple[str, ...]:
        return self.services.emotions if self.services is not None else ()

    # -- life cycle --

    async def start(self) -> None:
        """Load everything (in threads), warm the start-up avatars, then mark ready."""
        s = self.settings
        if s.engine not in ENGINES:
            raise HubError(ErrorCode.ENGINE_UNAVAILABLE, f"engine {s.engine!r} is not available in this build")
        if s.engine == "wan":
            s.validate_wan()  # a missing or incomplete checkpoint fails here, before anything loads
        log.info("engine %s", s.engine_choice())
        self.loop = asyncio.get_running_loop()
        loop = self.loop
        loop_errors.install(loop)  # aiortc's failed connect tasks of refused offers: debug, not ERROR
        self._lag_probe = asyncio.create_task(probe(self.loop_lag.observe), name="loop-lag-probe")
        await loop.run_in_executor(None, self.shared.check)  # an unreachable --redis-url fails the start

        async def timed(name: str, fn: Callable[[], Any]) -> Any:
            t0 = time.perf_counter()
            out = await loop.run_in_executor(None, fn)
            self.load_s[name] = round(time.perf_counter() - t0, 3)
            return out

        engine, transcriber, reader = await asyncio.gather(
            timed("engine", lambda: load_engine(s)),
            timed(
                "asr",
                lambda: Transcriber.load(
                    s.asr_model,
                    device=s.asr_device,
                    cpu_threads=s.asr_threads,
                    workers=s.asr_workers,
                    languages=s.language_list(s.asr_languages),
                ),
            ),
            timed("emotion", lambda: EmotionReader.load(threads=1)),
        )
        templates = load_templates()
        latents_store, clip_store = store_under(s.artifact_url, "latents"), store_under(s.artifact_url, "clips")
        cache = LatentsCache(engine, templates, s.cache_dir or None, store=latents_store, index=index_for(self.shared))
        # wan: 4 video frames per latent frame
        session_config = SessionConfig.from_templates(templates, chunk_frames=engine.capabilities.frames_per_chunk)
        if self.make_scheduler is not None:
            scheduler = self.make_scheduler(engine, self.metrics)
        else:
            scheduler = EngineScheduler(engine, on_batch=self.metrics.observe_batch)
        await scheduler.start()
        self._closers.append(scheduler.close)
        self._setup_load_control(engine, scheduler)
        self.metrics.bind(lambda: len(self.sessions), lambda: len(self.peers), lambda: scheduler.queue_depth)
        avatars = AvatarStore(
            engine,
            cache,
            scheduler,
            precompute=bool(s.precompute),
            max_avatars=s.max_avatars,
            prep=await self._prep_lane(engine, cache),
            max_preparing=s.max_preparing_avatars,
        )
        self._closers.append(avatars.close)
        self.services = Services(
            s,
            engine,
            scheduler,
            avatars,
            cache,
            transcriber,
            reader,
            session_config,
            self.pools,
            self.metrics,
            self.stats,
        )
        self.clips = ClipRenderer(self.services, s.clip_cache_dir or None, shared=self.shared, store=clip_store)
        t0 = time.perf_counter()
        for name in s.avatar_list():
            await avatars.warm(name)
        self.load_s["avatars"] = round(time.perf_counter() - t0, 3)
        log.info("ready: %s", self.load_s)
        # an engine with a cheaper decode measures both decodes warm, which also sets the cost admission control
        # starts from; the calibration chunk would only pay the graphs' first calls, so it runs only without that
        if not await self._measure_cheaper_decode():
            try:
                await self._calibrate()
            except Exception:  # admission control then admits up to max_sessions until a batch is measured
                log.exception("measuring the engine's cost at start-up failed")
        self._reaper = asyncio.create_task(self._reap_idle(), name="session-reaper")
        self.ready.set()

    async def _prep_lane(self, engine: StreamEngine, cache: LatentsCache) -> Lane | None:
        """Where clients' new avatars are prepared (realtime/prep.py): a low-priority process with an engine of its
        own, for the tiny engine (it loads twice cheaply) and for engines that take prepared avatars over
        (`shared_prep`: motion on onnxruntime); other engines prepare on their own between chunk jobs (None)."""
        s = self.settings
        shared = engine.capabilities.shared_prep
        if s.engine != "tiny" and not shared:
            return None
        prep = PrepProcess(
            dataclasses.replace(s, threads=1),  # one runtime thread: at most one core, on CPU time nothing live wants
            cache.templates,
            cache.cache_dir,
            cache.store,
            adopt=cast(PrepEngineSource, engine) if shared else None,
        )
        self._closers.append(prep.close)
        self.prep = prep
        return await prep.start()

    def _setup_load_control(self, engine: StreamEngine, sch: Scheduler) -> None:
        """The degradation ladder on the scheduler, and the load gauges."""
        s = self.settings
        ladder = sch.ladder = ladder_for(engine, s)
        self.metrics.bind_load(lambda: ladder.level, lambda: sch.busy_fraction(s.capacity_window_s))

    @property
    def _services(self) -> Services:
        """The services, which exist once start() has loaded the models (every caller runs after that)."""
        if self.services is None:
            raise HubError(ErrorCode.STARTING, "the server is still loading its models")
        return self.services

    @property
    def chunk_s(self) -> float:
        """Seconds of video one chunk covers: a reacting stream needs one chunk this often."""
        c = self._services.session_config
        return c.chunk_frames / c.fps

    async def _calibrate(self) -> None:
        """One live-sized chunk through the scheduler, so admission control has a measured cost from the
        start, and a fresh one when it refuses sessions on an estimate nothing has updated for a while
        (a slow spell must not leave a stale, high cost that refuses everyone while the engine sits idle)."""
        sv = self._services
        params = sv.avatars.get(self.settings.first_avatar).params
        state = StreamStart(params, "idle", 0.5, 0)
        t0 = time.perf_counter()
        sv.scheduler.stream_chunk_s = None  # this measurement replaces the old estimate
        await sv.scheduler.submit(ChunkJob("calibration", state, time.monotonic() + 5.0, "idle", 0.5))
        self.load_s["calibration"] = round(time.perf_counter() - t0, 3)

    async def _measure_cheaper_decode(self) -> bool:
        """The ladder's cheaper decode against the full one (engines that have one): the ladder steps back up from it
        by the full decode's load, and `--motion-draw adaptive` prices admission at it. True when this set the
        engine's cost a stream-chunk (False: no cheaper decode, or the measurement failed)."""
        sv = self._services
        if sv.scheduler.ladder is None or sv.scheduler.ladder.cheaper is None:
            return False
        params = sv.avatars.get(self.settings.first_avatar).params
        t0 = time.perf_counter()
        try:
            costs = await sv.scheduler.run_on_engine(measure_decodes, sv.engine, params)
        except Exception:  # the ladder then steps up by the busy it sees, admission prices at full quality
            log.exception("measuring the cheaper decode's cost at start-up failed")
            return False
        if costs is None:
            return False
        sv.scheduler.ladder.cost_ratio = costs.ratio
        # warm, the faster of three: the calibration chunk before it paid the graphs' first calls at its box (0.44 s a
        # stream-chunk for the residual draw against 0.23 in the live batches after: a second session refused)
        sv.scheduler.stream_chunk_s = costs.full_s
        sv.scheduler.cost_at = time.monotonic()
        self.load_s["cheaper_decode"] = round(time.perf_counter() - t0, 3)
        return True

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
            sch = self._services.scheduler
            stale = time.monotonic() - sch.cost_at > max(10.0, self.settings.capacity_window_s)
            if stale and not sch.queue_depth and self.admission().reason == "capacity":
                try:
                    await self._calibrate()
                except Exception:
                    log.exception("re-measuring the engine's cost failed")

    async def close(self) -> None:
        for task in (self._reaper, self._lag_probe):
            if task is not None:
                task.cancel()
        for sid in list(self.sessions):
            await self.close_session(sid)
        while self._closers:  # the avatars' warm-up, then the scheduler
            await self._closers.pop()()
        self.pools.shutdown()
        self.shared.close()

    # -- sessions --

    async def open_session(self, avatar: str = "", **kwargs: Any) -> SessionRunner:
        """create_session, but a refusal by admission control first waits up to ADMIT_GRACE_S for a
        session to leave: a client that reconnects right after closing its last socket would otherwise
        be refused for its own old session, whose close the server has not processed yet."""
        deadline = time.monotonic() + ADMIT_GRACE_S
        while (
            self.settings.admission
            and self.ready.is_set()
            and self.sessions
            and time.monotonic() < deadline
            and not self.admission().admit
        ):
            await asyncio.sleep(0.05)
        if self.ready.is_set():
            # a new avatar's still (6-11 ms of drawing) on a worker thread rather than this loop; a refusal is left
            # to create_session, which checks again and answers in its own order
            with contextlib.suppress(ValueError, AvatarcastError):
                await self._services.avatars.ready_still(avatar or self.settings.first_avatar, kwargs.get("client", ""))
        return self.create_session(avatar, **kwargs)

    def create_session(
        self,
        avatar: str = "",
        *,
        image_format: str | None = None,
        quality: int | None = None,
        language: str | None = None,
        client: str = "",
    ) -> SessionRunner:
        """A new session. `client`: who asks (realtime/ratelimit.client_keys), for the bound on new avatars."""
        if not self.ready.is_set():
            raise HubError(ErrorCode.STARTING, "the server is still loading its models")
        sv = self._services
        if self.draining:
            self._reject("shutting_down")
            raise HubError(ErrorCode.SHUTTING_DOWN, "the server is shutting down; retry on another replica")
        if len(self.sessions) >= self.settings.max_sessions:
            self._reject("max_sessions")
            raise HubError(ErrorCode.BUSY, f"all {self.settings.max_sessions} session slots are taken; retry later")
        verdict = self.admission()
        if self.settings.admission and not verdict.admit:
            self._reject(verdict.reason)
            log.info("session refused (%s): %s", verdict.reason, verdict.message)
            raise HubError(ErrorCode.BUSY, verdict.message)
        fmt = image_format or self.settings.image_format
        if fmt not in IMAGE_FORMATS:
            raise HubError(
                ErrorCode.BAD_IMAGE_FORMAT, f"image_format must be {' or '.join(IMAGE_FORMATS)}, got {fmt!r}"
            )
        q = self.settings.quality if quality is None else int(quality)
        if not 1 <= q <= 100:
            raise HubError(ErrorCode.BAD_QUALITY, f"quality must be 1..100, got {q}")
        lang = sv.transcriber.resolve_language(language, self.settings.language)
        sid = secrets.token_urlsafe(9)
        try:
            runner = SessionRunner(
                sv,
                sid,
                avatar or self.settings.first_avatar,
                image_format=fmt,
                quality=q,
                language=lang,
                client=client,
                on_failure=self.close_session,
            )
        except ValueError as exc:
            raise HubError(ErrorCode.BAD_AVATAR, str(exc)) from None
        self.sessions[sid] = runner
        self.stats["sessions_created"] += 1
        self.metrics.sessions_created.inc()
        log.info("session %s created (avatar %s, %s, language %s)", sid, runner.avatar, fmt, lang)
        return runner

    def admission(self) -> Verdict:
        """Admission control's verdict on one more session (realtime/admission.py)."""
        s = self.settings
        now = time.monotonic()
        # a session whose client has come and gone will not react again (it waits for the reaper);
        # counting it would refuse a client that reconnects right after closing its last session
        live = [r for r in self.sessions.values() if not r.abandoned]
        young = [r.id for r in live if now - r.created < s.capacity_window_s]
        # nor will a closed one: a client that opens a session per clip replaces its last session's load
        gone = [*self.closed_at, *(r.id for r in self.sessions.values() if r.abandoned)]
        return check(
            self._services.scheduler,
            headroom=s.capacity_headroom,
            window_s=s.capacity_window_s,
            chunk_s=self.chunk_s,
            sessions=len(live),
            young=young,
            gone=gone,
            cheaper_ratio=self.cheaper_ratio if self._prices_at_cheaper else None,
        )

    def _reject(self, reason: str) -> None:
        self.stats["sessions_rejected"] += 1
        self.stats[f"sessions_rejected_{reason}"] += 1
        self.metrics.sessions_rejected.labels(reason).inc()

    def get_session(self, sid: str) -> SessionRunner:
        r = self.sessions.get(sid)
        if r is None:
            raise HubError(ErrorCode.NO_SESSION, f"no session {sid!r}")
        return r

    async def close_session(self, sid: str) -> bool:
        r = self.sessions.pop(sid, None)
        if r is None:
            return False
        now = time.monotonic()
        # kept twice the window: a batch still running at the close ends, and counts in busy, after it
        for old in [old for old, t in self.closed_at.items() if now - t > 2 * self.settings.capacity_window_s]:
            del self.closed_at[old]
        self.closed_at[sid] = now
        await r.close()
        log.info("session %s closed after %d frames", sid, r.frames_sent)
        return True

    @property
    def cheaper_ratio(self) -> float | None:
        """The cheaper decode's cost over the full one's, a chunk, as measured at start-up (realtime/decode_cost.py)
        and held by the ladder; None: no cheaper decode, or not measured."""
        sch = None if self.services is None else self.services.scheduler
        return None if sch is None or sch.ladder is None else sch.ladder.cost_ratio

    @property
    def _prices_at_cheaper(self) -> bool:
        """Admission control counts capacity at the ladder's cheaper decode: asked for, and its cost measured."""
        return self.settings.admits_at_cheaper_decode and self.cheaper_ratio is not None

    def _load_status(self, sv: Services) -> dict:
        sch, s = sv.scheduler, self.settings
        lad = sch.ladder
        per = sch.stream_chunk_s
        verdict = self.admission()
        return {
            "degradation_level": lad.level if lad else 0,
            "degradation": lad.name if lad else "full",
            "live_steps": (lad.live_steps if lad else None) or sv.engine.steps,
            "lowest_level": lad.top if lad else 0,
            # what the cheaper_decode rung (2) decodes with: "half_resolution", "copy_draw"; None: no such rung
            "cheaper_decode": lad.cheaper if lad else None,
            "engine_busy": round(sch.busy_fraction(s.capacity_window_s), 3),
            # what admission control counts of it: less the part of sessions gone (closed, or left by their client),
            # priced at the cheaper decode where it counts capacity there (--motion-draw adaptive)
            "counted_busy": round(verdict.counted_busy, 3),
            "admission_prices_at": "cheaper_decode" if self._prices_at_cheaper else "full",
            # the cheaper decode's cost over the full one's, a chunk, measured at start-up (None: no cheaper decode)
            "cheaper_cost_ratio": None if self.cheaper_ratio is None else round(self.cheaper_ratio, 3),
            "stream_chunk_s": None if per is None else round(per, 4),
            "chunk_s": self.chunk_s,
            "reaction_load": None if per is None else round(per / self.chunk_s, 3),
            # what admission control counts for the sessions younger than the window, beyond their measured share
            "young_duty": round(verdict.young_duty, 3),
            "capacity_headroom": s.capacity_headroom,
            "late_batches": sch.late_batches,
            "admission": bool(s.admission),
            "admitting": self.ready.is_set() and (not s.admission or verdict.admit),
            "draining": self.draining,
        }

    def status(self) -> dict:
        s, sv = self.settings, self.services
        eng, sch = (sv.engine, sv.scheduler) if sv is not None else (None, None)
        return {
            "ready": self.ready.is_set(),
            "sessions": len(self.sessions),
            "webrtc_peers": len(self.peers),
            "max_sessions": s.max_sessions,
            "engine": {
                "name": s.engine,
                "default": default_engine(s.backend, s.device),  # what --engine auto serves here
                "backend": s.wan_backend if s.engine == "wan" else s.backend,
                "steps": None if eng is None else eng.steps,
                "weights": None if eng is None else eng.weights_hash,
                # wan: False while the VAE's graphs compile in the background (slower frames)
                "vae_compiled": None if eng is None else eng.graphs_ready,
            },
            "asr": None if sv is None else sv.transcriber.name,
            "scheduler": None
            if sch is None
            else {
                "queue": sch.queue_depth,
                "batches": sch.batches,
                "max_batch": sch.max_batch,
                "pipeline_depth": sch.depth,
                "jobs": sch.jobs_done,
                "busy_s": round(sch.busy_s, 3),
                "oom_splits": sch.oom_splits,
            },
            "load": None if sv is None else self._load_status(sv),
            "cluster": None if sch is None else sch.cluster_status(),
            "load_s": self.load_s,
            "stats": dict(self.stats),
            "uptime_s": round(time.monotonic() - self.started_at, 1),
        }
