"""The cut-out draw: architecture 3's motion drawn by moving the avatar's layers, in numpy (issue 16).

The learnt decoder (engines/tiny/motion.py) moves ONE canonical frame with a grid mixed from the parts' maps by a
mask network; where parts overlap or a lowered arm uncovers the torso it can only blend coordinates, which tears
outlines, and a 1x frame moved by bilinear sampling blurs every stroke. Measured with the true motion on 12 held-out
frames (docs/training/motion.md, "The cut-out draw"): the copy decoder 23.5 dB avatar PSNR; the cut-out draw 27.5 dB
(28.6 with the exact face instead of the nearest atlas face).

Here the avatar comes as layers (engines/avatar_world/layers.py: the canonical pose drawn step by step at
CUTOUT_SCALE times the frame's size, each limb's outline and fill apart, drawn once per avatar). A frame:
1. each part's rigid map from the motion's keypoints to the canonical ones (`part_maps`, the numpy twin of
   motion.part_maps; a shoe and a hand move with their keypoint alone);
2. each layer sampled bilinearly where its map sends the frame's sub-pixels (CUTOUT_SCALE x CUTOUT_SCALE a pixel),
   only over the box its moved rectangle covers, and laid 'over' the layers before it, in the drawing order;
3. the face layer is the avatar's atlas face nearest the motion's face fields (as the learnt decoder's prior picks);
4. the sub-pixels box-filtered to pixels.
No network: the motion denoiser is the model that moves; this draws its motions from the avatar's own pictures.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avatarcast.engines.avatar_world import get_avatar
from avatarcast.engines.avatar_world.layers import (
    AT,
    BONE,
    CUTOUT_SCALE,
    EYE,
    FACE,
    HAT_STAR,
    NECK,
    PAIR,
    PICK_FIELDS,
    SKIN,
    WAND_TIP,
    Layer,
    bone_caps,
    cutout_layers,
    eye_centres,
    face_atlas,
    pick_group,
    reddened,
)
from avatarcast.engines.avatar_world.motions import Pose
from avatarcast.engines.avatar_world.render import (
    EYES_SHUT,
    HAT_STAR_AT,
    HEART_EYES,
    MOUTH_LINE,
    SLEEPY_LID,
    TEETH_SHOWN,
    brow_lift,
    neck_offset,
    startled,
    tongue_shown,
    wand_reach,
)
from avatarcast.engines.avatar_world.skeleton import EXPR_OFFSET, FACE_FIELDS, KEYPOINTS, N_POINTS, PARTS, to_window
from avatarcast.engines.backends.base import BackendError
from avatarcast.engines.backends.host import available_cores
from avatarcast.engines.backends.onnxruntime_backend import denoise_feeds, load_session
from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.engines.tiny.motion_weights import MotionManifest

_PART = {name: i for i, (name, _) in enumerate(PARTS)}
_KP = {name: i for i, name in enumerate(KEYPOINTS)}


def _similarity(t1, t2, r1, r2, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    u, v = t2 - t1, r2 - r1
    den = (u * u).sum(-1) + eps
    re = (v[..., 0] * u[..., 0] + v[..., 1] * u[..., 1]) / den
    im = (v[..., 1] * u[..., 0] - v[..., 0] * u[..., 1]) / den
    A = np.array([[re, -im], [im, re]])
    return A, r1 - A @ t1


def _affine(t0, t1, t2, r0, r1, r2, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    U = np.stack([t1 - t0, t2 - t0], -1)
    V = np.stack([r1 - r0, r2 - r0], -1)
    det = U[0, 0] * U[1, 1] - U[0, 1] * U[1, 0]
    det = eps if abs(det) < eps else det
    inv = np.array([[U[1, 1], -U[0, 1]], [-U[1, 0], U[0, 0]]]) / det
    A = V @ inv
    return A, r0 - A @ t0


def part_maps(kp_t: np.ndarray, kp_r: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Each part's map from a frame to the reference, ref = A @ target + b, in normalized window coordinates:
    kp_t, kp_r (N_POINTS, 2) -> A (N_PARTS, 2, 2), b (N_PARTS, 2). The numpy twin of motion.part_maps (float64;
    tests/engines/test_cutout.py checks they agree)."""
    s = np.array([w / 2.0, h / 2.0])
    pt, pr = np.asarray(kp_t, np.float64) * s, np.asarray(kp_r, np.float64) * s  # pixels: no aspect in the maps
    As, bs = [], []
    for _, idx in PARTS:
        if len(idx) == 2:
            A, b = _similarity(pt[idx[0]], pt[idx[1]], pr[idx[0]], pr[idx[1]])
        elif len(idx) == 3:
            A, b = _affine(*(pt[i] for i in idx), *(pr[i] for i in idx))
        else:
            A, b = np.eye(2), np.zeros(2)
        As.append(A)
        bs.append(b)
    return _normalized(np.stack(As), np.stack(bs), s)


def _normalized(A: np.ndarray, b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A map in pixels (ref = A @ target + b, A (..., 2, 2)) in normalized window coordinates: S^-1 A S, S^-1 b with
    S = diag(s), s the window's half size."""
    return A * s[..., None, :] / s[..., :, None], b / s


def neck_map(kp_t: np.ndarray, kp_r: np.ndarray, offset: float, wide: bool, w: int, h: int):
    """A NECK layer's map ref = A @ target + b (normalized window coordinates) for keypoints kp_t (..., N_POINTS, 2)
    and the reference's kp_r (N_POINTS, 2): each side's neck point (render.neck_offset: `offset`, window pixels) and
    the torso's axes (its tilt); the layer turns and moves with them, keeps its size, and with `wide` its width
    follows the torso's."""
    s = np.array([w / 2.0, h / 2.0])

    def frame(kp: np.ndarray):
        tc, side, pelvis = (
            kp[..., _KP["torso_centre"], :] * s,
            kp[..., _KP["torso_side"], :] * s,
            kp[..., _KP["pelvis"], :] * s,
        )
        d = side - tc
        ta = np.maximum(np.hypot(d[..., 0], d[..., 1]), 1e-6)
        u = d / ta[..., None]
        v = np.stack([-u[..., 1], u[..., 0]], -1)  # the torso's y axis: its x axis turned a quarter (y down)
        top = tc + v * (((tc - pelvis) * v).sum(-1) + offset)[..., None]
        return top, u, v, ta

    (tt, ut, vt, at), (tr, ur, vr, ar) = frame(kp_t), frame(kp_r)
    kx = ar / at if wide else np.ones_like(at)
    # ref = tr + ur * kx * ((t - tt) . ut) + vr * ((t - tt) . vt)
    A = (ur * kx[..., None])[..., :, None] * ut[..., None, :] + vr[..., :, None] * vt[..., None, :]
    b = tr - (A @ tt[..., None])[..., 0]
    return _normalized(A, b, s)


def _pair_map(t1, t2, r1, r2, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """The similarity taking points t1, t2 to r1, r2 (normalized window coordinates), as part_maps makes a part's."""
    s = np.array([w / 2.0, h / 2.0])
    return _normalized(*_similarity(t1 * s, t2 * s, r1 * s, r2 * s), s)


@dataclass(frozen=True)
class _WindowLayer:
    mover: str
    row: int  # first pixel of `pixels` (without its border) in the window at `scale`
    col: int
    pixels: np.ndarray  # (h + 2, w + 2, 4) premultiplied float32, a transparent border of one pixel


_F = {f: i for i, f in enumerate(FACE_FIELDS)}


def eye_stretch(face: np.ndarray, entry: np.ndarray) -> np.ndarray:
    """(..., 2) = (x, y): how much wider and taller eyes with face fields `face` (..., len(FACE_FIELDS)) are than
    those of the picked atlas poses' fields `entry` (render._eye_shape: an open eye's radii grow with max(0.5,
    eye_scale), its height with min(1.5, eye_open) too; a shut one's width with the scale; a heart with the scale).
    One frame for the numpy draw, a call's frames for the torch draw's plan."""
    es_t = np.maximum(0.5, face[..., _F["eye_scale"]])
    es_e = np.maximum(0.5, entry[..., _F["eye_scale"]])
    op_t, op_e = np.minimum(1.5, face[..., _F["eye_open"]]), np.minimum(1.5, entry[..., _F["eye_open"]])
    k = _eye_kind(entry)
    x = es_t / es_e
    # an open eye's height (a shut entry's openness is 0: only open entries are divided by theirs)
    open_y = es_t * op_t / np.where(k == 0, es_e * op_e, 1.0)
    y = np.where(k == 0, open_y, np.where(k == 1, 1.0, x))
    return np.stack([x, y], -1)


def _eye_kind(fields: np.ndarray) -> np.ndarray:
    """0 open, 1 shut, 2 heart, as render._draw_eye tells them apart."""
    return np.where(
        fields[..., _F["eye_heart"]] > HEART_EYES, 2, np.where(fields[..., _F["eye_open"]] < EYES_SHUT, 1, 0)
    )


def _look(group: str, f: np.ndarray, lidded: bool = False) -> np.ndarray:
    """What render draws differently on either side of a threshold (an int per face): the eyes' kind and small
    pupils, and for a sleepy-eyed avatar (`lidded`) the lid; the mouth as a line, with teeth, with a tongue. A picture
    is never picked across one. f: face fields (..., len(FACE_FIELDS))."""
    if group == "eyes":
        es = f[..., _F["eye_scale"]]
        look = _eye_kind(f) * 2 + startled(es, f[..., _F["mouth_smile"]])
        # an excited face at intensity 0.99 (eye_scale 1.199) has the lid, excited's typical face (1.2) has not: held
        # out, the two frames furthest from the renderer (head 23.4 / 23.8 dB) were such eyes picked across it
        return look * 2 + (es < SLEEPY_LID) if lidded else look
    if group == "mouth":
        o, sm = f[..., _F["mouth_open"]], f[..., _F["mouth_smile"]]
        teeth = f[..., _F["mouth_teeth"]] > TEETH_SHOWN
        return (o < MOUTH_LINE) * 4 + teeth * 2 + (~teeth & tongue_shown(o, sm))
    return np.zeros(f.shape[:-1], np.int64)


@dataclass(frozen=True)
class CutoutAvatar:
    """One avatar's layers in the decoder's window, its face atlas and its canonical keypoints: what the cut-out draw
    needs, computed once per avatar (a few MB)."""

    layers: tuple[_WindowLayer, ...]  # drawing order (the face's steps in the canonical face's pictures)
    kinds: tuple[str, ...]  # per layer: "" (as it is), a face step (picked from the atlas), or "skin" (reddened)
    faces: dict[str, tuple[_WindowLayer | None, ...]]  # face step -> its picture in each atlas pose
    face_fields: np.ndarray  # (E, len(FACE_FIELDS)) the atlas poses' face fields
    face_scale: np.ndarray  # (len(FACE_FIELDS),): how far apart the atlas's faces are, per field
    drawn_for: np.ndarray  # (E,) str: "" or the pick group an atlas pose was drawn for alone (layers.step_poses)
    pupil_px: np.ndarray  # (E, 2, 2): the window-pixel move of the pupils per unit of pupil_x, pupil_y (columns)
    brow_heights: np.ndarray  # (E, 2): each atlas pose's brows (render.brow_lift), screen left and right
    head_axes: np.ndarray  # (2, 2): the canonical head's x and y axes (columns), one head radius long, window pixels
    red: dict[int, _WindowLayer]  # layer index -> that SKIN layer with face_red 1
    kp_ref: np.ndarray  # (N_POINTS, 2) canonical keypoints, normalized window coordinates
    scale: int
    window_hw: tuple[int, int]  # the window the layers are placed in (TinyConfig's pad_height, window_width)
    wand: tuple[float, float]  # render.wand_reach in window pixels: where WAND_TIP is from the right forearm
    eyes: np.ndarray  # (2, 2) the canonical eye centres (screen left, right), normalized window coordinates
    caps: dict[str, float]  # layers.bone_caps in window pixels: a limb segment's round ends
    neck: float  # render.neck_offset in window pixels: where the neck's accessories hang from the torso's keypoints
    lidded: bool  # sleepy eyes: their lid comes and goes with eye_scale (render.SLEEPY_LID), a threshold to pick by
    # per pick group, what `picks` reads of the atlas (kept once computed): the poses a group may pick and their looks
    _pickable: dict = field(default_factory=dict, repr=False, compare=False)

    def points(self, kp: np.ndarray) -> dict[str, np.ndarray]:
        """The named points a layer may move with (normalized window coordinates): the keypoints, WAND_TIP and
        HAT_STAR, for keypoints kp (..., N_POINTS, 2) (one frame's, or a call's frames for the torch draw's plan)."""
        H, W = self.window_hw
        half = np.array([W / 2.0, H / 2.0])
        hand, elbow = kp[..., _KP["hand_r"], :], kp[..., _KP["elbow_r"], :]
        d = (hand - elbow) * half
        norm = np.hypot(d[..., 0], d[..., 1])
        d = d / np.where(norm == 0, 1.0, norm)[..., None]
        along, up = self.wand
        # the head's axes, one radius long (window pixels): head_up is a radius along the head's (0, -1)
        centre = kp[..., _KP["head_centre"], :]
        y_axis = (centre - kp[..., _KP["head_up"], :]) * half
        x_axis = np.stack([y_axis[..., 1], -y_axis[..., 0]], -1)  # the head's (1, 0): its (0, 1) turned back 90 deg
        hx, hy = HAT_STAR_AT
        return {
            WAND_TIP: hand + (d * along + np.array([0.0, -up])) / half,
            HAT_STAR: centre + (x_axis * hx + y_axis * hy) / half,
        }

    def pick(self, step: str, motion: np.ndarray) -> int:
        """The atlas pose whose picture of face step `step` is nearest the motion's face fields."""
        return int(
            self.picks(step, np.asarray(motion, np.float64)[None, EXPR_OFFSET : EXPR_OFFSET + len(FACE_FIELDS)])[0]
        )

    def picks(self, step: str, faces: np.ndarray) -> np.ndarray:
        """`pick` for many frames' face fields (N, len(FACE_FIELDS)): (N,) atlas poses (the torch draw plans a call's
        frames at once)."""
        group = pick_group(step)
        idx = [_F[f] for f in PICK_FIELDS[group]]
        got = self._pickable.get(group)
        if got is None:  # a pose drawn for another group lacks the step: never a candidate
            cand = np.flatnonzero(np.isin(self.drawn_for, ("", group)))
            fields = self.face_fields[cand]
            got = self._pickable[group] = (cand, fields, _look(group, fields, self.lidded))
        cand, fields, looks = got
        d2 = (((faces[:, None, idx] - fields[None][:, :, idx]) / self.face_scale[idx]) ** 2).sum(2)
        # never an open eye for a shut one, nor a picture from across any other threshold of the renderer's
        d2 = d2 + 1e6 * (looks[None, :] != _look(group, faces, self.lidded)[:, None])
        return cand[np.argmin(d2, 1)]


def upright(step: str, entry_fields: np.ndarray) -> np.ndarray:
    """Whether a picked eye layer moves upright: render draws an open eye, a heart eye and the pupils as upright
    ellipses and polygons about a centre that turns with the head (a shut eye's arc turns). entry_fields: the picked
    atlas poses' fields (..., len(FACE_FIELDS))."""
    return (step in ("eyes", "pupils")) & (_eye_kind(entry_fields) != 1)


def unturned(A: np.ndarray, b: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A part's map ref = A @ target + b (..., 2, 2), (..., 2) without its turn about the point `centre` of the
    reference (normalized): the same point lands where it did, and the picture moves and scales there, upright. A
    map with no inverse (a motion collapsed to a point) is returned as it is."""
    det = A[..., 0, 0] * A[..., 1, 1] - A[..., 0, 1] * A[..., 1, 0]
    ok = np.abs(det) > 1e-12
    safe = np.where(ok, det, 1.0)
    inv = np.stack([np.stack([A[..., 1, 1], -A[..., 0, 1]], -1), np.stack([-A[..., 1, 0], A[..., 0, 0]], -1)], -2)
    at = ((inv / safe[..., None, None]) @ (centre - b)[..., None])[..., 0]  # where the centre lands in the frame
    A2 = np.sqrt(np.abs(det))[..., None, None] * np.eye(2)
    b2 = centre - (A2 @ at[..., None])[..., 0]
    return np.where(ok[..., None, None], A2, A), np.where(ok[..., None], b2, b)


def _in_window(layer: Layer, window: TinyConfig) -> _WindowLayer:
    s = layer.scale
    px = np.pad(layer.pixels, ((1, 1), (1, 1), (0, 0)))
    return _WindowLayer(layer.mover, layer.row + window.pad_top * s, layer.col - window.window_x0 * s, px)


def prepare(avatar, ref_motion: np.ndarray, window: TinyConfig, scale: int = CUTOUT_SCALE) -> CutoutAvatar:
    """The avatar cut into layers (the renderer draws them once), placed in the window. ref_motion: the canonical
    pose's raw motion vector (its keypoints are where the layers are)."""
    raw = cutout_layers(avatar, scale)
    atlas = face_atlas(avatar, scale)
    red_raw = {x.name: x for x in reddened(avatar, scale)}
    kinds = tuple(x.name[len(FACE) :] if x.name.startswith(FACE) else "skin" if x.name in SKIN else "" for x in raw)
    red = {}
    for i, x in enumerate(raw):
        got = red_raw.get(x.name)
        if got is not None and got.pixels.shape == x.pixels.shape and (got.row, got.col) == (x.row, x.col):
            red[i] = _in_window(got, window)
    kp = np.asarray(ref_motion[: 2 * N_POINTS], np.float64).reshape(N_POINTS, 2)
    # the pupils' move: head radii along the canonical head's axes -> window pixels
    half = np.array([window.window_width / 2.0, window.pad_height / 2.0])
    up = (kp[_KP["head_up"]] - kp[_KP["head_centre"]]) * half  # one head radius along the head's (0, -1)
    right = np.array([-up[1], up[0]])  # the head's (1, 0): up turned a quarter clockwise (y down)
    axes = np.stack([right, -up], 1)  # columns: the head's x and y axes, one head radius long, window pixels
    pupil_px = np.einsum("ij,ej->eij", axes, atlas.pupil_reach.astype(np.float64))
    return CutoutAvatar(
        tuple(_in_window(x, window) for x in raw),
        kinds,
        {k: tuple(None if x is None else _in_window(x, window) for x in v) for k, v in atlas.layers.items()},
        atlas.fields,
        # the spread of the poses drawn whole: the poses added for one group do not change how the others pick
        np.maximum(atlas.fields[np.array(atlas.drawn_for) == ""].std(0, ddof=1), 0.05).astype(np.float32),
        np.array(atlas.drawn_for),
        pupil_px,
        atlas.brow_heights.astype(np.float64),
        axes,
        red,
        kp,
        scale,
        (window.pad_height, window.window_width),
        wand_reach(get_avatar(avatar)),
        to_window(eye_centres(avatar, 1), window.window_x0, window.window_width, window.pad_top, window.pad_height),
        bone_caps(avatar),
        neck_offset(avatar),
        get_avatar(avatar).eye_style == "sleepy",
    )


def _sample(px: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear samples of a bordered layer (h + 2, w + 2, 4) at pixel coordinates (u, v) of the unbordered picture
    (pixel i spans [i, i + 1)); transparent outside, as grid_sample's zero padding: a point outside is clamped into
    the transparent border, where all four of its neighbours are."""
    hp, wp = px.shape[:2]
    x = np.clip(u + 0.5, 0.0, wp - 1.001)  # index space of the bordered picture (u - 0.5, one border pixel)
    y = np.clip(v + 0.5, 0.0, hp - 1.001)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    i = y0.astype(np.intp) * wp + x0.astype(np.intp)
    flat = px.reshape(-1, 4)
    fx1, fy1 = 1.0 - fx, 1.0 - fy
    out = np.take(flat, i, 0) * (fx1 * fy1)[..., None]
    out += np.take(flat, i + 1, 0) * (fx * fy1)[..., None]
    out += np.take(flat, i + wp, 0) * (fx1 * fy)[..., None]
    out += np.take(flat, i + wp + 1, 0) * (fx * fy)[..., None]
    return out


def draw(avatar: CutoutAvatar, motions: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Raw motions (n, D) -> the window's `box` (row, column, height, width), premultiplied float32 (n, 4, h, w) in
    [-1, 1] (the learnt decoder's output convention: engines/tiny/motion_engine.py lays the effects over it)."""
    (H, W), s = avatar.window_hw, avatar.scale
    y0, x0, bh, bw = box
    out = np.empty((len(motions), 4, bh, bw), np.float32)
    # the sub-pixel centres of the box, normalized window coordinates
    ys = ((np.arange(bh * s) + y0 * s + 0.5) / (H * s)) * 2.0 - 1.0
    xs = ((np.arange(bw * s) + x0 * s + 0.5) / (W * s)) * 2.0 - 1.0
    extra_r = avatar.points(avatar.kp_ref)  # the canonical pose's: the same for every frame

    def point(name: str, kp_: np.ndarray, extra: dict) -> np.ndarray:
        return extra[name] if name in extra else kp_[_KP[name]]

    for n, m in enumerate(np.asarray(motions, np.float64)):
        if not np.isfinite(m).all():
            # a motion the sampler should never give (it would make every index below garbage): a transparent frame,
            # as the decoders' grid_sample draws nothing where its coordinates are NaN
            out[n] = -1.0
            continue
        kp = m[: 2 * N_POINTS].reshape(N_POINTS, 2)
        A, b = part_maps(kp, avatar.kp_ref, W, H)
        extra_t = avatar.points(kp)
        face_pose = Pose(**dict(zip(FACE_FIELDS, m[EXPR_OFFSET : EXPR_OFFSET + len(FACE_FIELDS)].tolist())))
        canvas = np.zeros((bh * s, bw * s, 4), np.float32)
        eyes = avatar.pick("eyes", m)
        red = float(np.clip(m[EXPR_OFFSET + _F["face_red"]], 0.0, 1.0))
        for i, layer in enumerate(avatar.layers):
            kind = avatar.kinds[i]
            shift = np.zeros(2)  # a move in the reference (window pixels at scale 1) before the part's map
            eye_scale, centre = None, None  # an eye's stretch (x, y) about its centre, in the reference
            keep_upright = False
            if kind == "skin":
                if red > 0.0 and i in avatar.red:
                    red_px = avatar.red[i].pixels
                    layer = _WindowLayer(layer.mover, layer.row, layer.col, layer.pixels * (1.0 - red) + red_px * red)
            elif kind:
                step, _, side = kind.partition(EYE)
                pick = eyes if pick_group(step) == "eyes" else avatar.pick(step, m)
                got = avatar.faces[kind][pick]
                if got is None:
                    continue
                layer = got
                if step == "pupils":
                    face = m[EXPR_OFFSET + _F["pupil_x"] : EXPR_OFFSET + _F["pupil_y"] + 1]
                    shift = avatar.pupil_px[pick] @ (face - avatar.face_fields[pick, [_F["pupil_x"], _F["pupil_y"]]])
                if step == "brows":  # raised or lowered on its own (render.brow_lift), along the head's y axis
                    k = 0 if side == "-1" else 1
                    shift = avatar.head_axes[:, 1] * (brow_lift(face_pose, int(side)) - avatar.brow_heights[pick, k])
                elif side:
                    eye_scale = eye_stretch(m[EXPR_OFFSET : EXPR_OFFSET + len(FACE_FIELDS)], avatar.face_fields[pick])
                    centre = avatar.eyes[0 if side == "-1" else 1]
                    keep_upright = bool(upright(step, avatar.face_fields[pick]))
            if layer.mover.startswith(BONE):
                p, q, limb = layer.mover[len(BONE) :].split(",")
                _lay_bone(
                    canvas, layer, (kp[_KP[p]], kp[_KP[q]]), (avatar.kp_ref[_KP[p]], avatar.kp_ref[_KP[q]]),
                    avatar.caps[limb], xs, ys, H * s, W * s, s,
                )  # fmt: skip
                continue
            if layer.mover.startswith(AT):
                name = layer.mover[len(AT) :]
                Ai, bi = np.eye(2), point(name, avatar.kp_ref, extra_r) - point(name, kp, extra_t)
            elif layer.mover.startswith(NECK):
                Ai, bi = neck_map(kp, avatar.kp_ref, avatar.neck, layer.mover == NECK + "wide", W, H)
            elif layer.mover.startswith(PAIR):
                p, q = layer.mover[len(PAIR) :].split(",")
                Ai, bi = _pair_map(
                    point(p, kp, extra_t), point(q, kp, extra_t), point(p, avatar.kp_ref, extra_r),
                    point(q, avatar.kp_ref, extra_r), W, H,
                )  # fmt: skip
            else:
                j = _PART[layer.mover]
                Ai, bi = A[j], b[j]
            if keep_upright and centre is not None:  # the head's map at the eye's centre, without its turn
                Ai, bi = unturned(Ai, bi, centre)
            if shift.any():
                bi = bi - shift / np.array([W / 2.0, H / 2.0])
            if eye_scale is not None and centre is not None:  # read the picture at c + (ref - c) / stretch
                inv = 1.0 / eye_scale
                Ai, bi = Ai * inv[:, None], centre + (bi - centre) * inv
            _lay(canvas, layer, Ai, bi, xs, ys, H * s, W * s)
        # the sub-pixels' box filter, then [-1, 1]
        px = canvas[0::s, 0::s].copy()
        for i in range(s):
            for j in range(s):
                if i or j:
                    px += canvas[i::s, j::s]
        out[n] = px.transpose(2, 0, 1) * (2.0 / (s * s)) - 1.0
    return out


def _lay_bone(canvas, layer: _WindowLayer, target, ref, cap: float, xs, ys, Hs: int, Ws: int, s: int) -> None:
    """A limb segment's layer laid from its reference bone ref = (a, b) to the frame's target = (a, b) (normalized
    window coordinates): along the bone, the first and last `cap` pixels move with their ends and the rest stretches
    between; across it, pixels keep their distance from the bone (layers.BONE)."""
    half = np.array([Ws / 2.0, Hs / 2.0])  # normalized -> pixels at the layers' scale
    at, bt = (np.asarray(target[0]) + 1.0) * half, (np.asarray(target[1]) + 1.0) * half
    ar, br = (np.asarray(ref[0]) + 1.0) * half, (np.asarray(ref[1]) + 1.0) * half
    cap = cap * s
    lt, lr = float(np.hypot(*(bt - at))), float(np.hypot(*(br - ar)))
    if lt < 1e-6 or lr < 1e-6:
        return
    dt, dr = (bt - at) / lt, (br - ar) / lr
    nt, nr = np.array([-dt[1], dt[0]]), np.array([-dr[1], dr[0]])
    # the frame's pixels the segment can reach: its ends and a cap (and a pixel) around them
    reach = cap + 2.0 * s
    lo, hi = np.minimum(at, bt) - reach, np.maximum(at, bt) + reach
    px_x, px_y = (xs + 1.0) * half[0], (ys + 1.0) * half[1]
    c0, c1 = np.searchsorted(px_x, lo[0]), np.searchsorted(px_x, hi[0])
    r0, r1 = np.searchsorted(px_y, lo[1]), np.searchsorted(px_y, hi[1])
    if c1 <= c0 or r1 <= r0:
        return
    gx, gy = px_x[c0:c1][None, :] - at[0], px_y[r0:r1][:, None] - at[1]
    u = gx * dt[0] + gy * dt[1]
    v = gx * nt[0] + gy * nt[1]
    if lt > 2.0 * cap and lr > 2.0 * cap:
        k = (lr - 2.0 * cap) / (lt - 2.0 * cap)
        ur = np.where(u < cap, u, np.where(u > lt - cap, u - lt + lr, cap + (u - cap) * k))
    else:
        ur = u * (lr / lt)
    qx = ar[0] + ur * dr[0] + v * nr[0]  # the reference's pixels (at the layers' scale)
    qy = ar[1] + ur * dr[1] + v * nr[1]
    _over(canvas[r0:r1, c0:c1], layer, qx - layer.col, qy - layer.row)


def _lay(canvas, layer: _WindowLayer, A, b, xs, ys, Hs: int, Ws: int) -> None:
    """One layer moved by ref = A @ target + b, laid over the canvas (in place) where its rectangle lands."""
    h, w = layer.pixels.shape[0] - 2, layer.pixels.shape[1] - 2
    # the layer's rectangle (one pixel grown: bilinear reaches it) in normalized reference coordinates
    rx = (np.array([layer.col - 1, layer.col + w + 1]) / Ws) * 2.0 - 1.0
    ry = (np.array([layer.row - 1, layer.row + h + 1]) / Hs) * 2.0 - 1.0
    corners = np.array([[rx[i], ry[j]] for i in (0, 1) for j in (0, 1)])
    det = A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]
    if abs(det) < 1e-9:
        return
    inv = np.array([[A[1, 1], -A[0, 1]], [-A[1, 0], A[0, 0]]]) / det
    t = (corners - b) @ inv.T  # where they land in the frame
    c0, c1 = np.searchsorted(xs, t[:, 0].min()), np.searchsorted(xs, t[:, 0].max())
    r0, r1 = np.searchsorted(ys, t[:, 1].min()), np.searchsorted(ys, t[:, 1].max())
    if c1 <= c0 or r1 <= r0:
        return
    gx, gy = xs[c0:c1][None, :], ys[r0:r1][:, None]
    qx = A[0, 0] * gx + A[0, 1] * gy + b[0]  # where each sub-pixel reads the reference, normalized
    qy = A[1, 0] * gx + A[1, 1] * gy + b[1]
    _over(canvas[r0:r1, c0:c1], layer, (qx + 1.0) * 0.5 * Ws - layer.col, (qy + 1.0) * 0.5 * Hs - layer.row)


def _over(under: np.ndarray, layer: _WindowLayer, u: np.ndarray, v: np.ndarray) -> None:
    """The layer sampled at its pixel coordinates (u, v), one a sub-pixel of `under` (a view of the canvas), laid
    'over' it in place (premultiplied)."""
    got = _sample(layer.pixels, u, v)
    under *= 1.0 - got[..., 3:4]
    under += got


class CutoutMotionBackend:
    """A MotionBackend (engines/tiny/motion_backends.py) that draws with the cut-out draw and denoises with an exported
    folder's denoiser graph on onnxruntime (its decoder graphs are not loaded). numpy on the host, no torch."""

    name = "onnxruntime"
    atlas = 0
    cheaper_draw = False
    compose_device: str | None = None
    batch_streams = False
    draws_layers = True
    prepared_on_host = True  # a CutoutAvatar is numpy arrays: realtime/prep.py's process prepares it

    def __init__(self, manifest: MotionManifest, threads: int | None = None, verify: bool = True):
        self.manifest = manifest
        self.threads = int(threads) if threads else available_cores()
        self._session = load_session(manifest.graph("denoiser", verify=verify), self.threads, ["CPUExecutionProvider"])
        self._lock = threading.Lock()

    def prepare(self, ref_win: np.ndarray, atlas: np.ndarray | None) -> Any:
        raise BackendError("the cut-out draw prepares an avatar's layers (cutout.prepare), not a reference frame")

    def layers(self, avatar: CutoutAvatar) -> CutoutAvatar:
        return avatar  # numpy draws from the arrays themselves

    def draw(
        self,
        ref: CutoutAvatar,
        motions: np.ndarray,
        ref_motion: np.ndarray,
        box: tuple[int, int, int, int],
        cheaper: bool = False,
    ) -> np.ndarray:
        if cheaper:
            raise BackendError("the cut-out draw has no cheaper draw")
        return draw(ref, motions, box)

    def denoise(self, x, t, d, ctx, ref, emotion, intensity) -> np.ndarray:
        with self._lock:
            return self._session.run(None, denoise_feeds(x, t, d, ctx, ref, emotion, intensity))[0]


__all__ = ["CutoutAvatar", "CutoutMotionBackend", "draw", "part_maps", "prepare"]
