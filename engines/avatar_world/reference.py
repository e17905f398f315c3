"""The avatar's reference frame: the identity an engine is conditioned on."""

from __future__ import annotations

import numpy as np

from .avatars import get_avatar
from .motions import MotionVariation, pose_at
from .render import render_frame


def reference_frame(avatar) -> np.ndarray:
    """The avatar standing at rest (idle, t=0, neutral variation), RGBA uint8 (360, 640, 4)."""
    return render_frame(get_avatar(avatar), pose_at("idle", 0.0, MotionVariation(1.0, 1.0, 0.0), 0.5))
