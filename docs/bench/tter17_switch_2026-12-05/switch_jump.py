"""How far the picture jumps at an emotion switch, tiny engine (shipped weights), avatar 0, 2 sampler steps.

A reaction plays `from` for two chunks; at frame `offset` of its second chunk the emotion becomes `to`:
- cached: the next frame is the cached first chunk of `to` (a stream of its own, from rest: templates/cache.py),
  as the session does for a switch to a cached emotion (today at the boundary, offset 4; now from any offset);
- continued: at the boundary, the sampler continues the `from` stream with the label `to` (the path of an
  emotion with no cached chunk).
The jump is the mean absolute difference (0..255, RGB over the alpha-weighted avatar) between the last frame
of the old emotion shown and the first frame of the new one; for scale, the same between consecutive frames of
one stream. python switch_jump.py [seeds]"""

import sys

import numpy as np

from avatarcast.engines.tiny.engine import TinyEngine
from avatarcast.templates import load_templates
from avatarcast.templates.cache import variant_seed

PAIRS = [("sad", "angry"), ("confused", "love"), ("love", "surprised"), ("happy", "sad"), ("excited", "idle")]
seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
eng = TinyEngine.load(steps=2)
tpl = load_templates()


def rgb(f: np.ndarray) -> np.ndarray:
    a = f[..., 3:4].astype(np.float32) / 255.0
    return f[..., :3].astype(np.float32) * a  # over black: the background does not count


def jump(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(rgb(a) - rgb(b)).mean())


consecutive, cached, continued = [], {o: [] for o in range(4)}, []
for frm, to in PAIRS:
    if to not in eng.emotions or frm not in eng.emotions:
        continue
    cache = eng.next_chunk([eng.start_stream(0, to, tpl[to].default_intensity, variant_seed(to, 0))])[0]
    for seed in range(seeds):
        st = eng.start_stream(0, frm, tpl[frm].default_intensity, seed)
        c0 = eng.next_chunk([st])[0]
        c1 = eng.next_chunk([st])[0]
        frames = np.concatenate([c0, c1])
        consecutive += [jump(frames[i], frames[i + 1]) for i in range(len(frames) - 1)]
        for o in range(4):  # o frames of chunk 1 shown: the last old frame is frames[3 + o] (o = 0: chunk 0's last)
            cached[o].append(jump(frames[3 + o], cache[0]))
        cont = eng.start_stream(0, frm, tpl[frm].default_intensity, seed)
        eng.next_chunk([cont])
        eng.next_chunk([cont])
        eng.set_emotion(cont, to, tpl[to].default_intensity)
        continued.append(jump(c1[-1], eng.next_chunk([cont])[0][0]))


def stat(x: list[float]) -> str:
    return f"mean {np.mean(x):.2f}, p90 {np.percentile(x, 90):.2f} (n={len(x)})"


print(f"consecutive frames of one stream: {stat(consecutive)}")
for o in range(4):
    when = "at the chunk boundary (before this change)" if o == 0 else f"after {o} frame(s) of the chunk"
    print(f"cached chunk of the new emotion, switched {when}: {stat(cached[o])}")
print(f"continued by the sampler at the boundary (no cached chunk): {stat(continued)}")
