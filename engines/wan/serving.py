"""The `wan` engine behind the interface the server already drives (that of TinyEngine).

The server's templates, latents cache, scheduler and transports were written against TinyEngine:
emotions by name, avatars by index/name, numpy latents, 640x360 RGBA frames. This adapter maps
those onto WanEngine: an emotion is its template prompt's UMT5 embedding (precomputed, see
prompts.py), intensity blends it with the neutral (idle) prompt's embedding, the avatar is the
TI2V first-frame latent of its reference frame, and frames are decoded per stream
(`decode_chunks`), because the Wan VAE continues each stream's video rather than decoding
latent frames one by one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F

from avatarcast.engines.avatar_world.reference import reference_frame
from avatarcast.engines.contract import EngineCapabilities
from avatarcast.engines.sampler import FlowMatchEulerSampler
from avatarcast.engines.tiny.engine import avatar_cache_key
from avatarcast.engines.tiny.pinned import PinnedFrames
from avatarcast.engines.wan.checkpoint import inspect_checkpoint
from avatarcast.engines.wan.engine import WanEngine, WanStreamState
from avatarcast.engines.wan.prompts import (
    RANDOM,
    PromptEmbedStore,
    dir_fingerprint,
    normalize_prompt,
    resolve_prompt_embeds,
)
from avatarcast.engines.wan.runtime import use_exported
from avatarcast.templates import load_templates
from avatarcast.vocabulary import FRAME_HEIGHT, FRAME_WIDTH

log = logging.getLogger(__name__)

BACKGROUND = (245, 240, 230)  # realtime/video.BACKGROUND: what the avatar stands on (Wan has no alpha)
NEUTRAL = "idle"  # intensity blends each emotion's prompt with this one's
SERVING_FORMAT = 1  # bump when this adapter changes what a cached chunk looks like


@dataclass(eq=False)
class AvatarStreamState(WanStreamState):
    """A WanStreamState plus what the server's sessions expect of a stream state.

    Compared by identity: `job in queue` must never compare tensors element-wise."""

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    avatar_key: str = ""
    emotion: int = 0
    intensity: float = 1.0

    def copy(self) -> Self:
        """A twin to advance on its own: the generator is copied, and so is the VAE causal cache object
        (its tensors are replaced, never written in place, so a shallow copy of it is enough)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.vae = copy.copy(self.vae)
        new.vae.meta = dict(self.vae.meta)
        new.generator = copy.deepcopy(self.generator)
        new.meta = dict(self.meta)
        return new

    @property
    def ctx(self) -> np.ndarray:
        """The context as the latents cache stores it: (K*C, h, w) float32, frame-major like tiny's."""
        c = self.context.float().permute(1, 0, 2, 3)  # (K, C, h, w)
        return c.reshape(-1, *c.shape[2:]).cpu().numpy()


@dataclass(frozen=True)
class ServingShapes:
    """The TinyConfig fields the latents cache checks stored entries against."""

    chunk_frames: int  # latent frames per chunk
    latent_channels: int
    context_frames: int  # latent frames of context
    latent_hw: tuple[int, int]
    frames_per_chunk: int  # video frames per chunk (4 per latent frame)
    height: int = FRAME_HEIGHT
    width: int = FRAME_WIDTH


def checkpoint_id(info) -> str:
    """Transformer + VAE identity: each file by name, size and first/last MiB (no hashing of 10 GB)."""
    blob = json.dumps(
        {"transformer": dir_fingerprint(info.transformer_dir), "vae": dir_fingerprint(info.vae_dir)}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def wan_buckets(batch: int, compiled: bool = False) -> tuple[int, ...]:
    """CUDA-graph batch buckets up to `batch`; a call of n streams runs in the smallest bucket >= n.

    1, 2, 3 and `batch`; compiled, only 1 and `batch`: each compiled bucket is another Dynamo trace at
    every start (14-17 s of a warm restart on an H100, about 2 min cold; docs/bench capture_s), while
    padding 2-4 streams to 5 costs only GPU time, never capacity (10 streams are two full calls)."""
    return tuple(sorted({b for b in ((1, batch) if compiled else (1, 2, 3, batch)) if b <= batch}))


def compile_cache_dir(cache_dir: str | Path) -> Path:
    """Where torch.compile's artifacts go: `cache_dir`/inductor, beside the latents cache, unless
    TORCHINDUCTOR_CACHE_DIR names another place. Inductor's own default is under /tmp, which a
    reboot or a tmp cleaner empties, and a warm restart (under a minute, against minutes cold)
    needs them. (Importing diffusers already sets the variable to inductor's default: that value
    counts as unset.)"""
    # torch._inductor: slow to import, only to name its cache dir
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    now = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if now is None or os.path.abspath(now) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir).resolve() / "inductor")
    d = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    d.mkdir(parents=True, exist_ok=True)
    log.info("wan engine: compiled artifacts cached in %s", d)
    return d


class WanAvatarEngine:
    """Wan2.2 TI2V with the TinyEngine interface: emotions, avatars, numpy latents, 640x360 RGBA frames."""

    def __init__(
        self,
        wan: WanEngine,
        templates: Mapping[str, Any],
        embeds: Mapping[str, np.ndarray],
        embeds_id: str,
        checkpoint_hash: str,
        max_batch: int = 5,
        pipeline: bool = False,
    ) -> None:
        self.wan = wan
        self.max_batch = max(1, int(max_batch))  # the scheduler's batch: most streams per next_chunk call
        self.pipeline_depth = 2 if pipeline else 1  # engine calls the scheduler keeps in flight (launch_chunks)
        self._emotions = tuple(templates)
        self._index = {name: i for i, name in enumerate(self._emotions)}
        L = max(len(embeds[normalize_prompt(t.prompt)]) for t in templates.values())
        self._embeds = [self._padded(embeds[normalize_prompt(t.prompt)], L) for t in templates.values()]
        self._neutral = self._index.get(NEUTRAL)
        self.embeds_id, self.checkpoint_hash = embeds_id, checkpoint_hash
        s = min(FRAME_HEIGHT / wan.height, FRAME_WIDTH / wan.width)  # model grid -> 640x360, aspect kept
        self._crop_hw = (round(wan.height * s), round(wan.width * s))  # the part of 640x360 the model sees
        self.cfg = ServingShapes(
            wan.chunk_latent_frames,
            wan.z_dim,
            wan.context_latent_frames,
            wan.latent_hw,
            wan.temporal * wan.chunk_latent_frames,
        )
        self._refs: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._streams: dict[str, torch.cuda.Stream] = {}  # "steps", "vae": see launch_chunks

    @classmethod
    def load(
        cls,
        checkpoint_dir: str | Path,
        cache_dir: str | Path,
        *,
        templates: Mapping[str, Any] | None = None,
        device: str = "auto",
        dtype: str = "auto",
        steps: int = 4,
        shift: float = 5.0,
        chunk_latent_frames: int = 1,
        context_latent_frames: int = 1,
        height: int = 352,
        width: int = 640,
        prompt_embeds: str = "auto",
        compile: bool | str = False,
        vae_warmup: str = "start",
        fp8: bool = False,
        batch: int = 5,
        vae_batch: int = 1,
        pipeline: bool = False,
        backend: str = "torch",
        export_dir: str | Path | None = None,
        sigmas: list[float] | None = None,
    ) -> WanAvatarEngine:
        """Checkpoint + prompt embeddings from `cache_dir`/prompt_embeds (computed there once when the
        checkpoint has a text encoder). Fails before loading any weights when the embeddings are missing.
        On a GPU the engine takes its fast path (WanEngine.accelerate): CUDA graphs, captured here
        for batches up to `batch`, with `compile` torch.compile of the transformer ("full" or
        "regional": its repeated blocks only) and the VAE (`vae_warmup` "background": ready before the
        VAE's graphs are, which compile on a thread; WanEngine.accelerate), and with
        `fp8` fp8 linear layers in the transformer blocks. `batch` is also the most streams one engine
        call serves (the scheduler's batch): at 360P two calls of 5 outrun one of 10 on an H100.
        `vae_batch`: most streams per VAE decoder call (1: one compiled graph, a faster warm start).
        `backend` "tensorrt" | "onnxruntime": the transformer and the VAE's steady frame run as the
        graphs exported to `export_dir` (engines/wan/runtime.py) instead of the torch fast path.
        `pipeline`: the scheduler keeps two calls in flight (launch_chunks). `sigmas`: a distilled
        checkpoint's own schedule (their count is the steps), instead of `steps` evenly spaced."""
        if templates is None:
            templates = load_templates()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        info = inspect_checkpoint(checkpoint_dir)
        text_dim = int(json.loads((info.transformer_dir / "config.json").read_text())["text_dim"])
        store = PromptEmbedStore(Path(cache_dir) / "prompt_embeds")
        prompts = [t.prompt for t in templates.values()]
        resolved = None
        if prompt_embeds == RANDOM or not info.has_text_encoder:  # nothing to encode: fail fast
            resolved = resolve_prompt_embeds(prompts, text_dim, info, store, None, prompt_embeds)
        s = min(FRAME_HEIGHT / height, FRAME_WIDTH / width)
        # on a GPU the VAE decodes in the transformer's dtype too (bf16: the decode is the larger cost)
        vae_dtype = _dtype(dtype, device) if device.startswith("cuda") else torch.float32
        wan = WanEngine.load(
            info.root,
            device=device,
            dtype=_dtype(dtype, device),
            steps=steps,
            shift=shift,
            vae_dtype=vae_dtype,
            sigmas=sigmas,
            chunk_latent_frames=chunk_latent_frames,
            context_latent_frames=context_latent_frames,
            height=height,
            width=width,
            out_height=round(FRAME_HEIGHT / s),
            out_width=round(FRAME_WIDTH / s),
        )
        if resolved is None:

            def encode(ps: list[str]) -> list[np.ndarray]:
                return list(wan.encode_prompts(ps).float().cpu().numpy())

            resolved = resolve_prompt_embeds(prompts, text_dim, info, store, encode, prompt_embeds)
            wan._text_encoder = wan._tokenizer = None  # 5.7B parameters not needed again while serving
            if wan.device.type == "cuda":
                torch.cuda.empty_cache()
        if backend != "torch":
            if export_dir is None:
                raise ValueError(f"backend {backend} needs export_dir (python -m avatarcast.engines.wan.export)")
            use_exported(
                wan,
                export_dir,
                backend,
                cache_dir=Path(cache_dir) / "tensorrt",
                vae_max_batch=vae_batch,
                max_batch=batch,
            )
        elif compile:
            compile_cache_dir(cache_dir)
        if wan.device.type == "cuda" and backend == "torch":
            buckets = wan_buckets(batch, compiled=bool(compile))
            wan.accelerate(
                compile=compile,
                vae_compile=bool(compile),
                buckets=buckets,
                warm_batches=buckets,
                fp8=fp8,
                vae_batch=vae_batch,
                vae_warmup=vae_warmup,
            )
        embeds_id, embeds = resolved
        if embeds_id == RANDOM:
            log.warning(
                "wan engine: RANDOM prompt embeddings (explicit opt-in): emotions are not what their prompts say"
            )
        return cls(
            wan,
            templates,
            {normalize_prompt(k): v for k, v in embeds.items()},
            embeds_id,
            checkpoint_id(info),
            max_batch=batch,
            pipeline=pipeline,
        )

    def _padded(self, emb: np.ndarray, length: int) -> torch.Tensor:
        e = torch.zeros(length, emb.shape[1])
        e[: len(emb)] = torch.as_tensor(np.asarray(emb, np.float32))
        return e.to(self.wan.device, self.wan.dtype)

    # -- what the server reads --------------------------------------------------------------
    @property
    def capabilities(self) -> EngineCapabilities:
        """Read when a scheduler is made: tools may set max_batch / pipeline_depth before that."""
        return EngineCapabilities(
            frames_per_chunk=self.cfg.frames_per_chunk,
            max_batch=self.max_batch,
            pipeline_depth=self.pipeline_depth,
            per_stream_decode=True,
        )

    @property
    def graphs_ready(self) -> bool | None:
        """None: the VAE decodes eagerly; False while its graphs compile in the background; True."""
        return self.wan.vae_stream.compiled

    @property
    def emotions(self) -> tuple[str, ...]:
        return self._emotions

    @property
    def steps(self) -> int:
        return self.wan.sampler.steps

    @steps.setter
    def steps(self, n: int) -> None:
        self.wan.sampler.set_timesteps(n)

    @property
    def frames_per_chunk(self) -> int:
        return self.cfg.frames_per_chunk

    @property
    def weights_hash(self) -> str:
        """Everything but steps that shapes a cached chunk: weights, embeddings, grid, chunking, dtype."""
        w = self.wan
        blob = json.dumps(
            {
                "checkpoint": self.checkpoint_hash,
                "prompts": self.embeds_id,
                "grid": [w.height, w.width],
                "chunk": w.chunk_latent_frames,
                "context": w.context_latent_frames,
                "shift": w.sampler.shift,
                "sigmas": w.sampler.sigmas,
                "dtype": str(w.dtype),
                "v": SERVING_FORMAT,
            },
            sort_keys=True,
        )
        return "wan-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def emotion_index(self, emotion: str | int) -> int:
        if isinstance(emotion, (int, np.integer)):
            if not 0 <= int(emotion) < len(self._emotions):
                raise ValueError(f"emotion index {emotion} out of range 0..{len(self._emotions) - 1}")
            return int(emotion)
        try:
            return self._index[emotion]
        except KeyError:
            raise ValueError(f"unknown emotion {emotion!r}; known: {', '.join(self._emotions)}") from None

    def prompt_embeds(self, emotion: str | int, intensity: float) -> torch.Tensor:
        """The emotion's prompt embedding, moved toward the neutral prompt's as intensity drops.

        Both are zero-padded to the same length, so this is a token-wise lerp; every template prompt
        starts "A cartoon character", so the leading tokens line up. intensity 1 is the prompt itself.
        """
        i = self.emotion_index(emotion)
        e = self._embeds[i]
        if self._neutral is None or i == self._neutral:
            return e
        return torch.lerp(self._embeds[self._neutral], e, float(np.clip(intensity, 0.0, 1.0)))

    # -- streams ----------------------------------------------------------------------------
    def reference_image(self, avatar) -> np.ndarray:
        """The avatar's reference frame on the opaque background, cropped to the model grid's aspect (RGB)."""
        rgba = reference_frame(avatar).astype(np.float32)
        a = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * a + np.asarray(BACKGROUND, np.float32) * (1 - a)
        (ch, cw), (H, W) = self._crop_hw, rgb.shape[:2]
        y, x = max(0, (H - ch) // 2), max(0, (W - cw) // 2)
        return np.round(rgb[y : y + ch, x : x + cw]).astype(np.uint8)

    def reference_latent(self, avatar, key: str | None = None) -> torch.Tensor:
        """The avatar's TI2V first-frame latent (C, h, w), computed once per avatar."""
        key = key or avatar_cache_key(avatar)
        with self._lock:
            ref = self._refs.get(key)
        if ref is None:
            ref = self.wan.reference_latent(self.reference_image(avatar))
            with self._lock:
                self._refs[key] = ref
        return ref

    def start_stream(
        self, avatar, emotion: str | int = "idle", intensity: float = 1.0, seed: int = 0, ctx: np.ndarray | None = None
    ) -> AvatarStreamState:
        """A new stream at the reference frame, or continuing a cached context (K*C, h, w)."""
        key = avatar_cache_key(avatar)
        idx, inten = self.emotion_index(emotion), float(np.clip(intensity, 0.0, 1.0))
        base = self.wan.start_stream(self.reference_latent(avatar, key), self.prompt_embeds(idx, inten), seed)
        st = AvatarStreamState(
            **{f.name: getattr(base, f.name) for f in fields(WanStreamState)},
            avatar_key=key,
            emotion=idx,
            intensity=inten,
        )
        if ctx is not None:
            K, C, (h, w) = self.cfg.context_frames, self.cfg.latent_channels, self.cfg.latent_hw
            c = np.asarray(ctx, dtype=np.float32)
            if c.shape != (K * C, h, w):
                raise ValueError(f"context must be {(K * C, h, w)}, got {c.shape}")
            # left on the CPU: this runs on the event loop (a cached reaction), where a copy to the GPU
            # would wait for the engine thread's queued kernels; sample_chunks moves it
            st.context = torch.from_numpy(c.reshape(K, C, h, w)).permute(1, 0, 2, 3).contiguous()
        return st

    def set_emotion(self, state: AvatarStreamState, emotion: str | int, intensity: float | None = None) -> None:
        idx = self.emotion_index(emotion)
        inten = state.intensity if intensity is None else float(np.clip(intensity, 0.0, 1.0))
        if (idx, inten) != (state.emotion, state.intensity):
            state.emotion, state.intensity = idx, inten
            self.wan.set_prompt(state, self.prompt_embeds(idx, inten))

    def _sample(self, states: list[AvatarStreamState], steps: int | None) -> torch.Tensor:
        """One sampler run on the current CUDA stream: latents (B, T, C, h, w) on the device."""
        wan, main = self.wan, self.wan.sampler
        for st in states:
            if st.context.device != wan.device:
                st.context = st.context.to(wan.device)
        if steps is not None and steps != main.steps and main.sigmas is None:
            wan.sampler = FlowMatchEulerSampler(steps=steps, shift=main.shift)
        try:
            return wan.sample_chunks(states)
        finally:
            wan.sampler = main

    def sample_chunks(self, states: list[AvatarStreamState], steps: int | None = None) -> np.ndarray:
        """One sampler run for all streams: latents (B, T, C, h, w) float32 numpy.

        `steps` overrides the step count for this call only (the server's degradation ladder); a
        distilled checkpoint's explicit sigmas are kept as they are. Runs on the engine thread only.
        """
        with self._on("steps"):
            return self._sample(states, steps).float().cpu().numpy()

    # -- frames -----------------------------------------------------------------------------
    def _rgba(self, rgb: torch.Tensor) -> torch.Tensor:
        """(..., h, w, 3) uint8 -> (..., 360, 640, 4) uint8 opaque, on rgb's device; scaled when the
        grid is not 360P. On the GPU, so the host only receives finished frames."""
        lead, (h, w) = rgb.shape[:-3], rgb.shape[-3:-1]
        x = rgb.reshape(-1, h, w, 3)
        if (h, w) != (FRAME_HEIGHT, FRAME_WIDTH):
            t = F.interpolate(
                x.permute(0, 3, 1, 2).float(), size=(FRAME_HEIGHT, FRAME_WIDTH), mode="bilinear", align_corners=False
            )
            x = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        out = torch.empty((len(x), FRAME_HEIGHT, FRAME_WIDTH, 4), dtype=torch.uint8, device=x.device)
        out[..., :3] = x
        out[..., 3] = 255
        return out.reshape(*lead, FRAME_HEIGHT, FRAME_WIDTH, 4)

    def decode_chunks(self, states: list[AvatarStreamState], latents: np.ndarray, cheaper: bool = False) -> np.ndarray:
        """Each stream's newest chunk (B, T, C, h, w) -> its frames (B, 4T, 360, 640, 4), continuing its video.

        Raises:
            ValueError: cheaper (the Wan VAE has no cheaper decode)."""
        if cheaper:
            raise ValueError("the wan engine has no cheaper decode")
        lat = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))
        with self._on("vae"):
            return self._rgba(self.wan.decode_new(states, lat, to_numpy=False)).cpu().numpy()

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Flat latents (N, C, h, w) -> one still per latent (N, 360, 640, 4).

        Each is decoded on its own, as the causal VAE decodes a clip's first frame: right for
        thumbnails, not for streams (a latent frame there is 4 video frames; use decode_chunks).
        """
        lat = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))
        if not len(lat):
            return np.zeros((0, FRAME_HEIGHT, FRAME_WIDTH, 4), np.uint8)
        with self._on("vae"):
            return self._rgba(torch.from_numpy(self.wan.decode(lat[:, None])[:, 0])).numpy()

    def next_chunk(self, states: list[AvatarStreamState]) -> list[np.ndarray]:
        """The next 4T frames of each stream, (4T, 360, 640, 4) uint8 each."""
        return self.launch_chunks(states).wait()

    # -- pipelining -------------------------------------------------------------------------
    def launch_chunks(self, states: list[AvatarStreamState], steps: int | None = None) -> PinnedFrames:
        """Queue one call's work on the GPU and return at once; `wait()` gives the frames.

        The sampler steps run on one CUDA stream and the VAE decode on another, after them. So while
        one call's decode (memory-bound) runs, the scheduler can already queue the next call's steps
        (compute-bound) and they overlap: through the server's scheduler on an H100, 10 sessions got
        80.5-83.6 fps at depth 2 against 76.3-79.6 in turn, each stream a chunk every 1.40 s (p95
        1.41 s) for 1.5 s of video (docs/bench/wan_h100_server_pipeline_regional_*.json). The
        frames become RGBA on the GPU and are copied to
        pinned host memory without blocking.
        On the CPU everything runs here and `wait()` has nothing left to do.
        """
        if self.wan.device.type != "cuda":
            return PinnedFrames(torch.from_numpy(self.decode_chunks(states, self.sample_chunks(states, steps))))
        steps_s, vae_s = self._stream("steps"), self._stream("vae")
        steps_s.wait_stream(torch.cuda.current_stream())  # prompts and contexts made on the default stream
        start, sampled, done = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        with torch.cuda.stream(steps_s):
            start.record()
            lat = self._sample(states, steps)
            sampled.record()
        with torch.cuda.stream(vae_s):
            vae_s.wait_event(sampled)
            lat.record_stream(vae_s)  # made on the steps stream: not reused there before the decode ran
            rgba = self._rgba(self.wan.decode_new(states, lat, to_numpy=False))
            host = torch.empty(rgba.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(rgba, non_blocking=True)
            done.record()
        return PinnedFrames(host, (start, sampled, done))

    def _stream(self, name: str) -> torch.cuda.Stream:
        s = self._streams.get(name)
        if s is None:
            s = self._streams[name] = torch.cuda.Stream(self.wan.device)
        return s

    def _on(self, name: str):
        """Synchronous work on the stream that the pipelined path uses for it (after everything queued
        on the current stream), so that it is ordered with any call still in flight: the CUDA graphs'
        static buffers and each stream's VAE cache are shared."""
        if self.wan.device.type != "cuda":
            return contextlib.nullcontext()
        s = self._stream(name)
        s.wait_stream(torch.cuda.current_stream())
        if name == "vae":
            s.wait_stream(self._stream("steps"))
        return torch.cuda.stream(s)


__all__ = ["AvatarStreamState", "BACKGROUND", "ServingShapes", "WanAvatarEngine", "checkpoint_id"]
