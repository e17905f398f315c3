"""The tables in docs/training/motion.md ("Motion as the default engine"): `python tables.py FOLDER`."""

import collections
import glob
import json
import sys

folder = sys.argv[1]
for p in sorted(glob.glob(folder + "/load_*.json")):
    d = json.load(open(p))
    s, st = d["summary"], d["server_status"]
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
        "late batches",
        st["load"]["late_batches"],
        "of",
        st["scheduler"]["batches"],
        "engine busy",
        round(st["scheduler"]["busy_s"] / d["host_cpu"]["wall_s"], 2),
    )
for p in sorted(glob.glob(folder + "/latency_*.json")):
    d = json.load(open(p))
    s, st = d["summary"], d["server_status"]
    print(
        p.split("/")[-1][:-5],
        "other cores",
        d["host_cpu"]["other_cores"],
        "TTER p50/p95",
        s["tter_ms"]["p50"],
        s["tter_ms"]["p95"],
        "right",
        f"{s['accuracy']['correct']}/{s['accuracy']['labelled']}",
        "frame p99",
        s["frame_interval_ms"]["overall"]["p99"],
        "frames late",
        s["frames_late"],
        "late batches",
        st["load"]["late_batches"],
        "chunks looped",
        st["stats"].get("chunks_looped", 0),
    )
