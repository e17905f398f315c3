"""Compare Whisper's full 30 s encoder window with the shortened one the server uses for short audio.

    python -m tools.eval_asr_window --clips DIR [--windows 10,6] [--json]

DIR holds audio clips and a labels.csv (file,emotion,text), e.g. from realtime/bench/clips.py. Prints
per window: median ASR time, word error rate against the labels' text, and the emotion accuracy
of the transcripts read by the EmotionReader.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import time
from pathlib import Path

import numpy as np


def words(s: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", s.lower()).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    d = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, d[0] = d[:], i
        for j in range(1, len(hyp) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (ref[i - 1] != hyp[j - 1]))
    return d[len(hyp)]


def main(argv: list[str] | None = None) -> int:
    from avatarcast.realtime.asr import Transcriber
    from avatarcast.realtime.audio import decode_audio
    from avatarcast.realtime.emotion import EmotionReader

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", required=True)
    ap.add_argument("--windows", default="10,6", help="shortened windows in seconds to compare with 30")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = list(csv.DictReader(open(Path(args.clips) / "labels.csv", encoding="utf-8")))
    audio = [decode_audio(Path(args.clips) / r["file"]) for r in rows]
    tr = Transcriber.load(args.model)
    reader = EmotionReader.load()
    out = {
        "clips": len(rows),
        "model": args.model,
        "cpus": __import__("os").cpu_count(),
        "machine": platform.platform(),
        "windows": [],
    }
    for w in [None] + [float(x) for x in args.windows.split(",")]:
        tr.short_window_s = w
        ms, errs, n, correct = [], 0, 0, 0
        for r, a in zip(rows, audio):
            t0 = time.perf_counter()
            text = tr.transcribe(a, language="en").text
            ms.append((time.perf_counter() - t0) * 1000)
            errs += edit_distance(words(r["text"]), words(text))
            n += len(words(r["text"]))
            correct += reader.read(text).label == r["emotion"]
        out["windows"].append(
            {
                "window_s": w or 30.0,
                "asr_ms_p50": round(float(np.median(ms)), 1),
                "asr_ms_p95": round(float(np.percentile(ms, 95)), 1),
                "wer": round(errs / n, 3),
                "emotion_accuracy": round(correct / len(rows), 3),
            }
        )
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for w in out["windows"]:
            print(
                f"window {w['window_s']:>4.0f} s: ASR p50 {w['asr_ms_p50']:6.1f} ms, p95 {w['asr_ms_p95']:6.1f} ms, "
                f"WER {w['wer']:.3f}, emotion {w['emotion_accuracy']:.0%}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
