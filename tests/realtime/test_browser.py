"""The demo page in a real headless Chromium against the real server: WebRTC video, commands, microphone.

Chromium's fake microphone plays a WAV made with espeak-ng ("I am so happy right now!" between
1.5 s and 3 s of silence), looping. No mocks: the page, the server, WebRTC (aiortc), VAD, ASR
and the emotion reader are all real.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

CHROMIUM = os.environ.get("AVATARCAST_CHROMIUM", "/usr/bin/chromium")
BG = np.array([245, 240, 230])
SENTENCE = "I am so happy right now!"
LEAD_S, TAIL_S = 1.5, 3.0

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="needs espeak-ng and sox"
    ),
    pytest.mark.slow,
]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture(scope="module")
def base(server_url: str) -> str:
    return server_url  # the one real server of the test run (tests/conftest.py)


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mic")
    speech, out = d / "speech.wav", d / "mic.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), SENTENCE], check=True)
    subprocess.run(
        ["sox", str(speech), "-r", "48000", "-c", "1", "-b", "16", str(out), "pad", str(LEAD_S), str(TAIL_S)],
        check=True,
    )
    return out


@pytest.fixture(scope="module")
def browser(mic_wav: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={mic_wav}"]
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def page(browser, base: str):
    pg = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(base + "/")
    yield pg
    pg.close()
    assert not errors, f"uncaught errors on the page: {errors}"


def text(pg, selector: str) -> str:
    return (pg.text_content(selector) or "").strip()


def wait_for(pg, js: str, timeout_s: float, what: str, arg=None) -> None:
    try:
        pg.wait_for_function(js, arg=arg, timeout=timeout_s * 1000, polling=100)
    except Exception as exc:
        log = pg.inner_text("#log")
        err = pg.inner_text("#error") if pg.is_visible("#error") else ""
        raise AssertionError(
            f"{what} not within {timeout_s} s ({type(exc).__name__}); error banner: {err!r}; "
            f"state {text(pg, '#state')!r}, transcript {text(pg, '#transcript')!r}, "
            f"emotion {text(pg, '#emotion')!r}; events:\n{log}"
        ) from None


def test_demo_page(page, base: str, tmp_path: Path) -> None:
    from PIL import Image

    pg = page
    t_start = time.monotonic()

    # -- the stream plays: 640x360, time advancing --
    wait_for(
        pg,
        "() => { const v = document.getElementById('video');"
        " return v.videoWidth === 640 && v.videoHeight === 360 && v.currentTime > 0.5; }",
        30,
        "the avatar video playing",
    )
    t0 = pg.evaluate("() => document.getElementById('video').currentTime")
    time.sleep(1.0)
    t1 = pg.evaluate("() => document.getElementById('video').currentTime")
    assert t1 - t0 > 0.5, f"video time does not advance ({t0} -> {t1})"
    assert text(pg, "#conn") == "live"
    assert not pg.is_visible("#error"), pg.inner_text("#error")
    session = text(pg, "#session-id")
    assert re.fullmatch(r"[\w-]{6,}", session), session
    avatars = pg.eval_on_selector_all("#avatar option", "os => os.map(o => o.value)")
    assert "pip" in avatars and len(avatars) >= 6

    # -- the avatar is in the picture: not uniform, not black, mostly background --
    shot = tmp_path / "video.png"
    pg.locator("#video").screenshot(path=str(shot))
    pg.screenshot(path=str(tmp_path / "page.png"))
    img = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")).astype(int)
    off_bg = np.abs(img - BG).sum(axis=2) > 60
    black = img.sum(axis=2) < 60
    assert img.std() > 10, f"uniform picture (std {img.std():.1f})"
    assert 0.03 < off_bg.mean() < 0.9, f"{off_bg.mean():.1%} of pixels differ from the background"
    assert black.mean() < 0.2, f"{black.mean():.1%} of pixels are black"

    # -- an emotion button: the readout shows it, and the TTER of that turn --
    buttons = pg.eval_on_selector_all("#emotion-buttons button", "bs => bs.map(b => b.dataset.emotion)")
    assert "happy" in buttons and "listening" not in buttons, buttons
    pg.click("#emotion-buttons button[data-emotion=happy]")
    wait_for(
        pg,
        "() => document.getElementById('emotion').textContent.trim() === 'happy'"
        " && /^\\d+$/.test(document.getElementById('tter').textContent.trim())",
        15,
        "emotion 'happy' and a TTER number",
    )
    assert text(pg, "#emotion") == "happy"
    tter = int(text(pg, "#tter"))
    assert 0 <= tter < 10_000
    assert re.fullmatch(r"\d+", text(pg, "#ttff"))
    assert pg.locator("#latency-history tr").count() >= 1

    # -- say: the text comes back as the transcript --
    line = "Thank you, this is wonderful news."
    pg.fill("#say-text", line)
    pg.click("#say-send")
    wait_for(pg, "t => document.getElementById('transcript').textContent.trim() === t", 10, "the said text", line)
    assert pg.input_value("#say-text") == ""

    # -- push to talk with the fake microphone --
    # Back to idle first, so the spoken cue is not overridden by the explicit one still playing.
    wait_for(pg, "() => document.getElementById('state').textContent.trim() === 'idle'", 20, "state idle")
    assert pg.is_enabled("#talk"), "the talk button is disabled (no microphone?)"
    # The fake microphone loops the file from when capture began; align the 4 s press with the
    # sentence: find where speech ends in the page's own microphone stream, then press so the
    # next sentence falls inside the press.
    ends_at = pg.evaluate(SPEECH_END_JS, 15000)
    if ends_at is not None:
        gap_s = LEAD_S + TAIL_S  # silence between the end of one sentence and the start of the next
        now = pg.evaluate("() => performance.now()")
        time.sleep(max(0.0, (ends_at - now) / 1000 + gap_s - 1.2))
    talk = pg.locator("#talk").bounding_box()
    pg.mouse.move(talk["x"] + talk["width"] / 2, talk["y"] + talk["height"] / 2)
    pg.mouse.down()
    time.sleep(0.3)
    assert "on" in (pg.get_attribute("#talk", "class") or ""), "the talk button did not engage"
    time.sleep(3.7)
    pg.mouse.up()
    wait_for(
        pg,
        "() => { const t = document.getElementById('transcript'), e = document.getElementById('emotion');"
        " return t.dataset.kind === 'final' && t.dataset.source === 'speech' && /happy/i.test(t.textContent)"
        " && e.dataset.source === 'asr' && e.textContent.trim() === 'happy'; }",
        20,
        "a spoken transcript with 'happy' and the emotion 'happy' from speech",
    )
    first = pg.locator("#latency-history tr").first
    wait_for(
        pg,
        "() => { const r = document.querySelector('#latency-history tr');"
        " return r && r.children[1].textContent === 'speech'; }",
        10,
        "the spoken turn's latency",
    )
    assert re.fullmatch(r"\d+", first.locator("td").nth(3).text_content().strip())

    # -- a recorded clip, uploaded --
    pg.set_input_files("#clip-file", str(_speech_only(tmp_path)))
    wait_for(
        pg,
        "() => /happy/i.test(document.getElementById('clip-status').textContent)"
        " && /→ happy/.test(document.getElementById('clip-status').textContent)",
        20,
        "the uploaded clip's transcript and emotion",
    )

    assert not pg.is_visible("#error"), pg.inner_text("#error")
    assert pg.locator("#log li").count() <= 20
    pg.screenshot(path=str(tmp_path / "page-end.png"))

    # -- another avatar: a new session (the old one is hung up) with its own stream --
    old = text(pg, "#session-id")
    pg.select_option("#avatar", "luna")
    wait_for(
        pg,
        "s => { const t = document.getElementById('session-id').textContent;"
        " return t !== s && t !== '—' && document.getElementById('conn').textContent === 'live'"
        " && document.getElementById('video').videoWidth === 640; }",
        20,
        "the new avatar's session",
        old,
    )
    assert httpx.get(f"{base}/v1/sessions/{old}").status_code == 404, "the old session is still open"
    assert time.monotonic() - t_start < 90


def test_language_choice(page, base: str) -> None:
    """The language select: auto / English / 中文, applied to the open session at once, and heard."""
    pg = page
    wait_for(pg, "() => document.getElementById('conn').textContent === 'live'", 20, "a live session")
    options = pg.eval_on_selector_all("#language option", "os => os.map(o => [o.value, o.textContent])")
    assert options == [["auto", "auto"], ["en", "English"], ["zh", "中文"]], options
    sid = text(pg, "#session-id")
    pg.select_option("#language", "zh")
    wait_for(
        pg,
        "() => [...document.querySelectorAll('#log li')].some(li => /ASR language: zh/.test(li.textContent))",
        10,
        "the server confirming Mandarin",
    )
    assert httpx.get(f"{base}/v1/sessions/{sid}").json()["language"] == "zh"
    assert text(pg, "#session-id") == sid, "a language change must not start a new session"
    clip = Path(__file__).resolve().parents[1] / "data" / "speech" / "zh" / "zh06_happy.ogg"
    pg.set_input_files("#clip-file", str(clip))
    wait_for(
        pg,
        "() => /[\u4e00-\u9fff].*, zh$/.test(document.getElementById('clip-status').textContent)",
        30,
        "the Mandarin clip's transcript, in Han characters",
    )
    pg.select_option("#language", "auto")
    wait_for(
        pg,
        "() => [...document.querySelectorAll('#log li')].some(li => /ASR language: auto/.test(li.textContent))",
        10,
        "the server back to detecting",
    )
    assert httpx.get(f"{base}/v1/sessions/{sid}").json()["language"] is None


def test_busy_server(browser, base: str, page) -> None:
    """All session slots taken: a new page says the server is busy, then connects by itself once one frees."""
    made: list[str] = []
    pg = browser.new_page()
    try:
        for _ in range(64):
            r = httpx.post(base + "/v1/sessions", json={}, timeout=10)
            if r.status_code == 503:
                break
            assert r.status_code == 201, r.text
            made.append(r.json()["id"])
        else:
            pytest.fail("the server never said busy")
        pg.goto(base + "/")
        wait_for(pg, "() => !document.getElementById('error').hidden", 15, "the busy error")
        assert "busy" in pg.inner_text("#error"), pg.inner_text("#error")
        assert text(pg, "#conn") == "not connected"
        httpx.delete(f"{base}/v1/sessions/{made.pop()}", timeout=10)
        wait_for(pg, "() => document.getElementById('conn').textContent === 'live'", 20, "the retry connecting")
        assert not pg.is_visible("#error"), pg.inner_text("#error")
    finally:
        pg.close()
        for sid in made:
            httpx.delete(f"{base}/v1/sessions/{sid}", timeout=10)


def _speech_only(tmp_path: Path) -> Path:
    out = tmp_path / "clip.wav"
    subprocess.run(["espeak-ng", "-w", str(out), SENTENCE], check=True)
    return out


# Resolves with performance.now() at the end of the next sentence in the page's microphone stream
# (a clone of its track: the original stays disabled until the talk button is held), or null.
SPEECH_END_JS = """async (timeoutMs) => {
  const app = window.avatarcast;
  if (!app || !app.mic) return null;
  const track = app.mic.getAudioTracks()[0].clone();
  track.enabled = true;  // a clone copies the enabled flag
  const ctx = new AudioContext();
  try {
    await ctx.resume();
    const src = ctx.createMediaStreamSource(new MediaStream([track]));
    const an = ctx.createAnalyser();
    an.fftSize = 1024;
    src.connect(an);
    const buf = new Float32Array(an.fftSize);
    const t0 = performance.now();
    let loud = false, lastLoud = 0;
    while (performance.now() - t0 < timeoutMs) {
      await new Promise(r => setTimeout(r, 20));
      an.getFloatTimeDomainData(buf);
      let s = 0;
      for (const x of buf) s += x * x;
      const rms = Math.sqrt(s / buf.length);
      const now = performance.now();
      if (rms > 0.02) { loud = true; lastLoud = now; }
      else if (loud && now - lastLoud > 600) return lastLoud;
    }
    return null;
  } finally {
    track.stop();
    await ctx.close();
  }
}"""
