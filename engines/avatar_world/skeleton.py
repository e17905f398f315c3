"""A frame's motion as a short vector: where the avatar's parts are, and what its face and effects do.

This is the latent of the `tiny` engine's third architecture (engines/tiny/motion.py): a decoder
that moves the avatar's reference frame part by part (as warping-based talking-head models do)
needs to know where each part is, and a denoiser that generates 80 numbers a frame can commit to
one sharp motion where one that generates an image latent blurs over its uncertainty
(docs/training/motion.md says why). The vector is read off the renderer's rig, so it labels
training frames exactly; at serving time it is the denoiser that generates it.

Layout (``MOTION_DIM`` floats):
* ``KEYPOINTS`` points, (x, y) each, in the model window's normalized coordinates (grid_sample's,
  align_corners=False: -1 and 1 are the window's outer edges);
* ``FACE_FIELDS`` and ``FX_FIELDS``: the pose's face and effect fields as they are;
* the effects' clock as sin/cos at each frequency the renderer's effects move at.

A part (``PARTS``) moves rigidly with two of the keypoints (a similarity: rotation, scale,
translation) or three (an affine map, for the torso's squash).
"""

from __future__ import annotations

import math

import numpy as np

from avatarcast.vocabulary import FRAME_HEIGHT, FRAME_WIDTH

from .avatars import AvatarParams, get_avatar
from .motions import Pose
from .render import GROUND_Y, REF_H, _rig

KEYPOINTS: tuple[str, ...] = (
    "pelvis",
    "torso_centre",
    "torso_side",  # the torso's centre moved by its half width along its own x axis: the squash
    "head_centre",
    "head_up",  # one head radius above the centre, along the head's own axis
    "face",  # where the face's features are centred (a head turn shifts them)
    "face_up",
    "shoulder_l",
    "shoulder_r",
    "elbow_l",
    "elbow_r",
    "hand_l",
    "hand_r",
    "hip_l",
    "hip_r",
    "knee_l",
    "knee_r",
    "ankle_l",
    "ankle_r",
    "ground",  # under the pelvis on the ground line: the contact shadow
    "ground_side",  # the shadow's half width along the ground
)
_K = {n: i for i, n in enumerate(KEYPOINTS)}

# The limbs' bones (keypoint pairs of fixed length on an avatar): how training and the evals check that sampled
# keypoints keep the avatar's proportions.
LIMB_BONES: tuple[tuple[str, str], ...] = (
    ("shoulder_l", "elbow_l"), ("elbow_l", "hand_l"), ("shoulder_r", "elbow_r"), ("elbow_r", "hand_r"),
    ("hip_l", "knee_l"), ("knee_l", "ankle_l"), ("hip_r", "knee_r"), ("knee_r", "ankle_r"),
)  # fmt: skip

# Each part: the keypoints it moves with (2: similarity, 3: affine). The last part, "still", does not
# move: effects and anything the decoder draws fresh.
PARTS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("torso", (_K["torso_centre"], _K["torso_side"], _K["pelvis"])),
    ("head", (_K["head_centre"], _K["head_up"])),
    ("face", (_K["face"], _K["face_up"])),
    ("upper_arm_l", (_K["shoulder_l"], _K["elbow_l"])),
    ("upper_arm_r", (_K["shoulder_r"], _K["elbow_r"])),
    ("forearm_l", (_K["elbow_l"], _K["hand_l"])),
    ("forearm_r", (_K["elbow_r"], _K["hand_r"])),
    ("thigh_l", (_K["hip_l"], _K["knee_l"])),
    ("thigh_r", (_K["hip_r"], _K["knee_r"])),
    ("shin_l", (_K["knee_l"], _K["ankle_l"])),
    ("shin_r", (_K["knee_r"], _K["ankle_r"])),
    ("ground", (_K["ground"], _K["ground_side"])),
    ("still", ()),
)

FACE_FIELDS: tuple[str, ...] = (
    "face_dx",
    "face_dy",
    "eye_open",
    "eye_scale",
    "eye_curve",
    "eye_heart",
    "pupil_x",
    "pupil_y",
    "brow_angle",
    "brow_raise",
    "brow_asym",
    "mouth_open",
    "mouth_smile",
    "mouth_width",
    "mouth_wavy",
    "mouth_teeth",
    "blush",
    "face_red",
)
FX_FIELDS: tuple[str, ...] = (
    "fx_hearts",
    "fx_tears",
    "fx_zzz",
    "fx_question",
    "fx_steam",
    "fx_sparkles",
    "fx_sweat",
    "fx_exclaim",
)
# cycles per second of fx_time at which render._draw_effects moves its particles
FX_FREQUENCIES: tuple[float, ...] = (1.3, 1.0 / 1.8, 1.1, 0.6, 1.0 / 2.2, 0.8, 1.4)
# Each effect as render._draw_effects places it: the keypoint it is drawn around, the keypoint above it when
# it turns with the head (None: placed in screen space, so only the anchor's move moves it), and which of
# the frequencies above its particles move at (None: still). fx_question also wobbles at 1.1 Hz, a few
# pixels; the anger mark of fx_steam turns with the head, its puffs do not (the puffs are most of it).
FX_LAYOUT: dict[str, tuple[str, str | None, int | None]] = {
    "fx_sparkles": ("torso_centre", None, 0),
    "fx_hearts": ("head_centre", None, 1),
    "fx_tears": ("face", "face_up", 2),
    "fx_sweat": ("head_centre", "head_up", 3),
    "fx_exclaim": ("head_centre", None, None),
    "fx_zzz": ("head_centre", None, 4),
    "fx_question": ("head_centre", None, 5),
    "fx_steam": ("head_centre", None, 6),
}

N_POINTS = len(KEYPOINTS)
EXPR_OFFSET = 2 * N_POINTS
EXPR_DIM = len(FACE_FIELDS) + len(FX_FIELDS) + 2 * len(FX_FREQUENCIES)
MOTION_DIM = EXPR_OFFSET + EXPR_DIM


def _unit(dx: float, dy: float) -> tuple[float, float]:
    n = math.hypot(dx, dy) or 1.0
    return dx / n, dy / n


def keypoints_px(avatar: AvatarParams, pose: Pose, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> np.ndarray:
    """(N_POINTS, 2) keypoints of ``render_frame(avatar, pose)`` in frame pixels (x right, y down)."""
    rig = _rig(get_avatar(avatar), pose, width, height)
    k = height / REF_H
    tr = math.radians(rig.tilt)
    side = (rig.tc[0] + rig.ta * math.cos(tr), rig.tc[1] + rig.ta * math.sin(tr))
    ha = math.radians(rig.head_ang)
    up = (math.sin(ha), -math.cos(ha))  # the head's (0, -1), rotated as render._Head turns it
    r = rig.head_r
    head_up = (rig.head_c[0] + up[0] * r, rig.head_c[1] + up[1] * r)
    # the face's offset exactly as render._draw_face clamps it, in head radii along the head's axes
    fx, fy = max(-0.3, min(0.3, pose.face_dx)), max(-0.25, min(0.3, pose.face_dy))
    c, s = math.cos(ha), math.sin(ha)
    face = (rig.head_c[0] + (fx * c - fy * s) * r, rig.head_c[1] + (fx * s + fy * c) * r)
    face_up = (face[0] + up[0] * r, face[1] + up[1] * r)
    # the contact shadow of render_frame: its centre and half width
    lift = max(0.0, GROUND_Y * k - max(rig.ankles[0][1], rig.ankles[1][1]) - 13.0 * rig.g)
    sh = max(0.45, 1.0 - lift / (110.0 * k))
    ground = (rig.P[0], GROUND_Y * k + 1.0 * rig.g)
    ground_side = (ground[0] + (rig.ta + 18.0 * rig.g) * sh, ground[1])
    pts = {
        "pelvis": rig.P,
        "torso_centre": rig.tc,
        "torso_side": side,
        "head_centre": rig.head_c,
        "head_up": head_up,
        "face": face,
        "face_up": face_up,
        "shoulder_l": rig.shoulders[0],
        "shoulder_r": rig.shoulders[1],
        "elbow_l": rig.elbows[0],
        "elbow_r": rig.elbows[1],
        "hand_l": rig.hands[0],
        "hand_r": rig.hands[1],
        "hip_l": rig.hips[0],
        "hip_r": rig.hips[1],
        "knee_l": rig.knees[0],
        "knee_r": rig.knees[1],
        "ankle_l": rig.ankles[0],
        "ankle_r": rig.ankles[1],
        "ground": ground,
        "ground_side": ground_side,
    }
    return np.array([pts[n] for n in KEYPOINTS], dtype=np.float64)


def to_window(points_px: np.ndarray, window_x0: int, window_width: int, pad_top: int, pad_height: int) -> np.ndarray:
    """Frame pixels -> the window's normalized coordinates (pixel edges at -1 and 1, align_corners=False)."""
    out = np.empty_like(points_px, dtype=np.float64)
    out[..., 0] = 2.0 * (points_px[..., 0] - window_x0) / window_width - 1.0
    out[..., 1] = 2.0 * (points_px[..., 1] + pad_top) / pad_height - 1.0
    return out


def expression(pose: Pose) -> np.ndarray:
    """(EXPR_DIM,) the pose's face and effect fields and the effects' clock."""
    face = [getattr(pose, n) for n in FACE_FIELDS]
    fx = [getattr(pose, n) for n in FX_FIELDS]
    clock = []
    for f in FX_FREQUENCIES:
        a = 2.0 * math.pi * f * pose.fx_time
        clock += [math.sin(a), math.cos(a)]
    return np.array(face + fx + clock, dtype=np.float64)


def motion_vector(avatar, pose: Pose, window_x0: int, window_width: int, pad_top: int, pad_height: int) -> np.ndarray:
    """(MOTION_DIM,) float32: the frame's keypoints in window coordinates, then its expression."""
    kp = to_window(keypoints_px(avatar, pose), window_x0, window_width, pad_top, pad_height)
    return np.concatenate([kp.reshape(-1), expression(pose)]).astype(np.float32)
