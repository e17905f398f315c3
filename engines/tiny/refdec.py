"""A decoder that also sees the avatar's reference frame (issue 16), so detail is copied, not guessed.

The reference frame (engines/avatar_world/reference.py) is encoded once per avatar into features at
1/8, 1/4 and 1/2 of the window (the 1/2 level also carries the reference's exact pixels, space-to-depth),
zero-padded by `radius` cells and cached (:class:`RefFeatures`, :class:`RefCache`). Each frame's decoder
(the architecture-2 :class:`Decoder`, unchanged and loadable from its checkpoint) finds, for every latent
cell, where its content sits in the reference: softmax attention over the (2r+1)^2 reference cells around
it at 1/8, started near the identity by a distance bias. The same weights warp the reference features at
1/4 and 1/2 (each cell moves its 2x2 / 4x4 sub-pixels together), and a zero-initialized 1x1 fusion adds
them at each scale, so a fresh RefDecoder decodes exactly what its base decoder does.
Fully convolutional: a crop of latent cells decodes with the cached features' window of that crop
(:meth:`RefFeatures.window`), as the plain decoder's crops do (engines/tiny/crop.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from avatarcast.engines.tiny.crop import CellBox
from avatarcast.engines.tiny.model import Decoder, ResBlock, TinyConfig

SCALES = (1, 2, 4)  # pixels of each feature level per latent cell: 1/8, 1/4, 1/2 of the window
CELL = 8  # window pixels per latent cell (architecture 2)


@dataclass(frozen=True)
class RefDecConfig:
    """Shapes of the reference branch; the base decoder's shapes stay in TinyConfig."""

    ref_channels: tuple[int, int, int] = (64, 32, 16)  # learnt features at 1/8, 1/4, 1/2
    key_dim: int = 32
    radius: int = 3  # cells searched each way around a cell: +-24 px at full size
    encode_margin: int = 4  # extra cells encoded around a box: the reference encoder's reach (training crops)

    @property
    def level_channels(self) -> tuple[int, int, int]:
        """Channels of the cached maps: the 1/2 level adds the reference's pixels (4 x 2 x 2)."""
        c8, c4, c2 = self.ref_channels
        return c8, c4, c2 + 16


class RefEncoder(nn.Module):
    """Reference window (B, 4, pad_H, window_W) in [-1, 1] -> feature maps at 1/8, 1/4, 1/2."""

    def __init__(self, rcfg: RefDecConfig):
        super().__init__()
        c8, c4, c2 = rcfg.ref_channels
        self.s2 = nn.Sequential(nn.Conv2d(4, c2, 3, stride=2, padding=1), ResBlock(c2))
        self.s4 = nn.Sequential(nn.SiLU(), nn.Conv2d(c2, c4, 3, stride=2, padding=1), ResBlock(c4))
        self.s8 = nn.Sequential(nn.SiLU(), nn.Conv2d(c4, c8, 3, stride=2, padding=1), ResBlock(c8))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f2 = self.s2(x)
        f4 = self.s4(f2)
        f8 = self.s8(f4)
        return f8, f4, torch.cat([f2, F.pixel_unshuffle(x, 2)], dim=1)


def _pad_cells(maps, top: int, bottom: int, left: int, right: int) -> tuple[torch.Tensor, ...]:
    """Zero-pad maps at each level by whole cells (the level's pixels per cell times the counts)."""
    return tuple(F.pad(m, (left * s, right * s, top * s, bottom * s)) for m, s in zip(maps, SCALES))


@dataclass(frozen=True)
class RefFeatures:
    """One avatar's reference features over the whole latent grid, zero-padded by `radius` cells."""

    maps: tuple[torch.Tensor, ...]  # three levels (B, C_l, (H + 2r) s, (W + 2r) s), coarse first
    radius: int

    @classmethod
    def encode(cls, encoder: RefEncoder, ref_x: torch.Tensor, radius: int) -> RefFeatures:
        """Encode a whole reference window (B, 4, pad_H, window_W): done once per avatar while serving."""
        return cls(_pad_cells(encoder(ref_x), radius, radius, radius, radius), radius)

    def window(self, box: CellBox) -> tuple[torch.Tensor, ...]:
        """The maps a crop of cells `box` decodes with: its cells plus `radius` each way."""
        r2 = 2 * self.radius
        return tuple(
            m[..., box.top * s : (box.bottom + r2) * s, box.left * s : (box.right + r2) * s]
            for m, s in zip(self.maps, SCALES)
        )


def encode_box(
    encoder: RefEncoder, ref_x: torch.Tensor, box: CellBox, radius: int, margin: int
) -> tuple[torch.Tensor, ...]:
    """RefFeatures.encode(...).window(box) for training crops, encoding only the box's neighbourhood.

    The reference is encoded over the box plus radius + margin cells (clamped to the window, so the
    window's own border is padded as in the whole encode); the margin's cells, which see the cut, are dropped.
    """
    s = CELL
    H, W = ref_x.shape[-2] // s, ref_x.shape[-1] // s
    t0, b0 = max(0, box.top - radius - margin), min(H, box.bottom + radius + margin)
    l0, r0 = max(0, box.left - radius - margin), min(W, box.right + radius + margin)
    maps = encoder(ref_x[..., t0 * s : b0 * s, l0 * s : r0 * s])
    vt, vb = max(0, box.top - radius), min(H, box.bottom + radius)  # cells inside the grid
    vl, vr = max(0, box.left - radius), min(W, box.right + radius)
    inner = tuple(m[..., (vt - t0) * k : (vb - t0) * k, (vl - l0) * k : (vr - l0) * k] for m, k in zip(maps, SCALES))
    return _pad_cells(
        inner, vt - (box.top - radius), box.bottom + radius - vb, vl - (box.left - radius), box.right + radius - vr
    )


class LocalAttention(nn.Module):
    """Per cell, softmax weights over the (2r+1)^2 reference cells around it: where its content was."""

    def __init__(self, ch: int, ref_ch: int, dim: int, radius: int):
        super().__init__()
        self.radius, self.dim = radius, dim
        self.q = nn.Conv2d(ch, dim, 1)
        self.k = nn.Conv2d(ref_ch, dim, 1)
        self.offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
        # a learnt bias per offset, started peaked at 0: a fresh decoder copies from the same place
        self.bias = nn.Parameter(torch.tensor([-2.0 * (dy * dy + dx * dx) for dy, dx in self.offsets]))

    def forward(self, h: torch.Tensor, ref8: torch.Tensor) -> torch.Tensor:
        """h (B, C, h, w) and ref8 (B, C_r, h + 2r, w + 2r) -> weights (B, K, h, w)."""
        q, k = self.q(h), self.k(ref8)
        hh, ww, r = h.shape[-2], h.shape[-1], self.radius
        logits = torch.stack(
            [(q * k[..., r + dy : r + dy + hh, r + dx : r + dx + ww]).sum(1) for dy, dx in self.offsets], dim=1
        )
        return torch.softmax(logits / math.sqrt(self.dim) + self.bias[None, :, None, None], dim=1)


def warp(ref: torch.Tensor, att: torch.Tensor, offsets: list[tuple[int, int]], radius: int, scale: int) -> torch.Tensor:
    """Reference map at `scale` px per cell, padded by radius cells -> the attention's mix of it per cell."""
    hh, ww = att.shape[-2] * scale, att.shape[-1] * scale
    a = F.interpolate(att, scale_factor=float(scale), mode="nearest") if scale > 1 else att
    out: torch.Tensor | None = None
    for i, (dy, dx) in enumerate(offsets):
        y0, x0 = (radius + dy) * scale, (radius + dx) * scale
        term = a[:, i : i + 1] * ref[..., y0 : y0 + hh, x0 : x0 + ww]
        out = term if out is None else out + term
    assert out is not None  # offsets is never empty
    return out


class Fuse(nn.Module):
    """h + f([h, warped reference]), zero-initialized: the reference only adds what helps."""

    def __init__(self, ch: int, ref_ch: int):
        super().__init__()
        self.a = nn.Conv2d(ch + ref_ch, ch, 1)
        self.b = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.b.weight)
        if self.b.bias is not None:
            nn.init.zeros_(self.b.bias)

    def forward(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return h + self.b(F.silu(self.a(torch.cat([h, r], dim=1))))


class RefDecoder(nn.Module):
    """Raw latents (B, C, h, w) + the reference's maps of that crop -> premultiplied RGBA (B, 4, 8h, 8w).

    `base` is an architecture-2 Decoder (its state dict loads as is); the reference is fused at 1/8
    after the first residual block (the attention's queries need some context), and at 1/4 and 1/2
    right after the upsampling.
    """

    def __init__(self, cfg: TinyConfig, rcfg: RefDecConfig = RefDecConfig()):
        super().__init__()
        if cfg.downsample != 8 or len(cfg.dec_channels) != 3:
            raise ValueError("RefDecoder needs the architecture-2 layout: 8x downsampling, 3 decoder levels")
        self.cfg, self.rcfg = cfg, rcfg
        self.base = Decoder(cfg)
        c, rc = cfg.dec_channels, rcfg.level_channels
        self.attn = LocalAttention(c[0], rc[0], rcfg.key_dim, rcfg.radius)
        self.fuse = nn.ModuleList([Fuse(c[i], rc[i]) for i in range(3)])
        self.plan = self._plan()

    def _plan(self) -> list[int]:
        """Index in base.net before which each level fuses its reference features."""
        layers = list(self.base.net)
        shuffles = [i for i, m in enumerate(layers) if isinstance(m, nn.PixelShuffle)]
        starts = [1] + [i + 1 for i in shuffles[:-1]]  # first layer of each level (after the input conv)
        first = starts[0] + (1 if isinstance(layers[starts[0]], ResBlock) else 0)
        return [first] + starts[1:]

    def forward(self, z: torch.Tensor, ref: tuple[torch.Tensor, ...]) -> torch.Tensor:
        att = None
        h = z
        for i, layer in enumerate(self.base.net):
            if i in self.plan:
                lvl = self.plan.index(i)
                if att is None:
                    att = self.attn(h, ref[0])
                r = warp(ref[lvl], att, self.attn.offsets, self.rcfg.radius, SCALES[lvl])
                h = self.fuse[lvl](h, r)
            h = layer(h)
        return h


class RefCache:
    """Reference features per avatar, encoded on first use and kept: a stream never re-encodes its avatar."""

    def __init__(self, encoder: RefEncoder, radius: int, to_window: Callable[[object], torch.Tensor]):
        self.encoder, self.radius, self.to_window = encoder, radius, to_window
        self._feats: dict[Hashable, RefFeatures] = {}
        self.encodes = 0

    @torch.no_grad()
    def get(self, key: Hashable, avatar) -> RefFeatures:
        if key not in self._feats:
            self._feats[key] = RefFeatures.encode(self.encoder, self.to_window(avatar), self.radius)
            self.encodes += 1
        return self._feats[key]


__all__ = [
    "RefDecConfig",
    "RefEncoder",
    "RefFeatures",
    "encode_box",
    "LocalAttention",
    "warp",
    "Fuse",
    "RefDecoder",
    "RefCache",
    "SCALES",
]
