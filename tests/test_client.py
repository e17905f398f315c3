"""avatarcast.client against the real server on loopback (real websockets), every message it sends and
receives checked against docs/protocol.schema.json."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import numpy as np
import pytest

from avatarcast.client import Client, EncodedFrame, Frame, Session, SessionClosed, SessionRefused
from avatarcast.realtime import events as ev
from avatarcast.realtime.audio import decode_audio
from avatarcast.realtime.protocol import FRAME_HEADER, TAG_CLIP, TAG_PCM
from avatarcast.realtime.protocol_schema import CLIENT_COMMAND, SERVER_EVENT

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "protocol.schema.json").read_text())
HAPPY_CLIP = ROOT / "tests" / "data" / "speech" / "en" / "en06_happy.ogg"
T = TypeVar("T")


class Wire:
    """A client's trace: checks each message against the schema as it passes, and counts them by type."""

    def __init__(self) -> None:
        self.checkers = {
            ref: jsonschema.Draft202012Validator({**SCHEMA, "anyOf": [{"$ref": ref}]})
            for ref in (SERVER_EVENT, CLIENT_COMMAND)
        }
        self.seen: dict[str, int] = {}
        self.errors: list[str] = []

    def __call__(self, direction: str, msg: str | bytes) -> None:
        if isinstance(msg, str):
            ref = SERVER_EVENT if direction == "in" else CLIENT_COMMAND
            d = json.loads(msg)
            self.errors += [f"{direction} {msg[:200]}: {e.message}" for e in self.checkers[ref].iter_errors(d)]
            kind = f"{direction}:{d.get('type')}"
        elif direction == "in":
            kind = "in:frame"
            assert len(msg) > FRAME_HEADER.size
        else:
            kind = f"out:{msg[:4].decode()}"
            assert msg[:4] in (TAG_PCM, TAG_CLIP)
        self.seen[kind] = self.seen.get(kind, 0) + 1


def run(coro_fn: Callable[[Client, Wire], Awaitable[T]], url: str, wire: Wire) -> T:
    async def main() -> T:
        async with Client(url, trace=wire) as client:
            return await coro_fn(client, wire)

    out = asyncio.run(main())
    assert wire.errors == [], wire.errors[:5]
    return out


async def take(it: Any, n: int, timeout: float = 15.0) -> list[Any]:
    out: list[Any] = []

    async def go() -> None:
        async for x in it:
            out.append(x)
            if len(out) >= n:
                return

    await asyncio.wait_for(go(), timeout)
    return out


async def frames_until(session: Session, cond: Callable[[Frame], bool], timeout: float = 20.0) -> list[Frame]:
    out: list[Frame] = []

    async def go() -> None:
        async for f in session.frames():
            out.append(f)
            if cond(f):
                return

    await asyncio.wait_for(go(), timeout)
    return out


def test_a_session_streams_rgba_frames_and_typed_events_and_reacts_to_say(server_url: str) -> None:
    async def go(client: Client, wire: Wire) -> dict[str, Any]:
        s = await client.open(avatar="pip")
        idle = await take(s.frames(), 3)
        await s.say("I am so happy right now!")
        emotion = await s.wait_for(ev.Emotion, lambda e: e.applied)
        reaction = await frames_until(s, lambda f: f.source == "cache")
        await s.ping()
        pong = await s.wait_for(ev.Pong)
        await s.language("en")
        lang = await s.wait_for(ev.Language)
        await s.language("klingon")  # valid JSON for the schema; the server knows no such language
        err = await s.wait_for(ev.Error)
        got = [e async for e in take_now(s)]
        return {
            "s": s,
            "idle": idle,
            "emotion": emotion,
            "reaction": reaction,
            "pong": pong,
            "lang": lang,
            "err": err,
            "events": got,
        }

    wire = Wire()
    r = run(go, server_url, wire)
    s = r["s"]
    assert s.hello.avatar == "pip" and s.hello.fps == 8 and s.hello.image_format == "jpeg" and s.id
    for f in r["idle"]:
        assert isinstance(f, Frame) and f.rgba.shape == (360, 640, 4) and f.rgba.dtype == np.uint8
        assert (f.rgba[..., 3] == 255).all() and f.source == "idle"  # JPEG: opaque
    assert [f.index for f in r["idle"]] == sorted({f.index for f in r["idle"]})
    e = r["emotion"]
    assert isinstance(e, ev.Emotion) and e.label == "happy" and e.source == "text" and e.decided_by == "text"
    assert r["reaction"][-1].emotion == "happy"
    assert r["pong"].info.id == s.id and r["pong"].info.avatar == "pip"
    assert r["lang"].language == "en"
    assert r["err"].code == "bad_language" and not r["err"].fatal
    kinds = [type(x) for x in r["events"]]
    assert kinds[0] is ev.Hello and ev.TranscriptFinal in kinds and ev.StateChanged in kinds
    assert not any(isinstance(x, ev.UnknownEvent) for x in r["events"])
    assert {"out:say", "out:ping", "out:language", "in:hello", "in:emotion", "in:pong"} <= set(wire.seen), wire.seen


async def take_now(s: Session) -> Any:
    """The events queued so far, without waiting for more."""
    it = s.events().__aiter__()
    while True:
        try:
            yield await asyncio.wait_for(it.__anext__(), 0.2)
        except (TimeoutError, StopAsyncIteration):
            return


def test_webp_keeps_alpha_and_clips_and_live_audio_are_heard(server_url: str) -> None:
    speech = decode_audio(HAPPY_CLIP.read_bytes())
    pcm = np.concatenate([np.zeros(4000, np.float32), speech, np.zeros(8000, np.float32)])

    async def go(client: Client, wire: Wire) -> dict[str, Any]:
        s = await client.open(avatar="pip", image_format="webp", language="en")
        (first,) = await take(s.frames(), 1)
        await s.send_clip(HAPPY_CLIP)
        clip = await s.wait_for(ev.Clip, timeout=30)
        # listen first: the VAD may end the utterance before audio_end is sent
        final = asyncio.create_task(s.wait_for(ev.TranscriptFinal, lambda e: e.source == "speech", timeout=30))
        await asyncio.sleep(0)
        for i in range(0, pcm.size, 1600):  # 100 ms chunks, faster than real time (under the backlog limit)
            await s.send_pcm(pcm[i : i + 1600])
        await s.audio_end()
        return {"first": first, "clip": clip, "final": await final}

    wire = Wire()
    r = run(go, server_url, wire)
    alpha = r["first"].rgba[..., 3]
    assert r["first"].header.image_format == "webp" and alpha.min() < 20 and alpha.max() > 235
    clip = r["clip"]
    assert "keys" in clip.transcript.lower() and "flat" in clip.transcript.lower(), clip  # the clip's words
    assert clip.language == "en" and clip.audio_s > 1.0 and clip.stages_ms["asr"] > 0
    assert "keys" in r["final"].text.lower() and r["final"].language == "en", r["final"]
    assert wire.seen["out:CLIP"] == 1 and wire.seen["out:PCM1"] >= 10 and wire.seen["out:audio_end"] == 1


def test_refusals_attachments_and_closes(server_url: str) -> None:
    async def go(client: Client, wire: Wire) -> dict[str, Any]:
        with pytest.raises(SessionRefused) as bad_avatar:
            await client.open(avatar="nobody-at-all")
        with pytest.raises(SessionRefused) as no_session:
            await client.open(session_id="no-such-session")
        s = await client.open()
        got: list[Any] = []
        remove = s.add_listener(lambda t, item: got.append(item))
        other = await client.open(session_id=s.id)  # a second client of the same session
        await take(other.encoded_frames(), 2)  # new frames: other's queue starts at its hello
        remove()
        await s.close()
        after = [f async for f in s.encoded_frames()]  # ends, without raising, after a close of our own
        with pytest.raises(SessionClosed):
            await s.say("anyone there?")
        # the attached client's socket ends with the session its owner closed
        await asyncio.wait_for(other.wait_closed(), 10)
        return {
            "bad_avatar": bad_avatar.value,
            "no_session": no_session.value,
            "s": s,
            "other": other,
            "got": got,
            "after": after,
        }

    r = run(go, server_url, Wire())
    assert r["bad_avatar"].close_code == 1008 and "nobody" in r["bad_avatar"].reason
    assert r["no_session"].close_code == 1008
    assert r["other"].hello.session == r["s"].id
    assert any(isinstance(x, EncodedFrame) for x in r["got"])
    assert r["s"].close_code == 1000 and r["other"].closed


def test_pcm_input_is_checked_before_it_is_sent() -> None:
    async def go() -> None:
        s = Session.__new__(Session)  # no socket: these fail before any send
        with pytest.raises(ValueError, match="mono"):
            await s.send_pcm(np.zeros((2, 160), np.int16))
        with pytest.raises(ValueError, match="int16 or float"):
            await s.send_pcm(np.zeros(160, np.int32))
        with pytest.raises(ValueError, match="whole 16-bit"):
            await s.send_pcm(b"\x00\x01\x02")

    asyncio.run(go())
