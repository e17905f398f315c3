"""Where a motion chunk's time goes on torch: the networks, or the host-side numpy around them.

    python -m tools.motion_torch_profile [--device cpu|cuda] [--sessions 2] [--chunks 6] [--draw copy|residual]
        [--batch-streams auto|on|off] [--compose auto|device|host] [--threads N]

It runs the server's chunk loop (engines/tiny/motion_engine.MotionEngine: sample_chunks, then decode_chunks) on the
shipped folder read into torch (`MotionEngine.from_folder(..., backend="torch")`) and splits each chunk's wall time:
  denoise_s    the denoiser calls (numpy in, numpy out)
  decode_net_s the decoder calls (draw / draw_streams, with the copy of the drawn boxes back to the host; on the
               device compose path draw_t / draw_streams_t, which leave them on the device)
  compose_s    the device compose (engines/tiny/motion_compose.py: window, effects, RGBA, cut; with the effects'
               placements worked out on the host); 0 on the host compose path
  host_s       everything else in decode_chunks: the boxes, and on the host compose path the window, the effects'
               sprites, RGBA out (numpy, per stream); on the device path the one uint8 copy of the frames to the host
--compose auto: the backend's default (the device on CUDA, numpy on the CPU). On CUDA each timed call is closed by
torch.cuda.synchronize, so the shares are the GPU's work and not its queueing.
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


def _timed(fn: Callable, into: dict[str, float], key: str, sync: Callable[[], None] = lambda: None) -> Callable:
    def wrapped(*a: Any, **k: Any) -> Any:
        sync()
        t0 = time.perf_counter()
        try:
            out = fn(*a, **k)
            sync()
            return out
        finally:
            into[key] += time.perf_counter() - t0

    return wrapped


def profile(
    device: str,
    sessions: int,
    chunks: int,
    draw: str,
    batch_streams: str,
    threads: int | None,
    warmup: int = 1,
    compose: str = "auto",
) -> dict:
    import torch

    from avatarcast.engines.tiny.motion_torch import TorchMotionBackend
    from avatarcast.engines.tiny.motion_weights import load_motion_manifest, motion_folder

    if threads:
        torch.set_num_threads(threads)
    man = load_motion_manifest(motion_folder(None, draw))
    be = TorchMotionBackend.from_folder(
        man,
        device,
        batch_streams=None if batch_streams == "auto" else batch_streams == "on",
        compose=None if compose == "auto" else compose == "device",
    )
    engine = MotionEngine(be, man.mean, man.std, 2, man.weights_hash)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    avatars = ("pip", "bun", "kiko", "luna", "random-11", "random-12", "random-13", "random-14")
    emotions = ("happy", "sad", "surprised", "angry", "love", "laughing")
    states = [
        engine.start_stream(avatars[i % len(avatars)], emotions[i % len(emotions)], 1.0, i) for i in range(sessions)
    ]
    for _ in range(warmup):
        engine.decode_chunks(states, engine.sample_chunks(states))
    spent = {"denoise_s": 0.0, "decode_net_s": 0.0, "compose_s": 0.0}
    be.denoise = _timed(be.denoise, spent, "denoise_s")  # type: ignore[method-assign]
    for name in ("draw", "draw_streams", "draw_t", "draw_streams_t"):  # the numpy ones call the _t ones: one of each
        if name.endswith("_t") == (be.compose_device is not None):
            setattr(be, name, _timed(getattr(be, name), spent, "decode_net_s", sync))
    if engine._device_compose is not None:
        dc = engine._device_compose
        dc.frames = _timed(dc.frames, spent, "compose_s", sync)
    total = decode = 0.0
    for _ in range(chunks):
        t0 = time.perf_counter()
        lat = engine.sample_chunks(states)
        t1 = time.perf_counter()
        engine.decode_chunks(states, lat)
        t2 = time.perf_counter()
        total, decode = total + t2 - t0, decode + t2 - t1
    host = decode - spent["decode_net_s"] - spent["compose_s"]
    frames = chunks * sessions * engine.cfg.chunk_frames
    return {
        "device": device,
        "sessions": sessions,
        "chunks": chunks,
        "draw": draw,
        "batch_streams": be.batch_streams,
        "compose_device": be.compose_device,
        "fps": round(frames / total, 2),
        "chunk_ms": round(1000 * total / chunks, 1),
        "denoise_s": round(spent["denoise_s"], 3),
        "decode_net_s": round(spent["decode_net_s"], 3),
        "compose_s": round(spent["compose_s"], 3),
        "host_s": round(host, 3),
        "share": {
            "denoise": round(spent["denoise_s"] / total, 3),
            "decode_net": round(spent["decode_net_s"] / total, 3),
            "compose": round(spent["compose_s"] / total, 3),
            "host": round(host / total, 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--draw", default="copy", choices=("copy", "residual"))
    ap.add_argument("--batch-streams", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--compose", default="auto", choices=("auto", "device", "host"))
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args(argv)
    r = profile(
        args.device, args.sessions, args.chunks, args.draw, args.batch_streams, args.threads, compose=args.compose
    )
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
