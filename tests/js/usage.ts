// Compile-time checks of avatarcast-client's types (tsc --strict; nothing here runs). Each @ts-expect-error
// marks a misuse the types must refuse: if they stop refusing it, tsc fails on the unused directive.
import {
  AvatarcastClient,
  AvatarcastError,
  connect,
  fetchIceServers,
  parseFrame,
  FRAME_SOURCES,
  type AvatarFrame,
  type ClientOptions,
  type Transport,
} from "avatarcast-client";

export async function typed(): Promise<Transport | null> {
  const options: ClientOptions = { avatar: "pip", transport: "auto", webrtcTimeoutMs: 3000, iceTransportPolicy: "all" };
  const client = new AvatarcastClient(options);
  const off = client.on("emotion", (p, ev) => {
    const label: string = p.label;
    const applied: boolean = p.applied;
    const seq: number = ev.seq;
    void [label, applied, seq];
  });
  off();
  client.on("latency", (p) => { const ms: number | null = p.tter_ms; void ms; });
  client.on("transcript_final", (p) => { const t: string = p.text; void t; });
  client.on("error", (p) => { const fatal: boolean = p.fatal; void fatal; });
  client.on("transport", ({ transport, fallbackReason }) => { void [transport, fallbackReason]; });
  client.on("frame", (f: AvatarFrame) => { const b: ImageBitmap = f.bitmap; void b; });
  client.on("stream", (s) => { const tracks: MediaStreamTrack[] = s.getVideoTracks(); void tracks; });
  client.on("close", (c) => { const code: number | null = c.closeCode; void code; });
  client.on("pong", (p) => { const id: string = p.info.id; void id; });

  // @ts-expect-error: no such event
  client.on("reaction", () => {});
  // @ts-expect-error: an emotion payload has no `text`
  client.on("emotion", (p) => p.text);
  // @ts-expect-error: transport is auto, webrtc or websocket
  new AvatarcastClient({ transport: "http" });
  // @ts-expect-error: the microphone is a MediaStream
  new AvatarcastClient({ microphone: true });

  const { transport, sessionId } = await client.connect();
  const sid: string | null = sessionId;
  void sid;
  await client.say("hello");
  await client.emotion("happy", 0.8);
  // @ts-expect-error: intensity is a number
  await client.emotion("happy", "high");
  const sent: boolean = client.sendPcm(new Int16Array(1600));
  void sent;
  const clip = await client.sendClip(new Blob([]));
  const heard: string = clip.transcript;
  void heard;
  const ice: RTCIceServer[] = await fetchIceServers("http://127.0.0.1:8080");
  void ice;
  const f = parseFrame(new ArrayBuffer(28));
  const src: "idle" | "listening" | "cache" | "sampler" = f.source;
  void [src, FRAME_SOURCES];
  try {
    await (await connect({ transport: "websocket" })).close();
  } catch (err) {
    if (err instanceof AvatarcastError) {
      const retry: number | null = err.retryAfterS;
      void retry;
    }
  }
  return transport;
}
