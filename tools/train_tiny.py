"""Train the `tiny` engine from scratch, in resumable time-boxed chunks (for the GPU device).

    python -m tools.train_tiny --work /tmp/avc --ckpt out/ckpt --stages ae,denoiser --minutes 8

Stages: `ae` (autoencoder on rendered frames), `denoiser` (shortcut flow model on the
autoencoder's latents of rendered clips). Each stage trains until its share of --minutes runs
out, then writes its checkpoint (files under 16 MB each, fp16 where it is only weights), a
JSON loss log and a PNG loss curve into --ckpt. Running again with the same --ckpt resumes.
Rendered clips and their latents are cached under --work, so a warm machine skips rendering.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from avatarcast.engines.avatar_world.reference import reference_frame
from avatarcast.engines.tiny.model import (
    EMOTIONS, Decoder, Denoiser, Encoder, TinyConfig, frames_to_tensor, tensor_to_frames,
)

CLIP_FRAMES = 24


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
    from avatarcast.engines.avatar_world import BUILTIN_AVATARS, random_avatar
    return BUILTIN_AVATARS[i] if i < len(BUILTIN_AVATARS) else random_avatar(10_000 + i)


def clip_specs(n_random: int, variants: int, seed: int = 0) -> list[ClipSpec]:
    """Every (avatar, emotion, variant): plain loops, mid-clip emotion switches, rest starts."""
    rng = np.random.default_rng(seed)
    specs = []
    for a in range(n_avatars(n_random)):
        for e, emo in enumerate(EMOTIONS):
            for v in range(variants):
                inten = float(rng.uniform(0.5, 1.0))
                kind = rng.random()
                s = int(rng.integers(1 << 31))
                if kind < 0.55:
                    segs = ((emo, CLIP_FRAMES, inten),)
                    start = float(rng.uniform(0, 8))
                elif kind < 0.85:
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
    frames, labels = render_sequence(avatar_by_id(spec.avatar_id), list(spec.segments), seed=spec.seed,
                                     start_time=spec.start_time)
    return frames, labels


def _ref_for_id(i: int) -> np.ndarray:
    return reference_frame(avatar_by_id(i))


# --- logging -----------------------------------------------------------------------------

class LossLog:
    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = json.loads(path.read_text()) if path.exists() else []

    def add(self, **row) -> None:
        self.rows.append(row)

    def tick(self, tag: str, step: int, local: int, t0: float, **losses: float) -> None:
        """Log every 25 steps, print every 500 (ms/step over this run's steps only)."""
        if step % 25 == 0:
            self.add(step=step, time=time.time() - t0, **losses)
        if step % 500 == 0:
            shown = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
            print(f"[{tag}] step {step} {shown} {(time.time() - t0) / max(1, local) * 1000:.0f} ms/step", flush=True)

    def save(self) -> None:
        self.path.write_text(json.dumps(self.rows))
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        keys = [k for k in self.rows[0] if k not in ("step", "time")] if self.rows else []
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [r["step"] for r in self.rows]
        for k in keys:
            ys = np.array([r[k] for r in self.rows], dtype=float)
            w = max(1, len(ys) // 100)
            ys = np.convolve(ys, np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1:], ys, label=k)
        ax.set_yscale("log")
        ax.set_xlabel("step")
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


# --- data --------------------------------------------------------------------------------

def render_all(specs: list[ClipSpec], workers: int):
    """Render clips in worker processes; yields (index, frames uint8 (T,H,W,4), labels)."""
    with Pool(workers) as pool:
        for i, (frames, labels) in enumerate(pool.imap(render_spec, specs, chunksize=2)):
            yield i, frames, labels


def load_ae_frames(args, cfg: TinyConfig, device) -> torch.Tensor:
    """A fixed sample of rendered frames held on the GPU as uint8 (N, H, W, 4)."""
    cache = Path(args.work) / f"ae_frames_{args.ae_clips}.npy"
    if cache.exists():
        arr = np.load(cache, mmap_mode="r")
    else:
        specs = clip_specs(args.random_avatars, args.variants, seed=1)
        rng = np.random.default_rng(7)
        pick = rng.choice(len(specs), size=min(args.ae_clips, len(specs)), replace=False)
        chosen = [specs[i] for i in pick]
        t0 = time.time()
        out = np.empty((len(chosen) * 12, cfg.height, cfg.width, 4), np.uint8)
        for i, frames, _ in render_all(chosen, args.workers):
            out[i * 12:(i + 1) * 12] = frames[::2][:12]
        print(f"[ae] rendered {len(out)} frames in {time.time() - t0:.0f}s", flush=True)
        np.save(cache, out)
        arr = out
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device)


# --- autoencoder -------------------------------------------------------------------------

def grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def train_ae(args, cfg: TinyConfig, device, deadline: float) -> None:
    ck = Path(args.ckpt)
    enc, dec = Encoder(cfg).to(device), Decoder(cfg).to(device)
    state = ck / "ae.pt"
    step = 0
    if state.exists():
        s = torch.load(state, map_location=device)
        enc.load_state_dict(s["encoder"])
        dec.load_state_dict(s["decoder"])
        step = s["step"]
    enc = enc.to(memory_format=torch.channels_last)
    dec = dec.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(dec.parameters()), lr=args.ae_lr, weight_decay=0.0)
    if state.exists() and "opt" in s:
        opt.load_state_dict(s["opt"])
    frames = load_ae_frames(args, cfg, device)
    log = LossLog(ck / "ae_loss.json")
    gen = torch.Generator(device=device).manual_seed(step)
    t0 = time.time()
    first = step
    while time.time() < deadline or step - first < args.min_steps:
        idx = torch.randint(0, len(frames), (args.ae_batch,), device=device, generator=gen)
        x = frames_to_tensor(frames[idx], cfg).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            z = enc(x)
            # Decoding slightly perturbed latents makes the decoder forgive the denoiser's errors.
            zn = z + 0.1 * z.detach().std() * torch.randn_like(z) * (torch.rand(z.shape[0], 1, 1, 1, device=device) < 0.5)
            y = dec(zn).float()
        rec = (y - x).abs().mean()
        edge = grad_l1(y, x)
        reg = 1e-4 * z.float().pow(2).mean()
        loss = rec + 0.5 * edge + reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(enc.parameters()) + list(dec.parameters()), 1.0)
        opt.step()
        step += 1
        log.tick("ae", step, step - first, t0, rec=rec.item(), edge=edge.item())
    save_small({"encoder": enc.state_dict(), "decoder": dec.state_dict(), "step": step}, state)
    log.save()
    with torch.no_grad():  # a side-by-side to look at
        x = frames[:4]
        y = tensor_to_frames(dec(enc(frames_to_tensor(x, cfg))).float(), cfg)
        grid = torch.cat([torch.cat(list(x), 1), torch.cat(list(y), 1)], 0).cpu().numpy()
        from PIL import Image
        Image.fromarray(grid).resize((grid.shape[1] // 2, grid.shape[0] // 2)).save(ck / "ae_recon.png")
    print(f"[ae] done at step {step}", flush=True)


# --- latents -----------------------------------------------------------------------------

@torch.no_grad()
def build_latents(args, cfg: TinyConfig, device) -> dict:
    """Encode every training clip (rendered on the fly) and each avatar's reference frame."""
    ae = torch.load(Path(args.ckpt) / "ae.pt", map_location=device)
    key = f"latents_{args.random_avatars}_{args.variants}_{args.clip_limit}_{ae['step']}.pt"
    cache = Path(args.work) / key
    if cache.exists():
        return torch.load(cache, map_location="cpu")
    enc = Encoder(cfg).to(device).eval()
    enc.load_state_dict(ae["encoder"])
    specs = clip_specs(args.random_avatars, args.variants, seed=0)
    if args.clip_limit:  # smoke runs: a spread of the clips, not just the first avatar's
        specs = specs[:: max(1, len(specs) // args.clip_limit)][: args.clip_limit]
    C, (H, W) = cfg.latent_channels, cfg.latent_hw
    lat = torch.empty((len(specs), CLIP_FRAMES, C, H, W), dtype=torch.float16)
    labels = torch.empty((len(specs), CLIP_FRAMES), dtype=torch.long)
    t0 = time.time()
    for i, frames, lab in render_all(specs, args.workers):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            z = enc(frames_to_tensor(torch.from_numpy(frames).to(device), cfg))
        lat[i] = z.float().half().cpu()
        labels[i] = torch.from_numpy(np.asarray(lab))
        if i % 500 == 0:
            print(f"[latents] {i}/{len(specs)} clips, {time.time() - t0:.0f}s", flush=True)
    with Pool(args.workers) as pool:
        refs = np.stack(pool.map(_ref_for_id, range(n_avatars(args.random_avatars))))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        ref_lat = enc(frames_to_tensor(torch.from_numpy(refs).to(device), cfg)).float().half().cpu()
    flat = lat[:, :, :, :, :].float().transpose(0, 2).reshape(C, -1)
    mean, std = flat.mean(1), flat.std(1)
    data = {
        "latents": lat, "labels": labels, "ref": ref_lat,
        "avatar": torch.tensor([s.avatar_id for s in specs]),
        "intensity": torch.tensor([s.intensity for s in specs]),
        "mean": mean, "std": std, "ae_step": ae["step"],
    }
    torch.save(data, cache)
    print(f"[latents] {len(specs)} clips encoded in {time.time() - t0:.0f}s", flush=True)
    return data


# --- denoiser ----------------------------------------------------------------------------

class ChunkSampler:
    """Draws (target chunk, context, reference, emotion, intensity) batches on the GPU."""

    def __init__(self, data: dict, cfg: TinyConfig, device):
        self.cfg = cfg
        mean = data["mean"].view(1, 1, -1, 1, 1)
        std = data["std"].view(1, 1, -1, 1, 1)
        self.lat = ((data["latents"].float() - mean) / std).half().to(device)
        self.ref = ((data["ref"].float() - mean[0]) / std[0]).to(device)
        self.labels = data["labels"].to(device)
        self.avatar = data["avatar"].to(device)
        self.intensity = data["intensity"].float().to(device)
        T, K = cfg.chunk_frames, cfg.context_frames
        # valid (clip, start) pairs: the whole target chunk carries one label
        starts = []
        lab = data["labels"]
        for s in range(K, CLIP_FRAMES - T + 1):
            ok = (lab[:, s:s + T] == lab[:, s:s + 1]).all(1)
            idx = torch.nonzero(ok).flatten()
            starts.append(torch.stack([idx, torch.full_like(idx, s)], 1))
        self.pairs = torch.cat(starts).to(device)
        self.device = device

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
    # bootstrap part: d in {1/32 .. 1/2}, target for step 2d from two steps of d
    levels = int(round(math.log2(1 / cfg.min_shortcut)))
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
    # flow-matching part
    t_f = torch.rand(n - nb, device=dev, generator=gen)
    xf = (1 - t_f)[:, None, None, None] * x0[nb:] + t_f[:, None, None, None] * x1[nb:]
    target_f = x1[nb:] - x0[nb:]
    x = torch.cat([xb, xf])
    t = torch.cat([t_b, t_f])
    dd = torch.cat([2 * d, torch.zeros(n - nb, device=dev)])
    pred = model(x, t, dd, ctx, ref, emo, inten).float()
    lb = (pred[:nb] - target_b).pow(2).mean()
    lf = (pred[nb:] - target_f).pow(2).mean()
    return lf + lb, lf, lb


def train_denoiser(args, cfg: TinyConfig, device, deadline: float) -> None:
    ck = Path(args.ckpt)
    data = build_latents(args, cfg, device)
    cfg.latent_mean = [float(v) for v in data["mean"]]
    cfg.latent_std = [float(v) for v in data["std"]]
    (ck / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    model = Denoiser(cfg).to(device)
    ema = Denoiser(cfg).to(device)
    step = 0
    if (ck / "den.pt").exists():
        s = torch.load(ck / "den.pt", map_location=device)
        model.load_state_dict({k: v.float() for k, v in s["model"].items()})
        step = s["step"]
    if (ck / "den_ema.pt").exists():
        ema.load_state_dict({k: v.float() for k, v in torch.load(ck / "den_ema.pt", map_location=device)["model"].items()})
    else:
        ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.den_lr, weight_decay=0.0, betas=(0.9, 0.99))
    sampler = ChunkSampler(data, cfg, device)
    log = LossLog(ck / "den_loss.json")
    gen = torch.Generator(device=device).manual_seed(1000 + step)
    warm = 200  # Adam moments restart with each chunk of training
    t0 = time.time()
    local = 0
    while time.time() < deadline or local < args.min_steps:
        x1, ctx, ref, emo, inten = sampler.batch(args.den_batch, gen)
        # context noise: the model must tolerate its own imperfect previous chunk
        sig = torch.rand(ctx.shape[0], 1, 1, 1, device=device, generator=gen) * 0.2
        ctx = ctx + sig * torch.randn(ctx.shape, device=device, generator=gen)
        lr = args.den_lr * min(1.0, (local + 1) / warm)
        if args.den_cosine:  # anneal over what is left of this chunk: sharper final weights
            prog = min(1.0, (time.time() - t0) / max(1.0, deadline - t0))
            lr *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog))
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, lf, lb = shortcut_loss(model, x1, ctx, ref, emo, inten, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        step += 1
        local += 1
        log.tick("den", step, local, t0, flow=lf.item(), shortcut=lb.item())
    save_small({"model": half_state(model.state_dict()), "step": step}, ck / "den.pt")
    save_small({"model": half_state(ema.state_dict()), "step": step}, ck / "den_ema.pt")
    log.save()
    print(f"[den] done at step {step}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/avc", help="cache of rendered frames and latents")
    ap.add_argument("--ckpt", required=True, help="checkpoint folder (resumes from it)")
    ap.add_argument("--stages", default="ae,denoiser")
    ap.add_argument("--minutes", type=float, default=8.0, help="training time over all stages")
    ap.add_argument("--ae-share", type=float, default=0.5, help="share of --minutes for ae when both run")
    ap.add_argument("--random-avatars", type=int, default=26)
    ap.add_argument("--variants", type=int, default=6)
    ap.add_argument("--ae-clips", type=int, default=1500)
    ap.add_argument("--ae-batch", type=int, default=16)
    ap.add_argument("--ae-lr", type=float, default=3e-4)
    ap.add_argument("--den-batch", type=int, default=128)
    ap.add_argument("--den-lr", type=float, default=2e-4)
    ap.add_argument("--den-cosine", action="store_true", help="cosine-anneal the lr over this chunk")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--clip-limit", type=int, default=0, help="train the denoiser on at most N clips (smoke runs)")
    ap.add_argument("--min-steps", type=int, default=1, help="steps each stage makes even past the deadline")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    Path(args.ckpt).mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg_path = Path(args.ckpt) / "config.json"
    cfg = TinyConfig.from_dict(json.loads(cfg_path.read_text())) if cfg_path.exists() else TinyConfig()
    stages = args.stages.split(",")
    t_start = time.time()
    end = t_start + args.minutes * 60
    if "ae" in stages:
        share = args.ae_share if "denoiser" in stages else 1.0
        train_ae(args, cfg, device, t_start + args.minutes * 60 * share)
    if "denoiser" in stages:
        train_denoiser(args, cfg, device, end)
    print(f"total {time.time() - t_start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
