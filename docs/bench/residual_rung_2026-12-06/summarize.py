"""The figures in README.md, from the JSON beside this file: python docs/bench/residual_rung_2026-12-06/summarize.py"""

import json
from pathlib import Path

here = Path(__file__).parent
for f in sorted(here.glob("engine_*.json")):
    d = json.loads(f.read_text())
    lat = d["chunk_latency_ms"]
    print(
        f"{f.stem:34} {d['fps']:6.2f} fps  {d['decoder']:9}  decode {d['decode_ms']:5.1f} ms  "
        f"chunk p50/p95 {lat['p50']:.0f}/{lat['p95']:.0f} ms  other {d.get('host_cpu_busy_other')}"
    )
for f in sorted(here.glob("load_*.json")):
    if not f.read_text().strip():
        continue
    d = json.loads(f.read_text())
    s, st = d["summary"], d["server_status"]
    levels = [x["level"] for x in d["status_samples"] if x.get("level") is not None]
    steps = sum(a != b for a, b in zip(levels, levels[1:]))  # level changes seen by the 2 s samples
    share = {lv: round(levels.count(lv) / len(levels), 2) for lv in sorted(set(levels))}
    stats = st["stats"]
    cheaper = stats.get("chunks_cheaper", stats.get("chunks_lowres", 0))
    looped, late_frames = stats.get("chunks_looped", 0), stats.get("chunk_late_frames", 0)
    print(
        f"{f.stem:20} held {s['sessions_held']}/{s['sessions_requested']} refused {s['refusals']:2}  "
        f"TTER p50/p95 {s['tter_ms'].get('p50')}/{s['tter_ms'].get('p95')} ms (n {s['tter_ms'].get('n')})  "
        f"late {st['load']['late_batches']}/{st['scheduler']['batches']}  levels {share} changes {steps}  "
        f"cheaper chunks {cheaper} looped {looped} late frames {late_frames}  "
        f"p99 interval {s.get('worst_interval_ms_p99')} ms  dropped {s.get('frames_dropped')}  "
        f"other {d['host_cpu'].get('other_cores')}"
    )
