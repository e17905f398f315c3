"""`avatarcast bench latency`: end-to-end reaction latency, measured by a real WebSocket client.

    avatarcast bench latency --clips DIR [--url http://HOST:PORT] [--json] [--mode clip|stream]
        [--sessions N] [--repeat R] [--chart out.png] [--server-args "--steps 2 ..."]

Without --url it starts `python -m avatarcast.realtime.cli serve` on a free loopback port (server log in a
temporary file, shown on failure), waits for GET /readyz == 200 and stops the server at the end.

For every audio file in DIR (wav, mp3, ogg, opus, webm, m4a, flac) a client opens a session
(`/v1/ws?avatar=pip`), waits until frames flow (~1 s), then sends the clip:

- mode clip (default): one binary message b"CLIP" + the file's bytes. Origin: the send completed.
- mode stream: the clip decoded to 16 kHz mono int16 and sent as b"PCM1" chunks (--chunk-ms) paced
  by the wall clock, like a microphone, followed by --tail s of silence (--mic-open: silence for as
  long as the session stays open). Origin:
  the end of speech = when the last chunk above the energy threshold was sent. Also measured:
  listening_ms = speech onset chunk sent -> first "listening" frame received.

Measured at the client, on the frames it receives (sources idle/listening/cache/sampler):
  TTFF  origin -> first frame whose source is not idle (the listening pose counts as a reaction)
  TTER  origin -> first cache/sampler frame showing the emotion the server decided for the
        utterance (the "emotion" event's label; a decision of "idle" makes TTER = TTFF)
  first_reaction_ms  origin -> first cache/sampler frame of any emotion
and per session the intervals between received frames (p50/p99; 8 fps = 125 ms).
The server's own "latency" event gives the stage breakdown (decode, vad, asr, emotion, cache,
sample, encode, send; see realtime/session.py UtteranceTimeline). The breakdown printed and
charted splits the client's TTER into: decode, vad endpoint (stream mode: the server's speech-end
decision after its origin), asr, emotion, cache/sample (first chunk ready),
frame slot (waiting for the next 1/8 s frame), encode, and client gap (client TTER - server
TTER: in clip mode the upload/delivery; in stream mode also the offset between the client's
energy-based speech end and the server's origin, and whatever delays the server's end-of-speech
stamp, e.g. an audio backlog). With DIR/labels.csv or DIR/manifest.csv (columns file,emotion,text) the
emotion accuracy is reported too. The checkout's tests/data/speech/en and /zh are such folders (neural voices).

--json prints one JSON object (clips + summary + machine) to stdout; logs go to stderr.
--chart PNG draws each clip's breakdown as a stacked horizontal bar with TTFF/TTER marked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import logging
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("avatarcast.bench.latency")

REPO = Path(__file__).resolve().parents[2]  # the checkout, where tests/data/speech holds committed clips
AUDIO_EXTS = (".wav", ".mp3", ".ogg", ".opus", ".webm", ".m4a", ".flac")
SAMPLE_RATE = 16000
FRAME_S = 0.125
REACTION_SOURCES = ("cache", "sampler")
# chart/breakdown segments, in the order they happen
SEGMENTS = ("decode", "vad endpoint", "asr", "emotion", "cache/sample", "frame slot", "encode", "client gap")
SEGMENT_COLORS = {"decode": "#8c8c8c", "vad endpoint": "#76b7b2", "asr": "#4e79a7", "emotion": "#f28e2b", "cache/sample": "#59a14f",
                  "frame slot": "#edc948", "encode": "#b07aa1", "client gap": "#e15759"}


# --- inputs ----------------------------------------------------------------------------------


@dataclass
class Clip:
    path: Path
    name: str
    data: bytes
    pcm: np.ndarray  # 16 kHz mono int16
    duration_s: float
    expected: str | None = None
    text: str | None = None


def load_labels(folder: Path) -> dict[str, dict]:
    """file -> {emotion, text} from labels.csv (realtime/bench/clips.py) or manifest.csv (tools/make_speech.py)."""
    f = next((p for p in (folder / "labels.csv", folder / "manifest.csv") if p.is_file()), None)
    if f is None:
        return {}
    out = {}
    with open(f, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            name = (row.get("file") or "").strip()
            if name:
                out[name] = {"emotion": (row.get("emotion") or "").strip() or None, "text": row.get("text")}
    return out


def load_clips(folder: Path) -> list[Clip]:
    from avatarcast.realtime.audio import decode_audio

    if not folder.is_dir():
        raise FileNotFoundError(f"--clips {folder}: not a folder")
    labels = load_labels(folder)
    clips = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in AUDIO_EXTS or not p.is_file():
            continue
        data = p.read_bytes()
        pcm = decode_audio(data, truncate=True)
        pcm16 = (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype(np.int16)
        lab = labels.get(p.name, {})
        clips.append(Clip(p, p.name, data, pcm16, pcm.size / SAMPLE_RATE, lab.get("emotion"), lab.get("text")))
    if not clips:
        raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_EXTS)}) in {folder}")
    return clips


def speech_bounds(pcm: np.ndarray, chunk: int, rel_db: float = 35.0, floor_dbfs: float = -50.0) -> tuple[int, int]:
    """(first, last) chunk index whose RMS is within `rel_db` of the loudest chunk and above `floor_dbfs`."""
    n = max(1, math.ceil(pcm.size / chunk))
    x = np.zeros(n * chunk, np.float32)
    x[: pcm.size] = pcm.astype(np.float32) / 32768.0
    rms = np.sqrt((x.reshape(n, chunk) ** 2).mean(axis=1) + 1e-12)
    db = 20.0 * np.log10(rms)
    thr = max(float(db.max()) - rel_db, floor_dbfs)
    loud = np.flatnonzero(db >= thr)
    if loud.size == 0:
        return 0, n - 1
    return int(loud[0]), int(loud[-1])


# --- statistics ------------------------------------------------------------------------------


def pct(values: Sequence[float | None], q: float) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return round(float(np.percentile(v, q)), 1) if v else None


def dist(values: Sequence[float | None], qs: tuple[int, ...] = (50, 95)) -> dict:
    v = [x for x in values if x is not None]
    out: dict[str, Any] = {f"p{q}": pct(v, q) for q in qs}
    out["mean"] = round(float(np.mean(v)), 1) if v else None
    out["max"] = round(float(np.max(v)), 1) if v else None
    out["n"] = len(v)
    return out


def interval_stats(intervals_s: list[float]) -> dict:
    ms = [x * 1000.0 for x in intervals_s]
    d = dist(ms, (50, 95, 99))
    d["over_160ms"] = int(sum(1 for x in ms if x > 160.0))
    return d


# --- one session / one clip ------------------------------------------------------------------


class Conn:
    """One WebSocket session: every frame (recv time, index, source, emotion) and event, as they arrive."""

    def __init__(self, ws: Any, intervals: list[float]) -> None:
        self.ws = ws
        self.frames: list[tuple[float, int, str, str]] = []
        self.events: list[tuple[float, dict]] = []
        self.intervals = intervals  # this session slot's frame intervals (shared over its clips)
        self.changed = asyncio.Event()
        self.closed = False
        self.close_reason = ""

    async def receive(self) -> None:
        from avatarcast.realtime.protocol import unpack_frame

        try:
            async for msg in self.ws:
                now = time.monotonic()
                if isinstance(msg, (bytes, bytearray)):
                    try:
                        h, _ = unpack_frame(msg)
                    except ValueError:
                        continue
                    if self.frames:
                        self.intervals.append(now - self.frames[-1][0])
                    self.frames.append((now, h.index, h.source, h.emotion))
                else:
                    try:
                        self.events.append((now, json.loads(msg)))
                    except ValueError:
                        continue
                self.changed.set()
        except Exception as exc:  # connection closed or broken
            self.close_reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.closed = True
            self.changed.set()

    def of_type(self, kind: str, after: float = -math.inf) -> list[tuple[float, dict]]:
        return [(t, e) for t, e in self.events if e.get("type") == kind and t >= after]


def ws_url(base: str, avatar: str) -> str:
    b = base.rstrip("/")
    if b.startswith("http://"):
        b = "ws://" + b[len("http://"):]
    elif b.startswith("https://"):
        b = "wss://" + b[len("https://"):]
    elif not b.startswith(("ws://", "wss://")):
        b = "ws://" + b
    return f"{b}/v1/ws?avatar={avatar}"


async def _wait(conn: Conn, timeout: float) -> None:
    conn.changed.clear()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(conn.changed.wait(), timeout)


@dataclass
class Sent:
    """Client-side send times (monotonic) of one clip."""

    started: float | None = None
    origin: float | None = None  # clip mode: CLIP message sent; stream: last speech chunk sent
    onset: float | None = None  # stream: first speech chunk sent
    speech_done: asyncio.Event = field(default_factory=asyncio.Event)


async def stream_pcm(conn: Conn, clip: Clip, sent: Sent, chunk_ms: int, tail_s: float, stop: asyncio.Event,
                     keep_open: bool = False) -> None:
    """Send the clip as paced PCM1 chunks, then tail_s of silence (with keep_open: silence until `stop`)."""
    from avatarcast.realtime.protocol import TAG_PCM

    chunk = int(SAMPLE_RATE * chunk_ms / 1000)
    first, last = speech_bounds(clip.pcm, chunk)
    n = max(1, math.ceil(clip.pcm.size / chunk))
    silence = TAG_PCM + np.zeros(chunk, "<i2").tobytes()
    t0 = time.monotonic()
    sent.started = t0
    k = 0
    while True:
        due = t0 + k * chunk / SAMPLE_RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if k < n:
            body = clip.pcm[k * chunk:(k + 1) * chunk]
            if body.size < chunk:
                body = np.pad(body, (0, chunk - body.size))
            await conn.ws.send(TAG_PCM + body.astype("<i2").tobytes())
        else:
            if (stop.is_set() or not keep_open) and (k - n) * chunk >= tail_s * SAMPLE_RATE:
                return
            await conn.ws.send(silence)
        now = time.monotonic()
        if k == first:
            sent.onset = now
        if k == last:
            sent.origin = now
            sent.speech_done.set()
        k += 1


def _latency_for(conn: Conn, kinds: tuple[str, ...], after: float) -> tuple[dict | None, list[dict]]:
    """The server latency payload for this clip's (last) utterance, and the utterances' finals."""
    finals = [e["payload"] for t, e in conn.of_type("transcript_final") if e["payload"].get("source") in kinds]
    late = [e["payload"] for t, e in conn.of_type("transcript_final", after) if e["payload"].get("source") in kinds]
    if not late:
        return None, finals
    u = max(p.get("utterance", -1) for p in late)
    for _, e in conn.of_type("latency"):
        p = e["payload"]
        if p.get("utterance") == u and p.get("kind") in kinds:
            return p, finals
    return None, finals


def _decided(conn: Conn, latency: dict | None, utterance: int | None) -> tuple[str | None, float | None]:
    """(label, recv time of its emotion event): the latency event's label, else the last applied cue."""
    best = None
    for t, e in conn.of_type("emotion"):
        p = e["payload"]
        if utterance is not None and p.get("utterance") != utterance:
            continue
        if p.get("applied"):
            best = (p.get("label"), t)
    if latency is not None and latency.get("emotion"):
        label = latency["emotion"]
        ts = [t for t, e in conn.of_type("emotion") if e["payload"].get("label") == label and e["payload"].get("applied")
              and (utterance is None or e["payload"].get("utterance") == utterance)]
        return label, (ts[-1] if ts else None)
    return best if best is not None else (None, None)


def client_times(frames: list[tuple[float, int, str, str]], origin: float, decided: str | None,
                 decided_at: float | None, onset: float | None) -> dict:
    after = [f for f in frames if f[0] >= origin]
    ttff = next((f for f in after if f[2] != "idle"), None)
    reaction = next((f for f in after if f[2] in REACTION_SOURCES), None)
    if decided == "idle":
        if ttff is None and decided_at is not None:
            ttff = next((f for f in after if f[0] >= decided_at), None)
        tter = ttff
    else:
        tter = next((f for f in after if f[2] in REACTION_SOURCES and f[3] == decided), None)
    listening = None
    if onset is not None:
        listening = next((f for f in frames if f[0] >= onset and f[2] == "listening"), None)

    def ms(f: tuple | None, t0: float | None) -> float | None:
        return None if f is None or t0 is None else round((f[0] - t0) * 1000.0, 1)

    return {"ttff_ms": ms(ttff, origin), "tter_ms": ms(tter, origin), "first_reaction_ms": ms(reaction, origin),
            "ttff_source": None if ttff is None else ttff[2],
            "first_reaction_emotion": None if reaction is None else reaction[3], "listening_ms": ms(listening, onset)}


def breakdown(server: dict | None, client_tter_ms: float | None) -> dict[str, float] | None:
    """Client TTER split into SEGMENTS from the server's latency payload (at_ms + stages_ms).

    Stages are taken in the order they ended; a stage that ended after the server's TTER frame (a
    final transcript that only confirmed an early decision from a partial) is not on the path.
    """
    if not server or client_tter_ms is None or not server.get("at_ms"):
        return None
    at, dur = server["at_ms"], server.get("stages_ms", {})
    groups = {"decode": "decode", "vad": "vad endpoint", "asr": "asr", "emotion": "emotion", "cache": "cache/sample",
              "sample": "cache/sample", "decode_frames": "cache/sample", "send": "encode"}
    server_tter = server.get("tter_ms")
    limit = float(server_tter) if server_tter is not None else math.inf
    seg = {k: 0.0 for k in SEGMENTS}
    prev = 0.0
    # ties (a clip's implied end of speech is stamped when its ASR ends) go to the stage that did the work
    order = ("decode", "asr", "vad", "emotion", "cache", "sample", "decode_frames", "encode", "send")
    ends = sorted((float(v), order.index(k), k) for k, v in at.items() if k in order)
    for end, _, stage in ends:
        end = min(end, limit)
        if end <= prev:
            continue
        if stage == "encode":
            enc = float(dur.get("encode", 0.0))
            seg["frame slot"] += max(0.0, end - enc - prev)
            seg["encode"] += min(enc, end - prev)
        else:
            seg[groups[stage]] += end - prev
        prev = end
    if server_tter is not None:
        seg["frame slot"] += max(0.0, limit - prev)
        seg["client gap"] = float(client_tter_ms) - limit
    return {k: round(v, 1) for k, v in seg.items()}


async def measure_clip(base_url: str, clip: Clip, args: argparse.Namespace, slot: int,
                       intervals: list[float], jitter: float = 0.0) -> dict:
    from websockets.asyncio.client import connect

    from avatarcast.realtime.protocol import TAG_CLIP

    row: dict[str, Any] = {"file": clip.name, "session": slot, "duration_s": round(clip.duration_s, 2),
                           "expected": clip.expected, "transcript": None,
                           "language": None, "emotion": None, "correct": None,
                           "ttff_ms": None, "tter_ms": None, "first_reaction_ms": None, "first_reaction_emotion": None, "ttff_source": None,
                           "listening_ms": None, "onset_event_ms": None, "endpoint_ms": None, "final_ms": None, "decision_ms": None, "server": None, "clip_stages_ms": None, "breakdown_ms": None,
                           "frames_late": 0, "frames": 0, "error": None}
    kinds = ("clip",) if args.mode == "clip" else ("speech",)
    t_start = time.monotonic()
    try:
        ws = await connect(ws_url(base_url, args.avatar), max_size=None, open_timeout=30, close_timeout=2)
    except Exception as exc:
        row["error"] = f"connect failed: {type(exc).__name__}: {exc}"
        return row
    conn = Conn(ws, intervals)
    rx = asyncio.create_task(conn.receive())
    stop = asyncio.Event()
    sender: asyncio.Task | None = None
    sent = Sent()
    try:
        # 1. frames flow
        deadline = time.monotonic() + 15.0
        while not conn.frames and not conn.closed and time.monotonic() < deadline:
            await _wait(conn, 0.5)
        if not conn.frames:
            raise RuntimeError(f"no frames within 15 s of connecting {conn.close_reason}".strip())
        # a random phase against the 8 fps frame clock, so frame-slot waits are sampled fairly
        await asyncio.sleep(max(0.0, conn.frames[0][0] + args.warmup + jitter - time.monotonic()))
        # 2. send
        if args.mode == "clip":
            sent.started = time.monotonic()
            await ws.send(TAG_CLIP + clip.data)
            sent.origin = time.monotonic()
        else:
            sender = asyncio.create_task(stream_pcm(conn, clip, sent, args.chunk_ms, args.tail, stop, args.mic_open))
            done, _ = await asyncio.wait({sender, asyncio.ensure_future(sent.speech_done.wait())},
                                         timeout=clip.duration_s + 10, return_when=asyncio.FIRST_COMPLETED)
            if sender in done and sender.exception() is not None:
                raise sender.exception()  # type: ignore[misc]
            if sent.origin is None:
                raise RuntimeError("the stream did not reach the end of speech")
        origin = sent.origin
        # 3. wait for the decision, the server's latency event and the emotion's first frame
        deadline = origin + args.timeout
        latency, utterance, decided, decided_at = None, None, None, None
        ended_at = None
        while True:
            errors = [e["payload"] for t, e in conn.of_type("error", sent.started or origin)]
            fatal = [p for p in errors if p.get("fatal") or p.get("code") in ("bad_audio", "clip_failed", "no_cue")]
            if fatal:
                raise RuntimeError(f"server error {fatal[0].get('code')}: {fatal[0].get('message')}")
            latency, _ = _latency_for(conn, kinds, origin if args.mode == "stream" else -math.inf)
            if latency is not None:
                utterance = latency.get("utterance")
                decided, decided_at = _decided(conn, latency, utterance)
                times = client_times(conn.frames, origin, decided, decided_at, sent.onset)
                if times["tter_ms"] is not None or decided is None:
                    break
            if conn.closed:
                raise RuntimeError(f"the server closed the session {conn.close_reason}".strip())
            if time.monotonic() > deadline:
                raise TimeoutError(f"no latency event and emotion frame within {args.timeout:g} s")
            await _wait(conn, 0.25)
        # 4. linger while the reaction plays (frame pacing under load), until back to idle
        linger_end = time.monotonic() + args.linger
        while time.monotonic() < linger_end and not conn.closed:
            idle = [t for t, e in conn.of_type("state_changed", origin) if e["payload"].get("to") == "idle"]
            if idle:
                ended_at = idle[0]
                break
            await _wait(conn, 0.25)
        # 5. results
        finals = {e["payload"].get("utterance"): e["payload"].get("text", "")
                  for t, e in conn.of_type("transcript_final") if e["payload"].get("source") in kinds}
        clip_ev = [e["payload"] for t, e in conn.of_type("clip")]
        langs = [e["payload"].get("language") for t, e in conn.of_type("transcript_final")
                 if e["payload"].get("source") in kinds and e["payload"].get("text")]
        row["language"] = langs[-1] if langs else None  # what ASR heard (the server detects it unless told)
        if args.mode == "clip" and clip_ev:
            row["transcript"] = clip_ev[-1].get("transcript")
            row["clip_stages_ms"] = clip_ev[-1].get("stages_ms")
        else:
            row["transcript"] = " ".join(t.strip() for u, t in sorted(finals.items(), key=lambda kv: kv[0]) if t)
        row["emotion"] = decided
        row.update(client_times(conn.frames, origin, decided, decided_at, sent.onset))
        t_final = next((t for t, e in conn.of_type("transcript_final")
                        if e["payload"].get("utterance") == utterance and e["payload"].get("source") in kinds), None)
        row["final_ms"] = None if t_final is None else round((t_final - origin) * 1000.0, 1)
        row["decision_ms"] = None if decided_at is None else round((decided_at - origin) * 1000.0, 1)
        if args.mode == "stream":  # the server's end-of-speech decision, as the client sees it
            t_end = next((t for t, e in conn.of_type("state_changed", sent.onset or origin)
                          if e["payload"].get("from") == "listening"), None)
            row["endpoint_ms"] = None if t_end is None else round((t_end - origin) * 1000.0, 1)
            t_on = next((t for t, e in conn.of_type("state_changed", sent.onset or origin)
                         if e["payload"].get("to") == "listening"), None)
            row["onset_event_ms"] = None if t_on is None or sent.onset is None else round((t_on - sent.onset) * 1000.0, 1)
        row["server"] = {k: latency.get(k) for k in ("utterance", "kind", "ttff_ms", "tter_ms", "decided_by",
                                                   "first_decided_by", "first_frame_source", "stages_ms",
                                                   "at_ms")} if latency else None
        # an "idle" decision has no emotion frame: its TTER is its TTFF, which a stage breakdown cannot explain
        row["breakdown_ms"] = breakdown(latency, row["tter_ms"]) if decided != "idle" else None
        if clip.expected:
            row["correct"] = decided == clip.expected
        row["reaction_s"] = None if ended_at is None else round(ended_at - origin, 2)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        log.warning("%s: %s", clip.name, row["error"])
    finally:
        stop.set()
        if sender is not None:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(sender, args.tail + 2.0)
            sender.cancel()
        row["frames"] = len(conn.frames)
        row["frames_late"] = sum(int(e["payload"].get("count", 0)) for t, e in conn.of_type("frames_late"))
        codes: dict[str, int] = {}
        for _, e in conn.of_type("error"):
            c = str(e["payload"].get("code"))
            codes[c] = codes.get(c, 0) + 1
        row["server_errors"] = codes
        row["wall_s"] = round(time.monotonic() - t_start, 2)
        with contextlib.suppress(Exception):
            await ws.close()
        rx.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await rx
    return row


@dataclass
class ServerRun:
    """What one benchmark run against a server gives its report."""

    base: str
    started: bool  # we started the server (no --url)
    ready_s: float | None
    result: Any  # what the work returned
    wall_s: float
    host_cpu: Any  # CpuMonitor.result
    status: Any  # the server's /v1/status at the end


def run_on_server(args: argparse.Namespace, work) -> ServerRun:
    """Attach to --url's server or start `avatarcast serve`, run `await work(base)` under the CPU
    monitor, read the server's status, and stop the server we started. RuntimeError says what failed."""
    server: ServerProcess | None = None
    try:
        if args.url:
            base = args.url.rstrip("/")
            wait_ready(base, args.ready_timeout)
        else:
            server = ServerProcess(shlex.split(args.server_args), args.ready_timeout)
            server.start()
            base = server.url
        t0 = time.monotonic()
        with CpuMonitor(server.proc.pid if server is not None and server.proc is not None else None) as cpu:
            result = asyncio.run(work(base))
        wall = time.monotonic() - t0
        return ServerRun(base, server is not None, None if server is None else server.ready_s, result, wall,
                         cpu.result, server_status(base))
    finally:
        if server is not None:
            server.stop()


async def run_all(base_url: str, clips: list[Clip], args: argparse.Namespace) -> tuple[list[dict], list[list[float]]]:
    queue: asyncio.Queue[tuple[int, int, Clip, float]] = asyncio.Queue()
    rng = np.random.default_rng(args.seed)
    for r in range(args.repeat):
        for i, c in enumerate(clips):
            queue.put_nowait((r, i, c, float(rng.uniform(0.0, FRAME_S))))
    total = queue.qsize()
    rows: list[tuple[int, int, dict]] = []
    intervals: list[list[float]] = [[] for _ in range(args.sessions)]

    async def worker(slot: int) -> None:
        await asyncio.sleep(slot * args.stagger)
        while True:
            try:
                r, i, clip, jitter = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            row = await measure_clip(base_url, clip, args, slot, intervals[slot], jitter)
            row["run"] = r
            rows.append((r, i, row))
            log.info("[%d/%d] session %d %s: %s -> %s (expected %s)  TTFF %s ms  TTER %s ms%s", len(rows), total,
                     slot, clip.name, row.get("transcript"), row.get("emotion"), clip.expected,
                     row.get("ttff_ms"), row.get("tter_ms"), f"  ERROR {row['error']}" if row.get("error") else "")

    await asyncio.gather(*(worker(s) for s in range(args.sessions)))
    rows.sort(key=lambda x: (x[0], x[1]))
    return [r for _, _, r in rows], intervals


# --- server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float) -> tuple[int, str]:
    """(status, body) of a GET; OSError when nothing answers. The standard library's client: the benchmarks
    run after the plain install, which has no HTTP client package (httpx is a dev dependency)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:  # 4xx/5xx: still an answer
        return exc.code, exc.read().decode("utf-8", "replace")


class ServerProcess:
    """`python -m avatarcast.realtime.cli serve --port P ...` as a child; log in a temporary file."""

    def __init__(self, extra_args: list[str], ready_timeout: float = 180.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = extra_args
        self.ready_timeout = ready_timeout
        self.log = tempfile.NamedTemporaryFile(prefix="avatarcast-bench-server-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "avatarcast.realtime.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if "--log-level" not in self.extra:
            cmd += ["--log-level", "warning"]
        cmd += self.extra
        log.info("starting server: %s (log %s)", " ".join(cmd), self.log.name)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}:\n{self.tail()}")
            try:
                status, text = http_get(self.url + "/readyz", timeout=2.0)
                if status == 200:
                    break
                if status == 503 and "start_failed" in text:
                    raise RuntimeError(f"the server failed to start: {text}\n{self.tail()}")
            except OSError:
                pass
            if time.monotonic() - t0 > self.ready_timeout:
                raise RuntimeError(f"the server was not ready after {self.ready_timeout:g} s:\n{self.tail()}")
            time.sleep(0.25)
        self.ready_s = round(time.monotonic() - t0, 2)
        log.info("server ready at %s after %.1f s", self.url, self.ready_s)

    def tail(self, n: int = 30) -> str:
        try:
            self.log.flush()
            lines = Path(self.log.name).read_text(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.log.close()


def server_status(base_url: str) -> dict | None:
    try:
        status, text = http_get(base_url.rstrip("/") + "/v1/status", timeout=5.0)
        return json.loads(text) if status == 200 else None
    except Exception:
        return None


def wait_ready(base_url: str, timeout: float) -> None:
    t0 = time.monotonic()
    while True:
        try:
            if http_get(base_url.rstrip("/") + "/readyz", timeout=2.0)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{base_url}/readyz did not answer 200 within {timeout:g} s")
        time.sleep(0.5)


class CpuMonitor:
    """Machine-wide CPU use during the run (from /proc), split into bench client, server and others.

    The machine may be shared: other processes' load makes the latency numbers noisy, so it is
    reported next to them (in cores: 1.0 = one CPU fully busy on average over the run)."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid

    @staticmethod
    def _jiffies() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            idle = v[3] + v[4]
            return sum(v) - idle, sum(v)
        except (OSError, ValueError, IndexError):
            return None

    def _server_ticks(self) -> int | None:
        if self.server_pid is None:
            return None
        try:
            with open(f"/proc/{self.server_pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            return int(parts[11]) + int(parts[12])  # utime + stime (fields 14, 15)
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> CpuMonitor:
        self.j0, self.t0, self.w0, self.s0 = self._jiffies(), os.times(), time.monotonic(), self._server_ticks()
        self.load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
        self.result: dict = {}
        return self

    def __exit__(self, *exc: Any) -> None:
        j1, t1, wall, s1 = self._jiffies(), os.times(), time.monotonic() - self.w0, self._server_ticks()
        ncpu = os.cpu_count() or 1
        r: dict[str, Any] = {"wall_s": round(wall, 1)}
        if self.load0 is not None:
            r["loadavg_1m_start"] = round(self.load0[0], 2)
            r["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
        bench = ((t1.user - self.t0.user) + (t1.system - self.t0.system)) / max(wall, 1e-9)
        r["bench_cores"] = round(bench, 2)
        server = None
        if self.s0 is not None and s1 is not None:
            server = (s1 - self.s0) / os.sysconf("SC_CLK_TCK") / max(wall, 1e-9)
            r["server_cores"] = round(server, 2)
        if self.j0 is not None and j1 is not None and j1[1] > self.j0[1]:
            busy = (j1[0] - self.j0[0]) / (j1[1] - self.j0[1]) * ncpu
            r["busy_cores"] = round(busy, 2)
            if server is not None:
                r["other_cores"] = round(max(0.0, busy - bench - server), 2)
        self.result = r


# --- report ------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        from avatarcast.engines.backends import cpu_name
        cpu = cpu_name() or cpu
    except Exception:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {"cpu_count": os.cpu_count(), "usable_cpus": affinity, "cpu": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "hostname": platform.node()}


def summarize(rows: list[dict], intervals: list[list[float]], mode: str) -> dict:
    ok = [r for r in rows if not r.get("error")]
    labelled = [r for r in ok if r.get("expected")]
    correct = sum(1 for r in labelled if r.get("correct"))
    s: dict[str, Any] = {
        "clips": len(rows), "measured": len(ok), "errors": len(rows) - len(ok),
        "ttff_ms": dist([r["ttff_ms"] for r in ok]),
        "tter_ms": dist([r["tter_ms"] for r in ok]),
        "tter_ms_reactions": dist([r["tter_ms"] for r in ok if r.get("emotion") not in (None, "idle")]),
        "first_reaction_ms": dist([r["first_reaction_ms"] for r in ok]),
        "final_ms": dist([r.get("final_ms") for r in ok]),
        "decision_ms": dist([r.get("decision_ms") for r in ok]),
        "server_ttff_ms": dist([(r["server"] or {}).get("ttff_ms") for r in ok]),
        "server_tter_ms": dist([(r["server"] or {}).get("tter_ms") for r in ok]),
        "accuracy": {"labelled": len(labelled), "correct": correct,
                     "accuracy": round(correct / len(labelled), 3) if labelled else None},
        "breakdown_ms_p50": {k: pct([(r.get("breakdown_ms") or {}).get(k) for r in ok if r.get("breakdown_ms")], 50)
                             for k in SEGMENTS},
        "breakdown_ms_mean": {k: (round(float(np.mean(v)), 1) if v else None) for k in SEGMENTS
                              for v in [[r["breakdown_ms"][k] for r in ok if r.get("breakdown_ms")]]},
        "frame_interval_ms": {"overall": interval_stats([x for iv in intervals for x in iv]),
                              "per_session": [interval_stats(iv) for iv in intervals]},
        "frames_late": int(sum(r.get("frames_late", 0) for r in rows)),
        "server_errors": {c: sum((r.get("server_errors") or {}).get(c, 0) for r in rows)
                          for c in sorted({c for r in rows for c in (r.get("server_errors") or {})})},
    }
    if mode == "stream":
        s["listening_ms"] = dist([r["listening_ms"] for r in ok])
        s["endpoint_ms"] = dist([r.get("endpoint_ms") for r in ok])
        s["onset_event_ms"] = dist([r.get("onset_event_ms") for r in ok])
        s["first_decided_by"] = {k: sum(1 for r in ok if (r.get("server") or {}).get("first_decided_by") == k)
                                 for k in ("partial", "final")}
    return s


def _f(x: Any, nd: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def format_report(report: dict) -> str:
    rows, s = report["clips"], report["summary"]
    stream = report["mode"] == "stream"
    out = []
    head = (f"{'file':<18} {'dur':>4} {'transcript':<36} {'emotion (expected)':<22} {'TTFF':>6} {'TTER':>6}"
            + (f" {'listen':>6}" if stream else "") + "  stages ms (server)")
    out.append(head)
    out.append("-" * len(head))
    for r in rows:
        emo = f"{r['emotion'] or '-'} ({r['expected'] or '?'})"
        if r.get("correct") is False:
            emo += " x"
        tr = (r.get("transcript") or "")
        tr = tr if len(tr) <= 36 else tr[:33] + "..."
        b = r.get("breakdown_ms") or {}
        stages = " ".join(f"{k.split('/')[0]} {v:.0f}" for k, v in b.items() if v) if b else ""
        if r.get("error"):
            stages = f"ERROR {r['error']}"
        out.append(f"{r['file'][:18]:<18} {r['duration_s']:>4.1f} {tr:<36} {emo:<22} {_f(r['ttff_ms']):>6} "
                   f"{_f(r['tter_ms']):>6}" + (f" {_f(r['listening_ms']):>6}" if stream else "") + f"  {stages}")
    out.append("")
    m = report["machine"]
    out.append(f"mode {report['mode']}" + (f" ({report['chunk_ms']} ms chunks{', mic open' if report.get('mic_open') else ''})" if report.get("chunk_ms") else "") + f", {report['sessions']} session(s), repeat {report['repeat']}, "
               f"server {report['server_url']}{' (started by the bench)' if report.get('server_started') else ''}")
    out.append(f"machine: {m['cpu_count']} CPUs ({m['usable_cpus']} usable), {m['cpu']}, {m['platform']}")
    hc = report.get("host_cpu") or {}
    if hc:
        out.append("CPU during the run (cores busy): " + ", ".join(
            f"{k.replace('_cores', '')} {v}" for k, v in hc.items() if k.endswith("_cores"))
            + (f"; load average {hc.get('loadavg_1m_start')} -> {hc.get('loadavg_1m_end')}" if "loadavg_1m_end" in hc else ""))
    out.append(f"clips: {s['clips']} ({s['errors']} errors)")
    for key, name in (("ttff_ms", "TTFF"), ("tter_ms", "TTER"), ("tter_ms_reactions", "TTER, non-idle only"),
                      ("first_reaction_ms", "first reaction frame"),
                      ("endpoint_ms", "server end of speech"), ("final_ms", "final transcript event"),
                      ("server_tter_ms", "server-side TTER"), ("listening_ms", "onset -> listening"),
                      ("onset_event_ms", "onset -> listening ev")):
        if key in s:
            d = s[key]
            out.append(f"{name:<22} p50 {_f(d['p50'])} ms  p95 {_f(d['p95'])} ms  max {_f(d['max'])} ms  (n={d['n']})")
    if "first_decided_by" in s:
        fd = s["first_decided_by"]
        out.append(f"{'first decided by':<22} partial transcript {fd['partial']}, final {fd['final']}")
    a = s["accuracy"]
    if a["labelled"]:
        out.append(f"{'emotion accuracy':<22} {a['correct']}/{a['labelled']} = {a['accuracy'] * 100:.0f}%")
    bd = s["breakdown_ms_p50"]
    out.append("TTER breakdown p50 ms: " + ", ".join(f"{k} {_f(v)}" for k, v in bd.items()))
    fi = s["frame_interval_ms"]
    o = fi["overall"]
    out.append(f"frame interval: p50 {_f(o['p50'])} ms  p99 {_f(o['p99'])} ms  max {_f(o['max'])} ms  "
               f">160 ms: {o['over_160ms']}/{o['n']}  (server frames_late: {s['frames_late']})")
    for i, d in enumerate(fi["per_session"]):
        out.append(f"  session {i}: p50 {_f(d['p50'])} ms  p99 {_f(d['p99'])} ms  max {_f(d['max'])} ms  (n={d['n']})")
    if s.get("server_errors"):
        out.append("server error events: " + ", ".join(f"{k} {v}" for k, v in s["server_errors"].items()))
    st = (report.get("server_status") or {}).get("stats")
    if st:
        out.append("server stats: " + ", ".join(f"{k} {v}" for k, v in sorted(st.items())))
    return "\n".join(out)


def write_chart(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["clips"] if r.get("breakdown_ms")]
    n = max(1, len(rows))
    height = 2.0 + 0.3 * n
    fig, ax = plt.subplots(figsize=(11, height))
    labels = []
    for y, r in enumerate(rows):
        b = r["breakdown_ms"]
        order = [k for k in SEGMENTS if k != "client gap"]
        # in stream mode the gap (VAD endpoint) comes before the server's origin; in clip mode after
        order = (["client gap"] + order) if report["mode"] == "stream" else (order + ["client gap"])
        left = 0.0
        for k in order:
            v = b.get(k) or 0.0
            if v > 0:
                ax.barh(y, v, left=left, color=SEGMENT_COLORS[k], edgecolor="none", height=0.7)
                left += v
        ax.plot([r["tter_ms"]], [y], marker="|", color="black", markersize=14, markeredgewidth=2)
        ax.annotate(f" {r['tter_ms']:.0f}", (max(left, r["tter_ms"]), y), va="center", fontsize=7)
        if r.get("ttff_ms") is not None:
            ax.plot([r["ttff_ms"]], [y], marker="o", color="black", markersize=4, fillstyle="none")
        mark = "" if r.get("correct") is not False else " (x)"
        labels.append(f"{r['file']} {r.get('emotion') or '-'}{mark}")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms from " + ("end of speech (client)" if report["mode"] == "stream" else "clip sent (client)"))
    s = report["summary"]
    ax.set_title(f"avatarcast latency ({report['mode']} mode, {report['sessions']} session(s)): TTER p50 "
                 f"{_f(s['tter_ms']['p50'])} ms, p95 {_f(s['tter_ms']['p95'])} ms", fontsize=10)
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    gap_name = ("client gap (client's speech end -> server's origin, e.g. audio backlog; delivery)"
                if report["mode"] == "stream" else "client gap (upload/delivery)")
    handles: list[Artist] = [Patch(color=SEGMENT_COLORS[k], label=gap_name if k == "client gap" else k) for k in SEGMENTS]
    handles += [Line2D([], [], marker="|", color="black", linestyle="none", markersize=10, label="TTER (client)"),
                Line2D([], [], marker="o", color="black", linestyle="none", fillstyle="none", label="TTFF (client)")]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=5, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.06)
    fig.tight_layout(rect=(0, 0.55 / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="avatarcast bench latency", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", required=True, help="folder of audio files (+ optional labels.csv: file,emotion,text)")
    ap.add_argument("--url", default=None, help="a running server (http://host:port); default: start one")
    ap.add_argument("--json", action="store_true", help="print one JSON object to stdout instead of the table")
    ap.add_argument("--mode", choices=("clip", "stream"), default="clip",
                    help="clip: one CLIP upload; stream: real-time PCM1 chunks like a microphone")
    ap.add_argument("--sessions", type=int, default=1, help="concurrent sessions; clips are spread over them")
    ap.add_argument("--repeat", type=int, default=1, help="run the clip set this many times")
    ap.add_argument("--chart", default=None, help="write a stacked bar chart of each clip's TTER breakdown (PNG)")
    ap.add_argument("--server-args", default="", help="extra `avatarcast serve` flags for the server the bench starts")
    ap.add_argument("--avatar", default="pip")
    ap.add_argument("--chunk-ms", type=int, default=20, help="stream mode: PCM1 chunk length (20-40 ms)")
    ap.add_argument("--tail", type=float, default=1.0, help="stream mode: seconds of silence sent after the clip")
    ap.add_argument("--mic-open", action="store_true",
                    help="stream mode: after the tail keep sending silence until the clip's measurement ends, "
                         "like an open microphone")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of frames before the clip is sent")
    ap.add_argument("--linger", type=float, default=8.0,
                    help="after TTER, stay connected until the reaction ends (back to idle), at most this long")
    ap.add_argument("--timeout", type=float, default=30.0, help="per clip: give up this long after the origin")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random send phase against the frame clock")
    ap.add_argument("--stagger", type=float, default=0.3, help="seconds between the sessions' starts")
    ap.add_argument("--ready-timeout", type=float, default=180.0, help="how long to wait for /readyz")
    return ap


def setup_logging() -> None:
    """Progress lines on stderr (stdout may hold the JSON report); client libraries kept quiet."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("matplotlib", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    if args.sessions < 1 or args.repeat < 1:
        ap.error("--sessions and --repeat must be >= 1")
    if not 10 <= args.chunk_ms <= 100:
        ap.error("--chunk-ms must be 10..100")
    try:
        clips = load_clips(Path(args.clips))
    except (FileNotFoundError, ValueError) as exc:
        print(f"bench latency: {exc}", file=sys.stderr)
        return 2
    log.info("%d clips from %s (%d labelled), mode %s, %d session(s), repeat %d", len(clips), args.clips,
             sum(1 for c in clips if c.expected), args.mode, args.sessions, args.repeat)

    try:
        run = run_on_server(args, lambda base: run_all(base, clips, args))
    except RuntimeError as exc:
        print(f"bench latency: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    rows, intervals = run.result

    report = {
        "mode": args.mode, "sessions": args.sessions, "repeat": args.repeat, "clips_dir": str(args.clips),
        "server_url": run.base, "server_started": run.started,
        "server_args": args.server_args, "server_ready_s": run.ready_s,
        "chunk_ms": args.chunk_ms if args.mode == "stream" else None,
        "mic_open": bool(args.mic_open) if args.mode == "stream" else None, "wall_s": round(run.wall_s, 1),
        "machine": machine(), "host_cpu": run.host_cpu, "server_status": run.status,
        "clips": rows, "summary": summarize(rows, intervals, args.mode),
    }
    if args.chart:
        try:
            write_chart(report, args.chart)
            log.info("wrote chart %s", args.chart)
        except Exception as exc:
            log.error("chart failed: %s: %s", type(exc).__name__, exc)
            return 1
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=1))
    else:
        print(format_report(report))
    return 0 if report["summary"]["measured"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
