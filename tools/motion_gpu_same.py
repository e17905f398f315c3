"""The motion engine's frames on one device before and after a change, to the bit.

    python tools/motion_gpu_same.py save FILE [--device cuda] [--draw copy] [--sessions 24]
    python tools/motion_gpu_same.py check FILE [--pad-rows N]  (prints one JSON object; exit 1 if any value moved)

`save` samples two chunks for `sessions` streams over 8 avatars (their emotions chosen so that effects show) and
keeps the second chunk's motions and frames (`decode_chunks`, as served); `check` decodes the same motions with the
code in the tree now and compares. Run `save` in the old tree and `check` in the new one on the same machine: the
GPU's CPU tests (tests/engines/test_motion_torch_folder.py) run on CPU torch, where the CUDA-only paths do not run.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _engine_and_states(device: str, draw: str, sessions: int):
    from avatarcast.engines.tiny.motion_engine import MotionEngine

    engine = MotionEngine.from_folder(None, draw=draw, backend="torch", device=device)
    avatars = ("pip", "bun", "kiko", "luna", "random-11", "random-12", "random-13", "random-14")
    emotions = ("love", "sad", "surprised", "angry", "laughing", "happy")
    states = [engine.start_stream(avatars[i % 8], emotions[i % 6], 1.0, i) for i in range(sessions)]
    return engine, states


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("save", "check"))
    ap.add_argument("file")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--draw", default="copy", choices=("copy", "residual"))
    ap.add_argument("--sessions", type=int, default=24)
    ap.add_argument("--pad-rows", type=int, default=0, help="check: the backend's pad_rows (0: not padded)")
    args = ap.parse_args(argv)
    if args.what == "save":
        engine, states = _engine_and_states(args.device, args.draw, args.sessions)
        engine.sample_chunks(states)
        lat = engine.sample_chunks(states)
        frames = engine.decode_chunks(states, lat)
        np.savez(args.file, lat=lat, frames=frames, draw=args.draw, device=args.device)
        print(json.dumps({"saved": args.file, "frames": int(frames.shape[0] * frames.shape[1])}))
        return 0
    got = np.load(args.file)
    engine, states = _engine_and_states(str(got["device"]), str(got["draw"]), got["lat"].shape[0])
    engine.backend.pad_rows = args.pad_rows  # type: ignore[attr-defined]
    frames = engine.decode_chunks(states, got["lat"])
    d = np.abs(frames.astype(np.int16) - got["frames"])
    r = {
        "draw": str(got["draw"]),
        "frames": int(d.shape[0] * d.shape[1]),
        "values_apart": int((d > 0).sum()),
        "max_levels": int(d.max()),
        "values_over_2": int((d > 2).sum()),
        "mean_levels": float(d.mean()),
        "pad_rows": args.pad_rows,
        "values": int(d.size),
    }
    print(json.dumps(r))
    return 1 if r["values_apart"] else 0


if __name__ == "__main__":
    sys.exit(main())
