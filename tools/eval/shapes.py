"""How far the renderer's shipped frames are from the shapes they draw, and the cut-out draw beside them (issue 16).

    python -m tools.eval.shapes --out docs/fidelity/shapes      # ~1 min on 2 cores

The renderer draws on a canvas SS (4; 2 until 2026-12-07) times the frame's size and box-filters it; PIL rounds every
coordinate down to that canvas's grid and samples each canvas pixel at one point, so a 2x frame's edges land up to half
a pixel from where its shapes put them. Rendering the same pose on finer canvases converges on the shapes; this
scores, over the held-out reconstruction frames of the built-in avatars (tools/eval/holdout.py, one per emotion), the
renderer at 2x, 4x (shipped) and 8x and the cut-out draw (the shipped motion folder drawing each frame's true
motion, as the fidelity eval's reconstruction does) against the renderer at REFERENCE_SS, as avatar PSNR
(tools/eval/fidelity.py's pixels and mask). Writes shapes.json and shapes.png: for two avatars, 1:1 head crops of
the cut-out draw, the 2x frame, the shipped (SS) frame and the 8x frame side by side over the render command's
background.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from avatarcast.engines.avatar_world import BUILTIN_AVATARS, pose_at, render_frame, sample_variation
from avatarcast.engines.avatar_world.render import SS, landmarks
from tools.eval import fidelity_metrics as fm
from tools.eval import holdout
from tools.eval.crops import composite
from tools.eval.fidelity import SHAPES_SS, encode_decode, scored_engine

REFERENCE_SS = 16  # the finest canvas scored against (8x is 42 dB from it: the shapes, to what a viewer sees)
SCORED_SS = (2, 4, SHAPES_SS)  # SS among them
SHOWN_SS = (2, SS, SHAPES_SS)  # the picture's renderer columns
SHOWN = (("tok", "happy"), ("luna", "angry"))  # the picture's rows: an antenna and glasses; a hat's brim and star
CROP = (150, 150)  # rows, columns of a head crop (its box's top-left corner): headwear, face and mouth


def measure(frames: list[holdout.FrameSpec]) -> tuple[dict, dict]:
    """Per picture (the renderer at each of SCORED_SS, the cut-out draw): the PSNR of its mean squared error over the
    frames against the renderer at REFERENCE_SS (over that render's avatar mask), and the crops of SHOWN."""
    engine, _, _ = scored_engine(None, "motion", motion_draw="cutout")
    draw = encode_decode(engine)
    errs: dict[str, list[float]] = {f"renderer {k}x": [] for k in SCORED_SS} | {"cut-out draw": []}
    shown: dict = {}
    for s in frames:
        q = pose_at(s.emotion, s.time, sample_variation(s.seed), s.intensity)
        fine = render_frame(s.avatar, q, supersample=REFERENCE_SS)
        shapes, mask = fm.premultiplied(fine), fm.avatar_mask(fine)
        pictures = {f"renderer {k}x": render_frame(s.avatar, q, supersample=k) for k in SCORED_SS}
        pictures["cut-out draw"] = draw([s.avatar], [q], None)[0]
        for name, px in pictures.items():
            errs[name].append(fm.masked_mse(shapes, fm.premultiplied(px), mask))
        if (s.avatar.name, s.emotion) in SHOWN:
            x0, y0 = (int(v) for v in landmarks(s.avatar, q).head[:2])
            h, w = CROP
            shown[(s.avatar.name, s.emotion)] = [
                composite(pictures[k][y0 : y0 + h, x0 : x0 + w])
                for k in ("cut-out draw", *(f"renderer {x}x" for x in SHOWN_SS))
            ]
    table = {k: {"psnr_db": round(fm.psnr_from_mse(float(np.mean(v))), 2), "n": len(v)} for k, v in errs.items()}
    return table, shown


def picture(shown: dict, gap: int = 4) -> np.ndarray:
    rows = []
    for key in SHOWN:
        if key in shown:
            crops = shown[key]
            sep = np.zeros((crops[0].shape[0], gap, 3), np.uint8)
            rows.append(np.concatenate([c for crop in crops for c in (crop, sep)][:-1], 1))
    return np.concatenate(rows, 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    frames = holdout.reconstruction_frames(list(BUILTIN_AVATARS))
    table, shown = measure(frames)
    args.out.mkdir(parents=True, exist_ok=True)
    res = {
        "reference": f"the renderer at {REFERENCE_SS}x supersampling",
        "frames": f"{len(frames)} held-out reconstruction frames of the built-in avatars (tools/eval/holdout.py)",
        "avatar_psnr_db_against_reference": table,
        "picture": "shapes.png: head crops, 1:1; columns: the cut-out draw, the renderer at "
        + ", ".join(f"{k}x" + (" (shipped)" if k == SS else "") for k in SHOWN_SS)
        + "; rows: "
        + ", ".join(f"{a} {e}" for a, e in SHOWN),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (args.out / "shapes.json").write_text(json.dumps(res, indent=1) + "\n")
    Image.fromarray(picture(shown)).save(args.out / "shapes.png", optimize=True)
    for k, v in table.items():
        print(f"{k:>14}: {v['psnr_db']:6.2f} dB against the renderer at {REFERENCE_SS}x ({v['n']} frames)")
    print(f"{args.out / 'shapes.json'}, {args.out / 'shapes.png'} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
