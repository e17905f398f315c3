"""Architecture 3's effects: the avatar's effect sprites pasted over the decoded frames, where the motion says.

An effect (skeleton.FX_LAYOUT: sparkles, hearts, "zzz", ...) is drawn in screen space around one keypoint,
and its particles run on their own clock. The decoder moves the avatar's parts, so an effect far from every
part had no pixels to copy and came out transparent (the fidelity eval's FD was 9x the shipped engine's
for it), and one copied from an atlas stood still at the atlas's phase. Here each effect is a sheet of
pictures, one per phase of its clock (reference.effect_sprites, drawn once per avatar): the frame's motion
vector turns it on (its strength field, at the renderer's threshold), picks the picture (its clock's sine
and cosine) and moves it (its anchor keypoint), and it is laid over the frame as the renderer draws effects,
last. No weights: the motion carries every number it needs.

The placing is numpy (`canvas`: the effects of one frame on a transparent canvas, no torch, for a CPU serving
path); `over` lays canvases on a batch of torch frames, which keeps the frames' gradient in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from avatarcast.engines.avatar_world.particles import FX_ON
from avatarcast.engines.avatar_world.reference import STRENGTHS, EffectSprites
from avatarcast.engines.avatar_world.skeleton import EXPR_OFFSET, FACE_FIELDS, FX_FIELDS, FX_LAYOUT, KEYPOINTS
from avatarcast.engines.tiny.config import TinyConfig

if TYPE_CHECKING:  # torch only for training's `over`: serving lays the effects in numpy
    import torch

_CLOCK0 = EXPR_OFFSET + len(FACE_FIELDS) + len(FX_FIELDS)  # the clock's (sin, cos) pairs in a motion vector


class EffectLayer:
    """One avatar's sprites in the decoder's window: `canvas` places a frame's effects, `over` lays them on frames.

    window_origin: the window's (row, column) in the frame, i.e. (-pad_top, window_x0); window_hw: its size.
    """

    def __init__(self, sprites: EffectSprites, window_origin: tuple[int, int], window_hw: tuple[int, int]):
        if sprites.names != tuple(FX_LAYOUT):
            raise ValueError(f"sprites for {sprites.names}, the layout names {tuple(FX_LAYOUT)}")
        oy, ox = window_origin
        self.hw = window_hw
        # uint8 (strengths, phases, h, w, 4) straight alpha, as drawn, until one is laid (a float copy of every
        # picture would be ~70 MB an avatar)
        self.crops = sprites.crops
        self.boxes = [(y0 - oy, x0 - ox) for y0, x0 in sprites.boxes]  # each crop's first pixel, window (row, col)
        self.anchors = [(ax - ox, ay - oy) for ax, ay in sprites.anchors]  # window pixels (x, y)
        self.angles = list(sprites.angles)
        self.top = sprites.top - oy  # window row
        # where each effect's numbers sit in a motion vector
        self.strength = [EXPR_OFFSET + len(FACE_FIELDS) + FX_FIELDS.index(n) for n in sprites.names]
        self.clock = [FX_LAYOUT[n][2] for n in sprites.names]
        self.anchor_kp = [KEYPOINTS.index(FX_LAYOUT[n][0]) for n in sprites.names]
        self.up_kp = [KEYPOINTS.index(u) if (u := FX_LAYOUT[n][1]) else None for n in sprites.names]

    @classmethod
    def in_window(cls, sprites: EffectSprites, window: TinyConfig) -> EffectLayer:
        """The layer for the decoder's window (TinyConfig's padded window, as architecture 2's)."""
        return cls(sprites, (-window.pad_top, window.window_x0), (window.pad_height, window.window_width))

    def placements(self, motion: np.ndarray) -> list[Placement]:
        """One frame's effects that are on (motion: (MOTION_DIM,), normalized window coordinates), in the renderer's
        order: which picture each lays, and where. What `canvas` draws, and what the device compose
        (engines/tiny/motion_compose.py) lays on the GPU, so that both place the same pictures."""
        H, W = self.hw
        m = np.asarray(motion, np.float64)
        out: list[Placement] = []
        for e, crop in enumerate(self.crops):
            s = float(m[self.strength[e]])
            if s <= FX_ON or crop.shape[3] == 0:
                continue
            level = int(np.argmin([abs(s - v) for v in STRENGTHS]))
            j, clock = 0, self.clock[e]
            if clock is not None:
                sin, cos = m[_CLOCK0 + 2 * clock], m[_CLOCK0 + 2 * clock + 1]
                j = int(round((math.atan2(sin, cos) / (2 * math.pi)) % 1.0 * crop.shape[1])) % crop.shape[1]
            k = self.anchor_kp[e]
            target = ((m[2 * k] + 1.0) * 0.5 * W, (m[2 * k + 1] + 1.0) * 0.5 * H)
            turn, u = 0.0, self.up_kp[e]
            if u is not None:
                turn = math.atan2((m[2 * u + 1] - m[2 * k + 1]) * H, (m[2 * u] - m[2 * k]) * W) - self.angles[e]
            out.append(Placement(e, level, j, target, turn))
        return out

    def placements_many(self, motions: np.ndarray) -> list[Placements]:
        """`placements` for many frames at once (motions: (F, MOTION_DIM)): per effect that is on in any of them, in
        the renderer's order, the frames it is on in, its pictures, and where each lands on the whole window
        (`sampling`'s region and turn), as arrays; frames where it lands outside are left out. The same numbers as
        `placements` and `sampling` frame by frame, to the bit: each array operation is the scalar one, in the same
        order, and the transcendental functions are Python's math, as there (numpy's may differ in the last bit)."""
        H, W = self.hw
        m = np.asarray(motions, np.float64)
        strengths = np.asarray(STRENGTHS, np.float64)
        out: list[Placements] = []
        for e, crop in enumerate(self.crops):
            s = m[:, self.strength[e]]
            rows = np.flatnonzero(~(s <= FX_ON))  # as `placements` skips: NaN is on there too
            if crop.shape[3] == 0 or not rows.size:
                continue
            me, s = m[rows], s[rows]
            level = np.argmin(np.abs(s[:, None] - strengths[None]), axis=1)
            phase, clock = np.zeros(len(rows), np.int64), self.clock[e]
            if clock is not None:
                sin, cos = me[:, _CLOCK0 + 2 * clock], me[:, _CLOCK0 + 2 * clock + 1]
                a = np.array([math.atan2(y, x) for y, x in zip(sin.tolist(), cos.tolist())], np.float64)
                n = crop.shape[1]
                phase = np.round(a / (2 * math.pi) % 1.0 * n).astype(np.int64) % n
            k = self.anchor_kp[e]
            tx, ty = (me[:, 2 * k] + 1.0) * 0.5 * W, (me[:, 2 * k + 1] + 1.0) * 0.5 * H
            turn, u = np.zeros(len(rows)), self.up_kp[e]
            if u is not None:
                dy, dx = (me[:, 2 * u + 1] - me[:, 2 * k + 1]) * H, (me[:, 2 * u] - me[:, 2 * k]) * W
                turn = np.array([math.atan2(y, x) for y, x in zip(dy.tolist(), dx.tolist())]) - self.angles[e]
            # _sampling on the whole window (box (0, 0, H, W): its origin's subtractions are exact, left out), each
            # corner's arithmetic as written there
            c = np.array([math.cos(t) for t in turn.tolist()], np.float64)
            sn = np.array([math.sin(t) for t in turn.tolist()], np.float64)
            (py, px), (ax, ay) = self.boxes[e], self.anchors[e]
            ph, pw = crop.shape[2:4]
            corners = [(px + dx - ax, py + dy - ay) for dx in (0, pw) for dy in (0, ph)]
            xs = np.stack([tx + c * x - sn * y for x, y in corners], 1)
            ys = np.stack([ty + sn * x + c * y for x, y in corners], 1)
            x0 = np.maximum(0, np.floor(xs.min(1)).astype(np.int64) - 1)
            x1 = np.minimum(W, np.ceil(xs.max(1)).astype(np.int64) + 1)
            y0 = np.maximum(np.maximum(0, np.floor(ys.min(1)).astype(np.int64) - 1), math.ceil(self.top))
            y1 = np.minimum(H, np.ceil(ys.max(1)).astype(np.int64) + 1)
            keep = (x0 < x1) & (y0 < y1)
            out.append(
                Placements(
                    e,
                    rows[keep],
                    level[keep],
                    phase[keep],
                    tx[keep],
                    ty[keep],
                    c[keep],
                    sn[keep],
                    y0[keep],
                    y1[keep],
                    x0[keep],
                    x1[keep],
                    rows,
                )
            )
        return out

    def sampling(self, p: Placement, box: tuple[int, int, int, int]) -> Sampling | None:
        """Where placement `p` lands on the window's part `box` = (row, column, height, width), and how its
        pixels read the picture; None when it lands outside."""
        return _sampling(
            self.crops[p.effect].shape[2:4],
            self.boxes[p.effect],
            self.anchors[p.effect],
            p.target,
            p.turn,
            box,
            self.top,
        )

    def canvas(self, motion: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray | None:
        """One frame's effects (motion: (MOTION_DIM,), normalized window coordinates) on a transparent canvas
        covering `box` = (row, column, height, width) of the window (default: all of it): premultiplied float32
        (4, h, w) in [0, 1], in the renderer's order; None when no effect is on."""
        H, W = self.hw
        box = box or (0, 0, H, W)
        out: np.ndarray | None = None
        for p in self.placements(motion):
            pic = self.crops[p.effect][p.level, p.phase].astype(np.float32) / 255.0
            pic = np.concatenate([pic[..., :3] * pic[..., 3:], pic[..., 3:]], -1).transpose(2, 0, 1)  # premultiplied
            if out is None:
                out = np.zeros((4, box[2], box[3]), np.float32)
            where = self.sampling(p, box)
            if where is not None:
                _place_over(out, pic, where)
        return out

    def lay(self, frames: np.ndarray, motions: np.ndarray, box: tuple[int, int] = (0, 0)) -> np.ndarray:
        """numpy frames: premultiplied float32 (B, 4, h, w) in [-1, 1], the window's part from (row, column) `box`;
        motions: (B, MOTION_DIM). The frames with each one's effects on top, in place."""
        B, _, h, w = frames.shape
        for b in range(B):
            placed = self.canvas(motions[b], (box[0], box[1], h, w))
            if placed is not None:
                frames[b] = _over(placed, (frames[b] + 1.0) * 0.5) * 2.0 - 1.0
        return frames

    def over(self, frames: torch.Tensor, motion: torch.Tensor, box: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """`lay` for torch frames (B, 4, h, w) and motions (B, MOTION_DIM), keeping the frames' gradient."""
        import torch

        B, _, h, w = frames.shape
        m = motion.detach().float().cpu().numpy()
        out = (frames.float() + 1.0) * 0.5
        on, canvases = [], []
        for b in range(B):
            placed = self.canvas(m[b], (box[0], box[1], h, w))
            if placed is not None:
                on.append(b)
                canvases.append(placed)
        if not on:
            return frames.float()
        c = torch.from_numpy(np.stack(canvases)).to(frames.device)
        idx = torch.tensor(on, device=frames.device)
        out = out.index_copy(0, idx, _over(c, out[idx]))
        return out * 2.0 - 1.0


def _over(top, under):
    """Premultiplied `top` over `under` (both in [0, 1], channels first; numpy or torch): the renderer's order."""
    return top + (1.0 - top[..., 3:4, :, :]) * under


@dataclass(frozen=True)
class Placement:
    """One effect laid on one frame: its picture (strength level, clock phase), its anchor's window pixel (x, y)
    and its turn (radians)."""

    effect: int
    level: int
    phase: int
    target: tuple[float, float]
    turn: float


@dataclass(frozen=True)
class Placements:
    """One effect laid on many frames (EffectLayer.placements_many): per frame it lands on, the frame's row, its
    picture (strength level, clock phase), its anchor's window pixel (tx, ty), its turn's cosine and sine, and the
    window region it fills, rows [y0, y1) and columns [x0, x1). `on`: every frame it is on in, landing or not."""

    effect: int
    frames: np.ndarray
    level: np.ndarray
    phase: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    c: np.ndarray
    s: np.ndarray
    y0: np.ndarray
    y1: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    on: np.ndarray


@dataclass(frozen=True)
class Sampling:
    """Where a placed picture is filled in: canvas rows [y0, y1) and columns [x0, x1); `coords` gives each filled
    pixel's place in the picture (float64, in one order of operations: the device compose repeats it to the bit)."""

    y0: int
    y1: int
    x0: int
    x1: int
    c: float  # the turn's cosine and sine
    s: float
    box: tuple[int, int]  # the canvas's first pixel, window (row, column)
    target: tuple[float, float]  # the anchor's window pixel (x, y)
    anchor: tuple[float, float]  # the anchor's window pixel (x, y) in the picture's pose
    pic_box: tuple[int, int]  # the picture's first pixel, window (row, column)

    def coords(self, cols, rows):
        """(sx, sy) for canvas column indices `cols` (1, n) and row indices `rows` (m, 1), numpy float64."""
        return sample_coords(cols, rows, self.c, self.s, self.box, self.target, self.anchor, self.pic_box)


def sample_coords(cols, rows, c, s, box, target, anchor, pic_box):
    """Each canvas pixel's centre (column indices `cols`, row indices `rows`), back through the move and the turn, in
    the picture's pixel coordinates: (sx, sy). One order of operations for the numpy path (a Sampling's numbers) and
    the device compose (each picture's numbers as torch float64 columns), so both sample to the bit."""
    (by, bx), (tx, ty), (ax, ay), (py, px) = box, target, anchor, pic_box
    gx = cols + 0.5 + bx - tx
    gy = rows + 0.5 + by - ty
    return c * gx + s * gy + ax - px - 0.5, -s * gx + c * gy + ay - py - 0.5  # - 0.5: pixel k's centre: k + 0.5


def _sampling(pic_hw, pic_box, anchor, target, turn: float, box, top: float) -> Sampling | None:
    """A picture of pic_hw (its first pixel at window (row, column) `pic_box`), turned by `turn` about `anchor` and
    moved onto `target` (window pixels (x, y)), on a canvas that is the window's part `box` = (row, column,
    height, width): the region it fills, clipped to the canvas and cut above window row `top`."""
    h, w = box[2], box[3]
    ph, pw = pic_hw
    c, s = math.cos(turn), math.sin(turn)
    (py, px), (ax, ay), (tx, ty) = pic_box, anchor, target
    # where the picture's corners land, in the canvas's pixels: the region to fill
    corners = [(px + dx - ax, py + dy - ay) for dx in (0, pw) for dy in (0, ph)]
    xs = [tx + c * x - s * y - box[1] for x, y in corners]
    ys = [ty + s * x + c * y - box[0] for x, y in corners]
    x0, x1 = max(0, math.floor(min(xs)) - 1), min(w, math.ceil(max(xs)) + 1)
    y0, y1 = max(0, math.floor(min(ys)) - 1, math.ceil(top - box[0])), min(h, math.ceil(max(ys)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    return Sampling(y0, y1, x0, x1, c, s, (box[0], box[1]), (tx, ty), (ax, ay), (py, px))


def _place_over(canvas: np.ndarray, pic: np.ndarray, where: Sampling) -> None:
    """Lay pic (4, ph, pw) premultiplied over canvas (4, h, w) where `where` says, in place: bilinear."""
    y0, y1, x0, x1 = where.y0, where.y1, where.x0, where.x1
    sx, sy = where.coords(np.arange(x0, x1, dtype=np.float64)[None, :], np.arange(y0, y1, dtype=np.float64)[:, None])
    p = _bilinear(pic, sx, sy)
    region = canvas[:, y0:y1, x0:x1]
    canvas[:, y0:y1, x0:x1] = p + (1.0 - p[3:4]) * region


def _bilinear(pic: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """pic (C, h, w) sampled at (sy, sx) (arrays of one shape, pixel units, pixel k at k): zeros outside."""
    C, h, w = pic.shape
    padded = np.zeros((C, h + 1, w + 1), np.float32)  # index 0 reads zeros: where a neighbour is outside
    padded[:, 1:, 1:] = pic
    xf, yf = np.floor(sx), np.floor(sy)
    fx, fy = (sx - xf).astype(np.float32), (sy - yf).astype(np.float32)
    xa, ya = xf.astype(np.int64), yf.astype(np.int64)

    def at(i: np.ndarray, n: int) -> np.ndarray:
        return np.where((i >= 0) & (i < n), i + 1, 0)

    xi, xj, yi, yj = at(xa, w), at(xa + 1, w), at(ya, h), at(ya + 1, h)
    return (
        padded[:, yi, xi] * ((1 - fx) * (1 - fy))
        + padded[:, yi, xj] * (fx * (1 - fy))
        + padded[:, yj, xi] * ((1 - fx) * fy)
        + padded[:, yj, xj] * (fx * fy)
    )


__all__ = ["EffectLayer", "Placement", "Placements", "Sampling", "sample_coords"]
