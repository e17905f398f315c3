"""The bench load table in docs/training/motion.md: `python load_table.py FOLDER`."""

import collections
import glob
import json
import sys

for p in sorted(glob.glob(sys.argv[1] + "/load_*.json")):
    d = json.load(open(p))
    s = d["summary"]
    levels = collections.Counter(x["level"] for x in d["status_samples"] if x["sessions"])
    n = sum(levels.values()) or 1
    ps = s["per_session"]
    print(
        p.split("/")[-1][:-5],
        "other cores",
        d["host_cpu"]["other_cores"],
        "TTER p50/p95",
        s["tter_ms"]["p50"],
        s["tter_ms"]["p95"],
        "p99 interval",
        [x["interval_ms_p99"] for x in ps],
        "dropped",
        [x["frames_dropped"] for x in ps],
        "ladder levels",
        {k: round(v / n, 2) for k, v in sorted(levels.items())},
    )
