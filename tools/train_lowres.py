"""Distil the half-resolution decoder (the degradation ladder's "lower internal resolution" rung).

    python -m tools.train_lowres --weights engines/tiny/weights --minutes 12 [--frames 2400]

The student (avatarcast.engines.tiny.model.HalfResDecoder) starts from the full decoder's weights and learns
to decode 2x-pooled latents to the full decoder's output pooled to 320x192. Its inputs are the
latents the engine really decodes: streams sampled by the shipped denoiser for the built-in and
random avatars in every emotion, switching emotion now and then. A held-out set of streams gives
the PSNR of the upscaled result against the full decode, before and after training (the "before"
is the full decoder run on pooled latents as is). The result goes into the weights folder as
lowres.safetensors and decoder_lowres.onnx (checked against torch with onnxruntime), and the
manifest records the files and the figures. tiny.safetensors is untouched, so the weights hash,
and with it every latents-cache key, stays the same.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avatarcast.engines.tiny.model import HalfResDecoder
from avatarcast.engines.tiny.weights import DEFAULT_DIR, load_manifest, load_torch_modules
from avatarcast.realtime import progress
from tools.train_tiny import avatar_by_id, grad_l1, n_avatars


def sample_latents(weights: Path, n_frames: int, seed: int, threads: int) -> np.ndarray:
    """Normalized latent frames (N, C, H, W) from the engine's own streams (onnxruntime)."""
    from avatarcast.engines.tiny.engine import TinyEngine

    eng = TinyEngine.load(weights, backend="onnxruntime", steps=2, threads=threads)
    rng = np.random.default_rng(seed)
    n_av = n_avatars(24)
    emotions = eng.emotions
    out: list[np.ndarray] = []
    batch = 8
    while sum(len(o) for o in out) < n_frames:
        states = [
            eng.start_stream(
                avatar_by_id(int(rng.integers(n_av))),
                emotions[int(rng.integers(len(emotions)))],
                float(rng.uniform(0.4, 1.0)),
                seed=int(rng.integers(1 << 30)),
            )
            for _ in range(batch)
        ]
        for k in range(6):
            lat = eng.sample_chunks(states)
            if k >= 1:  # the first chunk mostly leaves the rest pose
                out.append(lat.reshape(-1, *lat.shape[2:]))
            for s in states:
                if rng.random() < 0.3:
                    eng.set_emotion(s, emotions[int(rng.integers(len(emotions)))])
    return np.concatenate(out)[:n_frames]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two premultiplied RGBA tensors in [-1, 1]."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def evaluate(student: HalfResDecoder, teacher, raw: torch.Tensor, full: torch.Tensor) -> dict:
    """PSNR of the upscaled half-res decode against the full decode, and of the ideal (pooled + upscaled)."""
    ups, ideal = [], []
    for i in range(0, len(raw), 8):
        f = full[i : i + 8].float()
        ups.append(psnr(student(raw[i : i + 8]), f))
        ideal.append(psnr(F.interpolate(F.avg_pool2d(f, 2), scale_factor=2.0, mode="bilinear", align_corners=False), f))
    return {"psnr_db": round(float(np.mean(ups)), 2), "ideal_psnr_db": round(float(np.mean(ideal)), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.train_lowres", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--weights", default=str(DEFAULT_DIR), help="weights folder (read, and written into)")
    ap.add_argument("--minutes", type=float, default=12.0, help="training time")
    ap.add_argument("--frames", type=int, default=2400, help="training latent frames")
    ap.add_argument("--holdout", type=int, default=160, help="held-out latent frames for the PSNR")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-write", action="store_true", help="train and report, but leave the weights folder as is")
    ap.add_argument("--save", default=None, help="also save the student's state dict (torch.save) here")
    progress.add_quiet_flag(ap)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    weights = Path(args.weights)
    manifest = load_manifest(weights)
    cfg = manifest.config
    _, teacher, _ = load_torch_modules(manifest)
    mean = torch.tensor(cfg.latent_mean)[None, :, None, None]
    std = torch.tensor(cfg.latent_std)[None, :, None, None]

    t0 = time.perf_counter()
    lat = sample_latents(weights, args.frames + args.holdout, args.seed, args.threads)
    raw = torch.from_numpy(lat) * std + mean
    full, target = [], []  # kept in fp16: full-size frames only for the held-out part
    with torch.no_grad():
        for i in range(0, len(raw), 16):
            y = teacher(raw[i : i + 16])
            target.append(F.avg_pool2d(y, 2).half())
            if i < args.holdout:
                full.append(y.half())
    target_t = torch.cat(target)
    tr_raw, tr_tgt = raw[args.holdout :], target_t[args.holdout :]
    ho_raw, ho_full = raw[: args.holdout], torch.cat(full)[: args.holdout]
    print(f"data: {len(raw)} latent frames sampled and decoded in {time.perf_counter() - t0:.0f} s", flush=True)

    student = HalfResDecoder(cfg)
    student.decoder.load_state_dict(teacher.state_dict())
    student.eval()
    before = evaluate(student, teacher, ho_raw, ho_full)
    print(f"before: {before}", flush=True)

    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    t_train, deadline = time.perf_counter(), time.perf_counter() + args.minutes * 60
    step, losses = 0, []
    student.train()
    # a bar over the time budget (seconds), on a terminal only: the step lines below are the log
    bar = progress.bar(total=round(deadline - t_train), desc="train lowres", unit="s", quiet=args.quiet)
    while time.perf_counter() < deadline:
        frac = min(1.0, (time.perf_counter() - t_train) / (args.minutes * 60))
        for g in opt.param_groups:
            g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * frac))
        idx = torch.randint(len(tr_raw), (args.batch,), generator=gen)
        y = student.forward_small(tr_raw[idx])
        t = tr_tgt[idx].float()
        loss = (y - t).abs().mean() + grad_l1(y, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            progress.write(f"step {step} loss {np.mean(losses[-50:]):.4f} ({time.perf_counter() - t_train:.0f} s)")
        bar.update(min(round(time.perf_counter() - t_train), bar.total) - bar.n)
        bar.set_postfix(step=step, refresh=False)
    bar.close()
    student.eval()
    after = evaluate(student, teacher, ho_raw, ho_full)
    report = {
        "steps": step,
        "train_seconds": round(time.perf_counter() - t_train, 1),
        "frames": args.frames,
        "holdout_frames": args.holdout,
        "before": before,
        "after": after,
        "final_loss": round(float(np.mean(losses[-50:])), 5) if losses else None,
    }
    print(json.dumps(report), flush=True)
    if args.save:
        torch.save({"decoder_lowres": student.state_dict(), "report": report}, args.save)
    if not args.no_write:
        from tools.export_tiny import write_lowres

        write_lowres(student, manifest, report)
        print(f"wrote lowres.safetensors and decoder_lowres.onnx into {weights}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
