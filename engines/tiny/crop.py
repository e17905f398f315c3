"""Decode only the latent cells that hold the avatar.

The avatar covers about a third of the model's window; the rest decodes to transparent pixels.
An empty cell's latent is (nearly) one fixed vector, so cells far from it mark the avatar, its
outline, shadow and effects. The decoder is fully convolutional and was trained on crops, so the
cells around them, plus a margin, decode to the same pixels as the whole grid would, for a
fraction of the CPU time. numpy only: this runs on the serving path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatarcast.engines.tiny.config import TinyConfig

ALIGN = 4  # boxes snap to 4-cell steps: even sizes for the half-resolution decoder, and few distinct shapes


@dataclass(frozen=True)
class CellBox:
    """Latent rows [top, bottom) and columns [left, right) of a crop."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def empty(self) -> bool:
        return self.bottom <= self.top or self.right <= self.left

    @property
    def cells(self) -> int:
        return max(0, self.bottom - self.top) * max(0, self.right - self.left)


def avatar_cells(latents: np.ndarray, cfg: TinyConfig) -> np.ndarray:
    """(N, C, H, W) normalized latents -> (H, W) bool: cells of any frame that are not empty background."""
    if cfg.crop_threshold <= 0:
        return np.ones(latents.shape[-2:], bool)
    bg = np.asarray(cfg.background_latent, np.float32)[None, :, None, None]
    dist = np.sqrt(((latents - bg) ** 2).mean(axis=1))  # (N, H, W), RMS over channels
    return (dist > cfg.crop_threshold).any(axis=0)


def crop_box(latents: np.ndarray, cfg: TinyConfig) -> CellBox:
    """The cells a batch of frames must decode: their avatar cells' bounding box, with margin, aligned."""
    H, W = latents.shape[-2:]
    mask = avatar_cells(latents, cfg)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return CellBox(0, 0, 0, 0)
    m = cfg.crop_margin
    return CellBox(*_aligned(rows[0] - m, rows[-1] + 1 + m, H), *_aligned(cols[0] - m, cols[-1] + 1 + m, W))


def _aligned(lo: int, hi: int, size: int) -> tuple[int, int]:
    lo, hi = max(0, lo), min(size, hi)
    lo -= lo % ALIGN
    hi = min(size, hi + (-hi) % ALIGN)
    return int(lo), int(hi)


def place(rgba: np.ndarray, box: CellBox, cfg: TinyConfig, out: np.ndarray) -> np.ndarray:
    """Write decoded cells (N, 8h, 8w, 4) of `box` into transparent frames `out` (N, 360, 640, 4)."""
    s = cfg.downsample
    y0, x0 = box.top * s - cfg.pad_top, box.left * s + cfg.window_x0
    r0, c0 = max(0, -y0), 0  # the pad rows above and below the frame are dropped
    r1 = rgba.shape[1] - max(0, y0 + rgba.shape[1] - cfg.height)
    out[:, y0 + r0 : y0 + r1, x0 + c0 : x0 + rgba.shape[2]] = rgba[:, r0:r1]
    return out


def grid_to_frames(rgba: np.ndarray, cfg: TinyConfig) -> np.ndarray:
    """Decoded cells of the whole grid (N, pad_H, window_W, 4) -> frames (N, 360, 640, 4)."""
    H, W = cfg.latent_hw
    out = np.zeros((len(rgba), cfg.height, cfg.width, 4), np.uint8)
    return place(rgba, CellBox(0, H, 0, W), cfg, out)
