# Clip by clip over the quiet rounds: each arm's median TTER minus main's, on the clips slow on main (> 600 ms).
import collections
import glob
import gzip
import json
import re
from pathlib import Path

import numpy as np

per = collections.defaultdict(lambda: collections.defaultdict(list))
for f in sorted(glob.glob(str(Path(__file__).with_name("ab_x").parent / "ab_*.json*"))):  # committed gzipped
    arm = re.match(r".*/ab_(.+)_r\d\.json", f).group(1)
    d = json.load(gzip.open(f) if f.endswith(".gz") else open(f))
    if d["host_cpu"]["other_cores"] >= 0.1:
        continue
    for c in d["clips"]:
        if c["tter_ms"] is not None:
            per[arm][c["file"]].append(c["tter_ms"])
    # server-side: final after speech_end
old = {k: np.median(v) for k, v in per["old"].items()}
for arm in ("gate", "w2t1", "gatew2t1r1"):
    m = {k: np.median(v) for k, v in per[arm].items()}
    slow = [k for k in old if old[k] > 600 and k in m]
    diff = np.array([m[k] - old[k] for k in slow])
    alld = np.array([m[k] - old[k] for k in old if k in m])
    print(
        f"{arm:11s} vs old: clips slow in old (median >600 ms, n={len(slow)}): median diff {np.median(diff):+.0f} ms, "
        f"mean {diff.mean():+.0f}, better in {int((diff < 0).sum())}/{len(diff)}; "
        f"all clips median diff {np.median(alld):+.1f}"
    )
