"""The traced motion run's batches (docs/training/motion.md, "Why motion's ladder steps down"):
`python batches.py FOLDER`."""

import json
import statistics
import sys

recs = [json.loads(line) for line in open(sys.argv[1] + "/load_s2_motion_traced_batches.jsonl")]
batches = [r for r in recs if r["k"] == "batch"]
asr = [r for r in recs if r["k"] == "asr"]


def asr_overlap(t0: float, t1: float) -> float:
    return sum(max(0.0, min(t1, a["t1"]) - max(t0, a["t0"])) for a in asr)


print(len(batches), "batches;", len(asr), "Whisper calls,", round(sum(a["t1"] - a["t0"] for a in asr), 2), "s in all")
for n in (1, 2):
    durs = [b["dur"] for b in batches if b["n"] == n]
    if durs:
        print(f"batches of {n} stream(s): {len(durs)}, engine time p50 {statistics.median(durs) * 1e3:.0f} ms")
for b in batches:
    late = b["finished"] - b["due"]
    if late > 0:
        print(
            f"late by {late * 1e3:.0f} ms: lead {(b['due'] - b['queued']) * 1e3:.0f} ms, waited"
            f" {(b['started'] - b['queued']) * 1e3:.0f} ms, ran {b['dur'] * 1e3:.0f} ms, streams {b['n']},"
            f" Whisper overlap {asr_overlap(b['started'], b['finished']) * 1e3:.0f} ms, busy {b['busy']:.2f}"
        )
