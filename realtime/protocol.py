"""The WebSocket wire format, shared by the server, the bench client and the tests.

Server -> client
- binary: one video frame = a 28-byte header + the image (JPEG, or WebP with alpha):
  magic b"AVF1", u32 frame index, f64 pts in seconds since the stream began, f64 the server's
  wall-clock send time (unix seconds), u8 image format (1 jpeg, 2 webp), u8 frame source
  (0 idle, 1 listening, 2 cache, 3 sampler), u8 emotion index (into `EMOTIONS`: templates/emotions.json's
  order), u8 reserved. The codes and the emotion list live in avatarcast/vocabulary.py.
- text: a JSON event {"type", "t", "seq", "payload"} (hello, state_changed, transcript_partial,
  transcript_final (both with the language ASR heard), emotion, latency, frames_late, clip, language
  (the session's ASR language after a language command; null: auto), error, and closing: the server
  is shutting down, the socket closes with 1001 next).

Client -> server
- binary: a 4-byte tag then data: b"PCM1" + 16 kHz mono little-endian int16 samples (live
  audio; any length), or b"CLIP" + one whole audio file (wav, mp3, ogg/opus, webm, m4a, ...).
- text: JSON {"type": "say", "text"} | {"type": "emotion", "label", "intensity"} |
  {"type": "audio_end"} (the live stream paused: close an open utterance now) |
  {"type": "language", "language"} (auto, en, zh, ...: the next utterances' language) | {"type": "ping"}.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from avatarcast.vocabulary import EMOTIONS, FRAME_SOURCES, IMAGE_FORMATS, FrameSource

__all__ = [
    "EMOTIONS",
    "FRAME_HEADER",
    "FRAME_SOURCES",
    "FrameHeader",
    "FrameSource",
    "IMAGE_FORMATS",
    "TAG_CLIP",
    "TAG_PCM",
    "pack_frame",
    "unpack_frame",
]

FRAME_MAGIC = b"AVF1"
FRAME_HEADER = struct.Struct("<4sIddBBBx")
TAG_PCM = b"PCM1"
TAG_CLIP = b"CLIP"
assert FRAME_HEADER.size == 28


@dataclass(frozen=True)
class FrameHeader:
    index: int
    pts_s: float
    sent_at: float
    image_format: str
    source: str
    emotion: str


def pack_frame(
    index: int, pts_s: float, sent_at: float, image_format: str, source: str, emotion: str, image: bytes
) -> bytes:
    """Header + image bytes, ready for one binary WebSocket message."""
    head = FRAME_HEADER.pack(
        FRAME_MAGIC,
        index & 0xFFFFFFFF,
        pts_s,
        sent_at,
        IMAGE_FORMATS[image_format],
        FRAME_SOURCES.index(source),
        EMOTIONS.index(emotion),
    )
    return head + image


def unpack_frame(msg: bytes | bytearray) -> tuple[FrameHeader, bytes]:
    """Inverse of pack_frame; ValueError on anything that is not a frame message."""
    if len(msg) < FRAME_HEADER.size or msg[:4] != FRAME_MAGIC:
        raise ValueError("not an avatarcast frame message (bad magic or too short)")
    magic, index, pts, sent, fmt, src, emo = FRAME_HEADER.unpack_from(msg)
    fmts = {v: k for k, v in IMAGE_FORMATS.items()}
    if fmt not in fmts or src >= len(FRAME_SOURCES) or emo >= len(EMOTIONS):
        raise ValueError("frame header has an unknown format, source or emotion")
    return FrameHeader(index, pts, sent, fmts[fmt], FRAME_SOURCES[src], EMOTIONS[emo]), bytes(msg[FRAME_HEADER.size :])
