"""The words every part of avatarcast shares, in one home: the emotions, the video's rate, size and time
base, what a frame can show, and the image formats on the wire.

The emotion list is templates/emotions.json's, in file order; that order is also the wire's emotion
index (realtime/protocol.py) and the order the tiny engine's weights were trained on (checked when the
manifest loads). Nothing here does I/O beyond reading that file once.
"""

from __future__ import annotations

from enum import StrEnum
from fractions import Fraction

from avatarcast.templates import load_templates

EMOTIONS: tuple[str, ...] = tuple(load_templates())

FPS = 8  # frames per second of every stream, clip and training sequence
FRAME_S = 1 / FPS  # seconds per frame
TIME_BASE = Fraction(1, FPS)  # pts unit: one frame
FRAME_WIDTH = 640
FRAME_HEIGHT = 360
FRAME_SHAPE = (FRAME_HEIGHT, FRAME_WIDTH, 4)  # one frame: uint8 RGBA, straight alpha


class FrameSource(StrEnum):
    """What a frame shows, in wire order (the frame header's source byte is the index)."""

    IDLE = "idle"  # the avatar's idle loop
    LISTENING = "listening"  # the listening loop (speech going on, or the emotion not known yet)
    CACHE = "cache"  # a reaction's first chunk, from the latents cache
    SAMPLER = "sampler"  # a reaction's chunk made by the engine


FRAME_SOURCES: tuple[str, ...] = tuple(s.value for s in FrameSource)
REACTION_SOURCES: tuple[str, ...] = (FrameSource.CACHE.value, FrameSource.SAMPLER.value)

# the avatar a request or a server start that names none gets (engines/avatar_world's first built-in)
DEFAULT_AVATAR = "pip"

# image format -> its code in the frame header; jpeg is composited over the background, webp keeps alpha
IMAGE_FORMATS: dict[str, int] = {"jpeg": 1, "webp": 2}

__all__ = [
    "DEFAULT_AVATAR",
    "EMOTIONS",
    "FPS",
    "FRAME_HEIGHT",
    "FRAME_S",
    "FRAME_SHAPE",
    "FRAME_SOURCES",
    "FRAME_WIDTH",
    "IMAGE_FORMATS",
    "REACTION_SOURCES",
    "TIME_BASE",
    "FrameSource",
]
