"""The cut-out draw on torch against numpy's, on any device: `python -m tools.cutout_torch_check [--device cuda]`
(`--kernel compiled|triton`: how the torch draw lays its layers, engines/tiny/cutout_torch.KERNELS; `--compose
triton`: the device compose's kernel, engines/tiny/motion_compose.KERNELS).

Two checks, one JSON line each:
  draw   engines/tiny/cutout_torch.draw_t against engines/tiny/cutout.draw, float frames in [-1, 1]: every emotion at
         two held-out variations, for built-in and random avatars (max |difference|, PSNR over the box);
  engine MotionEngine's chunks from the same sampled motions: the numpy engine (onnxruntime's denoiser, the cut-out
         draw in numpy, the host compose) against `--backend torch --motion-draw cutout` on the device (its compose
         there on CUDA): uint8 frames (max levels apart, share over one level, PSNR).
tests/engines/test_cutout_torch.py makes the same checks on CPU torch; this runs them where the GPU is.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float | None:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return round(10 * np.log10(peak**2 / mse), 2) if mse else None


def check_draw(device: str, avatars: list[str], kernel: str | None = None) -> dict:
    import torch

    from avatarcast.engines.avatar_world.motions import pose_at, sample_variation
    from avatarcast.engines.tiny import cutout, cutout_torch
    from avatarcast.engines.tiny.motion_engine import MotionEngine
    from avatarcast.vocabulary import EMOTIONS

    eng = MotionEngine.from_folder(None, draw="cutout", threads=4)
    dev = torch.device(device)
    kernel = kernel or cutout_torch.default_kernel(dev)
    out: dict = {"check": "draw", "device": device, "kernel": kernel, "avatars": {}}
    for av in avatars:
        cut = eng.prepared_avatar(av)[1].ref
        tex = cutout_torch.to_device_layers(cut, dev)
        m = np.stack(
            [
                eng.motion(av, pose_at(e, 1.7 + 0.9 * k + 3.1 * v, sample_variation(900_300 + 20 * v + k), 0.9))
                for v in range(2)
                for k, e in enumerate(EMOTIONS)
            ]
        ).astype(np.float32)
        box = eng.draw_box(m)
        want = cutout.draw(cut, m, box)
        with torch.inference_mode():
            sizes = np.tile(box[2:], (len(m), 1))
            got = cutout_torch.draw_t(tex, m, np.tile(box[:2], (len(m), 1)), sizes, dev, kernel)[0].cpu().numpy()
        d = np.abs(got - want)
        out["avatars"][av] = {
            "frames": len(m),
            "box": list(box),
            "max_abs": float(d.max()),
            "mean_abs": float(d.mean()),
            "psnr_db": _psnr(got, want, 2.0),
        }
    return out


def check_engine(
    device: str, avatars: list[str], streams: int, kernel: str | None = None, compose: str | None = None
) -> dict:
    from avatarcast.engines.tiny.motion_engine import MotionEngine

    ref = MotionEngine.from_folder(None, draw="cutout", threads=4)
    on = MotionEngine.from_folder(None, draw="cutout", backend="torch", device=device)
    if kernel is not None:
        on.backend.use_kernel(kernel)  # type: ignore[attr-defined]  # TorchCutoutBackend's
    if compose is not None and on.device_compose is not None:
        on.device_compose.use_kernel(compose)
    emotions = ref.emotions
    specs = [(avatars[i % len(avatars)], emotions[i % len(emotions)], i) for i in range(streams)]
    lat = ref.sample_chunks([ref.start_stream(a, e, seed=s) for a, e, s in specs])
    want = ref.decode_chunks([ref.start_stream(a, e, seed=s) for a, e, s in specs], lat).astype(np.int16)
    got = on.decode_chunks([on.start_stream(a, e, seed=s) for a, e, s in specs], lat).astype(np.int16)
    d = np.abs(got - want)
    return {
        "check": "engine",
        "launched": _launched_same(on, specs) if on.capabilities.pipeline_depth > 1 else None,
        "device": device,
        "kernel": on.backend.kernel,  # type: ignore[attr-defined]
        "compose": None if on.device_compose is None else on.device_compose.kernel,
        "backend": on.backend.describe(),  # type: ignore[attr-defined]
        "streams": streams,
        "frames": int(d.shape[0] * d.shape[1]),
        "max_levels": int(d.max()),
        "share_over_1": float((d > 1).mean()),
        "mean_levels": float(d.mean()),
        "psnr_db": _psnr(got, want, 255.0),
    }


def _launched_same(engine, specs: list, chunks: int = 4) -> dict:
    """Chunks launched two in flight (launch_chunks, as the scheduler keeps them) against the same streams' chunks
    made one at a time (next_chunk): the largest difference in levels, 0 when the pipelining changes nothing."""
    serial = [engine.start_stream(a, e, seed=s) for a, e, s in specs]
    want = [np.stack(engine.next_chunk(serial)) for _ in range(chunks)]
    states = [engine.start_stream(a, e, seed=s) for a, e, s in specs]
    flight = [engine.launch_chunks(states)]
    got = []
    for k in range(chunks):
        if k + 1 < chunks:
            flight.append(engine.launch_chunks(states))
        got.append(np.stack(flight.pop(0).wait()))
    worst = max(int(np.abs(g.astype(np.int16) - w).max()) for g, w in zip(got, want))
    return {"chunks": chunks, "max_levels": worst}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--avatars", default="pip,bun,kiko,luna,random-11,random-424242")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--kernel", default=None, help="the draw's: eager, compiled or triton (default: its device's)")
    ap.add_argument("--compose", default=None, help="the device compose's: torch or triton (where it composes)")
    args = ap.parse_args(argv)
    avatars = args.avatars.split(",")
    print(json.dumps(check_draw(args.device, avatars, args.kernel)), flush=True)
    print(json.dumps(check_engine(args.device, avatars, args.streams, args.kernel, args.compose)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
