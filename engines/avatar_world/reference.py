"""The avatar's reference frames: the identity an engine is conditioned on."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .avatars import get_avatar
from .motions import MotionVariation, Pose, pose_at
from .render import render_frame


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
    """The canonical frame with each emotion's typical face and effects (expression_faces, and the effects'
    median strengths: the "!" of surprised, the hearts of love, ...) at the canonical pose's effect clock, RGBA
    uint8 (K, 360, 640, 4): what architecture 3 copies expressions and effects from. Outside the face and the
    effects they are the canonical frame."""
    from .skeleton import FX_FIELDS

    av = get_avatar(avatar)
    canon = canonical_pose()
    return np.stack(
        [
            render_frame(av, dataclasses.replace(canon, **face, **{f: _typical(emotion)[f] for f in FX_FIELDS}))
            for emotion, face in expression_faces()
        ]
    )
