"""Architecture 3's effects: the avatar's effect sprites pasted over the decoded frames, where the motion says.

An effect (skeleton.FX_LAYOUT: sparkles, hearts, "zzz", ...) is drawn in screen space around one keypoint,
and its particles run on their own clock. The decoder moves the avatar's parts, so an effect far from every
part had no pixels to copy and came out transparent (the fidelity eval's FD was 9x the shipped engine's
for it), and one copied from an atlas stood still at the atlas's phase. Here each effect is a sheet of
pictures, one per phase of its clock (reference.effect_sprites, drawn once per avatar): the frame's motion
vector turns it on (its strength field, at the renderer's threshold), picks the picture (its clock's sine
and cosine) and moves it (its anchor keypoint), and it is laid over the frame as the renderer draws effects,
last. No weights: the motion carries every number it needs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from avatarcast.engines.avatar_world.reference import STRENGTHS, EffectSprites
from avatarcast.engines.avatar_world.skeleton import EXPR_OFFSET, FACE_FIELDS, FX_FIELDS, FX_LAYOUT, KEYPOINTS
from avatarcast.engines.tiny.config import TinyConfig

FX_ON = 0.15  # render._draw_effects draws an effect above this strength
_CLOCK0 = EXPR_OFFSET + len(FACE_FIELDS) + len(FX_FIELDS)  # the clock's (sin, cos) pairs in a motion vector


class EffectLayer:
    """One avatar's sprites as premultiplied tensors in the decoder's window, and `over` to lay them on frames.

    window_origin: the window's (row, column) in the frame, i.e. (-pad_top, window_x0); window_hw: its size.
    """

    def __init__(
        self, sprites: EffectSprites, window_origin: tuple[int, int], window_hw: tuple[int, int], device="cpu"
    ):
        if sprites.names != tuple(FX_LAYOUT):
            raise ValueError(f"sprites for {sprites.names}, the layout names {tuple(FX_LAYOUT)}")
        oy, ox = window_origin
        self.hw = window_hw
        self.device = torch.device(device)
        self.crops: list[torch.Tensor] = []  # (strengths, phases, 4, h, w) uint8 straight alpha, as drawn
        self.boxes: list[tuple[int, int]] = []  # the crop's first pixel, window (row, column)
        self.anchors: list[tuple[float, float]] = []  # window pixels (x, y)
        self.angles = list(sprites.angles)
        self.top = sprites.top - oy  # window row
        self.strength: list[int] = []  # where each effect's fields sit in a motion vector
        self.clock: list[int | None] = []
        self.anchor_kp: list[int] = []
        self.up_kp: list[int | None] = []
        for name, crop, (y0, x0), (ax, ay) in zip(sprites.names, sprites.crops, sprites.boxes, sprites.anchors):
            # uint8 until one is laid (a float copy of every picture would be ~70 MB an avatar)
            self.crops.append(torch.from_numpy(crop).permute(0, 1, 4, 2, 3).contiguous().to(self.device))
            self.boxes.append((y0 - oy, x0 - ox))
            self.anchors.append((ax - ox, ay - oy))
            self.strength.append(EXPR_OFFSET + len(FACE_FIELDS) + FX_FIELDS.index(name))
            anchor, up, clock = FX_LAYOUT[name]
            self.clock.append(clock)
            self.anchor_kp.append(KEYPOINTS.index(anchor))
            self.up_kp.append(KEYPOINTS.index(up) if up else None)

    @classmethod
    def in_window(cls, sprites: EffectSprites, window: TinyConfig, device="cpu") -> EffectLayer:
        """The layer for the decoder's window (TinyConfig's padded window, as architecture 2's)."""
        return cls(sprites, (-window.pad_top, window.window_x0), (window.pad_height, window.window_width), device)

    def over(self, frames: torch.Tensor, motion: torch.Tensor, box: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """frames: premultiplied (B, 4, h, w) in [-1, 1], the window's part from (row, column) `box`; motion:
        (B, MOTION_DIM) in normalized window coordinates. Returns the frames with the effects on top, in the
        renderer's order."""
        B = frames.shape[0]
        H, W = self.hw
        m = motion.detach().float().cpu().numpy()
        out = []
        for b in range(B):
            f = (frames[b].float() + 1.0) * 0.5
            for e, crop in enumerate(self.crops):
                s = float(m[b, self.strength[e]])
                if s <= FX_ON or crop.shape[-1] == 0:
                    continue
                level = int(np.argmin([abs(s - v) for v in STRENGTHS]))
                j, clock = 0, self.clock[e]
                if clock is not None:
                    sin, cos = m[b, _CLOCK0 + 2 * clock], m[b, _CLOCK0 + 2 * clock + 1]
                    j = int(round((math.atan2(sin, cos) / (2 * math.pi)) % 1.0 * crop.shape[1])) % crop.shape[1]
                k = self.anchor_kp[e]
                ax, ay = (m[b, 2 * k] + 1.0) * 0.5 * W, (m[b, 2 * k + 1] + 1.0) * 0.5 * H
                turn = 0.0
                u = self.up_kp[e]
                if u is not None:
                    turn = math.atan2((m[b, 2 * u + 1] - m[b, 2 * k + 1]) * H, (m[b, 2 * u] - m[b, 2 * k]) * W)
                    turn -= self.angles[e]
                pic = crop[level, j].float() / 255.0
                pic = torch.cat([pic[:3] * pic[3:], pic[3:]])  # premultiplied, as the frames
                f = _place_over(f, pic, self.boxes[e], self.anchors[e], (ax, ay), turn, box, self.top)
            out.append(f)
        return torch.stack(out) * 2.0 - 1.0


def _place_over(frame, pic, pic_box, anchor, target, turn: float, box, top: float) -> torch.Tensor:
    """frame (4, h, w) in [0, 1] premultiplied, the window's part from `box`, with pic (4, ph, pw) (its first
    pixel at window (row, column) `pic_box`) turned by `turn` about `anchor` and moved onto `target` (window
    pixels (x, y)) laid over it: bilinear, clipped to the frame and cut above window row `top`."""
    _, h, w = frame.shape
    _, ph, pw = pic.shape
    c, s = math.cos(turn), math.sin(turn)
    (py, px), (ax, ay), (tx, ty) = pic_box, anchor, target
    # where the picture's corners land, in the part's pixels: the box to fill
    corners = [(px + dx - ax, py + dy - ay) for dx in (0, pw) for dy in (0, ph)]
    xs = [tx + c * x - s * y - box[1] for x, y in corners]
    ys = [ty + s * x + c * y - box[0] for x, y in corners]
    x0, x1 = max(0, math.floor(min(xs)) - 1), min(w, math.ceil(max(xs)) + 1)
    y0, y1 = max(0, math.floor(min(ys)) - 1, math.ceil(top - box[0])), min(h, math.ceil(max(ys)) + 1)
    if x0 >= x1 or y0 >= y1:
        return frame
    # each filled pixel's centre, back through the move and the turn, in the picture's normalized coordinates
    gy, gx = torch.meshgrid(
        torch.arange(y0, y1, dtype=torch.float32) + 0.5 + box[0] - ty,
        torch.arange(x0, x1, dtype=torch.float32) + 0.5 + box[1] - tx,
        indexing="ij",
    )
    sx, sy = c * gx + s * gy + ax - px, -s * gx + c * gy + ay - py
    grid = torch.stack([2 * sx / pw - 1, 2 * sy / ph - 1], -1)[None].to(pic.device)
    p = F.grid_sample(pic[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    p = p.to(frame.dtype)
    frame = frame.clone()
    frame[:, y0:y1, x0:x1] = p + (1.0 - p[3:4]) * frame[:, y0:y1, x0:x1]
    return frame


__all__ = ["FX_ON", "EffectLayer"]
