// avatarcast demo page: WebRTC (WHEP-style) video + a data channel for events and commands.
// Plain JS, no build step. See realtime/server.py for the HTTP API and realtime/runner.py for events.
"use strict";

// Every /v1/ call carries two headers:
// - a token, where the server was started with --auth-secret (taken from this page's URL);
// - X-Session-Id, one random key per page: behind Ray Serve with several gateways
//   (realtime/cluster/app.py), the proxy sends every request with the same key to the gateway
//   that holds this page's session. A plain server ignores it.
const AUTH_TOKEN = new URLSearchParams(location.search).get("token");
const AFFINITY_KEY = Array.from({ length: 4 }, () => Math.random().toString(36).slice(2, 10)).join("");
{
  const plainFetch = window.fetch.bind(window);
  window.fetch = (url, opts = {}) => {
    const headers = new Headers(opts.headers || {});
    if (AUTH_TOKEN) headers.set("Authorization", `Bearer ${AUTH_TOKEN}`);
    headers.set("X-Session-Id", AFFINITY_KEY);
    return plainFetch(url, { ...opts, headers });
  };
}


(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    video: $("video"), overlay: $("video-overlay"), fps: $("fps"),
    avatar: $("avatar"), language: $("language"), conn: $("conn"), reconnect: $("reconnect"),
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
  const ICE_WAIT_MS = 3000;

  // One connection at a time; `gen` makes a stale connect() (superseded by a newer one) stand down.
  const app = {
    gen: 0, pc: null, dc: null, sessionId: null, resource: null,
    mic: null, micError: null, micTrack: null, talking: false, tailTimer: null,
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
      case "emotion": return `${p.label} ${pct(p.confidence)} by ${p.decided_by}${p.applied ? "" : ` — not applied: ${p.reason}`}`;
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
        app.sessionId = p.session || app.sessionId;
        el.sessionId.textContent = app.sessionId || "—";
        break;
      case "state_changed":
        el.state.textContent = p.to;
        el.state.dataset.state = p.to;
        if (p.to === "closed") sessionEnded();
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

  function sessionEnded() { // the server closed the session (shutdown, deleted, fatal error)
    const { pc } = app;
    app.gen++; // late events of this connection are ignored from now on
    app.pc = null; app.dc = null; app.resource = null; app.sessionId = null;
    resetTalk();
    if (pc) { pc.onconnectionstatechange = null; pc.close(); }
    setConn("failed", "session ended");
    showError("The session ended on the server. Press Reconnect for a new one.");
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
    el.micNote.textContent = app.micError ? `Microphone unavailable: ${app.micError}. Type, pick an emotion or upload a clip instead.` : "";
    el.talk.title = app.micError ? `Microphone unavailable: ${app.micError}` : "Hold to talk (or hold the space bar)";
  }

  function startTalk() {
    if (!app.micTrack || el.talk.disabled) return;
    clearTimeout(app.tailTimer);
    app.tailTimer = null;
    app.talking = true;
    app.micTrack.enabled = true;
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
      send({ type: "audio_end" }).catch(() => { /* not connected: nothing to close */ });
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

  // Over the data channel when it is open, else the HTTP API of the session.
  async function send(cmd) {
    if (app.dc && app.dc.readyState === "open") {
      app.dc.send(JSON.stringify(cmd));
      return;
    }
    if (!app.sessionId) throw new Error("not connected");
    const path = { say: "say", emotion: "emotion" }[cmd.type];
    if (!path) return; // audio_end only makes sense on the live connection
    const { type, ...body } = cmd;
    const r = await fetch(`/v1/sessions/${encodeURIComponent(app.sessionId)}/${path}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!r.ok) throw new Error(await errorText(r));
  }

  el.sayForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = el.sayText.value.trim();
    if (!text) return;
    try {
      await send({ type: "say", text });
      el.sayText.value = "";
    } catch (err) {
      showError(`Send failed: ${err.message}`);
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
        send({ type: "emotion", label, intensity: 0.8 }).catch((err) => showError(`Emotion failed: ${err.message}`));
      });
      el.emotions.append(b);
    }
  }

  el.clipFile.addEventListener("change", async () => {
    const file = el.clipFile.files && el.clipFile.files[0];
    if (!file) return;
    if (!app.sessionId) { showError("Not connected: cannot upload a clip yet."); return; }
    el.clipStatus.textContent = `sending ${file.name}…`;
    try {
      const r = await fetch(`/v1/sessions/${encodeURIComponent(app.sessionId)}/clips`, {
        method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" }, body: file,
      });
      if (!r.ok) throw new Error(await errorText(r));
      showClipResult(await r.json());
    } catch (err) {
      el.clipStatus.textContent = "";
      showError(`Clip upload failed: ${err.message}`);
    } finally {
      el.clipFile.value = "";
    }
  });

  function showClipResult(p) {
    el.clipStatus.textContent = `"${p.transcript || "(nothing heard)"}" → ${p.emotion} (${pct(p.confidence)}), `
      + `${p.audio_s}s of audio${p.language ? `, ${p.language}` : ""}`;
  }

  async function errorText(r) {
    let msg = `HTTP ${r.status}`, code = "";
    try {
      const j = await r.clone().json();
      if (j && j.message) { msg = j.message; code = j.error || ""; }
    } catch {
      try { const t = await r.text(); if (t) msg = t.slice(0, 200); } catch { /* keep the status */ }
    }
    return r.status === 503 && code === "busy" ? `server busy: ${msg}` : msg;
  }

  // ---------------------------------------------------------------- WebRTC

  function waitIce(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { pc.removeEventListener("icegatheringstatechange", check); clearTimeout(timer); resolve(); };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      const timer = setTimeout(done, ICE_WAIT_MS); // loopback/LAN candidates come at once; don't hang on the rest
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  async function hangUp() {
    const { pc, resource } = app;
    app.pc = null; app.dc = null; app.resource = null; app.sessionId = null;
    resetTalk();
    if (pc) { pc.ontrack = null; pc.onconnectionstatechange = null; }
    // Hang up on the server first: closing our side first can end the peer there already (then DELETE is a 404).
    if (resource) {
      try { await fetch(resource, { method: "DELETE", keepalive: true }); } catch { /* already gone */ }
    }
    if (pc) pc.close();
  }

  async function connect() {
    const gen = ++app.gen;
    clearError();
    await hangUp();
    el.video.srcObject = null;
    el.fps.textContent = "";
    frames = -1;
    el.sessionId.textContent = "—";
    el.state.textContent = "—"; el.state.dataset.state = "";
    setConn("connecting", "connecting…");

    if (gen !== app.gen) return;
    await ensureMic();
    if (gen !== app.gen) return;
    showMicNote();

    const pc = new RTCPeerConnection({ iceServers: [] });
    app.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    if (app.micTrack) pc.addTransceiver(app.micTrack, { direction: "sendonly", streams: [app.mic] });
    const dc = pc.createDataChannel("events");
    app.dc = dc;
    dc.onmessage = (m) => {
      if (gen !== app.gen) return;
      let ev;
      try { ev = JSON.parse(m.data); } catch { logEvent("?", String(m.data).slice(0, 160), "bad"); return; }
      onEvent(ev);
    };
    dc.onclose = () => { if (gen === app.gen && app.pc === pc) logEvent("channel", "event channel closed", "bad"); };
    pc.ontrack = (e) => {
      if (e.track.kind !== "video") return;
      el.video.srcObject = e.streams && e.streams[0] ? e.streams[0] : new MediaStream([e.track]);
      el.video.play().catch(() => { /* autoplay of a muted video is allowed; ignore a race with a reload */ });
    };
    pc.onconnectionstatechange = () => {
      if (gen !== app.gen) return;
      const s = pc.connectionState;
      if (s === "connected") { setConn("live", "live"); }
      else if (s === "disconnected") { setConn("connecting", "connection interrupted…"); }
      else if (s === "failed") {
        setConn("failed", "connection failed");
        showError("Connection failed: no media path to the server (a firewall or NAT in between?). Press Reconnect to try again.");
      } else if (s === "closed") {
        setConn("failed", "closed");
        showError("The server ended the session. Press Reconnect for a new one.");
      }
    };

    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitIce(pc);
      if (gen !== app.gen) { pc.close(); return; }
      const avatar = el.avatar.value;
      let r;
      try {
        const language = el.language.value;
        r = await fetch(`/v1/whep?avatar=${encodeURIComponent(avatar)}&language=${encodeURIComponent(language)}`, {
          method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp,
        });
      } catch (err) {
        throw new Error(`cannot reach the server (${err.message})`);
      }
      if (gen !== app.gen) {
        const loc = r.headers.get("Location");
        if (r.ok && loc) fetch(loc, { method: "DELETE", keepalive: true }).catch(() => {});
        pc.close();
        return;
      }
      if (r.status !== 201) {
        const err = new Error(await errorText(r));
        if (r.status === 503) err.retryAfter = Number(r.headers.get("Retry-After")) || 5;
        throw err;
      }
      app.resource = r.headers.get("Location");
      app.sessionId = r.headers.get("X-Session-Id");
      el.sessionId.textContent = app.sessionId || "—";
      await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
      if (pc.connectionState !== "connected") setConn("connecting", "connecting media…");
    } catch (err) {
      if (gen !== app.gen) { pc.close(); return; }
      app.pc = null; app.dc = null;
      pc.close();
      setConn("failed", "not connected");
      if (err.retryAfter) { // busy or still starting: try again by itself (Reconnect does it now)
        showError(`Could not connect: ${err.message}. Trying again in ${err.retryAfter} s…`);
        setTimeout(() => { if (gen === app.gen) connect(); }, err.retryAfter * 1000);
      } else {
        showError(`Could not connect: ${err.message}`);
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
    if (app.dc && app.dc.readyState === "open") app.dc.send(JSON.stringify({ type: "language", language: el.language.value }));
    else connect();
  });
  el.avatar.addEventListener("change", () => {
    try { localStorage.setItem("avatarcast.avatar", el.avatar.value); } catch { /* private mode */ }
    connect();
  });
  window.addEventListener("pagehide", () => {
    if (app.resource) fetch(app.resource, { method: "DELETE", keepalive: true }).catch(() => {});
  });

  // Received frame rate, from the video element itself.
  let frames = -1, since = 0;
  function countFrame() {
    const now = performance.now();
    if (frames < 0 || now - since > 5000) { frames = 0; since = now; } // first frame, or after a stall
    else frames++;
    if (now - since >= 2000) {
      el.fps.textContent = `${(frames * 1000 / (now - since)).toFixed(1)} fps`;
      frames = 0; since = now;
    }
    el.video.requestVideoFrameCallback(countFrame);
  }
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) el.video.requestVideoFrameCallback(countFrame);

  // ---------------------------------------------------------------- start

  async function getJson(url) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`${url}: ${await errorText(r)}`);
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
    const want = new URLSearchParams(location.search).get("avatar")
      || (() => { try { return localStorage.getItem("avatarcast.avatar"); } catch { return null; } })();
    for (const name of avatars.avatars) el.avatar.append(new Option(name, name, false, name === want));
    if (want && !avatars.avatars.includes(want)) el.avatar.append(new Option(want, want, true, true));
    buildEmotionButtons(emotions.emotions);
    const lang = new URLSearchParams(location.search).get("language")
      || (() => { try { return localStorage.getItem("avatarcast.language"); } catch { return null; } })();
    if (lang && [...el.language.options].some((o) => o.value === lang)) el.language.value = lang;
    connect();
  }

  start();
})();
