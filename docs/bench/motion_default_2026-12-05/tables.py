"""The tables in docs/training/motion.md (two sessions, motion against tiny): `python tables.py FOLDER`.

Reads `bench load` JSON (load_*.json) and `bench latency` JSON (latency_*.json) from FOLDER; also the folder
docs/bench/motion_small_2026-12-05 (its load runs)."""

import collections
import glob
import gzip
import json
import sys


def common(name: str, d: dict) -> list:
    """What every row says: the run, the other load on the machine, TTER p50 / p95."""
    s = d["summary"]
    return [name, "other cores", d["host_cpu"]["other_cores"], "TTER p50/p95", s["tter_ms"]["p50"], s["tter_ms"]["p95"]]


def load_row(d: dict) -> list:
    s, st = d["summary"], d["server_status"]
    levels = collections.Counter(x["level"] for x in d["status_samples"] if x["sessions"])
    n = sum(levels.values()) or 1
    ps = s["per_session"]
    return [
        "p99 interval",
        [x["interval_ms_p99"] for x in ps],
        "dropped",
        [x["frames_dropped"] for x in ps],
        "ladder levels",
        {k: round(v / n, 2) for k, v in sorted(levels.items())},
        "late batches",
        st["load"].get("late_batches"),
        "of",
        st["scheduler"]["batches"],
        "engine busy",
        round(st["scheduler"]["busy_s"] / d["host_cpu"]["wall_s"], 2),
    ]


def latency_row(d: dict) -> list:
    s, st = d["summary"], d["server_status"]
    return [
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
    ]


if __name__ == "__main__":
    folder = sys.argv[1]
    for kind, row in (("load", load_row), ("latency", latency_row)):
        for p in sorted(glob.glob(f"{folder}/{kind}_*.json") + glob.glob(f"{folder}/{kind}_*.json.gz")):
            d = json.load(gzip.open(p) if p.endswith(".gz") else open(p))  # the latency runs are committed gzipped
            print(*common(p.split("/")[-1].removesuffix(".gz")[:-5], d), *row(d))
