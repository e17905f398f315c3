"""1:1 crops of every built-in avatar's face and hands: renderer | autoencoder | generated, side by side.

    python -m tools.eval.crops --weights engines/tiny/weights --out docs/fidelity/
    python -m tools.eval.crops --engine motion --out docs/fidelity/motion/   # architecture 3 as served

For each avatar the engine generates a clip (serving steps, held-out noise seed) and one frame of it
is shown; the renderer frame next to it is the held-out renderer pose of the same emotion whose
silhouette best matches that frame (alpha IoU over a few hundred candidates), so the two show the same
pose as nearly as the model allows. The autoencoder column is that renderer frame through the weights'
encoder and decoder. Crops come from the renderer's head and hand boxes (avatarcast.engines.avatar_world.render.
landmarks); the generated crop is shifted by up to SEARCH px to where it matches best. No scaling:
one image pixel is one frame pixel, composited over the render command's default background.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from avatarcast.engines.avatar_world import BUILTIN_AVATARS, get_avatar, render_frame
from avatarcast.engines.avatar_world.render import landmarks, sequence_poses
from tools.eval import fidelity_metrics as fm
from tools.eval import holdout
from tools.eval.fidelity import add_motion_argument, encode_decode, scored_engine

BACKGROUND = (245, 240, 230)  # avatarcast render's default background, #f5f0e6
HAND = 56  # px, the hand crops' side
SEARCH = 10  # px, how far the generated crop may shift to its best match
GAP = 8
LABEL_H = 14
COLUMNS = ("renderer", "autoencoder", "generated")


def composite(frame: np.ndarray) -> np.ndarray:
    """RGBA uint8 (H, W, 4) -> RGB uint8 over BACKGROUND."""
    p = fm.premultiplied(frame)
    rgb = p[..., :3] * 255.0 + (1.0 - p[..., 3:4]) * np.array(BACKGROUND, np.float32)
    return (rgb + 0.5).clip(0, 255).astype(np.uint8)


def matching_pose(avatar, emotion: str, target: np.ndarray, n_seeds: int = 12, frames: int = 16):
    """The held-out renderer frame of this emotion whose alpha > 0.5 best overlaps target's; (frame, pose, iou)."""
    best = (-1.0, None, None)
    for k in range(n_seeds):
        seed = holdout.heldout_seed("crops", avatar.name, emotion, k)
        start = (seed % 20_000) / 1000.0  # a start time in [0, 20) s, fixed by the seed
        poses, _ = sequence_poses([(emotion, frames, 1.0)], seed, start_time=start)
        for q in poses:
            f = render_frame(avatar, q)
            iou = fm.alpha_iou(f, target)
            if iou > best[0]:
                best = (iou, f, q)
    return best[1], best[2], best[0]


def _box_int(box, shape) -> tuple[int, int, int, int]:
    H, W = shape[:2]
    x0, y0, x1, y1 = box
    x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    return x0, y0, min(W, int(np.ceil(x1))), min(H, int(np.ceil(y1)))


def _centred(box, size: int, shape) -> tuple[int, int, int, int]:
    H, W = shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x0 = int(np.clip(round(cx - size / 2), 0, W - size))
    y0 = int(np.clip(round(cy - size / 2), 0, H - size))
    return x0, y0, x0 + size, y0 + size


def best_shift(ref: np.ndarray, frame: np.ndarray, box: tuple[int, int, int, int], search: int = SEARCH):
    """The box shifted by up to `search` px so frame's crop matches ref's crop best (mean abs difference)."""
    x0, y0, x1, y1 = box
    H, W = frame.shape[:2]
    r = fm.premultiplied(ref[y0:y1, x0:x1])
    best = (np.inf, box)
    for dy in range(-search, search + 1):
        for dx in range(-search, search + 1):
            if y0 + dy < 0 or x0 + dx < 0 or y1 + dy > H or x1 + dx > W:
                continue
            d = float(np.abs(fm.premultiplied(frame[y0 + dy : y1 + dy, x0 + dx : x1 + dx]) - r).mean())
            if d < best[0]:
                best = (d, (x0 + dx, y0 + dy, x1 + dx, y1 + dy))
    return best[1]


def avatar_panels(engine, avatar, emotion: str, frame_index: int = 8) -> tuple[list, dict]:
    """[(column label, face crop, [hand crops])] for the three columns, and what was shown."""
    gen = engine.generate_clip(avatar, emotion, frame_index + 1, seed=holdout.heldout_seed("crops-noise", avatar.name))
    g = gen[frame_index]
    ref, pose, iou = matching_pose(avatar, emotion, g)
    rec = encode_decode(engine)([avatar], [pose], ref[None])[0]
    lm = landmarks(avatar, pose)
    face = _box_int(lm.head, ref.shape)
    hands = [_centred(h, HAND, ref.shape) for h in lm.hands]
    panels = []
    for label, frame, shift in (("renderer", ref, False), ("autoencoder", rec, False), ("generated", g, True)):
        boxes = [best_shift(ref, frame, b) if shift else b for b in [face] + hands]
        crops = [composite(frame[y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes]
        panels.append((label, crops[0], crops[1:]))
    return panels, {
        "avatar": avatar.name,
        "emotion": emotion,
        "generated_frame": frame_index,
        "renderer_match_alpha_iou": round(iou, 4),
    }


def layout(rows: list[tuple[str, list]]) -> np.ndarray:
    """One image: a row per avatar, the three columns side by side, face above its two hand crops."""
    from PIL import Image, ImageDraw

    col_w = max(
        max(face.shape[1], sum(h.shape[1] for h in hands) + GAP) for _, panels in rows for _, face, hands in panels
    )
    row_hs = [LABEL_H + max(face.shape[0] for _, face, _ in panels) + GAP // 2 + HAND for _, panels in rows]
    W = len(COLUMNS) * col_w + (len(COLUMNS) - 1) * GAP
    img = Image.new("RGB", (W, LABEL_H + sum(row_hs) + GAP * len(rows)), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for c, name in enumerate(COLUMNS):
        d.text((c * (col_w + GAP) + 2, 1), name, fill=(60, 60, 60))
    y = LABEL_H
    for (title, panels), rh in zip(rows, row_hs):
        d.text((2, y + 1), title, fill=(0, 0, 0))
        face_h = max(face.shape[0] for _, face, _ in panels)
        for c, (_, face, hands) in enumerate(panels):
            x = c * (col_w + GAP)
            img.paste(Image.fromarray(face), (x + (col_w - face.shape[1]) // 2, y + LABEL_H))
            hx = x + (col_w - sum(h.shape[1] for h in hands) - GAP) // 2
            for h in hands:
                img.paste(Image.fromarray(h), (hx, y + LABEL_H + face_h + GAP // 2))
                hx += h.shape[1] + GAP
        y += rh + GAP
    return np.asarray(img)


def main(argv: list[str] | None = None) -> int:
    from avatarcast.realtime.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="the engine's weights folder (default: the shipped one)")
    ap.add_argument(
        "--engine", choices=("tiny", "motion"), default="tiny", help="motion: architecture 3's exported folder"
    )
    ap.add_argument(
        "--motion-draw",
        choices=("copy", "residual", "cutout"),
        default="cutout",
        help="--engine motion: which draw (as `avatarcast serve --motion-draw`; cutout, the CPU default)",
    )
    ap.add_argument("--out", default="docs/fidelity", help="folder for crops.png and crops.json")
    ap.add_argument("--emotion", default="happy")
    ap.add_argument("--avatars", default="", help="comma-separated (default: every built-in avatar)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the server's default)")
    ap.add_argument("--threads", type=int, default=2)
    add_motion_argument(ap, "architecture 3 instead (its autoencoder column: the renderer frame's true motion, drawn)")
    args = ap.parse_args(argv)
    from PIL import Image

    t0 = time.time()
    steps = args.steps if args.steps is not None else Settings().steps
    motion = tuple(args.motion) if args.motion else None
    engine, _, weights = scored_engine(
        args.weights, args.engine, motion, steps=steps, threads=args.threads, motion_draw=args.motion_draw
    )
    avatars = [get_avatar(a.strip()) for a in args.avatars.split(",") if a.strip()] or list(BUILTIN_AVATARS)
    rows, shown = [], []
    for av in avatars:
        panels, info = avatar_panels(engine, av, args.emotion)
        rows.append((f"{av.name} / {args.emotion}", panels))
        shown.append(info)
        print(
            f"  {av.name}: renderer pose matched at alpha IoU {info['renderer_match_alpha_iou']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(layout(rows)).save(out / "crops.png", optimize=True)
    meta = {
        "weights": weights,
        "weights_hash": engine.weights_hash,
        "steps": steps,
        "command": "python -m tools.eval.crops " + " ".join(argv if argv is not None else sys.argv[1:]),
        "shown": shown,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "crops.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{out / 'crops.png'} ({(out / 'crops.png').stat().st_size // 1024} KB, {meta['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
