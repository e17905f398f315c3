"""English and Mandarin with the default settings, on the committed neural-voice clips (tests/data/speech):
real faster-whisper base, language found per utterance, in clip mode, live, and through the real server."""

from __future__ import annotations

import asyncio
import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from avatarcast.realtime.audio import decode_audio
from avatarcast.realtime.settings import Settings
from tools.eval_speech import error_rate, to_simplified

SPEECH = Path(__file__).resolve().parents[1] / "data" / "speech"
# every 5th committed clip of each language; bounds are about twice the error the whole set measured
# (docs/speech.md: WER 0.05, CER 0.13)
WER_MAX, CER_MAX = 0.12, 0.25


def _rows(lang: str) -> list[dict]:
    with open(SPEECH / lang / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def whisper():
    from avatarcast.realtime.asr import Transcriber

    s = Settings()
    return Transcriber.load(s.asr_model, languages=s.language_list(s.asr_languages))


def test_committed_clips_match_their_manifest() -> None:
    import hashlib

    for lang in ("en", "zh"):
        rows = _rows(lang)
        assert len(rows) >= 40
        for r in rows:
            data = (SPEECH / lang / r["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == r["sha256"], r["file"]
            assert r["language"] == lang and 2.0 <= float(r["duration_s"]) <= 4.0


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_language_found_and_words_right(whisper, lang: str) -> None:
    rows = _rows(lang)[::5]
    errors, detected = [], []
    for r in rows:
        tr = whisper.transcribe(decode_audio(SPEECH / lang / r["file"]))  # no language given: detected
        detected.append((r["file"], tr.language, round(tr.language_probability, 2)))
        errors.append(error_rate(r["text"], tr.text, lang))
    assert all(d[1] == lang for d in detected), detected
    assert float(np.mean(errors)) <= (CER_MAX if lang == "zh" else WER_MAX), list(zip(detected, errors))


def test_mandarin_transcript_content(whisper) -> None:
    r = next(r for r in _rows("zh") if r["file"].startswith("zh06_"))  # 我们终于拿到新房子的钥匙了！
    tr = whisper.transcribe(decode_audio(SPEECH / "zh" / r["file"]))
    text = to_simplified(tr.text)
    assert tr.language == "zh" and "钥匙" in text and "房子" in text, tr.text
    assert error_rate(r["text"], tr.text, "zh") <= 0.3


def test_one_encoder_pass_for_short_audio(whisper) -> None:
    """Short audio never takes the 30 s window: language and text come from the fitted one."""
    pcm = decode_audio(SPEECH / "zh" / "zh21_sad.ogg")
    calls = []
    whisper.model.model = _Spy(whisper.model.model, calls)
    try:
        tr = whisper.transcribe(pcm)
    finally:
        whisper.model.model = whisper.model.model.inner
    assert tr.language == "zh" and tr.text
    assert [c[0] for c in calls] == ["encode", "detect_language", "generate"], calls
    frames = calls[0][1]
    assert frames <= pcm.size / 160 + 102, f"encoded {frames} frames for {pcm.size / 16000:.2f} s of audio"


class _Spy:
    """Records which CTranslate2 calls a transcription makes (and the encoder's input length)."""

    def __init__(self, inner, calls: list) -> None:
        self.inner, self.calls = inner, calls

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if name not in ("encode", "detect_language", "generate"):
            return attr

        def call(*args, **kwargs):
            self.calls.append((name, args[0].shape[-1] if name == "encode" else None))
            return attr(*args, **kwargs)

        return call


def test_live_mandarin_partials_and_final(whisper) -> None:
    from avatarcast.realtime.live import LiveAudio

    r = max(_rows("zh"), key=lambda r: float(r["duration_s"]))
    pcm = decode_audio(SPEECH / "zh" / r["file"])
    pcm = np.concatenate([np.zeros(8000, np.float32), pcm, np.zeros(16000, np.float32)])
    events = []
    live = LiveAudio(whisper, ThreadPoolExecutor(1), ThreadPoolExecutor(1), events.append)  # language: auto

    asyncio.run(_feed_like_a_microphone(live, pcm))
    partials = [e for e in events if e.kind == "partial"]
    finals = [e for e in events if e.kind == "final"]
    assert partials and all(p.language == "zh" for p in partials), [(p.text, p.language) for p in partials]
    assert len(finals) == 1 and finals[0].language == "zh", finals
    assert error_rate(r["text"], finals[0].text, "zh") <= 0.4, (r["text"], finals[0].text)
    assert live.language is None  # still auto: the next utterance finds its own language


async def _feed_like_a_microphone(live, pcm: np.ndarray) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(0, len(pcm), 640):  # 40 ms chunks, paced like a microphone
        await live.feed((pcm[i : i + 640] * 32767).astype(np.int16))
        await asyncio.sleep(max(0.0, t0 + (i + 640) / 16000 - loop.time()))
    await asyncio.gather(*live._tasks, return_exceptions=True)


def test_live_runs_after_a_sure_partial_skip_language_detection(whisper) -> None:
    """A partial of >= 1.2 s that names its utterance's language surely gives that language to the utterance's
    later runs (partials, the pause's speculation, the final): they skip the detection step. The next utterance,
    in another language, finds its own."""
    from avatarcast.realtime.live import PIN_LANGUAGE_P, PIN_LANGUAGE_S, LiveAudio

    calls: list[dict] = []

    class Recording:
        """The real model; each run's audio length, urgency, the language it was given and what it found."""

        def transcribe(self, pcm: np.ndarray, **kwargs):
            call = {"audio_s": pcm.size / 16000, "urgent": kwargs["urgent"], "given": kwargs["language"]}
            calls.append(call)
            tr = whisper.transcribe(pcm, **kwargs)  # a run that gives way raises here and records no result
            call["found"], call["p"] = tr.language, tr.language_probability
            return tr

    clips = [max(_rows(lang), key=lambda r: float(r["duration_s"])) for lang in ("en", "zh")]
    silence = np.zeros(16000, np.float32)
    pcm = np.concatenate(
        [silence, *(x for r in clips for x in (decode_audio(SPEECH / r["language"] / r["file"]), silence))]
    )
    events = []
    live = LiveAudio(Recording(), ThreadPoolExecutor(1), ThreadPoolExecutor(1), events.append)  # language: auto
    asyncio.run(_feed_like_a_microphone(live, pcm))

    assert [(e.language, e.reused) for e in events if e.kind == "final"] == [("en", True), ("zh", True)], events
    utterances: list[list[dict]] = [[]]
    for c in (c for c in calls if "found" in c):
        if utterances[-1] and c["audio_s"] < utterances[-1][-1]["audio_s"] - 1.0:  # the next utterance's first
            utterances.append([])
        utterances[-1].append(c)
    assert len(utterances) == 2, calls
    for lang, runs in zip(("en", "zh"), utterances, strict=True):
        assert runs[0]["given"] is None, runs  # found from the audio, not carried over from the last utterance
        sure = next(
            i
            for i, c in enumerate(runs)
            if c["given"] is None and c["audio_s"] >= PIN_LANGUAGE_S and c["p"] >= PIN_LANGUAGE_P
        )
        later = runs[sure + 1 :]
        assert runs[sure]["found"] == lang and later and all(c["given"] == lang for c in later), runs
        assert later[-1]["urgent"], runs  # the speculation the final reused ran without detection


# -- the default server, through a real socket on loopback --


def test_default_server_reacts_to_mandarin_and_english_clips(server_url: str, server_hub) -> None:
    from websockets.sync.client import connect

    from avatarcast.realtime.protocol import TAG_CLIP

    assert server_hub.settings.asr_model == Settings().asr_model and server_hub.services.transcriber.multilingual
    ws_url = server_url.replace("http://", "ws://") + "/v1/ws?avatar=pip"
    for lang, name in (("zh", "zh06_happy.ogg"), ("en", "en11_excited.ogg")):
        with connect(ws_url, max_size=None, open_timeout=30) as ws:
            ws.send(TAG_CLIP + (SPEECH / lang / name).read_bytes())
            clip, final, emotion, latency = _until(
                ws,
                lambda ev: ev["type"] == "clip",
                lambda ev: ev["type"] == "transcript_final" and ev["payload"].get("source") == "clip",
                lambda ev: ev["type"] == "emotion",
                lambda ev: ev["type"] == "latency",
            )
            assert clip["payload"]["language"] == lang and final["payload"]["language"] == lang, (clip, final)
            assert error_rate(_text(name), clip["payload"]["transcript"], lang) <= 0.3, clip
            # the emotion was decided from this transcript, and the reaction's latency reported
            assert emotion["payload"]["label"] == clip["payload"]["emotion"], (emotion, clip)
            assert latency["payload"]["utterance"] == clip["payload"]["utterance"]
            assert latency["payload"]["tter_ms"] is not None


def test_session_language_field_and_command(server_url: str) -> None:
    import httpx
    from websockets.sync.client import connect

    from avatarcast.realtime.protocol import TAG_CLIP

    with httpx.Client(base_url=server_url, timeout=60) as c:
        s = c.post("/v1/sessions", json={"language": "zh"}).json()
        assert s["language"] == "zh"
        c.delete(f"/v1/sessions/{s['id']}")
    ws_url = server_url.replace("http://", "ws://") + "/v1/ws?avatar=pip&language=en"
    with connect(ws_url, max_size=None, open_timeout=30) as ws:
        (hello,) = _until(ws, lambda ev: ev["type"] == "hello")
        assert hello["payload"]["language"] == "en"
        # forced English: Mandarin speech is written as English words, never as Han characters
        ws.send(TAG_CLIP + (SPEECH / "zh" / "zh11_excited.ogg").read_bytes())
        (clip,) = _until(ws, lambda ev: ev["type"] == "clip")
        assert clip["payload"]["language"] == "en"
        assert not any("\u4e00" <= ch <= "\u9fff" for ch in clip["payload"]["transcript"]), clip
        ws.send(json.dumps({"type": "language", "language": "klingon"}))
        (err,) = _until(ws, lambda ev: ev["type"] == "error")
        assert err["payload"]["code"] == "bad_language"
        ws.send(json.dumps({"type": "language", "language": "auto"}))
        (ev,) = _until(ws, lambda ev: ev["type"] == "language")
        assert ev["payload"]["language"] is None
        ws.send(TAG_CLIP + (SPEECH / "zh" / "zh11_excited.ogg").read_bytes())
        (clip,) = _until(ws, lambda ev: ev["type"] == "clip")
        heard = clip["payload"]["transcript"]
        assert clip["payload"]["language"] == "zh" and any("\u4e00" <= ch <= "\u9fff" for ch in heard), clip


def _text(name: str) -> str:
    lang = name[:2]
    return next(r["text"] for r in _rows(lang) if r["file"] == name)


def _until(ws, *wanted, timeout: float = 60.0) -> list[dict]:
    """The first JSON event matching each predicate (frames and other events skipped), in any order."""
    import time

    found: list[dict | None] = [None] * len(wanted)
    deadline = time.monotonic() + timeout
    while any(f is None for f in found):
        msg = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(msg, bytes):
            continue
        ev = json.loads(msg)
        for i, pred in enumerate(wanted):
            if found[i] is None and pred(ev):
                found[i] = ev
    return found  # type: ignore[return-value]
