"""What the reconstruction PSNR target asks, and where a decoder's error lies (issue 16).

    python -m tools.eval.psnr_budget [--motion DECODER.pt DENOISER.pt] [--builtin 3 --heldout 3 --frames 24]

The renderer's own held-out frames (tools/eval/holdout.py, as the fidelity eval picks them), moved or blurred by
a fraction of a pixel, scored as the fidelity eval scores a reconstruction (avatar PSNR over premultiplied RGBA):
how far from 30 dB a drawing that is right but for sub-pixel placement or one bilinear resampling lands.

With --motion, an architecture-3 decoder draws the same frames from their true motion (its torch backend on the
CPU, no denoiser involved), and the report says where its squared error lies:
- on edges (pixels next to a strong step in the renderer's frame) or inside flat regions;
- what the PSNR would be if every pixel could match any of its 3 x 3 neighbours of the model frame (a one-pixel
  tolerance: error from placement and blur at strokes goes, error from wrong colours and missing parts stays).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import ndimage as ndi

from tools.eval import fidelity_metrics as fm
from tools.eval import holdout
from tools.eval.fidelity import pose_at, render_frame, sample_variation


def renderer_ceilings(a: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """PSNR of the renderer's frame `a` (premultiplied, H x W x 4, in [0, 1]) against itself moved or blurred."""
    out = {}
    for d in (0.25, 0.5, 1.0):
        out[f"shift_{d}px"] = fm.psnr(a, ndi.shift(a, (d, 0, 0), order=1), mask)
    for d in (0.25, 0.5):  # one resampling there and one back: the blur of a warp at that offset, no net move
        back = ndi.shift(ndi.shift(a, (d, d, 0), order=1), (-d, -d, 0), order=1)
        out[f"resampled_{d}px"] = fm.psnr(a, back, mask)
    return out


def error_shares(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Where the model frame b's squared error against a lies (see the module doc); both premultiplied, in [0, 1]."""
    se = ((a - b) ** 2).mean(-1)
    gy = np.abs(np.diff(a, axis=0, prepend=a[:1])).max(-1)
    gx = np.abs(np.diff(a, axis=1, prepend=a[:, :1])).max(-1)
    edge = ndi.binary_dilation(np.maximum(gx, gy) > 0.15, iterations=1)
    best = se.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            best = np.minimum(best, ((a - np.roll(b, (dy, dx), (0, 1))) ** 2).mean(-1))
    total = float(se[mask].sum())
    return {
        "psnr_db": fm.psnr(a, b, mask),
        "edge_pixel_share": float(edge[mask].mean()),
        "edge_error_share": float(se[mask & edge].sum() / max(total, 1e-12)),
        "psnr_one_pixel_tolerance_db": fm.psnr_from_mse(float(best[mask].mean())),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--motion", nargs=2, metavar=("DECODER", "DENOISER"), help="architecture 3 checkpoints (as tools.eval.fidelity)"
    )
    ap.add_argument("--builtin", type=int, default=3)
    ap.add_argument("--heldout", type=int, default=3)
    ap.add_argument("--per-avatar", type=int, default=4)
    ap.add_argument("--frames", type=int, default=24, help="every k-th held-out frame, about this many")
    args = ap.parse_args(argv)
    specs = holdout.reconstruction_frames(holdout.eval_avatars(args.builtin, args.heldout), args.per_avatar)
    specs = specs[:: max(1, len(specs) // args.frames)]
    draw = None
    if args.motion:
        import torch

        from avatarcast.engines.tiny.motion_engine import MotionEngine

        torch.set_num_threads(2)
        engine = MotionEngine.load(*args.motion)
        draw = lambda av, q: engine.draw(av, engine.motion(av, q)[None])[0]  # noqa: E731
    rows: dict[str, list[float]] = {}
    for s in specs:
        q = pose_at(s.emotion, s.time, sample_variation(s.seed), s.intensity)
        r = render_frame(s.avatar, q)
        mask = fm.avatar_mask(r)
        a = fm.premultiplied(r)
        for k, v in renderer_ceilings(a, mask).items():
            rows.setdefault(f"renderer_{k}_db", []).append(v)
        if draw is not None:
            b = fm.premultiplied(draw(s.avatar, q))
            for k, v in error_shares(a, b, mask).items():
                rows.setdefault(f"model_{k}", []).append(v)
    print(json.dumps({"frames": len(specs), **{k: round(float(np.mean(v)), 3) for k, v in rows.items()}}, indent=1))


if __name__ == "__main__":
    main()
