"""What moves between the stages of one session: plain dataclasses, each stamped with `t`.

`t` is always seconds on the session's injected monotonic clock (the server passes
`time.monotonic()`; tests pass numbers), so latency stamps ride along with the data.
Nothing here does I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from avatarcast.realtime.emotion import EmotionCue  # re-exported: the one cue type of the project
from avatarcast.vocabulary import REACTION_SOURCES, TIME_BASE, FrameSource

if TYPE_CHECKING:
    from avatarcast.realtime.asr import Transcript as AsrTranscript
    from avatarcast.realtime.asr import VadEvent

__all__ = [
    "AudioChunk",
    "ChunkRequest",
    "CueDecision",
    "CueSource",
    "EmotionCue",
    "FrameRequest",
    "FrameSource",
    "SessionEvent",
    "SpeechEvent",
    "Transcript",
    "VideoFrame",
]


class CueSource(StrEnum):
    """Where an emotion cue came from; a cue replaces a playing reaction only from a source as strong."""

    ASR = "asr"  # the user's speech (partial or final transcript)
    TEXT = "text"  # the assistant's reply text (say)
    EXPLICIT = "explicit"  # the app named the emotion


@dataclass(frozen=True)
class AudioChunk:
    """16 kHz mono audio as it arrived: float32/int16 ndarray, or little-endian PCM16 bytes."""

    t: float
    pcm: Any = field(repr=False)
    sample_rate: int = 16000
    seq: int = 0

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2 if isinstance(self.pcm, (bytes, bytearray, memoryview)) else len(self.pcm)

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate


@dataclass(frozen=True)
class SpeechEvent:
    """VAD onset ("start") or endpoint ("end"); `stream_s` is the audio time the VAD decided it at."""

    kind: str  # "start" | "end"
    t: float
    utterance: int = 0
    stream_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("start", "end"):
            raise ValueError(f"SpeechEvent.kind must be 'start' or 'end', got {self.kind!r}")

    @classmethod
    def from_vad(cls, event: VadEvent, t: float) -> SpeechEvent:
        kind = {"speech_start": "start", "speech_end": "end"}.get(event.kind)
        if kind is None:
            raise ValueError(f"VadEvent {event.kind!r} is not a speech start/end")
        at = event.start_s if kind == "start" else (event.end_s if event.end_s is not None else event.at_s)
        return cls(kind, t, event.utterance, at)


@dataclass(frozen=True)
class Transcript:
    """A partial or final transcript; `asr` keeps the model's full result (segments, language, timing)."""

    text: str
    final: bool
    t: float
    utterance: int = 0
    asr: AsrTranscript | None = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return "final" if self.final else "partial"

    @classmethod
    def from_vad(cls, event: VadEvent, t: float) -> Transcript:
        if event.kind not in ("partial", "final") or event.transcript is None:
            raise ValueError(f"VadEvent {event.kind!r} carries no transcript")
        return cls(event.transcript.text, event.kind == "final", t, event.utterance, event.transcript)


@dataclass(frozen=True)
class CueDecision:
    """An EmotionCue as it reached the session: when, from where, and which transcript decided it."""

    cue: EmotionCue
    t: float
    source: CueSource
    decided_by: str  # "partial" | "final" | "text" | "explicit"
    utterance: int


@dataclass(frozen=True)
class FrameRequest:
    """What frame `index` must show; `t` is its due time (t0 + index/8) on the session clock."""

    index: int
    pts: int  # in TIME_BASE units (1/8 s)
    t: float
    emotion: str
    intensity: float
    source: FrameSource
    utterance: int | None = None  # the input turn this frame answers (None: plain idle loop)
    reaction: int | None = None  # reaction id for cache/sampler frames
    chunk: int | None = None  # chunk number inside the reaction
    offset: int = 0  # frame number inside that chunk

    @property
    def from_cache(self) -> bool:
        return self.source == "cache"

    @property
    def is_reaction(self) -> bool:
        return self.source in REACTION_SOURCES


@dataclass(frozen=True)
class ChunkRequest:
    """Work for the template cache (source "cache") or the sampler: `n_frames` frames from `first_frame`.

    A later request with the same (reaction, chunk) and a higher `revision` replaces this one
    (the emotion switched mid-stream); `Session.is_wanted` says whether it is still wanted
    (`is_current`: and not yet late).
    """

    t: float  # when it was requested
    reaction: int
    chunk: int
    revision: int
    first_frame: int
    n_frames: int
    due_t: float  # when its first frame must be sent: the scheduler's deadline
    emotion: str
    intensity: float
    source: FrameSource  # cache or sampler
    previous_chunk: int | None  # chunk it continues from (None: start a new stream)
    utterance: int | None = None


@dataclass(frozen=True)
class VideoFrame:
    """One produced frame; `t` when it was made ready, `t_capture` when its pixels were produced."""

    index: int
    pts: int
    t: float
    t_capture: float
    emotion: str
    source: FrameSource
    intensity: float = 0.0
    utterance: int | None = None
    reaction: int | None = None
    # stage -> (start, end) on the session clock, e.g. {"sample": (t1, t2), "encode": (t2, t3)}
    stamps: dict[str, tuple[float, float]] = field(default_factory=dict, compare=False)
    data: Any = field(default=None, repr=False, compare=False)

    time_base = TIME_BASE

    @classmethod
    def from_request(
        cls,
        req: FrameRequest,
        t: float,
        *,
        t_capture: float | None = None,
        data: Any = None,
        stamps: dict[str, tuple[float, float]] | None = None,
    ) -> VideoFrame:
        return cls(
            req.index,
            req.pts,
            t,
            t if t_capture is None else t_capture,
            req.emotion,
            req.source,
            req.intensity,
            req.utterance,
            req.reaction,
            dict(stamps or {}),
            data,
        )

    @property
    def is_reaction(self) -> bool:
        return self.source in REACTION_SOURCES


@dataclass(frozen=True)
class SessionEvent:
    """A JSON event for the client (state_changed, transcript_*, emotion, latency, frames_late, error)."""

    type: str
    payload: dict[str, Any]
    t: float
    seq: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {"type": self.type, "t": self.t, "seq": self.seq, "payload": self.payload},
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> SessionEvent:
        d = json.loads(text)
        return cls(d["type"], d["payload"], d["t"], d.get("seq", 0))
