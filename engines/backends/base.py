"""What every backend of the `tiny` engine offers: three array functions, nothing else."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from avatarcast.engines.errors import EngineError


class BackendError(EngineError, RuntimeError):
    """A backend cannot run here (package missing, no GPU, unsupported GPU, bad files)."""


class Denoises(Protocol):
    """The denoiser call both architectures' backends make (the sampler's one network call)."""

    def denoise(
        self,
        x: np.ndarray,
        t: np.ndarray,
        d: np.ndarray,
        ctx: np.ndarray,
        ref: np.ndarray,
        emotion: np.ndarray,
        intensity: np.ndarray,
    ) -> np.ndarray: ...


class TinyBackend(Denoises, Protocol):
    """Runs the three exported graphs. Arrays are numpy, batch first, float32 unless noted.

    encode:  frames uint8 (B, 360, 640, 4) straight-alpha RGBA -> normalized latents (B, C, H, W)
    decode:  normalized latents (B, C, H, W) -> frames uint8 (B, 360, 640, 4); with lowres=True,
             through the half-resolution decoder where the weights ship one (`has_lowres`)
    denoise: x (B, T*C, H, W), t (B,), d (B,), ctx (B, K*C, H, W), ref (B, C, H, W),
             emotion (B,) int64, intensity (B,) -> velocity (B, T*C, H, W)
    """

    name: str

    def encode(self, frames: np.ndarray) -> np.ndarray: ...

    @property
    def has_lowres(self) -> bool: ...

    def decode(self, latents: np.ndarray, lowres: bool = False) -> np.ndarray: ...
