"""How many device ops the cut-out draw on torch issues for one chunk, and its wall time, by the avatars in the chunk:
`python -m tools.cutout_torch_ops [--device cpu] [--streams 200] [--avatars 8,16] [--repeat 3]`.

One chunk's motions are sampled for `streams` streams over the first A avatars of a list of 16 (the 6 built-in ones,
then random-<n>), their boxes grown to the engine's buckets, and the backend's draw_boxes_t (the engine's call on
CUDA) is run under a TorchDispatchMode that counts the aten ops it dispatches (on CUDA each op but a view is a kernel
launch or more: the cost docs/bench/cutout_gpu_2026-12-06 measured); then timed, best of `repeat` (the first call,
counted, is the warm-up), with the host's numpy plan's share. --kernel compiled|triton: the draw's other kernels
(engines/tiny/cutout_torch.KERNELS; their ops not counted). One JSON line an A.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

import numpy as np

AVATARS = ("pip", "bun", "tok", "mo", "luna", "kiko") + tuple(f"random-{n}" for n in range(11, 21))


def count_ops(fn, *args):
    """fn(*args) -> (its result, Counter of the aten ops it dispatched; views under "view:<name>": no kernel)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: Counter[str] = Counter()

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen[("view:" if func.is_view else "") + str(func.overloadpacket.__name__)] += 1
            return func(*args, **(kwargs or {}))

    with _Count():
        out = fn(*args)
    return out, seen


def measure(eng, streams: int, n_avatars: int, repeat: int, seed: int = 0, kernel: str = "eager") -> dict:
    """eng: MotionEngine on the torch backend with the cut-out draw (its avatars kept from one A to the next)."""
    import torch

    from avatarcast.engines.tiny import cutout_torch

    be = eng.backend
    be.use_kernel(kernel)
    device = be.device
    emotions = eng.emotions
    states = [
        eng.start_stream(AVATARS[i % n_avatars], emotions[i % len(emotions)], 1.0, seed + i) for i in range(streams)
    ]
    lat = eng.sample_chunks(states)
    B, T = lat.shape[:2]
    raw = (lat.reshape(B, T, -1) * eng.std + eng.mean).astype(np.float32)
    refs = [eng._avatar(json.loads(s.avatar_key), s.avatar_key).ref for s in states]
    boxes = [eng.bucket_box(eng.draw_box(r)) for r in raw]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        if kernel != "eager":  # a dispatch mode sees neither a compiled graph's ops nor Triton's: the warm-up compiles
            ops: Counter[str] = Counter()
            be.draw_boxes_t(refs, raw, boxes)
        else:
            _, ops = count_ops(be.draw_boxes_t, refs, raw, boxes)  # and the warm-up (the joined texels kept)
        best, plan_s = float("inf"), 0.0
        planned = [0.0]
        plan = cutout_torch.plan

        def timed_plan(*a, **k):
            t0 = time.perf_counter()
            try:
                return plan(*a, **k)
            finally:
                planned[0] += time.perf_counter() - t0

        cutout_torch.plan = timed_plan  # the host's share: the numpy plan of each avatar's frames
        try:
            for _ in range(repeat):
                sync()
                planned[0] = 0.0
                t0 = time.perf_counter()
                be.draw_boxes_t(refs, raw, boxes)
                sync()
                if time.perf_counter() - t0 < best:
                    best, plan_s = time.perf_counter() - t0, planned[0]
        finally:
            cutout_torch.plan = plan
    return {
        "device": device,
        "streams": streams,
        "frames": B * T,
        "kernel": kernel,
        "avatars": n_avatars,
        "box_sizes": len({b[2:] for b in boxes}),
        "ops": sum(ops.values()) if ops else None,
        "ops_not_views": sum(v for k, v in ops.items() if not k.startswith("view:")) if ops else None,
        "top_ops": dict(ops.most_common(8)),
        "wall_s": round(best, 3),
        "plan_s": round(plan_s, 3),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--avatars", default="8,16", help="comma-separated counts (at most 16)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--kernel", default="eager", help="eager, compiled or triton (ops counted for eager only)")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    from avatarcast.engines.tiny.motion_engine import MotionEngine

    eng = MotionEngine.from_folder(None, draw="cutout", backend="torch", device=a.device)
    for n in (int(x) for x in a.avatars.split(",")):
        print(json.dumps(measure(eng, a.streams, n, a.repeat, kernel=a.kernel)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
