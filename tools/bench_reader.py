"""Cost of one emotion read, the two e5 views side by side against one after the other, in one run.

    python -m tools.bench_reader [--lines 40]

Alternates the two readers line by line over held-out set F (both languages), so machine noise falls
on both alike, and checks they give the same cue. Run it on a quiet machine (the bench lock).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

from avatarcast.realtime.bench.client import pct
from avatarcast.realtime.emotion import EmotionReader

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "emotion"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=40, help="lines of F per language")
    args = ap.parse_args(argv)
    side = EmotionReader.load()
    serial = EmotionReader(side.encoder, side.classifier, side.lexicon, concurrent_views=False)
    lines = [
        row[0]
        for lang in ("en", "zh")
        for row in list(csv.reader((DATA / f"heldout_f_{lang}.csv").open()))[1 : args.lines + 1]
    ]
    t_side: list[float] = []
    t_serial: list[float] = []
    for text in lines:
        a = time.perf_counter()
        c1 = side.read(text)
        b = time.perf_counter()
        c2 = serial.read(text)
        c = time.perf_counter()
        if (c1.label, round(c1.confidence, 9)) != (c2.label, round(c2.confidence, 9)):
            raise SystemExit(f"the two readers disagree on {text!r}: {c1} vs {c2}")
        t_side.append((b - a) * 1e3)
        t_serial.append((c - b) * 1e3)
    side50, serial50 = pct(t_side, 50), pct(t_serial, 50)
    print(
        f"{len(lines)} lines, load {os.getloadavg()[0]:.2f}: side by side p50 {side50} p95 {pct(t_side, 95)} ms"
        f" | one after the other p50 {serial50} p95 {pct(t_serial, 95)} ms | ratio p50 {side50 / serial50:.2f}"
    )


if __name__ == "__main__":
    main()
