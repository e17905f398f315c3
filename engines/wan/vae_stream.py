"""Streaming decode with the Wan VAE's causal feature cache: each chunk decodes only its new frames.

AutoencoderKLWan decodes a clip one latent frame at a time, each causal 3D convolution reading the
last frames of its input from a per-layer cache (`feat_cache`). diffusers clears that cache at
the start and end of every `decode` call, so decoding a stream chunk by chunk would either
restart the video at every chunk or re-decode old frames as context. Here each stream keeps its
own cache between chunks, so decoding chunk after chunk gives exactly the frames a decode of the
whole stream as one clip would give, and each chunk costs only its new frames.

Streams in one batch are decoded together: their caches are concatenated along the batch axis
per layer, the decoder runs once per latent frame for the whole group, and the caches are split
back. Streams whose caches have a different layout (a stream's first two frames fill the cache
differently) are decoded as separate groups.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from avatarcast.engines.wan.vae_aot import AotSteadyDecoder, AotUnavailable

log = logging.getLogger(__name__)


@dataclass
class VaeStreamCache:
    """One stream's decoder state: the per-layer feature cache and how many latent frames it has seen."""

    feats: list | None = None  # None until the first frame; entries: None, "Rep" or a (1, C, <=2, H, W) tensor
    frames: int = 0
    meta: dict = field(default_factory=dict)


def _signature(c: VaeStreamCache) -> tuple:
    if c.feats is None:
        return ("new",)
    return tuple(f if f is None or isinstance(f, str) else tuple(f.shape[1:]) for f in c.feats)


def _merge(caches: list[VaeStreamCache], n_layers: int) -> list:
    if caches[0].feats is None:
        return [None] * n_layers
    if len(caches) == 1:
        return list(caches[0].feats)
    stacks = [c.feats for c in caches if c.feats is not None]  # all of them: one signature per group
    return [
        f if f is None or isinstance(f, str) else torch.cat([s[i] for s in stacks])
        for i, f in enumerate(caches[0].feats)
    ]


def _canonical(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """t with exactly the strides a fresh tensor of its shape has in fmt (a copy only if not).

    The compiled decoder guards on strides, size-1 dimensions' included, which `.contiguous()`
    leaves as they were (a batch-of-one cache sliced from a longer clip keeps that clip's strides)."""
    want = torch.empty(t.shape, device="meta", memory_format=fmt).stride()
    if t.stride() == want:
        return t
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=fmt)
    return out.copy_(t)


def _own(t: torch.Tensor) -> torch.Tensor:
    """t, or a copy of it when it views a larger block of memory.

    A stream keeps its cache until its next chunk: a cache entry that is a slice of a batch's merged
    cache, or (compiled) of the activation it was taken from, would keep that whole block alive. On an
    H100 that held 15 copies of the decoder's largest activations (64 GB peak instead of 33)."""
    if t.untyped_storage().nbytes() <= t.numel() * t.element_size():
        return t
    return t.clone()


def _split(merged: list, caches: list[VaeStreamCache]) -> None:
    for b, c in enumerate(caches):
        c.feats = [f if f is None or isinstance(f, str) else _own(f[b : b + 1]) for f in merged]


@contextmanager
def _cudnn_heuristics(on: bool):
    """cuDNN's own convolution algorithm choice, not cudnn.benchmark's timing of every algorithm, for
    the eager calls: a stream's first frames decode once, so timing algorithms for their shapes
    (new for each group of new streams) costs more than it saves (seconds at every start, and a
    stall whenever streams start in a new combination). The flag is process-wide: another thread's
    call meeting a new shape meanwhile gets heuristics too, which is slower at worst, never wrong."""
    if not on or not torch.backends.cudnn.benchmark:
        yield
        return
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = True


class StreamingVaeDecoder:
    """Decodes (B, C, T, h, w) latents of B streams, continuing each stream's own causal cache."""

    def __init__(
        self,
        vae,
        max_batch: int = 4,
        compile: bool = False,
        channels_last: bool = False,
        frames_per_call: int = 1,
        compile_backend="inductor",
        aot_dir: str | Path | None = None,
        steady=None,
    ) -> None:
        self.vae = vae
        # Once a stream's cache is steady, every layer is a causal convolution (or per-frame) with a
        # 2-frame cache, so k latent frames decode in one call exactly as k calls would: bigger
        # convolutions and a third of the cache copies at k=3.
        self.frames_per_call = max(1, int(frames_per_call))
        # channels-last saves cuDNN's NCHW<->NHWC conversions around every convolution on a GPU
        self.channels_last = channels_last
        if channels_last:
            for m in vae.decoder.modules():
                if isinstance(m, torch.nn.Conv3d):
                    m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
                elif isinstance(m, torch.nn.Conv2d):
                    m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        # Steady-state calls (every cache entry a tensor, frames_per_call frames) have fixed shapes but
        # for the batch: torch.compile fuses the decoder's many memory-bound ops (norms, pads, cache
        # copies) there; a stream's first frames stay eager.
        self._format = torch.channels_last_3d if channels_last else torch.contiguous_format
        # The decode is compute-bound (batching streams barely helps it) and its activations at
        # 360P are GBs per stream-frame: decode at most max_batch streams at once.
        self.max_batch = max(1, int(max_batch))
        self.n_layers = vae._cached_conv_counts["decoder"]
        self.aot: Any = None  # an AotSteadyDecoder, or an exported graph's steady frame (runtime.py)
        self._compiled: Callable[..., Any] | None = None
        if steady is not None:  # an exported graph run by TensorRT or ONNX Runtime (runtime.py): (x, feats) -> frames
            self.aot = self._compiled = steady
        elif compile and aot_dir is not None:  # ahead of time: a warm start loads packages (vae_aot.py)
            self.aot = self._compiled = AotSteadyDecoder(
                vae.decoder, self.n_layers, aot_dir, self.max_batch, self._format
            )
        self._backend = compile_backend
        if compile and self.aot is None:
            self._compiled = self._jit()
        self.compiled_calls = 0
        # Steady calls use the compiled decoder while this is set: cleared while the graphs compile in
        # the background (warm_up_in_background), when those calls decode eagerly instead of waiting.
        self.compiled_ready = threading.Event()
        self.compiled_ready.set()
        self.compiled_ready_s: float | None = None  # background compile: seconds until the graphs served
        self._local = threading.local()  # .warming: this thread is warming up (compiled calls allowed)
        self.patch_size = vae.config.get("patch_size")

    def _jit(self):
        # few graphs (batch 1, 2, >= 3), but dynamo's default limit of 8 counts every recompile
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        return torch.compile(self.vae.decoder, dynamic=False, backend=self._backend)

    @property
    def compiled(self) -> bool | None:
        """None: steady frames decode eagerly (not compiled); False while the graphs compile in the
        background; True once they serve."""
        return None if self._compiled is None else self.compiled_ready.is_set()

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.post_quant_conv.weight.dtype

    @torch.no_grad()
    def warm_up(self, latent_hw: tuple[int, int], batches) -> None:
        """Compile the steady-state graphs for these batch sizes now (minutes cold, seconds from
        inductor's disk cache) rather than stall every stream the first time a batch size occurs."""
        if self._compiled is None:
            return
        dev = self.vae.post_quant_conv.weight.device
        k = self.frames_per_call
        self._local.warming = True
        try:
            for b in batches:
                caches = [VaeStreamCache() for _ in range(b)]
                z = torch.zeros(b, self.vae.config.z_dim, 1 + 2 * k, *latent_hw, device=dev)
                self.decode(z[:, :, : 1 + k], caches)  # a fresh stream's first chunk: eager
                self.decode(z[:, :, 1 + k :], caches)  # steady: compiled
        finally:
            self._local.warming = False

    def warm_up_in_background(self, latent_hw: tuple[int, int], batches) -> threading.Thread | None:
        """warm_up on a thread of its own (and its own CUDA stream), so that a start is ready before
        the VAE's graphs are: steady frames decode eagerly (slower: 13.4 against 7.9 ms a frame on an
        H100) until they are, then switch. A failed compile is logged and leaves the decode eager."""
        if self._compiled is None:
            return None
        self.compiled_ready.clear()
        dev = self.vae.post_quant_conv.weight.device
        t0 = time.perf_counter()

        def run() -> None:
            try:
                with torch.cuda.stream(torch.cuda.Stream(dev)) if dev.type == "cuda" else nullcontext():
                    self.warm_up(latent_hw, batches)
                    if dev.type == "cuda":
                        torch.cuda.current_stream().synchronize()
            except Exception:
                log.exception("wan vae: compiling the decoder's graphs failed; its frames stay eager")
                return
            self.compiled_ready_s = round(time.perf_counter() - t0, 2)
            self.compiled_ready.set()
            log.info(
                "wan vae: compiled decoder serving after %.1f s (compiled in the background)", self.compiled_ready_s
            )

        thread = threading.Thread(target=run, name="wan-vae-compile", daemon=True)
        log.info(
            "wan vae: compiling the decoder's graphs in the background; steady frames decode eagerly "
            "(slower) until they serve"
        )
        thread.start()
        return thread

    @torch.no_grad()
    def decode(
        self, z: torch.Tensor, caches: list[VaeStreamCache], skip: list[int] | None = None
    ) -> list[torch.Tensor]:
        """z: denormalized latents (B, C, T, h, w). Returns per stream its video (3, F, H, W) in [-1, 1],
        F = 4 per latent frame (1 for a stream's very first frame), minus the first skip[b] frames
        of stream b's output (used to prime a cache with context whose pixels are already shown)."""
        if z.shape[0] != len(caches):
            raise ValueError(f"{z.shape[0]} latents for {len(caches)} caches")
        skip = skip or [0] * len(caches)
        groups: dict[tuple, list[int]] = {}
        for b, c in enumerate(caches):
            groups.setdefault(_signature(c), []).append(b)
        groups = {
            (sig, i): idx[i : i + self.max_batch]
            for sig, idx in groups.items()
            for i in range(0, len(idx), self.max_batch)
        }
        out: list[torch.Tensor | None] = [None] * len(caches)
        x_all = self.vae.post_quant_conv(z.to(self.dtype))  # 1x1x1: frame-independent
        if self.channels_last:
            x_all = x_all.contiguous(memory_format=torch.channels_last_3d)
        for idx in groups.values():
            group = [caches[b] for b in idx]
            first = group[0].frames == 0
            feats = _merge(group, self.n_layers)
            x = x_all[idx] if len(idx) < len(caches) else x_all
            frames = []
            t = 0
            while t < x.shape[2]:
                # steady: the cache layout no longer changes (no "Rep" marks; some 1x1 shortcut
                # convs never cache, their entries stay None)
                steady = (
                    not (first and t == 0)
                    and not any(isinstance(f, str) for f in feats)
                    and any(torch.is_tensor(f) for f in feats)
                )
                n = min(self.frames_per_call, x.shape[2] - t) if steady else 1
                # compiled: full steady calls only, so only the batch varies (a stream's first chunk,
                # its frames after the cache fills, decodes eagerly once)
                compiled = self._compiled is not None and (
                    self.compiled_ready.is_set() or getattr(self._local, "warming", False)
                )
                fn = (
                    self._compiled
                    if steady and n == self.frames_per_call and compiled and self._compiled is not None
                    else self.vae.decoder
                )
                xt = x[:, :, t : t + n]
                if fn is self._compiled:
                    self.compiled_calls += 1
                    # one layout for the input and every cached tensor: the graph guards on strides (or
                    # a compile per call), the AOT package's kernels assume the exported ones
                    xt = _canonical(xt, self._format)
                    feats = [_canonical(f, self._format) if torch.is_tensor(f) else f for f in feats]
                    if self.aot is not None:
                        try:
                            frames.append(self.aot(xt, feats))  # feats: updated in place
                            t += n
                            continue
                        except AotUnavailable as e:
                            log.warning(
                                "wan vae: no AOTInductor package (%s); torch.compile instead, re-traced at every start",
                                e,
                            )
                            self.aot = None
                            self._compiled = fn = self._jit()
                    if xt.shape[0] > 1:  # one graph for every batch of 2 or more (1 is its own)
                        torch._dynamo.maybe_mark_dynamic(xt, 0)
                        for f in feats:
                            if torch.is_tensor(f):
                                torch._dynamo.maybe_mark_dynamic(f, 0)
                with _cudnn_heuristics(fn is not self._compiled and xt.is_cuda):
                    frames.append(fn(xt, feat_cache=feats, feat_idx=[0], first_chunk=first and t == 0))
                t += n
            video = torch.cat(frames, 2)
            if self.patch_size is not None:
                # diffusers: heavy, kept off import
                from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

                video = unpatchify(video, patch_size=self.patch_size)
            video = video.clamp(-1.0, 1.0)
            _split(feats, group)
            for j, (b, c) in enumerate(zip(idx, group)):
                c.frames += x.shape[2]
                out[b] = video[j, :, skip[b] :]
        return out  # type: ignore[return-value]
