"""The cut-out draw's device half (engines/tiny/cutout_torch.py) as one Triton kernel: every frame's layers sampled,
laid and box-filtered in one launch, each pixel's sub-pixels kept in registers from the first layer to the pixel.

cutout_torch's torch ops take every laid sub-pixel of a call (some 220 million a chunk of 200 streams) through ~40
elementwise ops, each a pass over memory, then lay them slot after slot by gather and scatter: 1.1 s a chunk of 800
frames on an H100, 0.19 s with the sampling compiled (docs/bench/cutout_gpu_2026-12-07). Here a program owns a tile
of one frame's pixels, walks that frame's laid layers in its drawing order (the host's plan, sorted by frame, then
slot) and, for each layer whose box meets the tile, maps, clamps and samples the tile's sub-pixels (the same
arithmetic as cutout_torch._samples, float32) and lays them 'over' what is under; the tile's sub-pixels are then
averaged to pixels and written once, [-1, 1] premultiplied as the torch draw writes them. No sub-pixel reaches
memory.

Triton is imported when a draw asks for this kernel: the CPU serving path never does. With TRITON_INTERPRET=1 the
same kernel runs on the CPU (numpy), which is how the tests compare it with the torch draw on a machine without a GPU.
This module also says where Triton's kernels (this one and the compose's, engines/tiny/triton_kernels.py) can run and
serve by default: `available`, `serves_on`, `checked`.
"""

from __future__ import annotations

import numpy as np
import torch

from avatarcast.engines.backends.base import BackendError
from avatarcast.engines.tiny.pinned import to_device

# a program's tile of pixels (rows, columns): 16 x 32 pixels, 2,048 sub-pixels at the cut-out's scale 2
TILE_H, TILE_W = 16, 32


def available() -> str | None:
    """None when the kernels can run here, else why not (the words an error or a skipped test shows)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (it comes with torch's CUDA wheels; pip install triton for the CPU interpreter)"
    return None


def checked(kernel: str, kernels: tuple[str, ...], what: str) -> str:
    """`kernel` if it is one of `kernels` and can run here ("triton": Triton installed); `what` names the user.

    Raises:
        BackendError: another name, or "triton" without Triton.
    """
    if kernel not in kernels:
        raise BackendError(f"{what}'s kernel: one of {', '.join(kernels)}; not {kernel!r}")
    if kernel == "triton" and (why := available()) is not None:
        raise BackendError(f"{what}'s triton kernel: {why}")
    return kernel


def serves_on(device: torch.device | str) -> bool:
    """Whether the kernels serve by default on `device`: CUDA, where Triton is (on the CPU the interpreter runs them,
    for tests, far slower than torch's ops)."""
    return torch.device(device).type == "cuda" and available() is None


def draw(
    pieces: tuple[np.ndarray, ...], sizes: np.ndarray, scale: int, tex: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """The laid layers of N frames of window sizes `sizes` (N, 2: rows, columns) drawn on `device` -> flat float32,
    frame after frame (4, rows, columns) each, premultiplied in [-1, 1] (transparent where a frame lays nothing).
    pieces: cutout_torch.Pieces' arrays (frame, slot, box, texel, stride, nums), one row a laid layer. The caller
    (cutout_torch.draw_frames_t) has checked that Triton is here (`checked`).
    """
    N = len(sizes)
    h, w = sizes[:, 0].astype(np.int64), sizes[:, 1].astype(np.int64)
    first = np.concatenate([[0], np.cumsum(4 * h * w)])
    out = torch.empty(int(first[-1]), dtype=torch.float32, device=device)
    if N == 0:
        return out
    # a frame's pieces one after another, each frame's in its drawing order
    frame, slot, box, texel, stride, nums_h = pieces
    order = np.lexsort((slot, frame))
    frame_pieces = np.searchsorted(frame[order], np.arange(N + 1))
    ints = np.concatenate([box, texel[:, None], stride[:, None]], 1)[order]
    frames = np.stack([h, w, first[:-1]], 1)
    # one copy of the integers to the device, one of the numbers
    flat = to_device(np.concatenate([frame_pieces, frames.ravel(), ints.ravel()]).astype(np.int64), device, torch.long)
    nums = to_device(nums_h[order].astype(np.float32).ravel(), device)
    tiles_h, tiles_w = -(-int(h.max()) // TILE_H), -(-int(w.max()) // TILE_W)
    from avatarcast.engines.tiny.triton_kernels import draw_tiles

    draw_tiles[(N, tiles_h * tiles_w)](
        tex,
        nums,
        flat[N + 1 + 3 * N :],
        flat[: N + 1],
        flat[N + 1 : N + 1 + 3 * N],
        out,
        tiles_w,
        S=int(scale),
        TH=TILE_H,
        TW=TILE_W,
    )
    return out
