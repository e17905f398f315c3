"""One live session: drives the sans-I/O Session with real time, audio, the engine and the transports.

Every 1/8 s the frame loop asks the Session what is due, takes the pixels (an idle/listening
loop frame, a cached first chunk, or a sampled chunk), encodes them once per wanted format on
the encode threads and hands them to the sinks (WebSocket senders, WebRTC tracks). Sinks
never block the loop: each keeps only the newest frame. Audio and text inputs run decode/ASR
/emotion on worker threads and feed their results back into the Session on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from avatarcast.engines.contract import StreamStart
from avatarcast.engines.errors import CLOSE_GOING_AWAY, AvatarcastError, ErrorCode
from avatarcast.realtime.audio import AudioDecodeError, decode_audio, prosody
from avatarcast.realtime.buckets import TokenBucket
from avatarcast.realtime.emotion.partial import PartialTracker
from avatarcast.realtime.live import LiveAudio, LiveEvent
from avatarcast.realtime.live_cues import LiveCues
from avatarcast.realtime.messages import ChunkRequest, FrameRequest, FrameSource, SessionEvent
from avatarcast.realtime.playout import Playout, sent_frame
from avatarcast.realtime.ratelimit import retry_after
from avatarcast.realtime.scheduler import ChunkJob
from avatarcast.realtime.services import Services
from avatarcast.realtime.session import Session
from avatarcast.realtime.video import composite_image
from avatarcast.vocabulary import FPS, FRAME_HEIGHT, FRAME_WIDTH

log = logging.getLogger("avatarcast.session")


@dataclass(frozen=True)
class OutFrame:
    """A frame ready for the transports: its header fields plus the encodings sinks asked for."""

    index: int
    pts: int
    pts_s: float
    emotion: str
    source: str
    rgba: np.ndarray = field(repr=False)
    encoded: dict[str, bytes] = field(default_factory=dict, repr=False)  # "jpeg"/"webp" -> bytes
    made_at: float = 0.0  # monotonic


class Sink(Protocol):
    """A transport endpoint of one session (a WebSocket, a WebRTC peer)."""

    @property
    def image_format(self) -> str | None: ...  # "jpeg" | "webp" | None (wants raw RGBA)

    def offer_frame(self, frame: OutFrame) -> None: ...  # must not block; keep only the newest

    def offer_event(self, event_json: str) -> None: ...


def encode_image(rgba: np.ndarray, fmt: str, quality: int) -> bytes:
    """RGBA -> JPEG (composited over the clip background) or lossy WebP keeping the alpha channel."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        composite_image(rgba).save(buf, "JPEG", quality=quality, optimize=False)
    elif fmt == "webp":
        Image.fromarray(rgba, "RGBA").save(buf, "WEBP", quality=quality, method=0)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


class InputBusy(AvatarcastError):
    """The session already has as much input in flight as it may (clips, texts): 429, or an error event."""

    code = ErrorCode.INPUT_BUSY


class SessionRunner:
    """A Session plus everything real around it; created and owned by the Hub."""

    def __init__(
        self,
        services: Services,
        session_id: str,
        avatar: str,
        *,
        image_format: str = "jpeg",
        quality: int = 80,
        language: str | None = None,
        client: str = "",
        on_failure: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        """`client`: who opened it (a new avatar is prepared for one client at a time); `on_failure(session id)`: how
        the runner asks its owner (the Hub) to end it after a fatal error; None: it only closes itself."""
        self.services = services
        self._on_failure = on_failure
        self.id = session_id
        self.assets = services.avatars.acquire(avatar, client)  # held until close(): never evicted while in use
        self.avatar = self.assets.name
        self._clips = 0  # clips in decode/ASR now (clip_slot)
        self._reads = 0  # say texts waiting for the emotion reader
        # how fast the session may ask for shared ASR and emotion work (settings.rate_say_per_s, ..._clip_audio_...):
        # a flood kept within the pending bounds would still keep both busy without end, on every core
        st, now = services.settings, time.monotonic()
        self._say_budget = _budget(st.rate_say_per_s, st.max_pending_per_session, now)
        self._audio_budget = _budget(st.rate_clip_audio_s_per_s, st.max_clip_seconds, now)
        # in samples: whole numbers, so a burst of 100 ms chunks is exactly so many chunks
        self._live_budget = _budget(st.rate_live_audio_s_per_s * 16000, st.max_audio_backlog_s * 16000, now)
        self.image_format = image_format
        self.quality = quality
        self.language = language
        self.created = time.monotonic()
        self.last_used = self.created
        self.session = Session(self.created, services.session_config, session_id)
        self.sinks: set[Sink] = set()
        self.had_client = False
        self._fps_window: tuple[float, int] | None = None  # (time, frames_sent) of the window's first frame
        self.frames_sent = 0
        self.last_frame: OutFrame | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None  # set when the server ends the session (1001: shutting down)
        self.playout = Playout()  # what each frame shows (realtime/playout.py)
        self._work: asyncio.Queue[ChunkRequest] = asyncio.Queue()
        self._live: LiveAudio | None = None  # made on the first live audio
        self._audio_backlog = 0  # live samples queued but not yet fed
        self._turn_meta: dict[int, dict] = {}
        self._kick = asyncio.Event()
        self._ending: asyncio.Future | None = None  # the close a fatal error started
        self._cue_lock = asyncio.Lock()
        # this session's turn at the shared emotion reader and prosody (realtime/fair_pool.py)
        self._emotion = services.pools.emotion.lane(session_id)
        self._cues = LiveCues(services.reader, self._emotion)
        self._cue_tasks: set[asyncio.Task] = set()
        self._tasks = [
            asyncio.create_task(self._frame_loop(), name=f"frames-{session_id}"),
            asyncio.create_task(self._chunk_worker(), name=f"chunks-{session_id}"),
        ]
        self._emit_local(
            "hello",
            {
                "session": session_id,
                "avatar": self.avatar,
                "fps": FPS,
                "width": FRAME_WIDTH,
                "height": FRAME_HEIGHT,
                "image_format": image_format,
                "emotions": list(services.emotions),
                "language": language,
            },
        )

    # -- public: transports --

    def touch(self) -> None:
        """Something used this session (a client, an input): it is not idle."""
        self.last_used = time.monotonic()

    def idle_for(self, now: float) -> float:
        """Seconds with no client attached and no input (0 while a client is attached)."""
        return 0.0 if self.sinks else now - self.last_used

    @property
    def abandoned(self) -> bool:
        """A client came and left: nothing is attached now (until one re-attaches, or the reaper closes it)."""
        return self.had_client and not self.sinks

    def attach(self, sink: Sink) -> None:
        self.touch()
        self.had_client = True
        self.sinks.add(sink)
        if self._hello is not None:
            sink.offer_event(self._hello)

    def detach(self, sink: Sink) -> None:
        self.sinks.discard(sink)
        self.touch()

    def info(self) -> dict:
        s = self.session
        return {
            "id": self.id,
            "avatar": self.avatar,
            "state": str(s.state),
            "emotion": s.emotion,
            "image_format": self.image_format,
            "language": self.language,
            "frames_sent": self.frames_sent,
            "frames_dropped": s.clock.dropped,
            "clients": len(self.sinks),
            "age_s": round(time.monotonic() - self.created, 3),
        }

    def notify_closing(self, reason: str) -> None:
        """The server is going away: say so to every client before the session closes (WebSocket 1001)."""
        self.close_code = CLOSE_GOING_AWAY
        self._emit_local("closing", {"reason": reason})

    async def close(self) -> None:
        if self.closed.is_set():
            return
        self.session.on_close(time.monotonic())
        self._flush_events()
        self.closed.set()
        if self._live is not None:
            self._live.close()
        for t in [*self._tasks, *self._cue_tasks]:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self.playout.clear()
        self.services.avatars.release(self.avatar)

    # -- public: inputs --

    def say(self, text: str) -> int | None:
        """Assistant text: shown as a transcript; its emotion follows from the text. InputBusy when
        max_pending_per_session texts already wait for the emotion reader (shared by every session)."""
        limit = self.services.settings.max_pending_per_session
        if self._reads >= limit:
            raise InputBusy(f"{limit} texts of this session already wait for the emotion reader", retry_after="1")
        _spend(self._say_budget, 1.0, f"over {self.services.settings.rate_say_per_s:g} texts/s for this session")
        self.touch()
        now = time.monotonic()
        turn = self.session.on_say(text, now)
        self._pump()
        self._reads += 1
        self._spawn(self._read_text(text, turn))
        return turn

    @contextlib.contextmanager
    def clip_slot(self) -> Iterator[None]:
        """Hold one of the session's max_clips_per_session slots while a clip is read, decoded and transcribed
        (clip() expects the caller to hold one); InputBusy (too_many_clips, 429) when all are taken."""
        limit = self.services.settings.max_clips_per_session
        if self._clips >= limit:
            raise InputBusy(
                f"{limit} clip(s) of this session are already being transcribed; send the next when one is done",
                code=ErrorCode.TOO_MANY_CLIPS,
                retry_after="1",
            )
        self._clips += 1
        try:
            yield
        finally:
            self._clips -= 1

    def set_language(self, language: str) -> str | None:
        """Switch the ASR language for the next utterances ("auto": find it for each); bad_language if unknown."""
        self.touch()
        lang = self.services.transcriber.resolve_language(language or "auto")
        self.language = lang
        if self._live is not None:
            self._live.language = lang
        self._emit_local("language", {"language": lang})
        return lang

    def set_emotion(self, label: str, intensity: float) -> None:
        self.touch()
        self.session.on_emotion(label, intensity, time.monotonic())
        self._pump()

    async def clip(self, data: bytes) -> dict:
        """A whole recorded clip: decode, transcribe, read the emotion, react. Returns what was decided."""
        self.touch()
        sv = self.services
        t_recv = time.monotonic()
        turn = self.session.on_clip_received(t_recv)
        self._pump()
        if turn is None:
            raise RuntimeError("session is closed")
        loop = asyncio.get_running_loop()
        try:
            pcm = await loop.run_in_executor(
                sv.pools.cpu,
                lambda: decode_audio(
                    data, max_seconds=sv.settings.max_clip_seconds, max_bytes=sv.settings.max_clip_bytes
                ),
            )
        except AudioDecodeError as exc:
            self.session.on_final("", time.monotonic(), utterance=turn)
            self._error(ErrorCode.BAD_AUDIO, str(exc), reason=exc.reason, utterance=turn)
            raise
        t_dec = time.monotonic()
        try:  # charged once its length is known: decoding is cheap next to transcribing it
            rate = sv.settings.rate_clip_audio_s_per_s
            _spend(self._audio_budget, pcm.size / 16000, f"clips over {rate:g} s of audio per second for this session")
        except InputBusy:
            self.session.on_final("", t_dec, utterance=turn)
            raise
        self.session.stamp("decode", t_dec, t_recv, utterance=turn)
        voice = loop.run_in_executor(self._emotion, prosody, pcm)  # needs only the audio: beside the ASR
        tr = await loop.run_in_executor(
            sv.pools.asr, lambda: sv.transcriber.transcribe(pcm, language=self.language, owner=self.id)
        )
        t_asr = time.monotonic()
        self.session.stamp("asr", t_asr, t_dec, utterance=turn)
        self.session.on_final(tr.text, t_asr, utterance=turn, language=tr.language)
        cue = await loop.run_in_executor(self._emotion, sv.reader.read, tr.text, await voice, tr.language)
        now = time.monotonic()
        self.session.on_cue(cue, now, "asr", utterance=turn, decided_by="final")
        self._pump()
        return {
            "utterance": turn,
            "transcript": tr.text,
            "language": tr.language,
            "emotion": cue.label,
            "intensity": round(cue.intensity, 3),
            "confidence": round(cue.confidence, 3),
            "audio_s": round(pcm.size / 16000, 3),
            "stages_ms": {"decode": _ms(t_dec - t_recv), "asr": _ms(t_asr - t_dec), "emotion": _ms(now - t_asr)},
        }

    async def pcm(self, samples: np.ndarray) -> None:
        """Live 16 kHz mono audio (int16 or float32), in arrival order; VAD and ASR run off the loop."""
        sv = self.services
        n = int(samples.size)
        budget = self._live_budget  # first: audio sent too fast is the client's doing, an overrun the server's
        if budget is not None and budget.take(n, time.monotonic()) > 0:
            rate = sv.settings.rate_live_audio_s_per_s
            self._error(ErrorCode.AUDIO_TOO_FAST, f"live audio over {rate:g} s of audio per second; chunk dropped")
            return
        if self._audio_backlog + n > sv.settings.max_audio_backlog_s * 16000:
            self._error(ErrorCode.AUDIO_OVERRUN, "live audio arrives faster than it can be processed; chunk dropped")
            return
        self._audio_backlog += n
        try:
            if self._live is None:
                self._live = LiveAudio(
                    sv.transcriber,
                    sv.pools.cpu,
                    sv.pools.asr,
                    self._on_live,
                    language=self.language,
                    prosody_pool=self._emotion,
                    max_pending=sv.settings.max_pending_per_session,
                    owner=self.id,
                )
            await self._live.feed(samples)
        finally:
            self._audio_backlog -= n

    async def audio_end(self) -> None:
        """The live stream paused (push-to-talk released): close an open utterance now."""
        if self._live is not None:
            await self._live.flush()

    def _on_live(self, ev: LiveEvent) -> None:
        if self.closed.is_set():
            return
        s, now = self.session, time.monotonic()
        if ev.kind == "speech_start":
            u = s.on_speech_start(now)
            if u is not None:
                # the utterance's partials go through one tracker, so a policy's hold can see the ones before
                tracker = PartialTracker(self.services.reader, self.session.config.partial_min_confidence)
                self._turn_meta[ev.utterance] = {"turn": u, "partials": tracker}
        elif ev.kind == "partial":
            u = self._turn_meta.get(ev.utterance, {}).get("turn")
            s.on_partial(ev.text, now, utterance=u, language=ev.language)
            if u is not None and ev.speculative:
                self._cues.prefetch(ev)  # the final will likely be this transcript: read it now, in full
            elif u is not None:
                self._spawn_cue(ev, u, "partial")
        elif ev.kind == "pause":
            u = self._turn_meta.get(ev.utterance, {}).get("turn")
            s.on_pause(now, utterance=u, at=ev.t)
        elif ev.kind == "speech_end":
            u = self._turn_meta.get(ev.utterance, {}).get("turn")
            s.on_speech_end(now, utterance=u, at=ev.t)
        elif ev.kind == "final":
            u = self._turn_meta.pop(ev.utterance, {}).get("turn")
            if ev.dropped:
                self._error(ErrorCode.ASR_BUSY, "too many utterances of this session wait for ASR; this one is dropped")
            asr = {"reused": ev.reused, "run_ms": round(ev.asr_ms, 1)}
            s.on_final(ev.text, now, utterance=u, language=ev.language, asr=asr)
            if u is not None and ev.text:
                self._spawn_cue(ev, u, "final")
        self._pump()

    def _spawn_cue(self, ev: LiveEvent, turn: int, decided_by: str) -> None:
        """Read the emotion of a live transcript on a worker (the encoder is too slow for the loop), then
        apply it. Partials' cues apply in the order their transcripts came and are dropped once their
        utterance's final is in; so the final's cue waits for none of them. A final that reuses the pause's
        speculation takes the read already started for it (LiveCues)."""
        pool = self._emotion

        async def read_and_apply() -> None:
            loop = asyncio.get_running_loop()
            if decided_by == "partial":
                tracker = self._turn_meta.get(ev.utterance, {}).get("partials")
                if tracker is None:
                    return  # the final came before this partial's turn
                async with self._cue_lock:  # FIFO among partials: the tracker is fed in order, one at a time
                    cue = await loop.run_in_executor(pool, tracker.feed, ev.text)
                if ev.utterance not in self._turn_meta:
                    return  # the final came meanwhile: it decides
            else:
                cue = await self._cues.final(ev)
            if cue is None or self.closed.is_set():
                return
            self.session.on_cue(cue, time.monotonic(), "asr", utterance=turn, decided_by=decided_by)
            self._pump()

        self._spawn(read_and_apply())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """An input's follow-up work, cancelled when the session closes (the reference keeps it alive)."""
        task = asyncio.create_task(coro)
        self._cue_tasks.add(task)
        task.add_done_callback(self._cue_tasks.discard)

    async def _read_text(self, text: str, turn: int | None) -> None:
        try:
            cue = await asyncio.get_running_loop().run_in_executor(self._emotion, self.services.reader.read, text)
        except Exception as exc:
            self._error(ErrorCode.EMOTION_FAILED, f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._reads -= 1
        self.session.on_cue(cue, time.monotonic(), "text")
        self._pump()

    # -- frames --

    async def _frame_loop(self) -> None:
        s = self.session
        try:
            while not s.closed:
                due = s.clock.time_of(s.clock.next_index)
                delay = due - time.monotonic()
                if delay > 0:
                    self._kick.clear()
                    try:  # an input that pulls the next frame in wakes the loop early
                        await asyncio.wait_for(self._kick.wait(), delay)
                    except TimeoutError:
                        pass
                    if s.clock.time_of(s.clock.next_index) > time.monotonic():
                        continue
                now = time.monotonic()
                for req in s.plan(now):
                    await self._emit_frame(req)
                self._pump()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: frame loop failed", self.id)
            self._error(ErrorCode.INTERNAL, "the frame loop failed; the session ends", fatal=True)
            end = self._on_failure(self.id) if self._on_failure is not None else self.close()
            self._ending = asyncio.ensure_future(end)  # not awaited: closing cancels this task

    async def _emit_frame(self, req: FrameRequest) -> None:
        shown = self.playout.show(req)
        if shown.late:
            self.services.stats["chunk_late_frames"] += 1
            self.services.metrics.chunk_late_frames.inc()
        source, emotion = shown.source, shown.emotion
        rgba = shown.pixels if shown.pixels is not None else self.assets.loop_frame(source, req.index)
        wanted = sorted({k.image_format for k in self.sinks if k.image_format})
        encoded: dict[str, bytes] = {}
        t0 = time.monotonic()
        loop_key = self.assets.loop_key(source, req.index) if shown.pixels is None else None
        cache = self.assets.encoded
        todo = []
        for f in wanted:
            hit = cache.get((*loop_key, f, self.quality)) if loop_key is not None else None
            if hit is not None:
                encoded[f] = hit
            else:
                todo.append(f)
        if todo:
            loop = asyncio.get_running_loop()
            pool = self.services.pools.encode
            outs = await asyncio.gather(
                *[loop.run_in_executor(pool, encode_image, rgba, f, self.quality) for f in todo]
            )
            encoded.update(zip(todo, outs))
            if loop_key is not None and len(cache) < 256:
                for f, b in zip(todo, outs):
                    cache[(*loop_key, f, self.quality)] = b
        t1 = time.monotonic()
        frame = OutFrame(req.index, req.pts, req.pts / FPS, emotion, source, rgba, encoded, t1)
        for sink in list(self.sinks):
            try:
                sink.offer_frame(frame)
            except Exception:
                log.exception("session %s: sink failed; detaching it", self.id)
                self.sinks.discard(sink)
        self.last_frame = frame
        self.frames_sent += 1
        self.services.metrics.frames_sent.inc()
        w = self._fps_window  # frame intervals over >= 1 s, from one sent frame to another
        if w is None:
            self._fps_window = (t1, self.frames_sent)
        elif t1 - w[0] >= 1.0:
            self.services.metrics.session_fps.observe((self.frames_sent - w[1]) / (t1 - w[0]))
            self._fps_window = (t1, self.frames_sent)
        self.session.on_frame_sent(sent_frame(req, shown, t0, t1), time.monotonic())

    # -- engine work --

    def _pump(self) -> None:
        """Move the Session's new chunk requests to the worker and its events to the clients."""
        if self.session.clock_changed:
            self.session.clock_changed = False
            self._kick.set()
        for req in self.session.chunk_requests():
            self.playout.on_request(req)
            if req.source == FrameSource.CACHE and self._serve_from_cache(req):
                continue
            if self.playout.store_looped(req):  # degraded (ladder level 3): no engine time
                self.services.stats["chunks_looped"] += 1
                continue
            self._work.put_nowait(req)
        self._flush_events()

    def _serve_from_cache(self, req: ChunkRequest) -> bool:
        """A cached first chunk is a memory lookup, done at once on the loop (no engine wait)."""
        if not self.assets.drawable.is_set():  # start_stream would prepare the avatar here, on the event loop
            return False
        cache = self.services.cache
        t0 = time.monotonic()
        variants = cache.template(req.emotion).variants
        variant = (req.reaction + (req.utterance or 0)) % max(1, variants)
        entry = cache.lookup(self.assets.params, req.emotion, variant)
        if entry is None:
            return False
        state = self.services.engine.start_stream(
            self.assets.params, req.emotion, req.intensity, seed=hash((self.id, req.reaction)) & 0xFFFF, ctx=entry.ctx
        )
        ladder = self.services.scheduler.ladder
        self.playout.store_cached(req, entry.frames, state, cached_loops=ladder is not None and ladder.cached_loops)
        if req.utterance is not None:
            self.session.stamp("cache", time.monotonic(), t0, utterance=req.utterance)
        return True

    async def _chunk_worker(self) -> None:
        """Runs this session's sampler requests in order (a chunk continues the previous one)."""
        scheduler = self.services.scheduler
        while True:
            req = await self._work.get()
            if not self.assets.drawable.is_set():  # a new avatar: its preparation hands it to the engine first
                await self.assets.drawable.wait()
            if not self.session.is_wanted(req):
                continue
            try:
                prev = self.playout.state_after(req.reaction, req.previous_chunk)
                if prev is None:
                    seed = hash((self.id, req.reaction, req.chunk)) & 0xFFFF
                    state = StreamStart(self.assets.params, req.emotion, req.intensity, seed)
                else:
                    state = prev.copy()
                t0 = time.monotonic()
                res = await scheduler.submit(ChunkJob(self.id, state, req.due_t, req.emotion, req.intensity))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the engine failed this batch: this reaction ends, the session goes on
                log.exception("session %s: chunk %s failed", self.id, (req.reaction, req.chunk))
                self.services.stats["engine_failures"] += 1
                if not self.session.abort_reaction(
                    req.reaction,
                    ErrorCode.ENGINE_FAILED,
                    f"the engine failed ({type(exc).__name__}: {exc}); back to the idle loop",
                    time.monotonic(),
                ):
                    self._error(ErrorCode.ENGINE_FAILED, f"{type(exc).__name__}: {exc}")
                self._pump()
                continue
            if not self.session.is_wanted(req):  # superseded by a switch, or the reaction ended
                self.services.stats["chunks_discarded"] += 1
                continue
            self.playout.store(req, res.frames, res.state)
            if res.cheaper:
                self.services.stats["chunks_cheaper"] += 1
            if req.utterance is not None and req.previous_chunk is None:
                self.session.stamp("sample", res.sampled, t0, utterance=req.utterance)
                self.session.stamp("decode_frames", res.finished, res.sampled, utterance=req.utterance)

    # -- events --

    _hello: str | None = None

    def _emit_local(self, type_: str, payload: dict) -> None:
        ev = SessionEvent(type_, payload, time.monotonic()).to_json()
        if type_ == "hello":
            self._hello = ev
        for sink in list(self.sinks):
            sink.offer_event(ev)

    def _error(self, code: ErrorCode, message: str, *, fatal: bool = False, **extra: Any) -> None:
        log.warning("session %s: %s: %s", self.id, code, message)
        self.services.metrics.errors.labels(code.wire).inc()
        self._emit_local("error", {"code": code.wire, "message": message, "fatal": fatal, **extra})

    def _flush_events(self) -> None:
        for ev in self.session.events():
            if ev.type == "frames_late":
                self.services.metrics.frames_dropped.inc(ev.payload.get("count", 0))
            elif ev.type == "error":
                self.services.metrics.errors.labels(str(ev.payload.get("code"))).inc()
            if ev.type == "latency":
                self.services.metrics.observe_latency(ev.payload)
                log.info("session %s latency %s", self.id, ev.payload)
            text = ev.to_json()
            for sink in list(self.sinks):
                sink.offer_event(text)


def _budget(rate: float, burst: float, now: float) -> TokenBucket | None:
    return TokenBucket(rate, max(1.0, burst), now) if rate > 0 else None


def _spend(bucket: TokenBucket | None, n: float, what: str) -> None:
    """Take n from a session's budget, or refuse the input: 429 rate_limited with Retry-After (an error event on a
    socket). n is at most the burst (a clip is at most --max-clip-seconds long), so every input passes in time."""
    if bucket is None:
        return
    wait = bucket.take(n, time.monotonic())
    if wait > 0:
        raise InputBusy(f"{what}; retry in {wait:.1f} s", code=ErrorCode.RATE_LIMITED, retry_after=retry_after(wait))


def _ms(s: float) -> float:
    return round(s * 1000.0, 1)
