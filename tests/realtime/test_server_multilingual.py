"""A server on the multilingual Whisper base model: language detected per clip, or forced per session."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest

from tests.conftest import NOT_ABOUT_THE_DRAW, running_server

ESPEAK = shutil.which("espeak-ng")
pytestmark = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")


@pytest.fixture(scope="module")
def base_server():
    with running_server(asr_model="base", avatars="pip", **NOT_ABOUT_THE_DRAW) as (url, hub):
        yield url, hub


def say(tmp_path, text: str, voice: str = "en") -> bytes:
    path = tmp_path / "say.wav"
    subprocess.run([ESPEAK, "-v", voice, "-w", str(path), text], check=True)
    return path.read_bytes()


def test_language_is_detected_when_not_forced(base_server, tmp_path) -> None:
    url, hub = base_server
    assert hub.services.transcriber.multilingual
    with httpx.Client(base_url=url, timeout=60) as c:
        s = c.post("/v1/sessions", json={}).json()
        assert s["language"] is None  # auto
        r = c.post(f"/v1/sessions/{s['id']}/clips", content=say(tmp_path, "I am so happy right now!"))
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["language"] == "en" and "happy" in out["transcript"].lower() and out["emotion"] == "happy"
        c.delete(f"/v1/sessions/{s['id']}")


def test_a_session_can_force_chinese(base_server, tmp_path) -> None:
    url, _ = base_server
    with httpx.Client(base_url=url, timeout=60) as c:
        s = c.post("/v1/sessions", json={"language": "zh"}).json()
        assert s["language"] == "zh"
        r = c.post(f"/v1/sessions/{s['id']}/clips", content=say(tmp_path, "我现在超开心", "cmn"))
        assert r.status_code == 200, r.text
        out = r.json()
        # espeak-ng's Mandarin is poor, so the words may be off; the language was forced, not detected
        assert out["language"] == "zh" and out["audio_s"] > 0.5
        assert any("\u4e00" <= ch <= "\u9fff" for ch in out["transcript"]), out
        say_r = c.post(f"/v1/sessions/{s['id']}/say", json={"text": "我现在超开心！"})
        assert say_r.status_code == 202
        c.delete(f"/v1/sessions/{s['id']}")
