"""Emotion motions for the avatar world.

A :class:`Pose` is a flat set of floats (so poses blend by plain interpolation);
:func:`pose_at` gives the pose of an emotion at time ``t`` seconds.  Angles are in
degrees.  Arm/leg angles are "outward" angles: 0 = hanging straight down,
90 = pointing sideways away from the body, 180 = straight up; the elbow/knee
angle is added on top of that (positive = further outward/up, negative = folds
in across the body).  Arms can also be driven by hand targets (inverse
kinematics) with a weight ``ik_*_w``; the target is in torso units
(x: half-widths, y: half-heights from the torso centre) when ``ik_*_head`` is 0
and in head radii from the head centre when it is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from avatarcast.vocabulary import EMOTIONS

EMOTION_INDEX: dict[str, int] = {e: i for i, e in enumerate(EMOTIONS)}

# Loop period (seconds, at tempo 1) of each motion.
PERIODS: dict[str, float] = {
    "idle": 2.4,
    "listening": 2.0,
    "happy": 1.2,
    "excited": 1.4,
    "surprised": 2.4,
    "sad": 2.5,
    "angry": 1.2,
    "laughing": 1.0,
    "love": 2.2,
    "confused": 2.4,
    "sleepy": 2.5,
}


@dataclass(frozen=True)
class MotionVariation:
    tempo: float = 1.0  # speed multiplier (~0.85..1.15)
    amplitude: float = 1.0  # size of the oscillations (~0.8..1.2)
    phase: float = 0.0  # loop phase offset in cycles [0, 1)


def sample_variation(seed: int) -> MotionVariation:
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED])
    return MotionVariation(
        tempo=float(rng.uniform(0.85, 1.15)),
        amplitude=float(rng.uniform(0.8, 1.2)),
        phase=float(rng.random()),
    )


@dataclass
class Pose:
    # --- body -----------------------------------------------------------
    body_dx: float = 0.0  # px, sideways shift of the whole character
    lift: float = 0.0  # px the lowest foot is above the ground (jumps)
    squash: float = 1.0  # torso vertical scale (<1 squashed, >1 stretched)
    body_tilt: float = 0.0  # deg, + leans to the right of the screen
    head_tilt: float = 0.0  # deg, relative to the torso
    head_dx: float = 0.0  # px in torso frame
    head_dy: float = 0.0  # px in torso frame (+ sinks into the shoulders)
    # arms (L = screen left)
    arm_l_sh: float = 22.0
    arm_l_el: float = -10.0
    arm_r_sh: float = 22.0
    arm_r_el: float = -10.0
    ik_l_w: float = 0.0
    ik_l_x: float = 0.0
    ik_l_y: float = 0.0
    ik_l_head: float = 0.0
    ik_r_w: float = 0.0
    ik_r_x: float = 0.0
    ik_r_y: float = 0.0
    ik_r_head: float = 0.0
    # legs
    leg_l_hip: float = 4.0
    leg_l_knee: float = 0.0
    leg_r_hip: float = 4.0
    leg_r_knee: float = 0.0
    # --- face -------------------------------------------------------------
    face_dx: float = 0.0  # head radii, features shift (head turn)
    face_dy: float = 0.0  # head radii, features shift (+ looks down)
    eye_open: float = 1.0  # 0 closed .. 1 open (>1 wide)
    eye_scale: float = 1.0
    eye_curve: float = 0.0  # shape of closed eyes: +1 happy arcs, -1 sleepy arcs
    eye_heart: float = 0.0  # >0.5 -> heart eyes
    pupil_x: float = 0.0  # -1..1
    pupil_y: float = 0.0  # -1..1
    brow_angle: float = 0.0  # + angry V, - worried
    brow_raise: float = 0.0  # head radii up
    brow_asym: float = 0.0  # + left brow up / right down
    mouth_open: float = 0.0  # 0..1
    mouth_smile: float = 0.35  # -1 frown .. 1 smile
    mouth_width: float = 1.0
    mouth_wavy: float = 0.0  # squiggle
    mouth_teeth: float = 0.0  # >0.5 shows gritted teeth
    blush: float = 0.3
    face_red: float = 0.0
    # --- effects (strength 0..1) and their clock ----------------------------
    fx_hearts: float = 0.0
    fx_tears: float = 0.0
    fx_zzz: float = 0.0
    fx_question: float = 0.0
    fx_steam: float = 0.0
    fx_sparkles: float = 0.0
    fx_sweat: float = 0.0
    fx_exclaim: float = 0.0
    fx_time: float = 0.0


POSE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Pose))
_FACE_FIELDS = frozenset(
    "face_dx face_dy eye_open eye_scale eye_curve eye_heart pupil_x pupil_y brow_angle brow_raise brow_asym "
    "mouth_open mouth_smile mouth_width mouth_wavy mouth_teeth blush face_red".split()
)
_FX_FIELDS = frozenset(n for n in POSE_FIELDS if n.startswith("fx_") and n != "fx_time")
_BODY_FIELDS = frozenset(POSE_FIELDS) - _FACE_FIELDS - _FX_FIELDS - {"fx_time"}


def ease(w: float) -> float:
    """Smoothstep easing of a weight in [0, 1]."""
    w = min(1.0, max(0.0, float(w)))
    return w * w * (3.0 - 2.0 * w)


def _lerp_pose(a: Pose, b: Pose, w: float) -> Pose:
    # a*(1-w) + b*w gives a exactly at w=0 and b exactly at w=1
    u = 1.0 - w
    return Pose(**{n: getattr(a, n) * u + getattr(b, n) * w for n in POSE_FIELDS})


def blend_poses(a: Pose, b: Pose, w: float) -> Pose:
    """Blend from pose ``a`` (w=0) to pose ``b`` (w=1); ``w`` is eased (smoothstep)."""
    w = float(w)
    if w <= 0.0:
        return Pose(**{n: getattr(a, n) for n in POSE_FIELDS})
    if w >= 1.0:
        return Pose(**{n: getattr(b, n) for n in POSE_FIELDS})
    return _lerp_pose(a, b, ease(w))


# ---------------------------------------------------------------------------
# helpers
TAU = 2.0 * math.pi


def _s(x: float) -> float:
    return math.sin(TAU * x)


def _c(x: float) -> float:
    return math.cos(TAU * x)


def _frac(x: float) -> float:
    return x - math.floor(x)


def _bump(x: float, center: float, half_width: float) -> float:
    """Smooth periodic bump (1 at center, 0 beyond half_width), x in cycles."""
    d = abs(_frac(x - center + 0.5) - 0.5)
    if d >= half_width:
        return 0.0
    return 0.5 + 0.5 * math.cos(math.pi * d / half_width)


def _smooth(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


def _jitter(t: float, k: int) -> float:
    """Deterministic pseudo-random value in [-1, 1] that changes every ~1/16 s."""
    n = int(math.floor(t * 16.0)) * 7919 + k * 104729
    n = (n ^ (n >> 13)) * 1274126177 & 0xFFFFFFFF
    n = (n ^ (n >> 16)) & 0xFFFF
    return n / 32767.5 - 1.0


def _blink(x: float, rate: float = 1.0) -> float:
    """Eye openness with an occasional blink (x in seconds)."""
    b = max(_bump(x * rate / 2.9, 0.37, 0.05), _bump(x * rate / 4.3, 0.81, 0.04))
    return 1.0 - 0.95 * b


# ---------------------------------------------------------------------------
# motions: each takes (p = loop phase in cycles, t = time in s, a = amplitude) and returns a Pose


def _idle(p: float, t: float, a: float) -> Pose:
    q = Pose()
    q.body_dx = 2.0 * a * _s(p)
    q.squash = 1.0 + 0.022 * a * _s(2 * p)
    q.body_tilt = 1.8 * a * _s(p)
    q.head_tilt = 3.5 * a * _s(p + 0.15)
    q.head_dy = -1.0 * _s(2 * p)
    q.arm_l_sh = 22 + 4 * a * _s(2 * p)
    q.arm_r_sh = 22 + 4 * a * _s(2 * p)
    q.arm_l_el = -10 + 4 * _s(p)
    q.arm_r_el = -10 - 4 * _s(p)
    q.eye_open = _blink(t)
    q.pupil_x = 0.35 * _s(p * 0.5 + 0.2)
    q.mouth_smile = 0.45
    return q


def _listening(p: float, t: float, a: float) -> Pose:
    nod = _s(2 * p)
    q = Pose()
    q.body_dx = 10.0 + 2 * a * _s(p)
    q.body_tilt = 9.0 + 2.0 * a * _s(p)
    q.head_tilt = 14.0 + 4.0 * a * _s(p)
    q.head_dx = 4.0
    q.head_dy = 3.0 + 4.0 * a * max(0.0, nod)
    q.face_dy = 0.05 + 0.10 * a * max(0.0, nod)
    q.face_dx = 0.10
    q.squash = 0.97 - 0.02 * a * max(0.0, nod)
    # right hand cupped behind the right ear
    q.ik_r_w = 1.0
    q.ik_r_head = 1.0
    q.ik_r_x = 1.15
    q.ik_r_y = 0.05 + 0.03 * _s(2 * p)
    q.arm_r_sh = 110
    q.arm_r_el = 50
    # left hand on the hip
    q.ik_l_w = 1.0
    q.ik_l_x = -1.05
    q.ik_l_y = 0.45
    q.leg_l_hip = 10.0
    q.leg_r_hip = 2.0
    q.leg_r_knee = 8.0
    q.eye_open = _blink(t) * 1.05
    q.pupil_x = 0.7
    q.pupil_y = -0.1
    q.brow_raise = 0.06
    q.brow_asym = -0.35
    q.mouth_smile = 0.15
    q.mouth_open = 0.12
    q.mouth_width = 0.6
    return q


def _happy(p: float, t: float, a: float) -> Pose:
    sw = _s(p)
    q = Pose()
    q.body_dx = 18.0 * a * sw
    q.lift = 9.0 * a * abs(_s(p + 0.25)) ** 1.5
    q.squash = 1.0 + 0.05 * a * (abs(_s(p + 0.25)) - 0.5)
    q.body_tilt = 9.0 * a * sw
    q.head_tilt = 10.0 * a * _s(p - 0.08)
    q.arm_l_sh = 100 + 16 * a * _s(2 * p)
    q.arm_l_el = 45 + 25 * a * _s(2 * p + 0.25)
    q.arm_r_sh = 100 - 16 * a * _s(2 * p)
    q.arm_r_el = 45 - 25 * a * _s(2 * p + 0.25)
    step = _s(p)
    q.leg_l_hip = 6 + 14 * a * max(0.0, step)
    q.leg_l_knee = -26 * a * max(0.0, step)
    q.leg_r_hip = 6 + 14 * a * max(0.0, -step)
    q.leg_r_knee = -26 * a * max(0.0, -step)
    q.eye_open = 0.05
    q.eye_curve = 1.0
    q.mouth_open = 0.55
    q.mouth_smile = 1.0
    q.mouth_width = 1.25
    q.blush = 0.7
    return q


def _excited(p: float, t: float, a: float) -> Pose:
    j = _frac(2 * p)  # two jumps per loop
    q = Pose()
    if j < 0.62:  # in the air
        x = j / 0.62
        h = 4.0 * x * (1.0 - x)
        q.lift = 42.0 * a * h
        q.squash = 1.0 + 0.08 * h
        up = _smooth(min(1.0, x * 3.0)) * _smooth(min(1.0, (1.0 - x) * 4.0 + 0.3))
        tuck = h
        crouch = 0.0
    else:  # land, crouch, push off
        x = (j - 0.62) / 0.38
        crouch = math.sin(math.pi * x)
        q.lift = 0.0
        q.squash = 1.0 - 0.12 * crouch
        up = 0.0
        tuck = 0.0
    q.arm_l_sh = 50 + 62 * up
    q.arm_r_sh = 50 + 62 * up
    q.arm_l_el = 40 + 12 * up + 12 * _s(4 * p)
    q.arm_r_el = 40 + 12 * up - 12 * _s(4 * p)
    bend = 22 * tuck + 34 * crouch
    q.leg_l_hip = 14 + bend
    q.leg_r_hip = 14 + bend
    q.leg_l_knee = -2.0 * bend
    q.leg_r_knee = -2.0 * bend
    q.body_tilt = 3.0 * a * _s(p)
    q.head_tilt = -5.0 * _s(p)
    q.head_dy = 4.0 * crouch - 2.0 * tuck
    q.eye_open = 1.15
    q.eye_scale = 1.2
    q.pupil_y = -0.3
    q.brow_raise = 0.1
    q.mouth_open = 0.8
    q.mouth_smile = 1.0
    q.mouth_width = 1.2
    q.blush = 0.6
    q.fx_sparkles = 1.0
    return q


def _surprised(p: float, t: float, a: float) -> Pose:
    x = _frac(p)
    q = Pose()
    # 0..0.18: startle hop backwards, 0.18..0.85 hold trembling, 0.85..1 relax a little
    if x < 0.18:
        u = x / 0.18
        hop = math.sin(math.pi * u)
        q.lift = 26.0 * a * hop
        q.squash = 1.0 + 0.1 * hop
        k = _smooth(u * 2.0)
    elif x < 0.85:
        k = 1.0
    else:
        k = 1.0 - 0.55 * _smooth((x - 0.85) / 0.15)
    tr = 1.0 if 0.15 < x < 0.9 else 0.0
    q.body_dx = -4.0 * k + 2.2 * tr * _jitter(t, 1)
    q.body_tilt = -5.0 * k + 1.5 * tr * _jitter(t, 2)
    q.head_tilt = -4.0 * k
    q.head_dy = -5.0 * k
    q.arm_l_sh = 22 + 108 * k + 4 * tr * _jitter(t, 3)
    q.arm_r_sh = 22 + 108 * k + 4 * tr * _jitter(t, 4)
    q.arm_l_el = -10 + 22 * k
    q.arm_r_el = -10 + 22 * k
    if x >= 0.18:
        q.squash = 1.0 + 0.05 * k
    q.leg_l_hip = 4 + 14 * k
    q.leg_r_hip = 4 + 14 * k
    q.leg_l_knee = -10 * k
    q.leg_r_knee = -10 * k
    q.eye_open = 1.0 + 0.35 * k
    q.eye_scale = 1.0 + 0.3 * k
    q.pupil_x = 0.0
    q.brow_raise = 0.16 * k
    q.brow_angle = -0.3 * k
    q.mouth_open = 0.15 + 0.85 * k
    q.mouth_smile = 0.35 * (1 - k)
    q.mouth_width = 1.0 - 0.5 * k
    q.blush = 0.2
    q.fx_sweat = k
    q.fx_exclaim = k
    return q


def _sad(p: float, t: float, a: float) -> Pose:
    q = Pose()
    q.body_dx = 5.0 * a * _s(p)
    q.squash = 0.92 + 0.015 * _s(2 * p)
    q.body_tilt = 3.0 * a * _s(p)
    q.head_tilt = -9.0 + 5.0 * a * _s(p - 0.1)
    q.head_dy = 10.0
    q.face_dy = 0.16
    q.arm_l_sh = 12.0 + 2 * _s(p)
    q.arm_r_sh = 12.0 - 2 * _s(p)
    q.arm_l_el = -6.0
    q.arm_r_el = -6.0
    q.leg_l_hip = 1.0
    q.leg_r_hip = 1.0
    q.leg_l_knee = 6.0
    q.leg_r_knee = 6.0
    # now and then wipe the tears with one hand
    wipe = _smooth(1.6 * _bump(p, 0.62, 0.22))
    q.ik_r_w = wipe
    q.ik_r_head = 1.0
    q.ik_r_x = 0.5 + 0.08 * _s(4 * p)
    q.ik_r_y = 0.22
    q.eye_open = 0.5 * _blink(t, 0.7)
    q.pupil_y = 0.6
    q.brow_angle = -1.0
    q.brow_raise = 0.02
    q.mouth_smile = -0.9
    q.mouth_open = 0.1 + 0.08 * max(0.0, _s(p * 2))
    q.mouth_width = 0.85
    q.blush = 0.1
    q.fx_tears = 1.0
    return q


def _angry(p: float, t: float, a: float) -> Pose:
    q = Pose()
    st = _s(p)
    ll = max(0.0, st) ** 0.8  # left leg raised
    rl = max(0.0, -st) ** 0.8
    stomp = max(_bump(p, 0.5, 0.08), _bump(p, 0.0, 0.08))
    q.leg_l_hip = 14 + 48 * a * ll
    q.leg_l_knee = -2 * 48 * a * ll * 0.95
    q.leg_r_hip = 14 + 48 * a * rl
    q.leg_r_knee = -2 * 48 * a * rl * 0.95
    q.squash = 0.95 - 0.05 * stomp
    q.body_tilt = 5.0 * a * st
    q.body_dx = 3.0 * a * st
    q.head_tilt = -3.0 * a * st
    q.head_dy = 4.0 + 3.0 * stomp
    shake = _s(4 * p)
    # fists raised and shaking
    q.arm_l_sh = 70 + 16 * a * shake
    q.arm_l_el = 95 - 15 * a * shake
    q.arm_r_sh = 70 - 16 * a * shake
    q.arm_r_el = 95 + 15 * a * shake
    q.eye_open = 0.75
    q.pupil_y = 0.1
    q.brow_angle = 1.0
    q.brow_raise = -0.03
    q.mouth_open = 0.35
    q.mouth_smile = -0.75
    q.mouth_width = 1.05
    q.mouth_teeth = 1.0
    q.blush = 0.0
    q.face_red = 0.75 + 0.25 * _s(2 * p)
    q.fx_steam = 1.0
    return q


def _laughing(p: float, t: float, a: float) -> Pose:
    q = Pose()
    sw = _s(p)
    back = max(0.0, sw)  # throws the head back
    fwd = max(0.0, -sw)  # doubles over
    bob = _s(4 * p)
    q.body_tilt = 10.0 * a * _s(p + 0.25)
    q.body_dx = 5.0 * a * _s(p + 0.25)
    q.squash = 1.0 + 0.05 * a * back - 0.11 * a * fwd + 0.025 * bob
    q.lift = 4.0 * a * max(0.0, bob) * back
    q.head_tilt = 9.0 * a * _s(p + 0.2)
    q.head_dy = -4.0 * a * back + 9.0 * a * fwd + 1.5 * bob
    q.face_dy = -0.08 * back + 0.1 * fwd
    # hand on the belly
    q.ik_r_w = 1.0
    q.ik_r_x = 0.15
    q.ik_r_y = 0.35 + 0.08 * bob
    # the other hand slaps the air / the knee
    q.arm_l_sh = 45 + 70 * a * back
    q.arm_l_el = 35 + 25 * _s(2 * p + 0.2) - 30 * fwd
    q.leg_l_hip = 12.0 + 6 * a * fwd
    q.leg_r_hip = 12.0 + 6 * a * fwd
    q.leg_l_knee = -12 * a * fwd
    q.leg_r_knee = -12 * a * fwd
    q.eye_open = 0.0
    q.eye_curve = 1.0
    q.mouth_open = 0.85 + 0.15 * bob
    q.mouth_smile = 1.0
    q.mouth_width = 1.35
    q.blush = 0.8
    q.brow_raise = 0.08
    return q


def _love(p: float, t: float, a: float) -> Pose:
    q = Pose()
    sw = _s(p)
    q.body_dx = 8.0 * a * sw
    q.body_tilt = 7.0 * a * sw
    q.head_tilt = 12.0 * a * _s(p - 0.06)
    q.squash = 1.0 + 0.02 * _s(2 * p)
    # hands: on the cheeks for part of the loop, clasped on the chest for the rest
    cheek = _smooth(0.5 + 0.9 * _s(p * 0.5 + 0.1))
    q.ik_l_w = 1.0
    q.ik_r_w = 1.0
    q.ik_l_head = cheek
    q.ik_r_head = cheek
    q.ik_l_x = -0.12 * (1 - cheek) - 0.86 * cheek
    q.ik_r_x = 0.12 * (1 - cheek) + 0.86 * cheek
    q.ik_l_y = -0.35 * (1 - cheek) + 0.42 * cheek
    q.ik_r_y = -0.35 * (1 - cheek) + 0.42 * cheek
    # one foot kicked up behind, alternating slowly
    kick = max(0.0, _s(p + 0.1))
    q.leg_r_hip = 4 + 30 * a * kick
    q.leg_r_knee = -85 * a * kick
    q.leg_l_hip = 6.0
    q.eye_heart = 1.0
    q.eye_scale = 1.1
    q.mouth_open = 0.25
    q.mouth_smile = 0.9
    q.mouth_width = 0.9
    q.blush = 1.0
    q.fx_hearts = 1.0
    return q


def _confused(p: float, t: float, a: float) -> Pose:
    q = Pose()
    tl = _s(p)
    q.body_tilt = 5.0 * a * tl
    q.body_dx = 3.0 * a * tl
    q.head_tilt = 16.0 * a * _s(p - 0.05)
    # scratch the head with the right hand
    q.ik_r_w = 1.0
    q.ik_r_head = 1.0
    q.ik_r_x = 0.8 + 0.07 * _s(6 * p)
    q.ik_r_y = -0.68 + 0.07 * _s(6 * p + 0.25)
    # left hand on the hip
    q.ik_l_w = 1.0
    q.ik_l_x = -1.05
    q.ik_l_y = 0.4
    q.leg_l_hip = 8.0
    q.leg_r_hip = 3.0
    q.leg_r_knee = 10.0 * a * max(0.0, tl)
    q.eye_open = 0.95 * _blink(t)
    q.pupil_x = -0.5 * tl
    q.pupil_y = -0.6
    q.brow_asym = 0.7 + 0.2 * tl
    q.brow_raise = 0.04
    q.mouth_wavy = 1.0
    q.mouth_smile = -0.1
    q.mouth_open = 0.0
    q.mouth_width = 1.0
    q.blush = 0.2
    q.fx_question = 1.0
    q.fx_sweat = 0.6
    return q


def _sleepy(p: float, t: float, a: float) -> Pose:
    q = Pose()
    x = _frac(p)
    # head slowly sinks, then jerks back up
    if x < 0.8:
        d = _smooth(x / 0.8)
    else:
        d = 1.0 - _smooth((x - 0.8) / 0.12)
    q.squash = 0.94 + 0.03 * _s(p)
    q.body_tilt = 3.0 * a * _s(p * 0.5) + 4.0 * d
    q.body_dx = 3.0 * a * _s(p * 0.5)
    q.head_tilt = 6.0 + 16.0 * a * d
    q.head_dy = 3.0 + 12.0 * a * d
    q.face_dy = 0.04 + 0.14 * d
    q.arm_l_sh = 14.0
    q.arm_r_sh = 14.0 + 3.0 * d
    q.arm_l_el = -3.0
    q.arm_r_el = -3.0
    q.leg_l_hip = 5.0
    q.leg_r_hip = 5.0
    q.leg_l_knee = 8.0 * d
    q.leg_r_knee = 8.0 * d
    jerk = _bump(x, 0.88, 0.06)
    q.eye_open = 0.35 * jerk
    q.eye_curve = -1.0
    q.brow_angle = -0.2
    q.brow_raise = -0.02
    q.mouth_open = 0.2 + 0.1 * _s(p)
    q.mouth_smile = 0.0
    q.mouth_width = 0.45
    q.blush = 0.35
    q.fx_zzz = 1.0
    return q


_MOTIONS = {
    "idle": _idle,
    "listening": _listening,
    "happy": _happy,
    "excited": _excited,
    "surprised": _surprised,
    "sad": _sad,
    "angry": _angry,
    "laughing": _laughing,
    "love": _love,
    "confused": _confused,
    "sleepy": _sleepy,
}
if set(_MOTIONS) != set(EMOTIONS) or set(PERIODS) != set(EMOTIONS):  # the templates name every emotion
    raise RuntimeError(f"the avatar world moves {sorted(_MOTIONS)}, templates/emotions.json lists {sorted(EMOTIONS)}")


def _raw_pose(emotion: str, t: float, v: MotionVariation) -> Pose:
    p = t * v.tempo / PERIODS[emotion] + v.phase
    q = _MOTIONS[emotion](p, t * v.tempo, float(v.amplitude))
    q.fx_time = t * v.tempo
    return q


def pose_at(emotion: str, t: float, variation: MotionVariation | None = None, intensity: float = 1.0) -> Pose:
    """Pose of ``emotion`` at time ``t`` (seconds).

    ``intensity`` in [0, 1] scales the performance: the body moves
    ``intensity`` of the way from the idle motion to the full motion, the face
    ``0.4 + 0.6 * intensity`` of the way, and effects are scaled by intensity.
    """
    if emotion not in _MOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {EMOTIONS}")
    v = variation if variation is not None else MotionVariation()
    k = min(1.0, max(0.0, float(intensity)))
    full = _raw_pose(emotion, float(t), v)
    if k >= 1.0 or emotion == "idle":
        return full
    base = _raw_pose("idle", float(t), v)
    kf = 0.4 + 0.6 * k
    out = {}
    for n in POSE_FIELDS:
        fv = getattr(full, n)
        if n in _FX_FIELDS:
            out[n] = fv * k
        elif n == "fx_time":
            out[n] = fv
        else:
            w = kf if n in _FACE_FIELDS else k
            out[n] = getattr(base, n) * (1.0 - w) + fv * w
    return Pose(**out)


def emotion_index(emotion: str) -> int:
    try:
        return EMOTION_INDEX[emotion]
    except KeyError:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {EMOTIONS}") from None
