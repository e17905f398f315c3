"""The fidelity metrics on cases with known answers, the renderer's landmarks, the detector's inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from avatarcast.engines.avatar_world import BUILTIN_AVATARS, pose_at, render_clip, render_frame, sample_variation
from avatarcast.engines.avatar_world.render import landmarks
from tools.eval import fidelity_metrics as fm
from tools.eval.detector import ALPHA_FLOOR, canonical, split_keys


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return render_clip(BUILTIN_AVATARS[2], "happy", 3, seed=5)


def _scores(a: np.ndarray, b: np.ndarray) -> dict:
    m = fm.avatar_mask(a)
    pa, pb = fm.premultiplied(a), fm.premultiplied(b)
    return {
        "psnr": fm.psnr(pa, pb, m),
        "ssim": fm.ssim(pa, pb, m),
        "iou": fm.alpha_iou(a, b),
        "sharp": fm.sharpness(b) / fm.sharpness(a),
    }


def test_identical_frames_score_perfectly(clip):
    s = _scores(clip[0], clip[0].copy())
    assert s["psnr"] == math.inf
    assert s["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert s["iou"] == 1.0
    assert s["sharp"] == 1.0


def test_a_blurred_copy_scores_lower(clip):
    blurred = fm.gaussian_blur_rgba(clip, 1.5)
    assert blurred.shape == clip.shape and blurred.dtype == np.uint8
    s = _scores(clip[0], blurred[0])
    assert 15.0 < s["psnr"] < 35.0
    assert s["ssim"] < 0.97
    assert 0.5 < s["sharp"] < 0.85
    s2 = _scores(clip[0], fm.gaussian_blur_rgba(clip[0], 3.0))
    assert s2["psnr"] < s["psnr"] and s2["sharp"] < s["sharp"] and s2["ssim"] < s["ssim"]
    # blurring premultiplied keeps the total opacity: no dark or bright fringes
    assert fm.premultiplied(blurred[0])[..., 3].sum() == pytest.approx(
        fm.premultiplied(clip[0])[..., 3].sum(), rel=0.01
    )


def test_psnr_and_ssim_known_values():
    a = np.full((20, 30, 4), 0.5, np.float32)
    m = np.zeros((20, 30), bool)
    m[5:15, 5:25] = True
    b = a.copy()
    b[m] += 0.1
    assert fm.psnr(a, b, m) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    b2 = a.copy()
    b2[~m] += 0.3  # outside the mask: not counted
    assert fm.psnr(a, b2, m) == math.inf
    with pytest.raises(ValueError):
        fm.psnr(a, b, np.zeros_like(m))
    # SSIM of a constant offset on flat images: luminance term only
    s = fm.ssim_map(a, a + 0.1)
    lum = (2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4)
    assert np.allclose(s, lum, atol=1e-5)


def test_over_white_composites():
    f = np.array([[[0, 0, 0, 0], [255, 0, 0, 255], [0, 0, 255, 51]]], np.uint8)  # clear, opaque red, 20% blue
    w = fm.over_white(fm.premultiplied(f))
    assert np.allclose(w[0], [[1, 1, 1], [1, 0, 0], [0.8, 0.8, 1.0]], atol=1e-6)


def _square(x0: int, y0: int, size: int = 20, shape=(60, 80)) -> np.ndarray:
    f = np.zeros((*shape, 4), np.uint8)
    f[y0 : y0 + size, x0 : x0 + size] = (200, 100, 50, 255)
    return f


def test_alpha_iou_of_shifted_masks():
    a = _square(10, 10)
    assert fm.alpha_iou(a, _square(15, 10)) == pytest.approx(300 / 500)  # 15x20 overlap of two 20x20
    assert fm.alpha_iou(a, _square(15, 15)) == pytest.approx(225 / 575)
    assert fm.alpha_iou(a, _square(40, 30)) == 0.0
    faint = a.copy()
    faint[..., 3] //= 2  # 127 of 255: below the 0.5 threshold
    assert fm.alpha_iou(a, faint) == 0.0
    assert fm.alpha_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_masks_dilate_and_boxes():
    f = np.zeros((20, 20, 4), np.uint8)
    f[10, 10, 3] = 1  # faint pixels (the ground shadow) belong to the avatar
    m = fm.avatar_mask(f, radius=3)
    assert m.sum() == 49 and m[7:14, 7:14].all()
    b = fm.box_mask((20, 20), (2.0, 3.0, 6.0, 5.0))  # pixel centres 2.5..5.5 x 3.5..4.5
    assert b.sum() == 4 * 2 and b[3:5, 2:6].all()


def test_sharpness_is_blind_to_outside_alpha_and_scales_with_contrast():
    a = _square(10, 10, 30)
    a[20:25, 20:25, :3] = 0  # a dark detail inside the square
    b = a.copy()
    b[..., 3][a[..., 3] == 0] = 0
    b[:5, :5, :3] = 255  # colour under alpha 0: invisible, not counted
    assert fm.sharpness(b) == fm.sharpness(a)
    half = a.copy()
    half[20:25, 20:25, :3] = 100  # half the contrast of the detail
    assert fm.sharpness(half) < fm.sharpness(a)
    assert math.isnan(fm.sharpness(np.zeros_like(a)))


def test_frechet_distance_known_gaussians():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 6))
    assert fm.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    y = x + np.array([1.0, 2.0, 0, 0, 0, 0])
    assert fm.frechet_distance(x, y) == pytest.approx(5.0, abs=1e-6)  # same covariance: |mean shift|^2
    z = rng.standard_normal((4000, 6)) * 2.0  # N(0, I) vs N(0, 4I): 6 * (1 + 4 - 2 * 2) = 6
    assert fm.frechet_distance(x, z) == pytest.approx(6.0, rel=0.1)
    # fewer samples than dimensions (the classifier's 384-d features of a few hundred clips): the
    # low-rank path agrees with a direct computation through the D x D matrices
    u, v = rng.standard_normal((30, 50)), rng.standard_normal((40, 50)) @ rng.standard_normal((50, 50)) * 0.3 + 1.0
    su, sv = np.cov(u, rowvar=False), np.cov(v, rowvar=False)
    ev = np.linalg.eigvals(su @ sv)
    direct = (
        ((u.mean(0) - v.mean(0)) ** 2).sum()
        + np.trace(su)
        + np.trace(sv)
        - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum()
    )
    assert fm.frechet_distance(u, v) == pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize("i", range(len(BUILTIN_AVATARS)))
def test_landmarks_hold_the_head_and_hands(i):
    av = BUILTIN_AVATARS[i]
    for emo, t in (("idle", 0.3), ("happy", 1.1), ("surprised", 2.0)):
        q = pose_at(emo, t, sample_variation(i), 1.0)
        f = render_frame(av, q)
        lm = landmarks(av, q)
        x0, y0, x1, y1 = lm.head
        # the box is head-sized and mostly covered by the avatar (head, headwear)
        assert x1 - x0 > 50 and y1 - y0 > 50
        assert (f[..., 3] > 0)[int(y0) : int(y1), int(x0) : int(x1)].mean() > 0.5
        hx, hy = lm.head[0] + (x1 - x0) / 2, lm.head[1] + (y1 - y0) / 2
        assert f[int(hy), int(hx), 3] == 255
        for hx0, hy0, hx1, hy1 in lm.hands:
            hx, hy = int(round((hx0 + hx1) / 2)), int(round((hy0 + hy1) / 2))
            # the hands are drawn over the body in the avatar's skin colour (a wand may cover part)
            assert f[hy, hx, 3] == 255
            assert np.abs(f[hy, hx, :3].astype(int) - np.array(av.skin)).max() < 40 or av.accessory == "star_wand"


def test_detector_inputs_hide_invisible_differences():
    c = np.zeros((2, 8, 8, 4), np.uint8)
    c[0, :, :, :3] = 255  # colour under alpha 0
    c[1, :, :, 3] = ALPHA_FLOOR - 1  # a haze below the floor
    x = canonical(c, np.random.default_rng(1)).numpy()
    zero = canonical(np.zeros_like(c), np.random.default_rng(1)).numpy()
    assert np.array_equal(x, zero)  # both look exactly like empty crops with the same noise
    held = split_keys([("a", i) for i in range(40)] * 3, 0.25)
    assert len(held) == 10 and held == split_keys([("a", i) for i in range(40)], 0.25)
