"""How much of the sampler's noise a denoiser checkpoint hands back (docs/training/README.md).

    python -m tools.check_denoiser --ckpt /work/ckpt_v2

Streams start at rest (context = the reference frame, as the engine starts them). At t = 0 and
d = 0 the clean estimate x0 + v(x0) is a conditional mean and must not depend on the noise x0;
beta, its regression on x0, is the share of the noise left in it (the first architecture-2 run:
0.31, the shipped model: 0.01). For samples, beta and the neighbour decorrelation of their
deviations over noise draws (1: white, speckle; near 0: smooth) tell speckle from blur.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from avatarcast.engines.avatar_world import BUILTIN_AVATARS
from avatarcast.engines.avatar_world.reference import reference_frame
from avatarcast.engines.tiny.model import Denoiser, Encoder, TinyConfig, frames_to_tensor
from tools.train_tiny import float_state


@torch.no_grad()
def noise_check(ckpt: Path, draws: int = 3) -> dict:
    cfg = TinyConfig.from_dict(json.loads((ckpt / "config.json").read_text()))
    enc, den = Encoder(cfg).eval(), Denoiser(cfg).eval()
    enc.load_state_dict(float_state(torch.load(ckpt / "ae.pt", map_location="cpu")["encoder"]))
    den.load_state_dict(float_state(torch.load(ckpt / "den_ema.pt", map_location="cpu")["model"]))
    mean = torch.tensor(cfg.latent_mean)[None, :, None, None]
    std = torch.tensor(cfg.latent_std)[None, :, None, None]
    frames = torch.from_numpy(np.stack([reference_frame(BUILTIN_AVATARS[a]) for a in (0, 3)]))
    ref = (enc(frames_to_tensor(frames, cfg)) - mean) / std
    T, K, C = cfg.chunk_frames, cfg.context_frames, cfg.latent_channels
    ref = ref[[0, 0, 1, 1]].repeat(draws, 1, 1, 1)  # 2 avatars x 2 emotions, `draws` noise draws each
    n = len(ref)
    emo, inten = torch.tensor([2, 5, 2, 5]).repeat(draws), torch.ones(n)
    ctx = ref.repeat(1, K, 1, 1)
    x0 = torch.randn(n, T * C, *ref.shape[2:], generator=torch.Generator().manual_seed(0))

    def spread(x: torch.Tensor) -> tuple[float, float]:
        dev = x - x.view(draws, 4, *x.shape[1:]).mean(0).repeat(draws, 1, 1, 1)
        white = (dev[..., 1:, :] - dev[..., :-1, :]).pow(2).mean() / (2 * dev.pow(2).mean().clamp(min=1e-12))
        return float((dev * x0).sum() / (x0 * x0).sum()), float(white)

    out = {
        "noise_per_position": T * C * cfg.patch**2,
        "first_level_channels": cfg.den_channels[0],
        "den_pred": cfg.den_pred,
    }
    out["beta_t0"] = spread(x0 + den(x0, torch.zeros(n), torch.zeros(n), ctx, ref, emo, inten))[0]
    for steps in (1, 2, 4):
        x, dt = x0.clone(), 1.0 / steps
        for k in range(steps):
            x = x + dt * den(x, torch.full((n,), k * dt), torch.full((n,), dt), ctx, ref, emo, inten)
        out[f"beta_{steps}step"], out[f"white_{steps}step"] = spread(x)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="a tools/train_tiny.py checkpoint folder")
    print(json.dumps(noise_check(Path(ap.parse_args(argv).ckpt)), indent=1))


if __name__ == "__main__":
    main()
