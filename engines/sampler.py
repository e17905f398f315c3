"""Few-step flow samplers: they own the timesteps and the update rule; models only predict.

Convention: t runs from 0 (pure noise) to 1 (data); x_t = (1 - t) * noise + t * data and the
model predicts the velocity v = data - noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Array = TypeVar("Array", np.ndarray, "torch.Tensor")


@dataclass
class ShortcutFlowSampler:
    """Euler sampler for a shortcut model (Frans et al., 2024, "One Step Diffusion via
    Shortcut Models"): the model is told the step size d it will be used with, so 1, 2 or 4
    steps land on the data manifold instead of averaging over it.

    `min_shortcut` is the smallest step size the model was trained for: with more steps than
    1/min_shortcut the model is queried as a plain flow (d = 0).
    """

    steps: int = 2
    min_shortcut: float = 1.0 / 32
    timesteps: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.set_timesteps(self.steps)

    def set_timesteps(self, steps: int) -> None:
        if not 1 <= steps <= 128:
            raise ValueError(f"steps must be between 1 and 128, got {steps}")
        self.steps = steps
        self.timesteps = [i / steps for i in range(steps)]

    @property
    def step_size(self) -> float:
        return 1.0 / self.steps

    @property
    def model_step_size(self) -> float:
        """The d passed to the model: the real step, or 0 where it is finer than training went."""
        d = self.step_size
        return 0.0 if d < self.min_shortcut - 1e-9 else d

    def step(self, velocity: Array, t: float, x: Array) -> Array:
        """One Euler step from t to t + 1/steps."""
        return x + self.step_size * velocity


@dataclass
class FlowMatchEulerSampler:
    """Plain Euler over a shifted flow-matching schedule (Wan / SD3 style, sigma = 1 - t).

    `shift` > 1 spends more steps at high noise, which few-step distilled video models want;
    explicit `sigmas` reproduce a distilled checkpoint's own schedule (e.g. 4-step DMD).
    """

    steps: int = 4
    shift: float = 5.0
    sigmas: list[float] | None = None
    timesteps: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.set_timesteps(self.steps, self.sigmas)

    def set_timesteps(self, steps: int, sigmas: list[float] | None = None) -> None:
        if sigmas is not None:
            s = np.asarray(sigmas, dtype=np.float64)
            if s.ndim != 1 or len(s) < 1 or np.any(np.diff(s) >= 0) or s[0] > 1 or s[-1] < 0:
                raise ValueError("sigmas must be strictly decreasing values in [0, 1]")
            steps = len(s)
        else:
            if not 1 <= steps <= 1000:
                raise ValueError(f"steps must be between 1 and 1000, got {steps}")
            base = np.linspace(1.0, 0.0, steps + 1)[:-1]
            s = self.shift * base / (1 + (self.shift - 1) * base)
        self.steps = steps
        self.sigma_list = [float(v) for v in s] + [0.0]
        self.timesteps = [1.0 - v for v in self.sigma_list[:-1]]

    def step(self, velocity: Array, t: float, x: Array) -> Array:
        i = self.timesteps.index(t)
        dt = self.sigma_list[i] - self.sigma_list[i + 1]
        return x + dt * velocity


def warped_sigmas(timesteps: list[float], shift: float) -> list[float]:
    """A DMD-distilled checkpoint's `denoising_step_list` (timesteps in 1000..0, e.g. 1000, 750, 500,
    250) as sigmas, warped by the shifted schedule it was trained on (CausVid / Self-Forcing's
    `warp_denoising_step`): sigma = shift * s / (1 + (shift - 1) * s) with s = t / 1000. Evenly spaced
    lists give FlowMatchEulerSampler(steps=len, shift=shift)'s own sigmas."""
    s = np.asarray(timesteps, dtype=np.float64) / 1000.0
    return [float(v) for v in shift * s / (1 + (shift - 1) * s)]
