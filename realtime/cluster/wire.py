"""What travels between the gateway and an engine replica for one chunk.

A request carries the stream state itself (the latent context and the rng: tens of kB), and the
reply carries the frames and the advanced state, so a replica keeps nothing a session needs: when
one dies, the next chunk continues on another replica from the last state the gateway holds.
Times cross as durations, never as monotonic stamps: clocks of two machines do not compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatarcast.engines.contract import StreamStart, StreamState


@dataclass(frozen=True)
class ChunkCall:
    session_id: str
    state: StreamState | StreamStart  # a StreamStart is made on the replica by its own engine
    due_in_s: float  # seconds from sending until the chunk's first frame is due
    emotion: str
    intensity: float


@dataclass(frozen=True)
class ChunkReply:
    frames: np.ndarray  # (T, 360, 640, 4) uint8 RGBA
    state: StreamState  # the stream state after this chunk
    replica: str  # the replica's Ray actor name (stable while it lives; a restarted replica has a new one)
    queued_s: float  # on the replica: waiting for a batch
    sample_s: float  # the batch's sampler run
    decode_s: float  # the batch's decode
    batch: int  # streams in the batch
    batch_started: float  # replica-monotonic start of the batch: with `replica`, names the batch
    full_quality: bool  # ran at the engine's own steps and decode (a cost admission control may use)
    cheaper: bool = False  # decoded the engine's cheaper way (the ladder's cheaper_decode rung)
