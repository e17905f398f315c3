"""Whether a trained motion decoder's generator draws anything: its copy mask's smallest logit on held-out frames.

The decoder's last step mixes the generator's drawing with the moved reference by a copy mask (sigmoid of a logit,
engines/tiny/motion.py). Trained with L1 and edge losses, the shipped decoders pushed that logit past 15 on every
pixel of every held-out frame: sigmoid is then 1 - 1e-7 and the generator's share of a pixel is under 1e-6 of a
level, so the exported graph can leave the generator out (`MotionDecoder.draw(copy_only=True)`: most of a draw's
cost, none of its pixels). It also means the generator gets no gradient at all (sigmoid's slope is 0 in float32
there): training cannot revive it without resetting that logit.

`copy_margin` measures it on the fidelity eval's held-out frames (tools/train_motion.heldout: built-in avatars at
unseen seeds and parametric avatars never trained on), drawn from their true motion over the whole window.
"""

from __future__ import annotations

import numpy as np
import torch

from avatarcast.engines.tiny.motion import MotionDecoder

# sigmoid(12) = 1 - 6.1e-6: the generator's share of a pixel at most 6.1e-6 x 2 (its drawing and the moved pixel
# both lie in [-1, 1]), 1.6e-3 of a uint8 level
COPY_LOGIT_MIN = 12.0
# and the largest difference between the full draw and the copy-only one ([-1, 1] units; a level is 7.8e-3): a
# decoder with a residual (MotionShape.residual) draws over the mix whatever its copy mask says
COPY_ONLY_MAX_ABS = 1e-4


def copy_margin(dec: MotionDecoder, per_avatar: int = 11, rows: list[dict] | None = None) -> dict[str, float]:
    """{"copy_logit_min", "copy_only_max_abs" (full draw vs copy_only, [-1, 1] units), "frames"} over held-out
    frames of 6 built-in and 6 held-out avatars (`rows`: heldout(6, 6, per_avatar, sprites=False)'s, rendered once by
    a caller that measures several decoders on them; rendering is most of a small decoder's margin). The decoder's
    outputs are measured before any effect is laid over them: the rows' effect sprites are not needed."""
    from tools.train_motion import CFG, atlas_tensor, heldout
    from tools.train_tiny import to_window_tensor

    dec = dec.float().eval()
    lows: list[float] = []
    hook = dec.out.register_forward_hook(lambda _m, _i, o: lows.append(float(o[:, 4].min())))
    diff = 0.0
    rows = heldout(6, 6, per_avatar, sprites=False) if rows is None else rows
    try:
        with torch.no_grad():
            for r in rows:
                ref = to_window_tensor(torch.from_numpy(r["ref"][None]), CFG)
                feats = dec.encode_reference(ref)
                m, rm = torch.from_numpy(r["motion"][None]), torch.from_numpy(r["ref_motion"][None])
                at = atlas_tensor(torch.from_numpy(r["atlas"][None])) if dec.shape.atlas else None
                # the moved reference is what draw(copy_only=True) returns: the same tensor, drawn once
                full, parts = dec(m, rm, ref, feats, atlas=at, return_parts=True)
                diff = max(diff, float((full - parts["moved"]).abs().max()))
    finally:
        hook.remove()
    return {"copy_logit_min": float(np.min(lows)), "copy_only_max_abs": diff, "frames": len(rows)}


def copies_only(margin: dict[str, float]) -> bool:
    """Whether copy_margin's figures let the decoder be exported without its generator."""
    return margin["copy_logit_min"] >= COPY_LOGIT_MIN and margin["copy_only_max_abs"] <= COPY_ONLY_MAX_ABS
