"""The avatar's reference frames: the identity an engine is conditioned on."""

from __future__ import annotations

import dataclasses

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
