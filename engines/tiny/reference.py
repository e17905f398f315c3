"""The avatar's reference frame: the identity the denoiser is conditioned on."""

from __future__ import annotations

import numpy as np


def reference_frame(avatar) -> np.ndarray:
    """The avatar standing at rest (idle, t=0, neutral variation), RGBA uint8 (360, 640, 4)."""
    from tools.avatar_world import MotionVariation, get_avatar, pose_at, render_frame
    return render_frame(get_avatar(avatar), pose_at("idle", 0.0, MotionVariation(1.0, 1.0, 0.0), 0.5))
