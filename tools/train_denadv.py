"""The `denadv` stage of tools/train_tiny.py: the denoiser's served few-step samples trained against a critic.

Why (issue 16, docs/training/README.md, x3 and x4): the x-prediction denoiser's 1-2 step samples are its
estimate of the chunk's conditional mean. The autoencoder now reconstructs faces, eyes and outlines (27 dB),
but the samples lose them wherever the chunk is uncertain (a head that may bob left or right averages into a
blank face), the same at 1, 2, 4 and 8 steps. As adversarial diffusion distillation (SD-Turbo) does, the
served sampler runs with gradients, its sample is decoded by the frozen decoder (gradients pass through it)
and a patch critic, trained from scratch, tells it from the decoding of the true chunk. Two anchors keep the
samples about the chunk they were asked for: the flow objective on the same network (it stays a flow model at
every t and step size), and an avatar-weighted L1 + edge loss to the true chunk's decoding, whose gradient the
critic's is scaled against (adaptive_weight at the denoiser's last layer), so the critic adds detail where the
L1 alone settles on the mean.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn as nn

from avatarcast.engines.tiny.model import Decoder, TinyConfig
from tools.train_tiny import (
    ChunkSampler,
    LossLog,
    PatchDiscriminator,
    adaptive_weight,
    avatar_weight,
    build_ae,
    build_latents,
    disc_step,
    ema_update,
    float_state,
    grad_l1,
    half_state,
    load_ae_state,
    load_denoiser,
    rollout,
    save_samples,
    save_small,
    set_latent_config,
    shortcut_loss,
    update_report,
    weighted_l1,
)

CRITIC_FILE = "denadv_disc.pt"  # the stage's own critic: the decoder's (disc.pt) judged reconstructions
PRE_FILE = "den_ema_pre.pt"  # den_ema.pt as the stage found it: the stage overwrites den_ema.pt, x5 compared both


def served_frames(den, dec, batch, cfg: TinyConfig, steps: int, frame: int, gen, mean, std):
    """One frame of the denoiser's `steps`-step sample (with gradients) and of the true chunk, both decoded."""
    x1, ctx, ref, emo, inten = batch
    C = cfg.latent_channels
    x0 = torch.randn(x1.shape, device=x1.device, generator=gen)
    zs = rollout(den, x0, ctx, ref, emo, inten, cfg, steps)
    zs = zs.reshape(zs.shape[0], cfg.chunk_frames, C, *zs.shape[2:])[:, frame] * std + mean
    zt = x1.reshape(x1.shape[0], cfg.chunk_frames, C, *x1.shape[2:])[:, frame] * std + mean
    amp = x1.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        fake = dec(zs).float()
        with torch.no_grad():
            real = dec(zt).float()
    return fake, real


def generator_losses(fake, real, disc, last: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, critic term, its weight): the L1 + edge anchor to the true chunk and the hinge generator loss."""
    w = avatar_weight(real, args.avatar_boost)
    anchor = weighted_l1(fake, real, w) + args.edge_weight * grad_l1(fake, real, w)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fake.device.type == "cuda"):
        g = -disc(fake).float().mean()
    lam = adaptive_weight(anchor, g, last) * args.adv_weight
    return anchor, g, lam


def last_layer(den: nn.Module) -> torch.Tensor:
    """The weight of the denoiser's output convolution: where the critic's gradient is measured."""
    convs = [m for m in den.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].weight


def train_denadv(args, cfg: TinyConfig, device, deadline: float) -> None:
    ck = Path(args.ckpt)
    data = build_latents(args, cfg, device)
    set_latent_config(cfg, data, ck)
    enc, dec_raw, ae_disc = build_ae(cfg, device)
    dec = Decoder(cfg).to(device)
    load_ae_state(ck, enc, dec_raw, ae_disc, dec, device)  # only the EMA decoder is kept
    del enc, dec_raw, ae_disc
    dec.eval().requires_grad_(False)
    model, ema, step = load_denoiser(ck, cfg, device)
    if not (ck / PRE_FILE).exists() and (ck / "den_ema.pt").exists():  # the denoiser this stage started from
        shutil.copyfile(ck / "den_ema.pt", ck / PRE_FILE)
    ema.requires_grad_(False)
    disc = PatchDiscriminator().to(device)
    start = step
    if (ck / CRITIC_FILE).exists():
        s = torch.load(ck / CRITIC_FILE, map_location=device)
        disc.load_state_dict(float_state(s["disc"]))
        start = int(s["start"])
    opt = torch.optim.AdamW(model.parameters(), lr=args.adv_lr, weight_decay=0.0, betas=(0.5, 0.99))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=args.d_lr, betas=(0.5, 0.9), weight_decay=0.0)
    sampler = ChunkSampler(data, cfg, device)
    mean = torch.tensor(cfg.latent_mean, device=device)[None, :, None, None]
    std = torch.tensor(cfg.latent_std, device=device)[None, :, None, None]
    last = last_layer(model)
    log = LossLog(ck / "denadv_loss.json")
    log.quiet = args.quiet  # run as `-m tools.train_tiny`, main set __main__.LossLog's, not this module's
    gen = torch.Generator(device=device).manual_seed(3000 + step)
    t0, local = time.time(), 0
    next_save = time.time() + 120

    def save() -> None:
        save_small({"model": half_state(model.state_dict()), "step": step}, ck / "den.pt")
        save_small({"model": half_state(ema.state_dict()), "step": step}, ck / "den_ema.pt")
        save_small({"disc": half_state(disc.state_dict()), "start": start}, ck / CRITIC_FILE)

    while time.time() < deadline or local < args.min_steps:
        prog = min(1.0, (time.time() - t0) / max(1.0, deadline - t0))
        lr = args.adv_lr * min(1.0, (local + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        for g_ in opt.param_groups:
            g_["lr"] = lr
        # the flow objective on a batch of its own, as the denoiser stage trains it
        x1, ctx, ref, emo, inten = sampler.batch(args.adv_flow_batch, gen)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            flow, _, _ = shortcut_loss(model, x1, ctx, ref, emo, inten, cfg, gen)
        # the served sampler's output (1 or 2 steps, as the engine runs it), decoded, against the true chunk
        steps = 1 if local % 2 else 2
        frame = int(local % cfg.chunk_frames)
        fake, real = served_frames(model, dec, sampler.batch(args.adv_batch, gen), cfg, steps, frame, gen, mean, std)
        anchor, g, lam = generator_losses(fake, real, disc, last, args)
        critic_on = step - start >= args.adv_critic_warmup  # a fresh critic first learns what to look for
        loss = flow + args.adv_anchor * anchor + (lam * g if critic_on else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, args.ema)
        ld, r1 = disc_step(disc, opt_d, real, fake, device, args.adv_r1)
        step += 1
        local += 1
        losses = {"flow": flow.detach(), "anchor": anchor.detach(), "g": g.detach(), "lam": lam, "d": ld, "r1": r1}
        log.tick("denadv", step, local, t0, **losses)
        if time.time() > next_save:
            save()
            next_save = time.time() + 120
    save()
    log.save()
    update_report(ck, "denadv", {"step": step, "critic_steps": step - start})
    print(f"[denadv] done at step {step} ({step - start} with this critic)", flush=True)
    save_samples(ck / "samples_denadv.png", None, dec, dec, ema, data, cfg, device)


def add_arguments(ap) -> None:
    ap.add_argument("--adv-minutes", type=float, default=5.0)
    ap.add_argument("--adv-lr", type=float, default=3e-5)
    ap.add_argument("--adv-batch", type=int, default=8, help="served samples decoded and judged per step")
    ap.add_argument("--adv-flow-batch", type=int, default=64, help="the flow objective's batch per step")
    ap.add_argument("--adv-weight", type=float, default=0.5, help="the critic's term, relative to the anchor's")
    ap.add_argument("--adv-anchor", type=float, default=1.0, help="the L1 + edge loss to the true chunk's decoding")
    ap.add_argument(
        "--adv-r1",
        type=float,
        default=1.0,
        help="the critic's R1 penalty weight (0: none). x5's unpenalized critic told samples from chunks "
        "perfectly within ~800 steps and the adaptive weight fell from 0.09 to 0.0003 (docs/training/README.md)",
    )
    ap.add_argument(
        "--adv-critic-warmup", type=int, default=200, help="steps the new critic trains before the denoiser sees it"
    )
