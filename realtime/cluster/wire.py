"""What travels between the gateway and an engine replica for one chunk.

A request carries the stream state itself (the latent context and the rng: tens of kB), and the
reply carries the frames and the advanced state, so a replica keeps nothing a session needs: when
one dies, the next chunk continues on another replica from the last state the gateway holds.
Times cross as durations, never as monotonic stamps: clocks of two machines do not compare.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StartStream:
    """A new stream, made on the replica by its own engine: `engine.start_stream(*args, **kwargs)`."""

    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkCall:
    session_id: str
    state: Any  # engines' StreamState, or StartStream
    due_in_s: float  # seconds from sending until the chunk's first frame is due
    emotion: str
    intensity: float


@dataclass(frozen=True)
class ChunkReply:
    frames: np.ndarray  # (T, 360, 640, 4) uint8 RGBA
    state: Any  # the stream state after this chunk
    replica: str  # the replica's Ray actor name (stable while it lives; a restarted replica has a new one)
    queued_s: float  # on the replica: waiting for a batch
    sample_s: float  # the batch's sampler run
    decode_s: float  # the batch's decode
    batch: int  # streams in the batch
    batch_started: float  # replica-monotonic start of the batch: with `replica`, names the batch
    full_quality: bool  # ran at the engine's own steps and resolution (a cost admission control may use)
    lowres: bool = False


def start_spec(state: Any, engine: Any) -> StartStream | None:
    """A StartStream for `functools.partial(engine.start_stream, ...)` (how sessions open a stream), else None."""
    if not isinstance(state, functools.partial):
        return None
    fn = state.func
    if getattr(fn, "__self__", None) is not engine or getattr(fn, "__name__", "") != "start_stream":
        return None
    return StartStream(tuple(state.args), dict(state.keywords))
