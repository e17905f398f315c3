"""The engine contract: what the server's scheduler, latents cache and sessions may ask of an engine.

An engine turns (avatar, emotion cue, previous latents) into the next chunk of 640x360 RGBA frames,
for a batch of streams per call. Callers read `capabilities` once instead of probing attributes;
the tiny engine (engines/tiny/engine.py) and the wan engine's serving adapter (engines/wan/serving.py)
implement `StreamEngine`. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, Self

import numpy as np


class CheaperDecode(StrEnum):
    """A cheaper way an engine can turn sampled latents into frames: the degradation ladder's rung 2
    (realtime/ladder.py). The stream's latents, and so its pose, stay the same; only the picture costs less."""

    HALF_RESOLUTION = "half_resolution"  # tiny: a decoder at 320x180, upscaled inside its graph (about 4x cheaper)
    COPY_DRAW = "copy_draw"  # motion's residual draw: the copy-only decoder, without the generator's correction


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine can do; its callers (scheduler, ladder, latents cache, Hub) read it once."""

    frames_per_chunk: int  # video frames one engine call adds to each stream
    max_batch: int = 8  # most streams one engine call serves (the scheduler's batch)
    pipeline_depth: int = 1  # engine calls the scheduler may keep in flight (launch_chunks)
    per_stream_decode: bool = False  # decode_chunks continues each stream's video (the state holds a decoder cache)
    cheaper_decode: CheaperDecode | None = None  # what decode_chunks(..., cheaper=True) runs; None: no cheaper decode
    # sample_chunks(..., steps=fewer) makes a chunk markedly cheaper: the degradation ladder's rung 1 (fewer_steps).
    # False where the sampler is a sliver of a chunk's cost (the motion engine's capabilities say how thin): the
    # ladder then skips that rung, which would only delay the next useful one under load
    fewer_steps_cheaper: bool = True
    # prepared avatars can be handed over (PrepEngineSource): the Hub prepares clients' new avatars in a process of
    # their own and gives this engine what it prepared there (realtime/prep.py)
    shared_prep: bool = False


@dataclass(frozen=True)
class StreamStart:
    """A stream still to be made: `engine.start_stream(avatar, emotion, intensity, seed)`, called where the
    engine runs (its thread, or a Ray replica), since a new stream's reference latent is engine work."""

    avatar: Any  # an avatar index, name or AvatarParams
    emotion: str
    intensity: float
    seed: int = 0


class PrepEngineSource(Protocol):
    """An engine that declares `shared_prep`: its per-avatar work (a reference encoded, an atlas rendered) can be
    done by another copy of it, in another process, and handed over as plain arrays."""

    def prepared_avatar(self, avatar: Any) -> tuple[str, Any]:
        """(key, what this engine keeps of the avatar), prepared here if it was not: picklable."""
        ...

    def adopt_avatar(self, key: str, prepared: Any) -> None:
        """Keep another copy's prepared_avatar(), as if prepared here."""
        ...

    def release_avatar(self, avatar: Any) -> None:
        """Drop this engine's prepared copy of the avatar (the preparing copy, once the live one holds it)."""
        ...


class LatentShapes(Protocol):
    """The shapes the latents cache checks stored entries against (read-only)."""

    @property
    def chunk_frames(self) -> int: ...  # latent frames per chunk

    @property
    def latent_channels(self) -> int: ...

    @property
    def context_frames(self) -> int: ...  # latent frames of context

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def latent_hw(self) -> tuple[int, int]: ...


class StreamState(Protocol):
    """Everything one avatar stream carries between chunks; only its engine reads the rest."""

    avatar_key: str
    frames_done: int
    meta: dict

    @property
    def ctx(self) -> np.ndarray:
        """The context as the latents cache stores it: (K*C, h, w) float32."""
        ...

    def copy(self) -> Self:
        """A twin the engine can advance without touching this one (its noise generator included)."""
        ...


class PendingFrames(Protocol):
    """One engine call's frames on their way to host memory (StreamEngine.launch_chunks)."""

    gpu_s: tuple[float, float] | None  # after wait(): device seconds from start / from sampled to done

    def wait(self) -> list[np.ndarray]:
        """Block until the frames are ready; one (T, 360, 640, 4) uint8 array per stream."""
        ...


@dataclass
class ReadyFrames:
    """PendingFrames that were ready at once (an engine with nothing to overlap)."""

    frames: list[np.ndarray]
    gpu_s: tuple[float, float] | None = None

    def wait(self) -> list[np.ndarray]:
        return self.frames


class StreamEngine(Protocol):
    """Streams of avatar frames, generated chunk by chunk, batched across streams.

    Not re-entrant: one thread calls it (the scheduler's engine thread). Emotions are named by the
    templates (templates/emotions.json); avatars are given as index, name or AvatarParams.
    """

    steps: int  # sampler steps of a call at full quality (the latents cache keys on it)

    @property
    def capabilities(self) -> EngineCapabilities: ...

    @property
    def emotions(self) -> tuple[str, ...]: ...

    @property
    def weights_hash(self) -> str:
        """Everything but `steps` that shapes a chunk: the latents cache keys on it."""
        ...

    @property
    def cfg(self) -> LatentShapes: ...

    @property
    def graphs_ready(self) -> bool | None:
        """None: nothing compiles; False while graphs compile in the background (frames are slower)."""
        ...

    def emotion_index(self, emotion: str | int) -> int:
        """Raises:
        ValueError: an emotion the engine does not know."""
        ...

    def start_stream(
        self,
        avatar: Any,
        emotion: str | int = "idle",
        intensity: float = 1.0,
        seed: int = 0,
        ctx: np.ndarray | None = None,
    ) -> StreamState:
        """A new stream at rest, or continuing a cached context `ctx` (K*C, h, w)."""
        ...

    def set_emotion(self, state: Any, emotion: str | int, intensity: float | None = None) -> None: ...

    def sample_chunks(self, states: list[Any], steps: int | None = None) -> np.ndarray:
        """One sampler run for every stream: latents (B, T, C, h, w); advances each state.

        Args:
            states: the streams of this call, advanced in place.
            steps: sampler steps for this call only (the degradation ladder); None: `self.steps`.
        """
        ...

    def decode_chunks(self, states: list[Any], latents: np.ndarray, cheaper: bool = False) -> np.ndarray:
        """Each stream's newest latents (B, T, C, h, w) -> its frames (B, frames_per_chunk, 360, 640, 4) uint8.

        Args:
            cheaper: decode the engine's cheaper way, `capabilities.cheaper_decode`.

        Raises:
            ValueError: `cheaper` where `capabilities.cheaper_decode` is None.
        """
        ...

    def launch_chunks(self, states: list[Any], steps: int | None = None) -> PendingFrames:
        """Queue one call's sampling and decode and return at once (`capabilities.pipeline_depth` > 1)."""
        ...

    def next_chunk(self, states: list[Any]) -> list[np.ndarray]:
        """sample_chunks then decode_chunks: the next chunk's frames of each stream."""
        ...


__all__ = [
    "CheaperDecode",
    "EngineCapabilities",
    "LatentShapes",
    "PendingFrames",
    "ReadyFrames",
    "StreamEngine",
    "StreamStart",
    "StreamState",
]
