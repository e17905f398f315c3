// avatarcast demo page, built on the browser client (static/avatarcast-client/: WebRTC, else WebSocket frames).
// Plain JS, no build step. The HTTP API: realtime/server.py; the events: docs/protocol.md.
//
// URL parameters: token (with --auth-secret), avatar, language; and to choose or test the transport:
// transport (auto | webrtc | websocket), webrtc_timeout_ms (the wait before the fallback), ice_policy (all | relay).
import { AvatarcastClient } from "/static/avatarcast-client/index.js";

const params = new URLSearchParams(location.search);
const AUTH_TOKEN = params.get("token");
// One key per page: behind Ray Serve with several gateways (realtime/cluster/app.py) the proxy sends every
// request with the same X-Session-Id to the gateway that holds this page's session. A plain server ignores it.
const AFFINITY_KEY = Array.from({ length: 4 }, () => Math.random().toString(36).slice(2, 10)).join("");

const $ = (id) => document.getElementById(id);
const el = {
  video: $("video"), canvas: $("canvas"), overlay: $("video-overlay"), fps: $("fps"),
  avatar: $("avatar"), language: $("language"), conn: $("conn"), transport: $("transport"), reconnect: $("reconnect"),
  error: $("error"), errorText: $("error-text"), errorClose: $("error-close"),
  talk: $("talk"), talkLabel: $("talk-label"), micNote: $("mic-note"),
  sayForm: $("say-form"), sayText: $("say-text"), saySend: $("say-send"),
  emotions: $("emotion-buttons"), clipFile: $("clip-file"), clipStatus: $("clip-status"),
  state: $("state"), transcript: $("transcript"), emotion: $("emotion"), emotionConf: $("emotion-conf"),
  tter: $("tter"), ttff: $("ttff"), history: $("latency-history"), log: $("log"), sessionId: $("session-id"),
};

const LOG_MAX = 20;
const HISTORY_MAX = 8;
const TALK_TAIL_MS = 250; // keep the mic open this long after release: the last words are still in flight
const BUSY_RETRY_S = 5; // a WebSocket refused with 1013 (busy) says no Retry-After

// One connection at a time; `gen` makes a stale connect() (superseded by a newer one) stand down.
const app = {
  gen: 0, client: null, mic: null, micError: null, micTrack: null, talking: false, tailTimer: null,
};
window.avatarcast = app; // for the console and the browser test

// ---------------------------------------------------------------- UI helpers

function showError(msg) {
  el.errorText.textContent = msg;
  el.error.hidden = false;
}
function clearError() { el.error.hidden = true; el.errorText.textContent = ""; }
el.errorClose.addEventListener("click", clearError);

function setConn(state, text) {
  el.conn.dataset.state = state;
  el.conn.textContent = text;
  const live = state === "live";
  el.overlay.hidden = live;
  if (!live) el.overlay.textContent = text;
  el.talk.disabled = !live || !app.micTrack;
  el.saySend.disabled = !live;
  el.clipFile.disabled = !live;
  for (const b of el.emotions.querySelectorAll("button")) b.disabled = !live;
}

function setTransport(transport, fallbackReason) {
  el.transport.dataset.transport = transport || "";
  el.transport.textContent = transport === "webrtc" ? "WebRTC"
    : transport === "websocket" ? (fallbackReason ? "WebSocket (fallback)" : "WebSocket") : "—";
  el.transport.title = fallbackReason ? `WebRTC did not connect: ${fallbackReason}` : "how the video arrives";
  el.video.hidden = transport === "websocket";
  el.canvas.hidden = transport !== "websocket";
}

function fmtMs(v) { return v === null || v === undefined ? "—" : String(Math.round(v)); }

function logEvent(type, text, cls) {
  const li = document.createElement("li");
  if (cls) li.className = cls;
  const t = document.createElement("time");
  t.textContent = new Date().toLocaleTimeString([], { hour12: false });
  const k = document.createElement("b");
  k.textContent = type;
  const s = document.createElement("span");
  s.textContent = text;
  const body = document.createElement("div");
  body.append(k, " ", s);
  li.append(t, body);
  el.log.prepend(li);
  while (el.log.children.length > LOG_MAX) el.log.lastElementChild.remove();
}

function summarize(ev) {
  const p = ev.payload || {};
  switch (ev.type) {
    case "hello": return `session ${p.session}, avatar ${p.avatar}, ${p.width}x${p.height} @ ${p.fps} fps`;
    case "state_changed": return `${p.from} → ${p.to}${p.emotion ? ` (${p.emotion})` : ""}`;
    case "transcript_partial": return `… ${p.text}${p.language ? ` [${p.language}]` : ""}`;
    case "transcript_final": return `"${p.text}" (${p.source || "speech"}${p.language ? `, ${p.language}` : ""})`;
    case "language": return `ASR language: ${p.language || "auto"}`;
    case "emotion":
      return `${p.label} ${pct(p.confidence)} by ${p.decided_by}${p.applied ? "" : ` — not applied: ${p.reason}`}`;
    case "latency": return `#${p.utterance} ${p.emotion}: TTER ${fmtMs(p.tter_ms)} ms, TTFF ${fmtMs(p.ttff_ms)} ms`;
    case "frames_late": return `${p.count} frame(s) late, ${p.dropped_total} dropped in all`;
    case "clip": return `clip: "${p.transcript}" → ${p.emotion}`;
    case "error": return `${p.code}: ${p.message}`;
    default: return JSON.stringify(p).slice(0, 160);
  }
}

function pct(x) { return typeof x === "number" ? `${Math.round(x * 100)}%` : ""; }

function setTranscript(text, kind, source, language) {
  el.transcript.textContent = text || "(nothing heard)";
  el.transcript.lang = language || "";
  el.transcript.dataset.language = language || "";
  el.transcript.dataset.kind = kind; // partial | final
  el.transcript.dataset.source = source || "speech"; // speech | say | clip
}

const SOURCE_NAMES = { asr: "from speech", text: "from text", explicit: "set by button" };

// ---------------------------------------------------------------- server events

function onEvent(ev) {
  const p = ev.payload || {};
  logEvent(ev.type, summarize(ev), ev.type === "error" ? "bad" : "");
  switch (ev.type) {
    case "hello":
      el.sessionId.textContent = p.session || el.sessionId.textContent;
      break;
    case "state_changed":
      el.state.textContent = p.to;
      el.state.dataset.state = p.to;
      break;
    case "transcript_partial":
      setTranscript(p.text, "partial", "speech", p.language);
      break;
    case "transcript_final":
      setTranscript(p.text, "final", p.source, p.language);
      break;
    case "language": // the server's answer to a language command: what it now listens for
      el.language.value = p.language || "auto";
      break;
    case "emotion":
      if (p.applied) {
        el.emotion.textContent = p.label;
        el.emotion.dataset.label = p.label;
        el.emotion.dataset.source = p.source; // asr | text | explicit
        el.emotionConf.textContent = `${pct(p.confidence)} · ${SOURCE_NAMES[p.source] || p.source}`
          + (p.source === "asr" ? ` (${p.decided_by})` : "");
      }
      break;
    case "latency":
      el.tter.textContent = fmtMs(p.tter_ms);
      el.ttff.textContent = fmtMs(p.ttff_ms);
      addHistory(p);
      break;
    case "clip":
      showClipResult(p);
      break;
    case "error":
      showError(`Server: ${p.message || p.code}`);
      break;
  }
}

function addHistory(p) {
  const tr = document.createElement("tr");
  for (const v of [p.utterance, p.kind, p.emotion, fmtMs(p.tter_ms), fmtMs(p.ttff_ms)]) {
    const td = document.createElement("td");
    td.textContent = v === null || v === undefined ? "—" : String(v);
    tr.append(td);
  }
  el.history.prepend(tr);
  while (el.history.children.length > HISTORY_MAX) el.history.lastElementChild.remove();
}

// ---------------------------------------------------------------- microphone

async function ensureMic() {
  if (app.micTrack || app.micError) return;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    app.micError = "this browser gives no microphone access here (it needs https or localhost)";
    return;
  }
  try {
    app.mic = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: true, autoGainControl: true },
      video: false,
    });
    app.micTrack = app.mic.getAudioTracks()[0] || null;
    if (app.micTrack) {
      app.micTrack.enabled = false; // push-to-talk: silent until the button is held
      app.micTrack.addEventListener("ended", () => {
        app.micTrack = null;
        app.micError = "the microphone went away";
        el.talk.disabled = true;
        showMicNote();
      });
    }
  } catch (err) {
    app.micError = err && err.name === "NotAllowedError"
      ? "microphone access was denied"
      : `no microphone (${err && err.name ? err.name : err})`;
  }
}

function showMicNote() {
  el.micNote.hidden = !app.micError;
  el.micNote.textContent = app.micError
    ? `Microphone unavailable: ${app.micError}. Type, pick an emotion or upload a clip instead.` : "";
  el.talk.title = app.micError ? `Microphone unavailable: ${app.micError}` : "Hold to talk (or hold the space bar)";
}

function startTalk() {
  if (!app.micTrack || el.talk.disabled) return;
  clearTimeout(app.tailTimer);
  app.tailTimer = null;
  app.talking = true;
  app.micTrack.enabled = true;
  if (app.client) app.client.resumeAudio().catch(() => {}); // a user gesture: WebSocket capture may start now
  el.talk.classList.add("on");
  el.talkLabel.textContent = "Listening… release to stop";
}

function stopTalk() {
  if (!app.talking) return;
  app.talking = false;
  el.talk.classList.remove("on");
  el.talkLabel.textContent = "Hold to talk";
  clearTimeout(app.tailTimer);
  app.tailTimer = setTimeout(() => {
    app.tailTimer = null;
    if (app.talking) return;
    if (app.micTrack) app.micTrack.enabled = false;
    if (app.client) app.client.audioEnd(); // not connected: nothing to close
  }, TALK_TAIL_MS);
}

function resetTalk() { // hang-up: mic off at once, no audio_end for a session that is going away
  clearTimeout(app.tailTimer);
  app.tailTimer = null;
  app.talking = false;
  if (app.micTrack) app.micTrack.enabled = false;
  el.talk.classList.remove("on");
  el.talkLabel.textContent = "Hold to talk";
}

el.talk.addEventListener("pointerdown", (e) => {
  if (e.button !== 0) return;
  e.preventDefault();
  el.talk.setPointerCapture(e.pointerId);
  startTalk();
});
for (const t of ["pointerup", "pointercancel", "lostpointercapture"]) el.talk.addEventListener(t, stopTalk);
el.talk.addEventListener("contextmenu", (e) => e.preventDefault());
// Space bar = push to talk, unless the user is typing.
const typing = () => ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement && document.activeElement.tagName);
document.addEventListener("keydown", (e) => {
  if (e.code === "Space" && !e.repeat && !typing()) { e.preventDefault(); startTalk(); }
});
document.addEventListener("keyup", (e) => {
  if (e.code === "Space" && !typing()) { e.preventDefault(); stopTalk(); }
});
window.addEventListener("blur", stopTalk);

// ---------------------------------------------------------------- commands

function liveClient() {
  if (!app.client || app.client.state === "closed" || !app.client.sessionId) throw new Error("not connected");
  return app.client;
}

function describe(err) {
  return err && err.code === "busy" ? `server busy: ${err.message}` : (err && err.message) || String(err);
}

el.sayForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = el.sayText.value.trim();
  if (!text) return;
  try {
    await liveClient().say(text);
    el.sayText.value = "";
  } catch (err) {
    showError(`Send failed: ${describe(err)}`);
  }
});

function buildEmotionButtons(labels) {
  el.emotions.replaceChildren();
  for (const label of labels) {
    if (label === "listening") continue;
    const b = document.createElement("button");
    b.type = "button";
    b.className = "chip";
    b.dataset.emotion = label;
    b.textContent = label;
    b.disabled = true;
    b.addEventListener("click", () => {
      Promise.resolve().then(() => liveClient().emotion(label, 0.8))
        .catch((err) => showError(`Emotion failed: ${describe(err)}`));
    });
    el.emotions.append(b);
  }
}

el.clipFile.addEventListener("change", async () => {
  const file = el.clipFile.files && el.clipFile.files[0];
  if (!file) return;
  el.clipStatus.textContent = `sending ${file.name}…`;
  try {
    showClipResult(await liveClient().sendClip(file));
  } catch (err) {
    el.clipStatus.textContent = "";
    showError(`Clip upload failed: ${describe(err)}`);
  } finally {
    el.clipFile.value = "";
  }
});

function showClipResult(p) {
  el.clipStatus.textContent = `"${p.transcript || "(nothing heard)"}" → ${p.emotion} (${pct(p.confidence)}), `
    + `${p.audio_s}s of audio${p.language ? `, ${p.language}` : ""}`;
}

// ---------------------------------------------------------------- connection

const ctx2d = el.canvas.getContext("2d");

function drawFrame(frame) {
  // webp frames keep alpha: the canvas's CSS background shows through, as an AR scene would
  ctx2d.clearRect(0, 0, el.canvas.width, el.canvas.height);
  ctx2d.drawImage(frame.bitmap, 0, 0, el.canvas.width, el.canvas.height);
  countFrame();
}

async function connect() {
  const gen = ++app.gen;
  clearError();
  resetTalk();
  const old = app.client;
  app.client = null;
  if (old) await old.close();
  el.video.srcObject = null;
  el.fps.textContent = "";
  frames = -1;
  el.sessionId.textContent = "—";
  el.state.textContent = "—"; el.state.dataset.state = "";
  setTransport(null);
  setConn("connecting", "connecting…");

  await ensureMic();
  if (gen !== app.gen) return;
  showMicNote();

  const timeout = Number(params.get("webrtc_timeout_ms"));
  const client = new AvatarcastClient({
    token: AUTH_TOKEN,
    affinityKey: AFFINITY_KEY,
    avatar: el.avatar.value,
    language: el.language.value,
    microphone: app.micTrack ? app.mic : null,
    transport: params.get("transport") || "auto",
    iceTransportPolicy: params.get("ice_policy") || "all",
    ...(timeout > 0 ? { webrtcTimeoutMs: timeout } : {}),
  });
  app.client = client;
  const mine = () => gen === app.gen;
  client.on("event", (ev) => { if (mine()) onEvent(ev); });
  client.on("stream", (stream) => {
    if (!mine()) return;
    el.video.srcObject = stream;
    el.video.play().catch(() => { /* autoplay of a muted video is allowed; ignore a race with a reload */ });
  });
  client.on("frame", (frame) => { if (mine()) drawFrame(frame); });
  client.on("fallback", ({ reason }) => {
    if (!mine()) return;
    logEvent("transport", `WebRTC failed (${reason}); trying WebSocket frames`, "bad");
    setConn("connecting", "WebRTC failed: trying WebSocket…");
  });
  client.on("transport", ({ transport, fallbackReason }) => {
    if (!mine()) return;
    setTransport(transport, fallbackReason);
    logEvent("transport", transport === "webrtc" ? "WebRTC video" : "WebSocket frames");
  });
  client.on("connectionstate", ({ state }) => {
    if (!mine()) return;
    if (state === "live") setConn("live", "live");
    else if (state === "interrupted") setConn("connecting", "connection interrupted…");
  });
  client.on("close", ({ byClient, reason }) => {
    if (!mine() || byClient) return;
    resetTalk();
    setConn("failed", "session ended");
    showError(`The session ended (${reason}). Press Reconnect for a new one.`);
  });

  try {
    const { sessionId } = await client.connect();
    if (!mine()) return;
    el.sessionId.textContent = sessionId || "—";
  } catch (err) {
    if (!mine()) return;
    app.client = null;
    setConn("failed", "not connected");
    const retry = err.retryAfterS || (err.code === "busy" || err.code === "starting" ? BUSY_RETRY_S : null);
    if (retry) { // busy or still starting: try again by itself (Reconnect does it now)
      showError(`Could not connect: ${describe(err)}. Trying again in ${retry} s…`);
      setTimeout(() => { if (mine()) connect(); }, retry * 1000);
    } else {
      showError(`Could not connect: ${describe(err)}`);
    }
  }
}

el.reconnect.addEventListener("click", () => {
  if (!app.micTrack) app.micError = null; // ask for the microphone again
  connect();
});
// The language applies to the open session at once (a command); a new session is created with it.
el.language.addEventListener("change", () => {
  try { localStorage.setItem("avatarcast.language", el.language.value); } catch { /* private mode */ }
  if (!(app.client && app.client.setLanguage(el.language.value))) connect();
});
el.avatar.addEventListener("change", () => {
  try { localStorage.setItem("avatarcast.avatar", el.avatar.value); } catch { /* private mode */ }
  connect();
});
window.addEventListener("pagehide", () => { if (app.client) app.client.close(); });

// Received frame rate: from the video element (WebRTC) or the decoded frames (WebSocket).
let frames = -1, since = 0;
function countFrame() {
  const now = performance.now();
  if (frames < 0 || now - since > 5000) { frames = 0; since = now; } // first frame, or after a stall
  else frames++;
  if (now - since >= 2000) {
    el.fps.textContent = `${(frames * 1000 / (now - since)).toFixed(1)} fps`;
    frames = 0; since = now;
  }
}
if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
  const onVideoFrame = () => { countFrame(); el.video.requestVideoFrameCallback(onVideoFrame); };
  el.video.requestVideoFrameCallback(onVideoFrame);
}

// ---------------------------------------------------------------- start

async function getJson(url) {
  const headers = AUTH_TOKEN ? { Authorization: `Bearer ${AUTH_TOKEN}` } : {};
  const r = await fetch(url, { headers: { ...headers, "X-Session-Id": AFFINITY_KEY } });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function start() {
  setConn("connecting", "loading…");
  // The models may still be loading: wait for /readyz (the emotion list comes with them).
  for (let i = 0; ; i++) {
    const r = await fetch("/readyz").catch(() => null);
    if (r && r.ok) break;
    const body = r ? await r.json().catch(() => ({})) : {};
    if (body.error === "start_failed" || i >= 120) {
      setConn("failed", "server not ready");
      showError(`The server did not start: ${body.message || (r ? `HTTP ${r.status}` : "unreachable")}`);
      return;
    }
    setConn("connecting", r ? "server is loading its models…" : "waiting for the server…");
    await new Promise((res) => setTimeout(res, 1000));
  }
  let avatars, emotions;
  try {
    [avatars, emotions] = await Promise.all([getJson("/v1/avatars"), getJson("/v1/emotions")]);
  } catch (err) {
    setConn("failed", "server unreachable");
    showError(`Could not load the avatar list: ${err.message}`);
    return;
  }
  const want = params.get("avatar")
    || (() => { try { return localStorage.getItem("avatarcast.avatar"); } catch { return null; } })();
  for (const name of avatars.avatars) el.avatar.append(new Option(name, name, false, name === want));
  if (want && !avatars.avatars.includes(want)) el.avatar.append(new Option(want, want, true, true));
  buildEmotionButtons(emotions.emotions);
  const lang = params.get("language")
    || (() => { try { return localStorage.getItem("avatarcast.language"); } catch { return null; } })();
  if (lang && [...el.language.options].some((o) => o.value === lang)) el.language.value = lang;
  connect();
}

start();
