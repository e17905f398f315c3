// avatarcast-client: the browser client of `avatarcast serve`. One ES module, no dependencies, no build step.
// It connects over WebRTC (WHEP) and falls back to WebSocket frames when WebRTC does not connect in time.
// The wire format and every event are in docs/protocol.md; the types in index.d.ts beside this file.

export const VERSION = "0.1.0";

/** What a frame shows, in wire order (the frame header's source byte is the index). */
export const FRAME_SOURCES = Object.freeze(["idle", "listening", "cache", "sampler"]);
export const FRAME_HEADER_BYTES = 28;
const FRAME_MAGIC = "AVF1";
const IMAGE_FORMATS = { 1: "jpeg", 2: "webp" };
const IMAGE_TYPES = { jpeg: "image/jpeg", webp: "image/webp" };
const TAG_PCM = new Uint8Array([0x50, 0x43, 0x4d, 0x31]); // "PCM1"
const PCM_RATE = 16000;
const PCM_BATCH = 1600; // samples per PCM1 message: 100 ms, 10 messages a second

// Refusals that a WebSocket would meet too (the server, not the WebRTC path, says no): no fallback for these.
const SERVER_REFUSALS = new Set([
  "starting", "start_failed", "shutting_down", "busy", "rate_limited", "unauthorized", "origin_not_allowed",
  "no_session", "bad_avatar", "bad_image_format", "bad_quality", "bad_language",
]);
const CLOSE_REASONS = { 1008: "refused", 1009: "too_large", 1011: "internal", 1013: "busy" };

const DEFAULTS = {
  baseUrl: null,
  token: null,
  avatar: "",
  language: null,
  session: null,
  transport: "auto",
  webrtcTimeoutMs: 5000,
  iceServers: null,
  iceServersUrl: "/v1/ice-servers",
  iceTransportPolicy: "all",
  iceGatherTimeoutMs: 2000,
  imageFormat: "webp",
  quality: null,
  microphone: null,
  helloTimeoutMs: 10000,
  affinityKey: null,
};

/** A failure the server named (`code` as in docs/protocol.md) or a client-side one (`transport_failed`...). */
export class AvatarcastError extends Error {
  constructor(code, message, { status = null, closeCode = null, retryAfterS = null } = {}) {
    super(message);
    this.name = "AvatarcastError";
    this.code = code;
    this.status = status;
    this.closeCode = closeCode;
    this.retryAfterS = retryAfterS;
  }
}

/** WebRTC did not get through (no media path, a blocked route): the WebSocket may still work. */
class WebRTCUnavailable extends Error {}

/** Parse one binary WebSocket message: the 28-byte frame header and the image bytes (a view, not a copy). */
export function parseFrame(data) {
  const buf = data instanceof ArrayBuffer ? data
    : data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
  if (buf.byteLength < FRAME_HEADER_BYTES) throw new AvatarcastError("bad_frame", "frame message too short");
  const dv = new DataView(buf);
  const magic = String.fromCharCode(dv.getUint8(0), dv.getUint8(1), dv.getUint8(2), dv.getUint8(3));
  const imageFormat = IMAGE_FORMATS[dv.getUint8(24)];
  const source = FRAME_SOURCES[dv.getUint8(25)];
  if (magic !== FRAME_MAGIC || !imageFormat || !source) {
    throw new AvatarcastError("bad_frame", "not an avatarcast frame (bad magic, format or source)");
  }
  return {
    index: dv.getUint32(4, true),
    ptsS: dv.getFloat64(8, true),
    sentAt: dv.getFloat64(16, true),
    imageFormat,
    source,
    emotionIndex: dv.getUint8(26),
    image: new Uint8Array(buf, FRAME_HEADER_BYTES),
  };
}

/** The server's ICE servers (GET /v1/ice-servers: {"iceServers": [...]}); [] when it has no such endpoint (404). */
export async function fetchIceServers(baseUrl, { token = null, url = DEFAULTS.iceServersUrl } = {}) {
  const r = await fetch(new URL(url, baseUrl), { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (r.status === 404) return [];
  if (!r.ok) throw await errorFrom(r);
  const body = await r.json();
  const list = Array.isArray(body) ? body : body && body.iceServers;
  if (!Array.isArray(list)) throw new AvatarcastError("bad_ice_servers", `${url} answered no iceServers list`);
  return list;
}

async function errorFrom(r) {
  let code = `http_${r.status}`, message = `HTTP ${r.status}`;
  try {
    const j = await r.clone().json();
    if (j && typeof j.error === "string") { code = j.error; message = j.message || message; }
  } catch {
    try { const t = await r.text(); if (t) message = t.slice(0, 200); } catch { /* keep the status */ }
  }
  const retry = Number(r.headers.get("Retry-After"));
  return new AvatarcastError(code, message, { status: r.status, retryAfterS: retry > 0 ? retry : null });
}

function randomKey() {
  return Array.from({ length: 4 }, () => Math.random().toString(36).slice(2, 10)).join("");
}

/** One avatar session over WebRTC or WebSocket frames. One connection per instance: make a new one to reconnect. */
export class AvatarcastClient {
  #o;
  #base;
  #listeners = new Map();
  #state = "idle";
  #transport = null;
  #sessionId = null;
  #resource = null; // the WHEP resource URL (WebRTC)
  #pc = null;
  #dc = null;
  #ws = null;
  #stream = null;
  #hello = null;
  #latest = null;
  #decoding = false;
  #pending = null; // newest frame message not decoded yet
  #mic = null; // { ctx, node, source } (WebSocket microphone capture)
  #closed = false;
  #fallbackReason = null; // why WebRTC was given up, when it was
  #abort = null; // rejects #aborted: close() ends a connect() still waiting
  #aborted = new Promise((_, reject) => { this.#abort = reject; });
  framesReceived = 0;
  framesDropped = 0;

  constructor(options = {}) {
    this.#o = { ...DEFAULTS, ...options };
    if (!["auto", "webrtc", "websocket"].includes(this.#o.transport)) {
      throw new TypeError(`transport must be auto, webrtc or websocket, not ${this.#o.transport}`);
    }
    const origin = typeof location !== "undefined" ? location.origin : undefined;
    this.#base = new URL(this.#o.baseUrl || origin);
    this.#o.affinityKey = this.#o.affinityKey || randomKey();
    this.#aborted.catch(() => {}); // only raced against, never awaited alone
  }

  #orAbort(promise) { return Promise.race([promise, this.#aborted]); }

  get state() { return this.#state; }
  get transport() { return this.#transport; }
  get sessionId() { return this.#sessionId; }
  get stream() { return this.#stream; }
  get hello() { return this.#hello; }
  get latestFrame() { return this.#latest; }

  // ---------------------------------------------------------------- events

  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) { this.#listeners.get(type)?.delete(fn); }

  once(type, fn) {
    const off = this.on(type, (...a) => { off(); fn(...a); });
    return off;
  }

  #emit(type, ...args) {
    for (const fn of [...(this.#listeners.get(type) || [])]) {
      try { fn(...args); } catch (err) { setTimeout(() => { throw err; }); } // a listener's bug is the page's
    }
  }

  #setState(state, detail = {}) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit("connectionstate", { state, transport: this.#transport, ...detail });
  }

  #onServerEvent(ev) {
    if (!ev || typeof ev.type !== "string") return;
    if (ev.type === "hello") {
      this.#hello = ev.payload;
      this.#sessionId = ev.payload.session || this.#sessionId;
    }
    this.#emit("event", ev);
    this.#emit(ev.type, ev.payload, ev);
    if (ev.type === "state_changed" && ev.payload.to === "closed") this.#ended(null, "the session ended on the server");
  }

  #onText(text) {
    let ev;
    try { ev = JSON.parse(text); } catch { return; }
    this.#onServerEvent(ev);
  }

  // ---------------------------------------------------------------- HTTP

  #headers(extra = {}) {
    const h = { "X-Session-Id": this.#o.affinityKey, ...extra };
    if (this.#o.token) h.Authorization = `Bearer ${this.#o.token}`;
    return h;
  }

  #url(path, query = {}) {
    const u = new URL(path, this.#base);
    for (const [k, v] of Object.entries(query)) if (v !== null && v !== undefined && v !== "") u.searchParams.set(k, v);
    return u;
  }

  async #post(path, body, contentType) {
    const headers = this.#headers({ "Content-Type": contentType });
    const r = await fetch(this.#url(path), { method: "POST", headers, body });
    if (!r.ok) throw await errorFrom(r);
    return r;
  }

  // ---------------------------------------------------------------- connect

  /** Connect; resolves with the transport in use once frames can flow. Rejects with an AvatarcastError. */
  async connect() {
    if (this.#state !== "idle") throw new AvatarcastError("already_connected", "one connection per client");
    this.#setState("connecting");
    const mode = this.#o.transport;
    try {
      if (mode !== "websocket") {
        try {
          await this.#connectWebRTC();
          this.#transport = "webrtc";
          this.#live("webrtc", null);
          return { transport: this.#transport, sessionId: this.#sessionId };
        } catch (err) {
          if (!(err instanceof WebRTCUnavailable) || mode === "webrtc" || this.#closed) throw err;
          await this.#dropWebRTC();
          this.#sessionId = this.#o.session; // the attempt's own session is gone: the socket's hello names the next
          this.#hello = null;
          this.#fallbackReason = err.message;
          this.#emit("fallback", { reason: err.message });
        }
      }
      await this.#connectWebSocket();
      this.#live("websocket", this.#fallbackReason);
      return { transport: this.#transport, sessionId: this.#sessionId };
    } catch (err) {
      await this.#dropWebRTC();
      this.#dropWebSocket();
      if (!this.#closed) this.#setState("failed");
      if (err instanceof AvatarcastError) throw err;
      throw new AvatarcastError(err instanceof WebRTCUnavailable ? "webrtc_failed" : "transport_failed", err.message);
    }
  }

  #live(transport, fallbackReason) {
    if (this.#closed) throw new AvatarcastError("closed", "closed while connecting");
    this.#transport = transport;
    this.#emit("transport", { transport, fallbackReason });
    this.#setState("live");
  }

  #iceServers() {
    if (this.#o.iceServers) return Promise.resolve(this.#o.iceServers);
    if (!this.#o.iceServersUrl) return Promise.resolve([]);
    return fetchIceServers(this.#base, { token: this.#o.token, url: this.#o.iceServersUrl }).catch(() => []);
  }

  async #connectWebRTC() {
    if (typeof RTCPeerConnection === "undefined") throw new WebRTCUnavailable("this browser has no WebRTC");
    const started = performance.now();
    const left = () => this.#o.webrtcTimeoutMs - (performance.now() - started);
    const iceServers = await this.#iceServers();
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: this.#o.iceTransportPolicy });
    this.#pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    const mic = this.#o.microphone;
    const micTrack = mic && mic.getAudioTracks()[0];
    if (micTrack) pc.addTransceiver(micTrack, { direction: "sendonly", streams: [mic] });
    const dc = pc.createDataChannel("events");
    this.#dc = dc;
    dc.onmessage = (m) => { if (this.#pc === pc && typeof m.data === "string") this.#onText(m.data); };
    pc.ontrack = (e) => {
      if (e.track.kind !== "video" || this.#pc !== pc) return;
      this.#stream = e.streams && e.streams[0] ? e.streams[0] : new MediaStream([e.track]);
      this.#emit("stream", this.#stream);
    };
    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc, Math.min(this.#o.iceGatherTimeoutMs, Math.max(0, left())));
    if (this.#closed) throw new AvatarcastError("closed", "closed while connecting");

    const sid = this.#o.session;
    const path = sid ? `/v1/sessions/${encodeURIComponent(sid)}/whep` : "/v1/whep";
    const query = sid ? {} : { avatar: this.#o.avatar, language: this.#o.language };
    let r;
    try {
      r = await fetch(this.#url(path, query), {
        method: "POST", headers: this.#headers({ "Content-Type": "application/sdp" }), body: pc.localDescription.sdp,
      });
    } catch (err) {
      throw new WebRTCUnavailable(`WHEP request failed (${err.message})`);
    }
    if (r.status !== 201) {
      const err = await errorFrom(r);
      if (SERVER_REFUSALS.has(err.code)) throw err;
      throw new WebRTCUnavailable(`WHEP answered ${r.status} (${err.message})`);
    }
    const loc = r.headers.get("Location");
    this.#resource = loc ? new URL(loc, this.#url(path)).href : null;
    this.#sessionId = r.headers.get("X-Session-Id") || sid;
    await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
    if (this.#closed) throw new AvatarcastError("closed", "closed while connecting");
    await this.#orAbort(waitConnected(pc, dc, Math.max(0, left()), this.#o.webrtcTimeoutMs));
    pc.onconnectionstatechange = () => {
      if (this.#pc !== pc) return;
      const s = pc.connectionState;
      if (s === "connected") this.#setState("live");
      else if (s === "disconnected") this.#setState("interrupted");
      else if (s === "failed" || s === "closed") this.#ended(null, `WebRTC connection ${s}`);
    };
  }

  async #dropWebRTC() {
    const p = this.#pc, res = this.#resource;
    this.#pc = null; this.#dc = null; this.#resource = null; this.#stream = null;
    if (p) { p.ontrack = null; p.onconnectionstatechange = null; }
    // Hang up on the server first: closing our side first can end the peer there already (then DELETE is a 404).
    if (res) {
      try { await fetch(res, { method: "DELETE", headers: this.#headers(), keepalive: true }); } catch { /* gone */ }
    }
    if (p) p.close();
  }

  async #connectWebSocket() {
    const sid = this.#o.session;
    const path = sid ? `/v1/sessions/${encodeURIComponent(sid)}/ws` : "/v1/ws";
    const query = sid ? {} : {
      avatar: this.#o.avatar, language: this.#o.language, image_format: this.#o.imageFormat, quality: this.#o.quality,
    };
    const u = this.#url(path, { ...query, token: this.#o.token });
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(u);
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    const hello = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new AvatarcastError("transport_failed", "no hello from the server")),
        this.#o.helloTimeoutMs);
      ws.onmessage = (m) => {
        if (typeof m.data !== "string") { this.#onFrame(m.data); return; }
        this.#onText(m.data);
        if (this.#hello) { clearTimeout(timer); resolve(); }
      };
      ws.onclose = (e) => {
        clearTimeout(timer);
        const code = CLOSE_REASONS[e.code] || "transport_failed";
        reject(new AvatarcastError(code, e.reason || `WebSocket closed (${e.code})`, { closeCode: e.code }));
      };
    });
    await this.#orAbort(hello);
    ws.onclose = (e) => { if (this.#ws === ws) this.#ended(e.code, e.reason || `WebSocket closed (${e.code})`); };
    if (this.#o.microphone) {
      this.#startPcmCapture(this.#o.microphone).catch((err) => {
        this.#emit("error", { code: "microphone_failed", message: `microphone capture: ${err.message}`, fatal: false });
      });
    }
  }

  #dropWebSocket() {
    const ws = this.#ws;
    this.#ws = null;
    this.#stopPcmCapture();
    if (ws) { ws.onmessage = null; ws.onclose = null; if (ws.readyState <= 1) ws.close(1000, "client done"); }
  }

  // ---------------------------------------------------------------- WebSocket frames

  #onFrame(data) {
    if (this.#decoding) {
      if (this.#pending) this.framesDropped++; // decoding lags: the newer frame wins
      this.#pending = data;
      return;
    }
    this.#decode(data);
  }

  async #decode(data) {
    this.#decoding = true;
    try {
      while (data && !this.#closed) {
        let f;
        try { f = parseFrame(data); } catch { break; }
        const bitmap = await createImageBitmap(new Blob([f.image], { type: IMAGE_TYPES[f.imageFormat] }));
        if (this.#closed) { bitmap.close(); break; }
        const emotions = this.#hello && this.#hello.emotions;
        const frame = {
          bitmap, index: f.index, ptsS: f.ptsS, sentAt: f.sentAt, imageFormat: f.imageFormat, source: f.source,
          emotion: emotions ? emotions[f.emotionIndex] ?? null : null, receivedAt: performance.now(),
        };
        const prev = this.#latest;
        this.#latest = frame;
        this.framesReceived++;
        this.#emit("frame", frame);
        if (prev) prev.bitmap.close(); // one live bitmap: the newest (latestFrame)
        data = this.#pending;
        this.#pending = null;
      }
    } catch (err) {
      this.#emit("error", { code: "frame_decode_failed", message: String(err && err.message), fatal: false });
    } finally {
      this.#decoding = false;
    }
  }

  // ---------------------------------------------------------------- WebSocket microphone

  async #startPcmCapture(stream) {
    const track = stream.getAudioTracks()[0];
    if (!track) return;
    const ctx = new AudioContext({ sampleRate: PCM_RATE }); // the browser resamples the microphone to 16 kHz
    this.#mic = { ctx, node: null, source: null };
    const code = `registerProcessor("avatarcast-pcm", class extends AudioWorkletProcessor {
      constructor() { super(); this.buf = new Int16Array(${PCM_BATCH}); this.n = 0; }
      process(inputs) {
        const ch = inputs[0] && inputs[0][0];
        if (!ch) return true;
        for (let i = 0; i < ch.length; i++) {
          const s = Math.max(-1, Math.min(1, ch[i]));
          this.buf[this.n++] = s < 0 ? s * 32768 : s * 32767;
          if (this.n === this.buf.length) { this.port.postMessage(this.buf, [this.buf.buffer]);
            this.buf = new Int16Array(${PCM_BATCH}); this.n = 0; }
        }
        return true;
      }
    });`;
    const url = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
    try { await ctx.audioWorklet.addModule(url); } finally { URL.revokeObjectURL(url); }
    if (this.#mic?.ctx !== ctx) { ctx.close(); return; }
    const source = ctx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(ctx, "avatarcast-pcm");
    // A disabled track (push-to-talk released) sends nothing, as a muted WebRTC track sends silence.
    node.port.onmessage = (m) => { if (track.enabled && track.readyState === "live") this.sendPcm(m.data); };
    source.connect(node);
    this.#mic = { ctx, node, source };
    await ctx.resume().catch(() => {}); // without a user gesture yet it starts suspended: resumeAudio() later
  }

  #stopPcmCapture() {
    const m = this.#mic;
    this.#mic = null;
    if (!m) return;
    if (m.node) m.node.port.onmessage = null;
    if (m.source) m.source.disconnect();
    m.ctx.close().catch(() => {});
  }

  /** Resume audio capture from a user gesture (browsers start an AudioContext suspended without one). */
  async resumeAudio() {
    if (this.#mic && this.#mic.ctx.state !== "running") await this.#mic.ctx.resume();
  }

  // ---------------------------------------------------------------- commands

  #channel() {
    if (this.#dc && this.#dc.readyState === "open") return this.#dc;
    if (this.#ws && this.#ws.readyState === 1) return this.#ws;
    return null;
  }

  /** Send a JSON command (docs/protocol.md) on the open data channel or socket; false if none is open. */
  send(command) {
    const ch = this.#channel();
    if (!ch) return false;
    ch.send(JSON.stringify(command));
    return true;
  }

  /** The avatar reacts to this text (1..2000 characters). */
  async say(text) {
    if (this.send({ type: "say", text })) return;
    await this.#post(this.#sessionPath("say"), JSON.stringify({ text }), "application/json");
  }

  /** Show an emotion now (one of hello.emotions, not "listening"); intensity 0..1. */
  async emotion(label, intensity = 0.8) {
    if (this.send({ type: "emotion", label, intensity })) return;
    await this.#post(this.#sessionPath("emotion"), JSON.stringify({ label, intensity }), "application/json");
  }

  /** What the person speaks from now on: "auto" or a Whisper code ("en", "zh"...); a `language` event answers. */
  setLanguage(language) { return this.send({ type: "language", language }); }

  /** Push-to-talk released: close the utterance now rather than after the silence timeout. */
  audioEnd() { return this.send({ type: "audio_end" }); }

  /** Ask for a `pong` event with the session's info. */
  ping() { return this.send({ type: "ping" }); }

  /** Live audio: 16 kHz mono int16 samples (any length), sent as a b"PCM1" message. */
  sendPcm(samples) {
    const ch = this.#channel();
    if (!ch) return false;
    const body = new Uint8Array(4 + samples.byteLength);
    body.set(TAG_PCM, 0);
    body.set(new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength), 4);
    if (ch === this.#dc) ch.send(body); else ch.send(body.buffer);
    return true;
  }

  /** A recorded voice clip (wav, mp3, ogg/opus, webm, m4a, flac): the transcript and the emotion it gave. */
  async sendClip(clip, contentType) {
    const type = contentType || (clip && clip.type) || "application/octet-stream";
    const r = await this.#post(this.#sessionPath("clips"), clip, type);
    return r.json();
  }

  #sessionPath(what) {
    if (!this.#sessionId) throw new AvatarcastError("not_connected", "no session yet: connect() first");
    return `/v1/sessions/${encodeURIComponent(this.#sessionId)}/${what}`;
  }

  // ---------------------------------------------------------------- ending

  #ended(closeCode, reason) {
    if (this.#closed) return;
    this.#closed = true;
    this.#abort(new AvatarcastError("closed", "closed while connecting"));
    const transport = this.#transport;
    this.#dropWebRTC();
    this.#dropWebSocket();
    this.#setState("closed");
    this.#emit("close", { transport, closeCode, reason, byClient: false });
  }

  /** Hang up: the session ends too unless it was given as `session` (then only this connection does). */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#abort(new AvatarcastError("closed", "closed while connecting"));
    const transport = this.#transport;
    await this.#dropWebRTC();
    this.#dropWebSocket();
    if (this.#latest) { this.#latest.bitmap.close(); this.#latest = null; }
    this.#setState("closed");
    this.#emit("close", { transport, closeCode: 1000, reason: "closed by the client", byClient: true });
  }
}

/** Resolve once ICE gathering completes, or after timeoutMs (loopback/LAN candidates come at once). */
function waitIceGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); clearTimeout(timer); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** Resolve when the peer and its event channel are up; WebRTCUnavailable on failure or after timeoutMs. */
function waitConnected(pc, dc, timeoutMs, budgetMs) {
  return new Promise((resolve, reject) => {
    const finish = (err) => {
      pc.removeEventListener("connectionstatechange", check);
      dc.removeEventListener("open", check);
      clearTimeout(timer);
      if (err) reject(err); else resolve();
    };
    const check = () => {
      const s = pc.connectionState;
      if (s === "connected" && dc.readyState === "open") finish();
      else if (s === "failed" || s === "closed") finish(new WebRTCUnavailable(`WebRTC connection ${s}: no media path`));
    };
    const late = () => finish(new WebRTCUnavailable(`WebRTC not connected within ${budgetMs} ms`));
    const timer = setTimeout(late, timeoutMs);
    pc.addEventListener("connectionstatechange", check);
    dc.addEventListener("open", check);
    check();
  });
}

/** Make a client and connect it: `const client = await connect({ avatar: "pip" })`. */
export async function connect(options) {
  const client = new AvatarcastClient(options);
  await client.connect();
  return client;
}
