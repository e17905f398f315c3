"""Random inputs of every graph the `tiny` backends serve: for export checks, engine builds and tests."""

from __future__ import annotations

import numpy as np

from avatarcast.engines.tiny.config import TinyConfig


def example_inputs(cfg: TinyConfig, batch: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random inputs of every graph at a batch size (numpy, the dtypes the graphs take)."""
    rng = np.random.default_rng(seed)
    C, T, K = cfg.latent_channels, cfg.chunk_frames, cfg.context_frames
    H, W = cfg.latent_hw
    f32 = np.float32
    frames = rng.integers(0, 256, (batch, cfg.height, cfg.width, 4), dtype=np.uint8)
    frames[:, :, :, 3] = np.where(
        rng.random((batch, cfg.height, cfg.width)) < 0.3, 0, frames[:, :, :, 3]
    )  # some fully transparent pixels
    ex: dict[str, dict[str, np.ndarray]] = {
        "encoder": {"frames": frames},
        "decoder": {"latents": rng.standard_normal((batch, C, H, W), dtype=f32)},
        "denoiser": {
            "x": rng.standard_normal((batch, T * C, H, W), dtype=f32),
            "t": rng.random(batch, dtype=f32),
            "d": rng.choice(np.array([0.0, 0.25, 0.5, 1.0], dtype=f32), batch),
            "ctx": rng.standard_normal((batch, K * C, H, W), dtype=f32),
            "ref": rng.standard_normal((batch, C, H, W), dtype=f32),
            "emotion": rng.integers(0, len(cfg.emotions), batch).astype(np.int64),
            "intensity": rng.random(batch, dtype=f32),
        },
    }
    ex["decoder_lowres"] = ex["decoder"]  # the half-resolution decoder takes the same latents
    return ex
