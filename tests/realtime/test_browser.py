"""The demo page and its client (static/avatarcast-client/) in a real headless Chromium against the real server:
WebRTC video, the WebSocket-frames fallback, commands, microphone.

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
from PIL import Image

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
    assert text(pg, "#transport") == "WebRTC" and pg.get_attribute("#transport", "data-transport") == "webrtc"
    assert pg.is_visible("#video") and not pg.is_visible("#canvas")
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


@pytest.fixture
def blank(browser, base: str):
    """A page of the server's origin with nothing on it, for driving the client module directly."""
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(base + "/healthz")
    yield pg
    pg.close()
    assert not errors, f"uncaught errors on the page: {errors}"


def run_js(pg, body: str, timeout_s: float, arg=None):
    """Run an async JS function body with `m` (the client module) in scope; fail after timeout_s."""
    return pg.evaluate(
        f"""async (arg) => {{
          const m = await import("/static/avatarcast-client/index.js");
          const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
          const late = (what) => sleep({timeout_s * 1000}).then(() => {{ throw new Error(what); }});
          const until = (p, what) => Promise.race([p, late(what)]);
          return await until((async () => {{ {body} }})(), "timed out after {timeout_s} s");
        }}""",
        arg,
    )


def test_client_webrtc(blank, base: str) -> None:
    """The client connects over WebRTC: a MediaStream that plays 640x360, events and commands on the data channel."""
    out = run_js(
        blank,
        """
        const ice = await m.fetchIceServers(location.origin);
        const client = new m.AvatarcastClient({ avatar: "pip" });
        const transports = [], states = [];
        client.on("transport", (t) => transports.push(t));
        client.on("connectionstate", (s) => states.push(s.state));
        const hello = new Promise((res) => client.once("hello", res));
        const emotion = new Promise((res) => client.on("emotion", (p) => { if (p.applied) res(p); }));
        const pong = new Promise((res) => client.once("pong", res));
        const info = await client.connect();
        const v = document.createElement("video");
        v.muted = true; v.srcObject = client.stream; document.body.append(v);
        await v.play();
        let n = 0;
        await new Promise((res) => {
          const cb = () => { if (++n >= 6) res(); else v.requestVideoFrameCallback(cb); };
          v.requestVideoFrameCallback(cb);
        });
        const h = await hello;
        const onChannel = client.ping();
        await client.emotion("happy", 0.8);
        const [e, p] = await Promise.all([emotion, pong]);
        const sid = client.sessionId;
        await client.close();
        return { ice, info, transports, states, onChannel, sid, helloSession: h.session, emotions: h.emotions,
                 width: v.videoWidth, height: v.videoHeight, emotion: e.label, source: e.source,
                 pongId: p.info.id, state: client.state };
        """,
        20,
    )
    assert isinstance(out["ice"], list)  # [] while the server has no /ice-servers (404), else its list
    assert out["info"] == {"transport": "webrtc", "sessionId": out["sid"]}
    assert out["transports"] == [{"transport": "webrtc", "fallbackReason": None}]
    assert out["states"] == ["connecting", "live", "closed"]
    assert (out["width"], out["height"]) == (640, 360)
    assert out["helloSession"] == out["sid"] == out["pongId"]
    assert out["onChannel"] is True and "happy" in out["emotions"]
    assert (out["emotion"], out["source"]) == ("happy", "explicit")
    assert out["state"] == "closed"
    assert httpx.get(f"{base}/v1/sessions/{out['sid']}").status_code == 404, "close() left the session open"


def test_client_webrtc_only_fails_without_fallback(blank, base: str) -> None:
    """transport "webrtc" with no media path (relay policy, no TURN): a typed error in time, no WebSocket, no leak."""
    sessions: list[str] = []
    blank.on("response", lambda r: sessions.append(r.headers.get("x-session-id", "")) if "/v1/whep" in r.url else None)
    out = run_js(
        blank,
        """
        const client = new m.AvatarcastClient(
          { transport: "webrtc", iceTransportPolicy: "relay", webrtcTimeoutMs: 1500 });
        const t0 = performance.now();
        try { await client.connect(); return { ok: true }; }
        catch (err) {
          return { ok: false, name: err.name, code: err.code, ms: performance.now() - t0,
                   state: client.state, transport: client.transport };
        }
        """,
        10,
    )
    assert out["ok"] is False and out["name"] == "AvatarcastError" and out["code"] == "webrtc_failed", out
    assert 1000 <= out["ms"] < 4000, out
    assert out["state"] == "failed" and out["transport"] is None
    assert len(sessions) == 1 and sessions[0], sessions
    assert httpx.get(f"{base}/v1/sessions/{sessions[0]}").status_code == 404, "the failed peer's session is open"

    # close() while connect() still waits for ICE: connect() rejects at once, and the session ends
    out = run_js(
        blank,
        """
        const client = new m.AvatarcastClient(
          { transport: "webrtc", iceTransportPolicy: "relay", webrtcTimeoutMs: 20000 });
        const pending = client.connect().then(() => "connected", (err) => err.code);
        while (!client.sessionId) await sleep(20);
        const t0 = performance.now();
        await client.close();
        return { code: await pending, ms: performance.now() - t0, state: client.state };
        """,
        10,
    )
    assert out["code"] == "closed" and out["ms"] < 1000 and out["state"] == "closed", out
    assert len(sessions) == 2, sessions
    assert httpx.get(f"{base}/v1/sessions/{sessions[1]}").status_code == 404, "close() left the session open"


def test_client_websocket_frames_and_microphone(blank) -> None:
    """The WebSocket transport: frames as ImageBitmaps with alpha, say, and the microphone as PCM1 heard by ASR."""
    out = run_js(
        blank,
        """
        const mic = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false } });
        const client = new m.AvatarcastClient(
          { transport: "websocket", avatar: "pip", language: "en", microphone: mic });
        const transports = [], frames = [];
        client.on("transport", (t) => transports.push(t));
        client.on("frame", (f) => frames.push({ index: f.index, source: f.source, format: f.imageFormat,
                                                 emotion: f.emotion, w: f.bitmap.width, h: f.bitmap.height }));
        const final = (source) => new Promise((res) => client.on("transcript_final", (p) => {
          if (p.source === source) res(p);
        }));
        const heard = final("speech"), said = final("say");
        const info = await client.connect();
        const speech = await heard;  // the fake microphone's sentence, sent as PCM1 while its track is enabled
        await client.say("What a lovely surprise!");
        const say = await said;
        while (frames.length < 8) await sleep(50);
        const f = client.latestFrame;
        const c = new OffscreenCanvas(f.bitmap.width, f.bitmap.height);
        const g = c.getContext("2d");
        g.drawImage(f.bitmap, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data;
        let clear = 0, solid = 0;
        for (let i = 3; i < d.length; i += 4) { if (d[i] === 0) clear++; else if (d[i] === 255) solid++; }
        const sid = client.sessionId;
        await client.close();
        mic.getTracks().forEach((t) => t.stop());
        const px = d.length / 4;
        return { info, transports, frames: frames.slice(0, 8), clear: clear / px, solid: solid / px,
                 speech: speech.text, say: say.text, sid, received: client.framesReceived };
        """,
        30,
    )
    assert out["info"] == {"transport": "websocket", "sessionId": out["sid"]}
    assert out["transports"] == [{"transport": "websocket", "fallbackReason": None}]
    frames = out["frames"]
    assert all(f["format"] == "webp" and (f["w"], f["h"]) == (640, 360) for f in frames), frames
    assert all(f["source"] in ("idle", "listening", "cache", "sampler") and f["emotion"] for f in frames), frames
    idx = [f["index"] for f in frames]
    assert idx == sorted(set(idx)), idx
    # alpha kept: a transparent background around an opaque avatar
    assert 0.2 < out["clear"] < 0.97 and out["solid"] > 0.02, (out["clear"], out["solid"])
    assert re.search(r"happy", out["speech"], re.I), out["speech"]
    assert out["say"] == "What a lovely surprise!"


def _demo_falls_back(browser, base: str, query: str, route: str | None, within_s: float) -> None:
    """Open the demo so that WebRTC cannot connect; it must run on WebSocket frames and say so."""
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    whep: list[tuple[float, str]] = []
    sockets: list[float] = []
    pg.on("request", lambda r: whep.append((time.monotonic(), r.method)) if "/v1/whep" in r.url else None)
    pg.on("websocket", lambda ws: sockets.append(time.monotonic()))
    owned: list[str] = []
    pg.on("response", lambda r: owned.append(r.headers.get("x-session-id", "")) if "/v1/whep" in r.url else None)
    if route:
        pg.route(route, lambda r: r.abort())
    try:
        pg.goto(base + "/" + query)
        wait_for(
            pg,
            "() => document.getElementById('transport').dataset.transport === 'websocket'"
            " && document.getElementById('conn').textContent === 'live'",
            within_s + 10,
            "the WebSocket fallback",
        )
        assert whep and sockets, (whep, sockets)
        assert sockets[0] - whep[0][0] < within_s, f"fell back {sockets[0] - whep[0][0]:.1f} s after the WHEP offer"
        assert text(pg, "#transport") == "WebSocket (fallback)"
        assert "WebRTC did not connect" in (pg.get_attribute("#transport", "title") or "")
        assert pg.is_visible("#canvas") and not pg.is_visible("#video")
        assert not pg.is_visible("#error"), pg.inner_text("#error")
        # frames arrive and are drawn: the avatar on the canvas, over its background
        wait_for(pg, "() => /fps/.test(document.getElementById('fps').textContent)", 5, "a frame rate")
        img = np.asarray(Image.open(io.BytesIO(pg.locator("#canvas").screenshot())).convert("RGB")).astype(int)
        off_bg = np.abs(img - BG).sum(axis=2) > 60
        assert img.std() > 10 and 0.03 < off_bg.mean() < 0.9, (img.std(), off_bg.mean())
        # commands go over the socket
        line = "Thank you, this is wonderful news."
        pg.fill("#say-text", line)
        pg.click("#say-send")
        wait_for(pg, "t => document.getElementById('transcript').textContent.trim() === t", 10, "the said text", line)
        session = text(pg, "#session-id")
        assert re.fullmatch(r"[\w-]{6,}", session), session
        for sid in filter(None, owned):  # the WebRTC attempt's session was hung up
            assert sid != session and httpx.get(f"{base}/v1/sessions/{sid}").status_code == 404
        pg.close()
        assert httpx.get(f"{base}/v1/sessions/{session}").status_code in (200, 404)
    finally:
        if not pg.is_closed():
            pg.close()
    assert not errors, f"uncaught errors on the page: {errors}"


def test_demo_falls_back_when_ice_cannot_connect(browser, base: str) -> None:
    """Relay-only ICE with no TURN server: WebRTC never connects; WebSocket frames within the set 2.5 s."""
    _demo_falls_back(browser, base, "?ice_policy=relay&webrtc_timeout_ms=2500", None, 2.5 + 1.5)


def test_demo_falls_back_when_whep_is_blocked(browser, base: str) -> None:
    """A proxy that blocks the WHEP route: the fallback comes at once, long before the default 5 s."""
    _demo_falls_back(browser, base, "", "**/v1/whep*", 2.0)


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
