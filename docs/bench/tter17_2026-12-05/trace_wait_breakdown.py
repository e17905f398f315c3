# What held the model while the final's speculation waited: this stream's routine partial, the other session's
# partial or urgent run. Usage: python trace_wait_breakdown.py TRACE
# TRACE: a file written by trace_sitecustomize.py (docs/speech.md, issue 17).
import collections
import sys

rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
rows = [(k, t, int(i), float(a), float(b), float(c), float(p)) for k, t, i, a, b, c, p in rows]
rows.sort(key=lambda r: r[3])
evs = [r for r in rows if r[0] in ("ev_partial", "ev_final")]


def owner_of(w):
    e = min(evs, key=lambda e: abs(e[3] - w[4]))
    return e[1].split(":")[0] if abs(e[3] - w[4]) < 0.01 else "?"


wh = [r for r in rows if r[0] == "whisper"]
comp = collections.defaultdict(float)
n = 0
waits = []
for f in [r for r in rows if r[0] == "vad_speech_end"]:
    own = f[1]
    fin = next((r for r in rows if r[0] == "ev_final" and r[1].startswith(own + ":") and r[3] >= f[3]), None)
    P = max((r[3] for r in rows if r[0] == "pause" and r[1] == own and r[3] <= f[3]), default=None)
    spec = min(
        (r for r in wh if r[1].startswith("urgent") and fin and abs(r[4] - fin[3]) < 0.01),
        key=lambda r: abs(r[4] - fin[3]),
        default=None,
    )
    if spec is None or P is None:
        continue
    n += 1
    c = collections.defaultdict(float)
    for w in wh:
        a, b = max(w[3], P), min(w[4], spec[3])
        if a < b and w is not spec:
            who = "own" if owner_of(w) == own else "other"
            c[who + " " + w[1].split(":")[0].rstrip("Y")] += b - a
    for k, v in c.items():
        comp[k] += v
    waits.append(spec[3] - P)
print(
    f"{n} speculations; total wait {sum(waits):.1f}s; wait spent while these ran (s):",
    {k: round(v, 1) for k, v in comp.items()},
)
