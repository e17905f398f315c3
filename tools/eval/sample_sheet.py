"""The README's picture of an engine's frames: one generated frame per emotion, the built-in avatars in turn.

    python -m tools.eval.sample_sheet --engine motion --motion-draw cutout -o /tmp/m.png   # the CPU default's draw
    pngquant --quality 70-95 --speed 1 -o docs/model_samples_motion.png /tmp/m.png
    python -m tools.eval.sample_sheet --engine renderer -o /tmp/renderer.png   # the same cells, as drawn by the rig

Each cell is the frame 1.5 s into a stream of that avatar and emotion (seed 7), cropped around the avatar and shown
at half scale over the demo page's background, with the emotion's name. The same arguments draw the same sheet.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from avatarcast.engines.avatar_world import BUILTIN_AVATARS
from avatarcast.vocabulary import EMOTIONS, FRAME_HEIGHT, FRAME_WIDTH
from tools.eval.evaluate import load_engine

CELL = (150, 170)  # a cell at half scale: 300 x 340 frame pixels around the avatar
BACKGROUND = (245, 241, 234)
SHOWN = [e for e in EMOTIONS if e != "idle"]  # ten: two rows of five


def cell(frame: np.ndarray, label: str) -> Image.Image:
    """A frame (360, 640, 4) cropped around its opaque pixels, over the background, half scale, labelled."""
    a = frame[..., 3] > 32
    ys, xs = np.nonzero(a) if a.any() else (np.array([FRAME_HEIGHT // 2]), np.array([FRAME_WIDTH // 2]))
    cx, cy = int(xs.mean()), int((ys.min() + ys.max()) / 2)
    w, h = CELL[0] * 2, CELL[1] * 2  # inside the frame
    x0 = int(np.clip(cx - w // 2, 0, FRAME_WIDTH - w))
    y0 = int(np.clip(cy - h // 2 + 10, 0, FRAME_HEIGHT - h))
    crop = frame[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    al = crop[..., 3:4] / 255.0
    rgb = (crop[..., :3] * al + np.asarray(BACKGROUND, np.float32) * (1 - al)).astype(np.uint8)
    img = Image.fromarray(rgb).resize(CELL, Image.LANCZOS)
    ImageDraw.Draw(img).text((6, 4), label, fill=(40, 40, 40))
    return img


def sheet(engine, seed: int = 7, at_s: float = 1.5) -> Image.Image:
    out = Image.new("RGB", (CELL[0] * 5, CELL[1] * 2), BACKGROUND)
    n = int(round(at_s * 8)) + 1
    for i, emotion in enumerate(SHOWN):
        avatar = BUILTIN_AVATARS[i % len(BUILTIN_AVATARS)].name
        frames = engine.generate_clip(avatar, emotion, n, seed=seed)
        out.paste(cell(frames[-1], emotion), ((i % 5) * CELL[0], (i // 5) * CELL[1]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="motion", help="tiny, motion or renderer")
    ap.add_argument("--weights", default=None, help="the engine's weights folder (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--motion-draw", default="cutout", help="--engine motion: cutout (the CPU default), copy, residual")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args(argv)
    engine = load_engine(args.engine, threads=args.threads, weights=args.weights, draw=args.motion_draw)
    sheet(engine, args.seed).save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
