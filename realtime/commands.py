"""The JSON commands a client sends (WebSocket text messages, WebRTC data channel messages), shared by
both transports: parsed by pure code, then applied to the session's runner.

{"type": "say", "text"} | {"type": "emotion", "label", "intensity"} | {"type": "language", "language"} |
{"type": "audio_end"} | {"type": "ping"}.
A bad command answers with an `error` event; the connection stays open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from avatarcast.engines.errors import AvatarcastError, ErrorCode
from avatarcast.realtime.json_limits import JsonLimitError, JsonLimits
from avatarcast.realtime.messages import SessionEvent
from avatarcast.realtime.session import REACTION_EMOTIONS
from avatarcast.realtime.wire_fields import to_wire, wire

MAX_SAY_CHARS = 2000  # a `say` text (a command, POST /v1/sessions/{id}/say) or a clip's text (POST /v1/clips)
TEXT_PATTERN = r"\S"  # such a text says something: not only whitespace
DEFAULT_INTENSITY = 0.8  # an emotion command without one
DEFAULT_LIMITS = JsonLimits()  # the data channel's; a WebSocket passes the server's own


@dataclass(frozen=True)
class Say:
    """Assistant text: the avatar reacts to its emotion."""

    TYPE: ClassVar[str] = "say"
    text: str = field(metadata=wire(minLength=1, maxLength=MAX_SAY_CHARS, pattern=TEXT_PATTERN))


@dataclass(frozen=True)
class SetEmotion:
    """An explicit emotion; it overrides the ones read from speech and text."""

    TYPE: ClassVar[str] = "emotion"
    label: str = field(metadata=wire(enum=list(REACTION_EMOTIONS)))
    intensity: float = field(default=DEFAULT_INTENSITY, metadata=wire(minimum=0, maximum=1))


@dataclass(frozen=True)
class SetLanguage:
    """The ASR language of the next utterances: auto, or a Whisper code (en, zh, ...)."""

    TYPE: ClassVar[str] = "language"
    language: str


@dataclass(frozen=True)
class AudioEnd:
    """The live audio paused (push-to-talk released): close the open utterance now."""

    TYPE: ClassVar[str] = "audio_end"


@dataclass(frozen=True)
class Ping:
    """Answered with a `pong` event carrying the session's info."""

    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Refused:
    """A message that is not a valid command: the error event to answer with."""

    code: ErrorCode
    message: str
    extra: tuple[tuple[str, Any], ...] = ()

    def event(self) -> str:
        return error_event(self.code, self.message, **dict(self.extra))


Command = Say | SetEmotion | SetLanguage | AudioEnd | Ping
COMMANDS: tuple[type[Command], ...] = (Say, SetEmotion, SetLanguage, AudioEnd, Ping)
KNOWN = [c.TYPE for c in COMMANDS]


def command_json(cmd: Command) -> str:
    """A command as a client sends it."""
    return json.dumps({"type": cmd.TYPE, **to_wire(cmd)}, ensure_ascii=False, separators=(",", ":"))


def event(type_: str, payload: dict) -> str:
    """A transport-level event in the same JSON form as the session's own (SessionEvent)."""
    return SessionEvent(type_, payload, time.monotonic()).to_json()


def error_event(code: ErrorCode, message: str, **extra: Any) -> str:
    """A non-fatal `error` event."""
    return event("error", {"code": str(code), "message": message, "fatal": False, **extra})


def parse_command(text: str, limits: JsonLimits = DEFAULT_LIMITS) -> Command | Refused:
    """One text message -> the command it asks for, or why it is refused (too large or deep: `limits`)."""
    try:
        msg = limits.loads(text)
    except JsonLimitError as exc:
        return Refused(exc.code, exc.message)
    except ValueError as exc:
        return Refused(ErrorCode.BAD_JSON, f"not JSON: {exc}")
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return Refused(ErrorCode.BAD_MESSAGE, "a command is a JSON object with a string 'type'")
    kind = msg["type"]
    if kind == Say.TYPE:
        t = msg.get("text")
        if not isinstance(t, str) or not t.strip() or len(t) > MAX_SAY_CHARS:
            return Refused(ErrorCode.BAD_SAY, f"say needs 'text': 1..{MAX_SAY_CHARS} characters")
        return Say(t)
    if kind == SetEmotion.TYPE:
        label, intensity = msg.get("label"), msg.get("intensity", DEFAULT_INTENSITY)
        if not isinstance(label, str) or isinstance(intensity, bool) or not isinstance(intensity, (int, float)):
            return Refused(ErrorCode.BAD_EMOTION, "emotion needs 'label' (string) and 'intensity' (0..1)")
        return SetEmotion(label, float(intensity))
    if kind == SetLanguage.TYPE:
        lang = msg.get("language")
        if not isinstance(lang, str):
            return Refused(ErrorCode.BAD_LANGUAGE, "language needs 'language': auto, en, zh, ...")
        return SetLanguage(lang)
    if kind == AudioEnd.TYPE:
        return AudioEnd()
    if kind == Ping.TYPE:
        return Ping()
    return Refused(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}", (("known", list(KNOWN)),))


class Commandable(Protocol):
    """What a command acts on: a session's runner (realtime/runner.py)."""

    def say(self, text: str) -> int | None: ...

    def set_emotion(self, label: str, intensity: float) -> None: ...

    def set_language(self, language: str) -> str | None: ...

    async def audio_end(self) -> None: ...

    def info(self) -> dict: ...


class EventSink(Protocol):
    def offer_event(self, event_json: str) -> None: ...


async def handle_command(
    text: str,
    runner: Commandable,
    sink: EventSink,
    spawn: Callable[[Coroutine[Any, Any, None]], Any],
    limits: JsonLimits = DEFAULT_LIMITS,
) -> None:
    """Apply one text message to the session; answers (pong, errors) go to `sink`, the connection's own.
    A refusal by the runner (an unknown language, a session over its input bounds) is an error event."""
    cmd = parse_command(text, limits)
    if isinstance(cmd, Refused):
        sink.offer_event(cmd.event())
        return
    try:
        if isinstance(cmd, Say):
            runner.say(cmd.text)
        elif isinstance(cmd, SetEmotion):
            runner.set_emotion(cmd.label, cmd.intensity)
        elif isinstance(cmd, SetLanguage):
            runner.set_language(cmd.language)
        elif isinstance(cmd, AudioEnd):
            spawn(runner.audio_end())
        else:
            sink.offer_event(event("pong", {"info": runner.info()}))
    except AvatarcastError as exc:
        sink.offer_event(error_event(exc.code, exc.message))
