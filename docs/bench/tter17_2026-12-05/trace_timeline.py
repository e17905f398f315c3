# The N slowest utterances' timelines (t=0 at the VAD's speech_end). Usage: python trace_timeline.py TRACE N
# TRACE: a file written by trace_sitecustomize.py (docs/speech.md, issue 17).
import sys

rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
rows = [(k, t, int(i), float(a), float(b), float(c), float(p)) for k, t, i, a, b, c, p in rows]
rows.sort(key=lambda r: r[3])
finals = [r for r in rows if r[0] == "vad_speech_end"]
# for each speech_end, the time until the final event of that owner
out = []
for f in finals:
    own = f[1]
    fin = next((r for r in rows if r[0] == "ev_final" and r[1].startswith(own + ":") and r[3] >= f[3]), None)
    if fin:
        out.append((fin[3] - f[3], f))
out.sort(key=lambda x: -x[0])
for d, f in out[: int(sys.argv[2])]:
    t0 = f[3]
    print(f"=== owner {f[1][:8]} speech_end->final {d * 1000:.0f} ms (t=0 at speech_end event)")
    for r in rows:
        if r[0] in ("ort",) and "silero" in r[1]:
            continue
        if r[0] in ("encode_img",):
            continue
        if r[4] >= t0 - 1.2 and r[3] <= t0 + d + 0.05:
            dur = (r[4] - r[3]) * 1000
            tag = r[1][:20]
            print(
                f"  {(r[3] - t0) * 1000:7.0f} .. {(r[4] - t0) * 1000:7.0f} ({dur:5.0f}) {r[0]:16s} {tag:22s} tid={r[2]}"
            )
