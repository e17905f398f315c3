"""Metrics of generated avatar clips against the renderer.

All clip inputs are RGBA uint8 frames, either full size (T, 360, 640, 4) or already
downsampled by :func:`tools.eval.classifier.downsample_premultiplied` to premultiplied
(T, 90, 160, 4); anything else of 4 channels is used as is (premultiplied assumed when it
is not 360x640).  Pixel metrics work at 90x160 on premultiplied RGB + alpha in [0, 1].

* :func:`emotion_accuracy` - top-1 accuracy overall / per emotion / per avatar + confusion.
* :func:`identity_consistency` - cosine similarity of identity embeddings, generated clip vs
  rendered clip of the same avatar, against the same for the other avatars (baseline).
* :func:`frame_changes` / :func:`smoothness` - mean absolute frame-to-frame change of a clip,
  as a ratio to the renderer's (1.0 = as smooth as the renderer, 0 = frozen, > 1 = jumpier),
  and the p95 of the per-frame change (catches flicker that a mean hides).
* :func:`silhouette_iou` - per-frame IoU of alpha silhouettes vs the renderer (extra info:
  the renderer clip is a different motion sample, so 1.0 is not expected).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from tools.eval.classifier import EMOTIONS, IN_H, IN_W, downsample_premultiplied

EPS = 1e-8


def small_float(clip: np.ndarray) -> np.ndarray:
    """A clip as premultiplied RGBA float32 (T, 90, 160, 4) in [0, 1] (full-size clips are downsampled)."""
    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] != 4:
        raise ValueError(f"expected a clip (T, H, W, 4), got {clip.shape}")
    if clip.dtype == np.uint8:
        if clip.shape[1:3] != (IN_H, IN_W) and clip.shape[1] % IN_H == 0 and clip.shape[2] % IN_W == 0:
            clip = downsample_premultiplied(clip)
        return clip.astype(np.float32) / 255.0
    return clip.astype(np.float32)


# --------------------------------------------------------------------------------------
# emotion accuracy
# --------------------------------------------------------------------------------------
def emotion_accuracy(
    pred: Sequence[int], labels: Sequence[int], avatars: Sequence[str] | None = None, emotions: Sequence[str] = EMOTIONS
) -> dict:
    """Top-1 accuracy overall, per emotion (of the labels present), per avatar, and the confusion matrix
    (rows = true emotion, columns = predicted)."""
    pred = np.asarray(pred, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if pred.shape != labels.shape:
        raise ValueError(f"pred {pred.shape} and labels {labels.shape} differ")
    ok = pred == labels
    n = len(emotions)
    conf = np.zeros((n, n), dtype=np.int64)
    np.add.at(conf, (labels, pred), 1)
    per_emotion = {emotions[i]: float(ok[labels == i].mean()) for i in range(n) if (labels == i).any()}
    out = {
        "n": int(len(ok)),
        "overall": float(ok.mean()) if len(ok) else float("nan"),
        "per_emotion": per_emotion,
        "min_per_emotion": min(per_emotion.values()) if per_emotion else float("nan"),
        "worst_emotion": min(per_emotion, key=per_emotion.get) if per_emotion else None,
        "confusion": conf.tolist(),
        "emotions": list(emotions),
    }
    if avatars is not None:
        av = np.asarray(list(avatars))
        out["per_avatar"] = {a: float(ok[av == a].mean()) for a in dict.fromkeys(av.tolist())}
    return out


# --------------------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + EPS)


def identity_consistency(
    gen_emb: np.ndarray,
    gen_avatars: Sequence[str],
    ref_emb: np.ndarray,
    ref_avatars: Sequence[str],
    ref_keys: Sequence | None = None,
    gen_keys: Sequence | None = None,
) -> dict:
    """Cosine similarity of each generated clip's identity embedding to rendered clips.

    ``same``: to the rendered clip of the same avatar (the one with the same key, e.g. the same
    (emotion, seed), when keys are given; else the mean over that avatar's rendered clips).
    ``other``: the same for every other avatar (a baseline: what an unrelated avatar scores).
    ``match_rate``: how often the closest avatar (mean cosine over its rendered clips) is the right one.
    """
    g, r = _unit(gen_emb), _unit(ref_emb)
    gen_avatars, ref_avatars = list(gen_avatars), list(ref_avatars)
    names = list(dict.fromkeys(ref_avatars))
    ra = np.asarray(ref_avatars)
    sims = g @ r.T  # (G, R)
    same, other, match = [], [], []
    per_avatar: dict[str, list[float]] = defaultdict(list)
    for i, a in enumerate(gen_avatars):
        per_name = {}
        for b in names:
            cols = ra == b
            if ref_keys is not None and gen_keys is not None:
                keyed = cols & np.array([k == gen_keys[i] for k in ref_keys])
                if keyed.any():
                    cols = keyed
            per_name[b] = float(sims[i, cols].mean())
        if a in per_name:
            same.append(per_name[a])
            per_avatar[a].append(per_name[a])
        other.extend(v for b, v in per_name.items() if b != a)
        match.append(max(per_name, key=per_name.get) == a)
    s = float(np.mean(same)) if same else float("nan")
    o = float(np.mean(other)) if other else float("nan")
    return {
        "same_avatar_cos": s,
        "other_avatar_cos": o,
        "margin": s - o,
        "same_avatar_cos_min": float(np.min(same)) if same else float("nan"),
        "match_rate": float(np.mean(match)) if match else float("nan"),
        "per_avatar_same_cos": {a: float(np.mean(v)) for a, v in per_avatar.items()},
    }


# --------------------------------------------------------------------------------------
# temporal smoothness and silhouettes
# --------------------------------------------------------------------------------------
def frame_changes(clip: np.ndarray) -> np.ndarray:
    """Mean absolute change between consecutive frames (premultiplied RGB + alpha, 90x160): (T-1,)."""
    x = small_float(clip)
    if len(x) < 2:
        return np.zeros(0, np.float32)
    return np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))


def smoothness(
    gen_clips: Iterable[np.ndarray],
    ref_clips: Iterable[np.ndarray],
    gen_groups: Sequence | None = None,
    ref_groups: Sequence | None = None,
) -> dict:
    """Frame-to-frame change of generated clips relative to the renderer's.

    Without groups, clips are compared pairwise (gen_clips[i] vs ref_clips[i]).  With groups
    (e.g. the (avatar, emotion) of each clip), the ratio of a group is the mean change of its
    generated clips over the mean change of its rendered clips, so several reference motion
    samples can back each group.

    ``ratio_mean``: mean over groups of mean|dx_gen| / mean|dx_ref| (1 = as smooth as the renderer,
    0 = frozen, > 1 = jumpier); ``p95_ratio``: p95 of all generated per-frame changes over the p95
    of the renderer's (flicker shows up here first).
    """
    gen_clips, ref_clips = list(gen_clips), list(ref_clips)
    if gen_groups is None and ref_groups is None:
        if len(gen_clips) != len(ref_clips):
            raise ValueError(f"{len(gen_clips)} generated vs {len(ref_clips)} reference clips to pair")
        gen_groups = ref_groups = list(range(len(gen_clips)))
    elif gen_groups is None or ref_groups is None:
        raise ValueError("give both gen_groups and ref_groups, or neither")
    dg = [frame_changes(c) for c in gen_clips]
    dr = [frame_changes(c) for c in ref_clips]
    by_g: dict = defaultdict(list)
    by_r: dict = defaultdict(list)
    for k, d in zip(gen_groups, dg):
        by_g[k].append(d)
    for k, d in zip(ref_groups, dr):
        by_r[k].append(d)
    ratios = {}
    for k, ds in by_g.items():
        if k not in by_r:
            raise ValueError(f"no reference clip for group {k!r}")
        g_mean = float(np.concatenate(ds).mean()) if sum(map(len, ds)) else float("nan")
        r_mean = float(np.concatenate(by_r[k]).mean()) if sum(map(len, by_r[k])) else float("nan")
        ratios[k] = g_mean / max(r_mean, EPS)
    g_all = np.concatenate(dg) if dg else np.zeros(0)
    r_all = np.concatenate(dr) if dr else np.zeros(0)
    ratios_a = np.asarray(list(ratios.values()), dtype=np.float64)

    def _p95(a):
        return float(np.percentile(a, 95)) if len(a) else float("nan")

    def _agg(f):
        return float(f(ratios_a)) if len(ratios_a) else float("nan")

    gp95, rp95 = _p95(g_all), _p95(r_all)
    return {
        "ratio_mean": _agg(np.nanmean),
        "ratio_median": _agg(np.nanmedian),
        "ratio_min": _agg(np.nanmin),
        "ratio_max": _agg(np.nanmax),
        "gen_change_mean": float(g_all.mean()) if len(g_all) else float("nan"),
        "ref_change_mean": float(r_all.mean()) if len(r_all) else float("nan"),
        "gen_change_p95": gp95,
        "ref_change_p95": rp95,
        "p95_ratio": gp95 / max(rp95, EPS) if len(g_all) else float("nan"),
        "per_group_ratio": ratios,
    }


def silhouette_iou(gen: np.ndarray, ref: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per-frame IoU of alpha > threshold silhouettes at 90x160: (T,); 1.0 where both are empty."""
    a, b = small_float(gen)[..., 3] > threshold, small_float(ref)[..., 3] > threshold
    T = min(len(a), len(b))
    a, b = a[:T], b[:T]
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float64)


def silhouette_summary(gen_clips: Iterable[np.ndarray], ref_clips: Iterable[np.ndarray]) -> dict:
    ious, areas = [], []
    for g, r in zip(gen_clips, ref_clips):
        ious.append(silhouette_iou(g, r))
        ag, ar = (small_float(g)[..., 3] > 0.5).mean(), (small_float(r)[..., 3] > 0.5).mean()
        areas.append(float(ag / max(ar, EPS)))
    iou = np.concatenate(ious) if ious else np.zeros(0)
    return {
        "iou_mean": float(iou.mean()) if len(iou) else float("nan"),
        "iou_p05": float(np.percentile(iou, 5)) if len(iou) else float("nan"),
        "area_ratio_mean": float(np.mean(areas)) if areas else float("nan"),
    }


__all__ = [
    "emotion_accuracy",
    "identity_consistency",
    "frame_changes",
    "smoothness",
    "silhouette_iou",
    "silhouette_summary",
    "small_float",
]
