"""The fidelity eval's held-out data: avatars and motion seeds that no training may ever use.

Reserved ranges (training code must stay outside them; tests/tools/test_fidelity_holdout.py checks
tools.train_tiny against them):

* parametric avatars ``random_avatar(s)`` for s in [900_000, 1_000_000). tools.train_tiny uses
  ``random_avatar(10_000 + i)`` for its avatar ids i, so it may grow to 889_993 random avatars;
  the eval classifier trains on seeds < 500_000 and validates on 500_000 + k.
* motion seeds (``sample_variation``, ``render_clip``) and sampler noise seeds in
  [0x9000_0000, 0xA000_0000), all >= 2**31: tools.train_tiny draws its clip seeds with
  ``rng.integers(1 << 31)``, the classifier uses seeds < 2_000_000, tools.train_lowres < 2**30.
  The renderer masks seeds to 32 bits, so these never alias a smaller seed.

Training may *watch* other parts of these ranges, never train on them: main's tools/train_tiny
(0f669f7) reports held-out figures on random_avatar(900_006 ..) and motion seeds 7_000_000 + ..; the
fidelity eval stays on random_avatar(900_000 .. 900_005) (MAX_HOLDOUT) and its own seeds, which no
training code reads at all.

Everything here is a pure function of its arguments: two runs score the same frames.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from avatarcast.engines.avatar_world import BUILTIN_AVATARS, EMOTIONS, AvatarParams, random_avatar

AVATAR_SEED_BASE = 900_000
AVATAR_SEED_END = 1_000_000
MOTION_SEED_BASE = 0x9000_0000
MOTION_SEED_END = 0xA000_0000
MAX_HOLDOUT = 6  # random_avatar(900_006 ..) is train_tiny's monitoring set


def holdout_avatars(n: int) -> list[AvatarParams]:
    """The first n held-out parametric avatars: random_avatar(900_000 + k)."""
    if not 0 <= n <= MAX_HOLDOUT:
        raise ValueError(f"n must be 0..{MAX_HOLDOUT} (beyond: avatars training watches), got {n}")
    return [random_avatar(AVATAR_SEED_BASE + k) for k in range(n)]


def eval_avatars(n_builtin: int = len(BUILTIN_AVATARS), n_holdout: int = 4) -> list[AvatarParams]:
    """The avatars the fidelity eval scores: the first n_builtin built-ins, then n_holdout held-out ones."""
    return list(BUILTIN_AVATARS[:n_builtin]) + holdout_avatars(n_holdout)


def heldout_seed(*parts) -> int:
    """A seed in the held-out range, fixed by its parts (purpose, avatar name, emotion, index, ...)."""
    h = zlib.crc32(repr(("fidelity-holdout",) + parts).encode()) & 0xFFFFFFFF
    return MOTION_SEED_BASE + h % (MOTION_SEED_END - MOTION_SEED_BASE)


@dataclass(frozen=True)
class FrameSpec:
    """One held-out renderer frame: pose_at(emotion, time, sample_variation(seed), intensity)."""

    avatar: AvatarParams
    emotion: str
    seed: int
    time: float
    intensity: float


def reconstruction_frames(
    avatars: list[AvatarParams], per_avatar: int = len(EMOTIONS), rerun: int = 0
) -> list[FrameSpec]:
    """per_avatar frames of each avatar, cycling through the emotions, at held-out seeds and times."""
    out = []
    for av in avatars:
        rng = np.random.default_rng(heldout_seed("recon-times", av.name, rerun))
        for i in range(per_avatar):
            emo = EMOTIONS[i % len(EMOTIONS)]
            out.append(
                FrameSpec(
                    av,
                    emo,
                    heldout_seed("recon", av.name, emo, i, rerun),
                    float(rng.uniform(0.0, 20.0)),
                    float(rng.uniform(0.5, 1.0)),
                )
            )
    return out


__all__ = [
    "AVATAR_SEED_BASE",
    "AVATAR_SEED_END",
    "MOTION_SEED_BASE",
    "MOTION_SEED_END",
    "MAX_HOLDOUT",
    "holdout_avatars",
    "eval_avatars",
    "heldout_seed",
    "FrameSpec",
    "reconstruction_frames",
]
