"""The avatar world: a procedural cartoon-avatar renderer and dataset writer.

Public API::

    EMOTIONS, AvatarParams, BUILTIN_AVATARS, random_avatar, get_avatar,
    MotionVariation, sample_variation, Pose, pose_at, blend_poses,
    render_frame, render_sequence, render_clip,
    write_dataset, iter_shards, DATA_VERSION
"""

from .avatars import BUILTIN_AVATARS, AvatarParams, get_avatar, random_avatar
from .motions import EMOTIONS, MotionVariation, Pose, blend_poses, pose_at, sample_variation
from .render import render_clip, render_frame, render_sequence

_LAZY = {"write_dataset", "iter_shards", "DATA_VERSION"}


def __getattr__(name):
    # the dataset module is loaded on first use, so `python -m tools.avatar_world.dataset` runs cleanly
    if name in _LAZY:
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EMOTIONS", "AvatarParams", "BUILTIN_AVATARS", "random_avatar", "get_avatar",
    "MotionVariation", "sample_variation", "Pose", "pose_at", "blend_poses",
    "render_frame", "render_sequence", "render_clip",
    "write_dataset", "iter_shards", "DATA_VERSION",
]
