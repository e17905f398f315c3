"""Issue 19: how fast one session may ask for the shared Whisper model and emotion reader (rate_say_per_s,
rate_clip_audio_s_per_s; realtime/runner.py), on a real server: the pending bounds cap what waits at once, these
cap what a flood costs over time. Rates are set low here so that the refusals do not depend on timing."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from avatarcast.realtime.protocol import TAG_CLIP, TAG_PCM
from tests.conftest import NOT_ABOUT_THE_DRAW, running_server

CLIP = (Path(__file__).resolve().parents[1] / "data" / "speech" / "en" / "en06_happy.ogg").read_bytes()  # 2.3 s


@pytest.fixture(scope="module")
def server() -> Any:
    with running_server(
        admission=0,
        ladder=0,
        precompute=0,
        asr_model="tiny.en",
        max_pending_per_session=2,  # the say budget's burst
        rate_say_per_s=0.1,  # a token every 10 s
        max_clip_seconds=3.0,  # the audio budget's burst: one 2.3 s clip
        rate_clip_audio_s_per_s=0.05,
        max_audio_backlog_s=1.0,  # the live budget's burst: 1 s of audio
        rate_live_audio_s_per_s=0.05,
        **NOT_ABOUT_THE_DRAW,
    ) as pair:
        yield pair


def settled(hub: Any, sid: str) -> None:
    """Wait until the session's texts were read (so what refuses the next is the rate, not the pending bound)."""
    deadline = time.monotonic() + 60
    while hub.sessions[sid]._reads:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_say_texts_over_the_sessions_rate_are_429_with_retry_after(server: Any) -> None:
    base, hub = server
    sid = httpx.post(base + "/v1/sessions", json={}).json()["id"]
    say = f"{base}/v1/sessions/{sid}/say"
    for i in range(2):  # the burst
        assert httpx.post(say, json={"text": f"good news number {i}"}).status_code == 202
        settled(hub, sid)
    r = httpx.post(say, json={"text": "and more good news"})
    assert r.status_code == 429 and r.json()["error"] == "rate_limited" and "texts/s" in r.json()["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 10
    other = httpx.post(base + "/v1/sessions", json={}).json()["id"]  # a budget per session
    assert httpx.post(f"{base}/v1/sessions/{other}/say", json={"text": "hello"}).status_code == 202
    for s in (sid, other):
        httpx.delete(f"{base}/v1/sessions/{s}")


def test_clip_audio_over_the_sessions_rate_is_refused_over_http_and_on_a_socket(server: Any) -> None:
    base, hub = server
    sid = httpx.post(base + "/v1/sessions", json={}).json()["id"]
    clips = f"{base}/v1/sessions/{sid}/clips"
    first = httpx.post(clips, content=CLIP, timeout=60)
    assert first.status_code == 200 and first.json()["audio_s"] > 2
    r = httpx.post(clips, content=CLIP, timeout=60)
    assert r.status_code == 429 and r.json()["error"] == "rate_limited" and "s of audio" in r.json()["message"]
    assert int(r.headers["retry-after"]) >= 20  # (2.3 - 0.7) s of audio at 0.05 s a second
    httpx.delete(f"{base}/v1/sessions/{sid}")

    async def on_socket() -> list[dict]:
        async with websockets.connect(base.replace("http://", "ws://") + "/v1/ws", max_queue=None) as ws:
            got: list[dict] = []

            async def until(kinds: tuple[str, ...]) -> None:
                start = len(got)
                while not any(e["type"] in kinds for e in got[start:]):
                    m = await asyncio.wait_for(ws.recv(), 60)
                    if isinstance(m, str):
                        got.append(json.loads(m))

            for _ in range(2):
                await ws.send(TAG_CLIP + CLIP)
                await until(("clip", "error"))
            await ws.send(json.dumps({"type": "ping"}))  # refused input leaves the socket open
            await until(("pong",))
            return got

    got = asyncio.run(on_socket())
    kinds = [e["type"] if e["type"] != "error" else e["payload"]["code"] for e in got if e["type"] in ("clip", "error")]
    assert kinds == ["clip", "rate_limited"], kinds


def test_live_audio_faster_than_its_rate_is_dropped_with_an_error_and_the_socket_stays(server: Any) -> None:
    """Live PCM pushed faster than speech: the burst (1 s here) is taken, every chunk over the rate is dropped with
    an audio_too_fast error event, and the socket goes on (a ping is answered)."""
    base, _ = server
    chunk = bytes(3200)  # 100 ms of 16 kHz int16 silence

    async def push() -> list[str]:
        async with websockets.connect(base.replace("http://", "ws://") + "/v1/ws", max_queue=None) as ws:
            codes: list[str] = []
            for _ in range(15):  # 1.5 s of audio at once: 10 chunks fit the burst, 5 do not
                await ws.send(TAG_PCM + chunk)
            await ws.send(json.dumps({"type": "ping"}))
            while True:
                m = await asyncio.wait_for(ws.recv(), 60)
                if isinstance(m, str):
                    e = json.loads(m)
                    if e["type"] == "error":
                        codes.append(e["payload"]["code"])
                    if e["type"] == "pong":
                        return codes

    codes = asyncio.run(push())
    assert codes == ["audio_too_fast"] * 5, codes
