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
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from avatarcast.realtime.bench.client import (
    CLIP_ERRORS,
    Clip,
    Conn,
    Sent,
    client_times,
    dist,
    interval_stats,
    load_clips,
    pct,
    setup_logging,
    stream_pcm,
)
from avatarcast.realtime.bench.server import machine, run_on_server
from avatarcast.vocabulary import DEFAULT_AVATAR, FRAME_S

log = logging.getLogger("avatarcast.bench.latency")

# chart/breakdown segments, in the order they happen
SEGMENTS = ("decode", "vad endpoint", "asr", "emotion", "cache/sample", "frame slot", "encode", "client gap")
SEGMENT_COLORS = {
    "decode": "#8c8c8c",
    "vad endpoint": "#76b7b2",
    "asr": "#4e79a7",
    "emotion": "#f28e2b",
    "cache/sample": "#59a14f",
    "frame slot": "#edc948",
    "encode": "#b07aa1",
    "client gap": "#e15759",
}


# --- one clip --------------------------------------------------------------------------------


def breakdown(server: dict | None, client_tter_ms: float | None) -> dict[str, float] | None:
    """Client TTER split into SEGMENTS from the server's latency payload (at_ms + stages_ms).

    Stages are taken in the order they ended; a stage that ended after the server's TTER frame (a
    final transcript that only confirmed an early decision from a partial) is not on the path.
    """
    if not server or client_tter_ms is None or not server.get("at_ms"):
        return None
    at, dur = server["at_ms"], server.get("stages_ms", {})
    groups = {
        "decode": "decode",
        "vad": "vad endpoint",
        "asr": "asr",
        "emotion": "emotion",
        "cache": "cache/sample",
        "sample": "cache/sample",
        "decode_frames": "cache/sample",
        "send": "encode",
    }
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


async def measure_clip(
    base_url: str, clip: Clip, args: argparse.Namespace, slot: int, intervals: list[float], jitter: float = 0.0
) -> dict:
    row: dict[str, Any] = {
        "file": clip.name,
        "session": slot,
        "duration_s": round(clip.duration_s, 2),
        "expected": clip.expected,
        "transcript": None,
        "language": None,
        "emotion": None,
        "correct": None,
        "ttff_ms": None,
        "tter_ms": None,
        "first_reaction_ms": None,
        "first_reaction_emotion": None,
        "ttff_source": None,
        "listening_ms": None,
        "onset_event_ms": None,
        "endpoint_ms": None,
        "final_ms": None,
        "decision_ms": None,
        "server": None,
        "clip_stages_ms": None,
        "breakdown_ms": None,
        "frames_late": 0,
        "frames": 0,
        "error": None,
    }
    kinds = ("clip",) if args.mode == "clip" else ("speech",)
    t_start = time.monotonic()
    try:
        conn = await Conn.open(base_url, args.avatar, intervals)
    except Exception as exc:
        row["error"] = f"connect failed: {type(exc).__name__}: {exc}"
        return row
    stop = asyncio.Event()
    sender: asyncio.Task | None = None
    sent = Sent()
    try:
        # 1. frames flow
        if not await conn.first_frames():
            raise RuntimeError(f"no frames within 15 s of connecting {conn.close_reason}".strip())
        # a random phase against the 8 fps frame clock, so frame-slot waits are sampled fairly
        await asyncio.sleep(max(0.0, conn.frames[0][0] + args.warmup + jitter - time.monotonic()))
        # 2. send
        if args.mode == "clip":
            sent.started = time.monotonic()
            await conn.live().send_clip(clip.data)
            sent.origin = time.monotonic()
        else:
            sender = asyncio.create_task(stream_pcm(conn, clip, sent, args.chunk_ms, args.tail, stop, args.mic_open))
            done, _ = await asyncio.wait(
                {sender, asyncio.ensure_future(sent.speech_done.wait())},
                timeout=clip.duration_s + 10,
                return_when=asyncio.FIRST_COMPLETED,
            )
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
            fatal = [p for p in errors if p.get("fatal") or p.get("code") in CLIP_ERRORS]
            if fatal:
                raise RuntimeError(f"server error {fatal[0].get('code')}: {fatal[0].get('message')}")
            latency, _ = conn.latency_for(kinds, origin if args.mode == "stream" else -math.inf)
            if latency is not None:
                utterance = latency.get("utterance")
                decided, decided_at = conn.decided(latency, utterance)
                times = client_times(conn.frames, origin, decided, decided_at, sent.onset)
                if times["tter_ms"] is not None or decided is None:
                    break
            if conn.closed:
                raise RuntimeError(f"the server closed the session {conn.close_reason}".strip())
            if time.monotonic() > deadline:
                raise TimeoutError(f"no latency event and emotion frame within {args.timeout:g} s")
            await conn.next_change(0.25)
        # 4. linger while the reaction plays (frame pacing under load), until back to idle
        linger_end = time.monotonic() + args.linger
        while time.monotonic() < linger_end and not conn.closed:
            idle = [t for t, e in conn.of_type("state_changed", origin) if e["payload"].get("to") == "idle"]
            if idle:
                ended_at = idle[0]
                break
            await conn.next_change(0.25)
        # 5. results
        finals = {
            e["payload"].get("utterance"): e["payload"].get("text", "")
            for t, e in conn.of_type("transcript_final")
            if e["payload"].get("source") in kinds
        }
        clip_ev = [e["payload"] for t, e in conn.of_type("clip")]
        langs = [
            e["payload"].get("language")
            for t, e in conn.of_type("transcript_final")
            if e["payload"].get("source") in kinds and e["payload"].get("text")
        ]
        row["language"] = langs[-1] if langs else None  # what ASR heard (the server detects it unless told)
        if args.mode == "clip" and clip_ev:
            row["transcript"] = clip_ev[-1].get("transcript")
            row["clip_stages_ms"] = clip_ev[-1].get("stages_ms")
        else:
            row["transcript"] = " ".join(t.strip() for u, t in sorted(finals.items(), key=lambda kv: kv[0]) if t)
        row["emotion"] = decided
        row.update(client_times(conn.frames, origin, decided, decided_at, sent.onset))
        t_final = next(
            (
                t
                for t, e in conn.of_type("transcript_final")
                if e["payload"].get("utterance") == utterance and e["payload"].get("source") in kinds
            ),
            None,
        )
        row["final_ms"] = None if t_final is None else round((t_final - origin) * 1000.0, 1)
        row["decision_ms"] = None if decided_at is None else round((decided_at - origin) * 1000.0, 1)
        if args.mode == "stream":  # the server's end-of-speech decision, as the client sees it
            t_end = next(
                (
                    t
                    for t, e in conn.of_type("state_changed", sent.onset or origin)
                    if e["payload"].get("from") == "listening"
                ),
                None,
            )
            row["endpoint_ms"] = None if t_end is None else round((t_end - origin) * 1000.0, 1)
            t_on = next(
                (
                    t
                    for t, e in conn.of_type("state_changed", sent.onset or origin)
                    if e["payload"].get("to") == "listening"
                ),
                None,
            )
            row["onset_event_ms"] = (
                None if t_on is None or sent.onset is None else round((t_on - sent.onset) * 1000.0, 1)
            )
        row["server"] = (
            {
                k: latency.get(k)
                for k in (
                    "utterance",
                    "kind",
                    "ttff_ms",
                    "tter_ms",
                    "decided_by",
                    "first_decided_by",
                    "first_frame_source",
                    "stages_ms",
                    "at_ms",
                    "final_asr",
                )
            }
            if latency
            else None
        )
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
        row["frames_late"] = conn.frames_late()
        codes: dict[str, int] = {}
        for _, e in conn.of_type("error"):
            c = str(e["payload"].get("code"))
            codes[c] = codes.get(c, 0) + 1
        row["server_errors"] = codes
        row["wall_s"] = round(time.monotonic() - t_start, 2)
        await conn.close()
    return row


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
            log.info(
                "[%d/%d] session %d %s: %s -> %s (expected %s)  TTFF %s ms  TTER %s ms%s",
                len(rows),
                total,
                slot,
                clip.name,
                row.get("transcript"),
                row.get("emotion"),
                clip.expected,
                row.get("ttff_ms"),
                row.get("tter_ms"),
                f"  ERROR {row['error']}" if row.get("error") else "",
            )

    await asyncio.gather(*(worker(s) for s in range(args.sessions)))
    rows.sort(key=lambda x: (x[0], x[1]))
    return [r for _, _, r in rows], intervals


def summarize(rows: list[dict], intervals: list[list[float]], mode: str) -> dict:
    ok = [r for r in rows if not r.get("error")]
    labelled = [r for r in ok if r.get("expected")]
    correct = sum(1 for r in labelled if r.get("correct"))
    s: dict[str, Any] = {
        "clips": len(rows),
        "measured": len(ok),
        "errors": len(rows) - len(ok),
        "ttff_ms": dist([r["ttff_ms"] for r in ok]),
        "tter_ms": dist([r["tter_ms"] for r in ok]),
        "tter_ms_reactions": dist([r["tter_ms"] for r in ok if r.get("emotion") not in (None, "idle")]),
        "first_reaction_ms": dist([r["first_reaction_ms"] for r in ok]),
        "final_ms": dist([r.get("final_ms") for r in ok]),
        "decision_ms": dist([r.get("decision_ms") for r in ok]),
        "server_ttff_ms": dist([(r["server"] or {}).get("ttff_ms") for r in ok]),
        "server_tter_ms": dist([(r["server"] or {}).get("tter_ms") for r in ok]),
        "accuracy": {
            "labelled": len(labelled),
            "correct": correct,
            "accuracy": round(correct / len(labelled), 3) if labelled else None,
        },
        "breakdown_ms_p50": {
            k: pct([(r.get("breakdown_ms") or {}).get(k) for r in ok if r.get("breakdown_ms")], 50) for k in SEGMENTS
        },
        "breakdown_ms_mean": {
            k: (round(float(np.mean(v)), 1) if v else None)
            for k in SEGMENTS
            for v in [[r["breakdown_ms"][k] for r in ok if r.get("breakdown_ms")]]
        },
        "frame_interval_ms": {
            "overall": interval_stats([x for iv in intervals for x in iv]),
            "per_session": [interval_stats(iv) for iv in intervals],
        },
        "frames_late": int(sum(r.get("frames_late", 0) for r in rows)),
        "server_errors": {
            c: sum((r.get("server_errors") or {}).get(c, 0) for r in rows)
            for c in sorted({c for r in rows for c in (r.get("server_errors") or {})})
        },
    }
    if mode == "stream":
        s["listening_ms"] = dist([r["listening_ms"] for r in ok])
        s["endpoint_ms"] = dist([r.get("endpoint_ms") for r in ok])
        s["onset_event_ms"] = dist([r.get("onset_event_ms") for r in ok])
        s["first_decided_by"] = {
            k: sum(1 for r in ok if (r.get("server") or {}).get("first_decided_by") == k) for k in ("partial", "final")
        }
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
    head = (
        f"{'file':<18} {'dur':>4} {'transcript':<36} {'emotion (expected)':<22} {'TTFF':>6} {'TTER':>6}"
        + (f" {'listen':>6}" if stream else "")
        + "  stages ms (server)"
    )
    out.append(head)
    out.append("-" * len(head))
    for r in rows:
        emo = f"{r['emotion'] or '-'} ({r['expected'] or '?'})"
        if r.get("correct") is False:
            emo += " x"
        tr = r.get("transcript") or ""
        tr = tr if len(tr) <= 36 else tr[:33] + "..."
        b = r.get("breakdown_ms") or {}
        stages = " ".join(f"{k.split('/')[0]} {v:.0f}" for k, v in b.items() if v) if b else ""
        if r.get("error"):
            stages = f"ERROR {r['error']}"
        out.append(
            f"{r['file'][:18]:<18} {r['duration_s']:>4.1f} {tr:<36} {emo:<22} {_f(r['ttff_ms']):>6} "
            f"{_f(r['tter_ms']):>6}" + (f" {_f(r['listening_ms']):>6}" if stream else "") + f"  {stages}"
        )
    out.append("")
    m = report["machine"]
    chunks = ""
    if report.get("chunk_ms"):
        chunks = f" ({report['chunk_ms']} ms chunks{', mic open' if report.get('mic_open') else ''})"
    out.append(
        f"mode {report['mode']}{chunks}, {report['sessions']} session(s), repeat {report['repeat']}, "
        f"server {report['server_url']}{' (started by the bench)' if report.get('server_started') else ''}"
    )
    out.append(f"machine: {m['cpu_count']} CPUs ({m['usable_cpus']} usable), {m['cpu']}, {m['platform']}")
    hc = report.get("host_cpu") or {}
    if hc:
        out.append(
            "CPU during the run (cores busy): "
            + ", ".join(f"{k.replace('_cores', '')} {v}" for k, v in hc.items() if k.endswith("_cores"))
            + (
                f"; load average {hc.get('loadavg_1m_start')} -> {hc.get('loadavg_1m_end')}"
                if "loadavg_1m_end" in hc
                else ""
            )
        )
    out.append(f"clips: {s['clips']} ({s['errors']} errors)")
    for key, name in (
        ("ttff_ms", "TTFF"),
        ("tter_ms", "TTER"),
        ("tter_ms_reactions", "TTER, non-idle only"),
        ("first_reaction_ms", "first reaction frame"),
        ("endpoint_ms", "server end of speech"),
        ("final_ms", "final transcript event"),
        ("server_tter_ms", "server-side TTER"),
        ("listening_ms", "onset -> listening"),
        ("onset_event_ms", "onset -> listening ev"),
    ):
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
    out.append(
        f"frame interval: p50 {_f(o['p50'])} ms  p99 {_f(o['p99'])} ms  max {_f(o['max'])} ms  "
        f">160 ms: {o['over_160ms']}/{o['n']}  (server frames_late: {s['frames_late']})"
    )
    for i, d in enumerate(fi["per_session"]):
        out.append(f"  session {i}: p50 {_f(d['p50'])} ms  p99 {_f(d['p99'])} ms  max {_f(d['max'])} ms  (n={d['n']})")
    if s.get("server_errors"):
        out.append("server error events: " + ", ".join(f"{k} {v}" for k, v in s["server_errors"].items()))
    st = (report.get("server_status") or {}).get("stats")
    if st:
        out.append("server stats: " + ", ".join(f"{k} {v}" for k, v in sorted(st.items())))
    return "\n".join(out)


def write_chart(report: dict, path: str) -> None:
    import matplotlib  # matplotlib: optional (`train` extra), only for --chart

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: as above

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
    ax.set_title(
        f"avatarcast latency ({report['mode']} mode, {report['sessions']} session(s)): TTER p50 "
        f"{_f(s['tter_ms']['p50'])} ms, p95 {_f(s['tter_ms']['p95'])} ms",
        fontsize=10,
    )
    from matplotlib.artist import Artist  # matplotlib: as above
    from matplotlib.lines import Line2D  # matplotlib: as above
    from matplotlib.patches import Patch  # matplotlib: as above

    gap_name = (
        "client gap (client's speech end -> server's origin, e.g. audio backlog; delivery)"
        if report["mode"] == "stream"
        else "client gap (upload/delivery)"
    )
    handles: list[Artist] = [
        Patch(color=SEGMENT_COLORS[k], label=gap_name if k == "client gap" else k) for k in SEGMENTS
    ]
    handles += [
        Line2D([], [], marker="|", color="black", linestyle="none", markersize=10, label="TTER (client)"),
        Line2D([], [], marker="o", color="black", linestyle="none", fillstyle="none", label="TTFF (client)"),
    ]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=5, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.06)
    fig.tight_layout(rect=(0, 0.55 / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="avatarcast bench latency",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--clips", required=True, help="folder of audio files (+ optional labels.csv: file,emotion,text)")
    ap.add_argument("--url", default=None, help="a running server (http://host:port); default: start one")
    ap.add_argument("--json", action="store_true", help="print one JSON object to stdout instead of the table")
    ap.add_argument(
        "--mode",
        choices=("clip", "stream"),
        default="clip",
        help="clip: one CLIP upload; stream: real-time PCM1 chunks like a microphone",
    )
    ap.add_argument("--sessions", type=int, default=1, help="concurrent sessions; clips are spread over them")
    ap.add_argument("--repeat", type=int, default=1, help="run the clip set this many times")
    ap.add_argument("--chart", default=None, help="write a stacked bar chart of each clip's TTER breakdown (PNG)")
    ap.add_argument("--server-args", default="", help="extra `avatarcast serve` flags for the server the bench starts")
    ap.add_argument("--avatar", default=DEFAULT_AVATAR)
    ap.add_argument("--chunk-ms", type=int, default=20, help="stream mode: PCM1 chunk length (20-40 ms)")
    ap.add_argument("--tail", type=float, default=1.0, help="stream mode: seconds of silence sent after the clip")
    ap.add_argument(
        "--mic-open",
        action="store_true",
        help="stream mode: after the tail keep sending silence until the clip's measurement ends, "
        "like an open microphone",
    )
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of frames before the clip is sent")
    ap.add_argument(
        "--linger",
        type=float,
        default=8.0,
        help="after TTER, stay connected until the reaction ends (back to idle), at most this long",
    )
    ap.add_argument("--timeout", type=float, default=30.0, help="per clip: give up this long after the origin")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random send phase against the frame clock")
    ap.add_argument("--stagger", type=float, default=0.3, help="seconds between the sessions' starts")
    ap.add_argument("--ready-timeout", type=float, default=180.0, help="how long to wait for /readyz")
    return ap


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
    log.info(
        "%d clips from %s (%d labelled), mode %s, %d session(s), repeat %d",
        len(clips),
        args.clips,
        sum(1 for c in clips if c.expected),
        args.mode,
        args.sessions,
        args.repeat,
    )

    try:
        run = run_on_server(args, lambda base: run_all(base, clips, args))
    except RuntimeError as exc:
        print(f"bench latency: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    rows, intervals = run.result

    report = {
        "mode": args.mode,
        "sessions": args.sessions,
        "repeat": args.repeat,
        "clips_dir": str(args.clips),
        "server_url": run.base,
        "server_started": run.started,
        "server_args": args.server_args,
        "server_ready_s": run.ready_s,
        "chunk_ms": args.chunk_ms if args.mode == "stream" else None,
        "mic_open": bool(args.mic_open) if args.mode == "stream" else None,
        "wall_s": round(run.wall_s, 1),
        "machine": machine(),
        "host_cpu": run.host_cpu,
        "server_exit": run.server_exit,
        "server_status": run.status,
        "clips": rows,
        "summary": summarize(rows, intervals, args.mode),
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
