# For each Whisper run kind (urgentY = a pause's speculation), which other work was busy during it (share of the
# run's wall time). Usage: python trace_overlap.py TRACE
# TRACE: a file written by trace_sitecustomize.py (docs/speech.md, issue 17).
import collections
import statistics as st
import sys

rows = []
for line in open(sys.argv[1]):
    k, tag, tid, t0, t1, cpu, pcpu = line.rstrip("\n").split("\t")
    rows.append((k, tag, int(tid), float(t0), float(t1), float(cpu), float(pcpu)))
kinds = collections.Counter((r[0], r[1] if r[0] in ("ort", "e5", "encode_img") else "") for r in rows)
print("counts", dict(kinds))


def cls(r):
    k, tag = r[0], r[1]
    if k == "ort":
        return "vad" if "silero" in tag.lower() or tag == "mem" else "engine:" + tag
    return k


# per-kind totals
tot = collections.defaultdict(lambda: [0, 0.0, 0.0])
for r in rows:
    if r[3] == r[4]:
        continue
    c = tot[cls(r)]
    c[0] += 1
    c[1] += (r[4] - r[3]) * 1000
    c[2] += r[5]
span = max(r[4] for r in rows) - min(r[3] for r in rows)
print(f"span {span:.0f}s")
for k, (n, w, c) in sorted(tot.items(), key=lambda x: -x[1][1]):
    print(
        f"  {k:28s} n={n:6d} wall={w / 1000:7.1f}s ({w / 1000 / span:.2f} of span) mean={w / n:6.1f}ms "
        f"threadcpu={c / 1000:6.1f}s"
    )
wh = [r for r in rows if r[0] == "whisper"]
for sel in ("urgentY", "urgent", "routineY"):
    runs = [r for r in wh if r[1].startswith(sel + ":")]
    if not runs:
        continue
    walls = sorted((r[4] - r[3]) * 1000 for r in runs)
    cpu = [r[6] for r in runs]
    print(
        f"\n{sel}: n={len(runs)} wall p50={st.median(walls):.0f} p95={walls[int(0.95 * len(walls)) - 1]:.0f} "
        f"max={walls[-1]:.0f}; process cpu/wall median={st.median([r[6] / ((r[4] - r[3]) * 1000) for r in runs]):.2f}"
    )
    # overlap of other kinds during these runs
    ov = collections.defaultdict(float)
    ovslow = collections.defaultdict(float)
    tw = sum((r[4] - r[3]) for r in runs)
    slow = [r for r in runs if (r[4] - r[3]) * 1000 >= walls[int(0.75 * len(walls))]]
    tws = sum((r[4] - r[3]) for r in slow)
    for o in rows:
        if o[3] == o[4] or o is None:
            continue
        c = cls(o)
        if c in ("whisper",):
            continue
        if c in ("read", "read_partial"):
            pass
        for r in runs:
            a, b = max(r[3], o[3]), min(r[4], o[4])
            if a < b:
                ov[c] += b - a
                if r in slow:
                    ovslow[c] += b - a
    print("  fraction of the run's wall time each other kind was busy (all runs | slowest quarter):")
    for c in sorted(ov, key=lambda c: -ov[c]):
        print(f"    {c:28s} {ov[c] / tw:.2f} | {ovslow[c] / tws:.2f}")
