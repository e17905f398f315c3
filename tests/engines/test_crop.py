"""Decoding only the cells around the avatar (engines/tiny/crop.py) and its use by the onnxruntime backend."""

from __future__ import annotations

import numpy as np
import pytest

from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.engines.tiny.crop import ALIGN, CellBox, crop_box, place


def _cfg(**kw) -> TinyConfig:
    return TinyConfig(background_latent=[0.5] * 8, crop_threshold=0.3, crop_margin=2, **kw)


def _latents(cfg: TinyConfig, n: int = 2) -> np.ndarray:
    H, W = cfg.latent_hw
    z = np.broadcast_to(np.float32(0.5), (n, cfg.latent_channels, H, W)).copy()
    z += (
        np.random.default_rng(0).normal(0, 0.02, z.shape).astype(np.float32)
    )  # empty cells are near, not at, the vector
    return z


def test_box_covers_the_avatar_cells_with_margin_and_aligns():
    cfg = _cfg()
    z = _latents(cfg)
    z[0, :, 10:21, 17:25] += 2.0  # frame 0's avatar
    z[1, 3, 30, 40] -= 2.0  # a lone cell in frame 1: an effect far from the body
    box = crop_box(z, cfg)
    assert box.top <= 10 - 2 and box.bottom >= 21 + 2 and box.left <= 17 - 2 and box.right >= 41 + 2
    assert all(v % ALIGN == 0 for v in (box.top, box.left)) and box.bottom % ALIGN == 0 and box.right % ALIGN == 0
    assert box.bottom - box.top < cfg.latent_hw[0] or box.right - box.left < cfg.latent_hw[1]


def test_empty_frames_give_an_empty_box_and_no_threshold_means_the_whole_grid():
    cfg = _cfg()
    assert crop_box(_latents(cfg), cfg).empty
    cfg.crop_threshold = 0.0
    H, W = cfg.latent_hw
    assert crop_box(_latents(cfg), cfg) == CellBox(0, H, 0, W)


def test_box_clips_at_the_grid_edge():
    cfg = _cfg()
    z = _latents(cfg)
    z[:, :, 0:2, 54:56] += 2.0
    box = crop_box(z, cfg)
    assert box.top == 0 and box.right == cfg.latent_hw[1]


def test_place_drops_the_pad_rows_and_offsets_by_the_window():
    cfg = _cfg()
    s = cfg.downsample
    box = CellBox(0, 4, 3, 7)  # the top 4 cell rows hold the 12 pad rows
    rgba = np.zeros((1, 4 * s, 4 * s, 4), np.uint8)
    rgba[0, :, :, 0] = np.arange(4 * s, dtype=np.uint8)[:, None]  # red = row within the crop
    rgba[..., 3] = 255
    out = place(rgba, box, cfg, np.zeros((1, cfg.height, cfg.width, 4), np.uint8))
    x0 = cfg.window_x0 + 3 * s
    assert out[0, 0, x0, 0] == cfg.pad_top  # frame row 0 is crop row pad_top
    assert out[0, : 4 * s - cfg.pad_top, x0 : x0 + 4 * s, 3].min() == 255
    assert out[0, 4 * s - cfg.pad_top :].max() == 0 and out[0, :, :x0].max() == 0 and out[0, :, x0 + 4 * s :].max() == 0
    bottom = CellBox(44, 48, 0, 4)  # the last cell rows hold the bottom pad rows
    out = place(
        np.full((1, 4 * s, 4 * s, 4), 9, np.uint8), bottom, cfg, np.zeros((1, cfg.height, cfg.width, 4), np.uint8)
    )
    assert out[0, 44 * s - cfg.pad_top :, cfg.window_x0 : cfg.window_x0 + 4 * s].min() == 9


def test_onnxruntime_backend_decodes_the_box_and_leaves_the_rest_transparent(tmp_path):
    pytest.importorskip("torch")
    import torch

    from avatarcast.engines.backends.onnxruntime_backend import OnnxRuntimeBackend
    from avatarcast.engines.tiny.model import FrameDecoder
    from avatarcast.engines.tiny.weights import load_manifest, load_torch_modules
    from tools import export_tiny as ex

    m = ex.random_weights(tmp_path / "w", small=True, seed=3, lowres=True)
    m.config.background_latent, m.config.crop_threshold = [0.5] * 8, 0.3
    be = OnnxRuntimeBackend(m, threads=1)
    z = _latents(m.config, 3)
    z[:, :, 12:30, 20:36] += 1.5
    box = crop_box(z, m.config)
    got = be.decode(z)
    _, dec, _ = load_torch_modules(load_manifest(tmp_path / "w"))
    with torch.no_grad():
        want = FrameDecoder(m.config, dec)(
            torch.from_numpy(z[:, :, box.top : box.bottom, box.left : box.right])
        ).numpy()
    ref = place(want, box, m.config, np.zeros_like(got))
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    s = m.config.downsample
    rows = slice(max(0, box.top * s - m.config.pad_top), box.bottom * s - m.config.pad_top)
    outside = got.copy()
    outside[:, rows, m.config.window_x0 + box.left * s : m.config.window_x0 + box.right * s] = 0
    assert outside.max() == 0
    assert be.decode(z, lowres=True).shape == got.shape  # the half-resolution decoder takes the same (even) boxes
    assert be.decode(_latents(m.config, 2)).max() == 0  # nothing but background: nothing decoded
