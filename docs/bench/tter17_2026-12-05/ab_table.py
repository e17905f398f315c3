# The A/B runs here, per arm and round, and pooled over the quiet rounds (other load < 0.1 core).
import collections
import glob
import gzip
import json
import re
from pathlib import Path

import numpy as np

arms = collections.defaultdict(list)
for f in sorted(glob.glob(str(Path(__file__).with_name("ab_x").parent / "ab_*.json*"))):  # committed gzipped
    m = re.match(r".*/ab_(.+)_r(\d)\.json", f)
    try:
        d = json.load(gzip.open(f) if f.endswith(".gz") else open(f))
    except Exception:
        continue
    arms[m.group(1)].append((int(m.group(2)), d))
print(
    f"{'arm':12s} {'round':5s} {'other':5s} {'p50':>6s} {'p90':>6s} {'p95':>6s} {'max':>6s} "
    f"{'right':>5s} {'early':>5s} {'asr p95':>9s} {'fr p99':>6s}"
)
for arm, runs in arms.items():
    pooled, pooled_q = [], []
    for r, d in sorted(runs, key=lambda x: x[0]):
        t = np.array([c["tter_ms"] for c in d["clips"] if c["tter_ms"] is not None])
        asr = np.array([((c.get("server") or {}).get("stages_ms") or {}).get("asr", 0) for c in d["clips"]])
        s = d["summary"]
        oc = d["host_cpu"]["other_cores"]
        pooled.append(t)
        if oc < 0.1:
            pooled_q.append(t)
        print(
            f"{arm:12s} {r:5d} {oc:5.2f} {np.percentile(t, 50):6.0f} {np.percentile(t, 90):6.0f} "
            f"{s['tter_ms']['p95']:6.0f} {t.max():6.0f} {s['accuracy']['correct']:5d} "
            f"{s['first_decided_by'].get('partial', 0):5d} {np.percentile(asr, 95):9.0f} "
            f"{s['frame_interval_ms']['overall']['p99']:6.1f}"
        )
    if pooled_q:
        q = np.concatenate(pooled_q)
        print(
            f"{arm:12s} quiet pooled n={len(q)}: p50 {np.percentile(q, 50):.0f} p90 {np.percentile(q, 90):.0f} "
            f"p95 {np.percentile(q, 95):.0f} mean of top 10% {np.sort(q)[-len(q) // 10 :].mean():.0f}"
        )
