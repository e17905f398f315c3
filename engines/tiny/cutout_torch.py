"""The cut-out draw (engines/tiny/cutout.py) on a torch device: the same layers, maps, sampling and box filter, for
all frames of all streams of a call at once (issue 16: the GPU serves the CPU's picture).

numpy draws a frame at a time, a layer at a time, over the box each moved layer covers. Here:
- the host plans (numpy, vectorized over the call's frames, float64 as cutout.draw): each layer's map per frame
  (part_maps, the pair and point moves, a limb segment's stretch, the face's atlas pick, shift and eye stretch), and
  the box it covers in the frame's canvas of sub-pixels, exactly as cutout._lay / _lay_bone find it;
- each avatar's layers sit on the device once (`TorchCutout`): per layer one texture, its pictures (a face step's
  atlas pictures, a skin layer's canonical and reddened pictures side by side in channels) stacked, bordered;
- the device draws, per layer, all frames of an avatar's streams in one grid_sample call over a window of the
  largest box any frame needs, and lays the samples 'over' the frames' canvases (of any sizes, one after another in
  one flat buffer) with one gather and one scatter; a window's sub-pixels outside its own frame's box are written to
  one spare sub-pixel, so nothing outside the box changes, as numpy never touches it;
- the sub-pixels box-filtered to pixels, [-1, 1], premultiplied: the learnt decoder's convention, so the engine's
  compose (engines/tiny/motion_compose.py on CUDA, numpy on the CPU) lays the effects over it unchanged.

Sampling coordinates are float32 on the device (numpy's are float64): the same bilinear weights to ~1e-4 of a pixel.
numpy clamps a coordinate into the picture's border before sampling; so does this (tests/engines/test_cutout_torch.py
measures the frames' difference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avatarcast.engines.avatar_world.layers import AT, BONE, EYE, NECK, PAIR, pick_group
from avatarcast.engines.avatar_world.motions import Pose
from avatarcast.engines.avatar_world.render import brow_lift
from avatarcast.engines.avatar_world.skeleton import EXPR_OFFSET, FACE_FIELDS, N_POINTS, PARTS
from avatarcast.engines.backends.base import BackendError
from avatarcast.engines.tiny.cutout import (
    _F,
    _KP,
    _PART,
    CutoutAvatar,
    _WindowLayer,
    eye_stretch,
    neck_map,
    unturned,
    upright,
)
from avatarcast.engines.tiny.motion_denoiser import MotionDenoiser
from avatarcast.engines.tiny.motion_torch import device_roles
from avatarcast.engines.tiny.motion_weights import MotionManifest
from avatarcast.engines.tiny.pinned import to_device

Box = tuple[int, int, int, int]  # window (row, column, height, width)

# Per frame and layer, the numbers the device reads (one float32 row): the sampling map's constant, row and column
# coefficients (x, y each), the clamp's upper bounds, the texture's normalization offset, the skin's redness, and a
# limb segment's stretch (lower, upper cap, slope, offset, offset past the upper cap, the reference's origin,
# direction and normal).
_C, _B, _A, _HI, _BETA, _RED, _BONE = 0, 2, 4, 6, 8, 10, 11
_ROW = 22


@dataclass(frozen=True)
class _Texture:
    """One layer of the drawing order on the device: its pictures stacked (bordered) in one texture."""

    index: int  # its place in CutoutAvatar.layers
    kind: str  # CutoutAvatar.kinds': "" as it is, "skin" (reddened with face_red), or a face step (picked per frame)
    mover: str
    pictures: tuple[_WindowLayer | None, ...]  # 1, or a face step's one per atlas pose (None: nothing drawn there)
    skin: bool  # channels 4-7 hold its picture with face_red 1
    y_off: np.ndarray  # (K,) each picture's first row in the texture
    tex: torch.Tensor  # (1, C, Ht, Wt)
    alpha: torch.Tensor  # (2,) texture pixels -> grid_sample's normalized coordinates (align_corners=True)


@dataclass(frozen=True)
class TorchCutout:
    """One avatar's cut-out layers on the device, beside the numpy CutoutAvatar they came from (the plan reads it)."""

    host: CutoutAvatar
    textures: tuple[_Texture, ...]


def _stack(pictures: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Bordered pictures (h + 2, w + 2, C) one under the other, zero-padded to the widest: (C, sum h, max w) and
    each one's first row."""
    heights = [p.shape[0] for p in pictures]
    out = np.zeros((pictures[0].shape[2], sum(heights), max(p.shape[1] for p in pictures)), np.float32)
    y_off = np.concatenate([[0], np.cumsum(heights)[:-1]]).astype(np.int64)
    for p, y in zip(pictures, y_off):
        out[:, y : y + p.shape[0], : p.shape[1]] = p.transpose(2, 0, 1)
    return out, y_off


def to_device_layers(avatar: CutoutAvatar, device: torch.device) -> TorchCutout:
    """The avatar's layers as textures on `device` (a few MB; once per avatar)."""
    out = []
    for i, layer in enumerate(avatar.layers):
        kind = avatar.kinds[i]
        red = avatar.red.get(i) if kind == "skin" else None
        pictures: tuple[_WindowLayer | None, ...] = tuple(avatar.faces[kind]) if kind not in ("", "skin") else (layer,)
        drawn = [p.pixels for p in pictures if p is not None]
        if not drawn:
            continue
        if red is not None:
            drawn = [np.concatenate([layer.pixels, red.pixels], -1)]
        tex, y_off_drawn = _stack(drawn)
        y_off = np.zeros(len(pictures), np.int64)
        y_off[[k for k, p in enumerate(pictures) if p is not None]] = y_off_drawn
        Ht, Wt = tex.shape[1:]
        alpha = torch.tensor([2.0 / (Wt - 1), 2.0 / (Ht - 1)], dtype=torch.float32, device=device)
        t = torch.from_numpy(tex)[None].to(device)
        out.append(_Texture(i, kind, layer.mover, pictures, red is not None, y_off, t, alpha))
    return TorchCutout(avatar, tuple(out))


# -- the host's plan: numpy over all frames, float64 -------------------------------------------------------------


def _similarity(t1, t2, r1, r2, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """cutout._similarity for points (N, 2) (r1, r2 may be (2,)): A (N, 2, 2), b (N, 2)."""
    u, v = t2 - t1, np.broadcast_to(r2 - r1, t1.shape)
    den = (u * u).sum(-1) + eps
    re = (v[..., 0] * u[..., 0] + v[..., 1] * u[..., 1]) / den
    im = (v[..., 1] * u[..., 0] - v[..., 0] * u[..., 1]) / den
    A = np.stack([np.stack([re, -im], -1), np.stack([im, re], -1)], -2)
    return A, r1 - np.einsum("nij,nj->ni", A, t1)


def _affine(t0, t1, t2, r0, r1, r2, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """cutout._affine for points (N, 2) and reference points (2,)."""
    U = np.stack([t1 - t0, t2 - t0], -1)
    V = np.stack([r1 - r0, r2 - r0], -1)
    det = U[:, 0, 0] * U[:, 1, 1] - U[:, 0, 1] * U[:, 1, 0]
    det = np.where(np.abs(det) < eps, eps, det)
    inv = np.stack([np.stack([U[:, 1, 1], -U[:, 0, 1]], -1), np.stack([-U[:, 1, 0], U[:, 0, 0]], -1)], -2)
    A = V @ (inv / det[:, None, None])
    return A, r0 - np.einsum("nij,nj->ni", A, t0)


def part_maps_many(kp_t: np.ndarray, kp_r: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """cutout.part_maps for frames' keypoints (N, N_POINTS, 2): A (N, N_PARTS, 2, 2), b (N, N_PARTS, 2)."""
    s = np.array([w / 2.0, h / 2.0])
    pt, pr = np.asarray(kp_t, np.float64) * s, np.asarray(kp_r, np.float64) * s
    n = len(pt)
    As, bs = [], []
    for _, idx in PARTS:
        if len(idx) == 2:
            A, b = _similarity(pt[:, idx[0]], pt[:, idx[1]], pr[idx[0]], pr[idx[1]])
        elif len(idx) == 3:
            A, b = _affine(*(pt[:, i] for i in idx), *(pr[i] for i in idx))
        else:
            A, b = np.broadcast_to(np.eye(2), (n, 2, 2)), np.zeros((n, 2))
        As.append(A)
        bs.append(b)
    return _normalized(np.stack(As, 1), np.stack(bs, 1), s)


def _normalized(A: np.ndarray, b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return A * s[None, :] / s[:, None], b / s


@dataclass(frozen=True)
class _LayerPlan:
    """What the device needs to lay one texture over a call's canvases: a window (rows, cols) of each frame's canvas,
    the numbers of `_ROW`, and which of the window's rows and columns are inside the frame's own box."""

    texture: _Texture
    rows: int
    cols: int
    base: np.ndarray  # (2, N) int64: the window's first sub-pixel in the flat canvases, and the canvas's width
    nums: np.ndarray  # (N, _ROW) float64
    in_r: np.ndarray  # (N, rows): 1.0 on the rows inside the frame's box
    in_c: np.ndarray  # (N, cols)


def _count_below(v: np.ndarray, n: np.ndarray) -> np.ndarray:
    """np.searchsorted(centres, v) for the centres 0, 1, ..., n - 1 (v in their units): how many lie below v."""
    return np.clip(np.ceil(v), 0, n).astype(np.int64)


def plan(avatar: TorchCutout, motions: np.ndarray, origins: np.ndarray, sizes: np.ndarray) -> list[_LayerPlan]:
    """The layers' plans for raw motions (N, D), each frame drawn over the window box at `origins` (N, 2: row,
    column) of size `sizes` (N, 2: rows, columns), its canvas laid after the frame before's in one flat buffer:
    cutout.draw's decisions, for all frames at once."""
    cut = avatar.host
    (H, W), s = cut.window_hw, cut.scale
    Hs, Ws = H * s, W * s
    Hc, Wc = sizes[:, 0].astype(np.int64) * s, sizes[:, 1].astype(np.int64) * s  # each frame's canvas
    first = np.concatenate([[0], np.cumsum(Hc * Wc)[:-1]])  # its first sub-pixel in the flat canvases
    N = len(motions)
    m = np.asarray(motions, np.float64)
    finite = np.asarray(np.isfinite(m).all(1))
    m = np.where(finite[:, None], m, 0.0)  # a frame cutout.draw leaves transparent: no layer laid (below)
    kp = m[:, : 2 * N_POINTS].reshape(N, N_POINTS, 2)
    A, b = part_maps_many(kp, cut.kp_ref, W, H)
    extra_t, extra_r = cut.points(kp), cut.points(cut.kp_ref)

    def point(name: str) -> tuple[np.ndarray, np.ndarray]:
        if name in extra_t:
            return extra_t[name], extra_r[name]
        return kp[:, _KP[name]], cut.kp_ref[_KP[name]]

    face = m[:, EXPR_OFFSET : EXPR_OFFSET + len(FACE_FIELDS)]
    picks = {step: cut.picks(step, face) for step in ("blush", "eyes", "brows", "mouth")}
    red = np.clip(face[:, _F["face_red"]], 0.0, 1.0)
    lifts: dict[int, np.ndarray] = {}  # render.brow_lift per side, computed once a call where a brow layer asks
    # the canvas's sub-pixel centres: column k at x = sx * k + tx (normalized), as cutout.draw's xs
    y0s, x0s = origins[:, 0].astype(np.float64), origins[:, 1].astype(np.float64)
    sx, sy = 2.0 / Ws, 2.0 / Hs
    tx, ty = (x0s * s + 0.5) * sx - 1.0, (y0s * s + 0.5) * sy - 1.0
    half = np.array([W / 2.0, H / 2.0])
    plans = []
    for tex in avatar.textures:
        i = tex.index
        layer = cut.layers[i]
        on = finite.copy()
        k = np.zeros(N, np.int64)  # the picture each frame lays
        shift = np.zeros((N, 2))
        stretch, centre, keep_upright = None, None, None
        if tex.kind not in ("", "skin"):
            step, _, side = tex.kind.partition(EYE)
            k = picks[pick_group(step)]
            on &= np.array([p is not None for p in tex.pictures])[k]
            fields = cut.face_fields[k]
            if step == "pupils":
                xy = [_F["pupil_x"], _F["pupil_y"]]
                shift = np.einsum("nij,nj->ni", cut.pupil_px[k], face[:, xy] - fields[:, xy])
            if step == "brows":
                sd = int(side)
                if sd not in lifts:
                    lifts[sd] = np.array([brow_lift(Pose(**dict(zip(FACE_FIELDS, f.tolist()))), sd) for f in face])
                shift = cut.head_axes[:, 1][None] * (lifts[sd] - cut.brow_heights[k, 0 if sd == -1 else 1])[:, None]
            elif side:
                stretch = eye_stretch(face, fields)
                centre = cut.eyes[0 if side == "-1" else 1]
                keep_upright = upright(step, fields)
        pics = [p if p is not None else layer for p in tex.pictures]
        row = np.array([p.row for p in pics], np.float64)[k]
        col = np.array([p.col for p in pics], np.float64)[k]
        ph = np.array([p.pixels.shape[0] for p in pics], np.float64)[k]  # bordered
        pw = np.array([p.pixels.shape[1] for p in pics], np.float64)[k]
        nums = np.zeros((N, _ROW))
        if tex.mover.startswith(BONE):
            p_, q_, limb = tex.mover[len(BONE) :].split(",")
            origin = (x0s * s, y0s * s)
            box = _bone(nums, point(p_), point(q_), cut.caps[limb] * s, s, half * s, row, col, origin, (Hc, Wc))
        else:
            if tex.mover.startswith(AT):
                pt, pr = point(tex.mover[len(AT) :])
                Ai, bi = np.broadcast_to(np.eye(2), (N, 2, 2)), pr - pt
            elif tex.mover.startswith(NECK):
                Ai, bi = neck_map(kp, cut.kp_ref, cut.neck, tex.mover == NECK + "wide", W, H)
            elif tex.mover.startswith(PAIR):
                p_, q_ = tex.mover[len(PAIR) :].split(",")
                (pt, pr), (qt, qr) = point(p_), point(q_)
                Ai, bi = _normalized(*_similarity(pt * half, qt * half, pr * half, qr * half), half)
            else:
                j = _PART[tex.mover]
                Ai, bi = A[:, j], b[:, j]
            if keep_upright is not None and centre is not None and keep_upright.any():  # as cutout.draw
                A2, b2 = unturned(Ai, bi, centre)
                Ai = np.where(keep_upright[:, None, None], A2, Ai)
                bi = np.where(keep_upright[:, None], b2, bi)
            bi = bi - shift / half
            if stretch is not None and centre is not None:  # read the picture at c + (ref - c) / stretch
                inv = 1.0 / stretch
                Ai, bi = Ai * inv[:, :, None], centre + (bi - centre) * inv
            box = _affine_box(nums, Ai, bi, (Hs, Ws), row, col, ph - 2, pw - 2, (sx, sy), (tx, ty), (Hc, Wc))
        r0, r1, c0, c1 = box
        empty = ~on | (r1 <= r0) | (c1 <= c0)
        r0, r1, c0, c1 = (np.where(empty, 0, v) for v in (r0, r1, c0, c1))
        rows, cols = int((r1 - r0).max()), int((c1 - c0).max())
        if rows == 0 or cols == 0:
            continue
        # the window, inside the frame's canvas where it fits (a smaller canvas than another frame's box: its
        # sub-pixels past the canvas are outside the frame's box, and the device sends their writes elsewhere)
        rr, cc = np.clip(r0, 0, np.maximum(0, Hc - rows)), np.clip(c0, 0, np.maximum(0, Wc - cols))
        # the map's constant at the window's first sub-pixel (float64 here: the device adds small numbers to it)
        nums[:, _C : _C + 2] += nums[:, _A : _A + 2] * cc[:, None] + nums[:, _B : _B + 2] * rr[:, None]
        nums[:, _HI] = pw - 1.001  # cutout._sample's clamp, in the bordered picture's pixels
        nums[:, _HI + 1] = ph - 1.001
        y_off = tex.y_off[k].astype(np.float64)
        Ht, Wt = tex.tex.shape[2:]
        nums[:, _BETA] = -1.0
        nums[:, _BETA + 1] = y_off * 2.0 / (Ht - 1) - 1.0
        nums[:, _RED] = red if tex.skin else 0.0
        nums[empty] = 0.0
        ri = rr[:, None] + np.arange(rows)[None]
        ci = cc[:, None] + np.arange(cols)[None]
        in_r = ((ri >= r0[:, None]) & (ri < r1[:, None])).astype(np.float64)
        in_c = ((ci >= c0[:, None]) & (ci < c1[:, None])).astype(np.float64)
        base = first + rr * Wc + cc
        plans.append(_LayerPlan(tex, rows, cols, np.stack([base, Wc]).astype(np.int64), nums, in_r, in_c))
    return plans


def _affine_box(nums, Ai, bi, hw_s, row, col, h, w, steps, firsts, canvas) -> tuple[np.ndarray, ...]:
    """cutout._lay's map (ref = A @ target + b, normalized) as the bordered picture's pixel coordinates affine in the
    canvas's sub-pixel (column, row), into nums; and the box (r0, r1, c0, c1) its moved rectangle covers."""
    Hs, Ws = hw_s
    (sx, sy), (tx, ty) = steps, firsts
    # x = Ws / 2 * (A00 gx + A01 gy + b0 + 1) - col + 0.5, gx = sx * k + tx (and y alike)
    for a, size, pos in ((0, Ws, col), (1, Hs, row)):
        h2 = size / 2.0
        nums[:, _A + a] = h2 * Ai[:, a, 0] * sx
        nums[:, _B + a] = h2 * Ai[:, a, 1] * sy
        nums[:, _C + a] = h2 * (Ai[:, a, 0] * tx + Ai[:, a, 1] * ty + bi[:, a] + 1.0) - pos + 0.5
    # the layer's rectangle, one pixel grown, where it lands in the frame (normalized), as cutout._lay
    rx0, rx1 = ((col - 1) / Ws) * 2.0 - 1.0, ((col + w + 1) / Ws) * 2.0 - 1.0
    ry0, ry1 = ((row - 1) / Hs) * 2.0 - 1.0, ((row + h + 1) / Hs) * 2.0 - 1.0
    corners = np.stack([np.stack(c, -1) for c in ((rx0, ry0), (rx0, ry1), (rx1, ry0), (rx1, ry1))], 1)  # (N, 4, 2)
    det = Ai[:, 0, 0] * Ai[:, 1, 1] - Ai[:, 0, 1] * Ai[:, 1, 0]
    ok = np.abs(det) >= 1e-9
    safe = np.where(ok, det, 1.0)
    inv = np.stack([np.stack([Ai[:, 1, 1], -Ai[:, 0, 1]], -1), np.stack([-Ai[:, 1, 0], Ai[:, 0, 0]], -1)], -2)
    t = np.einsum("nkj,nij->nki", corners - bi[:, None], inv / safe[:, None, None])
    n_r, n_c = canvas
    c0 = _count_below((t[..., 0].min(1) - tx) / sx, n_c)
    c1 = _count_below((t[..., 0].max(1) - tx) / sx, n_c)
    r0 = _count_below((t[..., 1].min(1) - ty) / sy, n_r)
    r1 = _count_below((t[..., 1].max(1) - ty) / sy, n_r)
    return r0, np.where(ok, r1, r0), c0, np.where(ok, c1, c0)


def _bone(nums, p, q, cap, s, half, row, col, origin, canvas) -> tuple[np.ndarray, ...]:
    """cutout._lay_bone's map into nums: (along, across) the frame's bone affine in the sub-pixel (column, row), the
    along coordinate stretched piecewise, then the reference's bone; and the box (r0, r1, c0, c1) it can reach.
    p, q: (frame's (N, 2), reference's (2,)) normalized; half: the window's half size at the layers' scale; origin:
    (x0, y0), first sub-pixel in the window (N,); canvas: its (rows, columns)."""
    (pt, pr), (qt, qr) = p, q
    x0, y0 = origin
    at, bt = (pt + 1.0) * half, (qt + 1.0) * half
    ar, br = (pr + 1.0) * half, (qr + 1.0) * half
    lt = np.hypot(*(bt - at).T)
    lr = float(np.hypot(*(br - ar)))
    ok = (lt >= 1e-6) & (lr >= 1e-6)
    lt_ = np.where(ok, lt, 1.0)
    dt = (bt - at) / lt_[:, None]
    dr = (br - ar) / (lr if lr >= 1e-6 else 1.0)
    nt = np.stack([-dt[:, 1], dt[:, 0]], -1)
    nr = np.array([-dr[1], dr[0]])
    # a sub-pixel (k, r) of the canvas is at (x0 + k + 0.5, y0 + r + 0.5) at the layers' scale
    gx0, gy0 = x0 + 0.5 - at[:, 0], y0 + 0.5 - at[:, 1]
    nums[:, _A], nums[:, _B], nums[:, _C] = dt[:, 0], dt[:, 1], gx0 * dt[:, 0] + gy0 * dt[:, 1]  # along
    nums[:, _A + 1], nums[:, _B + 1], nums[:, _C + 1] = nt[:, 0], nt[:, 1], gx0 * nt[:, 0] + gy0 * nt[:, 1]  # across
    long = (lt > 2.0 * cap) & (lr > 2.0 * cap)
    k = np.where(long, (lr - 2.0 * cap) / np.where(long, lt - 2.0 * cap, 1.0), lr / lt_)
    b = _BONE
    nums[:, b] = np.where(long, cap, -np.inf)  # below: u as it is
    nums[:, b + 1] = np.where(long, lt - cap, np.inf)  # above: u - lt + lr
    nums[:, b + 2] = k  # between: u * k + e (cap + (u - cap) * k)
    nums[:, b + 3] = np.where(long, cap - cap * k, 0.0)
    nums[:, b + 4] = lr - lt
    nums[:, b + 5] = ar[0] - col + 0.5  # the bordered picture's pixels: ar + ur * dr + v * nr - (col, row) + 0.5
    nums[:, b + 6] = ar[1] - row + 0.5
    nums[:, b + 7], nums[:, b + 8] = dr[0], dr[1]
    nums[:, b + 9], nums[:, b + 10] = nr[0], nr[1]
    reach = cap + 2.0 * s
    lo, hi = np.minimum(at, bt) - reach, np.maximum(at, bt) + reach
    n_r, n_c = canvas
    c0, c1 = _count_below(lo[:, 0] - x0 - 0.5, n_c), _count_below(hi[:, 0] - x0 - 0.5, n_c)
    r0, r1 = _count_below(lo[:, 1] - y0 - 0.5, n_r), _count_below(hi[:, 1] - y0 - 0.5, n_r)
    return r0, np.where(ok, r1, r0), c0, np.where(ok, c1, c0)


# -- the device's draw ------------------------------------------------------------------------------------------


def draw_t(
    avatar: TorchCutout, motions: np.ndarray, origins: np.ndarray, sizes: np.ndarray, device: torch.device
) -> list[torch.Tensor]:
    """Raw motions (N, D) of one avatar, each frame's window box at `origins` (N, 2) of size `sizes` (N, 2: rows,
    columns; frames of one size next to each other) -> per run of frames of one size, (n, 4, h, w) premultiplied
    float32 in [-1, 1] on `device` (cutout.draw's frames, N at once)."""
    s = avatar.host.scale
    N = len(motions)
    plans = plan(avatar, motions, origins, sizes)
    # every plan's numbers in one copy to the device, and one of the integers (not a copy a layer)
    floats = np.concatenate([np.concatenate([p.nums.ravel(), p.in_r.ravel(), p.in_c.ravel()]) for p in plans] + [[]])
    nums_d = to_device(floats.astype(np.float32), device)
    ints_d = to_device(np.concatenate([p.base.ravel() for p in plans] + [np.zeros(0, np.int64)]), device, torch.long)
    areas = sizes[:, 0].astype(np.int64) * sizes[:, 1] * s * s
    total = int(areas.sum())
    top = max([1] + [max(p.rows, p.cols) for p in plans])
    ar_f = torch.arange(top, device=device, dtype=torch.float32)
    ar_l = torch.arange(top, device=device, dtype=torch.long)
    # the frames' canvases one after the other, and one sub-pixel more: where the writes outside a frame's own box go
    canvas = torch.zeros((4, total + 1), device=device)
    o = 0
    for n_plan, p in enumerate(plans):
        R, C = p.rows, p.cols
        nums = nums_d[o : o + N * _ROW].view(N, _ROW)
        in_r = nums_d[o + N * _ROW : o + N * (_ROW + R)].view(N, R, 1)
        in_c = nums_d[o + N * (_ROW + R) : o + N * (_ROW + R + C)].view(N, 1, C)
        o += N * (_ROW + R + C)
        base, width = ints_d[2 * N * n_plan : 2 * N * (n_plan + 1)].view(2, N, 1, 1)

        def col4(a: int, nums: torch.Tensor = nums) -> torch.Tensor:  # two numbers a frame, against (N, R, C, 2)
            return nums[:, a : a + 2].view(N, 1, 1, 2)

        g = torch.addcmul(col4(_C), col4(_B), ar_f[:R].view(1, R, 1, 1))
        g = torch.addcmul(g, col4(_A), ar_f[:C].view(1, 1, C, 1))  # (N, R, C, 2)
        if p.texture.mover.startswith(BONE):
            b = _BONE
            u, v = g[..., 0], g[..., 1]

            def at(a: int, nums: torch.Tensor = nums) -> torch.Tensor:  # one number a frame, against (N, R, C)
                return nums[:, a].view(N, 1, 1)

            ur = torch.where(
                u < at(b), u, torch.where(u > at(b + 1), u + at(b + 4), torch.addcmul(at(b + 3), u, at(b + 2)))
            )
            g = torch.addcmul(col4(b + 5), ur[..., None], col4(b + 7))
            g = torch.addcmul(g, v[..., None], col4(b + 9))
        g = torch.minimum(g.clamp_(min=0.0), col4(_HI))
        g = torch.addcmul(col4(_BETA), g, p.texture.alpha)
        got = F.grid_sample(p.texture.tex, g.view(1, N * R, C, 2), "bilinear", "zeros", align_corners=True)
        got = got.view(-1, N * R * C)
        if p.texture.skin:  # the canonical and the reddened skin mixed by face_red (linear: mixed after sampling)
            got = torch.lerp(got[:4], got[4:], nums[:, _RED].view(N, 1, 1).expand(N, R, C).reshape(1, -1))
        idx = base + ar_l[:R].view(1, R, 1) * width + ar_l[:C]
        # outside the frame's box (its window may reach past its canvas, into the next frame's): the spare sub-pixel
        idx = torch.where((in_r * in_c) > 0.5, idx, total).view(-1)
        under = canvas.index_select(1, idx)
        canvas.index_copy_(1, idx, torch.addcmul(got, under, 1.0 - got[3:4]))
    # the sub-pixels' box filter, then [-1, 1], a run of frames of one size at a time
    out = []
    starts = np.concatenate([[0], np.cumsum(areas)])
    i = 0
    while i < N:
        j = i + 1
        while j < N and (sizes[j] == sizes[i]).all():
            j += 1
        bh, bw = int(sizes[i, 0]), int(sizes[i, 1])
        run = canvas[:, int(starts[i]) : int(starts[j])].view(4, j - i, bh, s, bw, s)
        out.append((run.sum((3, 5)) * (2.0 / (s * s)) - 1.0).permute(1, 0, 2, 3).contiguous())
        i = j
    bad = np.flatnonzero(~np.isfinite(np.asarray(motions)).all(1))
    if len(bad):  # cutout.draw's transparent frame for a motion the sampler should never give
        flat = torch.cat(out) if len(out) > 1 else out[0]
        flat[to_device(bad, device, torch.long)] = -1.0
        out = list(torch.split(flat, [len(x) for x in out])) if len(out) > 1 else [flat]
    return out


class TorchCutoutBackend:
    """A MotionBackend (engines/tiny/motion_backends.py) that draws with the cut-out draw on a torch device and
    denoises with an exported folder's denoiser read into torch (its decoder graphs are not loaded). As the copy
    decoder's torch backend: on CUDA the streams of a call draw at once and the engine composes on the device."""

    name = "torch"
    atlas = 0
    cheaper_draw = False
    draws_layers = True
    prepared_on_host = False  # textures on the device

    def __init__(
        self,
        denoiser: MotionDenoiser,
        device: str = "cpu",
        batch_streams: bool | None = None,
        compose: bool | None = None,
        max_rows: int = 256,
    ):
        self._dev = torch.device(device)
        self.device = str(self._dev)
        self.denoiser = denoiser.to(self._dev).eval()
        # frames drawn at once (canvases of a bucket's box at 2x: ~3 MB a frame for a 224 x 192 box)
        self.max_rows = int(max_rows)
        self.batch_streams, self.compose_device = device_roles(self._dev, batch_streams, compose)

    @classmethod
    def from_folder(
        cls,
        manifest: MotionManifest,
        device: str = "cpu",
        verify: bool = True,
        batch_streams: bool | None = None,
        compose: bool | None = None,
    ) -> TorchCutoutBackend:
        """The folder's denoiser as a torch network (engines/tiny/motion_graph_weights.py).

        Raises:
            WeightsError: the graph missing or not its manifest's; GraphWeightsError: a weight that cannot be matched.
        """
        from avatarcast.engines.tiny.motion_graph_weights import denoiser_from_folder

        return cls(denoiser_from_folder(manifest, verify), device, batch_streams, compose)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "draw": "cutout",
            "device": self.device,
            "batch_streams": self.batch_streams,
            "compose_device": self.compose_device,
        }

    @property
    def device_name(self) -> str | None:
        return torch.cuda.get_device_name(self._dev) if self._dev.type == "cuda" else None

    def tensor(self, a: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return to_device(a, self._dev, dtype)

    def prepare(self, ref_win: np.ndarray, atlas: np.ndarray | None) -> Any:
        raise BackendError("the cut-out draw prepares an avatar's layers (cutout.prepare), not a reference frame")

    def layers(self, avatar: CutoutAvatar) -> TorchCutout:
        return to_device_layers(avatar, self._dev)

    def draw(
        self,
        ref: TorchCutout,
        motions: np.ndarray,
        ref_motion: np.ndarray,
        box: Box,
        cheaper: bool = False,
    ) -> np.ndarray:
        with torch.inference_mode():
            return self.draw_t(ref, self.tensor(motions), self.tensor(ref_motion), box, cheaper, motions).cpu().numpy()

    def draw_t(
        self,
        ref: TorchCutout,
        motions: torch.Tensor,
        ref_motion: torch.Tensor,
        box: Box,
        cheaper: bool = False,
        host: np.ndarray | None = None,
    ) -> torch.Tensor:
        """`draw` on the device -> (n, 4, h, w) there. host: the motions on the host (else copied back: a wait)."""
        if cheaper:
            raise BackendError("the cut-out draw has no cheaper draw")
        raw = motions.float().cpu().numpy() if host is None else np.asarray(host, np.float32)
        return self.draw_boxes_t([ref], raw[None], [box])[0]

    def draw_streams_t(
        self,
        refs: list[TorchCutout],
        motions: torch.Tensor,
        ref_motions: torch.Tensor,
        boxes: Sequence[Box],
        cheaper: bool = False,
        host: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Every stream's frames, on the device: refs (S,), raw motions (S, n, D), one box a stream (all of one size)
        or one for all -> (S, n, 4, h, w). host: the motions (S, n, D) on the host, where the caller has them (else
        they are copied back, a wait for the device's queue)."""
        if cheaper:
            raise BackendError("the cut-out draw has no cheaper draw")
        S = motions.shape[0]
        if len(boxes) == 1:
            boxes = list(boxes) * S
        if len({b[2:] for b in boxes}) != 1 or len(boxes) != S:
            raise ValueError(f"one box a stream ({S}), all of one size; got {sorted({b[2:] for b in boxes})}")
        raw = motions.float().cpu().numpy() if host is None else np.asarray(host, np.float32)
        return torch.stack(self.draw_boxes_t(refs, raw, boxes))

    def draw_boxes_t(self, refs: list[TorchCutout], motions: np.ndarray, boxes: Sequence[Box]) -> list[torch.Tensor]:
        """Every stream's frames on the device, each in its own box, of any size: refs (S,), raw motions (S, n, D) on
        the host, boxes (S,) -> S tensors (n, 4, h, w). All streams of one avatar draw in one go (at most max_rows
        frames a go): a go costs some 25 small kernels a layer whatever its frames, so a go per avatar and box size,
        as the copy decoder's buckets would make, was 32,000 launches a chunk of 200 streams (docs/bench/
        cutout_gpu_2026-12-06)."""
        S, n = motions.shape[:2]
        out: list[torch.Tensor | None] = [None] * S
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(refs):
            groups.setdefault(id(r), []).append(i)
        per = max(1, self.max_rows // max(1, n))
        for idx in groups.values():
            idx = sorted(idx, key=lambda i: (boxes[i][2:], i))  # frames of one size next to each other
            for k in range(0, len(idx), per):
                part = idx[k : k + per]
                origins = np.repeat(np.array([boxes[i][:2] for i in part], np.int64), n, 0)
                sizes = np.repeat(np.array([boxes[i][2:] for i in part], np.int64), n, 0)
                runs = draw_t(refs[part[0]], motions[part].reshape(len(part) * n, -1), origins, sizes, self._dev)
                # a run holds whole streams (a stream's frames share its box), in `part`'s order
                for i, view in zip(part, (run[j : j + n] for run in runs for j in range(0, len(run), n))):
                    out[i] = view
        return [o for o in out if o is not None]

    def draw_streams(
        self,
        refs: list[TorchCutout],
        motions: np.ndarray,
        ref_motions: np.ndarray,
        box: Box,
        cheaper: bool = False,
    ) -> np.ndarray:
        """`draw_streams_t` of one box from and to numpy (the engine's host-side compositing reads it)."""
        with torch.inference_mode():
            y = self.draw_streams_t(
                refs, self.tensor(motions), self.tensor(ref_motions), [box], cheaper, np.asarray(motions)
            )
            return y.cpu().numpy()

    def denoise(self, x, t, d, ctx, ref, emotion, intensity) -> np.ndarray:
        f = self.tensor
        with torch.inference_mode():
            v = self.denoiser(f(x), f(t), f(d), f(ctx), f(ref), f(emotion, torch.long), f(intensity))
        return v.float().cpu().numpy()


__all__ = ["TorchCutout", "TorchCutoutBackend", "draw_t", "part_maps_many", "plan", "to_device_layers"]
