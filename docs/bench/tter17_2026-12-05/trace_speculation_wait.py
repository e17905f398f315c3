# Per utterance: end of speech (VAD) -> final, pause -> the final's speculation starting (its wait for the
# model), and its run. Usage: python trace_speculation_wait.py TRACE
# TRACE: a file written by trace_sitecustomize.py (docs/speech.md, issue 17).
import sys

import numpy as np

rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
rows = [(k, t, int(i), float(a), float(b), float(c), float(p)) for k, t, i, a, b, c, p in rows]
rows.sort(key=lambda r: r[3])
res = []
for f in [r for r in rows if r[0] == "vad_speech_end"]:
    own = f[1]
    fin = next((r for r in rows if r[0] == "ev_final" and r[1].startswith(own + ":") and r[3] >= f[3]), None)
    if not fin:
        continue
    P = max((r[3] for r in rows if r[0] == "pause" and r[1] == own and r[3] <= f[3]), default=None)
    spec = min(
        (r for r in rows if r[0] == "whisper" and r[1].startswith("urgent") and abs(r[4] - fin[3]) < 0.01),
        key=lambda r: abs(r[4] - fin[3]),
        default=None,
    )
    if spec is None or P is None:
        res.append((fin[3] - f[3], None, None, None))
        continue
    # was anything else holding the model between P and spec start?
    res.append((fin[3] - f[3], spec[3] - P, spec[4] - spec[3], P - f[3]))
ok = [r for r in res if r[1] is not None]
print(f"{len(res)} utterances, {len(ok)} with a pause+speculation matched")
a = np.array(ok)
for name, i in (("end->final", 0), ("pause->spec start (wait)", 1), ("spec run", 2), ("pause - speech_end evt", 3)):
    v = np.sort(a[:, i] * 1000)
    print(
        f"  {name:26s} p50 {np.median(v):6.0f}  p90 {np.percentile(v, 90):6.0f}  "
        f"p95 {np.percentile(v, 95):6.0f} max {v[-1]:6.0f}"
    )
worst = a[np.argsort(-a[:, 0])][:8] * 1000
print("worst 8 (end->final, wait, run):", [tuple(int(x) for x in w[:3]) for w in worst])
