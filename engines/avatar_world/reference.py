"""The avatar's reference frames: the identity an engine is conditioned on."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .avatars import get_avatar
from .motions import MotionVariation, Pose, pose_at
from .render import effects_top, render_effects, render_frame


def rest_pose() -> Pose:
    """Idle at t=0, neutral variation, half intensity: how a stream stands before it reacts."""
    return pose_at("idle", 0.0, MotionVariation(1.0, 1.0, 0.0), 0.5)


def reference_frame(avatar) -> np.ndarray:
    """The avatar standing at rest, RGBA uint8 (360, 640, 4): architectures 1 and 2 condition on it."""
    return render_frame(get_avatar(avatar), rest_pose())


def canonical_pose() -> Pose:
    """The rest pose with the arms held out and the feet apart: nothing in front of the torso or the legs.

    Architecture 3 (engines/tiny/motion.py) draws a frame by moving this frame's parts, and it can only
    copy what this frame shows: at rest the arms hide the torso's sides, so a raised arm would uncover
    pixels the decoder must invent.
    """
    return dataclasses.replace(
        rest_pose(), arm_l_sh=80.0, arm_l_el=0.0, arm_r_sh=80.0, arm_r_el=0.0, leg_l_hip=9.0, leg_r_hip=9.0
    )


def canonical_frame(avatar) -> np.ndarray:
    """The avatar in canonical_pose, RGBA uint8 (360, 640, 4): what architecture 3 copies from."""
    return render_frame(get_avatar(avatar), canonical_pose())


@functools.cache
def _typical(emotion: str) -> dict[str, float]:
    """The median of each face and effect field over four seconds of the emotion at full intensity: the face
    and effects the emotion holds, without its brief blinks and talking (computed once per emotion)."""
    from .skeleton import FACE_FIELDS, FX_FIELDS

    poses = [pose_at(emotion, float(t), MotionVariation(1.0, 1.0, 0.0), 1.0) for t in np.arange(0.0, 4.0, 0.05)]
    return {f: float(np.median([getattr(q, f) for q in poses])) for f in FACE_FIELDS + FX_FIELDS}


def expression_faces() -> tuple[tuple[str, dict[str, float]], ...]:
    """Each emotion's typical face fields, placed where the canonical face is (face_dx, face_dy: the face
    keypoints move it). Architecture 3's expression atlas is keyed on them."""
    from avatarcast.vocabulary import EMOTIONS

    from .skeleton import FACE_FIELDS

    canon = canonical_pose()
    out = []
    for emotion in EMOTIONS:
        face = {f: _typical(emotion)[f] for f in FACE_FIELDS}
        face["face_dx"], face["face_dy"] = canon.face_dx, canon.face_dy
        out.append((emotion, face))
    return tuple(out)


def atlas_frames(avatar) -> np.ndarray:
    """The canonical frame with each emotion's typical face (expression_faces), RGBA uint8 (K, 360, 640, 4):
    what architecture 3 copies expressions from. Outside the face they are the canonical frame. The effects
    are not in it: they move on their own clocks, and effect_sprites draws them at the frame's phase."""
    av = get_avatar(avatar)
    canon = canonical_pose()
    return np.stack([render_frame(av, dataclasses.replace(canon, **face)) for _, face in expression_faces()])


@dataclasses.dataclass(frozen=True)
class EffectSprites:
    """An avatar's effects (skeleton.FX_LAYOUT, in drawing order) at a few strengths, each at `phases` points of
    its clock: what architecture 3 lays over its frames. The motion picks the picture (the nearest strength,
    the clock's phase) and places it (its anchor keypoint's move, and the head's turn for effects that turn).

    crops[e]: (len(STRENGTHS), phases, h, w, 4) uint8 straight-alpha RGBA (one phase for a still effect), the
    effect's pixels inside the box whose first pixel is boxes[e] = (row, column) of the frame; anchors[e]:
    the anchor keypoint's frame pixels (x, y) in the pose they were drawn at; angles[e]: the direction
    (radians) from the anchor to its "up" keypoint there (0 for effects that do not turn)."""

    names: tuple[str, ...]
    crops: tuple[np.ndarray, ...]
    boxes: tuple[tuple[int, int], ...]
    anchors: tuple[tuple[float, float], ...]
    angles: tuple[float, ...]
    top: float  # render.effects_top: no particle is drawn above this row, wherever the avatar is


# Strengths the sprites are drawn at: an effect's size grows with its strength (by 0.6x-1x between the
# renderer's threshold and 1), so the nearest of three is within a few per cent of the size asked for.
STRENGTHS: tuple[float, ...] = (0.4, 0.7, 1.0)


# How much lower than the canonical pose's the sprites are drawn: near the frame's top the renderer skips
# the particles that would cross effects_top, and a sprite drawn where the head stands at rest would lack
# the ones a lower head (crouching, dancing) shows. Placed, a sprite is cut at effects_top instead.
SPRITES_LOWER = 60.0


def effect_sprites(avatar, phases: int = 12) -> EffectSprites:
    from .skeleton import FX_FIELDS, FX_FREQUENCIES, FX_LAYOUT, KEYPOINTS, keypoints_px

    av = get_avatar(avatar)
    base = dataclasses.replace(canonical_pose(), **{f: 0.0 for f in FX_FIELDS})
    kp = keypoints_px(av, base) + np.array([0.0, SPRITES_LOWER])
    crops, boxes, anchors, angles = [], [], [], []
    for name, (anchor, up, clock) in FX_LAYOUT.items():
        times = [0.0] if clock is None else [j / (phases * FX_FREQUENCIES[clock]) for j in range(phases)]
        pics = np.stack(
            [
                np.stack(
                    [
                        render_effects(av, dataclasses.replace(base, **{name: s}, fx_time=t), lower=SPRITES_LOWER)
                        for t in times
                    ]
                )
                for s in STRENGTHS
            ]
        )
        ys, xs = np.nonzero(pics[..., 3].max((0, 1)))
        if len(ys) == 0:  # drawn off the frame: nothing to lay over
            y0 = x0 = y1 = x1 = 0
        else:
            y0, x0, y1, x1 = int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1
        crops.append(np.ascontiguousarray(pics[:, :, y0:y1, x0:x1]))
        boxes.append((y0, x0))
        a = kp[KEYPOINTS.index(anchor)]
        anchors.append((float(a[0]), float(a[1])))
        d = kp[KEYPOINTS.index(up)] - a if up else None
        angles.append(0.0 if d is None else float(np.arctan2(d[1], d[0])))
    top = effects_top(av, base)
    return EffectSprites(tuple(FX_LAYOUT), tuple(crops), tuple(boxes), tuple(anchors), tuple(angles), top)
