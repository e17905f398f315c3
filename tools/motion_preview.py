"""Architecture 3 end to end, before it is served: the motion denoiser's streams drawn by the motion decoder.

    python -m tools.motion_preview --den out/motion/motion_den.pt --dec out/motion/motion_ema.pt \
        --avatars 2,random-900001 --emotions happy,sad --out preview.png

Each row is one stream as the engine would run it: it starts from the avatar's rest pose, then every
chunk (4 frames, 2 sampler steps) is conditioned on the previous chunk's last frames, the emotion and
the avatar's canonical motion; the frames are the decoder's (the avatar's canonical frame moved by the
generated motion). Without --dec the decoder is a fresh one: the skeleton prior alone moves the frame.
Frames are shown 1:1 over the render command's background; `--every` picks which.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from avatarcast.engines.avatar_world import get_avatar, random_avatar
from avatarcast.engines.avatar_world.reference import canonical_pose, rest_pose
from avatarcast.engines.avatar_world.render import render_frame
from avatarcast.engines.tiny.motion import MotionDecoder
from avatarcast.vocabulary import EMOTIONS
from tools.eval.crops import composite
from tools.train_motion import CFG, _mv, _window, decode_frames, load_decoder
from tools.train_motion_den import load_kept, rollout


def avatar_arg(s: str):
    if s.startswith("random-"):
        return random_avatar(int(s.split("-", 1)[1]))
    return get_avatar(int(s) if s.isdigit() else s)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--den", required=True, help="motion_den.pt (tools.train_motion_den)")
    ap.add_argument("--dec", default="", help="motion_ema.pt (tools.train_motion); default: a fresh decoder")
    ap.add_argument("--avatars", default="2,random-900001")
    ap.add_argument("--emotions", default="happy,sad,surprised")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--every", type=int, default=2, help="show every n-th frame")
    ap.add_argument("--seed", type=int, default=0x9200_0000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    den, mean, std, _ = load_kept(Path(args.den))
    dec = (load_decoder(Path(args.dec), "cpu")[0] if args.dec else MotionDecoder()).eval()
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for name in args.avatars.split(","):
        av = avatar_arg(name)
        ref_m = _mv(av, canonical_pose())
        ref_win = _window(render_frame(av, canonical_pose()))
        ref_n = torch.from_numpy((ref_m - mean) / std)[None]
        start_n = torch.from_numpy((_mv(av, rest_pose()) - mean) / std)[None]
        for emo in args.emotions.split(","):
            m = rollout(den, ref_n, start_n, EMOTIONS.index(emo), 1.0, args.chunks, args.steps, gen)[0]
            motions = (m.numpy() * std + mean).astype(np.float32)[:: args.every]
            frames = decode_frames(dec, list(motions), [ref_m] * len(motions), [ref_win] * len(motions), "cpu")
            full = np.zeros((len(frames), CFG.height, CFG.width, 4), np.uint8)
            full[:, :, CFG.window_x0 : CFG.window_x0 + CFG.window_width] = frames
            rows.append(np.concatenate([composite(f)[:, 150:490] for f in full], 1))
    from PIL import Image

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(args.out)
    print(f"wrote {args.out}: {len(rows)} streams")


if __name__ == "__main__":
    main()
