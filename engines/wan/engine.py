"""The `wan` engine: Wan2.2-TI2V-5B (diffusers WanTransformer3DModel + AutoencoderKLWan), chunked.

Each stream keeps its last K latent frames as clean context. A chunk is sampled TI2V style,
the way diffusers' Wan 2.2 I2V pipeline (`expand_timesteps`) conditions on a clean first frame:
latents = [context (clean) | T new (noisy)] along time, mask = 0 on context and 1 on new frames,
model input = (1 - mask) * cond + mask * x and per-token timestep = mask * t, so the context
tokens are seen as already denoised. The stream starts with the avatar's reference latent as
context, then continues from its own last frames, so it runs indefinitely and can switch
prompt (emotion) between chunks.

Sampling uses the repo's FlowMatchEulerSampler (t = 1 - sigma). Wan predicts
noise - data (diffusers convention), the sampler wants data - noise, hence the sign flip.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from avatarcast.engines.sampler import FlowMatchEulerSampler
from avatarcast.engines.wan.checkpoint import (
    CheckpointInfo,
    WanCheckpointError,
    inspect_checkpoint,
)
from avatarcast.engines.wan.fp8 import convert_blocks_to_fp8
from avatarcast.engines.wan.graphs import DEFAULT_BUCKETS, GraphedDenoiser
from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder, VaeStreamCache
from avatarcast.vocabulary import FRAME_HEIGHT, FRAME_WIDTH

log = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000  # Wan's timestep embedding expects sigma * 1000


def _load_model(cls, directory: Path, dtype: torch.dtype):
    """A diffusers model from a local dir. Uses from_pretrained when `accelerate` is installed;
    without it diffusers refuses models with fp32-kept modules (Wan's transformer), so the
    config and safetensors are then loaded by hand, keeping those modules in float32 likewise."""
    try:
        import accelerate  # noqa: F401  # accelerate: optional, probed
    except ImportError:
        pass
    else:
        return cls.from_pretrained(str(directory), torch_dtype=dtype, local_files_only=True)
    from safetensors.torch import load_file  # safetensors: the `train` extra, only without accelerate

    model = cls.from_config(cls.load_config(str(directory), local_files_only=True))
    state: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(f)))
    model.load_state_dict(state, strict=True)
    return cast_model(model, dtype)


def cast_model(model, dtype: torch.dtype):
    """model.to(dtype), keeping the modules the class wants in float32 (Wan: time embedding, norms)."""
    if dtype == torch.float32:
        return model
    keep = getattr(type(model), "_keep_in_fp32_modules", None) or []
    model = model.to(dtype)
    for name, param in model.named_parameters():  # e.g. "blocks.0.scale_shift_table", "blocks.0.norm2.weight"
        if any(k in name.split(".") for k in keep):
            param.data = param.data.float()
    return model


@dataclass
class WanStreamState:
    """Everything one Wan stream carries between chunks (tensors on the engine's device)."""

    context: torch.Tensor  # (C, K, h, w) clean latents the next chunk continues from
    prompt_embeds: torch.Tensor  # (L, D) text embeddings
    generator: torch.Generator
    reference: torch.Tensor  # (C, h, w) the avatar's reference latent
    last_context: torch.Tensor | None = None  # context the last chunk was sampled from (decoding)
    frames_done: int = 0  # latent frames generated so far
    vae: VaeStreamCache = field(default_factory=VaeStreamCache)  # the stream's VAE causal cache
    meta: dict = field(default_factory=dict)


class WanEngine:
    """Generates avatar video chunk by chunk with a (few-step distilled) Wan2.2 TI2V model."""

    def __init__(
        self,
        transformer,
        vae,
        info: CheckpointInfo,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        steps: int = 4,
        shift: float = 5.0,
        sigmas: list[float] | None = None,
        chunk_latent_frames: int = 1,
        context_latent_frames: int = 1,
        height: int = 352,
        width: int = 640,
        out_height: int = FRAME_HEIGHT,
        out_width: int = FRAME_WIDTH,
    ):
        self.transformer, self.vae, self.info = transformer.eval(), vae.eval(), info
        self.device, self.dtype = torch.device(device), dtype
        self.sampler = FlowMatchEulerSampler(steps=steps, shift=shift, sigmas=sigmas)
        if chunk_latent_frames < 1 or context_latent_frames < 1:
            raise ValueError("chunk_latent_frames and context_latent_frames must be >= 1")
        self.chunk_latent_frames, self.context_latent_frames = chunk_latent_frames, context_latent_frames
        vcfg = vae.config
        self.spatial = int(vcfg.get("scale_factor_spatial") or 8)
        self.temporal = int(vcfg.get("scale_factor_temporal") or 4)
        _, ph, pw = transformer.config.patch_size
        if height % (self.spatial * ph) or width % (self.spatial * pw):
            raise ValueError(
                f"{height}x{width} must be divisible by {self.spatial * ph}x{self.spatial * pw} "
                "(VAE spatial factor x transformer patch)"
            )
        self.height, self.width, self.out_height, self.out_width = height, width, out_height, out_width
        self.latent_hw = (height // self.spatial, width // self.spatial)
        self.z_dim = int(vcfg.z_dim)
        self.latents_mean = torch.tensor(vcfg.latents_mean, dtype=torch.float32, device=self.device).view(-1, 1, 1, 1)
        self.latents_std = torch.tensor(vcfg.latents_std, dtype=torch.float32, device=self.device).view(-1, 1, 1, 1)
        # diffusers' WanTransformer3DModel takes (B, seq_len) timesteps since Wan 2.2 (TI2V)
        emb = getattr(transformer, "condition_embedder", None)
        self.per_token_timesteps = emb is not None and "timestep_seq_len" in inspect.signature(emb.forward).parameters
        self._text_encoder: Any = None  # transformers' UMT5 encoder and tokenizer, loaded on first use
        self._tokenizer: Any = None
        self.vae_stream = StreamingVaeDecoder(vae, frames_per_call=chunk_latent_frames)
        self.warm_s: dict = {}  # accelerate's start-up seconds by part
        self.denoiser = transformer  # called as denoiser(x, t, text, return_dict=False); see graphs.py

    @classmethod
    def load(
        cls,
        checkpoint_dir: str | Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        steps: int = 4,
        shift: float = 5.0,
        chunk_latent_frames: int = 1,
        context_latent_frames: int = 1,
        vae_dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> WanEngine:
        """Load transformer + VAE from a local diffusers-format dir (never the hub).

        vae_dtype: float32 by default; bfloat16 halves the decode time on a GPU (the decode costs
        more than the transformer at 360P), at some risk of banding in flat colours."""
        from diffusers import AutoencoderKLWan, WanTransformer3DModel  # diffusers: heavy, only when a checkpoint loads

        info = inspect_checkpoint(checkpoint_dir)
        tr = _load_model(WanTransformer3DModel, info.transformer_dir, dtype).to(device)
        vae = _load_model(AutoencoderKLWan, info.vae_dir, vae_dtype).to(device)
        return cls(
            tr,
            vae,
            info,
            device=device,
            dtype=dtype,
            steps=steps,
            shift=shift,
            chunk_latent_frames=chunk_latent_frames,
            context_latent_frames=context_latent_frames,
            **kwargs,
        )

    def accelerate(
        self,
        *,
        cuda_graphs: bool = True,
        compile: bool | str = False,
        vae_compile: bool = False,
        vae_channels_last: bool = True,
        vae_batch: int = 4,
        buckets: tuple[int, ...] | None = None,
        warm_batches: tuple[int, ...] = (),
        fp8: bool = False,
        vae_frames_per_call: int | None = None,
        vae_aot_dir: str | Path | None = None,
        vae_warmup: str = "start",
    ) -> WanEngine:
        """The GPU fast path (server and benchmark alike); a no-op off CUDA.

        CUDA graphs per batch bucket for the transformer (capture takes seconds), optionally
        torch.compile inside them (about 1.6x faster steps at 360P on an H100, but minutes of
        compiling per bucket on a cold start: inductor caches the artifacts on disk, so a warm
        restart takes under a minute; compile="regional" compiles the repeated blocks only, see
        graphs.compile_transformer); the VAE channels-last and optionally compiled (its steady-state
        frames: 13.4 -> 7.9 ms per frame on an H100, docs/bench). fp8: the transformer blocks' linear
        layers in fp8 (engines/wan/fp8.py), before the graphs are captured.
        vae_warmup: "start" compiles the VAE's graphs before returning; "background" returns without
        them (7-10 s of a warm restart on an H100 with vae_batch 1, 79 s with batched graphs) and
        compiles them on a thread while the steady frames decode eagerly
        (StreamingVaeDecoder.warm_up_in_background).
        vae_aot_dir: with vae_compile, the VAE's steady decode as AOTInductor packages kept there
        (engines/wan/vae_aot.py: a warm restart loads them instead of re-tracing the decoder).
        vae_frames_per_call: steady latent frames per decoder call, default a whole chunk (the same
        frames as one call each, 7% faster compiled at 3 frames on an H100)."""
        if self.device.type != "cuda":
            return self
        if vae_warmup not in ("start", "background"):
            raise ValueError(f"vae_warmup must be start or background, got {vae_warmup!r}")
        t0 = time.perf_counter()
        if fp8:
            convert_blocks_to_fp8(self.transformer)
        torch.backends.cudnn.benchmark = True
        self.vae_stream = StreamingVaeDecoder(
            self.vae,
            max_batch=vae_batch,
            compile=vae_compile,
            channels_last=vae_channels_last,
            frames_per_call=vae_frames_per_call or self.chunk_latent_frames,
            aot_dir=vae_aot_dir,
        )
        vae_batches = range(1, self.vae_stream.max_batch + 1)
        t1 = time.perf_counter()
        if vae_warmup == "start":
            self.vae_stream.warm_up(self.latent_hw, vae_batches)
            torch.cuda.synchronize(self.device)
        # where a start's time goes (a warm restart's budget is a minute): logged and benchmarked
        self.warm_s = {
            "fp8": round(t1 - t0, 2),
            "vae": round(time.perf_counter() - t1, 2) if vae_warmup == "start" else vae_warmup,
        }
        if cuda_graphs:
            self.denoiser = GraphedDenoiser(self.transformer, buckets=buckets or DEFAULT_BUCKETS, compile=compile)
            if warm_batches:
                K, T = self.context_latent_frames, self.chunk_latent_frames
                _, ph, pw = self.transformer.config.patch_size
                seq = (K + T) * (self.latent_hw[0] // ph) * (self.latent_hw[1] // pw)
                sample = (
                    torch.zeros(1, self.z_dim, K + T, *self.latent_hw, device=self.device, dtype=self.dtype),
                    torch.zeros(1, seq, device=self.device),
                    torch.zeros(1, 512, self.transformer.config.text_dim, device=self.device, dtype=self.dtype),
                )
                self.denoiser.warm_up(sample, warm_batches)
            self.warm_s["transformer"] = dict(self.denoiser.capture_s)
        if vae_warmup == "background":  # only now: a CUDA graph capture fails if another thread launches work
            self.vae_stream.warm_up_in_background(self.latent_hw, vae_batches)
        log.info("Wan fast path ready: %s (seconds)", self.warm_s)
        return self

    # -- conditioning ----------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], max_length: int = 512) -> torch.Tensor:
        """UMT5 prompt embeddings (N, max_length, D), zero-padded after each prompt like diffusers."""
        if not self.info.has_text_encoder:
            raise WanCheckpointError(
                f"checkpoint {self.info.root} has no usable text encoder (missing "
                f"{', '.join(self.info.text_encoder_missing)}); pass precomputed prompt embeddings instead"
            )
        if self._text_encoder is None:
            # transformers: the 5.7B text encoder, only when needed
            from transformers import AutoTokenizer, UMT5EncoderModel

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.info.tokenizer_dir), local_files_only=True)
            self._text_encoder = (
                UMT5EncoderModel.from_pretrained(
                    str(self.info.text_encoder_dir), torch_dtype=self.dtype, local_files_only=True
                )
                .to(self.device)
                .eval()
            )
        prompts = [re.sub(r"\s+", " ", p).strip() for p in prompts]
        tok = self._tokenizer(
            prompts,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        emb = self._text_encoder(ids, mask).last_hidden_state.to(self.dtype)
        return emb * mask.unsqueeze(-1).to(emb.dtype)  # zero past each prompt's end, as diffusers does

    def _norm(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latents_mean) / self.latents_std

    def _denorm(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latents_std + self.latents_mean

    @torch.no_grad()
    def reference_latent(self, rgb: np.ndarray) -> torch.Tensor:
        """One RGB uint8 (H, W, 3) frame -> normalized latent (C, h, w); resized to the model grid."""
        img = torch.as_tensor(np.ascontiguousarray(rgb[..., :3]), device=self.device)
        img = img.permute(2, 0, 1)[None].float() / 127.5 - 1.0
        if img.shape[-2:] != (self.height, self.width):
            img = F.interpolate(img, size=(self.height, self.width), mode="bilinear", align_corners=False)
        z = self.vae.encode(img[:, :, None].to(self.vae_stream.dtype)).latent_dist.mode()  # argmax, as diffusers
        return self._norm(z[0].float())[:, 0]

    # -- streams ---------------------------------------------------------------------------
    def _embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        e = torch.as_tensor(embeds)
        if e.ndim == 3:
            if e.shape[0] != 1:
                raise ValueError(f"one prompt per stream, got embeddings of shape {tuple(e.shape)}")
            e = e[0]
        if e.ndim != 2 or e.shape[-1] != self.transformer.config.text_dim:
            raise ValueError(f"prompt embeddings must be (L, {self.transformer.config.text_dim}), got {tuple(e.shape)}")
        return e.to(self.device, self.dtype)

    def start_stream(
        self, reference_latent: torch.Tensor, prompt_embeds: torch.Tensor, seed: int = 0
    ) -> WanStreamState:
        """A new stream whose context is the reference latent (the clean first frame)."""
        ref = torch.as_tensor(reference_latent).to(self.device, torch.float32)
        if tuple(ref.shape) != (self.z_dim, *self.latent_hw):
            raise ValueError(f"reference latent must be {(self.z_dim, *self.latent_hw)}, got {tuple(ref.shape)}")
        ctx = ref[:, None].repeat(1, self.context_latent_frames, 1, 1)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        return WanStreamState(ctx, self._embeds(prompt_embeds), gen, ref)

    def set_prompt(self, state: WanStreamState, prompt_embeds: torch.Tensor) -> None:
        """Change the stream's prompt (e.g. emotion); takes effect from the next chunk."""
        state.prompt_embeds = self._embeds(prompt_embeds)

    @staticmethod
    def _batch_embeds(states: Sequence[WanStreamState]) -> torch.Tensor:
        """Stack prompt embeddings, zero-padding to the longest (Wan pads prompts with zeros)."""
        L = max(s.prompt_embeds.shape[0] for s in states)
        return torch.stack([F.pad(s.prompt_embeds, (0, 0, 0, L - s.prompt_embeds.shape[0])) for s in states])

    @torch.no_grad()
    def sample_chunks(self, states: Sequence[WanStreamState]) -> torch.Tensor:
        """One sampler run for all streams: new latents (B, T, C, h, w); advances each context."""
        if not states:
            return torch.zeros(0, self.chunk_latent_frames, self.z_dim, *self.latent_hw)
        K, T = self.context_latent_frames, self.chunk_latent_frames
        B, (h, w) = len(states), self.latent_hw
        cond = torch.zeros(B, self.z_dim, K + T, h, w, device=self.device)
        cond[:, :, :K] = torch.stack([s.context for s in states])
        noise = torch.stack(
            [torch.randn(self.z_dim, T, h, w, generator=s.generator, device=self.device) for s in states]
        )
        x = torch.cat([cond[:, :, :K], noise], dim=2)
        mask = torch.ones(1, 1, K + T, h, w, device=self.device)
        mask[:, :, :K] = 0
        _, ph, pw = self.transformer.config.patch_size
        token_mask = mask[0, 0, :, ::ph, ::pw].flatten()[None].expand(B, -1)  # patch order: (t, h, w)
        text = self._batch_embeds(states)
        for t in self.sampler.timesteps:
            sigma_t = (1.0 - t) * NUM_TRAIN_TIMESTEPS
            inp = ((1 - mask) * cond + mask * x).to(self.dtype)
            if self.per_token_timesteps:
                ts = token_mask * sigma_t  # float32: bf16 would round sigma*1000 to steps of 4
            else:
                ts = torch.full((B,), sigma_t, device=self.device)
            pred = self.denoiser(inp, ts, text, return_dict=False)[0].float()
            x = self.sampler.step(-pred, t, x)  # Wan predicts noise - data
        x = (1 - mask) * cond + mask * x
        new = x[:, :, K:]  # (B, C, T, h, w)
        for s, b in zip(states, range(B)):
            s.last_context = s.context
            s.context = x[b, :, -K:].clone()
            s.frames_done += T
        return new.permute(0, 2, 1, 3, 4).contiguous()

    # -- decoding --------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: torch.Tensor, context: torch.Tensor | None = None) -> np.ndarray:
        """Latents (B, T, C, h, w) -> RGB uint8 frames (B, F, out_height, out_width, 3).

        The Wan VAE is causal in time: the first latent frame decodes to 1 video frame and each
        later one to 4. Without `context` the latents are decoded as a clip (F = 1 + 4(T-1)). With
        `context` (B, K, C, h, w), usually the chunk's `last_context`, [context | latents] is
        decoded and only the frames of the new latents are kept (F = 4T), so chunks join up.
        This re-decodes the context every chunk instead of keeping the VAE's causal feature cache.
        """
        z = torch.as_tensor(latents).to(self.device, torch.float32)
        n_new = z.shape[1]
        if context is not None:
            z = torch.cat([torch.as_tensor(context).to(self.device, torch.float32), z], dim=1)
        z = self._denorm(z.permute(0, 2, 1, 3, 4))
        video = self.vae.decode(z.to(self.vae_stream.dtype), return_dict=False)[0]  # (B, 3, F, H, W)
        if context is not None:
            video = video[:, :, -self.temporal * n_new :]
        return self._fit(self._to_uint8(video)).cpu().numpy()

    @staticmethod
    def _to_uint8(video: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> (B, F, H, W, 3) uint8, on the same device."""
        return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)

    @overload
    def decode_new(
        self, states: Sequence[WanStreamState], latents: torch.Tensor, to_numpy: Literal[True] = ...
    ) -> np.ndarray: ...
    @overload
    def decode_new(
        self, states: Sequence[WanStreamState], latents: torch.Tensor, to_numpy: Literal[False]
    ) -> torch.Tensor: ...
    @overload
    def decode_new(
        self, states: Sequence[WanStreamState], latents: torch.Tensor, to_numpy: bool
    ) -> np.ndarray | torch.Tensor: ...
    def decode_new(
        self, states: Sequence[WanStreamState], latents: torch.Tensor, to_numpy: bool = True
    ) -> np.ndarray | torch.Tensor:
        """The frames of each stream's newest chunk: latents (B, T, C, h, w) from sample_chunks ->
        RGB uint8 (B, 4T, out_height, out_width, 3), continuing each stream's video seamlessly.

        Only the new latent frames are decoded: each stream keeps the VAE's causal cache between
        chunks (vae_stream.py). A stream decoded for the first time (new, or resumed from a cached
        context) first primes its cache with its context frames, whose pixels are dropped."""
        z = torch.as_tensor(latents).to(self.device, torch.float32).permute(0, 2, 1, 3, 4)  # (B, C, T, h, w)
        videos: list[torch.Tensor | None] = [None] * len(states)
        fresh = [b for b, s in enumerate(states) if s.vae.frames == 0]
        steady = [b for b, s in enumerate(states) if s.vae.frames > 0]
        if fresh:
            ctx = torch.stack(
                [c if (c := states[b].last_context) is not None else states[b].context for b in fresh]
            ).to(self.device, torch.float32)
            zz = torch.cat([ctx, z[fresh]], 2)
            K = ctx.shape[2]
            skip = 1 + self.temporal * (K - 1)  # pixels of the context frames: already on screen
            out = self.vae_stream.decode(self._denorm(zz), [states[b].vae for b in fresh], [skip] * len(fresh))
            for b, v in zip(fresh, out):
                videos[b] = v
        if steady:
            out = self.vae_stream.decode(self._denorm(z[steady]), [states[b].vae for b in steady])
            for b, v in zip(steady, out):
                videos[b] = v
        frames = self._fit(self._to_uint8(torch.stack(videos)))  # type: ignore[arg-type]
        return frames.cpu().numpy() if to_numpy else frames

    def _fit(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, F, H, W, 3) uint8 centre-padded (edge) or cropped to out_height x out_width, on the device
        (e.g. 352x640 -> 360x640)."""
        B, Fr, H, W, _ = frames.shape
        if H > self.out_height:
            lo = (H - self.out_height) // 2
            frames, H = frames[:, :, lo : lo + self.out_height], self.out_height
        if W > self.out_width:
            lo = (W - self.out_width) // 2
            frames, W = frames[:, :, :, lo : lo + self.out_width], self.out_width
        if (H, W) == (self.out_height, self.out_width):
            return frames
        top, left = (self.out_height - H) // 2, (self.out_width - W) // 2
        x = frames.reshape(B * Fr, H, W, 3).permute(0, 3, 1, 2).float()
        x = F.pad(x, (left, self.out_width - W - left, top, self.out_height - H - top), mode="replicate")
        return x.to(torch.uint8).permute(0, 2, 3, 1).reshape(B, Fr, self.out_height, self.out_width, 3)

    def next_chunk(self, states: list[WanStreamState]) -> list[np.ndarray]:
        """The next 4*T RGB frames of each stream, (4T, out_height, out_width, 3) uint8 each."""
        return list(self.decode_new(states, self.sample_chunks(states)))
