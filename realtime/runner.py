"""One live session: drives the sans-I/O Session with real time, audio, the engine and the transports.

Every 1/8 s the frame loop asks the Session what is due, takes the pixels (an idle/listening
loop frame, a cached first chunk, or a sampled chunk), encodes them once per wanted format on
the encode threads and hands them to the sinks (WebSocket senders, WebRTC tracks). Sinks
never block the loop: each keeps only the newest frame. Audio and text inputs run decode/ASR
/emotion on worker threads and feed their results back into the Session on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from avatarcast.realtime.messages import ChunkRequest, FrameRequest, SessionEvent, VideoFrame
from avatarcast.realtime.scheduler import ChunkJob, copy_state
from avatarcast.realtime.session import Session
from avatarcast.realtime.video import composite

if TYPE_CHECKING:
    from avatarcast.realtime.hub import Hub

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

    image_format: str | None  # "jpeg" | "webp" | None (wants raw RGBA)

    def offer_frame(self, frame: OutFrame) -> None: ...  # must not block; keep only the newest

    def offer_event(self, event_json: str) -> None: ...


def encode_image(rgba: np.ndarray, fmt: str, quality: int) -> bytes:
    """RGBA -> JPEG (composited over the clip background) or lossy WebP keeping the alpha channel."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "jpeg":
        img = Image.fromarray(composite(rgba))
        img.save(buf, "JPEG", quality=quality, optimize=False)
    elif fmt == "webp":
        Image.fromarray(rgba, "RGBA").save(buf, "WEBP", quality=quality, method=0)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


class SessionRunner:
    """A Session plus everything real around it; created and owned by the Hub."""

    def __init__(self, hub: Hub, session_id: str, avatar: str, *, image_format: str = "jpeg",
                 quality: int = 80, language: str | None = None) -> None:
        self.hub = hub
        self.id = session_id
        self.assets = hub.avatars.get(avatar)
        self.avatar = self.assets.name
        self.image_format = image_format
        self.quality = quality
        self.language = language
        self.created = time.monotonic()
        self.last_used = self.created
        self.session = Session(self.created, hub.session_config, session_id)
        self.sinks: set[Sink] = set()
        self.had_client = False
        self._fps_window: tuple[float, int] | None = None  # (time, frames_sent) of the window's first frame
        self.frames_sent = 0
        self.last_frame: OutFrame | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None  # set when the server ends the session (1001: shutting down)
        # reactions started while the ladder said "cached loops": reaction -> (start chunk, emotion, cached frames)
        self._loops: dict[int, tuple[int, str, np.ndarray]] = {}
        # reaction frames ready to play, in order: (reaction, chunk, rgba, source, emotion)
        self._ready: deque[tuple[int, int, np.ndarray, str, str]] = deque()
        self._states: dict[tuple[int, int], Any] = {}  # (reaction, chunk) -> stream state after it
        self._work: asyncio.Queue[ChunkRequest] = asyncio.Queue()
        self._live: Any = None  # avatarcast.realtime.live.LiveAudio, made on the first live audio
        self._audio_backlog = 0  # live samples queued but not yet fed
        self._turn_meta: dict[int, dict] = {}
        self._last_reaction: tuple[int, np.ndarray, str, str] | None = None
        self._kick = asyncio.Event()
        self._cue_lock = asyncio.Lock()
        self._cue_tasks: set[asyncio.Task] = set()
        self._tasks = [asyncio.create_task(self._frame_loop(), name=f"frames-{session_id}"),
                       asyncio.create_task(self._chunk_worker(), name=f"chunks-{session_id}")]
        self._emit_local("hello", {"session": session_id, "avatar": self.avatar, "fps": 8,
                                   "width": 640, "height": 360, "image_format": image_format,
                                   "emotions": list(hub.emotions), "language": language})

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
        return {"id": self.id, "avatar": self.avatar, "state": s.state, "emotion": s.emotion,
                "image_format": self.image_format, "language": self.language,
                "frames_sent": self.frames_sent, "frames_dropped": s.clock.dropped,
                "clients": len(self.sinks), "age_s": round(time.monotonic() - self.created, 3)}

    def notify_closing(self, reason: str) -> None:
        """The server is going away: say so to every client before the session closes (WebSocket 1001)."""
        self.close_code = 1001
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
        self._ready.clear()
        self._states.clear()

    # -- public: inputs --

    def say(self, text: str) -> int | None:
        """Assistant text: shown as a transcript; its emotion follows from the text."""
        self.touch()
        now = time.monotonic()
        turn = self.session.on_say(text, now)
        self._pump()
        asyncio.create_task(self._read_text(text, turn))
        return turn

    def set_emotion(self, label: str, intensity: float) -> None:
        self.touch()
        self.session.on_emotion(label, intensity, time.monotonic())
        self._pump()

    async def clip(self, data: bytes) -> dict:
        """A whole recorded clip: decode, transcribe, read the emotion, react. Returns what was decided."""
        self.touch()
        from avatarcast.realtime.audio import AudioDecodeError, decode_audio, prosody

        hub = self.hub
        t_recv = time.monotonic()
        turn = self.session.on_clip_received(t_recv)
        self._pump()
        if turn is None:
            raise RuntimeError("session is closed")
        loop = asyncio.get_running_loop()
        try:
            pcm = await loop.run_in_executor(hub.cpu_pool, lambda: decode_audio(
                data, max_seconds=hub.settings.max_clip_seconds, max_bytes=hub.settings.max_clip_bytes))
        except AudioDecodeError as exc:
            self.session.on_final("", time.monotonic(), utterance=turn)
            self._error("bad_audio", str(exc), reason=exc.reason, utterance=turn)
            raise
        t_dec = time.monotonic()
        self.session.stamp("decode", t_dec, t_recv, utterance=turn)
        tr = await loop.run_in_executor(hub.asr_pool, lambda: hub.transcriber.transcribe(pcm, language=self.language))
        t_asr = time.monotonic()
        self.session.stamp("asr", t_asr, t_dec, utterance=turn)
        self.session.on_final(tr.text, t_asr, utterance=turn)
        cue = await loop.run_in_executor(hub.cpu_pool, lambda: hub.reader.read(tr.text, prosody(pcm), tr.language))
        now = time.monotonic()
        self.session.on_cue(cue, now, "asr", utterance=turn, decided_by="final")
        self._pump()
        return {"utterance": turn, "transcript": tr.text, "language": tr.language,
                "emotion": cue.label, "intensity": round(cue.intensity, 3), "confidence": round(cue.confidence, 3),
                "audio_s": round(pcm.size / 16000, 3),
                "stages_ms": {"decode": _ms(t_dec - t_recv), "asr": _ms(t_asr - t_dec), "emotion": _ms(now - t_asr)}}

    async def pcm(self, samples: np.ndarray) -> None:
        """Live 16 kHz mono audio (int16 or float32), in arrival order; VAD and ASR run off the loop."""
        hub = self.hub
        n = int(samples.size)
        if self._audio_backlog + n > hub.settings.max_audio_backlog_s * 16000:
            self._error("audio_overrun", "live audio arrives faster than it can be processed; chunk dropped")
            return
        self._audio_backlog += n
        try:
            if self._live is None:
                from avatarcast.realtime.live import LiveAudio

                self._live = LiveAudio(hub.transcriber, hub.cpu_pool, hub.asr_pool, self._on_live,
                                       language=self.language)
            await self._live.feed(samples)
        finally:
            self._audio_backlog -= n

    async def audio_end(self) -> None:
        """The live stream paused (push-to-talk released): close an open utterance now."""
        if self._live is not None:
            await self._live.flush()

    def _on_live(self, ev: Any) -> None:
        if self.closed.is_set():
            return
        s, now = self.session, time.monotonic()
        if ev.kind == "speech_start":
            u = s.on_speech_start(now)
            if u is not None:
                self._turn_meta[ev.utterance] = {"turn": u}
        elif ev.kind == "partial":
            u = self._turn_meta.get(ev.utterance, {}).get("turn")
            s.on_partial(ev.text, now, utterance=u)
            if u is not None:
                self._spawn_cue(ev, u, "partial")
        elif ev.kind == "pause":
            u = self._turn_meta.get(ev.utterance, {}).get("turn")
            s.on_pause(now, utterance=u, at=ev.t)
        elif ev.kind == "speech_end":
            u = self._turn_meta.get(ev.utterance, {}).get("turn")
            s.on_speech_end(now, utterance=u, at=ev.t)
        elif ev.kind == "final":
            u = self._turn_meta.pop(ev.utterance, {}).get("turn")
            s.on_final(ev.text, now, utterance=u)
            if u is not None and ev.text:
                self._spawn_cue(ev, u, "final")
        self._pump()

    def _spawn_cue(self, ev: Any, turn: int, decided_by: str) -> None:
        """Read the emotion of a live transcript on a worker (MiniLM is too slow for the loop), then
        apply it. Cues apply in the order their transcripts came; a partial's cue is dropped once
        its utterance's final is in."""
        reader, pool = self.hub.reader, self.hub.cpu_pool

        async def read_and_apply() -> None:
            async with self._cue_lock:  # FIFO: cues apply in transcript order
                loop = asyncio.get_running_loop()
                if decided_by == "partial":
                    cue = await loop.run_in_executor(pool, reader.read_partial, ev.text,
                                                     self.session.config.partial_min_confidence)
                    if ev.utterance not in self._turn_meta:
                        return  # the final came meanwhile: it decides
                else:
                    cue = await loop.run_in_executor(pool, reader.read, ev.text, None, ev.language)
                if cue is None or self.closed.is_set():
                    return
                self.session.on_cue(cue, time.monotonic(), "asr", utterance=turn, decided_by=decided_by)
                self._pump()

        task = asyncio.create_task(read_and_apply())
        self._cue_tasks.add(task)
        task.add_done_callback(self._cue_tasks.discard)

    async def _read_text(self, text: str, turn: int | None) -> None:
        try:
            cue = await asyncio.get_running_loop().run_in_executor(self.hub.cpu_pool, self.hub.reader.read, text)
        except Exception as exc:
            self._error("emotion_failed", f"{type(exc).__name__}: {exc}")
            return
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
                    except asyncio.TimeoutError:
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
            self._error("internal", "the frame loop failed; the session ends", fatal=True)
            asyncio.create_task(self.hub.close_session(self.id))

    def _pixels(self, req: FrameRequest) -> tuple[np.ndarray, str, str]:
        """(rgba, source, emotion) actually shown for a planned frame.

        Reaction frames play from a queue in the order they were made, so a chunk that comes late
        is shown late rather than skipped; while the queue is empty the reaction's last frame holds
        (a brief freeze reads better than a cut back to the listening pose). Frames always report
        what they really show, so TTER stays honest.
        """
        if req.is_reaction:
            ready = self._ready
            while ready and ready[0][0] != req.reaction:
                ready.popleft()  # left over from an earlier reaction
            if ready:
                item = ready.popleft()
                self._last_reaction = (item[0], item[2], item[3], item[4])
                return item[2], item[3], item[4]
            self.hub.stats["chunk_late_frames"] += 1
            self.hub.metrics.chunk_late_frames.inc()
            last = self._last_reaction
            if last is not None and last[0] == req.reaction:
                return last[1], last[2], last[3]
            return self.assets.loop_frame("listening", req.index), "listening", "listening"
        self._ready.clear()
        kind = "listening" if req.source == "listening" else "idle"
        return self.assets.loop_frame(kind, req.index), req.source, req.emotion

    async def _emit_frame(self, req: FrameRequest) -> None:
        rgba, source, emotion = self._pixels(req)
        wanted = sorted({k.image_format for k in self.sinks if k.image_format})
        encoded: dict[str, bytes] = {}
        t0 = time.monotonic()
        loop_key = self.assets.loop_key(source, req.index) if source in ("idle", "listening") else None
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
            outs = await asyncio.gather(*[loop.run_in_executor(self.hub.encode_pool, encode_image, rgba, f, self.quality)
                                          for f in todo])
            encoded.update(zip(todo, outs))
            if loop_key is not None and len(cache) < 256:
                for f, b in zip(todo, outs):
                    cache[(*loop_key, f, self.quality)] = b
        t1 = time.monotonic()
        frame = OutFrame(req.index, req.pts, req.pts / 8.0, emotion, source, rgba, encoded, t1)
        for sink in list(self.sinks):
            try:
                sink.offer_frame(frame)
            except Exception:
                log.exception("session %s: sink failed; detaching it", self.id)
                self.sinks.discard(sink)
        self.last_frame = frame
        self.frames_sent += 1
        self.hub.metrics.frames_sent.inc()
        w = self._fps_window  # frame intervals over >= 1 s, from one sent frame to another
        if w is None:
            self._fps_window = (t1, self.frames_sent)
        elif t1 - w[0] >= 1.0:
            self.hub.metrics.session_fps.observe((self.frames_sent - w[1]) / (t1 - w[0]))
            self._fps_window = (t1, self.frames_sent)
        sent = VideoFrame(req.index, req.pts, t1, t0, emotion, source, req.intensity,
                          req.utterance if source == req.source else None, req.reaction,
                          {"encode": (t0, t1)})
        self.session.on_frame_sent(sent, time.monotonic())

    # -- engine work --

    def _pump(self) -> None:
        """Move the Session's new chunk requests to the worker and its events to the clients."""
        if self.session.clock_changed:
            self.session.clock_changed = False
            self._kick.set()
        for req in self.session.chunk_requests():
            if req.revision > 0:  # the emotion switched from this chunk on: drop what the old one made
                self._ready = deque(x for x in self._ready if not (x[0] == req.reaction and x[1] >= req.chunk))
            if req.source == "cache" and self._serve_from_cache(req):
                continue
            if self._serve_from_loop(req):
                continue
            self._work.put_nowait(req)
        self._flush_events()

    def _serve_from_cache(self, req: ChunkRequest) -> bool:
        """A cached first chunk is a memory lookup, done at once on the loop (no engine wait)."""
        cache = self.hub.cache
        if cache is None:
            return False
        t0 = time.monotonic()
        variants = cache.template(req.emotion).variants
        variant = (req.reaction + (req.utterance or 0)) % max(1, variants)
        entry = cache.lookup(self.assets.params, req.emotion, variant)
        if entry is None:
            return False
        state = self.hub.engine.start_stream(self.assets.params, req.emotion, req.intensity,
                                             seed=hash((self.id, req.reaction)) & 0xFFFF, ctx=entry.ctx)
        self._store(req, entry.frames, state)
        ladder = self.hub.scheduler.ladder if self.hub.scheduler is not None else None
        if ladder is not None and ladder.cached_loops and (req.chunk == 0 or req.reaction in self._loops):
            self._loops[req.reaction] = (req.chunk, req.emotion, entry.frames)  # a new reaction under load
            while len(self._loops) > 4:
                self._loops.pop(next(iter(self._loops)))
        if req.utterance is not None:
            self.session.stamp("cache", time.monotonic(), t0, utterance=req.utterance)
        return True

    def _serve_from_loop(self, req: ChunkRequest) -> bool:
        """Degraded (ladder level 2): a reaction that started under load plays its cached chunk forward,
        then backward, and so on, instead of sampling. No engine time; no seam at the turn-arounds."""
        loop = self._loops.get(req.reaction)
        if loop is None or loop[1] != req.emotion:
            return False
        start, _, frames = loop
        self._store(req, frames if (req.chunk - start) % 2 == 0 else frames[::-1], None, source="cache")
        self.hub.stats["chunks_looped"] += 1
        return True

    def _store(self, req: ChunkRequest, frames: np.ndarray, state: Any, source: str | None = None) -> None:
        self._states[(req.reaction, req.chunk)] = state
        while len(self._states) > 8:  # a few chunks around the playing one; memory stays flat
            self._states.pop(next(iter(self._states)))
        for f in frames:
            self._ready.append((req.reaction, req.chunk, f, source or req.source, req.emotion))
        while len(self._ready) > 64:
            self._ready.popleft()

    async def _chunk_worker(self) -> None:
        """Runs this session's sampler requests in order (a chunk continues the previous one)."""
        hub = self.hub
        while True:
            req = await self._work.get()
            if not self.session.is_wanted(req):
                continue
            try:
                prev = self._states.get((req.reaction, req.previous_chunk)) if req.previous_chunk is not None else None
                if prev is None:
                    seed = hash((self.id, req.reaction, req.chunk)) & 0xFFFF
                    state = functools.partial(hub.engine.start_stream, self.assets.params, req.emotion,
                                              req.intensity, seed)
                else:
                    state = copy_state(prev)
                t0 = time.monotonic()
                res = await hub.scheduler.submit(ChunkJob(self.id, state, req.due_t, req.emotion, req.intensity))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the engine failed this batch: this reaction ends, the session goes on
                log.exception("session %s: chunk %s failed", self.id, (req.reaction, req.chunk))
                self.hub.stats["engine_failures"] += 1
                if not self.session.abort_reaction(req.reaction, "engine_failed",
                                                   f"the engine failed ({type(exc).__name__}: {exc}); "
                                                   "back to the idle loop", time.monotonic()):
                    self._error("engine_failed", f"{type(exc).__name__}: {exc}")
                self._pump()
                continue
            if not self.session.is_wanted(req):  # superseded by a switch, or the reaction ended
                self.hub.stats["chunks_discarded"] += 1
                continue
            self._store(req, res.frames, res.state)
            if res.lowres:
                self.hub.stats["chunks_lowres"] += 1
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

    def _error(self, code: str, message: str, *, fatal: bool = False, **extra: Any) -> None:
        log.warning("session %s: %s: %s", self.id, code, message)
        self.hub.metrics.errors.labels(code).inc()
        self._emit_local("error", {"code": code, "message": message, "fatal": fatal, **extra})

    def _flush_events(self) -> None:
        for ev in self.session.events():
            if ev.type == "frames_late":
                self.hub.metrics.frames_dropped.inc(ev.payload.get("count", 0))
            elif ev.type == "error":
                self.hub.metrics.errors.labels(str(ev.payload.get("code"))).inc()
            if ev.type == "latency":
                self.hub.metrics.observe_latency(ev.payload)
                log.info("session %s latency %s", self.id, ev.payload)
            text = ev.to_json()
            for sink in list(self.sinks):
                sink.offer_event(text)


def _ms(s: float) -> float:
    return round(s * 1000.0, 1)
