"""The benchmarks' WebSocket client: clips to send, one session's frames and events as they arrive, and the
client-side timing of a reaction (TTFF, TTER) from them. `bench latency`, `bench load` and the tests share it.

A frame is (receive time, index, source, emotion), times from time.monotonic(). The server's events are
kept as (receive time, event); Conn.latency_for and Conn.decided read an utterance's latency event and the
emotion it decided from them, and client_times turns frames into the milliseconds the reports carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatarcast.client import Client, EncodedFrame, Session, SessionRefused
from avatarcast.realtime.audio import decode_audio
from avatarcast.realtime.events import ServerEvent, UnknownEvent
from avatarcast.realtime.wire_fields import to_wire
from avatarcast.vocabulary import REACTION_SOURCES

REPO = Path(__file__).resolve().parents[2]  # the checkout, where tests/data/speech holds committed clips
AUDIO_EXTS = (".wav", ".mp3", ".ogg", ".opus", ".webm", ".m4a", ".flac")
SAMPLE_RATE = 16000
FIRST_FRAMES_S = 15.0  # how long a new session may take to send its first frame
# error codes that end a clip's measurement: the server will not react to it
CLIP_ERRORS = ("bad_audio", "clip_failed", "no_cue")

Frame = tuple[float, int, str, str]  # (receive time, index, source, emotion)


# --- clips -----------------------------------------------------------------------------------


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
    """Every audio file in `folder`, decoded, with its label where labels.csv or manifest.csv gives one."""
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


# --- one session -----------------------------------------------------------------------------


class Conn:
    """One session (avatarcast.client): every frame (recv time, index, source, emotion) and event, as they arrive.

    Frames are timed on arrival by the client's receiving task and never decoded; events are kept as their
    wire dicts (type, payload), which the reports read.
    """

    def __init__(self, session: Session | None, intervals: list[float], refused: SessionRefused | None = None) -> None:
        self.session = session
        self.refused = refused  # the server closed the socket before its hello (busy, rate limited, ...)
        self.frames: list[Frame] = []
        self.events: list[tuple[float, dict]] = []
        self.intervals = intervals  # this session slot's frame intervals (shared over its clips)
        self.changed = asyncio.Event()
        if session is not None:
            session.add_listener(self._arrived)

    @classmethod
    async def open(cls, base_url: str, avatar: str, intervals: list[float]) -> Conn:
        """Open a session on `/v1/ws?avatar=...`; a refusal by close code gives a closed Conn (its close_code
        says why), any other connect error propagates."""
        try:
            session = await Client(base_url).open(avatar=avatar)
        except SessionRefused as exc:
            if exc.close_code is None:
                raise
            return cls(None, intervals, exc)
        return cls(session, intervals)

    def _arrived(self, now: float, item: EncodedFrame | ServerEvent | None) -> None:
        if isinstance(item, EncodedFrame):
            h = item.header
            if self.frames:
                self.intervals.append(now - self.frames[-1][0])
            self.frames.append((now, h.index, h.source, h.emotion))
        elif isinstance(item, UnknownEvent):
            self.events.append((now, {"type": item.type, "payload": item.payload}))
        elif item is not None:
            self.events.append((now, {"type": item.TYPE, "payload": to_wire(item)}))
        self.changed.set()

    @property
    def closed(self) -> bool:
        return self.session is None or self.session.closed

    @property
    def close_code(self) -> int | None:
        if self.session is not None:
            return self.session.close_code
        return self.refused.close_code if self.refused else None

    @property
    def close_reason(self) -> str:
        if self.session is None:
            return f"refused {self.refused.close_code}: {self.refused.reason}" if self.refused else ""
        return f"closed {self.session.close_code}: {self.session.close_reason}" if self.session.closed else ""

    def live(self) -> Session:
        """The open session (a refused Conn has none: it is closed from the start, and sends nothing)."""
        if self.session is None:
            raise RuntimeError(f"no session: {self.close_reason}")
        return self.session

    async def next_change(self, timeout: float) -> None:
        """Wait until a frame or event arrives or the session closes, at most `timeout` seconds."""
        self.changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)

    async def first_frames(self, timeout: float = FIRST_FRAMES_S) -> bool:
        """Wait until frames flow; False when none came (the session was refused, or is broken)."""
        deadline = time.monotonic() + timeout
        while not self.frames and not self.closed and time.monotonic() < deadline:
            await self.next_change(0.5)
        return bool(self.frames)

    async def wait_closed(self, timeout: float) -> None:
        """Let the client see the server's close (its code and reason), at most `timeout` seconds."""
        if self.session is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.session.wait_closed(), timeout)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def of_type(self, kind: str, after: float = -math.inf) -> list[tuple[float, dict]]:
        return [(t, e) for t, e in self.events if e.get("type") == kind and t >= after]

    def frames_late(self) -> int:
        """The frames the server said it sent late (its frames_late events)."""
        return sum(int(e["payload"].get("count", 0)) for t, e in self.of_type("frames_late"))

    def latency_for(self, kinds: tuple[str, ...], after: float) -> tuple[dict | None, list[dict]]:
        """The server latency payload for this clip's (last) utterance, and the utterances' finals."""
        finals = [e["payload"] for t, e in self.of_type("transcript_final") if e["payload"].get("source") in kinds]
        late = [e["payload"] for t, e in self.of_type("transcript_final", after) if e["payload"].get("source") in kinds]
        if not late:
            return None, finals
        u = max(p.get("utterance", -1) for p in late)
        for _, e in self.of_type("latency"):
            p = e["payload"]
            if p.get("utterance") == u and p.get("kind") in kinds:
                return p, finals
        return None, finals

    def decided(self, latency: dict | None, utterance: int | None) -> tuple[str | None, float | None]:
        """(label, recv time of its emotion event): the latency event's label, else the last applied cue."""
        best = None
        for t, e in self.of_type("emotion"):
            p = e["payload"]
            if utterance is not None and p.get("utterance") != utterance:
                continue
            if p.get("applied"):
                best = (p.get("label"), t)
        if latency is not None and latency.get("emotion"):
            label = latency["emotion"]
            ts = [
                t
                for t, e in self.of_type("emotion")
                if e["payload"].get("label") == label
                and e["payload"].get("applied")
                and (utterance is None or e["payload"].get("utterance") == utterance)
            ]
            return label, (ts[-1] if ts else None)
        return best if best is not None else (None, None)


# --- sending ---------------------------------------------------------------------------------


@dataclass
class Sent:
    """Client-side send times (monotonic) of one clip."""

    started: float | None = None
    origin: float | None = None  # clip mode: CLIP message sent; stream: last speech chunk sent
    onset: float | None = None  # stream: first speech chunk sent
    speech_done: asyncio.Event = field(default_factory=asyncio.Event)


async def stream_pcm(
    conn: Conn, clip: Clip, sent: Sent, chunk_ms: int, tail_s: float, stop: asyncio.Event, keep_open: bool = False
) -> None:
    """Send the clip as paced PCM1 chunks, then tail_s of silence (with keep_open: silence until `stop`)."""
    chunk = int(SAMPLE_RATE * chunk_ms / 1000)
    first, last = speech_bounds(clip.pcm, chunk)
    n = max(1, math.ceil(clip.pcm.size / chunk))
    silence = np.zeros(chunk, "<i2").tobytes()
    t0 = time.monotonic()
    sent.started = t0
    k = 0
    while True:
        due = t0 + k * chunk / SAMPLE_RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if k < n:
            body = clip.pcm[k * chunk : (k + 1) * chunk]
            if body.size < chunk:
                body = np.pad(body, (0, chunk - body.size))
            await conn.live().send_pcm(body.astype("<i2").tobytes())
        else:
            if (stop.is_set() or not keep_open) and (k - n) * chunk >= tail_s * SAMPLE_RATE:
                return
            await conn.live().send_pcm(silence)
        now = time.monotonic()
        if k == first:
            sent.onset = now
        if k == last:
            sent.origin = now
            sent.speech_done.set()
        k += 1


# --- timing ----------------------------------------------------------------------------------


def client_times(
    frames: list[Frame], origin: float, decided: str | None, decided_at: float | None, onset: float | None
) -> dict:
    """TTFF, TTER, first reaction and (stream mode) onset -> listening, in ms, from the frames received."""
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

    return {
        "ttff_ms": ms(ttff, origin),
        "tter_ms": ms(tter, origin),
        "first_reaction_ms": ms(reaction, origin),
        "ttff_source": None if ttff is None else ttff[2],
        "first_reaction_emotion": None if reaction is None else reaction[3],
        "listening_ms": ms(listening, onset),
    }


def setup_logging() -> None:
    """Progress lines on stderr (stdout may hold the JSON report); client libraries kept quiet."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    for noisy in ("matplotlib", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
