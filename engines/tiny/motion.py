"""Architecture 3's decoder: the avatar's reference frame, moved part by part, then retouched.

Architectures 1 and 2 decode an image latent that the denoiser must generate cell by cell; where
the next chunk is uncertain the denoiser gives the mean, and the decoder draws the mean as blur or
blotches: the faces, eyes and outlines users look at are lost (docs/training/README.md, x3-x5).
Here the latent is the frame's motion (engines/avatar_world/skeleton.py: keypoints, face and
effect fields, 82 numbers), and the picture comes from the avatar's reference frame, which holds
every detail of this avatar and is encoded once per avatar:

1. each part's keypoints, in the reference and in the target, give that part's rigid map
   (`part_grids`: a similarity from two keypoints, an affine map from three);
2. a small U-Net at a quarter of the window's size looks at the reference moved by every part's
   map and at where the keypoints went, and says which part each pixel belongs to (soft masks;
   as first-order-motion's dense motion network);
3. the masks mix the parts' maps into one sampling grid per level, which moves the reference's
   features (1/8, 1/4, 1/2) and its pixels (full size);
4. a generator conditioned on the expression draws what the reference does not hold (closed eyes,
   open mouths, tears, hearts, what a moved arm uncovers) and a copy mask chooses, per pixel,
   between its drawing and the moved reference pixels, so what can be copied stays exactly sharp.

Everything is convolutions, grid_sample and small matrix algebra written out (no solve), so it
exports to ONNX (GridSample, opset 16).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from avatarcast.engines.avatar_world.skeleton import (
    EXPR_DIM,
    EXPR_OFFSET,
    FACE_FIELDS,
    KEYPOINTS,
    MOTION_DIM,
    N_POINTS,
    PARTS,
)
from avatarcast.engines.tiny.model import ResBlock, _zero_init

N_PARTS = len(PARTS)


@dataclass(frozen=True)
class MotionShape:
    """The decoder's sizes: the window it draws (as TinyConfig's) and its channels."""

    pad_height: int = 384
    window_width: int = 448
    ref_channels: tuple[int, int, int] = (32, 64, 96)  # reference features at 1/2, 1/4, 1/8
    mask_channels: tuple[int, int, int] = (64, 96, 128)  # the part-mask U-Net at 1/4, 1/8, 1/16
    gen_channels: tuple[int, int, int] = (96, 64, 32)  # the generator at 1/8, 1/4, 1/2
    cond_dim: int = 256
    heat_sigma_px: float = 6.0  # keypoint heat maps' width in window pixels
    # The level (1/n) at which the part masks mix the parts' maps; the finer levels upsample that grid.
    # Inside a part the grid is affine, which bilinear upsampling keeps exactly: only the few pixels
    # across a part's edge blend. Per level at full size cost 4-5x the shipped decoder on the CPU in
    # elementwise work alone, for 0.06 dB (the skeleton prior on held-out frames: 16.23 dB at full
    # size, 16.17 from 1/4).
    geometry_level: int = 4
    # Faces the decoder may copy besides the canonical one (engines/avatar_world/reference.atlas_frames: the
    # canonical frame with each emotion's typical face), mixed per frame from the motion's face fields. A
    # generator has to learn to draw an expression from 18 numbers; a face copied from the avatar's own
    # rendering of it keeps the avatar's eyes, mouth and outlines. 0: the canonical face only.
    atlas: int = 0
    # Lay the head and the torso, each moved by its own map, under the parts in front of them (UNDER_LAYERS). One
    # sampling grid per pixel cannot layer parts: where a moved arm's edge is partly transparent in the canonical
    # frame, nothing filled the rest, and a white fringe showed where a hand crosses the body or the face. No
    # weights: on for every decoder, the ones trained without it too (the kept GPU decoder: +0.56 dB avatar PSNR,
    # alpha IoU 0.9766 -> 0.9794 on 72 held-out frames; docs/training/motion.md).
    underlay: bool = True
    # A correction the generator adds over the copy mask's mix (zero at first). The copy mask alone saturated in
    # every decoder trained so far (its logit past 15 on every held-out pixel, tools/motion_copy.py): sigmoid's
    # slope is then 0 in float32 and the generator gets no gradient at all, so the strokes stayed as bilinear
    # sampling leaves them. A residual keeps a path from the loss to the generator whatever the mask does.
    residual: bool = False
    # The generator ends at 1/2 size (docs/bench/residual_speed_2026-12-06: a third of the residual generator's time
    # was its full-size tail). One convolution `tail` over the 1/2-size features and the moved pixels' 2 x 2 phases
    # (space-to-depth) predicts, per phase, the copy mask's logit and a residual: out = copy * moved + residual, mixed
    # in the phase layout, then one depth-to-space of 4 channels. No convolution at full size; no up1, out or res.
    # (The old tail's drawn RGBA under (1 - copy) is one more residual: (1 - copy) * drawn + res.) Implies a residual.
    half_tail: bool = False
    # The generator ends at 1/4 size (issue 16: a residual draw at about the copy draw's cost): no 1/2-size level
    # (no up2, g2_in, g2, and the reference's 1/2-size features are not moved), and one 3 x 3 convolution `tail` over
    # SiLU of the 1/4-size features predicts, per 4 x 4 phase, a residual of 4 channels (64 channels), laid out at
    # full size by one depth-to-space: out = moved + residual. No copy mask (the residual decoders' copy logit was
    # saturated at 1 over nearly every pixel: tools/motion_copy.py). Implies a residual; gen_channels[2] is unread.
    quarter_tail: bool = False
    # With quarter_tail: the moved pixels also reach the tail, through a 4 x 4 convolution of stride 4 `tail_px` (each
    # 4 x 4 block's residual sees its own 16 moved pixels), so a correction can follow the moved strokes at full
    # resolution (a fringe is a pixel or two wide), not only what the 1/4-size features say. (Written as a space-to-
    # depth and a 1 x 1 convolution it is the same map, but onnxruntime ran the space-to-depth as a 6-D Transpose:
    # 6 ms of a 4-frame call.)
    tail_moved: bool = False
    # With quarter_tail: a hidden layer of this many channels at 1/4 size before the tail (0: none). The tail is then
    # a 1 x 1 convolution over SiLU(tail_in(SiLU(x)) + tail_px(moved)): a small network per 4 x 4 block, where the moved
    # pixels and the features meet. Fitted to resgan2's frames on the CPU it drew its correction no faster than
    # without it (docs/training/motion.md, "A generator at 1/4 size"); never trained on the GPU.
    tail_hidden: int = 0
    # With quarter_tail: the tail lays out this many channels at full size (depth-to-space), and one 3 x 3 convolution
    # `res` over their SiLU and the moved pixels draws the residual there, one filter for every pixel (0: the tail's
    # 4 x 4 phases are the residual, 16 filters, each learning from a sixteenth of the pixels).
    tail_full: int = 0
    # FiLM blocks at 1/8 size (2 in every decoder before the quarter tail).
    g8_blocks: int = 2


_SMALL = MotionShape(ref_channels=(16, 32, 64), mask_channels=(32, 48, 64), gen_channels=(64, 32, 16))
# Shapes by name (tools/train_motion.py --shape): the default, one for the 2-core CPU, and that one with the
# generator ending at 1/2 size (with 8 channels there, not 16, for small_half8).
SHAPES: dict[str, MotionShape] = {
    "default": MotionShape(),
    "small": _SMALL,
    "small_half": dataclasses.replace(_SMALL, residual=True, half_tail=True),
    "small_half8": dataclasses.replace(_SMALL, gen_channels=(64, 32, 8), residual=True, half_tail=True),
    # the generator ending at 1/4 size (quarter_tail): resgan2's 1/8 and 1/4 levels as they are (their weights load),
    # narrower (32 and 16 channels, one FiLM block at 1/8: fresh), and either with the moved pixels' phases
    "small_q4": dataclasses.replace(_SMALL, residual=True, quarter_tail=True),
    "small_q4m": dataclasses.replace(_SMALL, residual=True, quarter_tail=True, tail_moved=True),
    "small_q4s": dataclasses.replace(_SMALL, gen_channels=(32, 16, 16), residual=True, quarter_tail=True, g8_blocks=1),
    "small_q4sm": dataclasses.replace(
        _SMALL, gen_channels=(32, 16, 16), residual=True, quarter_tail=True, tail_moved=True, g8_blocks=1
    ),
    "small_q4sf": dataclasses.replace(
        _SMALL, gen_channels=(32, 16, 16), residual=True, quarter_tail=True, g8_blocks=1, tail_full=4
    ),
    "small_q4smh": dataclasses.replace(
        _SMALL,
        gen_channels=(32, 16, 16),
        residual=True,
        quarter_tail=True,
        tail_moved=True,
        g8_blocks=1,
        tail_hidden=64,
    ),
}
# Fields added after decoders were shipped: left out of a shape's dict while at their default, so that a shape
# written before them is written the same (the shipped folders' manifests, checkpoints).
_NEWER_FIELDS = {
    "half_tail": False,
    "quarter_tail": False,
    "tail_moved": False,
    "tail_hidden": 0,
    "tail_full": 0,
    "g8_blocks": 2,
}


def shape_to_dict(s: MotionShape) -> dict:
    d = dataclasses.asdict(s)
    return {k: v for k, v in d.items() if k not in _NEWER_FIELDS or v != _NEWER_FIELDS[k]}


def shape_from_dict(d: dict | None) -> MotionShape:
    """A checkpoint's shape; one written before shapes were kept is the default."""
    if not d:
        return MotionShape()
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return MotionShape(**fields)


# --- geometry ---------------------------------------------------------------------------------


# Where a Gaussian or a softmax makes values under this, they are set to 0. Far from a keypoint a Gaussian
# factor (or a product of two), and a part's share far from its bone, fall into float32's subnormal range
# (under 1.2e-38), and x86 CPUs compute on subnormals up to a hundred times slower: the first convolution
# reading the heat maps took 106-119 ms for 4 frames in onnxruntime instead of about 9 (a quarter of the small
# decoder's time), and the part shares slowed every product they entered. At least 1e-9 keeps each product
# of two such values, and their products with weights and pixels, normal; nothing drawn moves by a level.
_FLOOR = 1e-9


# Constants the draw makes from Python numbers, per device (and dtype, inference mode), on CUDA only: a tensor made
# from a list (`new_tensor`, indexing by a list) is copied from the host with a wait for the device's queue, and the
# batched GPU draw made a dozen such waits a decoder call, so the host could not queue one call while the device
# ran the last (docs/bench/motion_gpu_fast_2026-12-06). Same numbers, same arithmetic: the frames do not move.
_CONSTS: dict[tuple, torch.Tensor] = {}


def _cached(like: torch.Tensor) -> bool:
    return like.device.type == "cuda" and not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def _const(values: tuple | list, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`like.new_tensor(values, dtype=dtype)`, made once on CUDA."""
    if not _cached(like):
        return like.new_tensor(values, dtype=dtype)
    key = (tuple(values), dtype or like.dtype, like.device, torch.is_inference_mode_enabled())
    t = _CONSTS.get(key)
    if t is None:
        t = _CONSTS[key] = like.new_tensor(values, dtype=dtype)
    return t


def _pick(x: torch.Tensor, idx: tuple[int, ...] | list[int]) -> torch.Tensor:
    """x[:, list(idx)] (channels idx of x), with the index made once on CUDA."""
    if not _cached(x):
        return x[:, list(idx)]
    return x.index_select(1, _const(tuple(idx), x, torch.long))


def _flush(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v < _FLOOR, 0.0, v)


def _softmax(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return _flush(torch.softmax(x, dim=dim))


def _px(p: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Normalized window coordinates -> pixel units (same origin): similarities must not see the aspect."""
    return p * _const((w / 2.0, h / 2.0), p)


def _similarity(t1: torch.Tensor, t2: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, eps: float = 1e-3):
    """(A, b), A (..., 2, 2), b (..., 2): the similarity taking t1 -> r1 and t2 -> r2 (pixel units)."""
    u, v = t2 - t1, r2 - r1
    den = (u * u).sum(-1) + eps
    re = (v[..., 0] * u[..., 0] + v[..., 1] * u[..., 1]) / den
    im = (v[..., 1] * u[..., 0] - v[..., 0] * u[..., 1]) / den
    A = torch.stack([torch.stack([re, -im], -1), torch.stack([im, re], -1)], -2)
    return A, r1 - (A @ t1[..., None])[..., 0]


def _affine(t0, t1, t2, r0, r1, r2, eps: float = 1e-3):
    """(A, b): the affine map taking t_i -> r_i, with U^-1 written out (no linalg.solve in the graph)."""
    U = torch.stack([t1 - t0, t2 - t0], -1)  # columns
    V = torch.stack([r1 - r0, r2 - r0], -1)
    det = U[..., 0, 0] * U[..., 1, 1] - U[..., 0, 1] * U[..., 1, 0]
    det = torch.where(det.abs() < eps, torch.full_like(det, eps), det)
    inv = (
        torch.stack(
            [torch.stack([U[..., 1, 1], -U[..., 0, 1]], -1), torch.stack([-U[..., 1, 0], U[..., 0, 0]], -1)], -2
        )
        / det[..., None, None]
    )
    A = V @ inv
    return A, r0 - (A @ t0[..., None])[..., 0]


# The parts by kind, for part_maps: (their places in PARTS, and their keypoints' indices, one tuple a corner).
_SIM = tuple(i for i, (_, idx) in enumerate(PARTS) if len(idx) == 2)
_AFF = tuple(i for i, (_, idx) in enumerate(PARTS) if len(idx) == 3)
_SIM_KP = tuple(tuple(PARTS[i][1][c] for i in _SIM) for c in range(2))
_AFF_KP = tuple(tuple(PARTS[i][1][c] for i in _AFF) for c in range(3))
_STILL = tuple(i for i, (_, idx) in enumerate(PARTS) if len(idx) not in (2, 3))
_PART_ORDER = tuple((_SIM + _AFF + _STILL).index(i) for i in range(N_PARTS))  # PARTS' order from that stacking


def part_maps(kp_t: torch.Tensor, kp_r: torch.Tensor, w: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each part's map from the target frame to the reference, in normalized window coordinates.

    kp_t, kp_r: (B, N_POINTS, 2). Returns A (B, N_PARTS, 2, 2), b (B, N_PARTS, 2): ref = A @ target + b.
    The parts of one kind are worked out together, (B, parts, 2) at once: the same arithmetic, element for element,
    as one part at a time, in a tenth of the calls (on CUDA, 250 small kernels a decoder call were 12 a part).
    """
    pt, pr = _px(kp_t, w, h), _px(kp_r, w, h)
    B = kp_t.shape[0]
    As, bs = [], []
    if _SIM:
        t1, t2 = (_pick(pt, k) for k in _SIM_KP)
        r1, r2 = (_pick(pr, k) for k in _SIM_KP)
        A, b = _similarity(t1, t2, r1, r2)
        As.append(A)
        bs.append(b)
    if _AFF:
        t0, t1, t2 = (_pick(pt, k) for k in _AFF_KP)
        r0, r1, r2 = (_pick(pr, k) for k in _AFF_KP)
        A, b = _affine(t0, t1, t2, r0, r1, r2)
        As.append(A)
        bs.append(b)
    still = N_PARTS - len(_SIM) - len(_AFF)
    if still:  # the still part: its map is never read (mix_grid turns its share into transparency)
        As.append(torch.eye(2, device=kp_t.device, dtype=kp_t.dtype).expand(B, still, 2, 2))
        bs.append(kp_t.new_zeros(B, still, 2))
    A, b = _pick(torch.cat(As, 1), _PART_ORDER), _pick(torch.cat(bs, 1), _PART_ORDER)
    # back to normalized coordinates: S^-1 A S, S^-1 b with S = diag(w/2, h/2)
    s = _const((w / 2.0, h / 2.0), kp_t)
    return A * s[None, None, None, :] / s[None, None, :, None], b / s


def pixel_centres(h: int, w: int, like: torch.Tensor, full_hw: tuple[int, int] | None = None, origin=(0, 0)):
    """(h, w, 2) normalized window coordinates of the pixel centres of an h x w crop whose first pixel is
    ``origin`` (row, column) in a grid of ``full_hw`` (default: the crop is the whole grid). An origin tensor
    (B, 2): one crop a row, (B, h, w, 2) (how the torch backend draws streams' own boxes in one call)."""
    fh, fw = full_hw or (h, w)
    if isinstance(origin, torch.Tensor) and origin.dim() == 2:
        ys = ((torch.arange(h, device=like.device, dtype=like.dtype)[None] + origin[:, :1]) * 2 + 1) / fh - 1
        xs = ((torch.arange(w, device=like.device, dtype=like.dtype)[None] + origin[:, 1:]) * 2 + 1) / fw - 1
        return torch.stack([xs[:, None, :].expand(-1, h, w), ys[:, :, None].expand(-1, h, w)], -1)
    ys = ((torch.arange(h, device=like.device, dtype=like.dtype) + origin[0]) * 2 + 1) / fh - 1
    xs = ((torch.arange(w, device=like.device, dtype=like.dtype) + origin[1]) * 2 + 1) / fw - 1
    return torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], -1)


def part_grids(A: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(B, N_PARTS, h, w, 2): where each pixel (centres p, (h, w, 2), or (B, h, w, 2) one box a row) samples the
    reference if it is each part's."""
    if p.dim() == 4:
        return torch.einsum("bkij,bhwj->bkhwi", A, p) + b[:, :, None, None, :]
    return torch.einsum("bkij,hwj->bkhwi", A, p) + b[:, :, None, None, :]


def mix_grid(grids: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft part masks (logits (B, N_PARTS, h, w)) mix the moving parts' grids (B, N_PARTS, h, w, 2).

    Returns the grid (B, h, w, 2) and the visibility (B, h, w): the moving parts' share. The still part
    (the last) brings nothing: its share makes the pixel transparent, for the generator to draw. Reading
    the reference in place instead would copy its arms wherever no bone claims a pixel, and mixing a
    far-away coordinate into the grid would move every pixel it touches.
    """
    m = _softmax(logits)
    moving = m[:, :-1]
    vis = moving.sum(1)
    grid = (moving[..., None] * grids[:, :-1]).sum(1) / vis.clamp(min=1e-6)[..., None]
    return grid, vis


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample x (B, C, H, W) at grid (B, h, w, 2); outside x reads zeros."""
    # float32 both: under mixed precision the features arrive in bfloat16 and the grid must not
    return F.grid_sample(x.float(), grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False)


def heat_maps(kp_t: torch.Tensor, kp_r: torch.Tensor, p: torch.Tensor, sigma_px: float, full_hw) -> torch.Tensor:
    """(B, N_POINTS, h, w): Gaussian at each keypoint's target place minus one at its reference place.

    `p` is a box's pixel centres (pixel_centres): x varies along a row only and y down a column only, so each
    Gaussian is the outer product of one along the row and one down the column. Written so, the served graph
    computes h + w exponentials a keypoint instead of h x w, and no (B, N_POINTS, h, w, 2) difference: that was
    the largest elementwise work of the small decoder on the CPU (docs/training/motion.md)."""
    H, W = full_hw
    if p.dim() == 4:  # one box a row
        xs, ys = p[:, 0, :, 0][:, None], p[:, :, 0, 1][:, None]  # (B, 1, w), (B, 1, h)
    else:
        xs, ys = p[0, :, 0][None, None], p[:, 0, 1][None, None]  # (1, 1, w), (1, 1, h)
    k = -1.0 / (2 * sigma_px * sigma_px)

    def g(kp):
        dx = (xs - kp[:, :, 0:1]) * (W / 2.0)  # (B, N, w)
        dy = (ys - kp[:, :, 1:2]) * (H / 2.0)  # (B, N, h)
        return _flush(torch.exp(dy * dy * k))[..., :, None] * _flush(torch.exp(dx * dx * k))[..., None, :]

    return g(kp_t) - g(kp_r)


# The part masks' starting point: a pixel belongs to the part whose bone is nearest, in head radii,
# each part with its own width and bias (learnt from these values). Without it the masks start
# uniform, every part's move is averaged, and the first thousands of steps only find the skeleton.
# name: (from keypoint, to keypoint or None for a point, extend the bone past "to" by, width, bias).
# The still part (no bone) has one bias: pixels beyond every bone's reach are empty.
_PRIOR: dict[str, tuple[str, str | None, float, float, float]] = {
    "torso": ("pelvis", "torso_centre", 0.9, 1.0, 0.0),
    "head": ("head_centre", None, 0.0, 1.0, 0.2),
    "face": ("face", None, 0.0, 0.45, 1.0),
    "upper_arm_l": ("shoulder_l", "elbow_l", 0.0, 0.3, 0.6),
    "upper_arm_r": ("shoulder_r", "elbow_r", 0.0, 0.3, 0.6),
    "forearm_l": ("elbow_l", "hand_l", 0.0, 0.3, 0.8),
    "forearm_r": ("elbow_r", "hand_r", 0.0, 0.3, 0.8),
    "thigh_l": ("hip_l", "knee_l", 0.0, 0.35, 0.3),
    "thigh_r": ("hip_r", "knee_r", 0.0, 0.35, 0.3),
    "shin_l": ("knee_l", "ankle_l", 0.0, 0.35, 0.4),
    "shin_r": ("knee_r", "ankle_r", 0.0, 0.35, 0.4),
    "ground": ("ground", "ground_side", 0.0, 0.2, -0.5),
}
_STILL_BIAS = -2.0


class PartPrior(nn.Module):
    """Nearest-bone part logits (B, N_PARTS, h, w) at any pixel centres, with learnt widths and biases."""

    a_idx: torch.Tensor  # buffers: each moving part's bone, as keypoint indices, and how far it extends
    b_idx: torch.Tensor
    extend: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        names = [n for n, _ in PARTS]
        idx = {n: i for i, n in enumerate(KEYPOINTS)}
        if set(_PRIOR) | {"still"} != set(names):
            raise RuntimeError(f"the part prior names {sorted(_PRIOR)}, skeleton.PARTS {names}")
        seg = [(idx[_PRIOR[n][0]], idx[_PRIOR[n][1] or _PRIOR[n][0]], _PRIOR[n][2]) for n in names[:-1]]
        self.register_buffer("a_idx", torch.tensor([s[0] for s in seg]), persistent=False)
        self.register_buffer("b_idx", torch.tensor([s[1] for s in seg]), persistent=False)
        self.register_buffer("extend", torch.tensor([s[2] for s in seg]), persistent=False)
        self.log_width = nn.Parameter(torch.log(torch.tensor([_PRIOR[n][3] for n in names[:-1]])))
        self.bias = nn.Parameter(torch.tensor([_PRIOR[n][4] for n in names[:-1]] + [_STILL_BIAS]))
        self.log_sharp = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(4.0)))))
        self.head = (idx["head_centre"], idx["head_up"])

    def forward(self, kp_t: torch.Tensor, p: torch.Tensor, full_hw) -> torch.Tensor:
        H, W = full_hw
        s = _const((W / 2.0, H / 2.0), kp_t)
        kp = kp_t * s  # pixels
        r = (kp[:, self.head[1]] - kp[:, self.head[0]]).norm(dim=-1).clamp(min=1.0)  # head radius (B,)
        a, b = kp[:, self.a_idx], kp[:, self.b_idx]  # (B, K-1, 2)
        b = b + (b - a) * self.extend[None, :, None]
        ab = b - a
        q = (p * s)[:, None] if p.dim() == 4 else (p * s)[None, None]  # (B or 1, 1, h, w, 2)
        t = (
            ((q - a[:, :, None, None]) * ab[:, :, None, None]).sum(-1)
            / (ab * ab).sum(-1).clamp(min=1e-6)[..., None, None]
        ).clamp(0, 1)
        d = (q - a[:, :, None, None] - t[..., None] * ab[:, :, None, None]).norm(dim=-1) / r[:, None, None, None]
        w = self.log_width.exp()[None, :, None, None]
        bones = self.bias[None, :-1, None, None] - 0.5 * (d / w) ** 2
        still = self.bias[-1].expand(bones.shape[0], 1, *bones.shape[2:])
        return self.log_sharp.exp() * torch.cat([bones, still], 1)


# What MotionShape.underlay lays under the moved parts, front to back: the head (with the face) under the limbs,
# the torso under everything else. A limb's canonical edge is partly transparent, and one grid cannot layer parts.
UNDER_LAYERS: tuple[tuple[str, ...], ...] = (("head", "face"), ("torso",))
_PART_NAMES = tuple(n for n, _ in PARTS)
_UNDER_IDX = tuple(tuple(_PART_NAMES.index(p) for p in layer) for layer in UNDER_LAYERS)

# --- networks ---------------------------------------------------------------------------------


class FiLMResBlock(nn.Module):
    """A norm-free residual block modulated by the expression. No GroupNorm: its statistics would
    depend on the crop the CPU draws, and the avatar's pixels would change as the crop moves."""

    def __init__(self, ch: int, cond_dim: int):
        super().__init__()
        self.a = nn.Conv2d(ch, ch, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * ch)
        self.b = nn.Conv2d(ch, ch, 3, padding=1)
        _zero_init(self.b)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.a(F.silu(x)) * (1 + scale) + shift
        return x + self.b(F.silu(h))


class RefEncoder(nn.Module):
    """The reference frame (premultiplied RGBA in [-1, 1], (B, 4, H, W)) -> features at 1/2, 1/4, 1/8.

    Runs once per avatar; serving caches its output with the avatar."""

    def __init__(self, s: MotionShape):
        super().__init__()
        c = s.ref_channels
        self.d2 = nn.Sequential(nn.Conv2d(4, c[0], 3, stride=2, padding=1), ResBlock(c[0]))
        self.d4 = nn.Sequential(nn.SiLU(), nn.Conv2d(c[0], c[1], 3, stride=2, padding=1), ResBlock(c[1]))
        self.d8 = nn.Sequential(nn.SiLU(), nn.Conv2d(c[1], c[2], 3, stride=2, padding=1), ResBlock(c[2]))

    def forward(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f2 = self.d2(ref)
        f4 = self.d4(f2)
        return f2, f4, self.d8(f4)


class PartMaskNet(nn.Module):
    """Which part each pixel (at 1/4) belongs to: a small U-Net over the reference moved by every part."""

    def __init__(self, s: MotionShape):
        super().__init__()
        c = s.mask_channels
        cin = 4 * N_PARTS + N_POINTS
        self.inp = nn.Conv2d(cin, c[0], 3, padding=1)
        self.b0 = ResBlock(c[0])
        self.down1 = nn.Conv2d(c[0], c[1], 3, stride=2, padding=1)
        self.b1 = ResBlock(c[1])
        self.down2 = nn.Conv2d(c[1], c[2], 3, stride=2, padding=1)
        self.b2 = ResBlock(c[2])
        self.up2 = nn.Conv2d(c[2] + c[1], c[1], 3, padding=1)
        self.up1 = nn.Conv2d(c[1] + c[0], c[0], 3, padding=1)
        self.out = nn.Conv2d(c[0], N_PARTS, 3, padding=1)
        _zero_init(self.out)  # a residual on PartPrior's logits: starts at the nearest bone

    def forward(self, moved_refs: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
        x0 = self.b0(self.inp(torch.cat([moved_refs, heat], 1)))
        x1 = self.b1(self.down1(F.silu(x0)))
        x2 = self.b2(self.down2(F.silu(x1)))
        u = F.interpolate(x2, size=x1.shape[-2:], mode="nearest")
        x1 = F.silu(self.up2(torch.cat([u, x1], 1)))
        u = F.interpolate(x1, size=x0.shape[-2:], mode="nearest")
        x0 = F.silu(self.up1(torch.cat([u, x0], 1)))
        return self.out(x0)


def atlas_face_fields(k: int) -> torch.Tensor:
    """(1 + k, len(FACE_FIELDS)): the canonical pose's face fields, then those of the atlas's k faces."""
    from avatarcast.engines.avatar_world.reference import canonical_pose, expression_faces

    faces = expression_faces()
    if len(faces) != k:
        raise ValueError(f"the atlas has {len(faces)} faces, the decoder's shape says {k}")
    canon = canonical_pose()
    rows = [[getattr(canon, f) for f in FACE_FIELDS]] + [[face[f] for f in FACE_FIELDS] for _, face in faces]
    return torch.tensor(rows, dtype=torch.float32)


class MotionDecoder(nn.Module):
    """(motion (B, MOTION_DIM), the reference's motion and its encoded features) -> premultiplied RGBA window."""

    def __init__(self, s: MotionShape | None = None):
        super().__init__()
        self.shape = s = s or MotionShape()
        self.ref_encoder = RefEncoder(s)
        self.masks = PartMaskNet(s)
        self.prior = PartPrior()
        g, r = s.gen_channels, s.ref_channels
        self.cond = nn.Sequential(nn.Linear(MOTION_DIM, s.cond_dim), nn.SiLU(), nn.Linear(s.cond_dim, s.cond_dim))
        self.g8_in = nn.Conv2d(r[2] + N_POINTS, g[0], 3, padding=1)
        self.g8 = nn.ModuleList([FiLMResBlock(g[0], s.cond_dim) for _ in range(s.g8_blocks)])
        self.up4 = nn.Sequential(nn.SiLU(), nn.Conv2d(g[0], 4 * g[1], 3, padding=1), nn.PixelShuffle(2))
        self.g4_in = nn.Conv2d(g[1] + r[1], g[1], 3, padding=1)
        self.g4 = FiLMResBlock(g[1], s.cond_dim)
        if s.quarter_tail:
            if s.half_tail:
                raise ValueError("quarter_tail and half_tail are two ends of the generator: one at most")
            # channel c of 4 x 4 phase p at c * 16 + p, as pixel_shuffle(., 4) reads them: zero at first (the copy)
            n_out = 16 * (s.tail_full or 4)  # 4 x 4 phases of the residual, or of the full-size features
            k = s.tail_hidden or n_out  # what tail_px adds to: the hidden layer, or the tail's output
            if s.tail_hidden:
                self.tail_in = nn.Conv2d(g[1], s.tail_hidden, 3, padding=1)
                self.tail = nn.Conv2d(s.tail_hidden, n_out, 1)
            else:
                self.tail = nn.Conv2d(g[1], n_out, 3, padding=1)
            if s.tail_full:
                self.res = nn.Conv2d(s.tail_full + 4, 4, 3, padding=1)  # the residual: zero at first
                _zero_init(self.res)
            else:
                _zero_init(self.tail)
            if s.tail_moved:
                self.tail_px = nn.Conv2d(4, k, 4, stride=4)
                if not s.tail_hidden:
                    _zero_init(self.tail_px)
        else:
            self.up2 = nn.Sequential(nn.SiLU(), nn.Conv2d(g[1], 4 * g[2], 3, padding=1), nn.PixelShuffle(2))
            self.g2_in = nn.Conv2d(g[2] + r[0], g[2], 3, padding=1)
            self.g2 = ResBlock(g[2])
            if s.half_tail:
                # per 2 x 2 phase: 4 residual channels (channel c of phase p at c * 4 + p, as pixel_shuffle reads
                # them), then the 4 phases' copy logits; over SiLU(x) and the moved pixels' phases
                self.tail = nn.Conv2d(g[2] + 4 * 4, 4 * 4 + 4, 3, padding=1)
                _zero_init(self.tail)
                tail_bias = self.tail.bias
                assert tail_bias is not None
                with torch.no_grad():
                    tail_bias[16:] = 3.0  # start by copying the moved reference
            else:
                self.up1 = nn.Sequential(nn.SiLU(), nn.Conv2d(g[2], 4 * 8, 3, padding=1), nn.PixelShuffle(2))
                self.out = nn.Conv2d(8 + 4, 5, 3, padding=1)  # RGBA drawn + the copy mask's logit
                _zero_init(self.out)
                if s.residual:
                    self.res = nn.Conv2d(8 + 4, 4, 3, padding=1)  # added over the mix: zero at first
                    _zero_init(self.res)
                bias = self.out.bias
                assert bias is not None
                with torch.no_grad():
                    bias[4] = 3.0  # start by copying the moved reference
        self._init_atlas(s)

    def _init_atlas(self, s: MotionShape) -> None:
        if s.atlas:
            # which face to copy: the nearest in face-field space (a prior that is right from the first step),
            # sharpened or softened by a learnt temperature, plus a learnt residual (zero at first)
            faces = atlas_face_fields(s.atlas)  # (1 + K, F): the canonical face, then the atlas's
            self.register_buffer("atlas_faces", faces)
            self.register_buffer("atlas_scale", faces.std(0).clamp(min=0.05))
            self.atlas_log_temp = nn.Parameter(torch.tensor(0.0))
            last = nn.Linear(64, s.atlas + 1)
            with torch.no_grad():
                last.weight.zero_()
                last.bias.zero_()
            self.atlas_mix = nn.Sequential(nn.Linear(len(FACE_FIELDS), 64), nn.SiLU(), last)

    def mix_weights(self, motion: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K): each motion's weights of the canonical frame and the atlas's K faces (a decoder with an atlas),
        from its face fields; row by row, so many streams' motions may be weighed in one call."""
        face = motion[:, EXPR_OFFSET : EXPR_OFFSET + len(FACE_FIELDS)].float()
        faces, scale = self.get_buffer("atlas_faces"), self.get_buffer("atlas_scale")
        d2 = (((face[:, None] - faces[None]) / scale) ** 2).sum(-1)  # (B, 1 + K)
        return _softmax(-d2 * torch.exp(-self.atlas_log_temp) * 4.0 + self.atlas_mix(face).float())

    def mixed_reference(self, motion: torch.Tensor, ref: torch.Tensor, atlas: torch.Tensor | None) -> torch.Tensor:
        """The reference to move: the canonical frame, or with an atlas (B, K, 4, H, W) a per-frame mix of it
        and the atlas's faces, weighed from the motion's face fields. The atlas differs from the canonical
        frame only in the face, so the mix changes only the face; and a mix of moved frames is the moved mix
        (grid sampling is linear), so one warp moves it."""
        if not self.shape.atlas:
            return ref
        if atlas is None or atlas.shape[1] != self.shape.atlas:
            got = None if atlas is None else tuple(atlas.shape)
            raise ValueError(f"this decoder mixes {self.shape.atlas} atlas faces; got {got}")
        w = self.mix_weights(motion)
        if ref.shape[0] == 1 and atlas.shape[0] == 1 and motion.shape[0] > 1:
            # one avatar's frames for every motion (the exported graph): two matrix products, where the sum
            # below would first copy the atlas once per motion (30 M numbers for 4 frames, a fifth of a CPU draw)
            mixed = w[:, :1] @ ref.float().flatten(1) + w[:, 1:] @ atlas.float().flatten(0, 1).flatten(1)
            return mixed.view(motion.shape[0], *ref.shape[1:])
        return w[:, 0, None, None, None] * ref.float() + (w[:, 1:, None, None, None] * atlas.float()).sum(1)

    def _underlay(self, ref, moved_px, kp_r, grids, shares, vis):
        """moved_px (B, 4, h, w) in [-1, 1] with the parts behind laid under it, front to back (UNDER_LAYERS): each
        layer is the canonical frame's opaque pixels of those parts (over half theirs by the nearest-bone prior), moved
        by the layer's first part's map (grids (B, N_PARTS, hg, wg, 2) at the geometry level; kp_r the canonical
        keypoints, (B or 1, N_POINTS, 2)), weighted by the
        share of the parts in front of it (shares (B, N_PARTS, hg, wg)). Premultiplied 'over': an opaque front
        pixel is unchanged, and a pixel whose front part is the layer's own gets nothing from it."""
        H, W = ref.shape[-2:]
        h, w = moved_px.shape[-2:]

        def up(x: torch.Tensor, size) -> torch.Tensor:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

        pr = pixel_centres(H // 4, W // 4, kp_r)
        own = _softmax(self.prior(kp_r, pr, (H, W))).detach()  # each canonical pixel's parts
        # only the layer's opaque pixels: a canonical pixel that is partly transparent (an outline against the
        # background) already is all there is at that place, and laying it under itself would thicken every edge
        opaque = ((ref[:, 3:4].float() + 1.0) * 0.5 > 0.99).float()
        laid = (moved_px + 1.0) * 0.5
        behind = list(_UNDER_IDX)
        for layer in _UNDER_IDX:
            behind.remove(layer)
            here_or_behind = list(layer) + [i for lay in behind for i in lay]
            in_front = vis - up(_pick(shares, here_or_behind).sum(1, keepdim=True), (h, w))
            mine = (up(_pick(own, layer).sum(1, keepdim=True), (H, W)) > 0.5).float() * opaque
            canon = (ref.float() + 1.0) * 0.5 * mine
            grid = up(grids[:, layer[0]].permute(0, 3, 1, 2), (h, w)).permute(0, 2, 3, 1)
            laid = laid + (1.0 - laid[:, 3:4]) * in_front.clamp(min=0.0) * warp(canon, grid)
        return laid * 2.0 - 1.0

    @property
    def last_layer(self) -> nn.Conv2d:
        """The last layer that draws the frame (the patch critic scales its term to the frame losses' gradient there):
        the one the residual comes from, since a saturated copy mask passes none to /out."""
        if self.shape.half_tail or (self.shape.quarter_tail and not self.shape.tail_full):
            return self.tail
        return self.res if self.shape.residual else self.out

    def encode_reference(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.ref_encoder(ref)

    def forward(
        self,
        motion: torch.Tensor,
        ref_motion: torch.Tensor,
        ref: torch.Tensor,
        ref_feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        box: tuple[int, int, int, int] | None = None,
        return_parts: bool = False,
        atlas: torch.Tensor | None = None,
    ):
        """Draw the window, or only ``box`` = (row, column, height, width) of it (multiples of 8). `atlas`: the
        avatar's atlas faces (B, shape.atlas, 4, H, W) as window tensors, for a decoder that mixes them.

        ref and ref_feats always cover the whole window (they are the avatar's, cached); only the
        output is cropped, which is how the CPU draws just the pixels around the avatar and how
        training affords many frames a step.
        """
        H, W = ref.shape[-2:]
        y0, x0, h, w = box or (0, 0, H, W)
        if y0 % 8 or x0 % 8 or h % 8 or w % 8:
            raise ValueError(f"box {box} must be in multiples of 8 pixels")
        centres = pixel_centres(h, w, motion, (H, W), (y0, x0))
        return self.draw(motion, ref_motion, ref, ref_feats, centres, atlas, return_parts)

    def draw(
        self,
        motion: torch.Tensor,
        ref_motion: torch.Tensor,
        ref: torch.Tensor,
        ref_feats: tuple[torch.Tensor, ...],  # f2, f4, f8 (unread with copy_only)
        centres: torch.Tensor,
        atlas: torch.Tensor | None = None,
        return_parts: bool = False,
        one_avatar: bool = False,
        copy_only: bool = False,
        premixed: bool = False,
    ):
        """`forward` for the box whose pixel centres (h, w, 2) in window coordinates are given (h, w multiples of
        8, the box on the 8-pixel grid). The box is a tensor here, not numbers, so that an exported graph takes
        any box: its size is the tensor's shape and its place the coordinates in it. `one_avatar`: every row is
        the same avatar (the served graph), so what depends on the avatar alone is worked out once, not per row.
        `copy_only`: return the moved reference without the generator (step 4), for a decoder whose copy mask is 1
        wherever it was checked (`copy_margin`); the generator is then most of the draw's cost and none of its
        pixels. `premixed`: `ref` is already each row's reference to move (mixed_reference's output, (B, 4, H, W)):
        how rows of several avatars are drawn in one call (the torch backend's batched draw)."""
        s = self.shape
        H, W = ref.shape[-2:]
        h, w = centres.shape[-3], centres.shape[-2]
        B = motion.shape[0]
        ref = (ref if premixed else self.mixed_reference(motion, ref, atlas)).expand(B, -1, -1, -1)
        kp_t = motion[:, :EXPR_OFFSET].reshape(B, N_POINTS, 2)
        kp_r = ref_motion[:, :EXPR_OFFSET].reshape(B, N_POINTS, 2)
        # the box's first pixel (row, column), read back from its centre; each level's centres are then computed
        # as for any box (the same arithmetic as a box given in numbers, so the drawing is the same to the bit)
        # (centres (B, h, w, 2): one box a row, of one size; first (B, 2))
        corner = centres[:, 0, 0] if centres.dim() == 4 else centres[0, 0]
        first = torch.round((corner.flip(-1).float() + 1) * _const((H, W), centres).float() / 2 - 0.5)

        def centres_at(level: int) -> torch.Tensor:
            return pixel_centres(h // level, w // level, kp_t, (H // level, W // level), first / level)

        g = s.geometry_level
        # Coordinates stay in float32 under mixed precision: bfloat16 would put them a pixel off.
        with torch.autocast(device_type=motion.device.type, enabled=False):
            kp_t, kp_r = kp_t.float(), kp_r.float()
            A, b = part_maps(kp_t, kp_r, W, H)
            # 1. every part's move of the reference, at 1/4, and where the keypoints went
            p4 = centres_at(4)
            h4, w4 = p4.shape[-3], p4.shape[-2]
            grids4 = part_grids(A, b, p4)  # (B, K, h4, w4, 2)
            ref4 = F.avg_pool2d(ref.float(), 4)
            moved = warp(ref4.repeat_interleave(N_PARTS, 0), grids4.reshape(B * N_PARTS, h4, w4, 2))
            heat4 = heat_maps(kp_t, kp_r, p4, s.heat_sigma_px, (H, W))
            heat8 = heat_maps(kp_t, kp_r, centres_at(8), s.heat_sigma_px * 2, (H, W))
        # 2. which part each pixel belongs to: the nearest bone, corrected by the U-Net
        residual = self.masks(moved.reshape(B, N_PARTS * 4, h4, w4), heat4).float()
        with torch.autocast(device_type=motion.device.type, enabled=False):
            pg = p4 if g == 4 else centres_at(g)
            gridsg = grids4 if g == 4 else part_grids(A, b, pg)
            if g != 4:
                residual = F.interpolate(residual, size=(h // g, w // g), mode="bilinear", align_corners=False)
            logits = self.prior(kp_t, pg, (H, W)) + residual
            grid_g, vis_g = mix_grid(gridsg, logits)
            # 3. that grid and visibility at every level
            mixed, vis = {}, {}
            for lv in (1, 2, 4, 8):
                if lv == g:
                    mixed[lv], vis[lv] = grid_g, vis_g[:, None]
                    continue
                size = (h // lv, w // lv)
                mixed[lv] = F.interpolate(grid_g.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
                mixed[lv] = mixed[lv].permute(0, 2, 3, 1)
                vis[lv] = F.interpolate(vis_g[:, None], size=size, mode="bilinear", align_corners=False)
            # the reference's pixels moved (shifted by one so that outside the reference reads as empty)
            moved_px = warp(ref.float() + 1.0, mixed[1]) * vis[1] - 1.0
            if s.underlay:
                own_kp = kp_r[:1] if one_avatar else kp_r
                moved_px = self._underlay(ref, moved_px, own_kp, gridsg, _softmax(logits), vis[1])
        if copy_only:
            return moved_px
        # 4. draw and choose
        f2, f4, f8 = ref_feats
        cond = self.cond(torch.cat([motion[:, :EXPR_OFFSET] - ref_motion[:, :EXPR_OFFSET], motion[:, EXPR_OFFSET:]], 1))
        x = self.g8_in(torch.cat([warp(f8, mixed[8]) * vis[8], heat8], 1))
        for blk in self.g8:
            x = blk(x, cond)
        x = self.g4_in(torch.cat([self.up4(x), warp(f4, mixed[4]) * vis[4]], 1))
        x = self.g4(x, cond)
        if s.quarter_tail:
            if s.tail_hidden:
                h = self.tail_in(F.silu(x))
                if s.tail_moved:
                    h = h + self.tail_px(moved_px)
                z = self.tail(F.silu(h))
            else:
                z = self.tail(F.silu(x))
                if s.tail_moved:
                    z = z + self.tail_px(moved_px)
            if s.tail_full:
                u = F.pixel_shuffle(z, 4)
                out = moved_px + self.res(torch.cat([F.silu(u), moved_px.to(u.dtype)], 1)).float()
            else:
                out = moved_px + F.pixel_shuffle(z.float(), 4)
            if return_parts:
                copy = torch.ones_like(moved_px[:, :1])
                return out, {"moved": moved_px, "copy": copy, "grid4": mixed[4], "vis4": vis[4], "ref4": ref4}
            return out
        x = self.g2_in(torch.cat([self.up2(x), warp(f2, mixed[2]) * vis[2]], 1))
        x = self.g2(x)
        if s.half_tail:
            moved2 = F.pixel_unshuffle(moved_px, 2)  # (B, 16, h/2, w/2): channel c of phase p at c * 4 + p
            z = self.tail(torch.cat([F.silu(x), moved2], 1)).float()
            copy2 = torch.sigmoid(z[:, 16:])
            # the mix in the phase layout (each phase's mask over its 4 channels), then one 4-channel shuffle
            out = F.pixel_shuffle(copy2.repeat(1, 4, 1, 1) * moved2 + z[:, :16], 2)
            copy = F.pixel_shuffle(copy2, 2) if return_parts else copy2
        else:
            last = torch.cat([self.up1(x), moved_px], 1)
            o = self.out(last).float()
            copy = torch.sigmoid(o[:, 4:5])
            out = copy * moved_px + (1 - copy) * o[:, :4]
            if s.residual:
                out = out + self.res(last).float()
        if return_parts:
            return out, {"moved": moved_px, "copy": copy, "grid4": mixed[4], "vis4": vis[4], "ref4": ref4}
        return out


def half_tail_from_full(state: dict[str, torch.Tensor], fold: bool = True) -> dict[str, torch.Tensor]:
    """`tail.weight` and `tail.bias` of a half_tail decoder that draws as close as one 3 x 3 convolution can to the
    full-size tail in `state` (a residual decoder's: up1's convolution, its pixel shuffle, then `out` and `res` over
    it and the moved pixels). Each phase of a full-size 3 x 3 convolution is a 3 x 3 convolution at 1/2 size, so the
    moved pixels' part is exact. The features' part (up1's 3 x 3 then out's 3 x 3) is a 5 x 5 at 1/2 size: its outer
    ring is folded onto the nearest inner tap (`fold`, right where the features are smooth) or dropped. The
    copy logit is out's; the residual is res's, and the drawn RGBA under (1 - copy) is left out (exact wherever
    the copy mask is saturated at 1, as the residual decoder's is over most pixels)."""
    w1, b1 = state["up1.1.weight"].float(), state["up1.1.bias"].float()  # (32, C, 3, 3): 8 channels x 4 phases
    wo = torch.cat([state["res.weight"], state["out.weight"][4:5]]).float()  # (5, 12, 3, 3): residual, logit
    bo = torch.cat([state["res.bias"], state["out.bias"][4:5]]).float()
    C = w1.shape[1]
    k5 = torch.zeros(5, 4, C, 5, 5)  # (target, phase, S channel, 5 x 5)
    km = torch.zeros(5, 4, 16, 3, 3)  # (target, phase, moved phase channel, 3 x 3)
    bias = bo[:, None].repeat(1, 4)
    for a in range(2):
        for b in range(2):
            p = a * 2 + b
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    qy, ry, qx, rx = (a + dy) // 2, (a + dy) % 2, (b + dx) // 2, (b + dx) % 2
                    tap = wo[:, :, dy + 1, dx + 1]  # (5, 12)
                    rows = [k * 4 + ry * 2 + rx for k in range(8)]
                    # (5, 8) x (8, C, 3, 3): up1's kernel for this phase, shifted by (qy, qx)
                    k5[:, p, :, qy + 1 : qy + 4, qx + 1 : qx + 4] += torch.einsum("ok,kcyx->ocyx", tap[:, :8], w1[rows])
                    bias[:, p] += tap[:, :8] @ b1[rows]
                    for c in range(4):
                        km[:, p, c * 4 + ry * 2 + rx, qy + 1, qx + 1] += tap[:, 8 + c]
    if fold:
        k3 = k5[..., 1:4, 1:4].clone()
        k3[..., 0, :] += k5[..., 0, 1:4]
        k3[..., 2, :] += k5[..., 4, 1:4]
        k3[..., :, 0] += k5[..., 1:4, 0]
        k3[..., :, 2] += k5[..., 1:4, 4]
        for yi, yo in ((0, 0), (4, 2)):
            for xi, xo in ((0, 0), (4, 2)):
                k3[..., yo, xo] += k5[..., yi, xi]
    else:
        k3 = k5[..., 1:4, 1:4]
    w = torch.cat([k3, km], 2)  # (5, 4, C + 16, 3, 3)
    # tail's output order: residual channel c of phase p at c * 4 + p, then the 4 phases' logits
    return {"tail.weight": w.reshape(20, C + 16, 3, 3).contiguous(), "tail.bias": bias.reshape(20).contiguous()}


def init_from(model: MotionDecoder, state: dict[str, torch.Tensor]) -> list[str]:
    """Another run's weights (train_motion --init-from): every entry of the same name and shape loads; a half-size tail
    from a full-size one is half_tail_from_full's (when the 1/2-size channels agree). The keys left fresh."""
    own = model.state_dict()
    take = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if model.shape.half_tail and "res.weight" in state and "up1.1.weight" in state:
        tail = half_tail_from_full(state)
        if tail["tail.weight"].shape == own["tail.weight"].shape:
            take.update(tail)
    model.load_state_dict(take, strict=False)
    return [k for k in own if k not in take]


__all__ = [
    "EXPR_DIM",
    "MotionDecoder",
    "half_tail_from_full",
    "init_from",
    "MotionShape",
    "N_PARTS",
    "PartPrior",
    "part_grids",
    "part_maps",
    "mix_grid",
    "warp",
]
