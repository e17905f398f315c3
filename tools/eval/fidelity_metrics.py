"""Picture-fidelity metrics of RGBA frames against the renderer's (PSNR, SSIM, alpha IoU, sharpness, FD).

Frames are RGBA uint8 (H, W, 4) with straight alpha, as the renderer and the engines give them.
Pixel comparisons use premultiplied RGB plus alpha, floats in [0, 1] (:func:`premultiplied`):
that is what the autoencoder encodes, what composites linearly over any background
(``out = rgb_p + (1 - a) * bg``, so an error of e in each channel moves any composite by at most
2e), and it gives no weight to the colour of pixels nobody can see (straight RGB under alpha 0).
The eval also reports RGB composited over white on the same pixels (:func:`over_white`): what a
viewer sees on a bright page, about 2.5 dB stricter for today's blurry decoder. Straight RGB over
alpha > 0 (issue 16's "about 17 dB") is not used: it counts the colour of nearly transparent pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F  # dilation: max_pool2d

MASK_DILATION = 3  # px: the avatar mask grows by this (square), so missing outlines and halos count
ALPHA_THRESHOLD = 0.5


def premultiplied(frames: np.ndarray) -> np.ndarray:
    """RGBA uint8 (..., H, W, 4) straight alpha -> float32 (..., H, W, 4): RGB * alpha, alpha, in [0, 1]."""
    f = np.asarray(frames)
    if f.dtype != np.uint8 or f.shape[-1] != 4:
        raise ValueError(f"expected RGBA uint8 frames (..., H, W, 4), got {f.dtype} {f.shape}")
    x = f.astype(np.float32) * (1.0 / 255.0)
    x[..., :3] *= x[..., 3:4]
    return x


def straight_uint8(p: np.ndarray) -> np.ndarray:
    """Premultiplied float (..., H, W, 4) in [0, 1] -> straight-alpha RGBA uint8 (as the tiny decoder rounds)."""
    p = np.clip(np.asarray(p, np.float32), 0.0, 1.0)
    a = p[..., 3:4]
    rgb = np.clip(p[..., :3] / np.maximum(a, 1.0 / 255), 0.0, 1.0)
    return (np.concatenate([rgb, a], -1) * 255.0 + 0.5).astype(np.uint8)


def over_white(p: np.ndarray) -> np.ndarray:
    """Premultiplied float frames (..., 4) -> RGB (..., 3) composited over white, as a viewer sees them."""
    return p[..., :3] + (1.0 - p[..., 3:4])


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Boolean mask (..., H, W) grown by `radius` px in every direction (a square structuring element)."""
    if radius <= 0:
        return np.asarray(mask, bool)
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    lead = m.shape[:-2]
    m = m.reshape(-1, 1, *m.shape[-2:])
    out = F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius)
    return out.reshape(*lead, *out.shape[-2:]).numpy() > 0.5


def avatar_mask(ref: np.ndarray, radius: int = MASK_DILATION) -> np.ndarray:
    """The avatar's pixels in a renderer frame (H, W, 4) uint8: alpha > 0 (the ground shadow too), dilated."""
    return dilate(np.asarray(ref)[..., 3] > 0, radius)


def box_mask(shape: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """Boolean (H, W) of the pixels whose centres lie inside box (x0, y0, x1, y1)."""
    H, W = shape
    x0, y0, x1, y1 = box
    m = np.zeros((H, W), bool)
    m[
        max(0, math.ceil(y0 - 0.5)) : max(0, math.floor(y1 - 0.5) + 1),
        max(0, math.ceil(x0 - 0.5)) : max(0, math.floor(x1 - 0.5) + 1),
    ] = True
    return m


def masked_mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared difference of two float frames (H, W, C) over the mask's pixels and all channels."""
    if not mask.any():
        raise ValueError("empty mask: nothing to compare")
    d = (np.asarray(a, np.float32) - np.asarray(b, np.float32))[mask]
    return float(np.mean(d.astype(np.float64) ** 2))


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of signals in [0, 1] (inf for identical)."""
    return float("inf") if mse <= 0.0 else 10.0 * math.log10(1.0 / mse)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, peak 1) of premultiplied float frames over the mask (every channel)."""
    return psnr_from_mse(masked_mse(a, b, mask))


def _gauss_kernel(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur_hw(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable blur of (H, W, C) with the odd kernel k, edges replicated (shifted sums: fast in numpy)."""
    r = (len(k) - 1) // 2
    H, W = x.shape[:2]
    q = np.pad(x, ((0, 0), (r, r), (0, 0)), mode="edge")
    y = sum(k[i] * q[:, i : i + W] for i in range(len(k)))
    q = np.pad(y, ((r, r), (0, 0), (0, 0)), mode="edge")
    return sum(k[i] * q[i : i + H] for i in range(len(k)))


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map (H, W, C) of float frames (H, W, C) in [0, 1]: Wang et al. 2004 (Gaussian window
    sigma 1.5, 11 taps; K1 0.01, K2 0.03, dynamic range 1), per channel."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)  # float32 variances cancel badly
    c1, c2 = 0.01**2, 0.03**2
    C = x.shape[-1]
    stats = _blur_hw(np.concatenate([x, y, x * x, y * y, x * y], -1), _gauss_kernel(1.5, 5))
    mx, my, xx, yy, xy = (stats[..., i * C : (i + 1) * C] for i in range(5))
    vx, vy, cov = xx - mx * mx, yy - my * my, xy - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.astype(np.float32)


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM of premultiplied float frames over the mask's pixels and every channel (1 = identical)."""
    if not mask.any():
        raise ValueError("empty mask: nothing to compare")
    return float(ssim_map(a, b)[mask].mean())


def alpha_iou(a: np.ndarray, b: np.ndarray, threshold: float = ALPHA_THRESHOLD) -> float:
    """IoU of the silhouettes alpha > threshold of two RGBA uint8 frames (1 when both are empty)."""
    ma = np.asarray(a)[..., 3] > threshold * 255
    mb = np.asarray(b)[..., 3] > threshold * 255
    union = np.logical_or(ma, mb).sum()
    return 1.0 if union == 0 else float(np.logical_and(ma, mb).sum() / union)


def gradient_magnitude(p: np.ndarray) -> np.ndarray:
    """Per-pixel gradient magnitude (H, W) of a premultiplied frame (H, W, C): central differences,
    the norm over channels and both directions (0 on the one-pixel border)."""
    p = np.asarray(p, np.float32)
    g = np.zeros(p.shape[:2], np.float32)
    gx = 0.5 * (p[1:-1, 2:] - p[1:-1, :-2])
    gy = 0.5 * (p[2:, 1:-1] - p[:-2, 1:-1])
    g[1:-1, 1:-1] = np.sqrt((gx * gx + gy * gy).sum(-1))
    return g


def gradient_sum(frame: np.ndarray, threshold: float = ALPHA_THRESHOLD) -> tuple[float, int]:
    """(sum of gradient magnitudes, pixel count) inside a frame's own alpha > threshold; pooled over
    frames, sum / count is the set's mean gradient magnitude (its sharpness)."""
    f = np.asarray(frame)
    m = f[..., 3] > threshold * 255
    if not m.any():
        return 0.0, 0
    ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    y0, y1 = max(0, ys[0] - 1), min(f.shape[0], ys[-1] + 2)  # one more pixel: the central differences
    x0, x1 = max(0, xs[0] - 1), min(f.shape[1], xs[-1] + 2)
    g = gradient_magnitude(premultiplied(f[y0:y1, x0:x1]))
    # the crop's border rows/columns are 0 in g; they are the frame's border or outside the mask
    return float(g[m[y0:y1, x0:x1]].sum()), int(m.sum())


def sharpness(frames: np.ndarray, threshold: float = ALPHA_THRESHOLD) -> float:
    """Mean gradient magnitude inside the frames' own alpha (frames (N, H, W, 4) or one (H, W, 4))."""
    f = np.asarray(frames)
    parts = [gradient_sum(x, threshold) for x in (f[None] if f.ndim == 3 else f)]
    n = sum(c for _, c in parts)
    return float("nan") if n == 0 else sum(s for s, _ in parts) / n


def gaussian_blur_rgba(frames: np.ndarray, sigma: float) -> np.ndarray:
    """RGBA uint8 frames (..., H, W, 4) blurred in premultiplied RGBA (edges fade to transparent).

    PIL's GaussianBlur: box passes of the Gaussian's variance (within 2/255 of an exact Gaussian), 3x
    faster than a float convolution here, which matters for the detector's blurred sanity set.
    """
    from PIL import Image, ImageFilter

    f = np.asarray(frames)
    lead, (H, W) = f.shape[:-3], f.shape[-3:-1]
    f = f.reshape(-1, H, W, 4)
    out = np.zeros_like(f)
    a = f[..., 3].any(0)
    if a.any():  # only the box around every visible pixel (plus the kernel's reach) can change
        r = max(1, int(math.ceil(3.0 * sigma)))
        ys, xs = np.nonzero(a.any(1))[0], np.nonzero(a.any(0))[0]
        y0, y1, x0, x1 = max(0, ys[0] - r), min(H, ys[-1] + r + 1), max(0, xs[0] - r), min(W, xs[-1] + r + 1)
        blur = ImageFilter.GaussianBlur(sigma)
        for i, x in enumerate(f[:, y0:y1, x0:x1]):
            img = Image.fromarray(np.ascontiguousarray(x), "RGBA").convert("RGBa").filter(blur)
            out[i, y0:y1, x0:x1] = np.asarray(img.convert("RGBA"))
    return out.reshape(*lead, H, W, 4)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance of Gaussians fitted to two feature sets (N, D) and (M, D), as in FID:
    |mu_x - mu_y|^2 + tr(Sx + Sy - 2 (Sx Sy)^1/2)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"need two feature sets (N>=2, D) of one D, got {x.shape} and {y.shape}")
    mx, my = x.mean(0), y.mean(0)
    a = (x - mx) / math.sqrt(len(x) - 1)  # Sx = a^T a
    b = (y - my) / math.sqrt(len(y) - 1)  # Sy = b^T b
    if x.shape[1] <= min(len(x), len(y)):
        # tr (Sx Sy)^1/2 = sum sqrt(eig(Sx^1/2 Sy Sx^1/2)): symmetric PSD, so eigh is exact and stable
        sx, sy = a.T @ a, b.T @ b
        w, v = np.linalg.eigh(sx)
        rx = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh(rx @ sy @ rx), 0, None)).sum())
    else:
        # fewer samples than dimensions: the nonzero eigenvalues of Sx Sy = a^T a b^T b are those of
        # (a b^T)(a b^T)^T, so tr (Sx Sy)^1/2 is the sum of the singular values of the small N x M matrix a b^T
        tr_sqrt = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    return float(((mx - my) ** 2).sum() + (a * a).sum() + (b * b).sum() - 2.0 * tr_sqrt)


__all__ = [
    "MASK_DILATION",
    "ALPHA_THRESHOLD",
    "premultiplied",
    "straight_uint8",
    "over_white",
    "dilate",
    "avatar_mask",
    "box_mask",
    "masked_mse",
    "psnr_from_mse",
    "psnr",
    "ssim_map",
    "ssim",
    "alpha_iou",
    "gradient_magnitude",
    "gradient_sum",
    "sharpness",
    "gaussian_blur_rgba",
    "frechet_distance",
]
