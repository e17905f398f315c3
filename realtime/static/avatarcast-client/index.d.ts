// Types of avatarcast-client (index.js). The wire format and the events: docs/protocol.md in the avatarcast repo.

export declare const VERSION: string;
/** What a frame shows, in wire order. */
export declare const FRAME_SOURCES: readonly FrameSource[];
export declare const FRAME_HEADER_BYTES: 28;

export type Transport = "webrtc" | "websocket";
export type TransportChoice = "auto" | Transport;
export type ConnectionState = "idle" | "connecting" | "live" | "interrupted" | "closed" | "failed";
export type FrameSource = "idle" | "listening" | "cache" | "sampler";
export type ImageFormat = "jpeg" | "webp";
export type SessionState = "idle" | "listening" | "thinking" | "reacting" | "closed";
export type EmotionSource = "asr" | "text" | "explicit";

export interface ClientOptions {
  /** The server, e.g. "https://avatar.example.com"; default: this page's origin. */
  baseUrl?: string | URL | null;
  /** A token of `avatarcast token` when the server runs with --auth-secret. */
  token?: string | null;
  /** Built-in name (pip, bun, tok, mo, luna, kiko), index, or random-<seed>. Default: the server's. */
  avatar?: string;
  /** What the person speaks: "auto" or a Whisper code ("en", "zh"...). */
  language?: string | null;
  /** Attach to this existing session (POST /v1/sessions) instead of opening one that ends with the connection. */
  session?: string | null;
  /** "auto" (default): WebRTC, then WebSocket frames if WebRTC does not connect within webrtcTimeoutMs. */
  transport?: TransportChoice;
  /** How long WebRTC may take to connect (ICE gathering, WHEP and ICE checks) before the fallback; default 5000. */
  webrtcTimeoutMs?: number;
  /** ICE servers to use; default: the server's (GET iceServersUrl), none when it has no such endpoint. */
  iceServers?: RTCIceServer[] | null;
  /** Where the server lists its ICE servers; null: do not ask. Default "/v1/ice-servers". */
  iceServersUrl?: string | null;
  /** "relay": TURN only. */
  iceTransportPolicy?: RTCIceTransportPolicy;
  /** The longest wait for ICE candidates before the offer goes out (non-trickle WHEP); default 2000. */
  iceGatherTimeoutMs?: number;
  /** WebSocket frames: "webp" (default) keeps alpha, "jpeg" is composited over the background. */
  imageFormat?: ImageFormat;
  /** WebSocket frames' image quality, 1..100. */
  quality?: number | null;
  /** The microphone: an audio track over WebRTC, b"PCM1" 16 kHz messages over WebSocket (only while enabled). */
  microphone?: MediaStream | null;
  /** How long the WebSocket may take to say hello; default 10000. */
  helloTimeoutMs?: number;
  /** X-Session-Id: routes every request of this client to the same gateway behind Ray Serve. Default: random. */
  affinityKey?: string | null;
}

/** The envelope of every server event. */
export interface ServerEvent<T extends string = string, P = Record<string, unknown>> {
  type: T;
  /** The server's monotonic time of the event, seconds. */
  t: number;
  seq: number;
  payload: P;
}

export interface HelloPayload {
  session: string;
  avatar: string;
  fps: number;
  width: number;
  height: number;
  image_format: ImageFormat | null;
  /** The frame header's emotion index refers to this list. */
  emotions: string[];
  language: string | null;
  [key: string]: unknown;
}

export interface StateChangedPayload {
  from: SessionState;
  to: SessionState;
  utterance: number | null;
  /** The first frame index that shows the new state. */
  from_frame: number;
  emotion?: string;
  [key: string]: unknown;
}

export interface TranscriptPartialPayload {
  text: string;
  utterance: number;
  language: string | null;
}

export interface TranscriptFinalPayload {
  text: string;
  utterance: number;
  /** speech, say or clip */
  source: string;
  language?: string | null;
}

export interface LanguagePayload {
  /** null: auto */
  language: string | null;
}

export interface EmotionPayload {
  label: string;
  intensity: number;
  confidence: number;
  scores: Record<string, number>;
  evidence: unknown[];
  source: EmotionSource;
  decided_by: string | null;
  utterance: number | null;
  applied: boolean;
  reason: string | null;
}

export interface LatencyPayload {
  utterance: number;
  kind: string;
  emotion: string;
  /** time to emotional reaction */
  tter_ms: number | null;
  /** time to first frame */
  ttff_ms: number | null;
  stages_ms?: Record<string, number | null>;
  [key: string]: unknown;
}

export interface FramesLatePayload {
  first: number;
  count: number;
  dropped_total: number;
}

export interface ClipResult {
  utterance: number;
  transcript: string;
  language: string | null;
  emotion: string;
  intensity: number;
  confidence: number;
  audio_s: number;
  stages_ms: Record<string, number>;
}

export interface SessionInfo {
  id: string;
  avatar: string;
  state: SessionState;
  emotion: string;
  image_format: string;
  language: string | null;
  frames_sent: number;
  frames_dropped: number;
  clients: number;
  age_s: number;
}

export interface PongPayload {
  info: SessionInfo;
}

/** A server `error` event (`code`: docs/protocol.md), or a client-side one (microphone_failed, frame_decode_failed). */
export interface ErrorPayload {
  code: string;
  message: string;
  fatal: boolean;
  [key: string]: unknown;
}

export interface ClosingPayload {
  reason: string;
}

/** The server's events by type (docs/protocol.md). */
export interface ServerEventPayloads {
  hello: HelloPayload;
  state_changed: StateChangedPayload;
  transcript_partial: TranscriptPartialPayload;
  transcript_final: TranscriptFinalPayload;
  language: LanguagePayload;
  emotion: EmotionPayload;
  latency: LatencyPayload;
  frames_late: FramesLatePayload;
  clip: ClipResult;
  pong: PongPayload;
  error: ErrorPayload;
  closing: ClosingPayload;
}

/** A WebSocket frame, decoded. The bitmap stays valid until the next frame arrives (then it is closed). */
export interface AvatarFrame {
  /** 640x360; webp frames keep the avatar's alpha (for canvas and AR compositing). */
  bitmap: ImageBitmap;
  index: number;
  /** Seconds since the stream began. */
  ptsS: number;
  /** The server's send time, unix seconds. */
  sentAt: number;
  imageFormat: ImageFormat;
  source: FrameSource;
  /** The emotion shown (from hello.emotions), null before hello. */
  emotion: string | null;
  /** performance.now() when it was decoded. */
  receivedAt: number;
}

export interface ParsedFrame {
  index: number;
  ptsS: number;
  sentAt: number;
  imageFormat: ImageFormat;
  source: FrameSource;
  emotionIndex: number;
  image: Uint8Array;
}

export interface TransportInfo {
  transport: Transport;
  /** Why WebRTC was given up, when the WebSocket is a fallback; null otherwise. */
  fallbackReason: string | null;
}

export interface ConnectionStateInfo {
  state: ConnectionState;
  transport: Transport | null;
}

export interface CloseInfo {
  transport: Transport | null;
  /** The WebSocket close code (1000, 1001, 1008, 1011, 1013...); null for WebRTC. */
  closeCode: number | null;
  reason: string;
  /** true when close() ended it. */
  byClient: boolean;
}

/** Listener arguments of every event the client emits. */
export type ClientEvents = {
  [K in keyof ServerEventPayloads]: [payload: ServerEventPayloads[K], event: ServerEvent<K, ServerEventPayloads[K]>];
} & {
  /** Every server event, as it came. */
  event: [event: ServerEvent];
  /** The transport in use, once connected. */
  transport: [info: TransportInfo];
  /** WebRTC was given up; the WebSocket is tried next. */
  fallback: [info: { reason: string }];
  connectionstate: [info: ConnectionStateInfo];
  /** WebRTC: the avatar's video (composited over the background) for a <video> element. */
  stream: [stream: MediaStream];
  /** WebSocket: each decoded frame (stale frames are skipped when decoding lags). */
  frame: [frame: AvatarFrame];
  /** The connection ended: by the server, the network, or close(). */
  close: [info: CloseInfo];
};

export type ClientEventName = keyof ClientEvents;

export declare class AvatarcastError extends Error {
  constructor(
    code: string,
    message: string,
    detail?: { status?: number | null; closeCode?: number | null; retryAfterS?: number | null },
  );
  /** A code of docs/protocol.md (busy, unauthorized, bad_avatar...) or http_<status>, transport_failed, closed... */
  readonly code: string;
  readonly status: number | null;
  readonly closeCode: number | null;
  /** Seconds to wait before trying again (503 and 429 answers). */
  readonly retryAfterS: number | null;
}

export declare class AvatarcastClient {
  constructor(options?: ClientOptions);
  readonly state: ConnectionState;
  readonly transport: Transport | null;
  readonly sessionId: string | null;
  /** WebRTC: the avatar's video stream. */
  readonly stream: MediaStream | null;
  readonly hello: HelloPayload | null;
  /** WebSocket: the newest decoded frame. */
  readonly latestFrame: AvatarFrame | null;
  framesReceived: number;
  framesDropped: number;

  /** Connect (WebRTC, else WebSocket frames under transport "auto"); rejects with an AvatarcastError. */
  connect(): Promise<{ transport: Transport; sessionId: string | null }>;
  close(): Promise<void>;

  on<K extends ClientEventName>(type: K, listener: (...args: ClientEvents[K]) => void): () => void;
  once<K extends ClientEventName>(type: K, listener: (...args: ClientEvents[K]) => void): () => void;
  off<K extends ClientEventName>(type: K, listener: (...args: ClientEvents[K]) => void): void;

  /** A raw JSON command on the open channel; false when none is open. */
  send(command: { type: string; [key: string]: unknown }): boolean;
  say(text: string): Promise<void>;
  emotion(label: string, intensity?: number): Promise<void>;
  setLanguage(language: string): boolean;
  audioEnd(): boolean;
  ping(): boolean;
  /** 16 kHz mono int16 samples. */
  sendPcm(samples: Int16Array): boolean;
  sendClip(clip: Blob | ArrayBuffer | ArrayBufferView, contentType?: string): Promise<ClipResult>;
  /** Call from a user gesture: the WebSocket microphone capture's AudioContext may start suspended. */
  resumeAudio(): Promise<void>;
}

export declare function connect(options?: ClientOptions): Promise<AvatarcastClient>;
export declare function parseFrame(data: ArrayBuffer | ArrayBufferView): ParsedFrame;
export declare function fetchIceServers(
  baseUrl: string | URL,
  options?: { token?: string | null; url?: string },
): Promise<RTCIceServer[]>;
