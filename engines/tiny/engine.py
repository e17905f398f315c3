"""The `tiny` engine: streams of avatar frames, generated chunk by chunk, batched across streams.

A stream keeps its last K latent frames; each call to `sample_chunks` runs the few-step
sampler once for a whole batch of streams and appends T new latent frames to each. The
emotion can change between chunks: the next chunk starts from the previous frames, so the
avatar moves into the new emotion instead of cutting to it.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from avatarcast.engines.backends import create_backend
from avatarcast.engines.backends.base import TinyBackend
from avatarcast.engines.contract import CheaperDecode, EngineCapabilities, ReadyFrames
from avatarcast.engines.sampler import ShortcutFlowSampler
from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.engines.tiny.weights import Manifest, load_manifest


@dataclass
class StreamState:
    """Everything one avatar stream carries between chunks."""

    avatar_key: str
    ref: np.ndarray  # (C, H, W) reference latent
    ctx: np.ndarray  # (K*C, H, W) latents of the last K frames
    emotion: int
    intensity: float
    rng: np.random.Generator
    frames_done: int = 0
    meta: dict = field(default_factory=dict)

    def copy(self) -> Self:
        """A twin to advance on its own: arrays shared (the engine replaces them, never writes into them),
        the noise generator and meta copied."""
        new = copy.copy(self)
        new.rng = copy.deepcopy(self.rng)
        new.meta = dict(self.meta)
        return new


def emotion_index(emotions: tuple[str, ...], emotion: str | int) -> int:
    """An emotion's row in an engine's `emotions`, by name or index. ValueError for one it does not know."""
    if isinstance(emotion, (int, np.integer)):
        if not 0 <= int(emotion) < len(emotions):
            raise ValueError(f"emotion index {emotion} out of range 0..{len(emotions) - 1}")
        return int(emotion)
    try:
        return emotions.index(emotion)
    except ValueError:
        raise ValueError(f"unknown emotion {emotion!r}; known: {', '.join(emotions)}") from None


def set_emotion(state, index: int, intensity: float | None) -> None:
    """What a stream shows from its next chunk on (intensity clipped to 0..1; None keeps it)."""
    state.emotion = index
    if intensity is not None:
        state.intensity = float(np.clip(intensity, 0.0, 1.0))


def sample_streams(
    denoise: Callable[..., np.ndarray],
    sampler: ShortcutFlowSampler,
    states: Sequence[Any],
    frame_shape: tuple[int, ...],
    chunk_frames: int,
    context_frames: int,
    steps: int | None,
    min_shortcut: float,
) -> np.ndarray:
    """One sampler run for all streams, both engines' `sample_chunks`: each stream's own noise, context, reference,
    emotion and intensity -> latents (B, T, *frame_shape); each stream's context becomes its chunk's last K frames.
    `frame_shape` is one latent frame: (C, H, W) for tiny's image latents, (D, 1, 1) for a motion vector. `steps`
    overrides the sampler's step count for this call only (the degradation ladder), leaving `sampler` as it is."""
    T, K, B = chunk_frames, context_frames, len(states)
    x = np.stack([s.rng.standard_normal((T * frame_shape[0], *frame_shape[1:]), dtype=np.float32) for s in states])
    ctx = np.stack([s.ctx for s in states])
    ref = np.stack([s.ref for s in states])
    emo = np.array([s.emotion for s in states], dtype=np.int64)
    inten = np.array([s.intensity for s in states], dtype=np.float32)
    if steps is not None and steps != sampler.steps:
        sampler = ShortcutFlowSampler(steps=steps, min_shortcut=min_shortcut)
    d = np.full((B,), sampler.model_step_size, dtype=np.float32)
    for t in sampler.timesteps:
        v = denoise(x, np.full((B,), t, dtype=np.float32), d, ctx, ref, emo, inten)
        x = sampler.step(v, t, x)
    lat = np.asarray(x, np.float32).reshape(B, T, *frame_shape)
    for s, chunk in zip(states, lat, strict=True):
        s.ctx = chunk[T - K :].reshape(K * frame_shape[0], *frame_shape[1:]).copy()
        s.frames_done += T
    return lat


def clip_frames(engine, state, n_frames: int, warmup_chunks: int, **chunk_options) -> np.ndarray:
    """n_frames of one stream: `warmup_chunks` sampled and skipped (leaving rest), then whole chunks decoded
    (engine.next_chunk with chunk_options) until there are enough."""
    for _ in range(warmup_chunks):
        engine.sample_chunks([state])
    chunks: list[np.ndarray] = []
    while sum(len(c) for c in chunks) < n_frames:
        chunks.append(engine.next_chunk([state], **chunk_options)[0])
    return np.concatenate(chunks)[:n_frames]


def avatar_cache_key(avatar) -> str:
    """A stable key for an avatar given as index, name, params dict or AvatarParams."""
    from avatarcast.engines.avatar_world import get_avatar  # PIL: kept off `avatarcast --help`

    return json.dumps(get_avatar(avatar).to_dict(), sort_keys=True)


class TinyEngine:
    """Generates 640x360 RGBA frames of an avatar showing an emotion, chunk by chunk."""

    def __init__(self, backend: TinyBackend, manifest: Manifest, steps: int = 2):
        self.backend = backend
        self.manifest = manifest
        self.cfg: TinyConfig = manifest.config
        self.sampler = ShortcutFlowSampler(steps=steps, min_shortcut=self.cfg.min_shortcut)
        self._refs: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        weights_dir: str | Path | None = None,
        backend: str = "onnxruntime",
        steps: int = 2,
        threads: int | None = None,
        device: str | None = None,
        **backend_options,
    ) -> TinyEngine:
        """Load shipped (or given) weights onto a backend: onnxruntime, torch or tensorrt."""
        manifest = load_manifest(weights_dir)
        be = create_backend(backend, manifest, threads=threads, device=device, **backend_options)
        return cls(be, manifest, steps=steps)

    # -- properties -----------------------------------------------------------------------
    @property
    def emotions(self) -> tuple[str, ...]:
        return self.cfg.emotions

    @property
    def steps(self) -> int:
        return self.sampler.steps

    @steps.setter
    def steps(self, n: int) -> None:
        self.sampler.set_timesteps(n)

    @property
    def weights_hash(self) -> str:
        return self.manifest.weights_hash

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(
            frames_per_chunk=self.cfg.chunk_frames,
            cheaper_decode=CheaperDecode.HALF_RESOLUTION if self.has_lowres else None,
        )

    @property
    def graphs_ready(self) -> None:
        return None  # the backends build or load their graphs before the engine exists

    def emotion_index(self, emotion: str | int) -> int:
        return emotion_index(self.emotions, emotion)

    # -- streams --------------------------------------------------------------------------
    def reference_latent(self, avatar, key: str | None = None) -> np.ndarray:
        """The avatar's identity latent, computed once per avatar (key: its avatar_cache_key)."""
        key = key or avatar_cache_key(avatar)
        with self._lock:
            ref = self._refs.get(key)
        if ref is None:
            from avatarcast.engines.avatar_world.reference import reference_frame  # PIL, as above

            ref = self.backend.encode(reference_frame(avatar)[None])[0]
            with self._lock:
                self._refs[key] = ref
        return ref

    def start_stream(
        self, avatar, emotion: str | int = "idle", intensity: float = 1.0, seed: int = 0, ctx: np.ndarray | None = None
    ) -> StreamState:
        """A new stream at rest (context = the reference frame), or continuing a given context."""
        key = avatar_cache_key(avatar)
        ref = self.reference_latent(avatar, key)
        K = self.cfg.context_frames
        if ctx is None:
            ctx = np.concatenate([ref] * K, axis=0)
        return StreamState(
            key,
            ref,
            ctx.astype(np.float32, copy=True),
            self.emotion_index(emotion),
            float(np.clip(intensity, 0.0, 1.0)),
            np.random.default_rng(seed),
        )

    def set_emotion(self, state: StreamState, emotion: str | int, intensity: float | None = None) -> None:
        set_emotion(state, self.emotion_index(emotion), intensity)

    def sample_chunks(self, states: list[StreamState], steps: int | None = None) -> np.ndarray:
        """One sampler run for all streams: returns latents (B, T, C, H, W), advances contexts.

        `steps` overrides the sampler's step count for this call only (the server's degradation
        ladder); `self.steps`, which the latents cache keys on, stays as it is.
        """
        cfg = self.cfg
        H, W = cfg.latent_hw
        shape = (cfg.latent_channels, H, W)
        return sample_streams(
            self.backend.denoise,
            self.sampler,
            states,
            shape,
            cfg.chunk_frames,
            cfg.context_frames,
            steps,
            cfg.min_shortcut,
        )

    @property
    def has_lowres(self) -> bool:
        """Whether `decode(..., lowres=True)` has a half-resolution decoder to run (the ladder's last rung)."""
        return bool(self.backend.has_lowres)

    def decode(self, latents: np.ndarray, batch: int = 8, lowres: bool = False) -> np.ndarray:
        """Latent frames (N, C, H, W) -> RGBA uint8 frames (N, 360, 640, 4).

        lowres: decode at half resolution and upscale (about 4x cheaper; same output size).
        """
        out = [
            self.backend.decode(np.ascontiguousarray(latents[i : i + batch], dtype=np.float32), lowres=lowres)
            for i in range(0, len(latents), batch)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.cfg.height, self.cfg.width, 4), np.uint8)

    def decode_chunks(self, states: list[StreamState], latents: np.ndarray, cheaper: bool = False) -> np.ndarray:
        """Latents (B, T, C, H, W) -> frames (B, T, 360, 640, 4): each latent frame decodes on its own,
        so the states are not needed. `cheaper`: the half-resolution decoder (see decode), where shipped."""
        if cheaper and not self.has_lowres:
            raise ValueError("these tiny weights have no half-resolution decoder (python -m tools.train_lowres)")
        B, T = latents.shape[:2]
        frames = self.decode(latents.reshape(B * T, *latents.shape[2:]), lowres=cheaper)
        return frames.reshape(B, T, *frames.shape[1:])

    def launch_chunks(self, states: list[StreamState], steps: int | None = None) -> ReadyFrames:
        """sample_chunks and decode_chunks now (a CPU engine has nothing to overlap); the frames are ready."""
        return ReadyFrames(list(self.decode_chunks(states, self.sample_chunks(states, steps))))

    def next_chunk(self, states: list[StreamState], lowres: bool = False) -> list[np.ndarray]:
        """The next T frames of each stream, (T, 360, 640, 4) uint8 each (lowres: see decode)."""
        return list(self.decode_chunks(states, self.sample_chunks(states), cheaper=lowres))

    def generate_clip(
        self,
        avatar,
        emotion: str | int,
        n_frames: int,
        seed: int = 0,
        intensity: float = 1.0,
        warmup_chunks: int = 1,
        lowres: bool = False,
    ) -> np.ndarray:
        """n_frames of one avatar in one emotion; the first chunks (leaving rest) are skipped."""
        st = self.start_stream(avatar, emotion, intensity, seed)
        return clip_frames(self, st, n_frames, warmup_chunks, lowres=lowres)
