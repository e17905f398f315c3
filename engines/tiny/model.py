"""The `tiny` engine's networks: a frame autoencoder and a chunk denoiser.

The autoencoder maps the window of a 640x360 RGBA frame that can hold the avatar (448x360,
padded to 448x384) to an 8x48x56 latent (8x smaller each way); the denoiser is a small
conditional U-Net, on 2x2 patches of latent cells, that predicts the flow-matching velocity of
the next chunk of latent frames given the previous frames, the avatar's reference latent, the
emotion and its intensity, the time t and the shortcut step size d.
Both are plain torch modules; serving goes through avatarcast.engines.backends.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from avatarcast.engines.tiny.config import TinyConfig


def _zero_init(conv: nn.Conv2d) -> None:
    """Weights and bias to zero: the layer starts as a no-op on its residual branch."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ResBlock(nn.Module):
    """Norm-free residual block: cheap on a 2-core CPU, stable at this size."""

    def __init__(self, ch: int):
        super().__init__()
        self.a = nn.Conv2d(ch, ch, 3, padding=1)
        self.b = nn.Conv2d(ch, ch, 3, padding=1)
        _zero_init(self.b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(F.silu(self.a(F.silu(x))))


class Encoder(nn.Module):
    """RGBA in [-1, 1] (premultiplied), (B, 4, pad_H, window_W) -> raw latents (B, C, pad_H/8, window_W/8).

    It runs once per avatar (its reference frame) while serving, so it can afford the width.
    """

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        c, n = cfg.enc_channels, cfg.enc_blocks
        layers: list[nn.Module] = [nn.Conv2d(4, c[0], 3, stride=2, padding=1)]
        for i in range(1, len(c)):
            layers += [ResBlock(c[i - 1]) for _ in range(n[i - 1])]
            layers += [nn.Conv2d(c[i - 1], c[i], 3, stride=2, padding=1)]
        layers += [ResBlock(c[-1]) for _ in range(n[-1])]
        layers += [nn.SiLU(), nn.Conv2d(c[-1], cfg.latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Raw latents (B, C, h, w) -> premultiplied RGBA in [-1, 1], (B, 4, 8h, 8w).

    Fully convolutional: the server decodes only the latent cells around the avatar, and training
    decodes random crops, so the network has learnt what a crop's border looks like. Upsampling is
    conv + pixel shuffle, and the widest layers run at the lowest resolution, because this network
    runs once per output frame on the CPU.
    """

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        c, n = cfg.dec_channels, cfg.dec_blocks
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, c[0], 3, padding=1)]
        for i in range(len(c)):
            layers += [ResBlock(c[i]) for _ in range(n[i])]
            cout = c[i + 1] if i + 1 < len(c) else 4
            layers += [nn.SiLU(), nn.Conv2d(c[i], 4 * cout, 3, padding=1), nn.PixelShuffle(2)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class DecoderV1(nn.Module):
    """The first model's decoder (arch 1): a plain conv after the first upsampling, no residual."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        c = cfg.dec_channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, c[0], 3, padding=1), ResBlock(c[0])]
        for i in range(1, len(c)):
            layers += [nn.SiLU(), nn.Conv2d(c[i - 1], 4 * c[i], 3, padding=1), nn.PixelShuffle(2)]
            if i == 1:
                layers += [nn.SiLU(), nn.Conv2d(c[i], c[i], 3, padding=1)]
        layers += [nn.SiLU(), nn.Conv2d(c[-1], 4 * 4, 3, padding=1), nn.PixelShuffle(2)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def make_decoder(cfg: TinyConfig) -> nn.Module:
    """The decoder the config's architecture names."""
    return DecoderV1(cfg) if cfg.arch == 1 else Decoder(cfg)


class HalfResDecoder(nn.Module):
    """The degradation ladder's "lower internal resolution" decoder, about 4x cheaper than Decoder.

    The latents are average-pooled 2x, decoded at half size by a Decoder of the same shape
    (distilled from the full one) and upscaled bilinearly. Only the decode changes: the denoiser
    and the streams' latent contexts stay at full size, so a stream moves between the rungs without
    a visible jump in pose. Crops given to it must have an even number of cells each way.
    """

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.decoder = make_decoder(cfg)

    def forward_small(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, C, h, w) -> premultiplied RGBA at half size (B, 4, 4h, 4w)."""
        return self.decoder(F.avg_pool2d(z, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.forward_small(z), scale_factor=2.0, mode="bilinear", align_corners=False)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of a scalar in [0, 1] (scaled to 0..1000 like diffusion models)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class CondResBlock(nn.Module):
    """Residual block with GroupNorm and FiLM from the conditioning vector."""

    def __init__(self, cin: int, cout: int, cond_dim: int):
        super().__init__()
        self.n1 = nn.GroupNorm(8, cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * cout)
        self.n2 = nn.GroupNorm(8, cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        _zero_init(self.c2)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.n2(h) * (1 + scale) + shift
        h = self.c2(F.silu(h))
        return self.skip(x) + h


class Attention(nn.Module):
    """Self-attention over the coarsest grid (6x10 = 60 tokens): lets the whole body agree."""

    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(8, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        _zero_init(self.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        att = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(c // self.heads), dim=-1)
        y = torch.einsum("bhnm,bhdm->bhdn", att, v).reshape(b, c, h, w)
        return x + self.out(y)


# Smallest 1 - t the "x" denoiser divides by (as in Li & He, 2025, "Back to Basics: Let Denoising
# Generative Models Denoise"): only t > 0.95 is affected, which no 1-16 step sampler queries.
X_PRED_MIN_GAP = 0.05


class Denoiser(nn.Module):
    """Predicts the velocity of the next chunk's latents (rectified flow, shortcut-conditioned).

    Inputs (latents normalized per channel):
      x (B, T*C, H, W) noisy chunk at time t (t=0 noise, t=1 data); t, d (B,) in [0, 1];
      ctx (B, K*C, H, W) the previous K frames; ref (B, C, H, W) the avatar's reference frame;
      emotion (B,) int64; intensity (B,) float in [0, 1].
    The latents are grouped into cfg.patch x cfg.patch patches (pixel unshuffle) on the way in
    and back on the way out, so the U-Net runs at a coarse grid whatever the latent's size.
    With cfg.den_pred == "x" the network outputs the clean chunk x1 and forward returns the
    velocity that lands on it, (x1 - x) / (1 - t): callers see a velocity either way.
    """

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        C, T, K = cfg.latent_channels, cfg.chunk_frames, cfg.context_frames
        ch = cfg.den_channels
        cd = cfg.cond_dim
        P2 = cfg.patch * cfg.patch
        self.emotion_emb = nn.Embedding(len(cfg.emotions), cd)
        self.cond_mlp = nn.Sequential(nn.Linear(3 * 128 + cd, cd), nn.SiLU(), nn.Linear(cd, cd))
        self.inp = nn.Conv2d((T * C + K * C + C) * P2, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, c in enumerate(ch):
            cin = ch[i - 1] if i else ch[0]
            self.down.append(nn.ModuleList([CondResBlock(cin, c, cd), CondResBlock(c, c, cd)]))
            if i < len(ch) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([CondResBlock(ch[-1], ch[-1], cd), CondResBlock(ch[-1], ch[-1], cd)])
        self.attn = Attention(ch[-1])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(ch) - 1)):
            self.upsample.append(nn.Conv2d(ch[i + 1], ch[i], 3, padding=1))
            self.up.append(nn.ModuleList([CondResBlock(2 * ch[i], ch[i], cd), CondResBlock(ch[i], ch[i], cd)]))
        self.out_norm = nn.GroupNorm(8, ch[0])
        self.out = nn.Conv2d(ch[0], T * C * P2, 3, padding=1)
        _zero_init(self.out)

    def forward(self, x, t, d, ctx, ref, emotion, intensity):
        cond = torch.cat(
            [
                timestep_embedding(t, 128),
                timestep_embedding(d, 128),
                timestep_embedding(intensity, 128),
                self.emotion_emb(emotion),
            ],
            dim=1,
        )
        cond = self.cond_mlp(cond)
        p = self.cfg.patch
        h = self.inp(
            F.pixel_unshuffle(torch.cat([x, ctx, ref], dim=1), p) if p > 1 else torch.cat([x, ctx, ref], dim=1)
        )
        skips = []
        for i, blocks in enumerate(self.down):
            for blk in cast(nn.ModuleList, blocks):
                h = blk(h, cond)
            if i < len(self.downsample):
                skips.append(h)
                h = self.downsample[i](h)
        h = self.mid[0](h, cond)
        h = self.attn(h)
        h = self.mid[1](h, cond)
        for up, blocks in zip(self.upsample, self.up):
            h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = torch.cat([h, skips.pop()], dim=1)
            for blk in cast(nn.ModuleList, blocks):
                h = blk(h, cond)
        y = self.out(F.silu(self.out_norm(h)))
        y = F.pixel_shuffle(y, p) if p > 1 else y
        if self.cfg.den_pred == "v":
            return y
        gap = (1 - t.float()).clamp(min=X_PRED_MIN_GAP)[:, None, None, None]
        return (y - x) / gap


# --- frame <-> tensor conversions shared by training, export and the torch backend ---------


def frames_to_tensor(frames: torch.Tensor, cfg: TinyConfig) -> torch.Tensor:
    """uint8 (B, H, W, 4) straight-alpha frames -> the window, premultiplied, (B, 4, pad_H, window_W) in [-1, 1]."""
    # cast before slicing the window: TensorRT takes uint8 only straight into a Cast
    x = frames.permute(0, 3, 1, 2).float()[..., cfg.window_x0 : cfg.window_x0 + cfg.window_width] / 255.0
    rgb, a = x[:, :3] * x[:, 3:4], x[:, 3:4]
    x = torch.cat([rgb, a], dim=1) * 2 - 1
    pad = cfg.pad_top
    return F.pad(x, (0, 0, pad, cfg.pad_height - cfg.height - pad), value=-1.0)


def tensor_to_rgba(x: torch.Tensor) -> torch.Tensor:
    """Premultiplied float (B, 4, h, w) in [-1, 1] -> uint8 (B, h, w, 4) straight-alpha RGBA."""
    x = ((x + 1) * 0.5).clamp(0, 1)
    a = x[:, 3:4]
    rgb = (x[:, :3] / a.clamp(min=1.0 / 255)).clamp(0, 1)
    out = torch.cat([rgb, a], dim=1) * 255.0 + 0.5
    return out.to(torch.uint8).permute(0, 2, 3, 1)


def tensor_to_frames(x: torch.Tensor, cfg: TinyConfig) -> torch.Tensor:
    """The whole window, premultiplied float (B, 4, pad_H, window_W) -> uint8 frames (B, H, W, 4)."""
    win = tensor_to_rgba(x[:, :, cfg.pad_top : cfg.pad_top + cfg.height])
    left, right = cfg.window_x0, cfg.width - cfg.window_x0 - cfg.window_width
    return F.pad(win, (0, 0, left, right)) if left or right else win


class LatentNorm(nn.Module):
    """Per-channel normalization of latents, baked into the exported graphs."""

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.register_buffer("mean", torch.tensor(cfg.latent_mean, dtype=torch.float32)[None, :, None, None])
        self.register_buffer("std", torch.tensor(cfg.latent_std, dtype=torch.float32)[None, :, None, None])

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


class FrameEncoder(nn.Module):
    """uint8 RGBA frames (B, 360, 640, 4) -> normalized latents: the graph the backends serve."""

    def __init__(self, cfg: TinyConfig, encoder: Encoder):
        super().__init__()
        self.cfg, self.encoder, self.norm = cfg, encoder, LatentNorm(cfg)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.norm.normalize(self.encoder(frames_to_tensor(frames, self.cfg)))


class FrameDecoder(nn.Module):
    """Normalized latent cells (B, C, h, w), any h and w -> uint8 RGBA (B, 8h, 8w, 4) of those cells.

    The graph the backends serve: they decode the cells around the avatar (engines/tiny/crop.py) and
    place the result in a transparent frame.
    """

    def __init__(self, cfg: TinyConfig, decoder: nn.Module):
        super().__init__()
        self.cfg, self.decoder, self.norm = cfg, decoder, LatentNorm(cfg)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return tensor_to_rgba(self.decoder(self.norm.denormalize(z)))
