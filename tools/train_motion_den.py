"""Train architecture 3's denoiser (engines/tiny/motion_denoiser.py) on motion-vector clips.

    python -m tools.train_motion_den --work /tmp/avm --ckpt out/motion --minutes 20

No pixels: the clips are tools/train_tiny.py's clip specs (built-in and parametric avatars, plain
loops, emotion switches and starts from rest) turned into motion vectors by the renderer's rig
(engines/avatar_world/skeleton.py), which takes about 0.2 ms a frame, so the CPU trains this.
The objective is tools/train_tiny.py's shortcut flow loss, unchanged: the motion is a 1 x 1 image.
Writes `motion_den.pt` (model, EMA, optimizer, step, the per-dimension normalization) and, in
`report.json` under "motion_den", figures on held-out avatars (random_avatar(900_000 + k)) and seeds:
how far 2-step samples started from rest stray from the avatar's bone lengths, and how much of the
starting noise is left in them.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from avatarcast.engines.avatar_world.reference import canonical_pose, rest_pose
from avatarcast.engines.avatar_world.render import sequence_poses
from avatarcast.engines.avatar_world.skeleton import EXPR_OFFSET, KEYPOINTS, LIMB_BONES, MOTION_DIM, N_POINTS
from avatarcast.engines.sampler import ShortcutFlowSampler
from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.engines.tiny.motion_denoiser import MotionDenoiser, build_denoiser
from avatarcast.vocabulary import EMOTIONS
from tools.train_motion import _mv, add_run_arguments, cached_npz
from tools.train_tiny import (
    CLIP_FRAMES,
    REST_SHARE,
    LossLog,
    avatar_by_id,
    clip_specs,
    ema_update,
    heldout_avatar,
    save_small,
    shortcut_loss,
    update_report,
)

CFG = TinyConfig(den_pred="x")  # chunk and context lengths, the smallest shortcut, the "x" loss weighting


def _clip_job(spec) -> tuple[np.ndarray, np.ndarray]:
    av = avatar_by_id(spec.avatar_id)
    poses, labels = sequence_poses(list(spec.segments), spec.seed, start_time=spec.start_time)
    return np.stack([_mv(av, q) for q in poses]), labels


def build_clips(args) -> dict:
    mix = (
        ""
        if (args.rest_starts, args.full_intensity) == (REST_SHARE, 0.0)
        else f"_r{args.rest_starts:g}_i{args.full_intensity:g}"
    )
    cache, kept = cached_npz(args.work, f"motion_clips_canonical_{args.random_avatars}_{args.variants}{mix}.npz")
    if kept is not None:
        return kept
    specs = clip_specs(
        args.random_avatars, args.variants, seed=0, rest_share=args.rest_starts, full_intensity=args.full_intensity
    )
    t0 = time.time()
    with Pool(args.workers) as pool:
        out = pool.map(_clip_job, specs, chunksize=32)
    q = canonical_pose()  # the denoiser reads the avatar's proportions off it, as the decoder its looks
    n_av = max(s.avatar_id for s in specs) + 1
    data = {
        "motions": np.stack([o[0] for o in out]).astype(np.float32),
        "labels": np.stack([o[1] for o in out]),
        "avatar": np.array([s.avatar_id for s in specs]),
        "intensity": np.array([s.intensity for s in specs], np.float32),
        "ref": np.stack([_mv(avatar_by_id(i), q) for i in range(n_av)]),
    }
    print(f"[motion_den] {len(specs)} clips in {time.time() - t0:.0f}s", flush=True)
    np.savez(cache, **data)
    return data


class Chunks:
    """(target chunk, context, reference, emotion, intensity) batches of normalized motion, as 1 x 1 images."""

    def __init__(
        self, data: dict, mean: np.ndarray, std: np.ndarray, device: str | torch.device = "cpu", own_chain: int = 1
    ):
        # all of it on the device (a few hundred MB): a batch is then a gather, with no copy per step
        self.dev = dev = torch.device(device)
        self.m = torch.from_numpy((data["motions"] - mean) / std).to(dev)
        self.ref = torch.from_numpy((data["ref"] - mean) / std).to(dev)
        self.labels = torch.from_numpy(data["labels"]).to(dev)
        self.avatar = torch.from_numpy(data["avatar"]).to(dev)
        self.intensity = torch.from_numpy(data["intensity"]).to(dev)
        T, K = CFG.chunk_frames, CFG.context_frames
        pairs = []  # (clip, start): the whole target chunk carries one label, as tools/train_tiny.ChunkSampler
        for s in range(K, CLIP_FRAMES - T + 1):
            ok = (self.labels[:, s : s + T] == self.labels[:, s : s + 1]).all(1)
            idx = torch.nonzero(ok).flatten()
            pairs.append(torch.stack([idx, torch.full_like(idx, s)], 1))
        self.pairs = torch.cat(pairs)
        # starts with `chain` whole chunks and their context before them: their context can be the model's own last
        # chunk, sampled after chain - 1 more of its own (a served stream feeds on its own chunks from its start)
        if own_chain < 1 or own_chain * T + K > CLIP_FRAMES - T:
            raise ValueError(f"own_chain must be 1-{(CLIP_FRAMES - T - K) // T} for {CLIP_FRAMES}-frame clips")
        self.own_chain = own_chain
        self.pairs_own = {n: self.pairs[self.pairs[:, 1] >= n * T + K] for n in range(1, own_chain + 1)}

    def _frames(self, clip: torch.Tensor, start: torch.Tensor, n_frames: int) -> torch.Tensor:
        at = start[:, None] + torch.arange(n_frames, device=self.dev)[None]
        return self.m[clip[:, None], at].reshape(len(clip), -1, 1, 1)

    def batch(self, n: int, gen: torch.Generator, own: float = 0.0, model=None):
        """A batch; with own > 0, that share of it has as context the last frames of the model's own 1- or
        2-step sample of the chunk before, as served streams have: trained on true contexts only, the denoiser's
        rollouts got worse as its loss fell (exposure bias). With own_chain > 1 that chunk is the last of 1 to
        own_chain chunks sampled one after another, each from the one before, the first from its true context:
        a stream's own tame first chunks may keep it tame (its slow start from rest, docs/training/motion.md).
        `gen` is a generator on the data's device; with own_chain 1 it draws exactly what it always drew."""
        T, K = CFG.chunk_frames, CFG.context_frames
        k = int(n * own) if model is not None else 0
        chain = 1
        if k and self.own_chain > 1:
            chain = 1 + int(torch.randint(0, self.own_chain, (1,), generator=gen, device=self.dev))
        pool = self.pairs_own[chain]
        p = torch.cat(
            [
                pool[torch.randint(0, len(pool), (k,), generator=gen, device=self.dev)],
                self.pairs[torch.randint(0, len(self.pairs), (n - k,), generator=gen, device=self.dev)],
            ]
        )
        clip, s = p[:, 0], p[:, 1]
        x1 = self._frames(clip, s, T)
        ctx = self._frames(clip, s - K, K)
        ref = self.ref[self.avatar[clip]][..., None, None]
        emo, inten = self.labels[clip, s], self.intensity[clip]
        if k:
            c, st = clip[:k], s[:k] - chain * T
            steps = 1 + int(torch.randint(0, 2, (1,), generator=gen, device=self.dev))
            sampler = ShortcutFlowSampler(steps=steps, min_shortcut=CFG.min_shortcut)
            prev_ctx = self._frames(c, st - K, K)
            d = torch.full((k,), sampler.model_step_size, device=self.dev)
            with torch.no_grad():
                for _ in range(chain):
                    x = torch.randn(k, T * MOTION_DIM, 1, 1, generator=gen, device=self.dev)
                    prev_emo = self.labels[c, st]
                    for t in sampler.timesteps:
                        tk = torch.full((k,), float(t), device=self.dev)
                        v = model(x, tk, d, prev_ctx, ref[:k], prev_emo, inten[:k])
                        x = sampler.step(v, t, x)
                    prev_ctx = x.reshape(k, T, MOTION_DIM)[:, T - K :].reshape(k, -1, 1, 1)
                    st = st + T
            ctx = ctx.clone()
            ctx[:k] = prev_ctx
        return x1, ctx, ref, emo, inten


def normalization(data: dict) -> tuple[np.ndarray, np.ndarray]:
    m = data["motions"].reshape(-1, MOTION_DIM)
    # a floor on the spread: dimensions that hardly move (eye_scale) must not turn sampler noise into big moves
    return m.mean(0).astype(np.float32), np.maximum(m.std(0), 0.02).astype(np.float32)


def load_kept(path: Path) -> tuple[MotionDenoiser, np.ndarray, np.ndarray, int]:
    """The EMA denoiser a run kept (motion_den.pt or motion_den_best.pt), its normalization and its step."""
    st = torch.load(path, map_location="cpu")
    model = build_denoiser(st.get("arch"))
    model.load_state_dict(st["ema"])
    return model.eval(), st["mean"].numpy(), st["std"].numpy(), int(st["step"])


def rollout(
    model, ref_n: torch.Tensor, start_n: torch.Tensor, emotion: int, intensity: float, chunks: int, steps: int, gen
) -> torch.Tensor:
    """A stream from rest (start_n: each avatar's rest motion): normalized motions (B, chunks*T, D), each
    chunk's context the previous samples."""
    B = ref_n.shape[0]
    T, K, D = CFG.chunk_frames, CFG.context_frames, MOTION_DIM
    sampler = ShortcutFlowSampler(steps=steps, min_shortcut=CFG.min_shortcut)
    ctx = start_n.repeat(1, K)[..., None, None]
    emo = torch.full((B,), emotion, dtype=torch.long)
    inten = torch.full((B,), intensity)
    out = []
    with torch.no_grad():
        for _ in range(chunks):
            x = torch.randn(B, T * D, 1, 1, generator=gen)
            d = torch.full((B,), sampler.model_step_size)
            for t in sampler.timesteps:
                v = model(x, torch.full((B,), float(t)), d, ctx, ref_n[..., None, None], emo, inten)
                x = sampler.step(v, t, x)
            out.append(x.reshape(B, T, D))
            ctx = x.reshape(B, T, D)[:, T - K :].reshape(B, -1, 1, 1)
    return torch.cat(out, 1)


def bone_error(motions: np.ndarray, ref: np.ndarray, w: int, h: int) -> float:
    """Mean |bone length - the reference's| / the reference's, over arms and legs (raw motions)."""
    s = np.array([w / 2, h / 2])
    kp = motions[..., :EXPR_OFFSET].reshape(*motions.shape[:-1], N_POINTS, 2) * s
    kr = ref[..., :EXPR_OFFSET].reshape(*ref.shape[:-1], N_POINTS, 2) * s
    errs = []
    for a, b in LIMB_BONES:
        i, j = KEYPOINTS.index(a), KEYPOINTS.index(b)
        lg = np.linalg.norm(kp[..., j, :] - kp[..., i, :], axis=-1)
        lr = np.linalg.norm(kr[..., j, :] - kr[..., i, :], axis=-1)[..., None]
        errs.append(np.abs(lg - lr) / lr)
    return float(np.mean(errs))


def evaluate(model, mean, std, steps: int = 2) -> dict:
    """Held-out avatars from rest, every emotion, 4 chunks at the serving steps, against their true motion:
    bone lengths (do the samples keep the avatar's proportions) and the keypoints' spread over time after
    the first chunk (a denoiser that gives the mean of the possible chunks moves less than the data)."""
    avs = [heldout_avatar(k) for k in range(6)]
    ref = np.stack([_mv(a, canonical_pose()) for a in avs])
    ref_n = torch.from_numpy((ref - mean) / std)
    start_n = torch.from_numpy((np.stack([_mv(a, rest_pose()) for a in avs]) - mean) / std)
    gen = torch.Generator().manual_seed(0x900D)
    T = CFG.chunk_frames
    bone, bone_true, spread = [], [], []
    for e, emo in enumerate(EMOTIONS):
        m = rollout(model, ref_n, start_n, e, 1.0, 4, steps, gen).numpy() * std + mean  # (6, 16, D)
        true = np.stack(
            [
                np.stack([_mv(a, q) for q in sequence_poses([(emo, 16, 1.0)], seed=0x9100_0000 + e + 16 * k)[0]])
                for k, a in enumerate(avs)
            ]
        )
        bone.append(bone_error(m, ref, CFG.window_width, CFG.pad_height))
        bone_true.append(bone_error(true, ref, CFG.window_width, CFG.pad_height))
        kp = slice(0, EXPR_OFFSET)
        s_gen = m[:, T:, kp].std(1).mean()
        s_true = true[:, T:, kp].std(1).mean()
        spread.append(float(s_gen / max(s_true, 1e-6)))
    return {
        "bone_length_error": round(float(np.mean(bone)), 4),
        "bone_length_error_data": round(float(np.mean(bone_true)), 4),
        "keypoint_spread_ratio": round(float(np.mean(spread)), 3),
        "keypoint_spread_ratio_per_emotion": {e: round(v, 2) for e, v in zip(EMOTIONS, spread)},
    }


def rollout_score(rep: dict) -> float:
    """Lower is better: the samples' bone-length error plus a tenth of how far their liveliness is from the data's."""
    return float(rep["bone_length_error"] + 0.1 * abs(1.0 - rep["keypoint_spread_ratio"]))


def on_cpu(model: MotionDenoiser) -> MotionDenoiser:
    """A CPU copy to score: the rollouts and the true motions they are compared with are the CPU's."""
    return copy.deepcopy(model).cpu().eval()


def train(args) -> None:
    ck = Path(args.ckpt)
    ck.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    data = build_clips(args)
    path = ck / "motion_den.pt"
    dev = torch.device(args.device)
    # a resumed run keeps the size it started with; a new one takes --width / --blocks
    st = torch.load(path, map_location=dev) if path.exists() else None
    arch = st.get("arch") if st is not None else {"width": args.width, "blocks": args.blocks}
    model = build_denoiser(arch).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    step = 0
    if st is not None:
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        step, mean, std = st["step"], st["mean"].numpy(), st["std"].numpy()
    else:
        mean, std = normalization(data)
    chunks = Chunks(data, mean, std, dev, own_chain=args.own_chain)
    gen = torch.Generator(device=dev).manual_seed(99 + step)
    log = LossLog(ck / "motion_den_loss.json")
    t0 = time.time()
    deadline = t0 + args.minutes * 60
    local = 0

    def save() -> None:
        st = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step}
        save_small({**st, "arch": arch, "mean": torch.from_numpy(mean), "std": torch.from_numpy(std)}, path)

    last = time.time()
    best = float("inf")
    while time.time() < deadline or local < args.min_steps:
        own = args.own_context if step >= args.own_context_after else 0.0
        x1, ctx, ref, emo, inten = chunks.batch(args.batch, gen, own=own, model=ema)
        frac = min(1.0, (time.time() - t0) / max(1.0, deadline - t0))
        cos = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)) if args.cosine else 1.0
        lr = args.lr * min(1.0, (step + 1) / 200) * cos  # a float: a numpy scalar would break torch.load
        for g in opt.param_groups:
            g["lr"] = lr
        loss, lf, lb = shortcut_loss(model, x1, ctx, ref, emo, inten, CFG, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema, model, args.ema if step > 300 else 0.9)
        step += 1
        local += 1
        log.tick("motion_den", step, local, t0, flow=lf.detach(), shortcut=lb.detach())
        if time.time() - last > 120:
            save()
            log.save()
            last = time.time()
        if args.eval_every and step % args.eval_every == 0:
            rep = evaluate(on_cpu(ema), mean, std)
            score = rollout_score(rep)
            log.add(step=step, time=time.time() - t0, rollout_score=score)
            print(f"[motion_den] step {step} rollouts {json.dumps(rep)} score {score:.4f}", flush=True)
            if score < best:
                best = score
                kept = {
                    "ema": ema.state_dict(),
                    "arch": arch,
                    "step": step,
                    "mean": torch.from_numpy(mean),
                    "std": torch.from_numpy(std),
                }
                save_small(kept, ck / "motion_den_best.pt")
                update_report(ck, "motion_den_best", {**rep, "step": step, "score": round(score, 4)})
    save()
    log.save()
    print(
        f"[motion_den] {local} steps this run, {step} in all, {(time.time() - t0) / max(1, local) * 1000:.0f} ms/step"
    )
    rep = evaluate(on_cpu(ema), mean, std)
    rep["step"] = step
    update_report(ck, "motion_den", rep)
    print("[motion_den] held-out", json.dumps(rep), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ap, minutes=20.0, random_avatars=394)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--cosine", action="store_true")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--min-steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--width", type=int, default=512, help="a new run's residual width")
    ap.add_argument("--blocks", type=int, default=6, help="a new run's residual blocks")
    ap.add_argument(
        "--own-context", type=float, default=0.25, help="share of each batch whose context is the EMA's own sample"
    )
    ap.add_argument(
        "--rest-starts", type=float, default=REST_SHARE, help="share of training clips that start from the rest pose"
    )
    ap.add_argument(
        "--full-intensity", type=float, default=0.0, help="share of training clips at intensity 1 (else 0.5-1)"
    )
    ap.add_argument(
        "--own-chain", type=int, default=1, help="own-context rows chain 1 to N of the model's own chunks (1: one)"
    )
    ap.add_argument("--own-context-after", type=int, default=2000, help="steps on true contexts before that starts")
    ap.add_argument(
        "--eval-every",
        type=int,
        default=2000,
        help="score rollouts every n steps and keep the best (motion_den_best.pt)",
    )
    ap.add_argument("--eval-only", action="store_true", help="score the kept EMA weights (motion_den.pt) and stop")
    args = ap.parse_args(argv)
    if args.eval_only:
        model, mean, std, step = load_kept(Path(args.ckpt) / "motion_den.pt")
        rep = {**evaluate(model, mean, std), "step": step}
        update_report(Path(args.ckpt), "motion_den", rep)
        print("[motion_den] held-out", json.dumps(rep), flush=True)
        return
    train(args)


if __name__ == "__main__":
    main()
