"""The A/B table of this folder: per arm and round, and the switches the traces saw (python ab_table.py)."""

import collections
import glob
import gzip
import json
import re
from pathlib import Path

import numpy as np

here = Path(__file__).parent
SLOW = ("zh28_angry.ogg", "zh38_love.ogg", "zh20_surprised.ogg")
arms = collections.defaultdict(list)
# ab_*: the alternated A/B; traced_*_r0: the same command, one run per arm before it (round 0)
# (committed gzipped: *.json.gz; a fresh run's *.json reads too)
for f in sorted(glob.glob(str(here / "ab_*.json*")) + glob.glob(str(here / "traced_*_r0.json*"))):
    m = re.match(r".*/(?:ab|traced)_(.+)_r(\d)\.json", f)
    arms[m.group(1)].append((int(m.group(2)), json.load(gzip.open(f) if f.endswith(".gz") else open(f))))

print(
    "| arm | round | other_cores | TTER p50 / p95 / max ms | TTER zh38 / zh20 ms | frame slot zh28 / zh38 / zh20 ms | "
    "right | early | frame interval p99 / max ms, >160 | frames late | held frames | chunks discarded |"
)
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
quiet = collections.defaultdict(list)
for arm, runs in arms.items():
    for r, d in sorted(runs, key=lambda x: x[0]):
        s, clips = d["summary"], {c["file"]: c for c in d["clips"]}
        t = np.array([c["tter_ms"] for c in d["clips"] if c["tter_ms"] is not None])
        oc = d["host_cpu"]["other_cores"]
        slot = " / ".join(
            f"{(clips[c].get('breakdown_ms') or {}).get('frame slot', float('nan')):.0f}" for c in SLOW if c in clips
        )
        fi = s["frame_interval_ms"]["overall"]
        st = (d.get("server_status") or {}).get("stats", {})
        print(
            f"| {arm} | {r} | {oc:.2f} | {np.percentile(t, 50):.0f} / {s['tter_ms']['p95']:.0f} / {t.max():.0f} | "
            f"{clips['zh38_love.ogg']['tter_ms']:.0f} / {clips['zh20_surprised.ogg']['tter_ms']:.0f} | "
            f"{slot} | {s['accuracy']['correct']} | {s['first_decided_by'].get('partial', 0)} | "
            f"{fi['p99']:.1f} / {fi['max']:.1f}, {fi['over_160ms']} | {s['frames_late']} | "
            f"{st.get('chunk_late_frames', 0)} | {st.get('chunks_discarded', 0)} |"
        )
        quiet[arm].append((oc, s["tter_ms"]["p50"], s["tter_ms"]["p95"], t))
print()
for arm, rows in quiet.items():
    q = [x for x in rows if x[0] < 0.1]
    allp = np.concatenate([x[3] for x in rows])
    p50, p95 = np.median([x[1] for x in rows]), np.median([x[2] for x in rows])
    line = f"{arm}: all rounds median p50 / p95 {p50:.0f} / {p95:.0f}"
    line += f"; pooled clips p90 / p95 {np.percentile(allp, 90):.0f} / {np.percentile(allp, 95):.0f}"
    if q:
        qq = np.concatenate([x[3] for x in q])
        line += (
            f"; quiet rounds ({len(q)}) median p50 / p95 {np.median([x[1] for x in q]):.0f} / "
            f"{np.median([x[2] for x in q]):.0f}, pooled p95 {np.percentile(qq, 95):.0f}"
        )
    print(line)

# the switches each traced run saw (trace/analyze_switch.py on trace_<arm>_r<round>)
print()
for f in sorted(glob.glob(str(here / "trace_*.switches.json"))):
    rows = json.load(open(f))
    waits = [x["first_frame_ms"] for x in rows if x["first_frame_ms"] is not None]
    desc = ", ".join(
        f"{(x['clip'] or '?').removesuffix('.ogg')} {x['from']}->{x['to']} offset {x['offset']}: "
        f"{x['first_frame_ms']} ms (boundary {x['boundary_ms']}, chunk ready {x['new_chunk_ready_ms']})"
        for x in rows
    )
    print(f"{Path(f).name.split('.')[0]}: {len(rows)} switches; {desc}")

# clip by clip, over all rounds: each clip's median TTER per arm
print()
med = {}
for arm, runs in arms.items():
    per = collections.defaultdict(list)
    for _, d in runs:
        for c in d["clips"]:
            if c["tter_ms"] is not None:
                per[c["file"]].append(c["tter_ms"])
    med[arm] = {f: float(np.median(v)) for f, v in per.items()}
if {"base", "switch"} <= med.keys():
    common = sorted(set(med["base"]) & set(med["switch"]))
    diff = {f: med["switch"][f] - med["base"][f] for f in common}
    slow = [f for f in common if med["base"][f] > 500]
    print(
        f"switch - base, median TTER per clip: median over {len(common)} clips {np.median(list(diff.values())):+.1f} ms"
    )
    for f in sorted(slow, key=lambda f: -med["base"][f]):
        print(f"  {f}: base {med['base'][f]:.0f} -> switch {med['switch'][f]:.0f} ms ({diff[f]:+.0f})")
