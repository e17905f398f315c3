"""The JSON events the server sends (WebSocket text messages, WebRTC data channel messages), one frozen
dataclass each: the home of each event's fields. The Python client decodes into them, and
docs/protocol.schema.json is generated from them (realtime/protocol_schema.py); the tests check the
server's real events against that schema.

On the wire an event is `{"type", "t", "seq", "payload"}`; here it is flat: `ev.t`, `ev.seq` and the
payload's fields (`ev.label`). Payload keys this version does not know are kept in `ev.extra`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from avatarcast.engines.errors import ErrorCode
from avatarcast.realtime.messages import CueSource
from avatarcast.realtime.session import REACTION_EMOTIONS, SessionState
from avatarcast.realtime.timeline import STAGES
from avatarcast.realtime.wire_fields import ProtocolError, from_wire, to_wire, wire
from avatarcast.vocabulary import EMOTIONS, IMAGE_FORMATS, FrameSource

__all__ = [
    "EVENT_TYPES",
    "Clip",
    "Closing",
    "Emotion",
    "Error",
    "FramesLate",
    "Hello",
    "Language",
    "Latency",
    "Pong",
    "ProtocolError",
    "ServerEvent",
    "SessionInfo",
    "StateChanged",
    "TranscriptFinal",
    "TranscriptPartial",
    "UnknownEvent",
    "parse_event",
]

TurnKind = Literal["speech", "clip", "say", "explicit"]  # what started an utterance ("turn")
DecidedBy = Literal["partial", "final", "text", "explicit"]  # what decided an emotion
ERROR_CODES = sorted({c.wire for c in ErrorCode})
LANGUAGE = "a Whisper language code (en, zh, ...); null: found for each utterance"
STAGE_NAMES: dict[str, Any] = {"enum": list(STAGES)}  # the keys of a latency event's stage times


@dataclass(frozen=True, kw_only=True)
class ServerEvent:
    """Every event: its type, the server's session clock and the session's event counter."""

    TYPE: ClassVar[str] = ""
    t: float = field(default=0.0, metadata=wire("the server's monotonic clock, seconds", part="envelope"))
    seq: int = field(default=0, metadata=wire("the session's event counter; 0: the connection's own", part="envelope"))
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False, metadata=wire(part="extra"))

    def to_json(self) -> str:
        """The event as the server sends it."""
        msg = {"type": self.TYPE, "t": self.t, "seq": self.seq, "payload": to_wire(self)}
        return json.dumps(msg, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, kw_only=True)
class Hello(ServerEvent):
    """The first event on every connection: the session and its stream."""

    TYPE: ClassVar[str] = "hello"
    session: str = field(metadata=wire("the session id (attach more clients at /v1/sessions/{id}/ws)"))
    avatar: str
    fps: int
    width: int
    height: int
    image_format: str = field(metadata=wire(enum=list(IMAGE_FORMATS)))
    emotions: list[str] = field(metadata=wire("the emotion index of the frame header points into this list"))
    language: str | None = field(metadata=wire(LANGUAGE))


@dataclass(frozen=True, kw_only=True)
class StateChanged(ServerEvent):
    """The avatar's state: idle -> listening -> thinking -> reacting -> idle; closed at the end."""

    TYPE: ClassVar[str] = "state_changed"
    from_state: SessionState = field(metadata=wire(name="from"))
    to: SessionState
    utterance: int | None = field(metadata=wire("the utterance the change answers"))
    from_frame: int = field(metadata=wire("the first frame index that shows the new state"))
    emotion: str | None = field(default=None, metadata=wire("reacting: the emotion shown", enum=[*EMOTIONS, None]))
    implied_end: bool | None = field(
        default=None, metadata=wire("thinking: true when a final transcript ended the speech, not the VAD")
    )


@dataclass(frozen=True, kw_only=True)
class TranscriptPartial(ServerEvent):
    """What ASR heard so far, while the person talks."""

    TYPE: ClassVar[str] = "transcript_partial"
    text: str
    utterance: int
    language: str | None = field(metadata=wire(LANGUAGE))


@dataclass(frozen=True, kw_only=True)
class TranscriptFinal(ServerEvent):
    """An utterance's transcript (speech, a clip), or the text of a `say`."""

    TYPE: ClassVar[str] = "transcript_final"
    text: str
    utterance: int
    source: TurnKind
    language: str | None = field(default=None, metadata=wire("the language ASR heard (absent for say)"))


@dataclass(frozen=True, kw_only=True)
class Emotion(ServerEvent):
    """An emotion cue as it reached the session, and whether it changed what the avatar shows."""

    TYPE: ClassVar[str] = "emotion"
    label: str = field(metadata=wire(enum=list(REACTION_EMOTIONS)))
    intensity: float = field(metadata=wire(minimum=0, maximum=1))
    confidence: float = field(metadata=wire(minimum=0, maximum=1))
    scores: dict[str, float] = field(metadata=wire("the reader's score for each label"))
    evidence: list[str] = field(metadata=wire("matched keywords, for debugging"))
    source: CueSource = field(metadata=wire("asr: the user's speech; text: a say; explicit: an emotion command"))
    decided_by: DecidedBy
    utterance: int
    applied: bool = field(metadata=wire("false: the cue changed nothing (see reason)"))
    reason: str | None = field(metadata=wire("why it was not applied, or how (at_speech_end, already_calm)"))


@dataclass(frozen=True, kw_only=True)
class Latency(ServerEvent):
    """An utterance's reaction time and where it went, as the server measured it."""

    TYPE: ClassVar[str] = "latency"
    utterance: int
    kind: TurnKind
    origin_t: float | None = field(metadata=wire("when the clock started (end of speech, clip or say received)"))
    ttff_ms: float | None = field(metadata=wire("origin -> first frame that is not idle"))
    tter_ms: float | None = field(metadata=wire("origin -> first frame showing the decided emotion"))
    emotion: str | None
    decided_by: DecidedBy | None
    first_decided_by: DecidedBy | None
    first_frame_source: FrameSource | None
    stages_ms: dict[str, float | None] = field(metadata=wire("how long each stage took", propertyNames=STAGE_NAMES))
    at_ms: dict[str, float | None] = field(
        metadata=wire("when each stage ended, from the origin", propertyNames=STAGE_NAMES)
    )
    final_asr: dict[str, float | bool] | None = field(
        default=None,
        metadata=wire(
            "live speech only: reused (the pause's speculative transcript served as the final) and run_ms (the"
            " final's own Whisper run, 0 when reused); the asr stage also counts waiting for the model",
            propertyNames={"enum": ["reused", "run_ms"]},
        ),
    )


@dataclass(frozen=True, kw_only=True)
class FramesLate(ServerEvent):
    """Frames the server could not send on time (skipped, never queued)."""

    TYPE: ClassVar[str] = "frames_late"
    first: int = field(metadata=wire("the first late frame index"))
    count: int
    dropped_total: int = field(metadata=wire("late frames in this session so far"))


@dataclass(frozen=True, kw_only=True)
class Clip(ServerEvent):
    """What the server decided for a clip sent on this socket."""

    TYPE: ClassVar[str] = "clip"
    utterance: int
    transcript: str
    language: str | None
    emotion: str
    intensity: float
    confidence: float
    audio_s: float = field(metadata=wire("the clip's length, seconds"))
    stages_ms: dict[str, float] = field(metadata=wire("decode, asr and emotion times"))


@dataclass(frozen=True, kw_only=True)
class Language(ServerEvent):
    """The session's ASR language after a `language` command."""

    TYPE: ClassVar[str] = "language"
    language: str | None = field(metadata=wire(LANGUAGE))


@dataclass(frozen=True)
class SessionInfo:
    """A session as `ping` and GET /v1/sessions/{id} describe it."""

    id: str
    avatar: str
    state: SessionState
    emotion: str
    image_format: str = field(metadata=wire(enum=list(IMAGE_FORMATS)))
    language: str | None
    frames_sent: int
    frames_dropped: int
    clients: int
    age_s: float


@dataclass(frozen=True, kw_only=True)
class Pong(ServerEvent):
    """The answer to `ping`."""

    TYPE: ClassVar[str] = "pong"
    info: SessionInfo


@dataclass(frozen=True, kw_only=True)
class Error(ServerEvent):
    """A failure (docs/protocol.md lists the codes); fatal: the session ends."""

    TYPE: ClassVar[str] = "error"
    code: str = field(metadata=wire(enum=ERROR_CODES))
    message: str
    fatal: bool
    retry_after_s: float | None = field(default=None, metadata=wire("rate_limited: when to try again"))
    known: list[str] | None = field(default=None, metadata=wire("unknown_type: the command types"))
    reason: str | None = field(default=None, metadata=wire("bad_audio: why the clip could not be decoded"))
    utterance: int | None = field(default=None, metadata=wire("the utterance it concerns"))
    reaction: int | None = field(
        default=None, metadata=wire("engine_failed, reaction_skipped: the reaction that ended")
    )


@dataclass(frozen=True, kw_only=True)
class Closing(ServerEvent):
    """The server is shutting down; the socket closes with 1001 next."""

    TYPE: ClassVar[str] = "closing"
    reason: str


@dataclass(frozen=True, kw_only=True)
class UnknownEvent(ServerEvent):
    """An event this version cannot read (a newer server's type, or a malformed one), kept as received."""

    type: str = field(default="", metadata=wire(part="envelope"))
    payload: Any = field(default=None, metadata=wire(part="envelope"))

    def to_json(self) -> str:
        msg = {"type": self.type, "t": self.t, "seq": self.seq, "payload": self.payload}
        return json.dumps(msg, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


EVENT_TYPES: dict[str, type[ServerEvent]] = {
    c.TYPE: c
    for c in (
        Hello,
        StateChanged,
        TranscriptPartial,
        TranscriptFinal,
        Emotion,
        Latency,
        FramesLate,
        Clip,
        Language,
        Pong,
        Error,
        Closing,
    )
}


def parse_event(text: str | bytes) -> ServerEvent:
    """One text message from the server as its event class; UnknownEvent for a type or shape this version
    does not know. Raises ProtocolError only for a message that is not an event at all."""
    try:
        msg = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str) or not isinstance(msg.get("t"), (int, float)):
        raise ProtocolError("an event is a JSON object with a string 'type' and a number 't'")
    t, seq, payload = float(msg["t"]), int(msg.get("seq", 0)), msg.get("payload")
    cls = EVENT_TYPES.get(msg["type"])
    if cls is not None:
        try:
            return from_wire(cls, payload, t=t, seq=seq)
        except ProtocolError:
            pass
    return UnknownEvent(t=t, seq=seq, type=msg["type"], payload=payload)
