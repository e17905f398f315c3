"""What a mid-reaction emotion switch waited on, switch by switch, from a switch trace (trace/sitecustomize.py) and
the bench run's JSON: python analyze_switch.py TRACE_FILE BENCH_JSON."""

import gzip
import json
import sys
from collections import defaultdict

trace, bench = sys.argv[1], sys.argv[2]
recs = [json.loads(line) for line in open(trace)]
by_sid = defaultdict(list)
for r in recs:
    by_sid[r["sid"]].append(r)
clips = json.load(gzip.open(bench) if bench.endswith(".gz") else open(bench))["clips"]  # the committed runs: .json.gz
by_tter = {round(c["server"]["tter_ms"], 3): c for c in clips if c.get("server") and c["server"].get("tter_ms")}
lat = {(r["sid"], r["utterance"]): r for r in recs if r["k"] == "latency"}

rows = []
for r in recs:
    if r["k"] != "decide" or r["state"] != "reacting" or r["label"] == r.get("playing_emotion"):
        continue
    sid, t = r["sid"], r["t"]
    ev = by_sid[sid]
    shown = [e for e in ev if e["k"] == "shown" and e["t"] >= t]
    first = next((e for e in shown if e["emotion"] == r["label"]), None)
    before = [e for e in ev if e["k"] == "shown" and e["t"] < t]
    q = before[-1]["queued_after"] if before else None
    ladder = before[-1]["ladder"] if before else None
    react = r["after_reaction"]
    stored = next(
        (
            e
            for e in ev
            if e["k"] == "stored" and e["t"] >= t - 1e-6 and e["reaction"] == react and e["emotion"] == r["label"]
        ),
        None,
    )
    between = [e for e in shown if first is None or e["t"] < first["t"]]
    other = [e for e in ev if e["k"] in ("shown",) and e["t"] >= t and (first is None or e["t"] <= first["t"])]
    lt = lat.get((sid, r["turn"]))
    clip = by_tter.get(round(lt["tter_ms"], 3)) if lt and lt.get("tter_ms") is not None else None
    rows.append(
        {
            "clip": clip["file"] if clip else None,
            "sid": sid[:6],
            "turn": r["turn"],
            "from": r.get("playing_emotion"),
            "to": r["label"],
            "by": r["by"],
            "offset": (r["upcoming"] - r["start_frame"]) % 4 if r.get("start_frame") is not None else None,
            "next_frame_ms": round((r["next_t"] - t) * 1000, 1),
            "boundary_ms": round((r["boundary_t"] - t) * 1000, 1),
            "new_chunk_ready_ms": None if stored is None else round((stored["t"] - t) * 1000, 1),
            "new_chunk_source": None if stored is None else stored["source"],
            "first_frame_ms": None if first is None else round((first["t"] - t) * 1000, 1),
            "old_frames_shown": sum(1 for e in between if e["emotion"] != r["label"]),
            "late_frames": sum(1 for e in between if e["late"]),
            "queued_at_decision": q,
            "ladder": ladder,
            "tter_ms": None if lt is None else lt["tter_ms"],
            "frame_slot_ms": (clip or {}).get("breakdown_ms", {}).get("frame slot") if clip else None,
        }
    )
cols = list(rows[0]) if rows else []
print("\t".join(cols))
for row in sorted(rows, key=lambda x: -(x["tter_ms"] or 0)):
    print("\t".join(str(row[c]) for c in cols))
json.dump(rows, open(trace + ".switches.json", "w"), indent=1)
