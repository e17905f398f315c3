"""A two-sample detector: a small CNN, trained from scratch on the CPU after the model is frozen,
that tells one set of RGBA frames (the model's) from another (the renderer's) on crops around the avatar.

Held-out accuracy (balanced over the two sets, on clips the detector never trained on) is the
score: 50% means the detector cannot tell the sets apart, 100% that every crop gives itself away.
What the detector sees is made blind to differences nobody can see (see :func:`canonical`):
single frames (no timing or motion phase), premultiplied RGBA (no colour under alpha 0), alpha
below ALPHA_FLOOR set to zero on both sides (no faint background haze an AR composite would
never show), and the same Gaussian noise of NOISE_STD on both sides (no least-significant-bit
patterns such as the renderer's exactly flat fills).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ALPHA_FLOOR = 8  # of 255: ~3%, invisible in a composite
NOISE_STD = 2.0 / 255


@dataclass(frozen=True)
class DetectorConfig:
    """How crops are drawn and how long the detector trains."""

    crop: int = 48  # px, 1:1: a hand, an eye, a stretch of outline
    epochs: int = 2
    batch: int = 64
    lr: float = 2e-3
    holdout_frac: float = 0.25
    seed: int = 0


def sample_crops(frame: np.ndarray, n: int, rng: np.random.Generator, crop: int = 48) -> np.ndarray:
    """n crops (n, crop, crop, 4) uint8 of a frame (H, W, 4), centred on random pixels of its alpha > 0.5."""
    H, W = frame.shape[:2]
    ys, xs = np.nonzero(frame[..., 3] > 127)
    out = np.zeros((n, crop, crop, 4), np.uint8)
    if len(ys) == 0:
        return out
    pick = rng.integers(len(ys), size=n)
    for i, k in enumerate(pick):
        y0 = int(np.clip(ys[k] - crop // 2, 0, H - crop))
        x0 = int(np.clip(xs[k] - crop // 2, 0, W - crop))
        out[i] = frame[y0 : y0 + crop, x0 : x0 + crop]
    return out


def canonical(crops: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """uint8 crops (N, c, c, 4) -> float (N, 4, c, c): premultiplied RGBA, alpha floor, shared noise."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).float().div_(255.0)
    a = x[..., 3:4] * (x[..., 3:4] >= ALPHA_FLOOR / 255.0)
    x = torch.cat([x[..., :3] * a, a], -1).permute(0, 3, 1, 2).contiguous()
    noise = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32))
    return x.add_(noise, alpha=NOISE_STD)


class CropDetector(nn.Module):
    """A 4x4 stride-2 stem (every pixel seen at 1:1), three 3x3 convolutions, average pooling, one logit."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        layers, c_in = [nn.Conv2d(4, w // 2, 4, stride=2, padding=1), nn.BatchNorm2d(w // 2), nn.ReLU()], w // 2
        for c_out, stride in ((w, 2), (2 * w, 2), (2 * w, 1)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))[:, 0]


def split_keys(keys: list, holdout_frac: float) -> set:
    """The held-out clip keys: a fixed share of the distinct keys, chosen by hash (at least one)."""
    uniq = sorted(set(keys), key=lambda k: zlib.crc32(repr(("detector-split", k)).encode()))
    n = max(1, int(round(holdout_frac * len(uniq))))
    return set(uniq[:n])


@dataclass
class CropSet:
    """Crops of one side with the key of the clip each came from."""

    crops: list[np.ndarray]
    keys: list

    @classmethod
    def empty(cls) -> CropSet:
        return cls([], [])

    def add(self, crops: np.ndarray, key) -> None:
        self.crops.append(crops)
        self.keys.extend([key] * len(crops))

    def arrays(self) -> tuple[np.ndarray, list]:
        return (np.concatenate(self.crops) if self.crops else np.zeros((0, 1, 1, 4), np.uint8)), self.keys


def two_sample_test(
    a: CropSet, b: CropSet, cfg: DetectorConfig = DetectorConfig(), group_of: Callable[[object], str] | None = None
) -> dict:
    """Train a CropDetector to tell set a (label 1) from set b (label 0); held-out balanced accuracy.

    Clips are split by key, with the same held-out keys on both sides (a model clip and the
    renderer clip of the same avatar, emotion and seed land on the same side of the split).
    group_of(key) names a group (e.g. built-in or held-out avatar) to report accuracies per group.
    """
    t0 = time.time()
    xa, ka = a.arrays()
    xb, kb = b.arrays()
    if len(xa) == 0 or len(xb) == 0:
        raise ValueError("both sets need crops")
    held = split_keys(ka + kb, cfg.holdout_frac)
    ha = np.array([k in held for k in ka])
    hb = np.array([k in held for k in kb])
    if ha.all() or hb.all() or not ha.any() or not hb.any():
        raise ValueError("too few clips to split into training and held-out clips on both sides")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    train_x = np.concatenate([xa[~ha], xb[~hb]])
    train_y = np.concatenate([np.ones((~ha).sum(), np.float32), np.zeros((~hb).sum(), np.float32)])
    # balance the classes in training by weighting, so neither side's count sets a prior
    w_pos = 0.5 * len(train_y) / max(1.0, train_y.sum())
    w_neg = 0.5 * len(train_y) / max(1.0, len(train_y) - train_y.sum())
    model = CropDetector()
    steps = cfg.epochs * max(1, len(train_x) // cfg.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps, pct_start=0.15)
    model.train()
    order = np.concatenate([rng.permutation(len(train_x)) for _ in range(cfg.epochs)])
    correct = seen = 0
    for s in range(steps):
        idx = order[s * cfg.batch : (s + 1) * cfg.batch]
        x = canonical(train_x[idx], rng)
        if rng.random() < 0.5:  # left-right flips: both sets are symmetric in distribution
            x = x.flip(3)
        y = torch.from_numpy(train_y[idx])
        logit = model(x)
        w = torch.where(y > 0.5, w_pos, w_neg)
        loss = (F.binary_cross_entropy_with_logits(logit, y, reduction="none") * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if s >= steps - max(1, steps // 5):  # training accuracy over the last fifth of the steps
            correct += int(((logit > 0).float() == y).sum())
            seen += len(y)
    model.eval()
    eval_rng = np.random.default_rng(cfg.seed + 1)

    @torch.no_grad()
    def hits(x: np.ndarray, label: int) -> np.ndarray:
        out = [(model(canonical(x[i : i + 256], eval_rng)) > 0).numpy() == bool(label) for i in range(0, len(x), 256)]
        return np.concatenate(out)

    hit_a, hit_b = hits(xa[ha], 1), hits(xb[hb], 0)
    acc_a, acc_b = float(hit_a.mean()), float(hit_b.mean())
    by_group = {}
    if group_of is not None:
        ga = np.array([group_of(k) for k, h in zip(ka, ha) if h])
        gb = np.array([group_of(k) for k, h in zip(kb, hb) if h])
        by_group = {
            g: 0.5 * (float(hit_a[ga == g].mean()) + float(hit_b[gb == g].mean()))
            for g in dict.fromkeys(ga.tolist())
            if (gb == g).any()
        }
    return {
        "accuracy": 0.5 * (acc_a + acc_b),
        "accuracy_a": acc_a,
        "accuracy_b": acc_b,
        "by_group": by_group,
        "train_accuracy_last_fifth": correct / max(1, seen),
        "n_train_crops": int(len(train_x)),
        "n_heldout_crops": int(ha.sum() + hb.sum()),
        "n_heldout_clips": len(held),
        "n_clips": len(set(ka + kb)),
        "steps": steps,
        "seconds": round(time.time() - t0, 1),
        "config": asdict(cfg),
    }


__all__ = [
    "ALPHA_FLOOR",
    "NOISE_STD",
    "DetectorConfig",
    "sample_crops",
    "canonical",
    "CropDetector",
    "split_keys",
    "CropSet",
    "two_sample_test",
]
