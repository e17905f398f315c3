"""`avatarcast bench load`: N real WebSocket sessions at once, speaking clips at random times.

    avatarcast bench load --sessions N --seconds S [--clips DIR] [--url http://HOST:PORT] [--json]
        [--gap 2,8] [--no-retry] [--server-args "--max-sessions 2 ..."] [--churn N]

Without --url it starts `python -m avatarcast.realtime.cli serve` on a free loopback port (as `bench latency`
does). Without --clips it uses the checkout's committed neural-voice clips (tests/data/speech/en,
tools/make_speech.py), or where those are missing makes 8 espeak-ng clips (realtime/bench/clips.py).

Each of the N session slots opens `/v1/ws?avatar=pip`. A refused session (close 1013, the
server's admission control or max_sessions; 1008, a rate limit) is counted with its reason and,
unless --no-retry, tried again after 5 s (the server's Retry-After). A held session sends a CLIP
every --gap seconds (uniform at random), measures its TTFF/TTER like `bench latency` (both use the
bench client, realtime/bench/client.py), and keeps receiving frames until --seconds have passed.

Reported: sessions held and refused (with reasons), TTER p50/p95 under load, per held session the
frame rate's 1st percentile over 1 s windows (fps p1), p99 frame interval, frames dropped (gaps in
the frame index) and the server's frames_late count; the server's degradation level, sampled
every 2 s from /v1/status. --json prints one JSON object to stdout; logs go to stderr.

--churn N (a soak of avatar churn): each slot closes its session after N clips and opens a new one on an avatar
the server has not seen (`random-<seed>`, a new seed each time), so the server keeps preparing avatars and, past
`--max-avatars`, dropping them; the server's RSS and open fds after warm-up say whether anything is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatarcast.realtime.bench.client import (
    CLIP_ERRORS,
    REPO,
    Clip,
    Conn,
    Frame,
    client_times,
    dist,
    interval_stats,
    load_clips,
    setup_logging,
)
from avatarcast.realtime.bench.clips import make_clips
from avatarcast.realtime.bench.server import machine, run_on_server, server_process, server_status
from avatarcast.vocabulary import DEFAULT_AVATAR

log = logging.getLogger("avatarcast.bench.load")
RETRY_S = 5.0


@dataclass
class Slot:
    """One session slot: its refusals, and what its held session saw."""

    index: int
    refused: list[dict] = field(default_factory=list)  # {"at_s", "code", "reason"}
    held_from: float | None = None
    held_until: float | None = None
    intervals: list[float] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    frames_late: int = 0
    clips: list[dict] = field(default_factory=list)
    error: str | None = None
    avatars: list[str] = field(default_factory=list)  # the avatar of each session it held, in order
    runs: list[list[float]] = field(default_factory=list)  # each held session's frame arrival times


CHURN_SEED0 = 700_000  # churned avatars' seeds: clear of the eval's held-out avatars (random-900000 on)


def slot_avatar(args: argparse.Namespace, slot: int, n: int) -> str:
    """The avatar of a slot's n-th session: --avatar, or with --churn a new parametric avatar each time."""
    if not args.churn:
        return str(args.avatar)
    return f"random-{CHURN_SEED0 + args.seed * 10_000 + slot * 1_000 + n}"


def fps_p1(times: list[float]) -> float | None:
    """1st percentile of frames counted in whole 1 s windows (the first and last partial ones left out)."""
    if len(times) < 2:
        return None
    t0 = times[0]
    counts = np.bincount(((np.asarray(times) - t0) // 1.0).astype(int))[:-1]
    return float(np.percentile(counts, 1)) if counts.size else None


def index_gaps(frames: list[Frame]) -> int:
    """Frames the client never got: gaps in the server's frame index."""
    idx = [f[1] for f in frames]
    return int(sum(max(0, b - a - 1) for a, b in zip(idx, idx[1:])))


async def speak(conn: Conn, clip: Clip, timeout: float) -> dict:
    """Send one clip and wait for its emotion's first frame: the row `bench latency` would write."""
    row: dict[str, Any] = {
        "file": clip.name,
        "expected": clip.expected,
        "emotion": None,
        "ttff_ms": None,
        "tter_ms": None,
        "error": None,
    }
    t_send = time.monotonic()
    await conn.live().send_clip(clip.data)
    origin = time.monotonic()
    while True:
        latency, _ = conn.latency_for(("clip",), t_send)
        if latency is not None:
            decided, decided_at = conn.decided(latency, latency.get("utterance"))
            times = client_times(conn.frames, origin, decided, decided_at, None)
            if times["tter_ms"] is not None or decided is None:
                row.update(emotion=decided, ttff_ms=times["ttff_ms"], tter_ms=times["tter_ms"])
                return row
        errors = [e["payload"] for t, e in conn.of_type("error", t_send) if e["payload"].get("code") in CLIP_ERRORS]
        if errors:
            row["error"] = f"{errors[0].get('code')}: {errors[0].get('message')}"
            return row
        if conn.closed or time.monotonic() - origin > timeout:
            row["error"] = "closed" if conn.closed else f"no emotion frame within {timeout:g} s"
            return row
        await conn.next_change(0.25)


async def run_slot(
    slot: Slot, base: str, clips: list[Clip], args: argparse.Namespace, t0: float, end: float, rng: np.random.Generator
) -> None:
    await asyncio.sleep(slot.index * args.stagger)
    while time.monotonic() < end:
        avatar = slot_avatar(args, slot.index, len(slot.avatars))
        try:
            conn = await Conn.open(base, avatar, slot.intervals)
        except Exception as exc:
            slot.error = f"connect failed: {type(exc).__name__}: {exc}"
            return
        try:
            if not await conn.first_frames():  # refused (or broken): the close code says why
                await conn.wait_closed(2.0)
                code, reason = conn.close_code, conn.close_reason
                slot.refused.append({"at_s": round(time.monotonic() - t0, 1), "code": code, "reason": reason})
                log.info("session %d refused: %s %s", slot.index, code, reason)
                if args.no_retry:
                    return
                await asyncio.sleep(RETRY_S)
                continue
            if slot.held_from is None:
                slot.held_from = time.monotonic()
            slot.avatars.append(avatar)
            log.info("session %d held (%s) after %d refusal(s)", slot.index, avatar, len(slot.refused))
            spoken = 0
            while not conn.closed and not (args.churn and spoken >= args.churn):
                gap = float(rng.uniform(args.gap[0], args.gap[1]))
                if time.monotonic() + gap + args.timeout > end:
                    break
                await asyncio.sleep(gap)
                row = await speak(conn, clips[int(rng.integers(len(clips)))], args.timeout)
                row["at_s"] = round(time.monotonic() - t0, 1)
                row["avatar"] = avatar
                slot.clips.append(row)
                spoken += 1
                log.info(
                    "session %d %s -> %s TTER %s ms%s",
                    slot.index,
                    row["file"],
                    row["emotion"],
                    row["tter_ms"],
                    f" ERROR {row['error']}" if row["error"] else "",
                )
            if args.churn and not conn.closed and spoken >= args.churn:
                continue  # this session closes (finally) and the next opens on a new avatar
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            slot.held_until = time.monotonic()
            if conn.closed:
                slot.error = f"the server closed the session: {conn.close_reason}"
            return
        finally:
            if conn.frames:
                slot.runs.append([f[0] for f in conn.frames])
            slot.frames.extend(conn.frames)
            slot.frames_late += conn.frames_late()
            await conn.close()
    if slot.held_from is not None and slot.held_until is None:  # --churn: the run ended between two sessions
        slot.held_until = time.monotonic()


async def watch_status(base: str, stop: asyncio.Event, samples: list[dict], t0: float) -> None:
    """The server's figures every 2 s: degradation level, engine busy, sessions, and its process's RSS and fds."""
    while not stop.is_set():
        st = await asyncio.to_thread(server_status, base)
        proc = await asyncio.to_thread(server_process, base)
        if st is not None:
            load = st.get("load") or {}
            samples.append(
                {
                    "t_s": round(time.monotonic() - t0, 1),
                    "sessions": st.get("sessions"),
                    "level": load.get("degradation_level"),
                    "busy": load.get("engine_busy"),
                    **(proc or {}),
                }
            )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


async def run_all(base: str, clips: list[Clip], args: argparse.Namespace) -> tuple[list[Slot], list[dict]]:
    t0 = time.monotonic()
    end = t0 + args.seconds
    slots = [Slot(i) for i in range(args.sessions)]
    rng = np.random.default_rng(args.seed)
    stop = asyncio.Event()
    samples: list[dict] = []
    watcher = asyncio.create_task(watch_status(base, stop, samples, t0))
    await asyncio.gather(
        *(run_slot(s, base, clips, args, t0, end, np.random.default_rng(rng.integers(1 << 31))) for s in slots)
    )
    stop.set()
    await watcher
    return slots, samples


def process_figures(samples: list[dict], seconds: float) -> dict | None:
    """The server's RSS growth and open fds after warm-up (a soak's figures: issue 19 wants <= 5% and flat fds).

    Warm-up is the first 10% of the run, at least 30 s: the models' arenas, the latents cache and the first
    sessions' buffers settle there."""
    pts = [x for x in samples if x.get("rss_mb") is not None]
    if not pts:
        return None
    warmup = max(30.0, 0.1 * seconds)
    base = next((x for x in pts if x["t_s"] >= warmup), pts[-1])
    last = pts[-1]
    after = [x for x in pts if x["t_s"] >= base["t_s"]]
    return {
        "warmup_s": warmup,
        "rss_mb_after_warmup": base["rss_mb"],
        "rss_mb_end": last["rss_mb"],
        "rss_mb_max": max(x["rss_mb"] for x in after),
        "rss_growth_pct": round(100.0 * (last["rss_mb"] - base["rss_mb"]) / base["rss_mb"], 2),
        "open_fds_after_warmup": base["open_fds"],
        "open_fds_end": last["open_fds"],
        "open_fds_max": max(x["open_fds"] for x in after),
    }


def summarize(slots: list[Slot], samples: list[dict], seconds: float) -> dict:
    rows = [r for s in slots for r in s.clips]
    ok = [r for r in rows if not r["error"]]
    held = [s for s in slots if s.held_from is not None]
    reasons: dict[str, int] = {}
    for s in slots:
        for r in s.refused:
            key = f"{r['code']} {str(r['reason']).split('(')[0].split(';')[0].strip()}"  # figures vary: not in the key
            reasons[key] = reasons.get(key, 0) + 1
    per = []
    for s in slots:
        times = [f[0] for f in s.frames]
        iv = interval_stats(s.intervals)
        p1 = [v for v in (fps_p1(r) for r in s.runs) if v is not None]  # per session: not across a reconnect
        per.append(
            {
                "session": s.index,
                "held": s.held_from is not None,
                "refusals": len(s.refused),
                "first_refused_reason": s.refused[0]["reason"] if s.refused else None,
                "held_s": None if s.held_from is None else round((s.held_until or s.held_from) - s.held_from, 1),
                "frames": len(times),
                "fps_p1": min(p1, default=None),
                "sessions_opened": len(s.avatars),
                "interval_ms_p50": iv["p50"],
                "interval_ms_p99": iv["p99"],
                "interval_ms_max": iv["max"],
                "frames_dropped": index_gaps(s.frames),
                "frames_late_server": s.frames_late,
                "clips": len(s.clips),
                "clip_errors": sum(1 for r in s.clips if r["error"]),
                "error": s.error,
            }
        )
    levels = [x["level"] for x in samples if x.get("level") is not None]
    return {
        "sessions_requested": len(slots),
        "sessions_held": len(held),
        "sessions_never_held": len(slots) - len(held),
        "sessions_opened": sum(len(s.avatars) for s in slots),
        "avatars": len({a for s in slots for a in s.avatars}),
        "refusals": sum(len(s.refused) for s in slots),
        "refusal_reasons": reasons,
        "clips": len(rows),
        "clip_errors": len(rows) - len(ok),
        "tter_ms": dist([r["tter_ms"] for r in ok]),
        "ttff_ms": dist([r["ttff_ms"] for r in ok]),
        "emotion_correct": sum(1 for r in ok if r["expected"] and r["emotion"] == r["expected"]),
        "emotion_labelled": sum(1 for r in ok if r["expected"]),
        "per_session": per,
        "worst_fps_p1": min((p["fps_p1"] for p in per if p["fps_p1"] is not None), default=None),
        "worst_interval_ms_p99": max(
            (p["interval_ms_p99"] for p in per if p["interval_ms_p99"] is not None), default=None
        ),
        "frames_dropped": sum(p["frames_dropped"] for p in per),
        "server_process": process_figures(samples, seconds),
        "degradation": {
            "max_level": max(levels, default=None),
            "share_at_level": {str(v): round(levels.count(v) / len(levels), 3) for v in sorted(set(levels))},
        },
    }


def format_report(report: dict) -> str:
    s = report["summary"]
    hc = report.get("host_cpu") or {}
    out = [
        f"bench load: {s['sessions_requested']} session slot(s) for {report['seconds']:g} s against "
        f"{report['server_url']}" + (" (started by the bench)" if report["server_started"] else ""),
        (
            f"machine: {report['machine']['cpu_count']} CPUs, {report['machine']['cpu']}; load average "
            f"{hc.get('loadavg_1m_start')} -> {hc.get('loadavg_1m_end')}; cores busy: bench {hc.get('bench_cores')}, "
            f"server {hc.get('server_cores')}, others {hc.get('other_cores')}"
        ),
        f"sessions held: {s['sessions_held']}/{s['sessions_requested']} ({s['sessions_opened']} opened, "
        f"{s['avatars']} avatar(s)); refusals: {s['refusals']}"
        + "".join(f"\n  {n} x {k}" for k, n in s["refusal_reasons"].items()),
        f"clips: {s['clips']} ({s['clip_errors']} errors); emotion {s['emotion_correct']}/{s['emotion_labelled']}",
        (
            f"TTER p50 {s['tter_ms']['p50']} ms  p95 {s['tter_ms']['p95']} ms  max {s['tter_ms']['max']} ms  "
            f"(TTFF p50 {s['ttff_ms']['p50']} ms)"
        ),
        f"degradation level: max {s['degradation']['max_level']}, "
        f"share of samples {s['degradation']['share_at_level']}",
    ]
    pf = s.get("server_process")
    if pf:
        out.append(
            f"server process after {pf['warmup_s']:g} s of warm-up: RSS {pf['rss_mb_after_warmup']} -> "
            f"{pf['rss_mb_end']} MB ({pf['rss_growth_pct']:+g}%, max {pf['rss_mb_max']}), open fds "
            f"{pf['open_fds_after_warmup']} -> {pf['open_fds_end']} (max {pf['open_fds_max']})"
        )
    for p in s["per_session"]:
        if not p["held"]:
            out.append(f"  session {p['session']}: never held ({p['refusals']} refusals: {p['first_refused_reason']})")
            continue
        out.append(
            f"  session {p['session']}: held {p['held_s']} s after {p['refusals']} refusal(s), "
            f"{p['frames']} frames, fps p1 {p['fps_p1']}, interval p50 {p['interval_ms_p50']} "
            f"p99 {p['interval_ms_p99']} max {p['interval_ms_max']} ms, dropped {p['frames_dropped']}, "
            f"server late {p['frames_late_server']}, {p['clips']} clips"
            + (f", ERROR {p['error']}" if p["error"] else "")
        )
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="avatarcast bench load",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--sessions", type=int, default=4, help="concurrent session slots")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the run lasts")
    ap.add_argument(
        "--clips",
        default=None,
        help="folder of audio clips (+ labels.csv or manifest.csv); default: tests/data/speech/en",
    )
    ap.add_argument("--url", default=None, help="a running server (http://host:port); default: start one")
    ap.add_argument("--json", action="store_true", help="print one JSON object to stdout instead of the table")
    ap.add_argument("--server-args", default="", help="extra `avatarcast serve` flags for the server the bench starts")
    ap.add_argument("--gap", default="2,8", help="seconds between a session's clips: uniform in MIN,MAX")
    ap.add_argument("--no-retry", action="store_true", help="a refused session slot gives up instead of retrying")
    ap.add_argument("--timeout", type=float, default=15.0, help="per clip: give up on its TTER after this long")
    ap.add_argument("--stagger", type=float, default=0.5, help="seconds between the slots' first connects")
    ap.add_argument("--avatar", default=DEFAULT_AVATAR)
    ap.add_argument(
        "--churn",
        type=int,
        default=0,
        help="a soak of avatar churn: each slot reopens its session after this many clips, on a new avatar",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ready-timeout", type=float, default=180.0)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        lo, hi = (float(x) for x in args.gap.split(","))
        if not 0 <= lo <= hi or not math.isfinite(hi):
            raise ValueError
    except ValueError:
        ap.error("--gap must be MIN,MAX seconds with 0 <= MIN <= MAX")
    args.gap = (lo, hi)
    if args.sessions < 1 or not args.seconds > 0 or args.churn < 0:
        ap.error("--sessions must be >= 1, --seconds > 0 and --churn >= 0")
    try:
        committed = REPO / "tests" / "data" / "speech" / "en"
        if args.clips or committed.is_dir():
            clips = load_clips(Path(args.clips) if args.clips else committed)
        else:
            folder = tempfile.mkdtemp(prefix="avatarcast-load-clips-")
            make_clips(folder, n=8, seed=args.seed)
            clips = load_clips(Path(folder))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"bench load: {exc}", file=sys.stderr)
        return 2
    try:
        run = run_on_server(args, lambda base: run_all(base, clips, args))
    except RuntimeError as exc:
        print(f"bench load: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    slots, samples = run.result
    report = {
        "sessions": args.sessions,
        "seconds": args.seconds,
        "server_url": run.base,
        "server_started": run.started,
        "server_args": args.server_args,
        "machine": machine(),
        "host_cpu": run.host_cpu,
        "server_exit": run.server_exit,
        "server_status": run.status,
        "status_samples": samples,
        "clips": [{"session": s.index, **r} for s in slots for r in s.clips],
        "refusals": [{"session": s.index, **r} for s in slots for r in s.refused],
        "summary": summarize(slots, samples, args.seconds),
    }
    print(json.dumps(report, ensure_ascii=False, indent=1) if args.json else format_report(report))
    return 0 if report["summary"]["sessions_held"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
