"""A small video classifier that judges 2 s avatar clips: which emotion, and which avatar.

The classifier is trained on clips drawn by the procedural renderer (never on model output,
see ``tools.eval.train_classifier``) and is used by ``tools.eval.evaluate`` to score the
clips a video model generates.

Input: a clip of T frames (T = 16 for 2 s at 8 fps; other lengths work) downsampled 4x to
90x160, with 4 channels (RGB premultiplied by alpha, then alpha) in [0, 1], as a float
tensor (B, 4, T, 90, 160).  :func:`preprocess` makes that from RGBA uint8 frames.

Network: a per-frame 2D CNN (4x4 patch stem, two residual stages) interleaved with
temporal (3x1x1) convolutions, then spatial pooling, a temporal 1D convolution and
mean + max pooling over time.  Two heads:

* ``emotion``: 11 logits, in the order of :data:`EMOTIONS`;
* ``identity``: a 64-d L2-normalised embedding.  It is trained with a cosine-softmax head
  over avatar ids (``id_head``, used in training only), so two clips of the same avatar
  have a high cosine similarity whatever the emotion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from avatarcast.vocabulary import EMOTIONS

IN_H, IN_W = 90, 160
CLIP_FRAMES = 16
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_PATH = WEIGHTS_DIR / "emotion_classifier.pt"
META_PATH = WEIGHTS_DIR / "emotion_classifier.json"


# --------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------
def downsample_premultiplied(frames: np.ndarray, factor: int | None = None) -> np.ndarray:
    """RGBA uint8 (..., H, W, 4) -> premultiplied RGBA uint8 (..., H/f, W/f, 4) by a box filter.

    With ``factor=None`` the factor is chosen so that the output is 90x160 (4 for 360x640);
    straight-alpha frames already 90x160 are then only premultiplied.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.shape[-1] != 4:
        raise ValueError(f"expected RGBA uint8 frames (..., H, W, 4), got {frames.dtype} {frames.shape}")
    H, W = frames.shape[-3:-1]
    if factor is None:
        if H % IN_H or W % IN_W or H // IN_H != W // IN_W:
            raise ValueError(f"frame size {H}x{W} is not a multiple of {IN_H}x{IN_W}")
        factor = H // IN_H
    lead = frames.shape[:-3]
    x = frames.reshape(-1, H, W, 4)
    out = np.zeros((x.shape[0], H // factor, W // factor, 4), np.uint8)
    for i in range(0, x.shape[0], 8):  # chunks keep the float temporaries small
        chunk = x[i : i + 8]
        # only the box holding non-transparent pixels needs work (premultiplied zeros elsewhere)
        a = chunk[..., 3]
        cols = np.flatnonzero(a.any(axis=(0, 1)))
        if len(cols) == 0:
            continue
        rows = np.flatnonzero(a.any(axis=(0, 2)))
        y0, y1 = rows[0] // factor * factor, -(-(rows[-1] + 1) // factor) * factor
        x0, x1 = cols[0] // factor * factor, -(-(cols[-1] + 1) // factor) * factor
        f = torch.from_numpy(np.ascontiguousarray(chunk[:, y0:y1, x0:x1])).float()
        f[..., :3] *= f[..., 3:4] * (1.0 / 255.0)
        f = F.avg_pool2d(f.permute(0, 3, 1, 2), factor) if factor > 1 else f.permute(0, 3, 1, 2)
        out[i : i + len(chunk), y0 // factor : y1 // factor, x0 // factor : x1 // factor] = (
            (f.permute(0, 2, 3, 1) + 0.5).clamp_(0, 255).to(torch.uint8).numpy()
        )
    return out.reshape(*lead, H // factor, W // factor, 4)


def to_tensor(small: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Premultiplied RGBA uint8 (T, h, w, 4) or (B, T, h, w, 4) -> float (B, 4, T, h, w) in [0, 1]."""
    t = torch.as_tensor(small)
    if t.dim() == 4:
        t = t[None]
    if t.dim() != 5 or t.shape[-1] != 4:
        raise ValueError(f"expected (B, T, h, w, 4) frames, got {tuple(t.shape)}")
    return t.permute(0, 4, 1, 2, 3).float().div_(255.0).contiguous()


def preprocess(clip: np.ndarray) -> torch.Tensor:
    """RGBA uint8 clip (T, 360, 640, 4) -> float tensor (4, T, 90, 160).

    A batch (B, T, 360, 640, 4) gives (B, 4, T, 90, 160).  Channels are R*a, G*a, B*a, a in [0, 1].
    Frames already 90x160 are taken to be the output of :func:`downsample_premultiplied`
    (premultiplied) and are only converted.
    """
    clip = np.asarray(clip)
    if clip.ndim not in (4, 5):
        raise ValueError(f"expected (T, H, W, 4) or (B, T, H, W, 4), got {clip.shape}")
    small = clip if clip.shape[-3:-1] == (IN_H, IN_W) else downsample_premultiplied(clip)
    x = to_tensor(small)
    return x if clip.ndim == 5 else x[0]


# --------------------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------------------
class _Block(nn.Module):
    """Residual block on (B*T, C, h, w) frames, with a temporal 3-tap mixing conv."""

    def __init__(self, c: int, t_mix: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.tconv = nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0), bias=False) if t_mix else None

    def forward(self, x: torch.Tensor, T: int) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.tconv is not None:
            BT, C, h, w = y.shape
            y5 = y.view(BT // T, T, C, h, w).transpose(1, 2)
            y = y + self.tconv(y5).transpose(1, 2).reshape(BT, C, h, w)
        return F.relu(x + y)


class ClipClassifier(nn.Module):
    """Emotion logits (B, 11) and identity embeddings (B, emb_dim) of clips (B, 4, T, 90, 160)."""

    def __init__(
        self,
        n_emotions: int = len(EMOTIONS),
        n_ids: int = 0,
        emb_dim: int = 64,
        width: tuple[int, int, int] = (32, 64, 96),
    ):
        super().__init__()
        c1, c2, c3 = width
        self.config = {"n_emotions": n_emotions, "n_ids": n_ids, "emb_dim": emb_dim, "width": list(width)}
        self.stem = nn.Sequential(nn.Conv2d(4, c1, 4, stride=4, bias=False), nn.BatchNorm2d(c1), nn.ReLU())
        self.b1 = _Block(c1)  # 22x40
        self.down2 = nn.Sequential(
            nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU()
        )  # 11x20
        self.b2 = _Block(c2)
        self.down3 = nn.Sequential(
            nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c3), nn.ReLU()
        )  # 6x10
        self.b3 = _Block(c3)
        self.temporal = nn.Sequential(nn.Conv1d(2 * c3, 2 * c3, 3, padding=1), nn.ReLU())
        feat = 4 * c3
        self.drop = nn.Dropout(0.2)
        self.emotion_head = nn.Linear(feat, n_emotions)
        self.id_proj = nn.Sequential(nn.Linear(feat, 128), nn.ReLU(), nn.Linear(128, emb_dim))
        # cosine-softmax head over training avatar ids (training only)
        self.id_head = nn.Parameter(torch.randn(max(n_ids, 1), emb_dim) * 0.1)
        self.id_scale = 16.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, T, h, w) -> pooled clip features (B, 4*c3)."""
        if x.dim() != 5 or x.shape[1] != 4:
            raise ValueError(f"expected (B, 4, T, H, W), got {tuple(x.shape)}")
        B, _, T, h, w = x.shape
        f = x.transpose(1, 2).reshape(B * T, 4, h, w)
        f = self.b1(self.stem(f), T)
        f = self.b2(self.down2(f), T)
        f = self.b3(self.down3(f), T)
        # spatial mean + max per frame -> (B, 2*c3, T)
        s = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1).view(B, T, -1).transpose(1, 2)
        s = s + self.temporal(s)
        return torch.cat([s.mean(2), s.amax(2)], 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        logits = self.emotion_head(self.drop(f))
        emb = F.normalize(self.id_proj(f), dim=1)
        return logits, emb

    def id_logits(self, emb: torch.Tensor) -> torch.Tensor:
        return self.id_scale * emb @ F.normalize(self.id_head, dim=1).t()


# --------------------------------------------------------------------------------------
# loading and convenience
# --------------------------------------------------------------------------------------
def load_classifier(path: str | Path | None = None, device: str = "cpu") -> ClipClassifier:
    """The shipped classifier (tools/eval/weights/emotion_classifier.pt), in eval mode."""
    path = Path(path) if path is not None else WEIGHTS_PATH
    if path.is_dir():
        path = path / WEIGHTS_PATH.name
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no classifier weights; train them with `python -m tools.eval.train_classifier`"
        )
    ckpt = torch.load(path, map_location=device, weights_only=True)
    cfg = ckpt["config"]
    model = ClipClassifier(
        n_emotions=cfg["n_emotions"], n_ids=cfg["n_ids"], emb_dim=cfg["emb_dim"], width=tuple(cfg["width"])
    )
    # stored in float16 (half the bytes of the tree's budget, tests/test_tree_size.py), run in float32: against the
    # float32 weights the clip eval's report.md is the same, its raw scores within 2e-5 (issue 16)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    model.emotions = tuple(ckpt.get("emotions", EMOTIONS))  # type: ignore[attr-defined]
    return model.to(device).eval()


def load_meta(path: str | Path | None = None) -> dict:
    p = Path(path) if path is not None else META_PATH
    return json.loads(p.read_text()) if p.exists() else {}


@dataclass
class ClipBatcher:
    """Clips downsampled as they come and run through the classifier in batches: batches of 8 clips run it about
    3x faster than one by one, and holding only the small copies keeps memory flat over a long eval."""

    clf: ClipClassifier
    batch: int = 8
    feats: list = field(default_factory=list)  # one (384,) feature vector per clip, in the order added
    logits: list = field(default_factory=list)  # the emotion head's logits, likewise
    pending: list = field(default_factory=list)

    def add(self, clip: np.ndarray) -> None:
        self.pending.append(downsample_premultiplied(clip))
        if len(self.pending) >= self.batch:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        if self.pending:
            f = self.clf.features(to_tensor(np.stack(self.pending)))
            self.feats.extend(f.numpy())
            self.logits.extend(self.clf.emotion_head(f).numpy())
            self.pending = []


@torch.no_grad()
def classify(model: ClipClassifier, clips, batch: int = 8) -> dict[str, np.ndarray]:
    """Clips (list of (T, 360, 640, 4) uint8, or a preprocessed (B, 4, T, 90, 160) tensor) ->
    {"probs": (B, 11), "pred": (B,), "embedding": (B, emb_dim)} as numpy arrays."""
    dev = next(model.parameters()).device
    if isinstance(clips, torch.Tensor):
        xs = [clips[i : i + batch] for i in range(0, len(clips), batch)]
    else:
        clips = list(clips)
        xs = [torch.stack([preprocess(c) for c in clips[i : i + batch]]) for i in range(0, len(clips), batch)]
    probs, embs = [], []
    for x in xs:
        logits, emb = model(x.to(dev))
        probs.append(torch.softmax(logits, 1).cpu())
        embs.append(emb.cpu())
    p = torch.cat(probs).numpy() if probs else np.zeros((0, len(EMOTIONS)), np.float32)
    e = torch.cat(embs).numpy() if embs else np.zeros((0, model.config["emb_dim"]), np.float32)
    return {"probs": p, "pred": p.argmax(1) if len(p) else np.zeros(0, np.int64), "embedding": e}


__all__ = [
    "EMOTIONS",
    "ClipClassifier",
    "preprocess",
    "downsample_premultiplied",
    "to_tensor",
    "load_classifier",
    "load_meta",
    "classify",
    "WEIGHTS_PATH",
    "META_PATH",
]
