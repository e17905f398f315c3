"""Train the `tiny` engine from scratch, in resumable time-boxed stages (for the GPU device).

    python -m tools.train_tiny --work /tmp/avc --ckpt out/ckpt --stages ae,latents,denoiser,decft,lowres \
        --ae-minutes 8 --den-minutes 8 --decft-minutes 3 --lowres-minutes 1.5

Stages, each resuming from what --ckpt holds:
- `ae`: the autoencoder on rendered frames. L1 and edge losses weighted towards the avatar's
  pixels, and after --gan-start steps a patch discriminator trained from scratch (hinge loss,
  adaptive weight as in latent diffusion's autoencoders): an L1-type loss alone at this
  compression gives the average of the plausible pixels, which is blur. The decoder learns on
  random crops of the latent grid (the server decodes the cells around the avatar) and on
  perturbed latents (the sampler's latents are never exact).
- `latents`: renders the training clips and encodes them; measures the latent statistics, the
  empty cell's latent and the threshold that tells the avatar's cells from it.
- `denoiser`: the shortcut flow model on those latents.
- `decft`: the decoder again, now also on the denoiser's own few-step samples, against the
  discriminator: the frames users see are decoded samples, not reconstructions.
- `lowres`: the degradation ladder's half-resolution decoder, distilled from the decoder.
- `denadv`: the denoiser's served 1-2 step samples, decoded, against a patch critic of their own, anchored
  by the flow objective and an L1 to the true chunk (tools/train_denadv.py says why).
Each stage writes its checkpoint (files under 16 MB each), a JSON loss log and a PNG loss curve
into --ckpt, and `report.json` gets held-out figures (avatars and seeds never trained on).
Rendered frames and latents are cached under --work, so a warm machine skips rendering.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from dataclasses import dataclass
from multiprocessing import Pool
from multiprocessing import TimeoutError as PoolTimeout
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from avatarcast.engines.avatar_world.reference import reference_frame
from avatarcast.engines.tiny.model import (
    X_PRED_MIN_GAP,
    Decoder,
    Denoiser,
    Encoder,
    HalfResDecoder,
    TinyConfig,
    frames_to_tensor,
    tensor_to_frames,
)
from avatarcast.realtime import progress
from avatarcast.vocabulary import EMOTIONS

CLIP_FRAMES = 24
# Parametric avatars for training are random_avatar(TRAIN_SEED0 + i); evaluation holds out
# random_avatar(HELDOUT_SEED0 + k), a range training never reaches.
TRAIN_SEED0 = 10_000
HELDOUT_SEED0 = 900_000


@dataclass(frozen=True)
class ClipSpec:
    """One training clip: a render_sequence call, fully determined by its fields."""

    avatar_id: int
    emotion: int
    seed: int
    intensity: float
    segments: tuple[tuple[str, int, float], ...]
    start_time: float


def n_avatars(n_random: int) -> int:
    from avatarcast.engines.avatar_world import BUILTIN_AVATARS

    return len(BUILTIN_AVATARS) + n_random


def avatar_by_id(i: int):
    """Training avatar i: a built-in one, else a parametric one from the training range."""
    from avatarcast.engines.avatar_world import BUILTIN_AVATARS, random_avatar

    return BUILTIN_AVATARS[i] if i < len(BUILTIN_AVATARS) else random_avatar(TRAIN_SEED0 + i)


def heldout_avatar(k: int):
    from avatarcast.engines.avatar_world import random_avatar

    return random_avatar(HELDOUT_SEED0 + k)


REST_SHARE = 0.15  # share of clips that start from the rest pose, as a served stream does


def clip_specs(
    n_random: int, variants: int, seed: int = 0, rest_share: float = REST_SHARE, full_intensity: float = 0.0
) -> list[ClipSpec]:
    """Every (avatar, emotion, variant): plain loops, mid-clip emotion switches, rest starts.

    rest_share: the share of rest starts (loops and switches keep their 55:30 ratio in the rest); full_intensity:
    the share of clips whose emotion plays at intensity 1, what a default stream and the evals ask for (else uniform
    0.5-1). The motion denoiser starts slowly from rest (docs/training/motion.md, "Where the Fréchet distance comes
    from"): these are its training's levers. The defaults draw exactly the clips they always drew."""
    if not 0.0 <= rest_share <= 1.0 or not 0.0 <= full_intensity <= 1.0:
        raise ValueError(f"shares must lie in [0, 1]: rest_share={rest_share}, full_intensity={full_intensity}")
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([seed, 1])  # the new choices draw from their own stream: rng's stays as it was
    loop_cut = 0.55 if rest_share == REST_SHARE else 0.55 / 0.85 * (1.0 - rest_share)
    switch_cut = 0.85 if rest_share == REST_SHARE else 1.0 - rest_share
    specs = []
    for a in range(n_avatars(n_random)):
        for e, emo in enumerate(EMOTIONS):
            for _ in range(variants):
                inten = float(rng.uniform(0.5, 1.0))
                kind = rng.random()
                s = int(rng.integers(1 << 31))
                if full_intensity > 0.0 and extra.random() < full_intensity:
                    inten = 1.0
                if kind < loop_cut:
                    segs = ((emo, CLIP_FRAMES, inten),)
                    start = float(rng.uniform(0, 8))
                elif kind < switch_cut:
                    other = EMOTIONS[int(rng.integers(len(EMOTIONS)))]
                    cut = int(rng.integers(6, CLIP_FRAMES - 8))
                    segs = ((other, cut, float(rng.uniform(0.5, 1.0))), (emo, CLIP_FRAMES - cut, inten))
                    start = float(rng.uniform(0, 8))
                else:  # from the rest pose, as a stream starts from the reference frame
                    segs = (("idle", 2, 0.5), (emo, CLIP_FRAMES - 2, inten))
                    start = 0.0
                specs.append(ClipSpec(a, e, s, inten, segs, start))
    return specs


def render_spec(spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    from avatarcast.engines.avatar_world import render_sequence

    frames, labels = render_sequence(
        avatar_by_id(spec.avatar_id), list(spec.segments), seed=spec.seed, start_time=spec.start_time
    )
    return frames, labels


def _ref_for_id(i: int) -> np.ndarray:
    return reference_frame(avatar_by_id(i))


def _heldout_frames(job: tuple[int, int]) -> np.ndarray:
    """Held-out frames: built-in avatars at seeds training never drew, parametric ones never seen."""
    from avatarcast.engines.avatar_world import BUILTIN_AVATARS, render_clip

    k, seed = job
    av = BUILTIN_AVATARS[k] if k < len(BUILTIN_AVATARS) else heldout_avatar(k)
    return render_clip(av, EMOTIONS[(k + seed) % len(EMOTIONS)], 8, seed=7_000_000 + 97 * k + seed)[::2]


# --- logging -----------------------------------------------------------------------------


class LossLog:
    quiet = False  # --quiet: no progress bars (main sets it for every stage's log)

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = json.loads(path.read_text()) if path.exists() else []
        self.bar: Any = None  # a stage's steps, on a terminal only (progress.bar)

    def add(self, **row) -> None:
        self.rows.append(row)

    def tick(self, tag: str, step: int, local: int, t0: float, **losses) -> None:
        """Log every 25 steps, print every 500 (ms/step over this run's steps only).

        Losses may be tensors: they are read (a device sync) only on the steps that log.
        """
        if self.bar is None:
            self.bar = progress.bar(desc=tag, unit="step", quiet=self.quiet)
        self.bar.update()
        if step % 25 and step % 500:
            return
        losses = {k: float(v) for k, v in losses.items()}
        if step % 25 == 0:
            self.add(step=step, time=time.time() - t0, **losses)
        if step % 500 == 0:
            shown = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
            progress.write(f"[{tag}] step {step} {shown} {(time.time() - t0) / max(1, local) * 1000:.0f} ms/step")

    def save(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.path.write_text(json.dumps(self.rows))
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        keys = sorted({k for r in self.rows for k in r if k not in ("step", "time")})
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in keys:
            pts = [(r["step"], r[k]) for r in self.rows if k in r and r[k] > 0]
            if not pts:
                continue
            steps, ys = zip(*pts)
            w = max(1, len(ys) // 100)
            ys = np.convolve(np.array(ys, dtype=float), np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1 :], ys, label=k)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        if keys:
            ax.legend()
        ax.set_title(self.path.stem)
        fig.tight_layout()
        fig.savefig(self.path.with_suffix(".png"), dpi=90)
        plt.close(fig)


def save_small(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def half_state(sd: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in sd.items()}


def float_state(sd: dict) -> dict:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def update_report(ck: Path, key: str, value) -> None:
    p = ck / "report.json"
    rep = json.loads(p.read_text()) if p.exists() else {}
    rep[key] = value
    p.write_text(json.dumps(rep, indent=1))


def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)


# --- data --------------------------------------------------------------------------------


def render_all(specs: list[ClipSpec], workers: int):
    """Render clips in worker processes; yields (index, frames uint8 (T,H,W,4), labels)."""
    with Pool(workers) as pool:
        for i, (frames, labels) in enumerate(pool.imap(render_spec, specs, chunksize=4)):
            yield i, frames, labels


def window_cols(cfg: TinyConfig) -> slice:
    return slice(cfg.window_x0, cfg.window_x0 + cfg.window_width)


def load_ae_frames(args, cfg: TinyConfig, device) -> torch.Tensor:
    """A fixed sample of rendered frames, window columns only, on the GPU as uint8 (N, H, window_W, 4)."""
    cache = Path(args.work) / f"ae_frames_{args.random_avatars}_{args.ae_clips}.npy"
    if cache.exists():
        arr = np.load(cache, mmap_mode="r")
    else:
        specs = clip_specs(args.random_avatars, args.variants, seed=1)
        rng = np.random.default_rng(7)
        pick = rng.choice(len(specs), size=min(args.ae_clips, len(specs)), replace=False)
        chosen = [specs[i] for i in pick]
        t0 = time.time()
        out = np.empty((len(chosen) * 12, cfg.height, cfg.window_width, 4), np.uint8)
        cols = window_cols(cfg)
        for i, frames, _ in render_all(chosen, args.workers):
            out[i * 12 : (i + 1) * 12] = frames[::2][:12, :, cols]
        print(f"[ae] rendered {len(out)} frames in {time.time() - t0:.0f}s", flush=True)
        np.save(cache, out)
        arr = out
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device)


def to_window_tensor(frames_win: torch.Tensor, cfg: TinyConfig) -> torch.Tensor:
    """uint8 window frames (B, H, window_W, 4) -> premultiplied (B, 4, pad_H, window_W) in [-1, 1]."""
    full_cfg = copy.copy(cfg)
    full_cfg.window_x0, full_cfg.width = 0, cfg.window_width
    x = frames_to_tensor(frames_win, full_cfg)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def heldout_set(args, cfg: TinyConfig) -> torch.Tensor:
    """Held-out window frames (N, H, window_W, 4): 6 built-in avatars at new seeds, 6 parametric ones
    (--heldout-seeds clips of each)."""
    jobs = [(k, s) for k in range(12) for s in range(args.heldout_seeds)]
    with Pool(args.workers) as pool:
        clips = pool.map(_heldout_frames, jobs)
    return torch.from_numpy(np.concatenate(clips)[:, :, window_cols(cfg)].copy())


# --- losses ------------------------------------------------------------------------------


def weighted_l1(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean |a - b| under the weights w (avatar_weight), normalized so that w's scale does not matter."""
    return ((a - b).abs() * w).mean() / w.mean()


def grad_l1(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    dxa, dxb = a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1]
    dya, dyb = a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :]
    if w is None:
        return (dxa - dxb).abs().mean() + (dya - dyb).abs().mean()
    return weighted_l1(dxa, dxb, w[..., :, 1:]) + weighted_l1(dya, dyb, w[..., 1:, :])


def avatar_weight(x: torch.Tensor, boost: float) -> torch.Tensor:
    """1 on empty pixels, 1 + boost within 5 px of the avatar: capacity goes where the avatar is."""
    a = (x[:, 3:4] > -0.999).float()
    return 1.0 + boost * F.max_pool2d(a, 11, stride=1, padding=5)


class PatchDiscriminator(nn.Module):
    """A PatchGAN critic on premultiplied RGBA (pix2pix / latent diffusion's autoencoders), from scratch."""

    def __init__(self, ch: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(4, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = ch
        for i in range(1, layers + 1):
            c2 = min(ch * 2**i, 256)
            mods += [nn.Conv2d(c, c2, 4, 2 if i < layers else 1, 1), nn.GroupNorm(16, c2), nn.LeakyReLU(0.2)]
            c = c2
        mods += [nn.Conv2d(c, 1, 4, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def adaptive_weight(rec: torch.Tensor, gen: torch.Tensor, last: torch.Tensor, cap: float = 1e3) -> torch.Tensor:
    """||grad rec|| / ||grad gen|| at the decoder's last layer: the GAN term never drowns the reconstruction."""
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_gen = torch.autograd.grad(gen, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_gen.norm() + 1e-4)).clamp(0.0, cap).detach()


def random_crops(
    z: torch.Tensor, x: torch.Tensor, cfg: TinyConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random crop size per batch, a random place per sample, biased onto the avatar."""
    B, _, H, W = z.shape
    s = cfg.downsample
    if rng.random() < 0.25:  # sometimes the whole grid
        return z, x
    # a handful of crop shapes: each new shape costs cuDNN a round of algorithm timing
    ch = min(H, int(rng.choice((24, 32, 40, 48))))
    cw = min(W, int(rng.choice((24, 32, 40, 56))))
    occ = F.max_pool2d((x[:, 3:4] > -0.999).float(), s).squeeze(1) > 0  # (B, H, W) cells with avatar pixels
    rows, cols = occ.any(2).cpu().numpy(), occ.any(1).cpu().numpy()  # one transfer for the whole batch
    zs, xs = [], []
    for b in range(B):
        r, c = np.nonzero(rows[b])[0], np.nonzero(cols[b])[0]
        cy = int(rng.choice(r)) if len(r) else H // 2
        cx = int(rng.choice(c)) if len(c) else W // 2
        top = min(max(0, cy - ch // 2 + int(rng.integers(-4, 5))), H - ch)
        left = min(max(0, cx - cw // 2 + int(rng.integers(-4, 5))), W - cw)
        zs.append(z[b : b + 1, :, top : top + ch, left : left + cw])
        xs.append(x[b : b + 1, :, top * s : (top + ch) * s, left * s : (left + cw) * s])
    return torch.cat(zs), torch.cat(xs)


def perturb(z: torch.Tensor, gen: torch.Generator, scale: float) -> torch.Tensor:
    """Half the batch gets noise of up to `scale` latent std: the decoder must forgive sampler errors."""
    B = z.shape[0]
    dev = z.device
    sig = torch.rand(B, 1, 1, 1, device=dev, generator=gen) * scale * z.detach().std()
    on = (torch.rand(B, 1, 1, 1, device=dev, generator=gen) < 0.5).float()
    return z + on * sig * torch.randn(z.shape, device=dev, generator=gen, dtype=z.dtype)


# --- held-out figures ----------------------------------------------------------------------


@torch.no_grad()
def recon_report(enc: nn.Module, dec: nn.Module, frames_win: torch.Tensor, cfg: TinyConfig, device) -> dict:
    """PSNR over the avatar's pixels (premultiplied RGBA, alpha > 0 dilated 3 px), alpha IoU, sharpness ratio."""
    psnrs, ious, sharp = [], [], []
    for i in range(0, len(frames_win), 16):
        x = to_window_tensor(frames_win[i : i + 16].to(device), cfg)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            y = dec(enc(x)).float()
        y = y.clamp(-1, 1)
        m = F.max_pool2d((x[:, 3:4] > -0.999).float(), 7, 1, 3)
        err = (((y - x) / 2) ** 2 * m).sum((1, 2, 3)) / (4 * m.sum((1, 2, 3)))
        psnrs += (-10 * torch.log10(err.clamp(min=1e-10))).tolist()
        ra, ya = x[:, 3] > 0, y[:, 3] > 0
        ious += ((ra & ya).sum((1, 2)).float() / (ra | ya).sum((1, 2)).clamp(min=1).float()).tolist()

        def gm(t, m=m):
            gx = (t[..., :, 1:] - t[..., :, :-1]).abs()[..., :-1, :]
            gy = (t[..., 1:, :] - t[..., :-1, :]).abs()[..., :, :-1]
            return ((gx + gy) * m[..., :-1, :-1]).sum((1, 2, 3)) / m[..., :-1, :-1].sum((1, 2, 3)).clamp(min=1)

        sharp += (gm(y) / gm(x).clamp(min=1e-6)).tolist()
    n_builtin = len(psnrs) // 2
    return {
        "psnr_db": round(float(np.mean(psnrs)), 2),
        "psnr_db_builtin": round(float(np.mean(psnrs[:n_builtin])), 2),
        "psnr_db_heldout_avatars": round(float(np.mean(psnrs[n_builtin:])), 2),
        "alpha_iou": round(float(np.mean(ious)), 4),
        "sharpness_ratio": round(float(np.mean(sharp)), 3),
        "frames": len(psnrs),
    }


def save_strip(path: Path, rows: list[np.ndarray]) -> None:
    """Window frames stacked as rows (1:1), over a light background, for looking at by eye."""
    from PIL import Image

    bg = np.array([245, 240, 230], np.float32)
    out = []
    for r in rows:
        a = r[..., 3:4].astype(np.float32) / 255
        out.append((r[..., :3] * a + bg * (1 - a)).astype(np.uint8))
    Image.fromarray(np.concatenate(out, 0)).save(path)


# --- autoencoder -------------------------------------------------------------------------


def build_ae(cfg: TinyConfig, device):
    mods = Encoder(cfg).to(device), Decoder(cfg).to(device), PatchDiscriminator().to(device)
    if device.type == "cuda":  # convolutions in NHWC run on the tensor cores without transposes
        for m in mods:
            m.to(memory_format=torch.channels_last)
    return mods


def load_ae_state(ck: Path, enc, dec, disc, dec_ema, device) -> tuple[int, dict | None]:
    """Resume from ae_full.pt (fp32 + optimizers, stays on the machine) or ae.pt (fp16 weights)."""
    full, small = ck / "ae_full.pt", ck / "ae.pt"
    if full.exists():
        s = torch.load(full, map_location=device)
        enc.load_state_dict(s["encoder"])
        dec.load_state_dict(s["decoder_raw"])
        dec_ema.load_state_dict(s["decoder"])
        disc.load_state_dict(s["disc"])
        return int(s["step"]), s
    if small.exists():
        s = torch.load(small, map_location=device)
        enc.load_state_dict(float_state(s["encoder"]))
        dec.load_state_dict(float_state(s.get("decoder_raw", s["decoder"])))
        dec_ema.load_state_dict(float_state(s["decoder"]))
        if (ck / "disc.pt").exists():
            disc.load_state_dict(float_state(torch.load(ck / "disc.pt", map_location=device)["disc"]))
        return int(s["step"]), None
    return 0, None


def save_ae(ck: Path, enc, dec, dec_ema, disc, opt_g, opt_d, step: int, enc_step: int | None = None) -> None:
    """ae_full.pt stays on the machine (fp32, optimizers); ae.pt and disc.pt are what comes back.

    `enc_step` is the step the encoder last changed at (the decft stage leaves it as it was),
    which keys the latents cache.
    """
    enc_step = step if enc_step is None else enc_step
    save_small(
        {
            "encoder": enc.state_dict(),
            "decoder_raw": dec.state_dict(),
            "decoder": dec_ema.state_dict(),
            "disc": disc.state_dict(),
            "opt_g": opt_g.state_dict() if opt_g else None,
            "opt_d": opt_d.state_dict(),
            "step": step,
            "enc_step": enc_step,
        },
        ck / "ae_full.pt",
    )
    save_small(
        {
            "encoder": half_state(enc.state_dict()),
            "decoder": half_state(dec_ema.state_dict()),
            "decoder_raw": half_state(dec.state_dict()),
            "step": step,
            "enc_step": enc_step,
        },
        ck / "ae.pt",
    )
    save_small({"disc": half_state(disc.state_dict()), "step": step}, ck / "disc.pt")


def disc_step(
    disc, opt_d, real: torch.Tensor, fake: torch.Tensor, device, r1: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One hinge step of the critic, plus (r1 / 2) E ||grad_x D(real)||^2 when r1 > 0; returns (hinge, penalty).

    The R1 penalty (Mescheder et al. 2018; StyleGAN2, R3GAN) keeps a critic smooth where the data is, so its
    gradient stays an informative size: the denadv stage's unpenalized critic saturated (tools/train_denadv.py).
    Both come back as detached tensors: a log reads them only on the steps it keeps."""
    real = real.detach().requires_grad_(r1 > 0)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        d_real = disc(real)
        lr_ = F.relu(1 - d_real).mean()
        lf_ = F.relu(1 + disc(fake.detach())).mean()
    ld = 0.5 * (lr_ + lf_)
    penalty = torch.zeros((), device=real.device)
    if r1 > 0:
        (grad,) = torch.autograd.grad(d_real.float().sum(), real, create_graph=True)
        penalty = 0.5 * r1 * grad.float().pow(2).flatten(1).sum(1).mean()
    opt_d.zero_grad(set_to_none=True)
    (ld.float() + penalty).backward()
    opt_d.step()
    return ld.detach(), penalty.detach()


def train_ae(args, cfg: TinyConfig, device, deadline: float) -> None:
    ck = Path(args.ckpt)
    enc, dec, disc = build_ae(cfg, device)
    dec_ema = Decoder(cfg).to(device)
    dec_ema.load_state_dict(dec.state_dict())
    step, full = load_ae_state(ck, enc, dec, disc, dec_ema, device)
    dec_ema.requires_grad_(False)
    params = list(enc.parameters()) + list(dec.parameters())
    opt_g = torch.optim.AdamW(params, lr=args.ae_lr, betas=(0.5, 0.9), weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=args.d_lr, betas=(0.5, 0.9), weight_decay=0.0)
    if full is not None and full.get("opt_g"):
        opt_g.load_state_dict(full["opt_g"])
        opt_d.load_state_dict(full["opt_d"])
    frames = load_ae_frames(args, cfg, device)
    log = LossLog(ck / "ae_loss.json")
    gen = torch.Generator(device=device).manual_seed(step)
    crng = np.random.default_rng(step)
    last = dec.net[-2].weight  # the conv before the final pixel shuffle
    t0, first = time.time(), step
    next_save = time.time() + 120
    # the critic joins after a share of this stage's time (a step count would depend on the GPU);
    # a resumed stage whose critic already ran keeps it on
    span = max(1.0, deadline - t0)
    gan_time = t0 + (args.gan_start_frac * span if first < args.gan_start_step else 0.0)
    d_time = gan_time - args.d_warmup_frac * span
    while time.time() < deadline or step - first < args.min_steps:
        now = time.time()
        prog = min(1.0, (now - t0) / span)
        for g in opt_g.param_groups:  # cosine to a tenth over the stage: the last steps settle the details
            g["lr"] = args.ae_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        idx = torch.randint(0, len(frames), (args.ae_batch,), device=device, generator=gen)
        x = to_window_tensor(frames[idx], cfg)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            z = enc(x)
            zc, xc = random_crops(z, x, cfg, crng)
            y = dec(perturb(zc, gen, args.latent_noise)).float()
        w = avatar_weight(xc, args.avatar_boost)
        rec = weighted_l1(y, xc, w)
        edge = grad_l1(y, xc, w)
        loss_rec = rec + args.edge_weight * edge + 1e-5 * z.float().pow(2).mean()
        gan_on = now >= gan_time
        g_loss = torch.zeros((), device=device)
        lam = torch.zeros((), device=device)
        if gan_on:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                g_loss = -disc(y).float().mean()
            lam = adaptive_weight(loss_rec, g_loss, last) * args.gan_weight
        loss = loss_rec + lam * g_loss
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt_g.step()
        ema_update(dec_ema, dec, min(args.ema, (1 + step) / (10 + step)))
        ld = disc_step(disc, opt_d, xc, y, device)[0] if now >= d_time else 0.0
        step += 1
        log.tick("ae", step, step - first, t0, rec=rec.detach(), edge=edge.detach(), g=g_loss.detach(), d=ld, lam=lam)
        if time.time() > next_save:
            save_ae(ck, enc, dec, dec_ema, disc, opt_g, opt_d, step)
            next_save = time.time() + 120
    save_ae(ck, enc, dec, dec_ema, disc, opt_g, opt_d, step)
    log.save()
    held = heldout_set(args, cfg)
    enc.eval()
    rep = recon_report(enc, dec_ema, held, cfg, device)
    update_report(ck, "ae", {"step": step, **rep})
    print(f"[ae] done at step {step}: held-out {rep}", flush=True)
    with torch.no_grad():
        x = to_window_tensor(held[::12][:6].to(device), cfg)
        y = dec_ema(enc(x)).float()
        full_cfg = copy.copy(cfg)
        full_cfg.window_x0, full_cfg.width = 0, cfg.window_width
        rec_frames = tensor_to_frames(y, full_cfg).cpu().numpy()
        save_strip(
            ck / "ae_recon.png", [np.concatenate(list(held[::12][:6].numpy()), 1), np.concatenate(list(rec_frames), 1)]
        )


# --- latents -----------------------------------------------------------------------------


def _render_window(job: tuple[ClipSpec, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A worker renders a clip and returns only the model's window: 30% less to send back."""
    spec, x0, width = job
    frames, labels = render_spec(spec)
    return np.ascontiguousarray(frames[:, :, x0 : x0 + width]), np.asarray(labels)


def latent_specs(args) -> list[ClipSpec]:
    """The denoiser's clips, in a fixed shuffled order: any prefix is a spread of avatars and emotions."""
    specs = clip_specs(args.random_avatars, args.den_variants, seed=0)
    if args.clip_limit:  # smoke runs: a spread of the clips, not just the first avatar's
        specs = specs[:: max(1, len(specs) // args.clip_limit)][: args.clip_limit]
    order = np.random.default_rng(11).permutation(len(specs))
    return [specs[i] for i in order]


def latents_cache(args) -> Path:
    ae = torch.load(Path(args.ckpt) / "ae.pt", map_location="cpu")
    step = ae.get("enc_step", ae["step"])
    return Path(args.work) / f"latents2_{args.random_avatars}_{args.den_variants}_{args.clip_limit}_{step}.pt"


class LatentBuilder:
    """Renders the denoiser's clips in worker processes and encodes each one as it arrives.

    `pump()` takes what the workers have finished without waiting, so the denoiser trains on the
    clips rendered so far while the rest render (the first run's GPU sat idle for the 264 s the
    clips took); `finish()` waits for the rest, measures the crop statistics and writes the cache.
    The normalization comes from the first clips and stays fixed: the denoiser trains in it.
    """

    def __init__(self, args, cfg: TinyConfig, device):
        ae = torch.load(Path(args.ckpt) / "ae.pt", map_location=device)
        self.enc_step = ae.get("enc_step", ae["step"])
        self.cfg, self.device, self.cache = cfg, device, latents_cache(args)
        self.enc = Encoder(cfg).to(device).eval()
        self.enc.load_state_dict(float_state(ae["encoder"]))
        self.specs = latent_specs(args)
        C, (H, W) = cfg.latent_channels, cfg.latent_hw
        self.lat = torch.zeros((len(self.specs), CLIP_FRAMES, C, H, W), dtype=torch.float16)
        self.labels = torch.zeros((len(self.specs), CLIP_FRAMES), dtype=torch.long)
        self.n = 0
        self.samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (z, empty cells, avatar cells)
        self.t0 = time.time()
        self.pool = Pool(args.workers)
        with torch.no_grad():
            refs = np.stack(self.pool.map(_ref_for_id, range(n_avatars(args.random_avatars))))
            self.ref = self._encode(frames_to_tensor(torch.from_numpy(refs).to(device), cfg)).half().cpu()
            empty = torch.zeros((1, cfg.height, cfg.width, 4), dtype=torch.uint8, device=device)
            self.bg_raw = self._encode(frames_to_tensor(empty, cfg))[0, :, H // 2, W // 2].cpu()
        jobs = [(sp, cfg.window_x0, cfg.window_width) for sp in self.specs]
        # chunksize 1: only then does imap give an iterator whose next() can time out
        self.pending = self.pool.imap(_render_window, jobs, chunksize=1)
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.n == len(self.specs)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.enc(x).float()

    @torch.no_grad()
    def pump(self, block: bool = False, upto: int | None = None) -> int:
        """Encode the clips that are ready (all up to `upto` when blocking); returns how many came in."""
        upto = len(self.specs) if upto is None else min(upto, len(self.specs))
        got = 0
        while self.n < upto:
            try:
                frames, lab = self.pending.next(timeout=None if block else 0)
            except PoolTimeout:
                break
            x = to_window_tensor(torch.from_numpy(frames).to(self.device), self.cfg)
            z = self._encode(x)
            self.lat[self.n] = z.half().cpu()
            self.labels[self.n] = torch.from_numpy(lab)
            if self.n % 40 == 0:  # cells with no avatar pixel within one cell, and cells with some
                occ = F.max_pool2d((x[:, 3:4] > -0.999).float(), self.cfg.downsample)
                self.samples.append((z.cpu(), (F.max_pool2d(occ, 3, 1, 1) < 0.5).cpu(), (occ > 0.5).cpu()))
            self.n += 1
            got += 1
            if self.n % 500 == 0:
                print(f"[latents] {self.n}/{len(self.specs)} clips, {time.time() - self.t0:.0f}s", flush=True)
        return got

    def data(self) -> dict:
        """The clips so far as the dict the samplers read (latents of clips not in yet are zeros)."""
        if self.mean is None:  # fixed from the first call on
            flat = self.lat[: max(1, self.n)].float().transpose(0, 2).reshape(self.cfg.latent_channels, -1)
            self.mean, self.std = flat.mean(1), flat.std(1)
        return {
            "latents": self.lat,
            "labels": self.labels,
            "ref": self.ref,
            "n_ready": self.n,
            "avatar": torch.tensor([s.avatar_id for s in self.specs]),
            "intensity": torch.tensor([s.intensity for s in self.specs]),
            "mean": self.mean,
            "std": self.std,
            "ae_step": self.enc_step,
            "background": (self.bg_raw - self.mean) / self.std,
            "crop": self._crop_stats(),
        }

    def _crop_stats(self) -> dict:
        """How far empty and avatar cells sit from the empty cell's latent: the crop threshold."""
        bg = ((self.bg_raw - self.mean) / self.std)[None, :, None, None]
        d_empty, d_avatar = [torch.zeros(0)], [torch.zeros(0)]
        for z, empty, occupied in self.samples:
            zn = (z - self.mean[None, :, None, None]) / self.std[None, :, None, None]
            dist = ((zn - bg) ** 2).mean(1, keepdim=True).sqrt()
            d_empty.append(dist[empty])
            d_avatar.append(dist[occupied])
        de, da = torch.cat(d_empty), torch.cat(d_avatar)
        if not len(de) or not len(da):
            return {"threshold": 0.0}
        thr = float(de.quantile(0.9999) * 1.5)
        return {
            "threshold": round(thr, 4),
            "empty_dist_max": float(de.max()),
            "empty_dist_p9999": float(de.quantile(0.9999)),
            "avatar_cells_below_threshold": float((da <= thr).float().mean()),
            "avatar_dist_p1": float(da.quantile(0.01)),
        }

    def finish(self) -> dict:
        """Wait for the rest, write the cache, and return the whole data set."""
        self.pump(block=True)
        self.pool.close()
        self.pool.join()
        data = self.data()
        data["n_ready"] = self.n
        print(f"[latents] crop threshold {data['crop']}", flush=True)
        torch.save(data, self.cache)
        print(f"[latents] {self.n} clips encoded in {time.time() - self.t0:.0f}s", flush=True)
        return data


def build_latents(args, cfg: TinyConfig, device) -> dict:
    """Every training clip rendered, encoded and cached, with each avatar's reference latent."""
    cache = latents_cache(args)
    if cache.exists():
        return torch.load(cache, map_location="cpu")
    return LatentBuilder(args, cfg, device).finish()


def set_latent_config(cfg: TinyConfig, data: dict, ck: Path) -> None:
    cfg.latent_mean = [float(v) for v in data["mean"]]
    cfg.latent_std = [float(v) for v in data["std"]]
    cfg.background_latent = [float(v) for v in data["background"]]
    cfg.crop_threshold = float(data["crop"]["threshold"])
    (ck / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    update_report(ck, "crop", data["crop"])


# --- denoiser ----------------------------------------------------------------------------


class ChunkSampler:
    """Draws (target chunk, context, reference, emotion, intensity) batches on the GPU.

    It draws from the first `data["n_ready"]` clips (all when absent); `grow` takes in clips that
    arrived since (LatentBuilder.pump).
    """

    def __init__(self, data: dict, cfg: TinyConfig, device):
        self.cfg, self.data, self.device = cfg, data, device
        self.mean = data["mean"].view(1, 1, -1, 1, 1)
        self.std = data["std"].view(1, 1, -1, 1, 1)
        self.lat = torch.zeros(data["latents"].shape, dtype=torch.float16, device=device)
        self.ref = ((data["ref"].float() - self.mean[0]) / self.std[0]).to(device)
        self.labels = data["labels"].to(device)
        self.avatar = data["avatar"].to(device)
        self.intensity = data["intensity"].float().to(device)
        self.n = 0
        self.grow(int(data.get("n_ready", len(data["latents"]))))

    def grow(self, n: int) -> None:
        """Draw from the first n clips from now on."""
        if n <= self.n:
            return
        new = slice(self.n, n)
        self.lat[new] = ((self.data["latents"][new].float() - self.mean) / self.std).half().to(self.device)
        self.labels[new] = self.data["labels"][new].to(self.device)
        self.n = n
        T, K = self.cfg.chunk_frames, self.cfg.context_frames
        starts = []  # valid (clip, start) pairs: the whole target chunk carries one label
        lab = self.data["labels"][:n]
        for s in range(K, CLIP_FRAMES - T + 1):
            ok = (lab[:, s : s + T] == lab[:, s : s + 1]).all(1)
            idx = torch.nonzero(ok).flatten()
            starts.append(torch.stack([idx, torch.full_like(idx, s)], 1))
        self.pairs = torch.cat(starts).to(self.device)

    def batch(self, n: int, gen: torch.Generator):
        T, K = self.cfg.chunk_frames, self.cfg.context_frames
        p = self.pairs[torch.randint(0, len(self.pairs), (n,), device=self.device, generator=gen)]
        clip, s = p[:, 0], p[:, 1]
        tidx = s[:, None] + torch.arange(T, device=self.device)[None]
        cidx = s[:, None] - K + torch.arange(K, device=self.device)[None]
        x1 = self.lat[clip[:, None], tidx].float().flatten(1, 2)
        ctx = self.lat[clip[:, None], cidx].float().flatten(1, 2)
        ref = self.ref[self.avatar[clip]]
        emo = self.labels[clip, s]
        inten = self.intensity[clip]
        return x1, ctx, ref, emo, inten


def shortcut_loss(model, x1, ctx, ref, emo, inten, cfg: TinyConfig, gen, bootstrap_frac=0.25):
    """Flow matching at d=0 plus self-consistency: one 2d step = two d steps."""
    n = x1.shape[0]
    nb = int(n * bootstrap_frac)
    dev = x1.device
    x0 = torch.randn(x1.shape, device=dev, generator=gen)
    # the trained step 2d runs from min_shortcut (two plain flow steps of half its size) to 1,
    # every size the sampler passes (engines/sampler.py model_step_size)
    levels = int(round(math.log2(1 / cfg.min_shortcut))) + 1
    k = torch.randint(1, levels + 1, (nb,), device=dev, generator=gen)
    d = 2.0 ** (-k.float())
    n_slots = (1 / (2 * d)).long()
    t_b = (torch.rand(nb, device=dev, generator=gen) * n_slots).floor() * 2 * d
    d_in = torch.where(k == levels, torch.zeros_like(d), d)
    xb = (1 - t_b)[:, None, None, None] * x0[:nb] + t_b[:, None, None, None] * x1[:nb]
    with torch.no_grad():
        v1 = model(xb, t_b, d_in, ctx[:nb], ref[:nb], emo[:nb], inten[:nb]).float()
        x_mid = xb + d[:, None, None, None] * v1
        v2 = model(x_mid, t_b + d, d_in, ctx[:nb], ref[:nb], emo[:nb], inten[:nb]).float()
        target_b = 0.5 * (v1 + v2)
    t_f = torch.rand(n - nb, device=dev, generator=gen)
    xf = (1 - t_f)[:, None, None, None] * x0[nb:] + t_f[:, None, None, None] * x1[nb:]
    target_f = x1[nb:] - x0[nb:]
    x = torch.cat([xb, xf])
    t = torch.cat([t_b, t_f])
    dd = torch.cat([2 * d, torch.zeros(n - nb, device=dev)])
    pred = model(x, t, dd, ctx, ref, emo, inten).float()
    w = flow_weight(t, cfg)[:, None, None, None]
    lb = ((pred[:nb] - target_b).pow(2) * w[:nb]).mean()
    lf = ((pred[nb:] - target_f).pow(2) * w[nb:]).mean()
    return lf + lb, lf, lb


def flow_weight(t: torch.Tensor, cfg: TinyConfig, gap: float = 0.25) -> torch.Tensor:
    """Weight on the squared velocity error: 1 up to t = 1 - gap, where an "x" denoiser's weight is capped.

    An "x" denoiser's velocity error is its clean-chunk error over 1 - t: near t = 1 that weight
    reaches 400, and on the CPU (batch 8) the loss jumped between 2 and 100 from step to step. Past
    t = 0.75, the largest t a 4-step sampler queries, the clean-chunk error keeps weight 1 / gap^2
    instead (as min-SNR weighting caps the weight of nearly clean inputs).
    """
    if cfg.den_pred == "v":
        return torch.ones_like(t)
    return ((1 - t).clamp(min=X_PRED_MIN_GAP) / (1 - t).clamp(min=gap)).pow(2)


def load_denoiser(ck: Path, cfg: TinyConfig, device, ema_only: bool = False):
    model, ema = Denoiser(cfg).to(device), Denoiser(cfg).to(device)
    step = 0
    if (ck / "den.pt").exists() and not ema_only:
        s = torch.load(ck / "den.pt", map_location=device)
        model.load_state_dict(float_state(s["model"]))
        step = int(s["step"])
    if (ck / "den_ema.pt").exists():
        s = torch.load(ck / "den_ema.pt", map_location=device)
        ema.load_state_dict(float_state(s["model"]))
        step = max(step, int(s["step"]))
        if not (ck / "den.pt").exists():  # a kept checkpoint (tools/ckpt) holds the EMA weights only
            model.load_state_dict(ema.state_dict())
    else:
        ema.load_state_dict(model.state_dict())
    return model, ema, step


def train_denoiser(args, cfg: TinyConfig, device, deadline: float) -> None:
    ck = Path(args.ckpt)
    builder = None
    if latents_cache(args).exists():
        data = build_latents(args, cfg, device)
    else:  # train on the clips rendered so far while the rest render
        builder = LatentBuilder(args, cfg, device)
        builder.pump(block=True, upto=args.stats_clips)
        data = builder.data()
    set_latent_config(cfg, data, ck)
    model, ema, step = load_denoiser(ck, cfg, device)
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.den_lr, weight_decay=0.0, betas=(0.9, 0.99))
    sampler = ChunkSampler(data, cfg, device)
    log = LossLog(ck / "den_loss.json")
    gen = torch.Generator(device=device).manual_seed(1000 + step)
    warm = 200  # Adam moments restart with each chunk of training
    t0 = time.time()
    local = 0
    next_save = time.time() + 120
    while time.time() < deadline or local < args.min_steps:
        if builder is not None and not builder.done and local % 10 == 0 and builder.pump():
            sampler.grow(builder.n)
        x1, ctx, ref, emo, inten = sampler.batch(args.den_batch, gen)
        # context noise: the model must tolerate its own imperfect previous chunk
        sig = torch.rand(ctx.shape[0], 1, 1, 1, device=device, generator=gen) * 0.2
        ctx = ctx + sig * torch.randn(ctx.shape, device=device, generator=gen)
        lr = args.den_lr * min(1.0, (local + 1) / warm)
        prog = min(1.0, (time.time() - t0) / max(1.0, deadline - t0))
        if args.den_cosine:  # anneal over what is left of this chunk: sharper final weights
            lr *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, lf, lb = shortcut_loss(model, x1, ctx, ref, emo, inten, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, min(args.ema, (1 + step) / (10 + step)))
        step += 1
        local += 1
        log.tick("den", step, local, t0, flow=lf.detach(), shortcut=lb.detach())
        if time.time() > next_save:
            save_small({"model": half_state(model.state_dict()), "step": step}, ck / "den.pt")
            save_small({"model": half_state(ema.state_dict()), "step": step}, ck / "den_ema.pt")
            next_save = time.time() + 120
    save_small({"model": half_state(model.state_dict()), "step": step}, ck / "den.pt")
    save_small({"model": half_state(ema.state_dict()), "step": step}, ck / "den_ema.pt")
    log.save()
    if builder is not None:  # the later stages and a resumed run read the whole set from the cache
        print(f"[den] trained on {builder.n}/{len(builder.specs)} clips rendered by the end", flush=True)
        set_latent_config(cfg, builder.finish(), ck)
    update_report(ck, "denoiser", {"step": step})
    print(f"[den] done at step {step}", flush=True)


def paired_loss(dec, teacher, zs_raw, x1, frame: int, mean, std, cfg: TinyConfig, args, crng) -> torch.Tensor:
    """The decoder on the denoiser's sample of a training chunk against what that chunk's true latent decodes to.

    The samples' errors are structured (2026-12-04: the same blotches at 1, 2, 4 and 8 steps), so a
    critic alone teaches the decoder to add texture; this pairs each sample with its own target
    (the teacher decoder on the true latent of the same frame, 27 dB from the renderer), so the
    decoder learns to turn the denoiser's errors into the chunk it was asked for.
    """
    C = cfg.latent_channels
    x1f = x1.reshape(x1.shape[0], cfg.chunk_frames, C, *x1.shape[2:])[:, frame] * std + mean
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=x1.device.type == "cuda"):
        target = teacher(x1f).float()
    zc, tc = random_crops(zs_raw, target, cfg, crng)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x1.device.type == "cuda"):
        y = dec(zc).float()
    w = avatar_weight(tc, args.avatar_boost)
    return weighted_l1(y, tc, w) + args.edge_weight * grad_l1(y, tc, w)


def rollout(den: nn.Module, x0, ctx, ref, emo, inten, cfg: TinyConfig, steps: int) -> torch.Tensor:
    """The engine's shortcut sampler (engines/sampler.py) on torch tensors, from the noise x0: (B, T*C, H, W)."""
    x = x0
    dt = 1.0 / steps
    d = torch.full((x.shape[0],), dt if dt >= cfg.min_shortcut - 1e-9 else 0.0, device=x.device)
    for k in range(steps):
        t = torch.full((x.shape[0],), k * dt, device=x.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            v = den(x, t, d, ctx, ref, emo, inten).float()
        x = x + dt * v
    return x


@torch.no_grad()
def sample_chunk(den: nn.Module, ctx, ref, emo, inten, cfg: TinyConfig, steps: int, gen) -> torch.Tensor:
    """rollout from fresh noise, without gradients."""
    x0 = torch.randn(
        ctx.shape[0], cfg.chunk_frames * cfg.latent_channels, *ctx.shape[2:], device=ctx.device, generator=gen
    )
    return rollout(den, x0, ctx, ref, emo, inten, cfg, steps)


# --- decoder on the denoiser's samples ----------------------------------------------------


def train_decft(args, cfg: TinyConfig, device, deadline: float) -> None:
    """Decoder (and its critic) on real latents and on the denoiser's samples; the encoder is frozen."""
    ck = Path(args.ckpt)
    data = build_latents(args, cfg, device)
    set_latent_config(cfg, data, ck)
    enc, dec, disc = build_ae(cfg, device)
    dec_ema = Decoder(cfg).to(device)
    step, full = load_ae_state(ck, enc, dec, disc, dec_ema, device)
    enc_step = int(torch.load(ck / "ae.pt", map_location="cpu").get("enc_step", step))
    enc.eval().requires_grad_(False)
    teacher = copy.deepcopy(dec_ema).eval().requires_grad_(False)
    dec_ema.requires_grad_(False)
    _, den, _ = load_denoiser(ck, cfg, device, ema_only=True)
    den.eval().requires_grad_(False)
    opt_g = torch.optim.AdamW(dec.parameters(), lr=args.decft_lr, betas=(0.5, 0.9), weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=args.d_lr, betas=(0.5, 0.9), weight_decay=0.0)
    if full is not None and "opt_d" in full:
        opt_d.load_state_dict(full["opt_d"])
    frames = load_ae_frames(args, cfg, device)
    sampler = ChunkSampler(data, cfg, device)
    mean = torch.tensor(cfg.latent_mean, device=device)[None, :, None, None]
    std = torch.tensor(cfg.latent_std, device=device)[None, :, None, None]
    log = LossLog(ck / "decft_loss.json")
    gen = torch.Generator(device=device).manual_seed(2000 + step)
    crng = np.random.default_rng(2000 + step)
    last = dec.net[-2].weight
    C = cfg.latent_channels
    t0, local = time.time(), 0
    while time.time() < deadline or local < args.min_steps:
        # real frames -> latents -> decoder: reconstruction and critic, as in the ae stage
        idx = torch.randint(0, len(frames), (args.ae_batch // 2,), device=device, generator=gen)
        x = to_window_tensor(frames[idx], cfg)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            z = enc(x)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            zc, xc = random_crops(z.float(), x, cfg, crng)
            y = dec(perturb(zc, gen, args.latent_noise)).float()
        w = avatar_weight(xc, args.avatar_boost)
        rec = weighted_l1(y, xc, w) + args.edge_weight * grad_l1(y, xc, w)
        # the denoiser's own samples (1 or 2 steps, as served) -> decoder: critic + stay near the teacher
        x1, ctx, ref, emo, inten = sampler.batch(args.ae_batch // 4, gen)
        steps = 1 if local % 2 else 2
        zs = sample_chunk(den, ctx, ref, emo, inten, cfg, steps, gen)
        zs = zs.reshape(zs.shape[0], cfg.chunk_frames, C, *zs.shape[2:])[:, int(local % cfg.chunk_frames)]
        zs_raw = zs * std + mean
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            ys = dec(zs_raw).float()
            with torch.no_grad():
                yt = teacher(zs_raw).float()
            g_real = -disc(y).float().mean()
            g_samp = -disc(ys).float().mean()
        keep = (ys - yt).abs().mean()
        lam = adaptive_weight(rec, g_real, last) * args.gan_weight
        loss = rec + lam * g_real + args.samples_weight * (lam * g_samp + args.teacher_weight * keep)
        paired = torch.zeros((), device=device)
        if args.decft_paired > 0:
            paired = paired_loss(dec, teacher, zs_raw, x1, int(local % cfg.chunk_frames), mean, std, cfg, args, crng)
            loss = loss + args.decft_paired * paired
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec.parameters(), 1.0)
        opt_g.step()
        ema_update(dec_ema, dec, args.ema)
        # the critic alternates: reconstructed crops, then whole decoded samples against whole real frames
        if args.gan_weight == 0:  # no critic in the loss: do not train one
            ld = 0.0
        elif local % 2 == 0:
            ld, _ = disc_step(disc, opt_d, xc, y, device)
        else:
            ld, _ = disc_step(disc, opt_d, x, ys, device)
        step += 1
        local += 1
        log.tick(
            "decft",
            step,
            local,
            t0,
            rec=rec.detach(),
            g=g_real.detach(),
            gs=g_samp.detach(),
            keep=keep.detach(),
            paired=paired.detach(),
            d=ld,
        )
    save_ae(ck, enc, dec, dec_ema, disc, None, opt_d, step, enc_step=enc_step)
    log.save()
    held = heldout_set(args, cfg)
    rep = recon_report(enc, dec_ema, held, cfg, device)
    update_report(ck, "decft", {"step": step, **rep})
    print(f"[decft] done at step {step}: held-out {rep}", flush=True)
    save_samples(ck / "samples.png", enc, dec_ema, teacher, den, data, cfg, device)


@torch.no_grad()
def save_samples(path: Path, enc, dec, teacher, den, data: dict, cfg: TinyConfig, device) -> None:
    """1:1 rows: a real clip's frames, the denoiser's 2-step continuation decoded by the old and new decoder."""
    sampler = ChunkSampler(data, cfg, device)
    gen = torch.Generator(device=device).manual_seed(5)
    x1, ctx, ref, emo, inten = sampler.batch(4, gen)
    mean = torch.tensor(cfg.latent_mean, device=device)[None, :, None, None]
    std = torch.tensor(cfg.latent_std, device=device)[None, :, None, None]
    zs = sample_chunk(den, ctx, ref, emo, inten, cfg, 2, gen)
    C = cfg.latent_channels
    zs = zs.reshape(4, cfg.chunk_frames, C, *zs.shape[2:])[:, -1] * std + mean
    zr = x1.reshape(4, cfg.chunk_frames, C, *x1.shape[2:])[:, -1] * std + mean
    full_cfg = copy.copy(cfg)
    full_cfg.window_x0, full_cfg.width = 0, cfg.window_width

    def row(m, z):
        return np.concatenate(list(tensor_to_frames(m(z).float(), full_cfg).cpu().numpy()), 1)

    save_strip(path, [row(dec, zr), row(teacher, zs), row(dec, zs)])


# --- the half-resolution decoder ----------------------------------------------------------


def train_lowres(args, cfg: TinyConfig, device, deadline: float) -> None:
    """HalfResDecoder distilled from the decoder on real and sampled latents (pixels pooled 2x)."""
    ck = Path(args.ckpt)
    data = build_latents(args, cfg, device)
    set_latent_config(cfg, data, ck)
    enc, dec, disc = build_ae(cfg, device)
    dec_ema = Decoder(cfg).to(device)
    load_ae_state(ck, enc, dec, disc, dec_ema, device)
    dec_ema.eval().requires_grad_(False)
    student = HalfResDecoder(cfg).to(device)
    step = 0
    if (ck / "lowres.pt").exists():
        s = torch.load(ck / "lowres.pt", map_location=device)
        student.load_state_dict(float_state(s["decoder_lowres"]))
        step = int(s["step"])
    else:
        student.decoder.load_state_dict(dec_ema.state_dict())
    _, den, _ = load_denoiser(ck, cfg, device, ema_only=True)
    den.eval().requires_grad_(False)
    sampler = ChunkSampler(data, cfg, device)
    mean = torch.tensor(cfg.latent_mean, device=device)[None, :, None, None]
    std = torch.tensor(cfg.latent_std, device=device)[None, :, None, None]
    opt = torch.optim.AdamW(student.parameters(), lr=args.lowres_lr, weight_decay=0.0)
    log = LossLog(ck / "lowres_loss.json")
    gen = torch.Generator(device=device).manual_seed(3000 + step)
    C = cfg.latent_channels
    t0, local = time.time(), 0
    while time.time() < deadline or local < args.min_steps:
        x1, ctx, ref, emo, inten = sampler.batch(args.ae_batch // 4, gen)
        z = x1 if local % 2 else sample_chunk(den, ctx, ref, emo, inten, cfg, 2, gen)
        z = z.reshape(-1, C, *z.shape[2:]) * std + mean
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            target = F.avg_pool2d(dec_ema(z).float(), 2)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            y = student.forward_small(z).float()
        w = avatar_weight(target, args.avatar_boost)
        loss = weighted_l1(y, target, w) + args.edge_weight * grad_l1(y, target, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        local += 1
        log.tick("lowres", step, local, t0, loss=loss.detach())
    save_small({"decoder_lowres": half_state(student.state_dict()), "step": step}, ck / "lowres.pt")
    log.save()
    update_report(ck, "lowres", {"step": step, "final_loss": round(float(loss.item()), 5)})
    print(f"[lowres] done at step {step}", flush=True)


STAGES = ("ae", "latents", "denoiser", "decft", "lowres", "denadv")


def main(argv: list[str] | None = None) -> None:
    from tools import train_denadv  # it builds on this module's pieces

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/avc", help="cache of rendered frames and latents")
    ap.add_argument("--ckpt", required=True, help="checkpoint folder (resumes from it)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--ae-minutes", type=float, default=8.0)
    ap.add_argument("--den-minutes", type=float, default=8.0)
    ap.add_argument("--decft-minutes", type=float, default=3.0)
    ap.add_argument("--lowres-minutes", type=float, default=1.5)
    ap.add_argument("--random-avatars", type=int, default=194, help="parametric training avatars (+6 built-in)")
    ap.add_argument("--variants", type=int, default=2, help="clip variants per avatar and emotion for the ae frames")
    ap.add_argument("--den-variants", type=int, default=2, help="clip variants per avatar and emotion for the denoiser")
    ap.add_argument("--ae-clips", type=int, default=2000)
    ap.add_argument("--ae-batch", type=int, default=16)
    ap.add_argument("--ae-lr", type=float, default=2e-4)
    ap.add_argument("--d-lr", type=float, default=2e-4)
    ap.add_argument(
        "--gan-start-frac", type=float, default=0.35, help="share of the ae stage before the critic's loss is on"
    )
    ap.add_argument(
        "--gan-start-step", type=int, default=4000, help="a resumed ae stage past this step keeps the critic on"
    )
    ap.add_argument(
        "--d-warmup-frac", type=float, default=0.08, help="share of the ae stage the critic trains before it is used"
    )
    ap.add_argument("--gan-weight", type=float, default=0.5)
    ap.add_argument("--edge-weight", type=float, default=0.5)
    ap.add_argument("--avatar-boost", type=float, default=4.0)
    ap.add_argument("--latent-noise", type=float, default=0.15)
    ap.add_argument("--den-batch", type=int, default=128)
    ap.add_argument("--den-lr", type=float, default=2e-4)
    ap.add_argument("--den-cosine", action="store_true", help="cosine-anneal the lr over this chunk")
    ap.add_argument("--decft-lr", type=float, default=5e-5)
    ap.add_argument("--samples-weight", type=float, default=1.0)
    ap.add_argument(
        "--decft-paired",
        type=float,
        default=0.0,
        help="weight of decft's paired loss: a sample of a training chunk against its true latent's decoding",
    )
    ap.add_argument("--teacher-weight", type=float, default=0.5)
    ap.add_argument("--lowres-lr", type=float, default=2e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument(
        "--stats-clips",
        type=int,
        default=200,
        help="clips rendered before the denoiser starts; they fix the latent normalization",
    )
    ap.add_argument("--clip-limit", type=int, default=0, help="train the denoiser on at most N clips (smoke runs)")
    ap.add_argument(
        "--heldout-seeds", type=int, default=3, help="held-out clips of each of the 12 held-out avatars (smoke runs: 1)"
    )
    ap.add_argument("--min-steps", type=int, default=1, help="steps each stage makes even past the deadline")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    train_denadv.add_arguments(ap)
    progress.add_quiet_flag(ap)
    args = ap.parse_args(argv)
    LossLog.quiet = args.quiet
    Path(args.work).mkdir(parents=True, exist_ok=True)
    Path(args.ckpt).mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg_path = Path(args.ckpt) / "config.json"
    cfg = TinyConfig.from_dict(json.loads(cfg_path.read_text())) if cfg_path.exists() else TinyConfig()
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        ap.error(f"unknown stages {sorted(unknown)}; choose from {','.join(STAGES)}")
    t_start = time.time()
    minutes = {
        "ae": args.ae_minutes,
        "denoiser": args.den_minutes,
        "decft": args.decft_minutes,
        "lowres": args.lowres_minutes,
        "denadv": args.adv_minutes,
    }
    for st in stages:
        t = time.time()
        deadline = t + minutes.get(st, 0.0) * 60
        if st == "ae":
            train_ae(args, cfg, device, deadline)
        elif st == "latents":
            set_latent_config(cfg, build_latents(args, cfg, device), Path(args.ckpt))
        elif st == "denoiser":
            train_denoiser(args, cfg, device, deadline)
        elif st == "decft":
            train_decft(args, cfg, device, deadline)
        elif st == "lowres":
            train_lowres(args, cfg, device, deadline)
        elif st == "denadv":
            train_denadv.train_denadv(args, cfg, device, deadline)
        print(f"[{st}] stage took {time.time() - t:.0f}s", flush=True)
    print(f"total {time.time() - t_start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
