"""The figures in the README beside this file, from its JSON: python docs/bench/adaptive_draw_2026-12-06/summarize.py"""

import gzip
import json
from pathlib import Path

here = Path(__file__).parent


def read(f: Path) -> dict | None:
    raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
    return json.loads(raw) if raw.strip() else None


for f in sorted(here.glob("engine_*.json")):
    d = json.loads(f.read_text())
    lat = d["chunk_latency_ms"]
    print(
        f"{f.stem:30} {d['fps']:6.2f} fps  chunk p50/p95 {lat['p50']:.0f}/{lat['p95']:.0f} ms  "
        f"other {d.get('host_cpu_busy_other')}"
    )
for f in sorted(here.glob("load_*.json*")):
    if (d := read(f)) is None:
        continue
    s, st = d["summary"], d["server_status"]
    levels = [x["level"] for x in d["status_samples"] if x.get("level") is not None]
    steps = sum(a != b for a, b in zip(levels, levels[1:]))  # level changes seen by the 2 s samples
    share = {lv: round(levels.count(lv) / len(levels), 2) for lv in sorted(set(levels))}
    stats = st["stats"]
    cheaper = stats.get("chunks_cheaper", 0)
    print(
        f"{f.name.split('.')[0]:22} held {s['sessions_held']}/{s['sessions_requested']} refused {s['refusals']:2}  "
        f"TTER p50/p95 {s['tter_ms'].get('p50')}/{s['tter_ms'].get('p95')} ms (n {s['tter_ms'].get('n')})  "
        f"late {st['load']['late_batches']}/{st['scheduler']['batches']}  levels {share} changes {steps}  "
        f"chunks cheaper {cheaper} looped {stats.get('chunks_looped', 0)}  "
        f"p99 interval {s.get('worst_interval_ms_p99')} ms  dropped {s.get('frames_dropped')}  "
        f"ratio {st['load'].get('cheaper_cost_ratio')}  other {d['host_cpu'].get('other_cores')}"
    )
for f in sorted(here.glob("zh_*.json*")):
    if (d := read(f)) is None:
        continue
    s, st = d["summary"], d["server_status"]
    refusals = [c["error"] for c in d["clips"] if "refused 1013" in str(c.get("error"))]
    fi = s["frame_interval_ms"]["overall"]
    print(
        f"{f.name.split('.')[0]:22} in {s['measured']}/{s['clips']} refused {len(refusals)}  "
        f"TTER p50/p95 {s['tter_ms']['p50']}/{s['tter_ms']['p95']} ms  late {st['load']['late_batches']}/"
        f"{st['scheduler']['batches']}  chunks cheaper {st['stats'].get('chunks_cheaper', 0)}  "
        f"interval p99 {fi['p99']} ms, over 160 {fi['over_160ms']}  frames late {s['frames_late']}  "
        f"emotion right {s['accuracy']['correct']}/{s['accuracy']['labelled']}  "
        f"ratio {st['load'].get('cheaper_cost_ratio')}  other {d['host_cpu'].get('other_cores')}"
    )
