"""The figures in README.md, from the files beside this one: python docs/bench/skip_steps_rung_2026-12-06/summarize.py

Time on each rung: from the server's own ladder log (ladder_<run>.log, its "degradation level" lines, copied from the
bench server's log), between the sessions' start and the run's end; the 2 s status samples give the same shares."""

import json
import re
from datetime import datetime
from pathlib import Path

here = Path(__file__).parent
STAMP = "%Y-%m-%d %H:%M:%S,%f"


def stamp(line: str) -> datetime:
    return datetime.strptime(line[:23], STAMP)


def rung_seconds(run: str, seconds: float) -> dict[int, float]:
    """Seconds at each ladder level from the first session held to `seconds` later."""
    err = (here / f"{run}.err").read_text().splitlines()
    t0 = next(stamp(x) for x in err if "session 0 held" in x)
    changes = [
        (stamp(x), int(m.group(1)), int(m.group(2)))
        for x in (here / f"ladder_{run}.log").read_text().splitlines()
        if (m := re.search(r"degradation level (\d) \(.*?\) -> (\d)", x))
    ]
    at, level, out = 0.0, 0, {}
    for t, old, new in changes:
        s = min(max((t - t0).total_seconds(), 0.0), seconds)
        out[old] = out.get(old, 0.0) + s - at
        at, level = s, new
    out[level] = out.get(level, 0.0) + seconds - at
    return {k: round(v, 1) for k, v in sorted(out.items()) if v > 0}


for f in sorted(here.glob("*_[0-9].json")):
    if not f.read_text().strip():
        continue
    d = json.loads(f.read_text())
    s, st = d["summary"], d["server_status"]
    levels = [x["level"] for x in d["status_samples"] if x.get("level") is not None]
    share = {lv: round(levels.count(lv) / len(levels), 2) for lv in sorted(set(levels))}
    stats = st["stats"]
    print(
        f"{f.stem:20} held {s['sessions_held']}/{s['sessions_requested']} refused {s['refusals']:2}  "
        f"late {st['load']['late_batches']}/{st['scheduler']['batches']}  "
        f"rung seconds {rung_seconds(f.stem, d['seconds'])}  sampled shares {share}  "
        f"cheaper chunks {stats.get('chunks_cheaper', 0)} looped {stats.get('chunks_looped', 0)}  "
        f"late frames {stats.get('chunk_late_frames', 0)}  "
        f"TTER p50/p95 {s['tter_ms'].get('p50')}/{s['tter_ms'].get('p95')} ms (n {s['tter_ms'].get('n')})  "
        f"p99 interval {s.get('worst_interval_ms_p99')} ms  dropped {s.get('frames_dropped')}  "
        f"other {d['host_cpu'].get('other_cores')}"
    )
share = here / "sampler_share.json"
if share.exists() and share.read_text().strip():
    for k, v in json.loads(share.read_text()).items():
        print(f"{k:20} {v}")
