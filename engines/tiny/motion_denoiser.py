"""Architecture 3's denoiser: the next chunk of motion vectors, as a shortcut flow model.

A chunk is T frames of MOTION_DIM numbers (engines/avatar_world/skeleton.py), about 330 numbers
against architecture 2's 86,000 latent values: a residual MLP can model it exactly enough to
commit to one sharp motion, which is what the image-latent denoisers could not do (they gave the
mean of the possible chunks, drawn as blur; docs/training/README.md).

It keeps the image denoiser's call signature, with the motion as a 1 x 1 "image" of T*D channels:
x (B, T*D, 1, 1), t, d (B,), ctx (B, K*D, 1, 1), ref (B, D, 1, 1), emotion (B,), intensity (B,),
so the sampler (engines/sampler.py), the engine's streams and the backends' denoise call carry
over unchanged. Like TinyConfig's den_pred "x", the network predicts the clean chunk and returns
the velocity that lands on it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from avatarcast.engines.avatar_world.skeleton import MOTION_DIM
from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.engines.tiny.model import X_PRED_MIN_GAP, timestep_embedding
from avatarcast.vocabulary import EMOTIONS


class _Block(nn.Module):
    """Pre-activation residual MLP block with FiLM from the conditioning vector."""

    def __init__(self, width: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(cond_dim, 2 * width)
        self.a = nn.Linear(width, 2 * width)
        self.b = nn.Linear(2 * width, width)
        nn.init.zeros_(self.b.weight)
        nn.init.zeros_(self.b.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond).chunk(2, dim=1)
        return h + self.b(F.silu(self.a(self.norm(h) * (1 + scale) + shift)))


class MotionDenoiser(nn.Module):
    def __init__(
        self,
        motion_dim: int,
        chunk_frames: int,
        context_frames: int,
        n_emotions: int,
        width: int = 512,
        blocks: int = 6,
        cond_dim: int = 256,
    ):
        super().__init__()
        self.D, self.T, self.K = motion_dim, chunk_frames, context_frames
        self.emotion_emb = nn.Embedding(n_emotions, cond_dim)
        self.cond_mlp = nn.Sequential(nn.Linear(3 * 128 + cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.inp = nn.Linear((chunk_frames + context_frames + 1) * motion_dim, width)
        self.blocks = nn.ModuleList([_Block(width, cond_dim) for _ in range(blocks)])
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, chunk_frames * motion_dim)
        # start at "the chunk is its last context frame, repeated": a still avatar, not noise
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, t, d, ctx, ref, emotion, intensity):
        B = x.shape[0]
        cond = self.cond_mlp(
            torch.cat(
                [
                    timestep_embedding(t, 128),
                    timestep_embedding(d, 128),
                    timestep_embedding(intensity, 128),
                    self.emotion_emb(emotion),
                ],
                dim=1,
            )
        )
        xf, cf, rf = x.reshape(B, -1), ctx.reshape(B, -1), ref.reshape(B, -1)
        h = self.inp(torch.cat([xf, cf, rf], 1))
        for blk in self.blocks:
            h = blk(h, cond)
        last = cf[:, -self.D :].repeat(1, self.T)
        x1 = last + self.out(F.silu(self.out_norm(h)))
        gap = (1 - t.float()).clamp(min=X_PRED_MIN_GAP)[:, None]
        return ((x1 - xf) / gap).reshape(x.shape)


def build_denoiser(arch: dict | None = None) -> MotionDenoiser:
    """The denoiser in the size a checkpoint records (its "arch": width, blocks), or the first runs' size.

    Its fixed sizes (motion, chunk, context, emotions) are the vocabulary's and TinyConfig's: one home each."""
    cfg = TinyConfig()
    return MotionDenoiser(MOTION_DIM, cfg.chunk_frames, cfg.context_frames, len(EMOTIONS), **(arch or {}))


__all__ = ["MotionDenoiser", "build_denoiser"]
