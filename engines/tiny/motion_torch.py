"""Architecture 3's networks on torch (engines/tiny/motion_backends.MotionBackend): for training's evaluations,
checkpoints that are not exported, and GPUs. Serving on the CPU uses the exported graphs instead."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avatarcast.engines.backends.base import BackendError
from avatarcast.engines.tiny.motion import MotionDecoder, shape_from_dict
from avatarcast.engines.tiny.motion_denoiser import MotionDenoiser, build_denoiser


def load_decoder(decoder: str | Path) -> tuple[MotionDecoder, dict]:
    """tools.train_motion's kept EMA weights (`motion_ema.pt`, its shape in the file), float32, and the raw file."""
    st = torch.load(Path(decoder), map_location="cpu")
    dec = MotionDecoder(shape_from_dict(st.get("shape")))
    dec.load_state_dict({k: v.float() for k, v in st["ema"].items()})
    return dec, st


def load_checkpoints(decoder: str | Path, denoiser: str | Path) -> tuple[MotionDecoder, MotionDenoiser, dict, dict]:
    """Training's kept EMA weights, float32: the decoder (`load_decoder`) and the denoiser
    (tools.train_motion_den's `motion_den.pt` / `motion_den_best.pt`, its size and the motion's mean and std in the
    file). Also returns both raw checkpoints (steps, normalization)."""
    dec, st = load_decoder(decoder)
    sd = torch.load(Path(denoiser), map_location="cpu")
    den = build_denoiser(sd.get("arch"))
    den.load_state_dict({k: v.float() for k, v in sd["ema"].items()})
    return dec, den, st, sd


@dataclass(frozen=True)
class TorchReference:
    """One avatar's reference on the backend's device."""

    ref_win: torch.Tensor  # (1, 4, pad_H, window_W)
    atlas: torch.Tensor | None  # (1, K, 4, pad_H, window_W)
    feats: tuple[torch.Tensor, ...]  # the decoder's reference features


class TorchMotionBackend:
    name = "torch"
    cheaper_draw = False  # training's checkpoints: one decoder

    def __init__(self, decoder: MotionDecoder, denoiser: MotionDenoiser, device: str = "cpu"):
        self.device = torch.device(device)
        self.decoder = decoder.to(self.device).eval()
        self.denoiser = denoiser.to(self.device).eval()
        self.atlas = int(decoder.shape.atlas)

    def prepare(self, ref_win: np.ndarray, atlas: np.ndarray | None) -> TorchReference:
        ref = torch.from_numpy(np.ascontiguousarray(ref_win, np.float32)).to(self.device)
        at = None if atlas is None else torch.from_numpy(np.ascontiguousarray(atlas, np.float32)).to(self.device)
        with torch.no_grad():
            feats = tuple(self.decoder.encode_reference(ref))
        return TorchReference(ref, at, feats)

    def draw(
        self,
        ref: TorchReference,
        motions: np.ndarray,
        ref_motion: np.ndarray,
        box: tuple[int, int, int, int],
        cheaper: bool = False,
    ) -> np.ndarray:
        if cheaper:
            raise BackendError("the torch motion backend has no cheaper draw")
        with torch.no_grad():
            m = torch.from_numpy(np.ascontiguousarray(motions, np.float32)).to(self.device)
            n = len(m)
            rm = torch.from_numpy(np.ascontiguousarray(ref_motion, np.float32)).to(self.device)[None].expand(n, -1)
            feats = tuple(f.expand(n, *f.shape[1:]) for f in ref.feats)
            atlas = None if ref.atlas is None else ref.atlas.expand(n, *ref.atlas.shape[1:])
            y = self.decoder(m, rm, ref.ref_win.expand(n, -1, -1, -1), feats, box=box, atlas=atlas)
            return y.float().cpu().numpy()

    def denoise(self, x, t, d, ctx, ref, emotion, intensity) -> np.ndarray:
        dev = self.device

        def f(a, dtype=torch.float32):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=dev)

        with torch.no_grad():
            v = self.denoiser(f(x), f(t), f(d), f(ctx), f(ref), f(emotion, torch.long), f(intensity))
        return v.float().cpu().numpy()


__all__ = ["TorchMotionBackend", "TorchReference", "load_checkpoints", "load_decoder"]
