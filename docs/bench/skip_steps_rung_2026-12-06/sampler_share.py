"""How much of a motion chunk the sampler takes: sample_chunks at 2 and at 1 step, then decode_chunks, one batch of
1 and of 2 streams, median of 8 after 2 warm-up chunks (python sampler_share.py > sampler_share.json, in the lock)."""

import json
import sys
import time

import numpy as np

from avatarcast.engines.tiny.motion_engine import MotionEngine


def ms(v: list[float]) -> float:
    return float(np.median(v)) * 1000


out: dict = {}
for draw in ("copy", "residual"):
    e = MotionEngine.from_folder(None, threads=2, draw=draw)
    for b in (1, 2):
        states = [e.start_stream(a, "happy", 0.9, seed=i) for i, a in enumerate(["pip", "bun"][:b])]
        for _ in range(2):
            e.decode_chunks(states, e.sample_chunks(states))
        s2, s1, dec = [], [], []
        for i in range(8):  # the two step counts in turn first: the first sampler call after a decode is slower
            order = (2, 1) if i % 2 == 0 else (1, 2)
            for steps in order:
                t0 = time.perf_counter()
                lat = e.sample_chunks(states, steps)
                (s2 if steps == 2 else s1).append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            e.decode_chunks(states, lat)
            dec.append(time.perf_counter() - t0)
        out[f"{draw}_streams{b}"] = {
            "sample_2_steps_ms": round(ms(s2), 2),
            "sample_1_step_ms": round(ms(s1), 2),
            "decode_ms": round(ms(dec), 1),
            "one_step_saves_pct_of_chunk": round(100 * (ms(s2) - ms(s1)) / (ms(s2) + ms(dec)), 2),
        }
json.dump(out, sys.stdout, indent=1)
print()
