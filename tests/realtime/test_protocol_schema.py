"""docs/protocol.schema.json: current with the message dataclasses, and true of what the server's pure core
sends and what parse_command accepts (the real server's messages are checked in tests/test_client.py)."""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from avatarcast.engines.errors import ErrorCode
from avatarcast.realtime import protocol_schema
from avatarcast.realtime.commands import (
    AudioEnd,
    Ping,
    Refused,
    Say,
    SetEmotion,
    SetLanguage,
    command_json,
    error_event,
    handle_command,
    parse_command,
)
from avatarcast.realtime.emotion import EmotionCue
from avatarcast.realtime.events import EVENT_TYPES, UnknownEvent, parse_event
from avatarcast.realtime.messages import VideoFrame
from avatarcast.realtime.session import Session, SessionConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.schema.json"


@cache
def validator(ref: str) -> jsonschema.protocols.Validator:
    doc = json.loads(DOC.read_text())
    return jsonschema.Draft202012Validator({**doc, "anyOf": [{"$ref": ref}]})


def check_event(text: str) -> None:
    """Valid against the schema, and read back into its own class with nothing left over."""
    validator(protocol_schema.SERVER_EVENT).validate(json.loads(text))
    ev = parse_event(text)
    assert not isinstance(ev, UnknownEvent) and ev.extra == {}, text
    assert without_nulls(json.loads(ev.to_json())) == without_nulls(json.loads(text))


def without_nulls(msg: dict[str, Any]) -> dict[str, Any]:
    """An event with its payload's null keys dropped: an optional field may be sent as null or left out."""
    return {**msg, "payload": {k: v for k, v in msg["payload"].items() if v is not None}}


def test_the_committed_document_is_current() -> None:
    hint = "run: python -m avatarcast.realtime.protocol_schema --write docs/protocol.schema.json"
    assert DOC.read_text() == protocol_schema.render(), hint
    jsonschema.Draft202012Validator.check_schema(json.loads(DOC.read_text()))
    assert protocol_schema.main(["--check", str(DOC)]) == 0


def test_every_event_the_session_emits_fits_the_schema() -> None:
    """The sans-I/O session under random inputs (as in test_session.py's fuzz): each event's JSON validates."""
    seen: set[str] = set()
    for seed in range(12):
        rng = random.Random(seed)
        s = Session(1000.0, SessionConfig())
        k = 0
        for _ in range(300):
            now = s.clock.time_of(k) + 0.01
            op = rng.randrange(10)
            label = rng.choice(["happy", "sad", "idle", "angry", "nope"])
            if op == 0:
                s.on_speech_start(now)
            elif op == 1:
                s.on_partial("so happy", now, language=rng.choice([None, "en"]))
            elif op == 2:
                s.on_speech_end(now)
            elif op == 3:
                s.on_final("so happy", now, language="zh")
            elif op == 4:
                s.on_cue(EmotionCue(label, 0.7, rng.random(), {label: 0.5}), now, rng.choice(["asr", "text", "x"]))
            elif op == 5:
                s.on_clip_received(now)
            elif op == 6:
                s.on_say("hello", now)
            elif op == 7:
                s.on_emotion(label, rng.uniform(-1, 2), now)
            elif op == 8 and rng.random() < 0.05:
                s.on_close(now)
            for _ in range(rng.randrange(0, 4) if rng.random() > 0.02 else 12):
                k += 1 if rng.random() > 0.02 else 5  # now and then a late loop: frames_late
                t = s.clock.time_of(k)
                for req in s.plan(t):
                    s.on_frame_sent(VideoFrame.from_request(req, t, stamps={"encode": (t, t + 0.003)}), t + 0.004)
            for e in s.events():
                check_event(e.to_json())
                seen.add(e.type)
    assert seen == {
        "state_changed",
        "transcript_partial",
        "transcript_final",
        "emotion",
        "latency",
        "error",
        "frames_late",
    }


def test_transport_errors_fit_the_schema() -> None:
    check_event(error_event(ErrorCode.RATE_LIMITED, "slow down", retry_after_s=0.5))
    check_event(error_event(ErrorCode.BAD_AUDIO, "no", reason="corrupt", utterance=3))
    refused = parse_command('{"type": "dance"}')
    assert isinstance(refused, Refused)
    check_event(refused.event())
    with pytest.raises(jsonschema.ValidationError):  # a field the schema does not declare
        validator(protocol_schema.SERVER_EVENT).validate(json.loads(error_event(ErrorCode.BAD_JSON, "x", undeclared=1)))


GOOD = [Say("I am so happy"), SetEmotion("sad", 0.3), SetLanguage("zh"), AudioEnd(), Ping()]
BAD: list[dict[str, Any]] = [
    {"type": "say", "text": "   "},
    {"type": "say", "text": "x" * 2001},
    {"type": "emotion", "label": 3},
    {"type": "emotion", "label": "happy", "intensity": True},
    {"type": "language"},
    {"type": "dance"},
]


@pytest.mark.parametrize("cmd", GOOD, ids=lambda c: type(c).__name__)
def test_commands_fit_the_schema_and_parse_back(cmd: Any) -> None:
    text = command_json(cmd)
    validator(protocol_schema.CLIENT_COMMAND).validate(json.loads(text))
    assert parse_command(text) == cmd


@pytest.mark.parametrize("msg", BAD, ids=lambda m: json.dumps(m)[:40])
def test_what_the_server_refuses_the_schema_refuses(msg: dict[str, Any]) -> None:
    assert isinstance(parse_command(json.dumps(msg)), Refused)
    with pytest.raises(jsonschema.ValidationError):
        validator(protocol_schema.CLIENT_COMMAND).validate(msg)


def test_an_event_this_version_does_not_know_is_kept_as_received() -> None:
    ev = parse_event('{"type": "dance", "t": 1.5, "seq": 2, "payload": {"step": 1}}')
    assert isinstance(ev, UnknownEvent) and (ev.type, ev.payload, ev.seq) == ("dance", {"step": 1}, 2)
    newer = parse_event('{"type": "closing", "t": 1, "seq": 0, "payload": {"reason": "bye", "eta_s": 3}}')
    assert type(newer) is EVENT_TYPES["closing"] and newer.extra == {"eta_s": 3}


def test_a_runners_own_events_fit_the_schema(inproc: tuple[Any, Any]) -> None:
    """hello, language, pong and closing come from the runner and the command handler, not the session."""
    from tests.realtime.test_runner import RecordingSink

    client, hub = inproc
    runner = client.portal.call(lambda: hub.create_session("pip"))
    sink = RecordingSink()
    try:
        client.portal.call(runner.attach, sink)
        client.portal.call(runner.set_language, "zh")
        client.portal.call(handle_command, command_json(Ping()), runner, sink, lambda coro: coro.close())
        client.portal.call(runner.notify_closing, "the test is over")
    finally:
        client.portal.call(hub.close_session, runner.id)
    for e in sink.events:
        check_event(json.dumps(e))
    assert {"hello", "language", "pong", "closing"} <= {e["type"] for e in sink.events}
