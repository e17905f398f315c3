"""One avatar stream's logic as a sans-I/O state machine: inputs in, frame plans and events out.

No sockets, no asyncio, no threads, no clock reads: every method takes `now` (seconds on the
caller's monotonic clock), so the whole behaviour is tested with plain calls. Transports
(WebSocket, WebRTC) and the scheduler are adapters around it:

- inputs: on_speech_start / on_partial / on_speech_end / on_final / on_cue / on_clip_received /
  on_say / on_emotion / on_close;
- `plan(now)` -> the FrameRequests due now (at most one: a late loop drops frames, never bursts);
- `chunk_requests()` -> ChunkRequests for the template cache and the sampler (<= 2 sampler
  chunks queued ahead of the one playing);
- `on_frame_sent(frame, now)` -> stamps the utterance timeline (TTFF/TTER);
- `events()` -> the SessionEvents to send to the client.

States: idle -> listening (speech) -> thinking (speech ended, cue unknown; listening pose)
-> reacting (cache chunk, then sampler chunks) -> idle after the emotion's hold time.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from avatarcast.engines.errors import ErrorCode
from avatarcast.realtime.clock import EPS, FrameClock
from avatarcast.realtime.emotion import EmotionCue
from avatarcast.realtime.messages import (
    ChunkRequest,
    CueDecision,
    CueSource,
    FrameRequest,
    FrameSource,
    SessionEvent,
    VideoFrame,
)
from avatarcast.realtime.timeline import UtteranceTimeline
from avatarcast.vocabulary import EMOTIONS, FPS, REACTION_SOURCES

if TYPE_CHECKING:
    from avatarcast.templates import EmotionTemplate


class SessionState(StrEnum):
    """What the avatar is doing: idle -> listening -> thinking -> reacting -> idle; closed at the end."""

    IDLE = "idle"
    LISTENING = "listening"  # speech is going on
    THINKING = "thinking"  # speech ended, the emotion is not known yet (listening pose)
    REACTING = "reacting"  # a cached chunk, then sampled chunks, for the emotion's hold time
    CLOSED = "closed"


STATES = tuple(s.value for s in SessionState)
CUE_SOURCES = tuple(s.value for s in CueSource)
# a cue may replace a playing reaction only if its source ranks at least as high
_RANK = {CueSource.ASR: 0, CueSource.TEXT: 1, CueSource.EXPLICIT: 2}
REACTION_EMOTIONS = tuple(e for e in EMOTIONS if e != "listening")


@dataclass(frozen=True)
class SessionConfig:
    """Knobs of one session; defaults match the shipped templates and the 8 fps stream."""

    fps: int = FPS
    chunk_frames: int = 4
    max_chunks_ahead: int = 2  # sampler chunks requested beyond the one playing
    hold_s: Mapping[str, float] = field(default_factory=dict)  # per emotion; default_hold_s otherwise
    default_hold_s: float = 3.5
    cached_emotions: frozenset[str] | None = None  # emotions with a cached first chunk (None: all)
    partial_min_confidence: float = 0.6  # a partial transcript's cue must be this sure to decide
    thinking_timeout_s: float = 4.0  # no cue this long after speech ends: back to idle
    listening_intensity: float = 0.4
    idle_intensity: float = 0.2
    late_tolerance_s: float | None = None  # None: half a frame
    # a listening pose or a reaction start may show this soon after the previous frame instead of
    # waiting for the next tick (None: never pull a frame in)
    pull_in_s: float | None = 0.04
    max_events: int = 256  # undrained events beyond this drop the oldest
    max_chunk_requests: int = 64
    max_timelines: int = 8
    # a reaction none of whose frames has been shown yet (its first chunk not made: the engine is behind) keeps its
    # place this long, and its hold time counts from its first frame shown; past it, it is skipped and a
    # reaction_skipped error says so (0: the hold counts from the reaction's start, shown or not)
    max_unshown_s: float = 10.0

    @classmethod
    def from_templates(
        cls, templates: Mapping[str, EmotionTemplate], cached: Iterable[str] | None = None, **kw: Any
    ) -> SessionConfig:
        """Hold times from templates.load_templates(); `cached` from the LatentsCache contents."""
        hold = {name: float(t.hold_seconds) for name, t in templates.items()}
        return cls(hold_s=hold, cached_emotions=None if cached is None else frozenset(cached), **kw)

    def hold_chunks(self, emotion: str) -> int:
        hold = self.hold_s.get(emotion, self.default_hold_s)
        if hold <= 0:
            hold = self.default_hold_s
        return max(1, math.ceil(hold * self.fps / self.chunk_frames - EPS))

    def has_cache(self, emotion: str) -> bool:
        return self.cached_emotions is None or emotion in self.cached_emotions


@dataclass
class _Segment:
    """One emotion inside a reaction, from chunk `start_chunk` on."""

    start_chunk: int
    emotion: str
    intensity: float
    from_cache: bool
    source: CueSource
    utterance: int


@dataclass
class _Reaction:
    id: int
    start_frame: int
    end_chunk: int  # first chunk not played: the return to idle
    segments: list[_Segment]
    next_request: int = 0  # next chunk to request
    revisions: dict[int, int] = field(default_factory=dict)  # chunk -> latest revision (queued only)
    playing: int = -1  # chunk of the last planned frame
    started_t: float = 0.0
    shown: bool = False  # a frame of this reaction was sent (not the listening fill-in while its chunk is late)

    def segment(self, chunk: int) -> _Segment:
        for seg in reversed(self.segments):
            if seg.start_chunk <= chunk:
                return seg
        return self.segments[0]


@dataclass
class _Turn:
    """Session-side facts about one input turn (speech utterance, clip, say, explicit)."""

    id: int
    kind: str
    timeline: UtteranceTimeline
    speech_open: bool = False
    ended: bool = False
    final: bool = False
    early_cue: CueDecision | None = None  # a confident partial cue held until speech ends


class Session:
    """The avatar's brain for one stream: pure state machine, every input stamped with `now`."""

    def __init__(self, t0: float, config: SessionConfig | None = None, session_id: str = "") -> None:
        self.config = config or SessionConfig()
        self.session_id = session_id
        self.clock = FrameClock(t0, self.config.fps, self.config.late_tolerance_s)
        self._state = SessionState.IDLE
        self._state_since = float(t0)
        self._events: deque[SessionEvent] = deque(maxlen=self.config.max_events)
        self._chunks: deque[ChunkRequest] = deque(maxlen=self.config.max_chunk_requests)
        self._seq = 0
        self.events_dropped = 0
        self._turn_count = 0
        self._turns: OrderedDict[int, _Turn] = OrderedDict()  # bounded by max_timelines
        self._speech: int | None = None  # the latest speech/clip turn
        self._say: int | None = None  # a say turn waiting for its text cue
        self._clip_pending: int | None = None  # clip turn waiting for its first speech_start
        self._reaction: _Reaction | None = None
        self._reaction_count = 0
        self._idle_turn: int | None = None  # a turn whose decision was "idle" (its idle frames count)
        self._partial_text = ""
        self.frames_planned = 0
        self.clock_changed = False  # set when a frame was pulled in: the driver must re-read the next due time

    # -- read-only views --

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state == SessionState.CLOSED

    @property
    def utterance(self) -> int | None:
        """The latest speech (or clip) turn id."""
        return self._speech

    @property
    def emotion(self) -> str:
        """What the avatar shows on the next frame."""
        return self.next_frame_source(self.clock.next_index).emotion

    def timeline(self, utterance: int) -> UtteranceTimeline | None:
        turn = self._turns.get(utterance)
        return None if turn is None else turn.timeline

    # -- drains --

    def events(self) -> list[SessionEvent]:
        """Take the events produced since the last call."""
        out = list(self._events)
        self._events.clear()
        return out

    def chunk_requests(self) -> list[ChunkRequest]:
        """Take the cache/sampler work requested since the last call (check is_wanted before running and showing)."""
        out = list(self._chunks)
        self._chunks.clear()
        return out

    def is_current(self, req: ChunkRequest) -> bool:
        """Whether a chunk request is still wanted (not superseded by a switch, barge-in or the end)."""
        r = self._reaction
        if r is None or self._state != SessionState.REACTING or req.reaction != r.id:
            return False
        return r.playing <= req.chunk < r.end_chunk and r.revisions.get(req.chunk, 0) == req.revision

    def is_wanted(self, req: ChunkRequest) -> bool:
        """Whether a chunk's frames should still be shown, even late: its reaction is still on and no
        newer revision (an emotion switch) replaced it. Unlike is_current, a chunk whose time slot
        has passed stays wanted: a transport may play it late rather than skip it."""
        r = self._reaction
        if r is None or self._state != SessionState.REACTING or req.reaction != r.id or req.chunk >= r.end_chunk:
            return False
        return r.revisions.get(req.chunk, req.revision) == req.revision

    # -- inputs --

    def on_speech_start(self, now: float) -> int | None:
        """VAD onset: the very next due frame shows the listening pose. Returns the turn id."""
        if self.closed:
            return None
        cur = self._turns.get(self._speech) if self._speech is not None else None
        if cur is not None and cur.speech_open:
            return cur.id  # duplicate onset
        if self._clip_pending is not None and self._clip_pending in self._turns:
            turn = self._turns[self._clip_pending]
            self._clip_pending = None
        else:
            if cur is not None:
                self._finish_turn(cur, now)  # its final can no longer apply: a new turn began
            turn = self._new_turn("speech", None, now)
        turn.speech_open = True
        turn.timeline.onset = now
        self._speech = turn.id
        self._partial_text = ""
        self._stop_reaction(now)
        self._pull_in(now)
        self._set_state(SessionState.LISTENING, now)
        return turn.id

    def on_partial(self, text: str, now: float, *, utterance: int | None = None, language: str | None = None) -> None:
        if self.closed:
            return
        turn = self._speech_turn(utterance, now, implicit=utterance is None)
        if turn is None or turn.final:
            return  # stale: that turn already has its final
        self._partial_text = text
        self._emit("transcript_partial", {"text": text, "utterance": turn.id, "language": language}, now)

    def on_speech_end(self, now: float, *, utterance: int | None = None, at: float | None = None) -> None:
        """The VAD's endpoint, decided at `now`; `at` is when the speech really ended (its audio's
        arrival), which is where TTFF/TTER count from. Default: now."""
        if self.closed:
            return
        turn = self._speech_turn(utterance, now, implicit=utterance is None)
        if turn is None or turn.ended:
            return
        self._end_speech(turn, now, implied=False, at=at)

    def on_pause(self, now: float, *, utterance: int | None = None, at: float | None = None) -> bool:
        """The speaker went quiet (shorter than the endpoint). If a confident cue is already held for
        this turn, the speech counts as ended at `at` and the reaction starts now; else nothing.
        Returns whether it reacted."""
        if self.closed:
            return False
        turn = self._speech_turn(utterance, now, implicit=False)
        if turn is None or turn.ended or turn.early_cue is None:
            return False
        self._end_speech(turn, now, implied=False, at=at)
        return True

    def on_final(
        self,
        text: str,
        now: float,
        *,
        utterance: int | None = None,
        language: str | None = None,
        asr: dict | None = None,
    ) -> None:
        """The utterance's transcript; `language` is the one ASR heard (None: unknown, e.g. no audio);
        `asr`: live finals' {"reused": bool, "run_ms": float}, reported in the turn's latency event."""
        if self.closed:
            return
        turn = self._speech_turn(utterance, now, implicit=utterance is None)
        if turn is None or turn.final:
            return  # stale or duplicate final
        if not turn.ended:
            self._end_speech(turn, now, implied=True)  # a final implies the speech ended
        turn.final = True
        if self._clip_pending == turn.id:
            # a clip transcribed whole (the runner's clip path) has no speech onset: later speech is a new turn
            self._clip_pending = None
        turn.timeline.stamp("asr", now, keep=True)
        if asr is not None:
            turn.timeline.final_asr = asr
        self._partial_text = ""
        self._emit(
            "transcript_final", {"text": text, "utterance": turn.id, "source": turn.kind, "language": language}, now
        )

    def on_cue(
        self,
        cue: EmotionCue,
        now: float,
        source: str = CueSource.ASR,
        *,
        utterance: int | None = None,
        decided_by: str | None = None,
    ) -> None:
        """An emotion cue. asr: for the latest speech turn (decided_by partial until its final arrived);
        text: for the pending say; explicit: overrides everything."""
        if self.closed:
            return
        if source not in CUE_SOURCES:
            self._error(ErrorCode.BAD_CUE_SOURCE, f"cue source must be one of {CUE_SOURCES}, got {source!r}", now)
            return
        source = CueSource(source)
        if cue.label not in REACTION_EMOTIONS:
            self._error(ErrorCode.UNKNOWN_EMOTION, f"no template for emotion {cue.label!r}", now)
            return
        if source == CueSource.ASR:
            turn = self._turns.get(self._speech) if self._speech is not None else None
            if turn is None or (utterance is not None and utterance != turn.id):
                self._error(ErrorCode.STALE_CUE, "asr cue for no current utterance; ignored", now, utterance=utterance)
                return
            decided_by = decided_by or ("final" if turn.final else "partial")
        elif source == CueSource.TEXT:
            turn = self._turns.get(self._say) if self._say is not None else None
            if turn is None:
                turn = self._new_turn("say", now, now)
            self._say = None
            decided_by = "text"
        else:
            turn = self._new_turn("explicit", now, now)
            decided_by = "explicit"
        if source == CueSource.ASR and turn.timeline.reported:
            self._error(ErrorCode.STALE_CUE, "asr cue for a finished utterance; ignored", now, utterance=turn.id)
            return
        self._decide(CueDecision(cue, now, source, decided_by, turn.id), turn, now)

    def on_emotion(self, label: str, intensity: float, now: float) -> None:
        """An explicit emotion from the app: overrides inferred cues."""
        x = float(intensity)
        if not math.isfinite(x):
            if not self.closed:
                self._error(ErrorCode.BAD_INTENSITY, f"intensity must be a number in 0..1, got {intensity!r}", now)
            return
        x = min(max(x, 0.0), 1.0)
        self.on_cue(EmotionCue(label, x, 1.0, {label: 1.0}), now, CueSource.EXPLICIT)

    def on_say(self, text: str, now: float) -> int | None:
        """Text for the avatar (a chat reply); its cue follows through on_cue(source="text")."""
        if self.closed:
            return None
        turn = self._new_turn("say", now, now)
        self._say = turn.id
        self._emit("transcript_final", {"text": text, "utterance": turn.id, "source": "say"}, now)
        if self._state == SessionState.IDLE:
            self._set_state(SessionState.THINKING, now)
        return turn.id

    def on_clip_received(self, now: float) -> int | None:
        """A whole clip arrived: TTFF/TTER count from now; the avatar takes the listening pose."""
        if self.closed:
            return None
        cur = self._turns.get(self._speech) if self._speech is not None else None
        if cur is not None:
            self._finish_turn(cur, now)
        turn = self._new_turn("clip", now, now)
        self._speech = turn.id
        self._clip_pending = turn.id
        self._stop_reaction(now)
        self._set_state(SessionState.THINKING, now)
        return turn.id

    def on_close(self, now: float) -> None:
        if self.closed:
            return
        for turn in list(self._turns.values()):
            self._finish_turn(turn, now)
        self._reaction = None
        self._set_state(SessionState.CLOSED, now)

    def abort_reaction(self, reaction: int, code: ErrorCode, message: str, now: float) -> bool:
        """The engine could not make this reaction's frames: back to the idle (or listening) loop from
        the next frame, with an error event. False if that reaction is no longer playing."""
        r = self._reaction
        if self.closed or r is None or r.id != reaction or self._state != SessionState.REACTING:
            return False
        self._error(code, message, now, reaction=reaction)
        self._end_reaction(now)
        return True

    def stamp(self, stage: str, end: float, start: float | None = None, *, utterance: int | None = None) -> None:
        """Record a pipeline stage (decode, vad, asr, ...) for a turn (default: the latest speech turn)."""
        key = self._speech if utterance is None else utterance
        turn = self._turns.get(key) if key is not None else None
        if turn is not None:
            turn.timeline.stamp(stage, end, start)

    # -- frames --

    def next_frame_source(self, frame_index: int) -> FrameRequest:
        """What frame `frame_index` shows if nothing changes before then (a pure query)."""
        c = self.config
        t = self.clock.time_of(frame_index)
        pts = self.clock.pts_of(frame_index)
        st = self._state
        if st in (SessionState.LISTENING, SessionState.THINKING):
            return FrameRequest(
                frame_index, pts, t, "listening", c.listening_intensity, FrameSource.LISTENING, self._speech
            )
        r = self._reaction
        if st == SessionState.REACTING and r is not None:
            off = frame_index - r.start_frame
            chunk = off // c.chunk_frames if off >= 0 else 0
            if off >= 0 and chunk < r.end_chunk:
                seg = r.segment(chunk)
                source = FrameSource.CACHE if (seg.from_cache and chunk == seg.start_chunk) else FrameSource.SAMPLER
                return FrameRequest(
                    frame_index,
                    pts,
                    t,
                    seg.emotion,
                    seg.intensity,
                    source,
                    seg.utterance,
                    r.id,
                    chunk,
                    off % c.chunk_frames,
                )
            if off < 0:
                return FrameRequest(
                    frame_index, pts, t, "listening", c.listening_intensity, FrameSource.LISTENING, self._speech
                )
        return FrameRequest(frame_index, pts, t, "idle", c.idle_intensity, FrameSource.IDLE, self._idle_turn)

    def plan(self, now: float) -> list[FrameRequest]:
        """The frames due at `now` (at most one); advances hold timers and the chunk queue."""
        if self.closed:
            return []
        if self._state == SessionState.THINKING and now - self._state_since > self.config.thinking_timeout_s:
            self._thinking_timeout(now)
        out = []
        for k in self.clock.due(now):
            req = self.next_frame_source(k)
            r = self._reaction
            if self._state == SessionState.REACTING and r is not None:
                if req.is_reaction and req.chunk is not None:
                    if req.chunk != r.playing:
                        r.playing = req.chunk
                        self._prune(r)
                        self._fill_chunks(r, now)
                elif k >= r.start_frame and self._keep_unshown(r, k, now):
                    req = self.next_frame_source(k)  # the next chunk slot of the reaction still waiting
                    r.playing = req.chunk if req.chunk is not None else r.playing
                    self._prune(r)
                    self._fill_chunks(r, now)
                elif k >= r.start_frame:
                    if not r.shown:
                        self._error(
                            ErrorCode.REACTION_SKIPPED,
                            f"none of this {r.segments[-1].emotion} reaction's frames was ready before it ended "
                            "(the engine is behind); back to the idle loop",
                            now,
                            reaction=r.id,
                            utterance=r.segments[-1].utterance,
                        )
                    self._end_reaction(now, from_frame=k)  # hold time over
                    req = self.next_frame_source(k)
            out.append(req)
            self.frames_planned += 1
        late = self.clock.take_late()
        if late is not None:
            self._emit("frames_late", {"first": late[0], "count": late[1], "dropped_total": self.clock.dropped}, now)
        return out

    def on_frame_sent(self, frame: VideoFrame | FrameRequest, now: float) -> SessionEvent | None:
        """The transport sent `frame` at `now`: lateness accounting and TTFF/TTER. Returns a latency event."""
        if self.closed:
            return None
        self.clock.report_sent(frame.index, now)
        r = self._reaction
        if r is not None and not r.shown and frame.reaction == r.id and frame.source in REACTION_SOURCES:
            r.shown = True  # its hold counts from here: all of it is seen, however late the first chunk came
            c = self.config
            slot = max(0, (frame.index - r.start_frame) // c.chunk_frames)
            r.end_chunk = max(r.end_chunk, slot + c.hold_chunks(r.segment(slot).emotion))
            self._fill_chunks(r, now)
        turn = self._turns.get(frame.utterance) if frame.utterance is not None else None
        if turn is None:
            return None
        ev = turn.timeline.on_frame_sent(frame, now)
        if ev is not None:
            self._push(ev)
        return ev

    # -- internals: turns --

    def _pull_in(self, now: float) -> None:
        if self.config.pull_in_s is not None and self.clock.pull_in(now, self.config.pull_in_s):
            self.clock_changed = True

    def _new_turn(self, kind: str, origin: float | None, now: float) -> _Turn:
        turn = _Turn(self._turn_count, kind, UtteranceTimeline(self._turn_count, kind, origin))
        self._turn_count += 1
        self._turns[turn.id] = turn
        while len(self._turns) > self.config.max_timelines:
            _, old = self._turns.popitem(last=False)
            self._report(old.timeline, now)
            self._speech, self._say, self._clip_pending, self._idle_turn = (
                None if key == old.id else key for key in (self._speech, self._say, self._clip_pending, self._idle_turn)
            )
        return turn

    def _speech_turn(self, utterance: int | None, now: float, implicit: bool) -> _Turn | None:
        """The turn a speech input refers to; creates one if speech arrives with no onset seen."""
        turn = self._turns.get(self._speech) if self._speech is not None else None
        if utterance is not None:
            return turn if turn is not None and turn.id == utterance else None
        if turn is None:
            if not implicit:
                return None
            # speech without an onset (session opened mid-speech, lost event): open a turn now
            self.on_speech_start(now)
            turn = self._turns[self._speech]  # type: ignore[index]
        elif turn.kind == "clip" and self._clip_pending == turn.id:
            self._clip_pending = None
            turn.speech_open = True
        return turn

    def _end_speech(self, turn: _Turn, now: float, implied: bool, at: float | None = None) -> None:
        turn.speech_open = False
        turn.ended = True
        if turn.timeline.origin is None:
            # live speech: TTFF/TTER count from the end of speech
            turn.timeline.origin = now if at is None else min(at, now)
        turn.timeline.stamp("vad", now, now if turn.timeline.onset is None else None, keep=True)
        if self._state != SessionState.LISTENING:
            return  # an override reaction is playing: it goes on
        if turn.early_cue is not None:
            cue, turn.early_cue = turn.early_cue, None
            self._start_or_switch(cue, turn, now)
        else:
            self._set_state(SessionState.THINKING, now, implied_end=implied)

    def _finish_turn(self, turn: _Turn, now: float) -> None:
        turn.speech_open = False
        turn.early_cue = None
        self._report(turn.timeline, now)

    def _report(self, tl: UtteranceTimeline, now: float) -> None:
        if tl.origin is None and tl.emotion is None and tl.first_frame_t is None:
            tl.reported = True  # nothing happened that a latency figure could describe
            return
        ev = tl.report(now)
        if ev is not None:
            self._push(ev)

    # -- internals: cues and reactions --

    def _decide(self, d: CueDecision, turn: _Turn, now: float) -> None:
        cue = d.cue
        tl = turn.timeline
        before = tl.stamps.get("emotion")
        tl.stamp("emotion", now)
        applied, reason = self._apply(d, turn, now)
        if not applied:  # a cue that changed nothing did not end the emotion stage
            if before is None:
                del tl.stamps["emotion"]
            else:
                tl.stamps["emotion"] = before
        self._emit(
            "emotion",
            {
                "label": cue.label,
                "intensity": cue.intensity,
                "confidence": cue.confidence,
                "scores": dict(cue.scores),
                "evidence": list(cue.evidence),
                "source": d.source,
                "decided_by": d.decided_by,
                "utterance": turn.id,
                "applied": applied,
                "reason": reason,
            },
            now,
        )
        self._maybe_report(tl, now)

    def _apply(self, d: CueDecision, turn: _Turn, now: float) -> tuple[bool, str | None]:
        if d.decided_by == "partial" and d.cue.confidence < self.config.partial_min_confidence:
            return False, "partial_not_confident"
        st = self._state
        if st == SessionState.LISTENING and d.source == CueSource.ASR and turn.speech_open:
            turn.early_cue = d  # decided early; shown the moment speech ends
            turn.timeline.decide(d.cue.label, d.decided_by)
            return True, "at_speech_end"
        if st == SessionState.REACTING and self._reaction is not None:
            playing = self._reaction.segments[-1]
            if _RANK[d.source] < _RANK[playing.source]:
                return False, f"overridden_by_{playing.source}"
        if d.cue.label == "idle" and st not in (SessionState.THINKING, SessionState.REACTING):
            turn.timeline.decide("idle", d.decided_by)
            return True, "already_calm"
        self._start_or_switch(d, turn, now)
        return True, None

    def _start_or_switch(self, d: CueDecision, turn: _Turn, now: float) -> None:
        c = self.config
        label = d.cue.label
        intensity = min(max(float(d.cue.intensity), 0.0), 1.0)
        tl = turn.timeline
        tl.decide(label, d.decided_by)
        r = self._reaction
        if self._state != SessionState.REACTING or r is None:
            if label == "idle":
                self._idle_turn = turn.id
                self._reaction = None
                self._set_state(SessionState.IDLE, now, utterance=turn.id)
            else:
                r = self._new_reaction(d, turn, label, intensity, now)
                self._set_state(SessionState.REACTING, now, utterance=turn.id, emotion=label)
                self._fill_chunks(r, now)
            return
        last = r.segments[-1]
        if label not in ("idle", last.emotion) and c.has_cache(label):
            self._restart_reaction(d, turn, label, intensity, now)
            return
        # mid-stream, no cached first chunk for the new emotion (or calming down): switch at the next chunk
        # boundary, where the sampler continues the stream from the end of the playing chunk (causal)
        nxt = self.clock.upcoming(now) - r.start_frame
        boundary = max(0, -(-nxt // c.chunk_frames))
        if label == "idle":
            r.end_chunk = min(r.end_chunk, boundary)  # calm down at the boundary; its idle frames answer this turn
            self._idle_turn = turn.id
        elif label == last.emotion:
            if last.utterance != turn.id or _RANK[d.source] > _RANK[last.source]:
                # a new turn agreeing with the playing emotion keeps it going (no restart)
                last.source = d.source if _RANK[d.source] > _RANK[last.source] else last.source
                last.utterance = turn.id
                r.end_chunk = max(r.end_chunk, boundary + c.hold_chunks(label))
        else:
            self._idle_turn = None
            r.segments = [s for s in r.segments if s.start_chunk < boundary]
            r.segments.append(_Segment(boundary, label, intensity, c.has_cache(label), d.source, turn.id))
            r.end_chunk = boundary + c.hold_chunks(label)
            r.next_request = min(r.next_request, boundary)  # re-issue queued chunks with the new emotion
            self._prune(r)
            self._fill_chunks(r, now)
            self._emit_switch(turn, label, r.start_frame + boundary * c.chunk_frames, now)

    def _restart_reaction(self, d: CueDecision, turn: _Turn, label: str, intensity: float, now: float) -> None:
        """A switch to an emotion with a cached first chunk: a new reaction from the very next frame.

        The cached chunk starts a stream of its own (at rest: templates/cache.py), so it never continued the
        playing chunk, and waiting for the playing chunk to end (up to chunk_frames - 1 frames, 375 ms at
        8 fps, plus the frame tick) only held the decided emotion back: the Mandarin bench's switches (a
        partial's reaction revised) waited 109-429 ms there (docs/bench/tter17_switch_2026-12-05). The old
        reaction's queued chunks are no longer wanted (is_wanted), and the playout drops its unsent frames
        when the new reaction's first frame plays."""
        self._idle_turn = None
        r = self._new_reaction(d, turn, label, intensity, now)
        self._fill_chunks(r, now)
        self._emit_switch(turn, label, r.start_frame, now)

    def _new_reaction(self, d: CueDecision, turn: _Turn, label: str, intensity: float, now: float) -> _Reaction:
        """The session's reaction from now on: one emotion from the next frame, pulled in as every start is."""
        c = self.config
        self._reaction_count += 1
        seg = _Segment(0, label, intensity, c.has_cache(label), d.source, turn.id)
        self._pull_in(now)
        r = self._reaction = _Reaction(self._reaction_count, self.clock.upcoming(now), c.hold_chunks(label), [seg])
        r.started_t = now
        return r

    def _emit_switch(self, turn: _Turn, label: str, from_frame: int, now: float) -> None:
        """A reacting session's emotion changes at `from_frame` (the state stays REACTING)."""
        to = {"from": SessionState.REACTING, "to": SessionState.REACTING, "utterance": turn.id, "emotion": label}
        self._emit("state_changed", {**to, "from_frame": from_frame}, now)

    def _maybe_report(self, tl: UtteranceTimeline, now: float) -> None:
        ev = tl.maybe_report(now)
        if ev is not None:
            self._push(ev)

    def _fill_chunks(self, r: _Reaction, now: float) -> None:
        c = self.config
        queued = sum(
            1
            for k in range(max(r.playing + 1, 0), r.next_request)
            if k < r.end_chunk and not self._is_cache_chunk(r, k)
        )
        while r.next_request < r.end_chunk:
            k = r.next_request
            cache = self._is_cache_chunk(r, k)
            if not cache and queued >= c.max_chunks_ahead:
                break
            seg = r.segment(k)
            rev = r.revisions[k] + 1 if k in r.revisions else 0
            r.revisions[k] = rev
            first = r.start_frame + k * c.chunk_frames
            prev = None if (cache or k == 0) else k - 1
            source = FrameSource.CACHE if cache else FrameSource.SAMPLER
            self._chunks.append(
                ChunkRequest(
                    now,
                    r.id,
                    k,
                    rev,
                    first,
                    c.chunk_frames,
                    self.clock.time_of(first),
                    seg.emotion,
                    seg.intensity,
                    source,
                    prev,
                    seg.utterance,
                )
            )
            r.next_request += 1
            if not cache:
                queued += 1

    @staticmethod
    def _is_cache_chunk(r: _Reaction, k: int) -> bool:
        seg = r.segment(k)
        return seg.from_cache and seg.start_chunk == k

    @staticmethod
    def _prune(r: _Reaction) -> None:
        """Forget segments and revisions already played: memory stays flat however long it reacts."""
        done = max(r.playing, 0)
        keep = [s for s in r.segments if s.start_chunk > done]
        current = [s for s in r.segments if s.start_chunk <= done]
        r.segments = current[-1:] + keep
        for k in [k for k in r.revisions if k < done]:
            del r.revisions[k]

    def _keep_unshown(self, r: _Reaction, k: int, now: float) -> bool:
        """Whether a reaction whose hold time ran out before any of its frames was shown keeps its place through
        frame k (the engine is behind, up to max_unshown_s): its hold then counts from its first frame shown."""
        if r.shown or now - r.started_t >= self.config.max_unshown_s:
            return False
        r.end_chunk = (k - r.start_frame) // self.config.chunk_frames + 1
        return True

    def _stop_reaction(self, now: float) -> None:
        r, self._reaction = self._reaction, None
        if r is not None:
            for seg in r.segments:
                turn = self._turns.get(seg.utterance)
                if turn is not None:
                    self._report(turn.timeline, now)

    def _end_reaction(self, now: float, from_frame: int | None = None) -> None:
        self._stop_reaction(now)
        cur = self._turns.get(self._speech) if self._speech is not None else None
        state = SessionState.LISTENING if cur is not None and cur.speech_open else SessionState.IDLE
        self._set_state(state, now, from_frame=from_frame)

    def _thinking_timeout(self, now: float) -> None:
        self._error(
            ErrorCode.NO_CUE,
            f"no emotion cue within {self.config.thinking_timeout_s:g} s; back to idle",
            now,
            utterance=self._speech,
        )
        for key in (self._speech, self._say):
            if key is not None and key in self._turns:
                self._finish_turn(self._turns[key], now)
        self._say = None
        self._set_state(SessionState.IDLE, now)

    # -- internals: state and events --

    def _set_state(self, state: SessionState, now: float, from_frame: int | None = None, **extra: object) -> None:
        if state == self._state:
            return
        prev, self._state, self._state_since = self._state, state, now
        if state not in (SessionState.IDLE, SessionState.CLOSED):
            self._idle_turn = None
        # from_frame: the first frame index that shows the new state
        first = self.clock.upcoming(now) if from_frame is None else from_frame
        payload: dict[str, object] = {"from": prev, "to": state, "utterance": self._speech, "from_frame": first}
        payload.update(extra)
        self._emit("state_changed", payload, now)

    def _error(self, code: ErrorCode, message: str, now: float, **extra: object) -> None:
        self._emit("error", {"code": str(code), "message": message, "fatal": False, **extra}, now)

    def _emit(self, type_: str, payload: dict, now: float) -> None:
        self._push(SessionEvent(type_, payload, now))

    def _push(self, ev: SessionEvent) -> None:
        if len(self._events) == self._events.maxlen:
            self.events_dropped += 1
        self._seq += 1
        self._events.append(SessionEvent(ev.type, ev.payload, ev.t, self._seq))
