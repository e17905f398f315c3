"""The cut-out draw (engines/tiny/cutout.py) on a torch device: the same layers, maps, sampling and box filter, for
all frames of all streams of a call at once (issue 16: the GPU serves the CPU's picture).

numpy draws a frame at a time, a layer at a time, over the box each moved layer covers. Here:
- the host plans (numpy, vectorized over an avatar's frames, float64 as cutout.draw): each layer's map per frame
  (part_maps, the pair and point moves, a limb segment's stretch, the face's atlas pick, shift and eye stretch), and
  the box it covers in the frame's canvas of sub-pixels, exactly as cutout._lay / _lay_bone find it;
- each avatar's layers sit on the device once (`TorchCutout`): every picture of every layer (a face step's atlas
  pictures, a skin layer's canonical and reddened pictures side by side in channels), bordered, row after row in one
  flat buffer of texels; a call joins its avatars' buffers in one;
- the device draws all frames of a call, of any avatars, in a number of ops that does not grow with the avatars:
  every frame's laid layers, each over its own box, are one flat list of sub-pixels ordered by the layer's place in
  its avatar's drawing order (its slot); every sub-pixel is mapped and sampled (bilinear: its four texels gathered,
  as cutout._sample) in one go, then laid 'over' the canvases (of any sizes, one after another in one flat buffer)
  a slot at a time: a gather, an addcmul and a scatter a slot. A frame has one layer a slot, its own avatar's, so
  each avatar's drawing order is kept;
- the sub-pixels box-filtered to pixels, [-1, 1], premultiplied: the learnt decoder's convention, so the engine's
  compose (engines/tiny/motion_compose.py on CUDA, numpy on the CPU) lays the effects over it unchanged.

Sampling coordinates are float32 on the device (numpy's are float64): the same bilinear weights to ~1e-4 of a pixel;
the texels' indices are integers (a texture's size costs no precision). numpy clamps a coordinate into the picture's
border before sampling; so does this (tests/engines/test_cutout_torch.py measures the frames' difference).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import torch

from avatarcast.engines.avatar_world.layers import AT, BONE, EYE, NECK, PAIR, pick_group
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
from avatarcast.engines.tiny.host_pool import HostPool, Job, run_here
from avatarcast.engines.tiny.motion_denoiser import MotionDenoiser
from avatarcast.engines.tiny.motion_torch import device_roles
from avatarcast.engines.tiny.motion_weights import MotionManifest
from avatarcast.engines.tiny.pinned import to_device

Box = tuple[int, int, int, int]  # window (row, column, height, width)

# Per frame and layer, the numbers the device reads (one float32 row): the sampling map's constant, row and column
# coefficients (x, y each), the clamp's upper bounds, the skin's redness, and a limb segment's stretch (lower, upper
# cap, slope, offset, offset past the upper cap, the reference's origin, direction and normal). A layer that is not a
# limb segment has the stretch of no stretch (u below an infinite cap, origin 0, direction (1, 0), normal (0, 1)):
# every layer runs the same arithmetic, exactly its own (u * 1 + v * 0 is u), so one go draws layers of every kind.
_C, _B, _A, _HI, _RED, _BONE = 0, 2, 4, 6, 8, 9
_ROW = 20
_NO_BONE = np.array([np.inf, np.inf, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0])
_CH = 8  # a texel: RGBA premultiplied, then a skin layer's RGBA with face_red 1 (zeros for the other layers)


@dataclass(frozen=True)
class _Texture:
    """One layer of the drawing order: where its pictures are in the avatar's texels."""

    kind: str  # CutoutAvatar.kinds': "" as it is, "skin" (reddened with face_red), or a face step (picked per frame)
    mover: str
    skin: bool  # channels 4-7 hold its picture with face_red 1
    # per picture (K: 1, or a face step's one per atlas pose): its first texel in TorchCutout.texels (its rows one
    # after another), whether anything is drawn there, and its window row, column and bordered size (a picture not
    # drawn: the layer's own, never laid)
    first: np.ndarray  # (K,) int64
    drawn: np.ndarray  # (K,) bool
    places: np.ndarray  # (4, K) float64: row, column, height, width


@dataclass(frozen=True)
class TorchCutout:
    """One avatar's cut-out layers on the device, beside the numpy CutoutAvatar they came from (the plan reads it):
    every picture of every layer (bordered), row after row in one flat buffer of texels."""

    host: CutoutAvatar
    textures: tuple[_Texture, ...]
    texels: torch.Tensor  # (T, _CH) float32


def to_device_layers(avatar: CutoutAvatar, device: torch.device) -> TorchCutout:
    """The avatar's layers as texels on `device` (some 30 MB with the face atlas; once per avatar)."""
    out, blocks = [], []
    at = 0
    for i, layer in enumerate(avatar.layers):
        kind = avatar.kinds[i]
        red = avatar.red.get(i) if kind == "skin" else None
        pictures: tuple[_WindowLayer | None, ...] = tuple(avatar.faces[kind]) if kind not in ("", "skin") else (layer,)
        if all(p is None for p in pictures):
            continue
        first = np.zeros(len(pictures), np.int64)
        for k, p in enumerate(pictures):
            if p is None:
                continue
            px = p.pixels.reshape(-1, 4)
            first[k] = at
            at += len(px)
            red_px = red.pixels.reshape(-1, 4) if red is not None else np.zeros_like(px)
            blocks.append(np.concatenate([px, red_px], 1))
        pics = [p if p is not None else layer for p in pictures]
        drawn = np.array([p is not None for p in pictures])
        places = np.array([[p.row, p.col, p.pixels.shape[0], p.pixels.shape[1]] for p in pics], np.float64).T
        out.append(_Texture(kind, layer.mover, red is not None, first, drawn, places))
    texels = torch.from_numpy(np.concatenate(blocks).astype(np.float32)).to(device)
    return TorchCutout(avatar, tuple(out), texels)


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
    """What the device needs to lay one texture over a call's frames: each frame's box in its canvas (sub-pixels,
    empty where the frame lays nothing), the numbers of `_ROW` (the map's constant at the box's first sub-pixel), and
    the texels of the picture it lays (its first texel, its row's length)."""

    slot: int  # the texture's place in TorchCutout.textures (the drawing order of drawn layers)
    box: np.ndarray  # (4, N) int64: first row, rows, first column, columns (0 rows: nothing laid)
    nums: np.ndarray  # (N, _ROW) float64
    texel: np.ndarray  # (N,) int64: the picture's first texel in TorchCutout.texels
    stride: np.ndarray  # (N,) int64: its bordered width


def _count_below(v: np.ndarray, n: np.ndarray) -> np.ndarray:
    """np.searchsorted(centres, v) for the centres 0, 1, ..., n - 1 (v in their units): how many lie below v."""
    return np.clip(np.ceil(v), 0, n).astype(np.int64)


def plan(avatar: TorchCutout, motions: np.ndarray, origins: np.ndarray, sizes: np.ndarray) -> list[_LayerPlan]:
    """The layers' plans for raw motions (N, D), each frame drawn over the window box at `origins` (N, 2: row,
    column) of size `sizes` (N, 2: rows, columns): cutout.draw's decisions, for all frames at once."""
    cut = avatar.host
    (H, W), s = cut.window_hw, cut.scale
    Hs, Ws = H * s, W * s
    Hc, Wc = sizes[:, 0].astype(np.int64) * s, sizes[:, 1].astype(np.int64) * s  # each frame's canvas
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
    laid: list[_Laid] = []
    affine: list = []  # the affine layers' maps, their boxes found in one go after the loop
    bones: list = []  # the limb segments' points, their maps and boxes found in one go after the loop

    def tiled_canvas(n: int) -> tuple[np.ndarray, np.ndarray]:
        return np.tile(Hc, n), np.tile(Wc, n)

    for slot, tex in enumerate(avatar.textures):
        on = finite.copy()
        k = np.zeros(N, np.int64)  # the picture each frame lays
        shift = np.zeros((N, 2))
        stretch, centre, keep_upright = None, None, None
        if tex.kind not in ("", "skin"):
            step, _, side = tex.kind.partition(EYE)
            k = picks[pick_group(step)]
            on &= tex.drawn[k]
            fields = cut.face_fields[k]
            if step == "pupils":
                xy = [_F["pupil_x"], _F["pupil_y"]]
                shift = np.einsum("nij,nj->ni", cut.pupil_px[k], face[:, xy] - fields[:, xy])
            if step == "brows":
                sd = int(side)
                if sd not in lifts:
                    # render.brow_lift's arithmetic on every frame's fields at once (the same numbers as per frame)
                    fields_t = SimpleNamespace(**{f: face[:, j] for j, f in enumerate(FACE_FIELDS)})
                    lifts[sd] = np.asarray(brow_lift(fields_t, sd), np.float64)  # type: ignore[arg-type]
                shift = cut.head_axes[:, 1][None] * (lifts[sd] - cut.brow_heights[k, 0 if sd == -1 else 1])[:, None]
            elif side:
                stretch = eye_stretch(face, fields)
                centre = cut.eyes[0 if side == "-1" else 1]
                keep_upright = upright(step, fields)
        row, col, ph, pw = tex.places[:, k]  # ph, pw: bordered
        if tex.mover.startswith(BONE):
            p_, q_, limb = tex.mover[len(BONE) :].split(",")
            bones.append((slot, tex, k, on, point(p_), point(q_), cut.caps[limb] * s, row, col, ph, pw))
            continue
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
        affine.append((slot, tex, k, on, Ai, bi, row, col, ph, pw))
    if bones:  # every limb segment's map and box in one go over (layers x frames): numpy's cost is per call
        n = len(bones)
        nums = np.zeros((n * N, _ROW))
        frame = [np.concatenate([x[i][0] for x in bones]) for i in (4, 5)]
        ref = [np.concatenate([np.broadcast_to(x[i][1], (N, 2)) for x in bones]) for i in (4, 5)]
        cap = np.repeat([x[6] for x in bones], N)
        row, col = (np.concatenate([x[i] for x in bones]) for i in (7, 8))
        origin = (np.tile(x0s * s, n), np.tile(y0s * s, n))
        box = _bone(nums, (frame[0], ref[0]), (frame[1], ref[1]), cap, s, half * s, row, col, origin, tiled_canvas(n))
        laid += _split(bones, nums, box, N)
    if affine:  # every affine layer's map and box in one go over (layers x frames): numpy's cost is per call
        n = len(affine)
        nums = np.zeros((n * N, _ROW))
        Ai, bi, row, col, ph, pw = (np.concatenate([a[i] for a in affine]) for i in range(4, 10))
        firsts = (np.tile(tx, n), np.tile(ty, n))
        box = _affine_box(nums, Ai, bi, (Hs, Ws), row, col, ph - 2, pw - 2, (sx, sy), firsts, tiled_canvas(n))
        laid += _split(affine, nums, box, N)
    return _finish(laid, N, red)


class _Laid(NamedTuple):
    """One layer's plan before `_finish`: its slot and texture, each frame's picture and whether the frame lays it,
    its numbers (N, _ROW), its box (r0, r1, c0, c1) and the pictures' bordered heights and widths."""

    slot: int
    tex: _Texture
    k: np.ndarray
    on: np.ndarray
    nums: np.ndarray
    box: tuple[np.ndarray, ...]
    ph: np.ndarray
    pw: np.ndarray


def _split(group: list, nums: np.ndarray, box: tuple[np.ndarray, ...], N: int) -> list[_Laid]:
    """A group's maps and boxes, found in one go over (layers x frames), back to one `_Laid` a layer. group: per
    layer (slot, texture, pictures, on, ..., bordered heights, widths), in the order of the go's rows."""
    out = []
    for i, (slot, tex, k, on, *_, ph, pw) in enumerate(group):
        at = slice(i * N, (i + 1) * N)
        out.append(_Laid(slot, tex, k, on, nums[at], tuple(v[at] for v in box), ph, pw))
    return out


def _finish(laid: list[_Laid], N: int, red: np.ndarray) -> list[_LayerPlan]:
    """The layers' plans from their maps and boxes, in one go over (layers x frames): each box emptied where the frame
    lays nothing, the map's constant moved to the box's first sub-pixel, the clamp, the skin's redness, the identity
    stretch of a layer that is not a limb segment."""
    if not laid:
        return []
    nums = np.concatenate([x.nums for x in laid])
    r0, r1, c0, c1 = (np.concatenate([x.box[i] for x in laid]) for i in range(4))
    on = np.concatenate([x.on for x in laid])
    ph, pw = np.concatenate([x.ph for x in laid]), np.concatenate([x.pw for x in laid])
    empty = ~on | (r1 <= r0) | (c1 <= c0)
    r0, r1, c0, c1 = (np.where(empty, 0, v) for v in (r0, r1, c0, c1))
    # the map's constant at the box's first sub-pixel (float64 here: the device adds small numbers to it)
    nums[:, _C : _C + 2] += nums[:, _A : _A + 2] * c0[:, None] + nums[:, _B : _B + 2] * r0[:, None]
    nums[:, _HI] = pw - 1.001  # cutout._sample's clamp, in the bordered picture's pixels
    nums[:, _HI + 1] = ph - 1.001
    nums[:, _RED] = np.concatenate([red if x.tex.skin else np.zeros(N) for x in laid])
    not_bone = np.repeat([not x.tex.mover.startswith(BONE) for x in laid], N)
    nums[not_bone, _BONE:] = _NO_BONE
    nums[empty] = 0.0
    box4 = np.stack([r0, r1 - r0, c0, c1 - c0]).astype(np.int64)
    plans = []
    for i, x in enumerate(laid):
        at = slice(i * N, (i + 1) * N)
        plans.append(_LayerPlan(x.slot, box4[:, at], nums[at], x.tex.first[x.k], pw[at].astype(np.int64)))
    return sorted(plans, key=lambda p: p.slot)


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
    Per row (a layer's frame; rows of many layers at once): p, q: (frame's (M, 2), reference's (M, 2)) normalized;
    cap (M,): the limb's cap; half: the window's half size at the layers' scale; origin: (x0, y0), first sub-pixel in
    the window (M,); canvas: its (rows, columns) (M,)."""
    (pt, pr), (qt, qr) = p, q
    x0, y0 = origin
    at, bt = (pt + 1.0) * half, (qt + 1.0) * half
    ar, br = (pr + 1.0) * half, (qr + 1.0) * half
    lt = np.hypot(*(bt - at).T)
    lr = np.hypot(*(br - ar).T)
    ok = (lt >= 1e-6) & (lr >= 1e-6)
    lt_ = np.where(ok, lt, 1.0)
    dt = (bt - at) / lt_[:, None]
    dr = (br - ar) / np.where(lr >= 1e-6, lr, 1.0)[:, None]
    nt = np.stack([-dt[:, 1], dt[:, 0]], -1)
    nr = np.stack([-dr[:, 1], dr[:, 0]], -1)
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
    nums[:, b + 5] = ar[:, 0] - col + 0.5  # the bordered picture's pixels: ar + ur * dr + v * nr - (col, row) + 0.5
    nums[:, b + 6] = ar[:, 1] - row + 0.5
    nums[:, b + 7], nums[:, b + 8] = dr[:, 0], dr[:, 1]
    nums[:, b + 9], nums[:, b + 10] = nr[:, 0], nr[:, 1]
    reach = (cap + 2.0 * s)[:, None]
    lo, hi = np.minimum(at, bt) - reach, np.maximum(at, bt) + reach
    n_r, n_c = canvas
    c0, c1 = _count_below(lo[:, 0] - x0 - 0.5, n_c), _count_below(hi[:, 0] - x0 - 0.5, n_c)
    r0, r1 = _count_below(lo[:, 1] - y0 - 0.5, n_r), _count_below(hi[:, 1] - y0 - 0.5, n_r)
    return r0, np.where(ok, r1, r0), c0, np.where(ok, c1, c0)


# -- the device's draw ------------------------------------------------------------------------------------------


def joined_texels(avatars: Sequence[TorchCutout]) -> tuple[torch.Tensor, np.ndarray]:
    """Every avatar's texels in one buffer (one gather reads any avatar's pictures) and each avatar's first texel
    there."""
    firsts = np.concatenate([[0], np.cumsum([len(a.texels) for a in avatars])[:-1]]).astype(np.int64)
    return (avatars[0].texels if len(avatars) == 1 else torch.cat([a.texels for a in avatars])), firsts


def draw_t(
    avatar: TorchCutout,
    motions: np.ndarray,
    origins: np.ndarray,
    sizes: np.ndarray,
    device: torch.device,
    kernel: str = "eager",
) -> list[torch.Tensor]:
    """`draw_frames_t` for frames of one avatar."""
    return draw_frames_t([avatar], np.zeros(len(motions), np.int64), motions, origins, sizes, device, kernel=kernel)


# sub-pixels sampled in one go at most (some 400 bytes each at the peak: ~3 GB): a chunk of 200 streams samples some
# 220 million (tools.cutout_torch_ops). On CUDA four times as many (~13 GB): a quarter of the goes.
MAX_SAMPLES = 1 << 23
MAX_SAMPLES_CUDA = 1 << 25


@dataclass(frozen=True)
class Pieces:
    """Every frame's laid layers of a call ("pieces"), in the order the plans give them (an avatar's frames at a time,
    layer by layer): the frame each lays on, its slot (the layer's place in its avatar's drawing order), its box in
    the frame's canvas of sub-pixels, the picture it samples (its first texel in the joined texels, its row's
    length) and the numbers of `_ROW`."""

    frame: np.ndarray  # (P,) int64
    slot: np.ndarray  # (P,) int64
    box: np.ndarray  # (P, 4) int64: first row, rows, first column, columns
    texel: np.ndarray  # (P,) int64
    stride: np.ndarray  # (P,) int64
    nums: np.ndarray  # (P, _ROW) float64


def pieces(
    avatars: Sequence[TorchCutout],
    which: np.ndarray,
    motions: np.ndarray,
    origins: np.ndarray,
    sizes: np.ndarray,
    tex_first: np.ndarray,
    pool: HostPool | None = None,
) -> Pieces:
    """The host's plans (`plan`, an avatar's frames at a time) as one list of pieces: the layers each frame lays
    (a layer whose box is empty in a frame is not one of its pieces). pool: where the avatars' plans run side by side
    (engines/tiny/host_pool.py; None: here, one after the other)."""
    present = np.unique(which)
    sels = [np.flatnonzero(which == a) for a in present]
    jobs = [
        Job(avatar_pieces, avatars[a], _host_half, (motions[sel], origins[sel], sizes[sel]))
        for a, sel in zip(present, sels)
    ]
    got = run_here(jobs) if pool is None else pool.submit(jobs)()
    parts = [(sel[f], s, b, t + tex_first[a], st, n) for a, sel, (f, s, b, t, st, n) in zip(present, sels, got)]
    ints = np.zeros(0, np.int64)

    def joined(i: int, empty: np.ndarray) -> np.ndarray:
        return np.concatenate([p[i] for p in parts] + [empty])

    return Pieces(
        frame=joined(0, ints).astype(np.int64),
        slot=joined(1, ints).astype(np.int64),
        box=joined(2, np.zeros((0, 4), np.int64)).astype(np.int64),
        texel=joined(3, ints).astype(np.int64),
        stride=joined(4, ints).astype(np.int64),
        nums=joined(5, np.zeros((0, _ROW))),
    )


def avatar_pieces(
    avatar: TorchCutout, motions: np.ndarray, origins: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, ...]:
    """`pieces`' arrays for frames of one avatar: (frame, slot, box, texel, stride, nums), frames numbered in
    `motions`' order, texels from the avatar's first (what a host worker sends back: six arrays, not a plan a layer)."""
    frame, slot, box, texel, stride, nums = [], [], [], [], [], []
    for p in plan(avatar, motions, origins, sizes):
        on = p.box[1] * p.box[3] > 0
        frame.append(np.flatnonzero(on))
        slot.append(np.full(int(on.sum()), p.slot))
        box.append(p.box[:, on].T)
        texel.append(p.texel[on])
        stride.append(p.stride[on])
        nums.append(p.nums[on])
    ints = np.zeros(0, np.int64)
    return (
        np.concatenate(frame + [ints]),
        np.concatenate(slot + [ints]),
        np.concatenate(box + [np.zeros((0, 4), np.int64)]),
        np.concatenate(texel + [ints]),
        np.concatenate(stride + [ints]),
        np.concatenate(nums + [np.zeros((0, _ROW))]),
    )


def _host_half(avatar: TorchCutout) -> TorchCutout:
    """What a host worker keeps of an avatar for its plans: all but the texels on the device."""
    return dataclasses.replace(avatar, texels=torch.empty(0))


# how the device lays the pieces: "eager" (torch ops over every sub-pixel), "compiled" (the sampling through
# torch.compile) or "triton" (engines/tiny/cutout_triton.py: one kernel, sub-pixels kept in registers)
KERNELS = ("eager", "compiled", "triton")


def default_kernel(device: torch.device) -> str:
    """The kernel a backend on `device` draws with unless told: Triton's on CUDA where Triton is (an H100, 200
    streams: the draw of a chunk of 800 frames 27 ms on the device, against 1.1 s eager and 0.19 s compiled;
    docs/bench/cutout_triton_2026-12-07), else torch's ops."""
    from avatarcast.engines.tiny.cutout_triton import serves_on

    return "triton" if serves_on(device) else "eager"


def draw_frames_t(
    avatars: Sequence[TorchCutout],
    which: np.ndarray,
    motions: np.ndarray,
    origins: np.ndarray,
    sizes: np.ndarray,
    device: torch.device,
    texels: tuple[torch.Tensor, np.ndarray] | None = None,
    max_samples: int = MAX_SAMPLES,
    kernel: str = "eager",
    pool: HostPool | None = None,
) -> list[torch.Tensor]:
    """Raw motions (N, D) of frames of any avatars (`which` (N,): each frame's index in `avatars`), each frame's
    window box at `origins` (N, 2) of size `sizes` (N, 2: rows, columns; frames of one size next to each other) ->
    per run of frames of one size, (n, 4, h, w) premultiplied float32 in [-1, 1] on `device` (cutout.draw's frames).
    texels: joined_texels(avatars), where the caller keeps it; kernel: one of KERNELS.

    eager and compiled: the device's ops do not grow with the avatars: every frame's layers, each over its own box,
    are one flat list of sub-pixels ordered by the layer's place in its avatar's drawing order (its slot); each
    sub-pixel is mapped and sampled (bilinear, a gather of its four texels) in one go, and laid 'over' its canvas a
    slot at a time (a frame has one layer a slot, its own avatar's: the order of each avatar's layers is kept). A go
    holds at most `max_samples` sub-pixels: a call makes one go per that many, and three ops a slot. triton: one
    launch for the call (engines/tiny/cutout_triton.py). pool: where the avatars' plans run (`pieces`)."""
    from avatarcast.engines.tiny.cutout_triton import checked

    checked(kernel, KERNELS, "the cut-out draw")
    s = avatars[0].host.scale
    tex, tex_first = joined_texels(avatars) if texels is None else texels
    pcs = pieces(avatars, which, motions, origins, sizes, tex_first, pool)
    if kernel == "triton":
        from avatarcast.engines.tiny import cutout_triton

        arrays = (pcs.frame, pcs.slot, pcs.box, pcs.texel, pcs.stride, pcs.nums)
        flat = cutout_triton.draw(arrays, sizes, s, tex, device)
        areas = 4 * sizes[:, 0].astype(np.int64) * sizes[:, 1]
        out = _runs(sizes, lambda a, b, n, h, w: flat[a:b].view(n, 4, h, w), areas)
    else:
        out = _draw_torch(pcs, sizes, s, tex, device, max_samples, kernel == "compiled")
    bad = ~np.isfinite(np.asarray(motions)).all(1)
    if bad.any():  # cutout.draw's transparent frame for a motion the sampler should never give (runs of any sizes)
        at = np.cumsum([0] + [len(x) for x in out])
        for run, a, b in zip(out, at[:-1], at[1:]):
            if bad[a:b].any():
                run[to_device(np.flatnonzero(bad[a:b]), device, torch.long)] = -1.0
    return out


def _runs(sizes: np.ndarray, view, areas: np.ndarray) -> list[torch.Tensor]:
    """`view(first, end, frames, rows, columns)` of each run of frames of one size, frame k's values from
    areas[:k].sum() in the flat buffer `view` reads."""
    at = np.concatenate([[0], np.cumsum(areas)])
    out, i, N = [], 0, len(sizes)
    while i < N:
        j = i + 1
        while j < N and (sizes[j] == sizes[i]).all():
            j += 1
        out.append(view(int(at[i]), int(at[j]), j - i, int(sizes[i, 0]), int(sizes[i, 1])))
        i = j
    return out


def _draw_torch(
    pcs: Pieces, sizes: np.ndarray, s: int, tex: torch.Tensor, device: torch.device, max_samples: int, fuse: bool
) -> list[torch.Tensor]:
    """draw_frames_t's eager and compiled kernels."""
    areas = sizes[:, 0].astype(np.int64) * sizes[:, 1] * s * s
    Wc = sizes[:, 1].astype(np.int64) * s
    first = np.concatenate([[0], np.cumsum(areas)[:-1]])  # each frame's canvas in the flat canvases
    f = pcs.frame
    r0, h, c0, w = pcs.box.T
    # per piece: the box's width, the picture's first texel and its width, the box's first sub-pixel and its
    # canvas's width; pieces in slot order (stable: as the plans gave them within a slot)
    order = np.argsort(pcs.slot, kind="stable")
    slots = pcs.slot[order]
    cnt = (h * w)[order]
    P = len(cnt)
    ends = np.cumsum(cnt)
    starts = ends - cnt
    nums_h = pcs.nums[order].astype(np.float32)
    ints_h = np.stack([w, pcs.texel, pcs.stride, first[f] + r0 * Wc[f] + c0, Wc[f]], 1)[order]
    ints_h = np.concatenate([ints_h, starts[:, None]], 1)
    # one copy of the numbers to the device, one of the integers
    nums_d = to_device(nums_h.ravel(), device).view(P, _ROW)
    ints_d = to_device(np.concatenate([cnt, ints_h.ravel()]).astype(np.int64), device, torch.long)
    cnt_d, ints_d = ints_d[:P], ints_d[P:].view(P, 6)
    canvas = torch.zeros((int(areas.sum()), 4), device=device)
    p0 = 0
    while p0 < P:
        # a go: pieces from p0 while their sub-pixels fit max_samples (at least one piece)
        p1 = max(p0 + 1, int(np.searchsorted(ends, starts[p0] + max_samples, "right")))
        go = (nums_d[p0:p1], ints_d[p0:p1], cnt_d[p0:p1], cnt[p0:p1], slots[p0:p1], int(starts[p0]))
        _lay(canvas, tex, *go, fuse=fuse)
        p0 = p1

    # the sub-pixels' box filter, then [-1, 1], a run of frames of one size at a time
    def filtered(a: int, b: int, n: int, bh: int, bw: int) -> torch.Tensor:
        run = canvas[a:b].view(n, bh, s, bw, s, 4).sum((2, 4))
        return run.mul_(2.0 / (s * s)).sub_(1.0).permute(0, 3, 1, 2).contiguous()

    return _runs(sizes, filtered, areas)


def _lay(
    canvas: torch.Tensor,
    tex: torch.Tensor,
    nums: torch.Tensor,
    ints: torch.Tensor,
    cnt: torch.Tensor,
    counts: np.ndarray,
    slots: np.ndarray,
    e0: int,
    fuse: bool = False,
) -> None:
    """One go of draw_frames_t: pieces (their numbers (P, _ROW), integers (P, 6), sub-pixels (P,) on the device and
    `counts` on the host, slots (P,) in order), whose sub-pixels start at e0 of the call's, sampled and laid over
    `canvas` (sub-pixels, 4) in place. fuse: the sampling through torch.compile (one kernel or a few instead of ~40
    ops over every sub-pixel)."""
    e1 = e0 + int(counts.sum())
    pid = torch.repeat_interleave(cnt, output_size=e1 - e0)  # each sub-pixel's piece
    sample = _fused() if fuse else _samples
    got, keep, at = sample(tex, nums, ints, pid, torch.arange(e0, e1, device=canvas.device))
    # 'over', a slot at a time: within a slot each frame lays one piece (no sub-pixel twice)
    at_piece = np.concatenate([[0], np.cumsum(counts)])
    per_slot = np.diff(at_piece[np.concatenate([[0], np.flatnonzero(np.diff(slots)) + 1, [len(slots)]])]).tolist()
    for laid, kept, where in zip(got.split(per_slot), keep.split(per_slot), at.split(per_slot)):
        canvas.index_copy_(0, where, torch.addcmul(laid, canvas.index_select(0, where), kept))


def _samples(
    tex: torch.Tensor, nums: torch.Tensor, ints: torch.Tensor, pid: torch.Tensor, e: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sub-pixels e (E,) of pieces pid (E,) -> their samples (E, 4), 1 - alpha (E, 1) and places in the flat
    canvases (E,)."""
    it = ints.index_select(0, pid)
    fl = nums.index_select(0, pid)
    local = e - it[:, 5]
    r = torch.div(local, it[:, 0], rounding_mode="floor")  # the sub-pixel's row and column in its piece's box
    c = torch.addcmul(local, r, it[:, 0], value=-1)
    uv = torch.addcmul(fl[:, _C : _C + 2], fl[:, _B : _B + 2], r.to(fl.dtype)[:, None])
    uv = torch.addcmul(uv, fl[:, _A : _A + 2], c.to(fl.dtype)[:, None])
    # a limb segment's along coordinate stretched piecewise, then the reference's bone (the other layers: as they are)
    b = _BONE
    u, v = uv[:, 0], uv[:, 1]
    ur = torch.where(
        u < fl[:, b], u, torch.where(u > fl[:, b + 1], u + fl[:, b + 4], torch.addcmul(fl[:, b + 3], u, fl[:, b + 2]))
    )
    xy = torch.addcmul(fl[:, b + 5 : b + 7], ur[:, None], fl[:, b + 7 : b + 9])
    xy = torch.addcmul(xy, v[:, None], fl[:, b + 9 : b + 11])
    # cutout._sample: clamped into the bordered picture, its four texels mixed
    xy = torch.minimum(xy.clamp(min=0.0), fl[:, _HI : _HI + 2])
    whole = xy.floor()
    fx, fy = (xy - whole).split(1, 1)
    ix = whole.long()
    t00 = torch.addcmul(it[:, 1] + ix[:, 0], ix[:, 1], it[:, 2])
    t10 = t00 + it[:, 2]
    top = torch.lerp(tex.index_select(0, t00), tex.index_select(0, t00 + 1), fx)
    got = torch.lerp(top, torch.lerp(tex.index_select(0, t10), tex.index_select(0, t10 + 1), fx), fy)
    # the canonical and the reddened skin mixed by face_red (linear: mixed after sampling; 0 for the other layers)
    got = torch.lerp(got[:, :4], got[:, 4:], fl[:, _RED : _RED + 1])
    at = torch.addcmul(it[:, 3] + c, r, it[:, 4])  # the sub-pixel in the flat canvases
    return got, 1.0 - got[:, 3:4], at


_FUSED: list[Any] = []


def _fused() -> Any:
    """_samples through torch.compile (dynamic shapes: a go's sub-pixels and pieces vary), compiled once a process."""
    if not _FUSED:
        _FUSED.append(torch.compile(_samples, dynamic=True))
    return _FUSED[0]


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
        max_rows: int = 1024,
        max_samples: int | None = None,
        kernel: str | None = None,
    ):
        self._dev = torch.device(device)
        self.device = str(self._dev)
        self.denoiser = denoiser.to(self._dev).eval()
        # frames drawn at once (canvases of a bucket's box at 2x: ~3 MB a frame for a 224 x 192 box), and layers'
        # sub-pixels sampled at once (draw_frames_t)
        self.max_rows = int(max_rows)
        self.max_samples = int(max_samples or (MAX_SAMPLES_CUDA if self._dev.type == "cuda" else MAX_SAMPLES))
        self.kernel = "eager"  # how the device lays the layers (draw_frames_t): by default Triton's on CUDA
        self.use_kernel(kernel or default_kernel(self._dev))
        self._joined: tuple[tuple[TorchCutout, ...], tuple[torch.Tensor, np.ndarray]] | None = None
        self.batch_streams, self.compose_device = device_roles(self._dev, batch_streams, compose)

    def use_kernel(self, kernel: str) -> None:
        """Lay the layers with `kernel`, one of KERNELS (draw_frames_t).

        Raises:
            BackendError: another name, or "triton" without Triton.
        """
        from avatarcast.engines.tiny.cutout_triton import checked

        self.kernel = checked(kernel, KERNELS, "the cut-out draw")

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
            "kernel": self.kernel,
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

    def draw_boxes_t(
        self, refs: list[TorchCutout], motions: np.ndarray, boxes: Sequence[Box], pool: HostPool | None = None
    ) -> list[torch.Tensor]:
        """Every stream's frames on the device, each in its own box, of any size: refs (S,), raw motions (S, n, D) on
        the host, boxes (S,) -> S tensors (n, 4, h, w); pool: where the avatars' plans run (`pieces`). The streams
        draw in goes of at most max_rows frames whatever their avatars (draw_frames_t: its ops do not grow with the
        avatars; a go per avatar was ~25 small kernels a layer, 32,000 launches a chunk of 200 streams:
        docs/bench/cutout_gpu_2026-12-06)."""
        S, n = motions.shape[:2]
        out: list[torch.Tensor | None] = [None] * S
        avatars = sorted({id(r): r for r in refs}.values(), key=id)  # a stable order: the joined texels kept
        which = {id(r): k for k, r in enumerate(avatars)}
        texels = self._texels(avatars)
        order = sorted(range(S), key=lambda i: (boxes[i][2:], i))  # frames of one size next to each other
        per = max(1, self.max_rows // max(1, n))
        for k in range(0, S, per):
            part = order[k : k + per]
            at = np.repeat(np.array([which[id(refs[i])] for i in part], np.int64), n)
            origins = np.repeat(np.array([boxes[i][:2] for i in part], np.int64), n, 0)
            sizes = np.repeat(np.array([boxes[i][2:] for i in part], np.int64), n, 0)
            m = motions[part].reshape(len(part) * n, -1)
            runs = draw_frames_t(avatars, at, m, origins, sizes, self._dev, texels, self.max_samples, self.kernel, pool)
            # a run holds whole streams (a stream's frames share its box), in `part`'s order
            for i, view in zip(part, (run[j : j + n] for run in runs for j in range(0, len(run), n))):
                out[i] = view
        return [o for o in out if o is not None]

    def _texels(self, avatars: list[TorchCutout]) -> tuple[torch.Tensor, np.ndarray]:
        """joined_texels(avatars), kept while a call's avatars are the last call's (the set changes when a stream of
        another avatar starts or an avatar's last one ends: then joined anew, ~30 MB an avatar on the device)."""
        kept = self._joined
        if kept is None or len(kept[0]) != len(avatars) or any(a is not b for a, b in zip(kept[0], avatars)):
            kept = self._joined = (tuple(avatars), joined_texels(avatars))
        return kept[1]

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


__all__ = [
    "TorchCutout",
    "TorchCutoutBackend",
    "draw_frames_t",
    "draw_t",
    "joined_texels",
    "part_maps_many",
    "plan",
    "to_device_layers",
]
