"""Train the clip classifier of tools.eval on clips drawn by the renderer (never on model output).

    python -m tools.eval.train_classifier --clips 2400 --epochs 8 --out tools/eval/weights
    python -m tools.eval.train_classifier --device cuda --clips 8000 --epochs 20   # on a GPU machine

Training clips: 16 frames (2 s at 8 fps) of the built-in avatars and of members of the
parametric family (``random_avatar(seed)``), with random motion seeds, start times and
intensities 0.5..1.0; a fraction are ``render_sequence`` clips whose emotion switches in the
first frames (labelled by the final emotion), like a generated clip that starts from rest.
Clips are rendered at 640x360 by ``--workers`` processes, box-downsampled to 90x160
(premultiplied RGBA, uint8) and cached in a .npz under ``--cache`` so re-runs skip rendering.

Augmentations aim at what a generative model does to frames: gaussian blur (sigma up to
~2.5 px at full resolution), resolution loss, noise, colour jitter (also per frame:
flicker), small shifts/scales/rotations, smooth elastic warps (wobbly outlines), alpha
gamma, JPEG artefacts and temporal jitter (a repeated or dropped frame).

Validation: built-in avatars with unseen motion seeds and start times, plus unseen random
avatars.  Accuracy per emotion is reported (clean, and with a fixed degradation), and the
identity embedding is checked (cosine of same vs different avatars).  Writes
``emotion_classifier.pt`` and ``emotion_classifier.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tools.eval.classifier import CLIP_FRAMES, EMOTIONS, WEIGHTS_DIR, ClipClassifier, downsample_premultiplied

N_EMO = len(EMOTIONS)
VAL_SEED_BASE = 1_000_000  # motion seeds of validation clips (training uses < VAL_SEED_BASE)
VAL_AVATAR_BASE = 500_000  # random_avatar seeds of validation avatars (training: 0..n_random-1)


# --------------------------------------------------------------------------------------
# clip specs and rendering
# --------------------------------------------------------------------------------------
def make_specs(
    n: int, seed: int, val: bool, n_random_avatars: int, builtin_frac: float = 0.5, seq_frac: float = 0.3
) -> list[dict]:
    """Descriptions of n clips: balanced over emotions; built-in or random avatars."""
    from avatarcast.engines.avatar_world import BUILTIN_AVATARS

    rng = np.random.default_rng([seed, 1 if val else 0])
    specs = []
    n_builtin = len(BUILTIN_AVATARS)
    emos = np.resize(np.arange(N_EMO), n)
    rng.shuffle(emos)
    for i in range(n):
        e = int(emos[i])
        if rng.random() < builtin_frac:
            av = BUILTIN_AVATARS[int(rng.integers(n_builtin))].name
        else:
            base = VAL_AVATAR_BASE if val else 0
            av = f"random-{base + int(rng.integers(n_random_avatars))}"
        s = {
            "avatar": av,
            "emotion": e,
            "seed": int(rng.integers(VAL_SEED_BASE, 2 * VAL_SEED_BASE) if val else rng.integers(0, VAL_SEED_BASE)),
            "intensity": round(float(rng.uniform(0.5, 1.0)), 3),
            "start_time": round(float(rng.uniform(0.0, 30.0)), 3),
            "switch": 0,
        }
        if rng.random() < seq_frac:
            # an early switch from another emotion (often idle = rest), labelled by the final one
            prev = 0 if rng.random() < 0.4 else int(rng.integers(N_EMO))
            if prev == e:
                prev = (e + 1 + int(rng.integers(N_EMO - 1))) % N_EMO
            s.update(switch=int(rng.integers(1, 5)), prev=prev, prev_intensity=round(float(rng.uniform(0.5, 1.0)), 3))
        specs.append(s)
    return specs


def render_spec(spec: dict) -> np.ndarray:
    """One spec -> premultiplied RGBA uint8 (16, 90, 160, 4)."""
    from avatarcast.engines.avatar_world import get_avatar, render_clip, render_sequence

    av = get_avatar(spec["avatar"])
    emo = EMOTIONS[spec["emotion"]]
    if spec["switch"]:
        k = spec["switch"]
        frames, _ = render_sequence(
            av,
            [(EMOTIONS[spec["prev"]], k, spec["prev_intensity"]), (emo, CLIP_FRAMES - k, spec["intensity"])],
            seed=spec["seed"],
            start_time=spec["start_time"],
            transition_frames=4,
        )
    else:
        frames = render_clip(
            av, emo, CLIP_FRAMES, seed=spec["seed"], intensity=spec["intensity"], start_time=spec["start_time"]
        )
    return downsample_premultiplied(frames)


def _worker_init() -> None:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def render_all(specs: list[dict], workers: int, desc: str = "") -> np.ndarray:
    out = np.empty((len(specs), CLIP_FRAMES, 90, 160, 4), np.uint8)
    t0 = time.time()
    if workers <= 1:
        it = map(render_spec, specs)
        pool = None
    else:
        pool = mp.get_context("fork" if sys.platform == "linux" else "spawn").Pool(workers, _worker_init)
        it = pool.imap(render_spec, specs, chunksize=8)
    try:
        for i, clip in enumerate(it):
            out[i] = clip
            if (i + 1) % 500 == 0 or i + 1 == len(specs):
                print(f"  rendered {desc} {i + 1}/{len(specs)} ({time.time() - t0:.0f} s)", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return out


def load_or_render(specs: list[dict], cache_dir: Path, workers: int, desc: str) -> np.ndarray:
    from tools.avatar_world.dataset import DATA_VERSION

    key = hashlib.sha1(json.dumps([DATA_VERSION, specs], sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"eval_clf_{desc}_{len(specs)}_{key}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                print(f"  cached {desc} clips: {path}", flush=True)
                return z["clips"]
        except Exception as exc:  # a broken cache is re-rendered
            print(f"  ignoring broken cache {path}: {exc}", flush=True)
    clips = render_all(specs, workers, desc)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, clips=clips)
    os.replace(tmp, path)
    return clips


# --------------------------------------------------------------------------------------
# augmentation (on batches of premultiplied RGBA float clips (B, 4, T, h, w) in [0, 1])
# --------------------------------------------------------------------------------------
def temporal_indices(rng: np.random.Generator, n_total: int, n_out: int, lo: int, jitter: bool) -> np.ndarray:
    """Sorted frame indices of a window of n_out frames, maybe with a repeated/dropped frame."""
    start = int(rng.integers(lo, n_total - n_out + 1)) if n_total - n_out >= lo else max(0, n_total - n_out)
    idx = np.arange(start, start + n_out)
    if jitter and rng.random() < 0.4:
        for _ in range(int(rng.integers(1, 3))):
            op = rng.random()
            j = int(rng.integers(1, n_out))
            if op < 0.5:  # repeat frame j-1 in place of j (a stall)
                idx[j] = idx[j - 1]
            else:  # drop: skip ahead by one from j on
                idx[j:] = np.minimum(idx[j:] + 1, n_total - 1)
        idx = np.maximum.accumulate(idx)
    return idx


def jpeg_clip(clip: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of every frame (RGB and alpha separately) of a uint8 (T, h, w, 4) clip."""
    from PIL import Image

    out = np.empty_like(clip)
    for t in range(clip.shape[0]):
        for sl, mode in ((slice(0, 3), "RGB"), (slice(3, 4), "L")):
            im = Image.fromarray(clip[t, :, :, sl] if mode == "RGB" else clip[t, :, :, 3])
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
            buf.seek(0)
            a = np.asarray(Image.open(buf))
            out[t, :, :, sl] = a if mode == "RGB" else a[..., None]
    return out


def _gauss_kernel(sigma: torch.Tensor, k: int = 7) -> torch.Tensor:
    r = torch.arange(k, dtype=sigma.dtype, device=sigma.device) - k // 2
    g = torch.exp(-0.5 * (r[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    return g / g.sum(1, keepdim=True)  # (B, k)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-clip separable gaussian blur of (B, C, T, h, w); sigma (B,) in px of x."""
    B, C, T, h, w = x.shape
    g = _gauss_kernel(sigma)  # (B, k)
    k = g.shape[1]
    y = x.permute(0, 2, 1, 3, 4).reshape(1, B * T * C, h, w)
    gw = g.repeat_interleave(T * C, 0)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="replicate"), gw[:, None, None, :], groups=B * T * C)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="replicate"), gw[:, None, :, None], groups=B * T * C)
    return y.view(B, T, C, h, w).permute(0, 2, 1, 3, 4)


def augment(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random degradations of clips (B, 4, T, h, w) premultiplied in [0, 1]; returns a new tensor.

    Each degradation hits a random subset of the clips (only that subset is computed).
    """
    B, C, T, h, w = x.shape
    dev = x.device
    s = strength

    def U(lo, hi, *shape):
        return (lo + (hi - lo) * torch.rand(*shape, generator=gen)).to(dev)

    def pick(p):
        return torch.nonzero(torch.rand(B, generator=gen) < p).flatten().to(dev)

    y = x.clone()
    # --- geometry: per-clip affine + smooth elastic warp (per clip and a little per frame) ---
    idx = pick(0.8)
    n = len(idx)
    if n:
        ang = U(-3, 3, n) * s * math.pi / 180
        sc = 1.0 + U(-0.08, 0.08, n) * s
        tx, ty = U(-0.07, 0.07, n) * s, U(-0.05, 0.05, n) * s
        cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
        aspect = w / h
        theta = torch.stack([torch.stack([cos, -sin / aspect, tx], 1), torch.stack([sin * aspect, cos, ty], 1)], 1)
        grid = F.affine_grid(theta.repeat_interleave(T, 0), (n * T, C, h, w), align_corners=False)
        amp = U(0, 1.5, n) * s * (torch.rand(n, generator=gen) < 0.7).to(dev)  # px of the 90x160 frame
        amp_t = U(0, 0.6, n) * s * (torch.rand(n, generator=gen) < 0.5).to(dev)  # per-frame wobble
        field = (
            torch.randn(n, 1, 2, 5, 8, generator=gen).to(dev) * amp[:, None, None, None, None]
            + torch.randn(n, T, 2, 5, 8, generator=gen).to(dev) * amp_t[:, None, None, None, None]
        )
        field = F.interpolate(field.reshape(n * T, 2, 5, 8), size=(h, w), mode="bilinear", align_corners=False)
        field = field.permute(0, 2, 3, 1) * torch.tensor([2.0 / w, 2.0 / h], device=dev)
        f = y[idx].permute(0, 2, 1, 3, 4).reshape(n * T, C, h, w)
        f = F.grid_sample(f, grid + field, mode="bilinear", padding_mode="zeros", align_corners=False)
        y[idx] = f.view(n, T, C, h, w).permute(0, 2, 1, 3, 4)

    # --- alpha gamma (thinner / fatter soft edges), keeping colour premultiplied ---
    idx = pick(0.3)
    if len(idx):
        gam = U(0.7, 1.4, len(idx))[:, None, None, None]
        a = y[idx, 3].clamp(0, 1)
        ratio = a.pow(gam) / a.clamp_min(1e-4)
        y[idx] = y[idx] * ratio[:, None]

    # --- blur / resolution loss ---
    idx = pick(0.6)
    if len(idx):
        y[idx] = blur(y[idx], U(0.1, 0.65, len(idx)) * s)
    idx = pick(0.15)
    if len(idx):
        f = y[idx].permute(0, 2, 1, 3, 4).reshape(len(idx) * T, C, h, w)
        f = F.interpolate(
            F.interpolate(f, scale_factor=0.5, mode="area"), size=(h, w), mode="bilinear", align_corners=False
        )
        y[idx] = f.view(len(idx), T, C, h, w).permute(0, 2, 1, 3, 4)

    # --- colour: per-clip gain / saturation, per-frame flicker ---
    idx = pick(0.8)
    n = len(idx)
    if n:
        gain = (U(0.9, 1.1, n, 1, 1, 1, 1) * U(0.93, 1.07, n, 3, 1, 1, 1)) ** s
        gain = gain * (1.0 + U(-0.03, 0.03, n, 1, T, 1, 1) * s)
        satm = U(-0.2, 0.2, n, 1, 1, 1, 1) * s
        rgb = y[idx, :3]
        rgb = (rgb * (1 + satm) - satm * rgb.mean(1, keepdim=True)) * gain
        y[idx, :3] = rgb

    # --- noise ---
    idx = pick(0.5)
    if len(idx):
        nz = (U(0.005, 0.04, len(idx)) * s)[:, None, None, None, None]
        y[idx] = y[idx] + nz * torch.randn((len(idx), C, T, h, w), generator=gen).to(dev)
    y.clamp_(0, 1)
    torch.minimum(y[:, :3], y[:, 3:], out=y[:, :3])
    return y


def make_batch(
    clips: np.ndarray, specs: list[dict], rows: np.ndarray, rng: np.random.Generator, n_frames: int, train: bool
) -> torch.Tensor:
    """uint8 clips -> float (B, 4, n_frames, h, w), picking windows and applying JPEG on the CPU."""
    out = []
    for r in rows:
        sp = specs[r]
        lo = sp["switch"] if train else 0
        idx = (
            temporal_indices(rng, CLIP_FRAMES, n_frames, lo, jitter=train)
            if train
            else np.arange(CLIP_FRAMES - n_frames, CLIP_FRAMES)
        )
        c = clips[r][idx]
        if train and rng.random() < 0.25:
            c = jpeg_clip(c, int(rng.integers(35, 85)))
        out.append(c)
    return torch.from_numpy(np.stack(out)).permute(0, 4, 1, 2, 3).float().div_(255.0)


# --------------------------------------------------------------------------------------
# evaluation helpers
# --------------------------------------------------------------------------------------
@torch.no_grad()
def predict(
    model: ClipClassifier, clips: np.ndarray, device: str, batch: int = 16, degrade: bool = False, seed: int = 123
) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    preds, embs = [], []
    for i in range(0, len(clips), batch):
        c = clips[i : i + batch]
        if degrade:  # fixed, moderate degradation: JPEG + blur (sigma 2 px full res) + noise
            c = np.stack([jpeg_clip(x, 50) for x in c])
        x = torch.from_numpy(np.ascontiguousarray(c)).permute(0, 4, 1, 2, 3).float().div_(255.0).to(device)
        if degrade:
            x = blur(x, torch.full((x.shape[0],), 0.5, device=device))
            x = (x + 0.02 * torch.randn(x.shape, generator=gen).to(device)).clamp(0, 1)
        logits, emb = model(x)
        preds.append(logits.argmax(1).cpu().numpy())
        embs.append(emb.cpu().numpy())
    return np.concatenate(preds), np.concatenate(embs)


def per_emotion_accuracy(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        e: float((pred[labels == i] == i).mean()) if (labels == i).any() else float("nan")
        for i, e in enumerate(EMOTIONS)
    }


def identity_check(emb: np.ndarray, names: list[str]) -> dict:
    """Cosine of embeddings of clips of the same vs different avatars, and ROC AUC."""
    names_a = np.array(names)
    sim = emb @ emb.T
    same = names_a[:, None] == names_a[None, :]
    iu = np.triu_indices(len(names), 1)
    s, m = sim[iu], same[iu]
    pos, neg = s[m], s[~m]
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    auc = (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / max(1, len(pos) * len(neg))
    return {
        "same_avatar_cos": float(pos.mean()) if len(pos) else float("nan"),
        "other_avatar_cos": float(neg.mean()) if len(neg) else float("nan"),
        "auc": float(auc),
    }


# --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=2400, help="training clips to render")
    ap.add_argument("--val-clips", type=int, default=440, help="held-out clips (unseen seeds / avatars)")
    ap.add_argument("--random-avatars", type=int, default=300, help="random_avatar seeds used in training")
    ap.add_argument("--val-random-avatars", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--train-frames", type=int, default=8, help="frames per training window (eval uses 16)")
    ap.add_argument("--id-weight", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=2, help="rendering processes")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=10.5,
        help="training time budget (rendering not included; 0 = no limit): the learning-rate "
        "schedule follows max(step / total steps, elapsed / budget), so a slow machine "
        "still ends with an annealed model",
    )
    ap.add_argument("--cache", default="/tmp/avatarcast_eval_cache")
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    args = ap.parse_args(argv)

    t_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from avatarcast.engines.avatar_world import BUILTIN_AVATARS
    from tools.avatar_world.dataset import DATA_VERSION

    train_specs = make_specs(args.clips, args.seed, False, args.random_avatars)
    val_specs = make_specs(args.val_clips, args.seed, True, args.val_random_avatars, seq_frac=0.0)
    cache = Path(args.cache)
    print(f"rendering {len(train_specs)} train + {len(val_specs)} val clips with {args.workers} workers", flush=True)
    train_clips = load_or_render(train_specs, cache, args.workers, "train")
    val_clips = load_or_render(val_specs, cache, args.workers, "val")
    t_render = time.time() - t_start

    id_names = [a.name for a in BUILTIN_AVATARS] + [f"random-{i}" for i in range(args.random_avatars)]
    id_index = {n: i for i, n in enumerate(id_names)}
    y_emo = np.array([s["emotion"] for s in train_specs])
    y_id = np.array([id_index[s["avatar"]] for s in train_specs])
    val_y = np.array([s["emotion"] for s in val_specs])

    dev = args.device
    model = ClipClassifier(n_ids=len(id_names)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train_specs) / args.batch)
    total = steps_per_epoch * args.epochs
    budget_s = args.max_minutes * 60.0

    def progress() -> float:
        p = step / total
        if budget_s > 0:
            p = max(p, (time.time() - t_train0) / budget_s)
        return p

    def lr_at(p: float) -> float:  # linear warm-up, then cosine to ~0
        warm = 0.1
        if p < warm:
            return args.lr * max(p / warm, 0.02)
        return args.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (p - warm) / (1 - warm)))))

    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_train0 = time.time()
    step = 0
    history = []
    stopped_early = False
    for ep in range(args.epochs):
        model.train()
        perm = rng.permutation(len(train_specs))
        tot = {"loss": 0.0, "emo_acc": 0.0, "id_acc": 0.0, "n": 0}
        for b in range(steps_per_epoch):
            rows = perm[b * args.batch : (b + 1) * args.batch]
            if len(rows) < 2:
                continue
            x = make_batch(train_clips, train_specs, rows, rng, args.train_frames, train=True).to(dev)
            # a few clean clips keep the clean accuracy high
            x = augment(x, gen, strength=float(rng.uniform(0.5, 1.0))) if rng.random() < 0.9 else x
            ye = torch.from_numpy(y_emo[rows]).to(dev)
            yi = torch.from_numpy(y_id[rows]).to(dev)
            logits, emb = model(x)
            loss_e = F.cross_entropy(logits, ye, label_smoothing=0.05)
            loss_i = F.cross_entropy(model.id_logits(emb), yi, label_smoothing=0.05)
            loss = loss_e + args.id_weight * loss_i
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for g in opt.param_groups:
                g["lr"] = lr_at(progress())
            opt.step()
            step += 1
            n = len(rows)
            tot["loss"] += float(loss.detach()) * n
            tot["emo_acc"] += float((logits.argmax(1) == ye).float().sum())
            tot["id_acc"] += float((model.id_logits(emb).argmax(1) == yi).float().sum())
            tot["n"] += n
            if progress() >= 1.0:
                stopped_early = step < total
                break
        n = max(1, tot["n"])
        rec = {
            "epoch": ep + 1,
            "loss": tot["loss"] / n,
            "train_emo_acc": tot["emo_acc"] / n,
            "train_id_acc": tot["id_acc"] / n,
            "seconds": round(time.time() - t_train0, 1),
        }
        rec["lr"] = opt.param_groups[0]["lr"]
        history.append(rec)
        print(json.dumps(rec), flush=True)
        if progress() >= 1.0:
            if stopped_early:
                print(
                    f"stopping after {step}/{total} steps: the --max-minutes {args.max_minutes} budget is spent",
                    flush=True,
                )
            break
    t_train = time.time() - t_train0

    # --- held-out report ---
    vp, vemb = predict(model, val_clips, dev)
    vpd, _ = predict(model, val_clips, dev, degrade=True)
    is_builtin = np.array([not s["avatar"].startswith("random-") for s in val_specs])
    conf = np.zeros((N_EMO, N_EMO), int)
    for t, p in zip(val_y, vp):
        conf[t, p] += 1
    val = {
        "n_clips": len(val_specs),
        "accuracy": float((vp == val_y).mean()),
        "accuracy_builtin_avatars": float((vp == val_y)[is_builtin].mean()),
        "accuracy_unseen_random_avatars": float((vp == val_y)[~is_builtin].mean()),
        "per_emotion": per_emotion_accuracy(vp, val_y),
        "degraded_accuracy": float((vpd == val_y).mean()),
        "degraded_per_emotion": per_emotion_accuracy(vpd, val_y),
        "confusion": conf.tolist(),
        "identity": identity_check(vemb, [s["avatar"] for s in val_specs]),
    }
    val["min_per_emotion"] = min(val["per_emotion"].values())

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    # float16 on disk (load_classifier runs it in float32): half the bytes, the same eval (tools/eval/classifier.py)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(
        {"config": model.config, "state_dict": state, "emotions": list(EMOTIONS), "id_names": id_names},
        out / "emotion_classifier.pt",
    )
    meta = {
        "emotions": list(EMOTIONS),
        "input": {
            "frames": CLIP_FRAMES,
            "height": 90,
            "width": 160,
            "channels": "RGB premultiplied by alpha, alpha; [0, 1]; 4x box-downsampled from 640x360",
        },
        "config": model.config,
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "data_version": DATA_VERSION,
        "trained_on": "renderer clips only (tools.avatar_world), never model output",
        "args": vars(args),
        "train_clips": len(train_specs),
        "render_seconds": round(t_render, 1),
        "train_seconds": round(t_train, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "stopped_early": stopped_early,
        "steps": step,
        "planned_steps": total,
        "history": history,
        "validation": val,
        "device": dev,
        "torch": torch.__version__,
    }
    (out / "emotion_classifier.json").write_text(json.dumps(meta, indent=1))
    print(
        json.dumps(
            {
                k: val[k]
                for k in (
                    "accuracy",
                    "accuracy_builtin_avatars",
                    "accuracy_unseen_random_avatars",
                    "min_per_emotion",
                    "degraded_accuracy",
                    "per_emotion",
                    "identity",
                )
            },
            indent=1,
        )
    )
    print(f"render {t_render:.0f} s, train {t_train:.0f} s, total {time.time() - t_start:.0f} s -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
