"""The decoder's window in numpy: frames in, premultiplied window tensors out, and back.

The numpy twins of engines/tiny/model.py's `frames_to_tensor` and `tensor_to_rgba`, for the engines that serve
without torch (architecture 3 on onnxruntime draws the window itself; architecture 2's graphs hold these steps
inside). tests/engines/test_motion_onnx.py checks both pairs agree.
"""

from __future__ import annotations

import numpy as np

from avatarcast.engines.tiny.config import TinyConfig


def frames_to_window(frames: np.ndarray, cfg: TinyConfig) -> np.ndarray:
    """uint8 (B, H, W, 4) straight-alpha frames -> the window, premultiplied, float32 (B, 4, pad_H, window_W) in
    [-1, 1] (rows above and below the frame transparent)."""
    x = frames[..., cfg.window_x0 : cfg.window_x0 + cfg.window_width, :].astype(np.float32) / 255.0
    x = np.concatenate([x[..., :3] * x[..., 3:], x[..., 3:]], -1).transpose(0, 3, 1, 2) * 2 - 1
    out = np.full((len(frames), 4, cfg.pad_height, cfg.window_width), -1.0, np.float32)
    out[:, :, cfg.pad_top : cfg.pad_top + cfg.height] = x
    return out


def window_to_rgba(x: np.ndarray) -> np.ndarray:
    """Premultiplied float (B, 4, h, w) in [-1, 1] -> uint8 (B, h, w, 4) straight-alpha RGBA."""
    x = np.clip((x + 1) * 0.5, 0, 1)
    a = x[:, 3:4]
    rgb = np.clip(x[:, :3] / np.maximum(a, np.float32(1.0 / 255)), 0, 1)
    out = np.concatenate([rgb, a], 1) * np.float32(255.0) + np.float32(0.5)
    return out.astype(np.uint8).transpose(0, 2, 3, 1)


def pixel_centres(h: int, w: int, full_hw: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(h, w, 2) float32 normalized window coordinates (x, y) of the centres of an h x w box whose first pixel is
    `origin` (row, column) in a grid of `full_hw`: what the motion decoder's graph takes as its box (the numpy twin
    of engines/tiny/motion.pixel_centres, in the same float32 arithmetic)."""
    fh, fw = full_hw
    ys = ((np.arange(h, dtype=np.float32) + np.float32(origin[0])) * 2 + 1) / np.float32(fh) - 1
    xs = ((np.arange(w, dtype=np.float32) + np.float32(origin[1])) * 2 + 1) / np.float32(fw) - 1
    return np.stack([np.broadcast_to(xs[None, :], (h, w)), np.broadcast_to(ys[:, None], (h, w))], -1)


__all__ = ["frames_to_window", "pixel_centres", "window_to_rgba"]
