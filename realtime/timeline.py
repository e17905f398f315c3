"""One input turn's latency record: stage stamps, and TTFF/TTER once its frames are marked sent.

Pure: every call takes `now`. The session keeps one per turn and reports it as a `latency` event.
"""

from __future__ import annotations

from avatarcast.realtime.messages import FrameRequest, FrameSource, SessionEvent, VideoFrame
from avatarcast.vocabulary import REACTION_SOURCES

STAGES = ("decode", "vad", "asr", "emotion", "cache", "sample", "decode_frames", "encode", "send")


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 3)


class UtteranceTimeline:
    """Stage stamps of one input turn, and TTFF/TTER once its frames are marked sent.

    The origin is the end of speech (live audio) or the moment the clip / text / explicit emotion
    arrived. A decision by a partial transcript is provisional: the report waits for the final's
    cue (or for the turn to be finished) so TTER measures the emotion that was finally inferred.
    """

    def __init__(self, utterance: int, kind: str, origin: float | None = None) -> None:
        self.utterance = utterance
        self.kind = kind  # "speech" | "clip" | "say" | "explicit"
        self.origin = origin
        self.onset: float | None = None
        self.stamps: dict[str, tuple[float | None, float]] = {}
        self.emotion: str | None = None  # latest decided label
        self.decided_by: str | None = None
        self.first_decided_by: str | None = None
        self.first_frame_t: float | None = None
        self.first_frame_source: str | None = None
        self.emotion_frame_t: dict[str, float] = {}  # first send time per label (<= len(REACTION_EMOTIONS))
        # live finals: whether the pause's speculation was reused and how long the final's own Whisper run took
        # (the asr stage also counts waiting for the stream's lock and the shared model): where a tail comes from
        self.final_asr: dict | None = None
        self.reported = False

    def stamp(self, stage: str, end: float, start: float | None = None, *, keep: bool = False) -> None:
        """Stage `stage` finished at `end` (started at `start`, or when the stage before it ended)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        if keep and stage in self.stamps:
            return
        self.stamps[stage] = (start, end)

    def decide(self, label: str, decided_by: str) -> None:
        self.emotion = label
        self.decided_by = decided_by
        if self.first_decided_by is None:
            self.first_decided_by = decided_by

    @property
    def settled(self) -> bool:
        """True once the decision cannot be revised by a later cue of this turn."""
        return self.decided_by is not None and self.decided_by != "partial"

    @property
    def ttff_s(self) -> float | None:
        if self.first_frame_t is None or self.origin is None:
            return None
        return self.first_frame_t - self.origin

    @property
    def tter_s(self) -> float | None:
        if self.emotion is None or self.origin is None:
            return None
        t = self.emotion_frame_t.get(self.emotion)
        return None if t is None else t - self.origin

    def on_frame_sent(self, frame: VideoFrame | FrameRequest, now: float) -> SessionEvent | None:
        """Note a sent frame; returns the latency event when this turn's TTER becomes known."""
        if self.reported or frame.utterance != self.utterance:
            return None
        counts = frame.source in REACTION_SOURCES or (frame.source == FrameSource.IDLE and self.emotion == "idle")
        if not counts:
            return None
        if self.first_frame_t is None:
            self.first_frame_t = now
            self.first_frame_source = str(frame.source)  # plain text: the latency log line prints it
            for stage, (start, end) in (frame.stamps if isinstance(frame, VideoFrame) else {}).items():
                if stage in STAGES:
                    self.stamp(stage, end, start, keep=True)
            self.stamp("send", now, keep=True)
        self.emotion_frame_t.setdefault(frame.emotion, now)
        return self.maybe_report(now)

    def maybe_report(self, now: float) -> SessionEvent | None:
        if not self.reported and self.settled and self.tter_s is not None:
            return self.report(now)
        return None

    def report(self, now: float) -> SessionEvent | None:
        """The latency event (once); None if it was already reported."""
        if self.reported:
            return None
        self.reported = True
        return SessionEvent("latency", self.payload(), now)

    def payload(self) -> dict:
        stages_ms: dict[str, float | None] = {}
        at_ms: dict[str, float | None] = {}
        prev_end = self.origin
        for stage in STAGES:
            if stage not in self.stamps:
                continue
            start, end = self.stamps[stage]
            if start is None:
                start = prev_end if prev_end is not None and prev_end <= end else end
            stages_ms[stage] = _ms(end - start)
            if self.origin is not None:
                at_ms[stage] = _ms(end - self.origin)
            prev_end = end if prev_end is None else max(prev_end, end)
        return {
            "utterance": self.utterance,
            "kind": self.kind,
            "origin_t": self.origin,
            "ttff_ms": _ms(self.ttff_s),
            "tter_ms": _ms(self.tter_s),
            "emotion": self.emotion,
            "decided_by": self.decided_by,
            "first_decided_by": self.first_decided_by,
            "first_frame_source": self.first_frame_source,
            "stages_ms": stages_ms,  # how long each stage took
            "at_ms": at_ms,  # when each stage finished, from the origin (negative: before it)
            **({"final_asr": self.final_asr} if self.final_asr is not None else {}),
        }
