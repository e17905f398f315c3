"""Per-avatar preparation and engine load, the residual engine with and without its cheaper (copy) decoder loaded."""

import dataclasses
import json
import sys
import time

from avatarcast.engines.tiny.motion_backends import OnnxMotionBackend
from avatarcast.engines.tiny.motion_engine import MotionEngine
from avatarcast.engines.tiny.motion_weights import load_motion_manifest, motion_folder

man = load_motion_manifest(motion_folder(None, "residual"))
out: dict = {}
for arm in ("without", "with", "without", "with"):  # alternated
    m = man if arm == "with" else dataclasses.replace(man, cheaper_draw=None)
    t0 = time.perf_counter()
    e = MotionEngine(OnnxMotionBackend(m, threads=2), m.mean, m.std, 2, m.weights_hash)
    load_s = time.perf_counter() - t0
    prep = []
    for seed in range(6):
        t0 = time.perf_counter()
        e._avatar(f"random-{700000 + seed}")
        prep.append(time.perf_counter() - t0)
    held = sorted(e._avatar("random-700000").ref)
    r = out.setdefault(arm, {"load_s": [], "prep_ms_median": [], "held": held})
    r["load_s"].append(round(load_s, 3))
    r["prep_ms_median"].append(round(sorted(prep)[len(prep) // 2] * 1000, 1))
out["cheaper_decoder_reads"] = sorted(e.backend._inputs["cheaper"])
json.dump(out, sys.stdout, indent=1)
