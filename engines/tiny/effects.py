"""Architecture 3's effects: the avatar's effect particles pasted over the drawn frames, where the motion says.

An effect (sparkles, hearts, "zzz", ...) is a few particles drawn in screen space around the head or the torso,
each moving on its effect's clock (engines/avatar_world/particles.py, the one home of where they are). The
decoder moves the avatar's parts, so an effect far from every part had no pixels to copy. Here each particle kind
is a ladder of pictures (reference.effect_sprites, drawn once per avatar: one a size step, at four half-pixel
offsets of its centre), and a frame's motion vector gives everything particles.particles needs: the head's centre
and turn and the torso's centre (keypoints), the face's drop, each effect's strength, each clock's phase (its
sine and cosine). Each particle then lays the picture nearest its size and offset, scaled the last few per cent to
its size and moved the last quarter pixel (bilinear), in the renderer's order, over the frame, last. No weights.

Until 2026-12 a picture of each whole effect at 12 phases of its clock was laid instead: each particle stood up to
a twelfth of its path from where the renderer draws it (3-7 dB of the cut-out draw's error in sleepy, angry,
confused and love frames; docs/training/motion.md).

The placing is numpy (`canvas`: the effects of one frame on a transparent canvas, no torch, for a CPU serving
path); `over` lays canvases on a batch of torch frames, which keeps the frames' gradient in training; the device
compose (engines/tiny/motion_compose.py) lays `placements_many`'s pictures on the GPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from avatarcast.engines.avatar_world.particles import EFFECTS, SLOT_KINDS, STREAM_WIDTH, TURNING, Particle, particles
from avatarcast.engines.avatar_world.reference import EffectSprites
from avatarcast.engines.avatar_world.render import line_px
from avatarcast.engines.avatar_world.skeleton import EXPR_OFFSET, FACE_FIELDS, FX_FIELDS, FX_FREQUENCIES, KEYPOINTS
from avatarcast.engines.tiny.config import TinyConfig

if TYPE_CHECKING:  # torch only for training's `over`: serving lays the effects in numpy
    import torch

_CLOCK0 = EXPR_OFFSET + len(FACE_FIELDS) + len(FX_FIELDS)  # the clock's (sin, cos) pairs in a motion vector
_STRENGTH = {n: EXPR_OFFSET + len(FACE_FIELDS) + FX_FIELDS.index(n) for n in EFFECTS}
_FACE_DY = EXPR_OFFSET + FACE_FIELDS.index("face_dy")
_HEAD, _HEAD_UP, _TORSO = (KEYPOINTS.index(k) for k in ("head_centre", "head_up", "torso_centre"))


class EffectLayer:
    """One avatar's particle pictures in the decoder's window: `canvas` places a frame's effects, `over` lays them
    on frames. Its pictures are by slot (each effect's particles, particles.SLOT_KINDS, in the renderer's order):
    crops[e], boxes[e], anchors[e] are slot e's kind's (the same arrays for slots of one kind).

    window_origin: the window's (row, column) in the frame, i.e. (-pad_top, window_x0); window_hw: its size.
    """

    def __init__(self, sprites: EffectSprites, window_origin: tuple[int, int], window_hw: tuple[int, int]):
        oy, ox = window_origin
        self.origin = (oy, ox)
        self.hw = window_hw
        self.geo = sprites.geometry
        self.offsets = sprites.offsets
        self.grid = Q = len({dx for dx, _ in sprites.offsets})  # the offsets: a grid of grid x grid, 1 / grid apart
        if self.offsets != tuple((x / Q, y / Q) for y in range(Q) for x in range(Q)):  # what variant() counts on
            raise ValueError(f"effect pictures' offsets are not a {Q} x {Q} grid, rows of x: {self.offsets}")
        self.slots = [(effect, i) for effect in EFFECTS for i in range(len(SLOT_KINDS[effect]))]
        self.slot_index = {slot: e for e, slot in enumerate(self.slots)}
        kind_index = {k: n for n, k in enumerate(sprites.kinds)}
        self.kinds = [SLOT_KINDS[effect][i] for effect, i in self.slots]
        of = [kind_index[k] for k in self.kinds]
        # uint8 (levels, variants, h, w, 4) straight alpha, as drawn, until one is laid
        self.crops = [sprites.crops[n] for n in of]
        self.sizes = [sprites.sizes[n] for n in of]
        self.boxes = [(sprites.boxes[n][0] - oy, sprites.boxes[n][1] - ox) for n in of]  # window (row, col)
        self.anchors = [(sprites.anchors[n][0] - ox, sprites.anchors[n][1] - oy) for n in of]  # window (x, y)
        self.top = sprites.geometry.top - oy  # window row
        r = sprites.geometry.head_r
        self.widths = [[line_px(STREAM_WIDTH * r * z) for z in ladder] for ladder in self.sizes]  # streams' levels

    @classmethod
    def in_window(cls, sprites: EffectSprites, window: TinyConfig) -> EffectLayer:
        """The layer for the decoder's window (TinyConfig's padded window, as architecture 2's)."""
        return cls(sprites, (-window.pad_top, window.window_x0), (window.pad_height, window.window_width))

    def particles(self, motion: np.ndarray) -> list[Particle]:
        """One frame's particles (motion: (MOTION_DIM,), normalized window coordinates), in the renderer's order, in
        frame pixels: particles.particles with the head, the torso, the strengths and the clocks the motion carries.
        none for a motion with a number that is not finite (a diverged sample draws no effect rather than fail)."""
        H, W = self.hw
        oy, ox = self.origin
        m = np.asarray(motion, np.float64)
        strength = {n: float(m[k]) for n, k in _STRENGTH.items()}
        if not any(s > 0.0 for s in strength.values()) or not np.isfinite(m).all():  # the threshold is above 0
            return []

        def frame_px(k: int) -> tuple[float, float]:
            return ((m[2 * k] + 1.0) * 0.5 * W + ox, (m[2 * k + 1] + 1.0) * 0.5 * H + oy)

        head, up = frame_px(_HEAD), frame_px(_HEAD_UP)
        geo = dataclasses.replace(
            self.geo,
            head_c=head,
            head_ang=math.degrees(math.atan2(up[0] - head[0], head[1] - up[1])),  # up is (sin, -cos) of the angle
            tc=frame_px(_TORSO),
        )
        cycles = tuple(
            math.atan2(m[_CLOCK0 + 2 * c], m[_CLOCK0 + 2 * c + 1]) / (2.0 * math.pi) for c in range(len(FX_FREQUENCIES))
        )
        return particles(geo, strength, cycles, float(m[_FACE_DY]))

    def nearest_offset(self, frac):
        """The offset (one axis) of the picture variant nearest a centre's sub-pixel fraction `frac` in [0, 1) (a
        number or an array): at most half a grid step is left for the bilinear laying."""
        Q = self.grid
        return (np.floor(frac * Q + 0.5) % Q) / Q

    def variant(self, dx, dy):
        """The index in `offsets` of the offset (dx, dy), each a multiple of 1 / grid in [0, 1) (nearest_offset's; a
        number or an array): the offsets are the grid's rows of x (checked when made)."""
        Q = self.grid
        return np.rint(np.asarray(dy) * Q).astype(np.int64) * Q + np.rint(np.asarray(dx) * Q).astype(np.int64)

    def placements(self, motion: np.ndarray) -> list[Placement]:
        """One frame's particles (`particles`), in the renderer's order: which picture each lays, and where. What
        `canvas` draws, and what the device compose (engines/tiny/motion_compose.py) lays on the GPU, so that both
        place the same pictures."""
        oy, ox = self.origin
        out: list[Placement] = []
        r = self.geo.head_r
        for p in self.particles(motion):
            e = self.slot_index[(p.effect, p.slot)]
            ladder = self.sizes[e]
            if p.kind in TURNING:  # the picture of its line width, turned with the head about the head's centre
                want = line_px(STREAM_WIDTH * r * p.size)
                level = int(np.argmin([abs(w - want) for w in self.widths[e]]))
                a = math.radians(p.turn)
                # its points hang from the head's point (0, drop) (render.draw_particle), which the picture's anchor is
                tx = p.x - math.sin(a) * p.drop * r - ox
                ty = p.y + math.cos(a) * p.drop * r - oy
                out.append(Placement(e, level, 0, (tx, ty), a, 1.0))
                continue
            level = int(np.argmin(np.abs(np.log(ladder / p.size))))
            k = p.size / float(ladder[level])
            tx, ty = p.x - ox, p.y - oy  # the particle's centre, window pixels
            ax, ay = self.anchors[e]
            # the variant whose centre leaves the least sub-pixel move: its centre sits at anchor + (dx, dy)
            dx, dy = float(self.nearest_offset((tx - ax) % 1.0)), float(self.nearest_offset((ty - ay) % 1.0))
            v = int(self.variant(dx, dy))
            out.append(Placement(e, level, v, (tx - k * dx, ty - k * dy), 0.0, k))
        return out

    def placements_many(self, motions: np.ndarray) -> list[Placements]:
        """`placements` for many frames at once (motions: (F, MOTION_DIM)): per slot that is on in any of them, in
        the renderer's order, the frames it is on in, its pictures, and where each lands on the whole window
        (`sampling`'s region, turn and scale), as arrays; frames where it lands outside are left out. The same
        numbers as `placements` and `sampling` frame by frame, to the bit (the particles are `particles`'; then each
        array operation is the scalar one, in the same order, and the transcendental functions are Python's math,
        as there): the device compose's host work for a chunk of 200 streams (tested)."""
        H, W = self.hw
        oy, ox = self.origin
        found: list[tuple[int, int, float, float, float, float, float]] = []
        for f, motion in enumerate(np.asarray(motions, np.float64)):
            for p in self.particles(motion):
                found.append((f, self.slot_index[(p.effect, p.slot)], p.x, p.y, p.size, p.turn, p.drop))
        if not found:
            return []
        cols = list(zip(*found))
        frame, slot = np.array(cols[0], np.int64), np.array(cols[1], np.int64)
        px_, py_, size_, turn_, drop_ = (np.array(c, np.float64) for c in cols[2:])
        r = self.geo.head_r
        out: list[Placements] = []
        for e in np.unique(slot).tolist():
            sel = slot == e
            x, y, size, n = px_[sel], py_[sel], size_[sel], int(sel.sum())
            ladder, (ax, ay) = self.sizes[e], self.anchors[e]
            if self.kinds[e] in TURNING:  # as `placements`: the level of its line width, turned about the head
                want = np.array([line_px(STREAM_WIDTH * r * z) for z in size.tolist()])
                level = np.argmin(np.abs(np.array(self.widths[e])[None, :] - want[:, None]), 1)
                a = [math.radians(t) for t in turn_[sel].tolist()]
                d = drop_[sel].tolist()
                tx = np.array([xx - math.sin(aa) * dd * r - ox for xx, aa, dd in zip(x.tolist(), a, d)])
                ty = np.array([yy + math.cos(aa) * dd * r - oy for yy, aa, dd in zip(y.tolist(), a, d)])
                k, phase = np.ones(n), np.zeros(n, np.int64)
                c = np.array([math.cos(aa) for aa in a])
                sn = np.array([math.sin(aa) for aa in a])
            else:
                level = np.argmin(np.abs(np.log(ladder[None, :] / size[:, None])), 1)
                k = size / ladder[level]
                tx, ty = x - ox, y - oy
                dx, dy = self.nearest_offset((tx - ax) % 1.0), self.nearest_offset((ty - ay) % 1.0)
                phase = self.variant(dx, dy)
                tx, ty = tx - k * dx, ty - k * dy
                c, sn = np.ones(n), np.zeros(n)  # math.cos(0.0), math.sin(0.0)
            # _sampling on the whole window (box (0, 0, H, W): its origin's subtractions are exact, left out), each
            # corner's arithmetic as written there
            (pyb, pxb), (ph, pw) = self.boxes[e], self.crops[e].shape[2:4]
            corners = [(k * (pxb + dxc - ax), k * (pyb + dyc - ay)) for dxc in (0, pw) for dyc in (0, ph)]
            xs = np.stack([tx + c * cx - sn * cy for cx, cy in corners], 1)
            ys = np.stack([ty + sn * cx + c * cy for cx, cy in corners], 1)
            x0 = np.maximum(0, np.floor(xs.min(1)).astype(np.int64) - 1)
            x1 = np.minimum(W, np.ceil(xs.max(1)).astype(np.int64) + 1)
            y0 = np.maximum(np.maximum(0, np.floor(ys.min(1)).astype(np.int64) - 1), math.ceil(self.top))
            y1 = np.minimum(H, np.ceil(ys.max(1)).astype(np.int64) + 1)
            keep = (x0 < x1) & (y0 < y1)
            on = frame[sel]
            out.append(
                Placements(
                    e,
                    on[keep],
                    level[keep].astype(np.int64),
                    phase[keep],
                    tx[keep],
                    ty[keep],
                    (c / k)[keep],
                    (sn / k)[keep],
                    y0[keep],
                    y1[keep],
                    x0[keep],
                    x1[keep],
                    on,
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
            p.scale,
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
    """One particle laid on one frame: its slot (`effect`), its picture (size `level`, offset variant `phase`), where
    its anchor lands (window pixels x, y), its turn (radians) and scale about the anchor."""

    effect: int
    level: int
    phase: int
    target: tuple[float, float]
    turn: float
    scale: float = 1.0


@dataclass(frozen=True)
class Placements:
    """One slot's particle laid on many frames (EffectLayer.placements_many): per frame it lands on, the frame's row,
    its picture (size level, offset variant), its anchor's window pixel (tx, ty), its turn's cosine and sine over
    its scale (Sampling.c, .s), and the window region it fills, rows [y0, y1) and columns [x0, x1). `on`: every
    frame it is on in, landing or not."""

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
    c: float  # the turn's cosine and sine, over the scale: they take a frame pixel back into the picture
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


def _sampling(pic_hw, pic_box, anchor, target, turn: float, scale: float, box, top: float) -> Sampling | None:
    """A picture of pic_hw (its first pixel at window (row, column) `pic_box`), turned by `turn` and scaled by
    `scale` about `anchor` and moved onto `target` (window pixels (x, y)), on a canvas that is the window's part
    `box` = (row, column, height, width): the region it fills, clipped to the canvas and cut above window row
    `top`."""
    h, w = box[2], box[3]
    ph, pw = pic_hw
    c, s = math.cos(turn), math.sin(turn)
    (py, px), (ax, ay), (tx, ty) = pic_box, anchor, target
    # where the picture's corners land, in the canvas's pixels: the region to fill
    corners = [(scale * (px + dx - ax), scale * (py + dy - ay)) for dx in (0, pw) for dy in (0, ph)]
    xs = [tx + c * x - s * y - box[1] for x, y in corners]
    ys = [ty + s * x + c * y - box[0] for x, y in corners]
    x0, x1 = max(0, math.floor(min(xs)) - 1), min(w, math.ceil(max(xs)) + 1)
    y0, y1 = max(0, math.floor(min(ys)) - 1, math.ceil(top - box[0])), min(h, math.ceil(max(ys)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    return Sampling(y0, y1, x0, x1, c / scale, s / scale, (box[0], box[1]), (tx, ty), (ax, ay), (py, px))


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
