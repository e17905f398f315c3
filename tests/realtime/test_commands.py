"""Client commands (realtime/commands.py), shared by the WebSocket and the WebRTC data channel: plain calls."""

from __future__ import annotations

import json

from avatarcast.engines.errors import ErrorCode
from avatarcast.realtime.commands import AudioEnd, Ping, Refused, Say, SetEmotion, error_event, parse_command


def test_commands_parse() -> None:
    assert parse_command('{"type": "say", "text": "hello there"}') == Say("hello there")
    assert parse_command('{"type": "emotion", "label": "happy"}') == SetEmotion("happy", 0.8)
    assert parse_command('{"type": "emotion", "label": "sad", "intensity": 1}') == SetEmotion("sad", 1.0)
    assert parse_command('{"type": "audio_end"}') == AudioEnd()
    assert parse_command('{"type": "ping", "extra": 1}') == Ping()


def test_bad_commands_are_refused_with_their_code() -> None:
    cases = {
        "not json": ErrorCode.BAD_JSON,
        "[1, 2]": ErrorCode.BAD_MESSAGE,
        '{"type": 3}': ErrorCode.BAD_MESSAGE,
        '{"type": "say", "text": "   "}': ErrorCode.BAD_SAY,
        '{"type": "say", "text": "' + "x" * 2001 + '"}': ErrorCode.BAD_SAY,
        '{"type": "emotion", "label": "happy", "intensity": true}': ErrorCode.BAD_EMOTION,
        '{"type": "emotion", "label": 7}': ErrorCode.BAD_EMOTION,
        '{"type": "dance"}': ErrorCode.UNKNOWN_TYPE,
    }
    for text, code in cases.items():
        got = parse_command(text)
        assert isinstance(got, Refused) and got.code == code, (text, got)


def test_a_refusal_is_a_non_fatal_error_event() -> None:
    ev = json.loads(parse_command('{"type": "dance"}').event())  # type: ignore[union-attr]
    assert ev["type"] == "error" and ev["payload"] == {
        "code": "unknown_type",
        "message": "unknown message type 'dance'",
        "fatal": False,
        "known": ["say", "emotion", "language", "audio_end", "ping"],
    }
    assert json.loads(error_event(ErrorCode.BAD_PCM, "odd"))["payload"]["code"] == "bad_pcm"
