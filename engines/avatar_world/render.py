"""Drawing of avatars: PIL ImageDraw on a 4x supersampled canvas, box-filtered down.

All geometry is computed in output-pixel units (floats) and scaled by ``SS``
when drawn.  The canvas is premultiplied RGBa (every shape is opaque, so the
drawing is the same as in RGBA); ``Image.reduce`` box-filters it and the
conversion to RGBA gives straight alpha.  Only the band of columns that can
hold the character and its effects is drawn and reduced; it is then pasted
into the full transparent frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from avatarcast.vocabulary import FPS, FRAME_HEIGHT, FRAME_WIDTH

from .avatars import AvatarParams, get_avatar
from .motions import MotionVariation, Pose, blend_poses, emotion_index, pose_at, sample_variation
from .particles import EFFECTS, STREAM_WIDTH, EffectGeometry, Particle, particles

# Supersampling factor. PIL rounds every coordinate down to the canvas's grid and samples each canvas pixel at one
# point, so an edge lands up to 1/(2 SS) of a pixel from where its shape puts it, differently for each shape and pose.
# Against a 16x render of the same poses (66 held-out frames, tools/eval/shapes.py): 2x frames 27.8 dB, 4x 34.9, 8x
# 42.2. The frames are the reference every model is scored against and the cut-out draw's layers, so they draw at
# 4x since 2026-12-07 (2 before): 5.5 ms a frame against 3.2 on one core.
SS = 4
GROUND_Y = 330.0  # ground line at the reference height 360
REF_H = 360.0
TOP_MARGIN = 5.0  # the character never goes above this (output px)
_TWO_PI = 2.0 * math.pi

# how far the head + headwear reach from the head centre (head radii; a bound under any head tilt)
_HEADWEAR_TOP = {
    "none": 1.06,
    "cat_ears": 1.56,
    "bunny_ears": 1.95,
    "hat": 1.92,
    "cap": 1.1,
    "bow": 1.46,
    "antenna": 1.7,
    "horns": 1.6,
    "hair_spiky": 1.46,
    "hair_bob": 1.22,
}
_SHAPE_N = {"round": 2.0, "tall": 3.0, "pear": 2.3, "square": 4.5, "bean": 2.3}
_SHAPE_TAPER = {"round": 0.05, "tall": 0.0, "pear": 0.3, "square": 0.0, "bean": 0.06}
_SHAPE_WH = {
    "round": (1.12, 0.95),
    "tall": (0.86, 1.12),
    "pear": (1.02, 1.0),
    "square": (1.0, 1.0),
    "bean": (1.0, 1.02),
}

_N_SHAPE = 40
_ANG = np.linspace(0.0, _TWO_PI, _N_SHAPE, endpoint=False)
_COS = np.cos(_ANG)
_SIN = np.sin(_ANG)
_N_HEAD = 36
_HANG = np.linspace(0.0, _TWO_PI, _N_HEAD, endpoint=False)
_HCOS = np.cos(_HANG)
_HSIN = np.sin(_HANG)


def _unit_heart(n: int = 26) -> np.ndarray:
    t = np.linspace(0, _TWO_PI, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y + 2.5], 1) / 16.0
    return pts


def _unit_star(points: int, inner: float) -> np.ndarray:
    k = np.arange(points * 2)
    r = np.where(k % 2 == 0, 1.0, inner)
    a = -math.pi / 2 + k * math.pi / points
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


_HEART = _unit_heart()
_STAR5 = _unit_star(5, 0.45)
_SPARK4 = _unit_star(4, 0.3)
_DROP = np.array([(0.0, -1.0)] + [(0.62 * math.sin(a), 0.35 + 0.62 * -math.cos(a)) for a in np.linspace(-2.2, 2.2, 11)])


def _mix(a, b, t: float):
    t = min(1.0, max(0.0, t))
    return (int(a[0] + (b[0] - a[0]) * t), int(a[1] + (b[1] - a[1]) * t), int(a[2] + (b[2] - a[2]) * t))


def _shade(c, f: float):
    return (int(c[0] * f), int(c[1] * f), int(c[2] * f))


def _wrap(a: float) -> float:
    return (a + 180.0) % 360.0 - 180.0


def _dir(alpha_deg: float) -> tuple[float, float]:
    a = math.radians(alpha_deg)
    return (-math.sin(a), math.cos(a))


def _offset_polygon(p: list, d: float, miter_limit: float = 2.2) -> list:
    """Grow a simple polygon outward by ``d`` (vertex normals with a mitre limit)."""
    n = len(p)
    if n < 3:
        return p
    area = 0.0
    for i in range(n):
        x0, y0 = p[i - 1]
        x1, y1 = p[i]
        area += x0 * y1 - x1 * y0
    sgn = 1.0 if area > 0 else -1.0
    # outward unit normal of each edge i -> i+1
    normals = []
    for i in range(n):
        x0, y0 = p[i]
        x1, y1 = p[(i + 1) % n]
        ex, ey = x1 - x0, y1 - y0
        ln = math.hypot(ex, ey) or 1.0
        normals.append((sgn * ey / ln, -sgn * ex / ln))
    out = []
    for i in range(n):
        ax, ay = normals[i - 1]
        bx, by = normals[i]
        mx, my = ax + bx, ay + by
        ml = math.hypot(mx, my)
        if ml < 1e-6:
            mx, my, ml = bx, by, 1.0
        mx, my = mx / ml, my / ml
        cos_half = max(1.0 / miter_limit, mx * bx + my * by)
        k = d / cos_half
        out.append((p[i][0] + mx * k, p[i][1] + my * k))
    return out


# ---------------------------------------------------------------------------
def line_px(width: float, scale: float = SS) -> int:
    """A line's width in the supersampled canvas's pixels (PIL draws whole pixels): how wide _Painter.line draws a
    line `width` output pixels wide."""
    return max(1, int(round(width * scale)))


class _Painter:
    """Draws in output-pixel coordinates onto a supersampled canvas."""

    def __init__(self, img: Image.Image, scale: float, ox: float, oy: float, outline):
        self.img = img
        self.d = ImageDraw.Draw(img)
        self.s = scale
        self.ox = ox
        self.oy = oy
        self.ol = outline

    def pts(self, xy) -> list:
        s, ox, oy = self.s, self.ox, self.oy
        return [((x - ox) * s, (y - oy) * s) for x, y in xy]

    def poly(self, xy, fill) -> None:
        self.d.polygon(self.pts(xy), fill=fill)

    def poly_ol(self, xy, fill, w: float) -> None:
        """Polygon with an outline of width ``w`` (output px) drawn outside it (mitred offset polygon)."""
        p = self.pts(xy)
        self.d.polygon(_offset_polygon(p, w * self.s), fill=self.ol)
        self.d.polygon(p, fill=fill)

    def ellipse(self, cx, cy, rx, ry, fill) -> None:
        s = self.s
        x0, y0 = (cx - rx - self.ox) * s, (cy - ry - self.oy) * s
        x1, y1 = (cx + rx - self.ox) * s, (cy + ry - self.oy) * s
        if x1 - x0 < 1 or y1 - y0 < 1:
            return
        self.d.ellipse((x0, y0, x1, y1), fill=fill)

    def ellipse_ol(self, cx, cy, rx, ry, fill, w: float) -> None:
        self.ellipse(cx, cy, rx + w, ry + w, self.ol)
        self.ellipse(cx, cy, rx, ry, fill)

    def line(self, xy, fill, width: float, caps: bool = True) -> None:
        p = self.pts(xy)
        wpx = line_px(width, self.s)
        if len(p) > 1:
            self.d.line(p, fill=fill, width=wpx, joint="curve" if len(p) > 2 else None)
        if caps:
            r = wpx / 2.0
            for x, y in (p[0], p[-1]):
                self.d.ellipse((x - r, y - r, x + r, y + r), fill=fill)

    def stroke_ol(self, xy, fill, width: float, w: float) -> None:
        self.line(xy, self.ol, width + 2 * w)
        self.line(xy, fill, width)


# ---------------------------------------------------------------------------
@dataclass
class _Rig:
    g: float
    ol: float
    P: tuple  # pelvis (hip centre)
    tilt: float
    ta: float  # torso half width (after squash)
    tb: float  # torso half height
    tc: tuple  # torso centre
    head_c: tuple
    head_r: float
    head_ang: float
    shoulders: tuple  # (L, R) points
    elbows: tuple
    hands: tuple
    hips: tuple
    knees: tuple
    ankles: tuple
    arm_w: float
    leg_w: float
    hand_r: float
    foot_rx: float
    foot_ry: float


def _rot(x: float, y: float, c: float, s: float) -> tuple[float, float]:
    return (x * c - y * s, x * s + y * c)


def _half_width(shape: str, a: float, b: float, y: float) -> float:
    n = _SHAPE_N[shape]
    u = min(1.0, abs(y) / b)
    return a * (1.0 - u**n) ** (1.0 / n) * (1.0 + _SHAPE_TAPER[shape] * (y / b))


def _ik(sx, sy, tx, ty, l1, l2, outward: float, max_stretch: float = 1.4):
    """Two-bone IK; the elbow goes outward/down.  Out-of-reach targets stretch the
    limb (rubber-hose style) up to ``max_stretch``; returns (angle1, angle2, stretch)."""
    dx, dy = tx - sx, ty - sy
    d = math.hypot(dx, dy)
    stretch = min(max_stretch, max(1.0, d / (0.97 * (l1 + l2))))
    l1, l2 = l1 * stretch, l2 * stretch
    dmin, dmax = abs(l1 - l2) + 1e-3, l1 + l2 - 1e-3
    if d < 1e-6:
        dx, dy, d = 0.0, 1.0, 1.0
    dc = min(dmax, max(dmin, d))
    ux, uy = dx / d, dy / d
    a = (l1 * l1 - l2 * l2 + dc * dc) / (2 * dc)
    h = math.sqrt(max(0.0, l1 * l1 - a * a))
    bx, by = sx + ux * a, sy + uy * a
    best: tuple[float, float, float] | None = None
    for sgn in (1.0, -1.0):
        ex, ey = bx - uy * h * sgn, by + ux * h * sgn
        score = outward * (ex - sx) + 0.6 * (ey - sy)
        if best is None or score > best[0]:
            best = (score, ex, ey)
    assert best is not None  # the loop ran
    _, ex, ey = best
    hx, hy = sx + ux * dc, sy + uy * dc
    a1 = math.degrees(math.atan2(-(ex - sx), ey - sy))
    a2 = math.degrees(math.atan2(-(hx - ex), hy - ey))
    return a1, a2, stretch


def _nominal_height(av: AvatarParams) -> float:
    """Height at rest (reference scale), counting most of the headwear."""
    bw, bh = _SHAPE_WH[av.body_shape]
    r = 50.0 * av.head_size
    legs = 59.0 * av.limb_length
    torso = 86.0 * av.body_height * bh
    return 13.0 + legs - 12.0 + torso + 0.72 * r + r + 0.6 * r * (_HEADWEAR_TOP[av.headwear] - 1.06)


TORSO_CENTRE_RISE = 12.0  # the torso's centre is its half height less this (times the avatar's scale) above the hips


def _rig(av: AvatarParams, q: Pose, width: int, height: int) -> _Rig:
    k = height / REF_H
    h0 = _nominal_height(av)
    g = k * min(1.35, 240.0 / h0) if h0 < 240.0 else k * min(1.0, 258.0 / h0)
    shape = av.body_shape
    bw, bh = _SHAPE_WH[shape]
    ll = av.limb_length
    thigh, shin = 30.0 * ll * g, 29.0 * ll * g
    upper, fore = 31.0 * ll * g, 29.0 * ll * g
    leg_w = 17.0 * av.limb_width * g
    arm_w = 14.0 * av.limb_width * g
    hand_r = 10.0 * (0.75 + 0.25 * av.limb_width) * g
    foot_rx, foot_ry = 14.0 * g * (0.8 + 0.2 * av.limb_width), 8.5 * g
    sq = max(0.6, min(1.4, q.squash))
    ta = 40.0 * av.body_width * bw * g * (1.0 + (1.0 - sq) * 0.6)
    tb = 43.0 * av.body_height * bh * g * sq
    r = 50.0 * av.head_size * g
    tilt = q.body_tilt
    tr = math.radians(tilt)
    c, s = math.cos(tr), math.sin(tr)
    hip_sep = min(24.0 * g, max(11.0 * g, 0.45 * ta))

    # --- relative skeleton, pelvis at (0, 0) -----------------------------------
    hips = []
    knees = []
    ankles = []
    for side, h_ang, k_ang in ((-1, q.leg_l_hip, q.leg_l_knee), (1, q.leg_r_hip, q.leg_r_knee)):
        hx, hy = _rot(side * hip_sep, 0.0, c, s)
        a1 = h_ang if side < 0 else -h_ang
        a2 = a1 + (k_ang if side < 0 else -k_ang)
        d1, d2 = _dir(a1), _dir(a2)
        kx, ky = hx + d1[0] * thigh, hy + d1[1] * thigh
        ax, ay = kx + d2[0] * shin, ky + d2[1] * shin
        hips.append((hx, hy))
        knees.append((kx, ky))
        ankles.append((ax, ay))
    foot_drop = 5.0 * g + foot_ry
    low = max(ankles[0][1], ankles[1][1]) + foot_drop
    tcx, tcy = _rot(0.0, TORSO_CENTRE_RISE * g - tb, c, s)
    neck = _rot(0.0, TORSO_CENTRE_RISE * g - 2 * tb, c, s)
    hd = _rot(q.head_dx * g, -0.72 * r + q.head_dy * g, c, s)
    hcx, hcy = neck[0] + hd[0], neck[1] + hd[1]
    sh_y = -tb * 0.6
    shoulders = []
    for side in (-1, 1):
        sx = side * max(0.55 * ta, 0.97 * _half_width(shape, ta, tb, sh_y) - 3.0 * g)
        shoulders.append(_rot(sx, TORSO_CENTRE_RISE * g - tb + sh_y, c, s))
    head_ang = tilt + q.head_tilt
    hr = math.radians(head_ang)
    hc_, hs_ = math.cos(hr), math.sin(hr)
    elbows = []
    hands = []
    for i, side in enumerate((-1, 1)):
        if side < 0:
            sh, el, w, tx, ty, th = q.arm_l_sh, q.arm_l_el, q.ik_l_w, q.ik_l_x, q.ik_l_y, q.ik_l_head
            a1 = tilt + sh
            a2 = a1 + el
        else:
            sh, el, w, tx, ty, th = q.arm_r_sh, q.arm_r_el, q.ik_r_w, q.ik_r_x, q.ik_r_y, q.ik_r_head
            a1 = tilt - sh
            a2 = a1 - el
        sx, sy = shoulders[i]
        if w > 1e-4:
            th = min(1.0, max(0.0, th))
            px_, py_ = _rot(tx * ta, ty * tb, c, s)
            px_, py_ = tcx + px_, tcy + py_
            hx_, hy_ = _rot(tx * r, ty * r, hc_, hs_)
            hx_, hy_ = hcx + hx_, hcy + hy_
            gx, gy = px_ * (1 - th) + hx_ * th, py_ * (1 - th) + hy_ * th
            b1, b2, st = _ik(sx, sy, gx, gy, upper, fore, float(side))
            w = min(1.0, w)
            a1 = a1 + w * _wrap(b1 - a1)
            a2 = a2 + w * _wrap(b2 - a2)
            f = 1.0 + w * (st - 1.0)
        else:
            f = 1.0
        d1, d2 = _dir(a1), _dir(a2)
        ex, ey = sx + d1[0] * upper * f, sy + d1[1] * upper * f
        elbows.append((ex, ey))
        hands.append((ex + d2[0] * fore * f, ey + d2[1] * fore * f))

    # --- place the pelvis: feet on the ground (+ lift), keep inside the frame ----
    px = width / 2.0 + q.body_dx * g
    py = GROUND_Y * k - low - max(0.0, q.lift) * g
    top = min(hcy - r * _HEADWEAR_TOP[av.headwear], min(h[1] for h in hands) - hand_r) - 4.0 * g
    if av.accessory == "star_wand":
        top = min(top, _wand_tip(elbows[1], hands[1], g)[1] - 17.5 * g)
    if py + top < TOP_MARGIN * k:
        py = TOP_MARGIN * k - top

    def T(p):
        return (p[0] + px, p[1] + py)

    return _Rig(
        g=g,
        ol=3.0 * g,
        P=(px, py),
        tilt=tilt,
        ta=ta,
        tb=tb,
        tc=T((tcx, tcy)),
        head_c=T((hcx, hcy)),
        head_r=r,
        head_ang=head_ang,
        shoulders=tuple(T(p) for p in shoulders),
        elbows=tuple(T(p) for p in elbows),
        hands=tuple(T(p) for p in hands),
        hips=tuple(T(p) for p in hips),
        knees=tuple(T(p) for p in knees),
        ankles=tuple(T(p) for p in ankles),
        arm_w=arm_w,
        leg_w=leg_w,
        hand_r=hand_r,
        foot_rx=foot_rx,
        foot_ry=foot_ry,
    )


# ---------------------------------------------------------------------------
class _Head:
    """Head-local coordinates (head radii, y down) -> output px."""

    def __init__(self, rig: _Rig):
        self.cx, self.cy = rig.head_c
        self.r = rig.head_r
        a = math.radians(rig.head_ang)
        self.c, self.s = math.cos(a), math.sin(a)

    def __call__(self, x: float, y: float) -> tuple[float, float]:
        r = self.r
        return (self.cx + (x * self.c - y * self.s) * r, self.cy + (x * self.s + y * self.c) * r)

    def many(self, xy) -> list:
        return [self(x, y) for x, y in xy]

    def ellipse_pts(self, cx, cy, rx, ry, n: int = 18, rot: float = 0.0) -> list:
        out = []
        cr, sr = math.cos(rot), math.sin(rot)
        for i in range(n):
            a = _TWO_PI * i / n
            ex, ey = rx * math.cos(a), ry * math.sin(a)
            out.append(self(cx + ex * cr - ey * sr, cy + ex * sr + ey * cr))
        return out


def _torso_points(shape: str, a: float, b: float, pad: float, cx: float, cy: float, c: float, s: float) -> list:
    n = _SHAPE_N[shape]
    e = 2.0 / n
    x = np.sign(_COS) * np.abs(_COS) ** e
    y = np.sign(_SIN) * np.abs(_SIN) ** e
    X = x * (a + pad) * (1.0 + _SHAPE_TAPER[shape] * y)
    Y = y * (b + pad)
    if shape == "bean":
        X = X + 0.14 * a * (1.0 - y * y) - 0.05 * a
    wx = cx + X * c - Y * s
    wy = cy + X * s + Y * c
    return list(zip(wx.tolist(), wy.tolist()))


def _draw_leg(pt: _Painter, rig: _Rig, i: int, col, shoe) -> None:
    h, kn, an = rig.hips[i], rig.knees[i], rig.ankles[i]
    pt.stroke_ol([h, kn, an], col, rig.leg_w, rig.ol)
    _draw_foot(pt, rig, i, shoe)


def _draw_foot(pt: _Painter, rig: _Rig, i: int, shoe) -> None:
    """The shoe: placed by the ankle alone (it does not turn with the shin)."""
    side = -1 if i == 0 else 1
    an = rig.ankles[i]
    fx, fy = an[0] + side * 5.0 * rig.g, an[1] + 5.0 * rig.g
    pt.ellipse_ol(fx, fy, rig.foot_rx, rig.foot_ry, shoe, rig.ol)
    pt.ellipse(
        fx + side * 3.0 * rig.g,
        fy - 3.0 * rig.g,
        rig.foot_rx * 0.45,
        rig.foot_ry * 0.3,
        _mix(shoe, (255, 255, 255), 0.45),
    )


def _draw_arm(pt: _Painter, rig: _Rig, i: int, col, skin) -> None:
    s, e, h = rig.shoulders[i], rig.elbows[i], rig.hands[i]
    pt.stroke_ol([s, e, h], col, rig.arm_w, rig.ol)
    _draw_hand(pt, rig, i, skin)


def _draw_hand(pt: _Painter, rig: _Rig, i: int, skin) -> None:
    h = rig.hands[i]
    pt.ellipse_ol(h[0], h[1], rig.hand_r, rig.hand_r, skin, rig.ol)


def _draw_torso(pt: _Painter, av: AvatarParams, rig: _Rig, body) -> None:
    tr = math.radians(rig.tilt)
    c, s = math.cos(tr), math.sin(tr)
    cx, cy = rig.tc
    ol = rig.ol
    pt.poly(_torso_points(av.body_shape, rig.ta, rig.tb, ol, cx, cy, c, s), pt.ol)
    pt.poly(_torso_points(av.body_shape, rig.ta, rig.tb, 0.0, cx, cy, c, s), _shade(body, 0.8))
    # lit part: a slightly smaller copy shifted up-left
    sh = _rot(-0.09 * rig.ta, -0.07 * rig.tb, c, s)
    pt.poly(_torso_points(av.body_shape, rig.ta * 0.9, rig.tb * 0.92, 0.0, cx + sh[0], cy + sh[1], c, s), body)
    # belly patch
    bx, by = _rot(0.0, 0.28 * rig.tb, c, s)
    pt.ellipse(cx + bx, cy + by, rig.ta * 0.48, rig.tb * 0.42, _mix(body, (255, 255, 255), 0.35))


def _accessory_drop(rig: _Rig) -> float:
    """How far below the torso's top the neck's accessories (scarf, bowtie) sit: just below the chin (the head
    overlaps the top of the torso)."""
    return max(0.0, 0.25 * rig.head_r - 6.0 * rig.g)


def neck_offset(avatar, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> float:
    """Where the neck's accessories hang (frame pixels), from the torso's keypoints: along the torso's axis (its
    y, turned with its tilt) they sit at its centre + (centre - pelvis) . axis + neck_offset. The torso's squash moves
    them with its top; their size does not change with it (a cut-out draw moves them so)."""
    rig = _rig(get_avatar(avatar), Pose(), width, height)
    return _accessory_drop(rig) - TORSO_CENTRE_RISE * rig.g


def _draw_accessory_front(pt: _Painter, av: AvatarParams, rig: _Rig) -> None:
    acc = av.accessory
    if acc in ("none", "glasses", "star_wand"):
        return
    tr = math.radians(rig.tilt)
    c, s = math.cos(tr), math.sin(tr)
    cx, cy = rig.tc
    g = rig.g

    def L(x, y):
        dx, dy = _rot(x, y, c, s)
        return (cx + dx, cy + dy)

    top = -rig.tb + _accessory_drop(rig)
    if acc == "scarf":
        w = 0.78 * rig.ta
        pt.stroke_ol([L(-w, top + 9 * g), L(0, top + 12 * g), L(w, top + 9 * g)], av.accent, 13 * g, rig.ol)
        tail = [
            L(0.25 * rig.ta, top + 10 * g),
            L(0.5 * rig.ta, top + 10 * g),
            L(0.46 * rig.ta, top + 42 * g),
            L(0.22 * rig.ta, top + 40 * g),
        ]
        pt.poly_ol(tail, av.accent, rig.ol)
        pt.line([L(0.26 * rig.ta, top + 30 * g), L(0.47 * rig.ta, top + 31 * g)], _shade(av.accent, 0.7), 3 * g, False)
    elif acc == "bowtie":
        y = top + 11 * g
        wing_l = [L(0, y), L(-17 * g, y - 9 * g), L(-17 * g, y + 9 * g)]
        wing_r = [L(0, y), L(17 * g, y - 9 * g), L(17 * g, y + 9 * g)]
        pt.poly_ol(wing_l, av.accent, rig.ol * 0.8)
        pt.poly_ol(wing_r, av.accent, rig.ol * 0.8)
        kx, ky = L(0, y)
        pt.ellipse_ol(kx, ky, 5 * g, 5 * g, _shade(av.accent, 0.8), rig.ol * 0.8)
    elif acc == "backpack":
        for side in (-1, 1):
            pt.stroke_ol(
                [L(side * 0.55 * rig.ta, top + 4 * g), L(side * 0.62 * rig.ta, top + 0.95 * rig.tb)],
                _shade(av.accent, 0.85),
                7 * g,
                rig.ol * 0.8,
            )


def _draw_backpack_back(pt: _Painter, av: AvatarParams, rig: _Rig) -> None:
    tr = math.radians(rig.tilt)
    c, s = math.cos(tr), math.sin(tr)
    cx, cy = rig.tc
    pts = _torso_points(
        "square", rig.ta * 1.12, rig.tb * 0.7, 0.0, *(_add(rig.tc, _rot(0, -0.12 * rig.tb, c, s))), c, s
    )
    pt.poly_ol(pts, av.accent, rig.ol)


def _add(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return (a[0] + b[0], a[1] + b[1])


def _draw_head_back(pt: _Painter, av: AvatarParams, rig: _Rig, H: _Head, skin) -> None:
    hw = av.headwear
    ol = rig.ol
    if hw == "cat_ears":
        for sd in (-1, 1):
            outer = H.many([(sd * 0.3, -0.78), (sd * 0.82, -1.32), (sd * 0.9, -0.45)])
            pt.poly_ol(outer, skin, ol)
            inner = H.many([(sd * 0.42, -0.78), (sd * 0.79, -1.12), (sd * 0.82, -0.6)])
            pt.poly(inner, _mix(av.accent, (255, 190, 200), 0.5))
    elif hw == "bunny_ears":
        for sd in (-1, 1):
            rot = sd * 0.2
            pt.poly_ol(H.ellipse_pts(sd * 0.38, -1.3, 0.2, 0.56, 20, rot), skin, ol)
            pt.poly(H.ellipse_pts(sd * 0.38, -1.25, 0.1, 0.42, 16, rot), _mix(av.accent, (255, 170, 200), 0.6))
    elif hw == "horns":
        for sd in (-1, 1):
            horn = H.many(
                [
                    (sd * 0.24, -0.86),
                    (sd * 0.3, -1.12),
                    (sd * 0.46, -1.3),
                    (sd * 0.7, -1.42),
                    (sd * 0.62, -1.24),
                    (sd * 0.6, -1.0),
                    (sd * 0.64, -0.72),
                ]
            )
            pt.poly_ol(horn, _mix(av.accent, (120, 20, 30), 0.35), ol)
            pt.line(
                H.many([(sd * 0.36, -1.02), (sd * 0.58, -0.98)]),
                _mix(av.accent, (255, 255, 255), 0.35),
                0.05 * H.r,
                False,
            )
    elif hw == "antenna":
        base, tip = H(0.0, -0.95), H(0.12, -1.52)
        pt.stroke_ol([base, H(0.05, -1.25), tip], (150, 155, 165), 4.5 * rig.g, ol * 0.8)
        pt.ellipse_ol(tip[0], tip[1], 0.13 * H.r, 0.13 * H.r, av.accent, ol)
        pt.ellipse(tip[0] - 0.04 * H.r, tip[1] - 0.04 * H.r, 0.04 * H.r, 0.04 * H.r, (255, 255, 255))
    elif hw == "hair_bob":
        pt.poly_ol(H.ellipse_pts(0.0, 0.12, 1.2, 1.05, 28), av.accent, ol)


HAT_STAR_AT = (-0.05, -1.2)  # the wizard hat's star: its centre in head radii; it is drawn upright (unturned)


def _draw_hat_star(pt: _Painter, av: AvatarParams, rig: _Rig, H: _Head) -> None:
    """The wizard hat's star, upright whatever the head's turn (the cut-out draw moves it apart from the head:
    layers.HAT_STAR)."""
    if av.headwear == "hat":
        sx, sy = H(*HAT_STAR_AT)
        pt.poly_ol([(sx + x * 0.17 * H.r, sy + y * 0.17 * H.r) for x, y in _STAR5], av.accent, rig.ol * 0.6)


def _draw_head_front(pt: _Painter, av: AvatarParams, rig: _Rig, H: _Head, star: bool = True) -> None:
    """What the head wears in front of it; star=False leaves the wizard hat's star out (_draw_hat_star)."""
    hw = av.headwear
    ol = rig.ol
    col = av.accent
    if hw == "hat":  # little wizard hat
        brim = H.ellipse_pts(0.0, -0.78, 0.95, 0.17, 22, 0.0)
        cone = H.many([(-0.62, -0.8), (-0.3, -1.3), (0.05, -1.7), (0.3, -1.86), (0.26, -1.55), (0.5, -0.8)])
        pt.poly_ol(cone, _shade(av.body_color, 0.75), ol)
        pt.poly_ol(brim, _shade(av.body_color, 0.75), ol)
        if star:
            _draw_hat_star(pt, av, rig, H)
    elif hw == "cap":
        dome = (
            H.many([(-1.02, -0.42)])
            + [H(1.02 * math.cos(a), -0.42 + 0.64 * math.sin(a)) for a in np.linspace(-math.pi + 0.0001, -0.0001, 14)]
            + H.many([(1.02, -0.42)])
        )
        dome = dome[::-1]
        pt.poly_ol(dome, col, ol)
        pt.poly_ol(H.ellipse_pts(0.38, -0.42, 0.78, 0.14, 20), _shade(col, 0.8), ol)
        bx, by = H(0.0, -1.02)
        pt.ellipse_ol(bx, by, 0.08 * H.r, 0.06 * H.r, _shade(col, 0.85), ol * 0.6)
    elif hw == "bow":
        k = H(0.55, -0.82)
        wl = H.many([(0.55, -0.82), (0.22, -1.12), (0.18, -0.68)])
        wr = H.many([(0.55, -0.82), (0.9, -1.14), (0.95, -0.66)])
        pt.poly_ol(wl, col, ol)
        pt.poly_ol(wr, col, ol)
        pt.ellipse_ol(k[0], k[1], 0.09 * H.r, 0.09 * H.r, _shade(col, 0.8), ol * 0.8)
    elif hw == "hair_spiky":
        pts = []
        n = 9
        for i in range(n + 1):
            a = math.pi + math.pi * i / n
            rr = 1.07 if i % 2 == 0 else 1.42
            pts.append((rr * math.cos(a) * (1.0 if i % 2 == 0 else 0.92), rr * math.sin(a) * 0.92 - 0.12))
        fringe = [
            (0.98, -0.25),
            (0.7, -0.42),
            (0.45, -0.3),
            (0.2, -0.5),
            (-0.05, -0.36),
            (-0.3, -0.52),
            (-0.55, -0.36),
            (-0.8, -0.45),
            (-1.0, -0.22),
        ]
        pt.poly_ol(H.many(pts + fringe), col, ol)
    elif hw == "hair_bob":
        cap = (
            [(-1.06, 0.45)]
            + [(1.06 * math.cos(a), 1.0 * math.sin(a) - 0.02) for a in np.linspace(math.pi * 0.97, math.pi * 2.03, 16)]
            + [(1.06, 0.45), (0.82, 0.42)]
        )
        cap += [
            (0.8, -0.3),
            (0.5, -0.48),
            (0.25, -0.36),
            (0.0, -0.5),
            (-0.25, -0.36),
            (-0.5, -0.48),
            (-0.8, -0.3),
            (-0.82, 0.42),
        ]
        pt.poly_ol(H.many(cap), col, ol)


def _draw_head(pt: _Painter, av: AvatarParams, rig: _Rig, q: Pose, H: _Head, skin) -> None:
    r = H.r
    ol = rig.ol
    rx, ry = 1.06, 0.97
    c, s = H.c, H.s
    hx = rx * _HCOS
    hy = ry * _HSIN
    pad = ol / r
    outer = list(
        zip(
            (H.cx + ((hx + pad * _HCOS) * c - (hy + pad * _HSIN) * s) * r).tolist(),
            (H.cy + ((hx + pad * _HCOS) * s + (hy + pad * _HSIN) * c) * r).tolist(),
        )
    )
    pt.poly(outer, pt.ol)
    inner = list(zip((H.cx + (hx * c - hy * s) * r).tolist(), (H.cy + (hx * s + hy * c) * r).tolist()))
    pt.poly(inner, _shade(skin, 0.88))
    lit = list(
        zip(
            (H.cx + ((hx * 0.93 - 0.05) * c - (hy * 0.94 - 0.04) * s) * r).tolist(),
            (H.cy + ((hx * 0.93 - 0.05) * s + (hy * 0.94 - 0.04) * c) * r).tolist(),
        )
    )
    pt.poly(lit, skin)


def _draw_face(pt: _Painter, av: AvatarParams, rig: _Rig, q: Pose, H: _Head, skin) -> None:
    for step in FACE_STEPS:
        _draw_face_step(step, pt, av, q, H, skin)


# The face's steps in drawing order: the cut-out draw (layers.py) keeps each as a layer of its own and picks each
# one's picture apart (the pupils move inside the eyes).
FACE_STEPS = ("blush", "eyes", "pupils", "lids", "brows", "glasses", "mouth")
_EYE_STEPS = ("eyes", "pupils", "lids")
_SIDED_STEPS = (*_EYE_STEPS, "brows")  # drawn one side at a time (_draw_face_side)


def _face_offset(q: Pose) -> tuple[float, float]:
    """(fx, fy): where the face's features sit on the head, in head radii (the pose's face_dx, face_dy, clamped).
    Numbers, or arrays where q holds many frames' fields (brow_lift for the torch cut-out draw's plan)."""
    return np.clip(q.face_dx, -0.3, 0.3), np.clip(q.face_dy, -0.25, 0.3)


# Where a face field switches what is drawn (a cut-out draw must not pick a picture from the other side of one)
HEART_EYES = 0.5  # eye_heart above: heart eyes
EYES_SHUT = 0.22  # eye_open below: a shut eye's arc
MOUTH_LINE = 0.07  # mouth_open below: the mouth is a line
SLEEPY_LID = 1.2  # eye_scale below: a sleepy eye has its lid (wide eyes lose it)
TEETH_SHOWN = 0.5  # mouth_teeth above: teeth in the mouth
MOUTH_FILL = (120, 30, 45)  # an open mouth's inside


def startled(eye_scale, mouth_smile):
    """Wide eyes without a smile draw small pupils (numbers or numpy arrays)."""
    return (eye_scale > 1.15) & (mouth_smile < 0.5)


def tongue_shown(mouth_open, mouth_smile):
    """An open mouth that is not frowning shows its tongue (when no teeth are; numbers or numpy arrays)."""
    return (mouth_open > 0.35) & (mouth_smile > -0.3)


def _eye_shape(style: str, es: float, op: float) -> tuple[float, float, float, float]:
    """(rx, ry, iris, pupil) radii of an open eye of `style`, in head radii, at eye scale es and openness op."""
    if style == "round":
        rx_, ry_, ir, pr = 0.16, 0.18, 0.0, 0.095
    elif style == "anime":
        rx_, ry_, ir, pr = 0.14, 0.21, 0.12, 0.065
    elif style == "big":
        rx_, ry_, ir, pr = 0.2, 0.23, 0.14, 0.075
    else:  # sleepy
        rx_, ry_, ir, pr = 0.16, 0.16, 0.0, 0.09
    return rx_ * es, ry_ * es * op, ir, pr


def pupil_reach(av: AvatarParams, q: Pose) -> tuple[float, float] | None:
    """How far (head radii, along the head's axes) the pupils move per unit of pupil_x and pupil_y, for this pose's
    eyes; None where the eyes have no pupils to move (closed, hearts, or drawn as dots)."""
    if q.eye_heart > HEART_EYES or q.eye_open < EYES_SHUT or av.eye_style == "dot":
        return None
    es = max(0.5, q.eye_scale)
    rx_, ry_, ir, pr = _eye_shape(av.eye_style, es, min(1.5, q.eye_open))
    lim_x, lim_y = max(0.0, rx_ - max(ir, pr) * es * 0.9), max(0.0, ry_ - max(ir, pr) * es * 0.9)
    return lim_x * 0.8, lim_y * 0.8


def _draw_face_step(step: str, pt: _Painter, av: AvatarParams, q: Pose, H: _Head, skin) -> None:
    """One of FACE_STEPS; the eyes' three steps draw both eyes (render_frame draws one eye's three, then the
    other's: the same pixels, as the two eyes never overlap)."""
    if step in _SIDED_STEPS:
        for sd in (-1, 1):
            _draw_face_side(step, pt, av, q, H, skin, sd)
        return
    r = H.r
    fx, fy = _face_offset(q)
    ink = av.outline
    ey = 0.02 + fy
    eye_x = 0.37
    if step == "blush":
        if q.blush > 0.06:
            bc = _mix(skin, (255, 105, 130), 0.3 + 0.45 * min(1.0, q.blush))
            bs = 0.7 + 0.3 * min(1.0, q.blush)
            for sd in (-1, 1):
                bx, by = H(sd * 0.6 + fx * 0.8, 0.27 + fy)
                pt.ellipse(bx, by, 0.15 * r * bs, 0.085 * r * bs, bc)
    elif step == "brows":
        for sd in (-1, 1):
            _draw_brow(pt, av, q, H, sd)
    elif step == "glasses":  # in front of the eyes
        if av.accessory == "glasses":
            gr = 0.23 * r
            for sd in (-1, 1):
                gx, gy = H(sd * eye_x + fx, ey)
                pt.d.ellipse(
                    pt.pts([(gx - gr, gy - gr), (gx + gr, gy + gr)]), outline=ink, width=max(1, int(0.06 * r * pt.s))
                )
            pt.line([H(-eye_x + fx + 0.23, ey - 0.03), H(eye_x + fx - 0.23, ey - 0.03)], ink, 0.05 * r, False)
    elif step == "mouth":
        _draw_mouth(pt, q, H, fx, fy, ink)
    else:
        raise ValueError(f"no face step {step!r}: one of {FACE_STEPS}")


def brow_height(q: Pose, sd: int) -> float:
    """How high the brow on side sd sits (head radii, y down: its ends' mean, from the head's centre; the face's own
    offset, `_face_offset`'s fy, included), for the pose's face fields."""
    fx, fy = _face_offset(q)
    es = np.maximum(0.5, q.eye_scale)  # numbers or arrays (_face_offset)
    return -(0.3 + 0.07 * (es - 1) + q.brow_raise - fy * 0.5) + fy - sd * q.brow_asym * 0.08


def brow_lift(q: Pose, sd: int) -> float:
    """brow_height past the face keypoint (the face's own offset taken out): where the brow sits against the face's
    other features, which move with that keypoint (the cut-out draw's face layers do)."""
    return brow_height(q, sd) - _face_offset(q)[1]


def _draw_brow(pt: _Painter, av: AvatarParams, q: Pose, H: _Head, sd: int) -> None:
    fx, _ = _face_offset(q)
    y = brow_height(q, sd)
    yi = y + q.brow_angle * 0.07  # inner end
    yo = y - q.brow_angle * 0.07  # outer end
    xi, xo = sd * 0.22 + fx, sd * 0.5 + fx
    arch = 0.035 * (1.0 - 0.6 * abs(q.brow_angle))
    pt.line([H(xi, yi), H((xi + xo) / 2, (yi + yo) / 2 - arch), H(xo, yo)], av.outline, 0.055 * H.r)


def eye_centre(q: Pose, H: _Head, sd: int) -> tuple[float, float]:
    """Where the eye on side sd (-1 screen left, 1 right) is centred (output px)."""
    fx, fy = _face_offset(q)
    return H(sd * 0.37 + fx, 0.02 + fy)


def _draw_face_side(step: str, pt: _Painter, av: AvatarParams, q: Pose, H: _Head, skin, sd: int) -> None:
    """One side's part of a face step of _SIDED_STEPS."""
    if step == "brows":
        _draw_brow(pt, av, q, H, sd)
    else:
        _draw_eye(step, pt, av, q, H, skin, sd)


def _draw_eye(step: str, pt: _Painter, av: AvatarParams, q: Pose, H: _Head, skin, sd: int) -> None:
    """One eye's part: "eyes" (the white and its outline, or a closed eye's arc, or a heart), "pupils" (iris, pupil
    and highlights) or "lids" (an anime eye's lashes, a sleepy eye's lid)."""
    r = H.r
    fx, fy = _face_offset(q)
    ink = av.outline
    es = max(0.5, q.eye_scale)
    ey = 0.02 + fy
    eye_x = 0.37
    style = av.eye_style
    ex, eyy = eye_centre(q, H, sd)
    if q.eye_heart > HEART_EYES:
        if step == "eyes":
            hs = 0.2 * r * es
            pts = [(ex + x * hs, eyy + y * hs) for x, y in _HEART]
            pt.poly_ol(pts, (235, 50, 90), 0.03 * r)
            pt.ellipse(ex - 0.35 * hs, eyy - 0.35 * hs, 0.18 * hs, 0.14 * hs, (255, 200, 215))
        return
    if q.eye_open < EYES_SHUT:
        if step == "eyes":
            w = 0.15 * es
            cur = q.eye_curve
            arc = [H(sd * eye_x + fx + u * w, ey + 0.02 - cur * 0.09 * (1 - u * u)) for u in (-1, -0.5, 0, 0.5, 1)]
            pt.line(arc, ink, 0.065 * r)
        return
    op = min(1.5, q.eye_open)
    if style == "dot":
        if step == "eyes":
            rx_, ry_ = 0.085 * es, 0.12 * es * op
            pt.ellipse(ex, eyy, rx_ * r, ry_ * r, ink)
            pt.ellipse(ex - 0.03 * r * es, eyy - 0.045 * r * es * op, 0.03 * r * es, 0.03 * r * es, (255, 255, 255))
        return
    rx_, ry_, ir, pr = _eye_shape(style, es, op)
    if step == "eyes":
        pt.ellipse_ol(ex, eyy, rx_ * r, ry_ * r, (255, 255, 255), 0.035 * r)
    elif step == "pupils":
        lim_x, lim_y = max(0.0, rx_ - max(ir, pr) * es * 0.9), max(0.0, ry_ - max(ir, pr) * es * 0.9)
        px_ = ex + q.pupil_x * lim_x * r * 0.8
        py_ = eyy + q.pupil_y * lim_y * r * 0.8
        if ir > 0:
            iry = min(ir * es, ry_ * 0.95)
            pt.ellipse(px_, py_, ir * es * r * 0.95, iry * r, _mix(av.accent, av.outline, 0.35))
        pry = min(pr * es, ry_ * 0.9)
        small = 0.75 if startled(q.eye_scale, q.mouth_smile) else 1.0  # startled: small pupils
        pt.ellipse(px_, py_, pr * es * r * small, pry * r * small, ink)
        hl = 0.045 * es * r
        pt.ellipse(px_ - 0.45 * pr * es * r, py_ - 0.45 * pry * r, hl, min(hl, 0.5 * ry_ * r), (255, 255, 255))
        if style == "anime":
            pt.ellipse(px_ + 0.5 * pr * es * r, py_ + 0.5 * pry * r, hl * 0.5, hl * 0.5, (255, 255, 255))
    elif step == "lids":
        if style == "anime":
            lash = [H(sd * eye_x + fx + u * rx_ * 1.15, ey - ry_ * (0.95 - 0.25 * u * u)) for u in (-1, -0.4, 0.3, 1.0)]
            pt.line(lash, ink, 0.05 * r)
        if style == "sleepy" and q.eye_scale < SLEEPY_LID:
            lid = 0.3 * (1.0 - min(1.0, max(0.0, (q.eye_open - 1.0) * 3)))
            if lid > 0.02:
                ytop = ey - ry_ - 0.04
                ylid = ey - ry_ + 2 * ry_ * lid
                xl, xr = sd * eye_x + fx - rx_ - 0.05, sd * eye_x + fx + rx_ + 0.05
                pt.poly(H.many([(xl, ytop), (xr, ytop), (xr, ylid), (xl, ylid)]), skin)
                pt.line([H(xl + 0.03, ylid + 0.01), H(xr - 0.03, ylid + 0.01)], ink, 0.05 * r)


def _draw_mouth(pt: _Painter, q: Pose, H: _Head, fx: float, fy: float, ink) -> None:
    r = H.r
    y0 = 0.38 + fy
    w = 0.21 * max(0.2, q.mouth_width)
    sm = max(-1.0, min(1.0, q.mouth_smile))
    o = max(0.0, min(1.2, q.mouth_open))
    k = 0.1
    h = 0.27
    wav = q.mouth_wavy
    us = np.linspace(-1.0, 1.0, 11)
    base = sm * k * (1 - us * us) - sm * k * 0.25
    root = np.sqrt(np.clip(1 - us * us, 0, 1))
    wv = wav * 0.05 * np.sin(us * 3 * math.pi)
    upper = y0 + base * (1 - 0.7 * min(o, 1.0)) - o * h * 0.45 * (1 - 0.75 * abs(sm)) * root + wv
    lower = y0 + base + o * h * root + wv
    xs = fx + us * w
    if o < MOUTH_LINE:
        mid = (upper + lower) * 0.5
        pt.line([H(x, y) for x, y in zip(xs, mid)], ink, 0.06 * r)
        return
    # the lips meet at the corners, once: with a smile the corners' two points crossed by a hair (the smile lowers the
    # lower lip's corners more than the upper's), a bow-tie whose mitred outline grew spikes and flipped the mouth's
    # shape as the smile crossed 0 (talking sleepy and listening faces)
    corners = (upper[[0, -1]] + lower[[0, -1]]) * 0.5
    upper, lower = upper.copy(), lower.copy()
    upper[[0, -1]] = lower[[0, -1]] = corners
    outline_pts = [H(x, y) for x, y in zip(xs, upper)] + [H(x, y) for x, y in zip(xs[-2:0:-1], lower[-2:0:-1])]
    pt.poly_ol(outline_pts, MOUTH_FILL, 0.035 * r)
    if q.mouth_teeth > TEETH_SHOWN:
        tb = np.minimum(lower, upper + 0.09)
        pts = [H(x, y) for x, y in zip(xs[1:-1], upper[1:-1])] + [H(x, y) for x, y in zip(xs[-2:0:-1], tb[-2:0:-1])]
        pt.poly(pts, (255, 255, 250))
        pt.line([H(fx, upper[5]), H(fx, tb[5])], (170, 170, 170), 0.02 * r, False)
    elif tongue_shown(o, sm):
        tx, ty = H(fx + 0.05 * w, lower[5] - 0.075 - 0.02 * o)
        pt.ellipse(tx, ty, 0.5 * w * r, 0.06 * r * min(1.0, o), (240, 110, 125))


# ---------------------------------------------------------------------------
# effects
def _effects_top(rig: _Rig, height: int) -> float:
    """The row effect shapes (plus their mitred outline) stay below: a particle reaching above is not drawn."""
    return max(4.0 * rig.g, 4.0 * height / REF_H) + 2.5 * rig.ol * 0.85


def effect_geometry(rig: _Rig, width: int, height: int) -> EffectGeometry:
    """What particles.particles needs of a rig."""
    return EffectGeometry(
        g=rig.g,
        ol=rig.ol * 0.85,
        head_r=rig.head_r,
        width=width,
        height=height,
        ground=GROUND_Y * height / REF_H,
        top=_effects_top(rig, height),
        head_c=rig.head_c,
        head_ang=rig.head_ang,
        tc=rig.tc,
    )


def pose_cycles(q: Pose) -> tuple[float, ...]:
    """Each effect clock's time in cycles (skeleton.FX_FREQUENCIES, written as the renderer always wrote them)."""
    t = q.fx_time
    return (t * 1.3, t / 1.8, t * 1.1, t * 0.6, t / 2.2, t * 0.8, t * 1.4)


def _draw_effects(pt: _Painter, av: AvatarParams, rig: _Rig, q: Pose, H: _Head, width: int, height: int) -> None:
    geo = effect_geometry(rig, width, height)
    strength = {name: getattr(q, name) for name in EFFECTS}
    for p in particles(geo, strength, pose_cycles(q), q.face_dy):
        draw_particle(pt, p, geo.ol, rig.head_r)


def avatar_effect_geometry(avatar, pose: Pose, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> EffectGeometry:
    """particles.EffectGeometry of an avatar in a pose."""
    return effect_geometry(_rig(get_avatar(avatar), pose, width, height), width, height)


def particle_picture(avatar, geo: EffectGeometry, p: Particle, box: tuple[int, int, int, int]) -> np.ndarray:
    """Particle `p` drawn alone as render_frame draws it, on a transparent picture of the frame's box = (x0, y0, w, h)
    (pixels): (h, w, 4) uint8, straight alpha. geo: the avatar's (its outline width and head radius)."""
    av = get_avatar(avatar)
    x0, y0, w, h = box
    img = Image.new("RGBa", (w * SS, h * SS), (0, 0, 0, 0))
    draw_particle(_Painter(img, SS, x0, y0, av.outline), p, geo.ol, geo.head_r)
    return _finish(img, 0, 0, w, h, w, h)


def draw_particle(pt: _Painter, p: Particle, ol: float, r: float) -> None:
    """One effect particle (particles.Particle) as the renderer draws it: ol, the effects' outline width; r, the
    head's radius (streams and tears are sized by it)."""
    cx, cy, size, kind = p.x, p.y, p.size, p.kind
    if kind in ("spark_a", "spark_b"):
        col = (255, 220, 70) if kind == "spark_a" else (255, 250, 190)
        pt.poly_ol([(cx + x * size, cy + y * size) for x, y in _SPARK4], col, ol * 0.8)
    elif kind == "heart":
        pt.poly_ol([(cx + x * size, cy + y * size) for x, y in _HEART], (240, 70, 115), ol)
        pt.ellipse(cx - 0.35 * size, cy - 0.3 * size, 0.18 * size, 0.12 * size, (255, 190, 210))
    elif kind in ("stream_l", "stream_r"):  # under an eye, along the head's axes
        sd, fy = (-1 if kind == "stream_l" else 1), p.drop
        a = math.radians(p.turn)
        c, s = math.cos(a), math.sin(a)

        def H(x: float, y: float) -> tuple[float, float]:  # _Head's map
            return (cx + (x * c - y * s) * r, cy + (x * s + y * c) * r)

        pts = [H(sd * 0.3, 0.1 + fy), H(sd * 0.47, 0.12 + fy), H(sd * 0.5, 0.3 + fy)]
        pt.line(pts, (110, 185, 255), STREAM_WIDTH * r * size, True)
    elif kind == "tear":
        pt.poly_ol([(cx + x * size, cy + y * size) for x, y in _DROP], (120, 190, 255), ol * 0.6)
    elif kind == "sweat":
        pt.poly_ol([(cx + x * size, cy + y * size) for x, y in _DROP], (150, 210, 255), ol * 0.7)
    elif kind == "exclaim":
        bar = [
            (cx - 0.2 * size, cy - 0.7 * size),
            (cx + 0.2 * size, cy - 0.7 * size),
            (cx + 0.08 * size, cy + 0.25 * size),
            (cx - 0.08 * size, cy + 0.25 * size),
        ]
        col = (255, 95, 70)
        pt.poly_ol(bar, col, ol)
        pt.ellipse_ol(cx, cy + 0.55 * size, 0.12 * size, 0.12 * size, col, ol)
    elif kind == "z":
        z = [(cx - size, cy - size), (cx + size, cy - size), (cx - size, cy + size), (cx + size, cy + size)]
        pt.line(z, pt.ol, 0.55 * size + 2 * ol)
        pt.line(z, (200, 225, 255), 0.55 * size)
    elif kind == "question":
        hook = [
            (cx + 0.42 * size * math.cos(a), cy - 0.3 * size + 0.42 * size * math.sin(a))
            for a in np.linspace(math.pi * 1.05, math.pi * 2.45, 9)
        ]
        hook += [(cx + 0.02 * size, cy + 0.28 * size)]
        col = (255, 190, 60)
        pt.line(hook, pt.ol, 0.22 * size + 2 * ol)
        pt.line(hook, col, 0.22 * size)
        pt.ellipse_ol(cx + 0.02 * size, cy + 0.62 * size, 0.13 * size, 0.13 * size, col, ol)
    elif kind == "puff":
        for bx, by, br in ((-0.6, 0.2, 0.7), (0.6, 0.2, 0.7), (0.0, -0.25, 0.9)):
            pt.ellipse(cx + bx * size, cy + by * size, br * size + ol, br * size + ol, pt.ol)
        for bx, by, br in ((-0.6, 0.2, 0.7), (0.6, 0.2, 0.7), (0.0, -0.25, 0.9)):
            pt.ellipse(cx + bx * size, cy + by * size, br * size, br * size, (238, 238, 245))
    elif kind == "anger":
        m = size
        for dx, dy in ((-1, -1), (1, -1), (-1, 1), (1, 1)):
            pt.line(
                [
                    (cx + dx * m * 0.25, cy + dy * m),
                    (cx + dx * m * 0.25, cy + dy * m * 0.3),
                    (cx + dx * m, cy + dy * m * 0.25),
                ],
                (220, 30, 40),
                0.05 * r,
                True,
            )
    else:
        raise ValueError(f"unknown particle kind {kind!r}")


def _wand_tip(e, h, g: float) -> tuple[float, float]:
    # the wand continues the forearm, tilted slightly up
    dx, dy = h[0] - e[0], h[1] - e[1]
    n = math.hypot(dx, dy) or 1.0
    return (h[0] + dx / n * 20 * g, h[1] + dy / n * 20 * g - 8 * g)


def _draw_wand(pt: _Painter, av: AvatarParams, rig: _Rig, part: str = "all") -> None:
    """The held wand: its "stick" (from the right hand to the tip), then its "star" (upright, at the tip)."""
    h = rig.hands[1]
    tip = _wand_tip(rig.elbows[1], h, rig.g)
    if part in ("all", "stick"):
        pt.stroke_ol([h, tip], (150, 100, 60), 4 * rig.g, rig.ol * 0.7)
    if part in ("all", "star"):
        size = 11 * rig.g
        pt.poly_ol([(tip[0] + x * size, tip[1] + y * size) for x, y in _STAR5], (255, 220, 70), rig.ol * 0.8)


def wand_reach(avatar: AvatarParams, height: int = FRAME_HEIGHT) -> tuple[float, float]:
    """(along, up): the wand's tip is `along` pixels past the right hand along the forearm, then `up` pixels up
    (_wand_tip), for this avatar in a frame `height` pixels high."""
    g = _rig(avatar, Pose(), FRAME_WIDTH, height).g
    return 20.0 * g, 8.0 * g


# ---------------------------------------------------------------------------
def _palette(av: AvatarParams, pose: Pose) -> tuple:
    """(skin, body, limb, leg, shoe) colours of a frame (the skin reddens with the pose's face_red)."""
    skin = _mix(av.skin, (235, 60, 50), 0.55 * max(0.0, min(1.0, pose.face_red)))
    body = av.body_color
    shoe = av.accent if av.accessory != "backpack" else _shade(av.outline, 2.2)
    return skin, body, _shade(body, 0.86), _shade(body, 0.7), shoe


def _draw_shadow(pt: _Painter, rig: _Rig, k: float) -> None:
    """The soft contact shadow on the ground (shrinks while jumping); premultiplied black at low alpha."""
    lift = max(0.0, GROUND_Y * k - max(rig.ankles[0][1], rig.ankles[1][1]) - 13.0 * rig.g)
    sh = max(0.45, 1.0 - lift / (110.0 * k))
    pt.ellipse(rig.P[0], GROUND_Y * k + 1.0 * rig.g, (rig.ta + 18.0 * rig.g) * sh, 7.0 * rig.g * sh, (0, 0, 0, 60))


def _band(rig: _Rig, width: int, height: int) -> tuple[int, int]:
    """The columns [x0, x1) that can hold the character and its effects (output px)."""
    half = 215.0 * height / REF_H
    return int(max(0, math.floor(rig.P[0] - half))), int(min(width, math.ceil(rig.P[0] + half)))


def render_frame(
    avatar: AvatarParams, pose: Pose, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT, supersample: int = SS
) -> np.ndarray:
    """Draw one frame: (H, W, 4) uint8 RGBA, straight alpha, transparent background. `supersample`: the canvas's
    pixels per frame pixel along each axis. The shipped frames use SS; PIL rounds every coordinate down to the
    canvas's grid and samples each canvas pixel at one point, so an edge lands up to 1/(2 supersample) of a pixel from
    where it is drawn (the fidelity eval also scores against 8: the character's shapes, docs/training/motion.md)."""
    av = get_avatar(avatar)
    rig = _rig(av, pose, width, height)
    k = height / REF_H
    x0, x1 = _band(rig, width, height)
    y0, y1 = 0, height
    # premultiplied canvas: opaque drawing is identical, and reduce() needs no conversion
    img = Image.new("RGBa", ((x1 - x0) * supersample, (y1 - y0) * supersample), (0, 0, 0, 0))
    pt = _Painter(img, supersample, x0, y0, av.outline)
    H = _Head(rig)
    skin, body, limb, legc, shoe = _palette(av, pose)
    _draw_shadow(pt, rig, k)
    if av.accessory == "backpack":
        _draw_backpack_back(pt, av, rig)
    _draw_head_back(pt, av, rig, H, skin)
    for i in (0, 1):
        _draw_leg(pt, rig, i, legc, shoe)
    _draw_torso(pt, av, rig, body)
    _draw_accessory_front(pt, av, rig)
    _draw_head(pt, av, rig, pose, H, skin)
    _draw_face(pt, av, rig, pose, H, skin)
    _draw_head_front(pt, av, rig, H)
    for i in (0, 1):
        _draw_arm(pt, rig, i, limb, av.skin)
    if av.accessory == "star_wand":
        _draw_wand(pt, av, rig)
    _draw_effects(pt, av, rig, pose, H, width, height)
    return _finish(img, x0, y0, x1, y1, width, height, supersample)


def render_effects(
    avatar: AvatarParams, pose: Pose, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT, lower: float = 0.0
) -> np.ndarray:
    """Only the effects render_frame draws last (sparkles, hearts, tears, ...), on a transparent frame: the
    same pixels as render_frame's where no part of the avatar lies under them. (H, W, 4) uint8, straight alpha.
    `lower`: draw them that many pixels lower, as if the head and torso were (so fewer reach effects_top)."""
    av = get_avatar(avatar)
    rig = _rig(av, pose, width, height)
    if lower:
        rig = replace(rig, head_c=(rig.head_c[0], rig.head_c[1] + lower), tc=(rig.tc[0], rig.tc[1] + lower))
    img = Image.new("RGBa", (width * SS, height * SS), (0, 0, 0, 0))
    _draw_effects(_Painter(img, SS, 0, 0, av.outline), av, rig, pose, _Head(rig), width, height)
    return _finish(img, 0, 0, width, height, width, height)


def effects_top(avatar: AvatarParams, pose: Pose, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> float:
    """The frame row above which render_frame draws no effect particle (one that would reach it is skipped)."""
    return _effects_top(_rig(get_avatar(avatar), pose, width, height), height)


def _finish(img, x0: int, y0: int, x1: int, y1: int, width: int, height: int, ss: int = SS) -> np.ndarray:
    small = (img.reduce(ss) if ss > 1 else img).convert("RGBA")  # box filter, then un-premultiply
    out = np.zeros((height, width, 4), np.uint8)
    out[y0:y1, x0:x1] = np.asarray(small)
    return out


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in output px


@dataclass(frozen=True)
class Landmarks:
    """Where a frame's head (with headwear, not effects) and hands are: boxes for crops and per-part scores."""

    head: Box
    hands: tuple[Box, Box]  # screen left, screen right


def landmarks(avatar: AvatarParams, pose: Pose, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> Landmarks:
    """The head and hand boxes of ``render_frame(avatar, pose, width, height)``, outlines included."""
    av = get_avatar(avatar)
    rig = _rig(av, pose, width, height)
    H = _Head(rig)
    # head-local extent (head radii): the widest headwear (spiky hair, bob) and the bob's lower edge
    side, below = 1.25, (1.2 if av.headwear == "hair_bob" else 1.0)
    corners = [H(x, y) for x in (-side, side) for y in (-_HEADWEAR_TOP[av.headwear], below)]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    head = (min(xs) - rig.ol, min(ys) - rig.ol, max(xs) + rig.ol, max(ys) + rig.ol)
    e = rig.hand_r + rig.ol
    hands = tuple((x - e, y - e, x + e, y + e) for x, y in rig.hands)
    return Landmarks(head, hands)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
def _start_time_from_seed(seed: int) -> float:
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x57A7])
    return float(rng.uniform(0.0, 20.0))


def sequence_poses(
    segments: list[tuple[str, int, float]],
    seed: int,
    fps: int = FPS,
    start_time: float = 0.0,
    transition_frames: int = 4,
) -> tuple[list[Pose], np.ndarray]:
    """The poses and per-frame labels of :func:`render_sequence` (no drawing)."""
    var = sample_variation(seed)
    poses: list[Pose] = []
    labels: list[int] = []
    prev: tuple[str, float] | None = None
    i = 0
    for emotion, n, inten in segments:
        idx = emotion_index(emotion)
        n = int(n)
        if n < 0:
            raise ValueError(f"segment length must be >= 0, got {n}")
        for j in range(n):
            t = start_time + i / float(fps)
            q = pose_at(emotion, t, var, inten)
            if prev is not None and j < transition_frames:
                qa = pose_at(prev[0], t, var, prev[1])
                q = blend_poses(qa, q, (j + 1) / (transition_frames + 1))
            poses.append(q)
            labels.append(idx)
            i += 1
        if n > 0:
            prev = (emotion, inten)
    return poses, np.asarray(labels, dtype=np.int64)


def render_sequence(
    avatar,
    segments: list[tuple[str, int, float]],
    seed: int,
    fps: int = FPS,
    start_time: float = 0.0,
    transition_frames: int = 4,
    width: int = FRAME_WIDTH,
    height: int = FRAME_HEIGHT,
) -> tuple[np.ndarray, np.ndarray]:
    """Render consecutive emotion segments; returns frames (T, H, W, 4) uint8 and labels (T,) int64."""
    poses, labels = sequence_poses(segments, seed, fps, start_time, transition_frames)
    return _render_poses(get_avatar(avatar), poses, width, height), labels


def clip_poses(
    emotion: str, n_frames: int, seed: int, intensity: float = 1.0, fps: int = FPS, start_time: float | None = None
) -> list[Pose]:
    """The poses of :func:`render_clip` (no drawing); ``start_time=None`` picks a start derived from ``seed``."""
    st = _start_time_from_seed(seed) if start_time is None else float(start_time)
    return sequence_poses([(emotion, n_frames, intensity)], seed, fps, st, 0)[0]


def render_clip(
    avatar,
    emotion: str,
    n_frames: int,
    seed: int,
    intensity: float = 1.0,
    fps: int = FPS,
    start_time: float | None = None,
    width: int = FRAME_WIDTH,
    height: int = FRAME_HEIGHT,
) -> np.ndarray:
    """Render one emotion loop; ``start_time=None`` picks a start derived from ``seed``."""
    return _render_poses(
        get_avatar(avatar), clip_poses(emotion, n_frames, seed, intensity, fps, start_time), width, height
    )


def _render_poses(av: AvatarParams, poses: list[Pose], width: int, height: int) -> np.ndarray:
    frames = np.zeros((len(poses), height, width, 4), np.uint8)
    for i, q in enumerate(poses):
        frames[i] = render_frame(av, q, width, height)
    return frames


__all__ = [
    "render_frame",
    "render_sequence",
    "render_clip",
    "clip_poses",
    "sequence_poses",
    "landmarks",
    "Landmarks",
    "MotionVariation",
]
