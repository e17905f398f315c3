"""CUDA graphs for the Wan transformer: one captured graph per batch bucket, replayed every step.

Eager Wan is launch-bound at streaming sizes (about 75 ms a step for B=1 or B=4 on an H100,
DESIGN.md): the GPU waits on Python between hundreds of small kernels. A captured graph replays
the whole forward with one launch. Shapes must be static, so batches are padded up to a bucket
(1, 2, 4, 8, 12, 16, ...) and prompt embeddings to a fixed length (Wan pads prompts with zeros to
512 tokens anyway, and attends to the padding, so this changes nothing). Graphs are captured
lazily on first use of a bucket, or all at once with `warm_up`; capture takes seconds, unlike
torch.compile's minutes per shape, which is what a warm restart has to pay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32)
COMPILE_MODES = ("full", "regional")


def compile_transformer(transformer, mode: bool | str, backend: str | Callable[..., Any] = "inductor"):
    """What the CUDA graphs capture: the transformer as it is (False), torch.compile of the whole
    model ("full", True), or of its repeated blocks only ("regional", diffusers' `_repeated_blocks`:
    WanTransformerBlock). Regional traces one block for all 30, so a start compiles (cold) or loads
    (warm) one block's graph per batch size instead of the whole model's: the lever for the warm
    restart. Outside the blocks (patch embedding, text/time embedders, head) stays eager, which
    costs no launches inside a CUDA graph."""
    if not mode:
        return transformer
    if mode is True or mode == "full":
        return torch.compile(transformer, dynamic=False, backend=backend)
    if mode == "regional":
        transformer.compile_repeated_blocks(dynamic=False, backend=backend)  # in place, module by module
        return transformer
    raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")


class GraphedDenoiser:
    """Callable like the transformer (x, t, text, return_dict=False) -> (pred,), via CUDA graphs."""

    def __init__(
        self, transformer, buckets: tuple[int, ...] = DEFAULT_BUCKETS, text_len: int = 512, compile: bool | str = False
    ) -> None:
        self.transformer = transformer
        self.fn = compile_transformer(transformer, compile)
        self.buckets = tuple(sorted(set(int(b) for b in buckets)))
        self.text_len = int(text_len)
        self.pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple, tuple] = {}  # key -> (graph, x, t, text, out)
        self.capture_s: dict[str, float] = {}

    def bucket(self, n: int) -> int | None:
        return next((b for b in self.buckets if b >= n), None)

    def _key(self, bucket: int, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> tuple:
        return (bucket, tuple(x.shape[1:]), x.dtype, tuple(t.shape[1:]), t.dtype, text.shape[-1], text.dtype)

    @torch.no_grad()
    def _capture(self, key: tuple, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> tuple:
        t0 = time.perf_counter()
        bucket = key[0]
        sx = torch.zeros((bucket, *x.shape[1:]), dtype=x.dtype, device=x.device)
        st = torch.zeros((bucket, *t.shape[1:]), dtype=t.dtype, device=t.device)
        se = torch.zeros((bucket, self.text_len, text.shape[-1]), dtype=text.dtype, device=text.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (allocator, cuBLAS/cuDNN plans)
            for _ in range(2):
                self.fn(sx, st, se, return_dict=False)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):
            out = self.fn(sx, st, se, return_dict=False)[0]
        torch.cuda.synchronize()
        self.capture_s[f"B{bucket}x{tuple(x.shape[1:])}"] = round(time.perf_counter() - t0, 3)
        return g, sx, st, se, out

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, return_dict: bool = False):
        B = x.shape[0]
        bucket = self.bucket(B)
        if bucket is None or text.shape[1] > self.text_len or x.device.type != "cuda":
            return self.transformer(x, t, text, return_dict=False)
        key = self._key(bucket, x, t, text)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(key, x, t, text)
        g, sx, st, se, out = entry
        sx[:B].copy_(x)
        st[:B].copy_(t)
        se[:B, : text.shape[1]].copy_(text)
        se[:B, text.shape[1] :].zero_()
        g.replay()
        return (out[:B].clone(),)

    def warm_up(self, sample: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batches: tuple[int, ...]) -> None:
        """Capture the buckets covering `batches` now (start-up), from one sample input of batch 1."""
        x, t, text = sample
        for n in batches:
            b = self.bucket(n)
            if b is None:
                continue
            key = self._key(b, x, t, text)
            if key not in self._graphs:
                self._graphs[key] = self._capture(key, x, t, text)
