"""Tests of the evaluation harness (tools/eval): classifier, metrics, evaluate().  Fast (< 30 s)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avatarcast.engines.avatar_world import BUILTIN_AVATARS, EMOTIONS, random_avatar, render_clip
from tools.eval import metrics
from tools.eval.classifier import (
    META_PATH,
    WEIGHTS_PATH,
    ClipClassifier,
    classify,
    downsample_premultiplied,
    load_classifier,
    preprocess,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def clf():
    return load_classifier()


@pytest.fixture(scope="module")
def clip():
    return render_clip(BUILTIN_AVATARS[0], "happy", 16, seed=11)


# --- preprocessing / model ----------------------------------------------------------


def test_preprocess_shapes_and_premultiplied(clip):
    x = preprocess(clip)
    assert x.shape == (4, 16, 90, 160) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert bool((x[:3] <= x[3:4] + 1e-6).all())  # premultiplied: colour <= alpha
    assert float(x[3].max()) == 1.0 and float(x[3, :, 0, 0].max()) == 0.0
    xb = preprocess(np.stack([clip, clip[::-1]]))
    assert xb.shape == (2, 4, 16, 90, 160)
    assert torch.equal(xb[0], x)
    # already-downsampled frames pass through unchanged
    assert torch.equal(preprocess(downsample_premultiplied(clip)), x)


def test_downsample_is_box_filter_of_premultiplied(clip):
    small = downsample_premultiplied(clip[:2])
    f = clip[:2].astype(np.float64)
    f[..., :3] *= f[..., 3:4] / 255.0
    ref = f.reshape(2, 90, 4, 160, 4, 4).mean(axis=(2, 4))
    assert np.abs(small - ref).max() <= 0.5 + 1e-6


def test_model_forward_shapes():
    m = ClipClassifier(n_ids=5).eval()
    with torch.no_grad():
        logits, emb = m(torch.rand(2, 4, 16, 90, 160))
        logits8, _ = m(torch.rand(1, 4, 8, 90, 160))  # other clip lengths work
    assert logits.shape == (2, len(EMOTIONS)) and emb.shape == (2, 64) and logits8.shape == (1, len(EMOTIONS))
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_shipped_weights_small_and_documented():
    assert WEIGHTS_PATH.exists() and WEIGHTS_PATH.stat().st_size < 5 * 2**20
    meta = json.loads(META_PATH.read_text())
    assert meta["emotions"] == list(EMOTIONS)
    assert meta["validation"]["accuracy"] >= 0.98


def test_classifier_on_unseen_renders(clf):
    """Fresh clips (motion seeds never used in training) of a built-in and an unseen random avatar."""
    for av, seed in ((BUILTIN_AVATARS[1], 4_242_424), (random_avatar(987_654), 5_151_515)):
        clips = [render_clip(av, e, 16, seed=seed + i, intensity=0.8) for i, e in enumerate(EMOTIONS)]
        out = classify(clf, clips)
        correct = int((out["pred"] == np.arange(len(EMOTIONS))).sum())
        assert correct >= 10, (av.name, [EMOTIONS[p] for p in out["pred"]])


def test_identity_embedding_separates_avatars(clf):
    a = [render_clip(BUILTIN_AVATARS[2], e, 16, seed=3_333_333) for e in ("happy", "sad")]
    b = [render_clip(BUILTIN_AVATARS[3], e, 16, seed=3_333_333) for e in ("happy", "sad")]
    emb = classify(clf, a + b)["embedding"]
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3] and sim[2, 3] > sim[1, 2]


# --- metrics on toy inputs ------------------------------------------------------------


def test_smoothness_identical_and_frozen(clip):
    s = metrics.smoothness([clip], [clip])
    assert s["ratio_mean"] == pytest.approx(1.0) and s["p95_ratio"] == pytest.approx(1.0)
    frozen = np.repeat(clip[:1], len(clip), axis=0)
    s0 = metrics.smoothness([frozen], [clip])
    assert s0["ratio_mean"] == 0.0 and s0["gen_change_mean"] == 0.0
    # a flickering clip (every other frame blank) is far jumpier than the renderer
    flicker = clip.copy()
    flicker[::2] = 0
    assert metrics.smoothness([flicker], [clip])["ratio_mean"] > 1.5


def test_smoothness_grouped():
    rng = np.random.default_rng(0)
    a = rng.random((4, 90, 160, 4)).astype(np.float32)
    b = np.zeros((4, 90, 160, 4), np.float32)
    b[1::2] = 0.1  # changes by 0.1 every frame
    b2 = b * 2  # twice the change
    s = metrics.smoothness([a, b2], [a, b, b], gen_groups=["x", "y"], ref_groups=["x", "y", "y"])
    assert s["ratio_min"] == pytest.approx(1.0) and s["ratio_max"] == pytest.approx(2.0)
    assert s["ratio_mean"] == pytest.approx(1.5)
    with pytest.raises(ValueError):
        metrics.smoothness([a], [b], gen_groups=["x"], ref_groups=["y"])


def test_frame_changes_known_value():
    c = np.zeros((3, 90, 160, 4), np.float32)
    c[1] = 1.0
    np.testing.assert_allclose(metrics.frame_changes(c), [1.0, 1.0])


def test_silhouette_iou(clip):
    np.testing.assert_allclose(metrics.silhouette_iou(clip, clip), 1.0)
    shifted = np.zeros_like(clip)
    shifted[:, :, 320:] = clip[:, :, :320]  # moved far right: no overlap
    assert metrics.silhouette_iou(clip, shifted).max() == 0.0
    empty = np.zeros_like(clip)
    np.testing.assert_allclose(metrics.silhouette_iou(empty, empty), 1.0)


def test_emotion_accuracy_known():
    labels = [0, 0, 1, 1, 2, 2]
    pred = [0, 0, 1, 2, 2, 2]
    avatars = ["a", "b", "a", "b", "a", "b"]
    r = metrics.emotion_accuracy(pred, labels, avatars)
    assert r["overall"] == pytest.approx(5 / 6)
    assert r["per_emotion"] == {"idle": 1.0, "listening": 0.5, "happy": 1.0}
    assert r["min_per_emotion"] == 0.5 and r["worst_emotion"] == "listening"
    assert r["per_avatar"] == {"a": 1.0, "b": pytest.approx(2 / 3)}
    assert r["confusion"][1][2] == 1 and sum(map(sum, r["confusion"])) == 6


def test_identity_consistency_known():
    ref = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    gen = np.array([[1.0, 0, 0], [0.6, 0.8, 0]])
    r = metrics.identity_consistency(gen, ["a", "b"], ref, ["a", "b"])
    assert r["same_avatar_cos"] == pytest.approx((1.0 + 0.8) / 2)
    assert r["other_avatar_cos"] == pytest.approx((0.0 + 0.6) / 2)
    assert r["match_rate"] == 1.0


# --- end to end -----------------------------------------------------------------------


def test_evaluate_renderer_engine(clf, tmp_path):
    from tools.eval.evaluate import RendererEngine, evaluate, markdown_report

    res = evaluate(
        RendererEngine(),
        avatars=[BUILTIN_AVATARS[0]],
        emotions=("happy", "sad", "angry"),
        seeds=1,
        ref_seeds=2,
        classifier=clf,
        gif_path=tmp_path / "sbs.gif",
        gif_emotions=("happy", "sad"),
    )
    for k in ("accuracy", "reference_accuracy", "identity", "smoothness", "silhouette", "target", "timing", "config"):
        assert k in res
    acc = res["accuracy"]
    assert set(acc["per_emotion"]) == {"happy", "sad", "angry"} and set(acc["per_avatar"]) == {"pip"}
    assert acc["overall"] >= 2 / 3
    assert 0.3 < res["smoothness"]["ratio_mean"] < 3.0
    assert res["identity"]["same_avatar_cos"] > 0.5
    gif = tmp_path / "sbs.gif"
    assert gif.exists() and 0 < gif.stat().st_size < 3 * 2**20
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 16
    md = markdown_report(res, "test")
    assert "| happy |" in md and "emotion accuracy" in md
