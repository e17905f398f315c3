"""Where a motion chunk's time goes on torch: the networks, or the host-side numpy around them.

    python -m tools.motion_torch_profile [--device cpu|cuda] [--sessions 2] [--chunks 6] [--draw copy|residual]
        [--batch-streams auto|on|off] [--threads N]

It runs the server's chunk loop (engines/tiny/motion_engine.MotionEngine: sample_chunks, then decode_chunks) on the
shipped folder read into torch (`MotionEngine.from_folder(..., backend="torch")`) and splits each chunk's wall time:
  denoise_s    the denoiser calls (numpy in, numpy out)
  decode_net_s the decoder calls (draw / draw_streams, with the copy of the drawn boxes back to the host)
  host_s       everything else in decode_chunks: the box, the window, the effects' sprites, RGBA out (numpy, per stream)
Prints one JSON object; the shares are of the summed chunk time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from avatarcast.engines.tiny.motion_engine import MotionEngine


def _timed(fn: Callable, into: dict[str, float], key: str) -> Callable:
    def wrapped(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            into[key] += time.perf_counter() - t0

    return wrapped


def profile(
    device: str, sessions: int, chunks: int, draw: str, batch_streams: str, threads: int | None, warmup: int = 1
) -> dict:
    engine = MotionEngine.from_folder(None, threads=threads, draw=draw, backend="torch", device=device)
    be = engine.backend
    if batch_streams != "auto":
        be.batch_streams = batch_streams == "on"  # type: ignore[attr-defined]
    avatars = ("pip", "bun", "kiko", "luna", "random-11", "random-12", "random-13", "random-14")
    emotions = ("happy", "sad", "surprised", "angry", "love", "laughing")
    states = [
        engine.start_stream(avatars[i % len(avatars)], emotions[i % len(emotions)], 1.0, i) for i in range(sessions)
    ]
    for _ in range(warmup):
        engine.decode_chunks(states, engine.sample_chunks(states))
    spent = {"denoise_s": 0.0, "decode_net_s": 0.0}
    be.denoise = _timed(be.denoise, spent, "denoise_s")  # type: ignore[method-assign]
    be.draw = _timed(be.draw, spent, "decode_net_s")  # type: ignore[method-assign]
    be.draw_streams = _timed(be.draw_streams, spent, "decode_net_s")  # type: ignore[attr-defined]
    total = decode = 0.0
    for _ in range(chunks):
        t0 = time.perf_counter()
        lat = engine.sample_chunks(states)
        t1 = time.perf_counter()
        engine.decode_chunks(states, lat)
        t2 = time.perf_counter()
        total, decode = total + t2 - t0, decode + t2 - t1
    host = decode - spent["decode_net_s"]
    frames = chunks * sessions * engine.cfg.chunk_frames
    return {
        "device": device,
        "sessions": sessions,
        "chunks": chunks,
        "draw": draw,
        "batch_streams": bool(getattr(be, "batch_streams", False)),
        "fps": round(frames / total, 2),
        "chunk_ms": round(1000 * total / chunks, 1),
        "denoise_s": round(spent["denoise_s"], 3),
        "decode_net_s": round(spent["decode_net_s"], 3),
        "host_s": round(host, 3),
        "share": {
            "denoise": round(spent["denoise_s"] / total, 3),
            "decode_net": round(spent["decode_net_s"] / total, 3),
            "host_numpy": round(host / total, 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--draw", default="copy", choices=("copy", "residual"))
    ap.add_argument("--batch-streams", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args(argv)
    r = profile(args.device, args.sessions, args.chunks, args.draw, args.batch_streams, args.threads)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
