"""The avatar world: the procedural cartoon avatars the `tiny` engine learned from.

Avatar parameters and the built-in and parametric avatars (avatars.py), their motions per
emotion (motions.py), the renderer (render.py) and the reference frame an engine is
conditioned on (reference.py). Shipped, because serving needs the avatars and their reference
frames, and `avatarcast render --renderer` draws with it; the dataset writer and the previews
are offline work in tools/avatar_world.
"""

from avatarcast.vocabulary import EMOTIONS

from .avatars import BUILTIN_AVATARS, AvatarParams, get_avatar, random_avatar
from .motions import MotionVariation, Pose, blend_poses, pose_at, sample_variation
from .reference import reference_frame
from .render import render_clip, render_frame, render_sequence

__all__ = [
    "EMOTIONS",
    "AvatarParams",
    "BUILTIN_AVATARS",
    "random_avatar",
    "get_avatar",
    "MotionVariation",
    "sample_variation",
    "Pose",
    "pose_at",
    "blend_poses",
    "render_frame",
    "render_sequence",
    "render_clip",
    "reference_frame",
]
