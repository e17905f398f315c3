"""Architecture 3's networks on torch (engines/tiny/motion_backends.MotionBackend): training's checkpoints (its
evaluations), and an exported folder's graphs read back into torch (`TorchMotionBackend.from_folder`: the shipped
folders on torch, CPU or CUDA; engines/tiny/motion_graph_weights.py). The CPU's default serves the graphs on
onnxruntime instead."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatarcast.engines.backends.base import BackendError
from avatarcast.engines.tiny.motion import MotionDecoder, pixel_centres, shape_from_dict
from avatarcast.engines.tiny.motion_denoiser import MotionDenoiser, build_denoiser
from avatarcast.engines.tiny.motion_weights import MotionManifest
from avatarcast.engines.tiny.pinned import to_device


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


def _placed(dec: MotionDecoder, device: torch.device, channels_last: bool) -> MotionDecoder:
    """The decoder on `device`, for inference; `channels_last`: its 4-d weights in that memory format."""
    dec = dec.to(device).eval()
    if channels_last:
        dec.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return dec


@dataclass(frozen=True)
class TorchReference:
    """One avatar's reference on the backend's device."""

    ref_win: torch.Tensor  # (1, 4, pad_H, window_W)
    atlas: torch.Tensor | None  # (1, K, 4, pad_H, window_W)
    feats: tuple[torch.Tensor, ...]  # the decoder's reference features


def device_roles(dev: torch.device, batch_streams: bool | None, compose: bool | None) -> tuple[bool, str | None]:
    """A torch motion backend's defaults on `dev`, each overridable: whether it draws many streams' boxes in one call
    (on CUDA), and where the engine composes the frames (engines/tiny/motion_compose.py): on CUDA the device, so the
    frames leave it once, as uint8; on the CPU numpy's _compose, which is as fast there (docs/training/motion.md)."""
    cuda = dev.type == "cuda"
    on_device = cuda if compose is None else bool(compose)
    return (cuda if batch_streams is None else bool(batch_streams)), (str(dev) if on_device else None)


class TorchMotionBackend:
    """The decoder and denoiser on a torch device. `copy_only`: the decoder draws without its generator (a folder
    exported --copy-only); `cheaper`: a copy-only decoder for draw(..., cheaper=True) (the folder's cheaper_draw).
    `batch_streams`: decode_chunks draws all streams in one call (draw_streams), on CUDA by default: there one call
    of many rows beats a call per stream; on the CPU each stream's own box is cheaper than the streams' common one."""

    name = "torch"
    draws_layers = False
    prepared_on_host = False

    def __init__(
        self,
        decoder: MotionDecoder,
        denoiser: MotionDenoiser,
        device: str = "cpu",
        copy_only: bool = False,
        cheaper: MotionDecoder | None = None,
        batch_streams: bool | None = None,
        max_rows: int = 256,
        compose: bool | None = None,
        amp: str | None = None,
        channels_last: bool = False,
        pad_rows: int = 0,
    ):
        self.max_rows = int(max_rows)
        # draw_streams_t's calls padded to a multiple of this many rows (0: not padded); on an H100 32 drew 2,320 fps
        # at 200 streams against 1,864 unpadded (docs/bench/motion_gpu_graphs_2026-12-06); off until its frames are
        # checked
        self.pad_rows = int(pad_rows)
        if amp not in (None, "bf16"):
            raise BackendError(f"amp: None or 'bf16', not {amp!r}")
        # the decoder's networks (the part-mask U-Net, the generator) under bfloat16 autocast: its coordinates and
        # grid sampling stay float32 (MotionDecoder.draw); it changes the frames (docs/bench/motion_gpu_fast_2026-12-06)
        self.amp = amp
        self._dev = torch.device(device)
        self.device = str(self._dev)  # "cpu", "cuda", "cuda:1": what the bench and the reports print
        self.decoder = _placed(decoder, self._dev, channels_last)
        self.channels_last = bool(channels_last)
        self.denoiser = denoiser.to(self._dev).eval()
        self.copy_only = copy_only
        self.cheaper = None if cheaper is None else _placed(cheaper, self._dev, channels_last)
        self.cheaper_draw = cheaper is not None
        self.atlas = int(decoder.shape.atlas)
        self.window_hw = (int(decoder.shape.pad_height), int(decoder.shape.window_width))
        self.batch_streams, self.compose_device = device_roles(self._dev, batch_streams, compose)

    @classmethod
    def from_folder(
        cls,
        manifest: MotionManifest,
        device: str = "cpu",
        verify: bool = True,
        batch_streams: bool | None = None,
        compose: bool | None = None,
        amp: str | None = None,
        channels_last: bool = False,
        pad_rows: int = 0,
    ) -> TorchMotionBackend:
        """An exported folder's graphs as torch networks (engines/tiny/motion_graph_weights.py), and the decoder of
        the folder its manifest names `cheaper_draw`, if any (checked to draw the same motions, copy-only).

        Raises:
            WeightsError: a graph missing or not its manifest's; GraphWeightsError: a weight that cannot be matched.
        """
        from avatarcast.engines.tiny.motion_backends import cheaper_manifest
        from avatarcast.engines.tiny.motion_graph_weights import (
            GraphWeightsError,
            decoder_from_folder,
            denoiser_from_folder,
        )

        dec, copy_only = decoder_from_folder(manifest, verify)
        den = denoiser_from_folder(manifest, verify)
        cheaper = None
        if manifest.cheaper_draw is not None:
            cheaper, cheaper_copy_only = decoder_from_folder(cheaper_manifest(manifest), verify)
            if not cheaper_copy_only:
                raise GraphWeightsError(
                    f"{manifest.path}: the cheaper_draw folder's decoder reads the reference's features: only a "
                    "copy-only decoder can draw with another folder's reference"
                )
        return cls(
            dec,
            den,
            device,
            copy_only,
            cheaper,
            batch_streams,
            compose=compose,
            amp=amp,
            channels_last=channels_last,
            pad_rows=pad_rows,
        )

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": self.device,
            "batch_streams": self.batch_streams,
            "compose_device": self.compose_device,
            "amp": self.amp,
            "channels_last": self.channels_last,
            "pad_rows": self.pad_rows,
        }

    def _autocast(self):
        return torch.autocast(self._dev.type, torch.bfloat16, enabled=self.amp == "bf16")

    @property
    def device_name(self) -> str | None:
        return torch.cuda.get_device_name(self._dev) if self._dev.type == "cuda" else None

    def tensor(self, a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return to_device(a, self._dev, dtype)  # not waiting for the device's queue (engines/tiny/pinned.py)

    def prepare(self, ref_win: np.ndarray, atlas: np.ndarray | None) -> TorchReference:
        if (atlas is None) != (self.atlas == 0) or (atlas is not None and atlas.shape[1] != self.atlas):
            got = None if atlas is None else atlas.shape
            raise BackendError(f"this decoder mixes {self.atlas} atlas faces; got {got}")
        ref = self.tensor(ref_win)
        at = None if atlas is None else self.tensor(atlas)
        with torch.inference_mode():
            # a copy-only decoder reads no features (a cheaper one reads none either)
            feats = () if self.copy_only else tuple(self.decoder.encode_reference(ref))
        return TorchReference(ref, at, feats)

    def layers(self, avatar: Any) -> Any:
        raise BackendError("the learnt decoder draws from a reference frame (prepare), not an avatar's layers")

    def _decoder(self, cheaper: bool) -> tuple[MotionDecoder, bool]:
        if not cheaper:
            return self.decoder, self.copy_only
        if self.cheaper is None:
            raise BackendError("this torch motion backend has no cheaper draw (its folder names no cheaper_draw)")
        return self.cheaper, True

    def _centres(self, box: tuple[int, int, int, int]) -> torch.Tensor:
        y0, x0, h, w = box
        like = torch.empty((), device=self._dev)
        return pixel_centres(h, w, like, self.window_hw, (y0, x0))

    def draw(
        self,
        ref: TorchReference,
        motions: np.ndarray,
        ref_motion: np.ndarray,
        box: tuple[int, int, int, int],
        cheaper: bool = False,
    ) -> np.ndarray:
        with torch.inference_mode():
            return self.draw_t(ref, self.tensor(motions), self.tensor(ref_motion), box, cheaper).float().cpu().numpy()

    def draw_t(
        self,
        ref: TorchReference,
        motions: torch.Tensor,
        ref_motion: torch.Tensor,
        box: tuple[int, int, int, int],
        cheaper: bool = False,
        host: np.ndarray | None = None,
    ) -> torch.Tensor:
        """`draw` on the device: raw motions (n, D) and the canonical one (D,) as tensors -> (n, 4, h, w) there.
        host: the motions on the host (motion_backends.DeviceDraws; the decoder reads the tensors only)."""
        dec, copy_only = self._decoder(cheaper)
        n = len(motions)
        rm = ref_motion.reshape(1, -1).expand(n, -1)
        feats = tuple(f.expand(n, *f.shape[1:]) for f in ref.feats)
        # one avatar's reference at batch 1, as the exported graph draws it (mixed_reference's matrix products)
        ref_win = ref.ref_win if ref.atlas is not None else ref.ref_win.expand(n, -1, -1, -1)
        with self._autocast():
            y = dec.draw(
                motions, rm, ref_win, feats, self._centres(box), ref.atlas, one_avatar=True, copy_only=copy_only
            )
        return y.float()

    def draw_streams_t(
        self,
        refs: list[TorchReference],
        motions: torch.Tensor,
        ref_motions: torch.Tensor,
        boxes: Sequence[tuple[int, int, int, int]],
        cheaper: bool = False,
        host: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Every stream's frames in one decoder call, on the device: refs (S,), raw motions (S, n, D) and the
        canonical ones (S, D) as tensors, and each stream's box (all of one size, anywhere in the window; one box
        for all: the streams' common one) -> (S, n, 4, h, w). Calls of at most `max_rows` rows (a row holds some
        30 MB of window-sized intermediates: 200 streams of 4 frames in one call would want 20-odd GB). host: the
        motions on the host (motion_backends.DeviceDraws; not read here)."""
        S, n = motions.shape[:2]
        if len(boxes) == 1:
            boxes = list(boxes) * S
        if len({b[2:] for b in boxes}) != 1 or len(boxes) != S:
            raise ValueError(f"one box a stream ({S}), all of one size; got {sorted({b[2:] for b in boxes})}")
        per = max(1, self.max_rows // max(1, n))
        if S > per:
            parts = [
                self.draw_streams_t(
                    refs[i : i + per], motions[i : i + per], ref_motions[i : i + per], boxes[i : i + per], cheaper
                )
                for i in range(0, S, per)
            ]
            return torch.cat(parts)
        extra = (-S) % max(1, self.pad_rows // max(1, n)) if self.pad_rows else 0
        if extra:
            # the last stream drawn again `extra` times and those rows dropped: a call's row count is then one of a
            # few, and cuDNN reuses its plans (each new row count was a new plan: about 1 ms of host time a
            # convolution, 112 ms a chunk of 200 streams on an H100; docs/bench/motion_gpu_fast_2026-12-06)
            y = self.draw_streams_t(
                refs + [refs[-1]] * extra,
                torch.cat([motions, motions[-1:].expand(extra, -1, -1)]),
                torch.cat([ref_motions, ref_motions[-1:].expand(extra, -1)]),
                list(boxes) + [boxes[-1]] * extra,
                cheaper,
            )
            return y[:S]
        dec, copy_only = self._decoder(cheaper)
        m = motions.reshape(S * n, -1)
        rm = ref_motions[:, None].expand(S, n, -1).reshape(S * n, -1)
        mixed = self._mixed(dec, refs, motions)
        feats = tuple(
            torch.cat([r.feats[k].expand(n, *r.feats[k].shape[1:]) for r in refs]) for k in range(len(refs[0].feats))
        )
        with self._autocast():
            y = dec.draw(m, rm, mixed, feats, self._row_centres(boxes, n), None, copy_only=copy_only, premixed=True)
        return y.float().reshape(S, n, *y.shape[1:])

    @staticmethod
    def _mixed(dec: MotionDecoder, refs: list[TorchReference], motions: torch.Tensor) -> torch.Tensor:
        """Each stream's reference mixed for its own frames (S * n, 4, H, W): the weights of every row in one call,
        then two matrix products per run of streams of one avatar (consecutive refs that are one), not per stream
        (the same products, row for row, as mixed_reference's of one stream: 400 products and some 4,000 small
        kernels a chunk of 200 streams were one stream at a time). To the bit on the CPU; on CUDA cuBLAS picks
        another kernel for more rows, 1 ulp apart (docs/bench/motion_gpu_graphs_2026-12-06)."""
        S, n = motions.shape[:2]
        if not dec.shape.atlas or n == 1:  # mixed_reference's other branches: as they were, a stream at a time
            return torch.cat(
                [dec.mixed_reference(motions[i], r.ref_win, r.atlas).expand(n, -1, -1, -1) for i, r in enumerate(refs)]
            )
        H, W = refs[0].ref_win.shape[-2:]
        w = dec.mix_weights(motions.reshape(S * n, -1))
        out = torch.empty((S * n, refs[0].ref_win[0].numel()), device=motions.device)
        i = 0
        while i < S:
            j = i + 1
            while j < S and refs[j] is refs[i]:
                j += 1
            r, rows = refs[i], slice(i * n, j * n)
            if r.atlas is None:
                raise BackendError(f"this decoder mixes {dec.shape.atlas} atlas faces; the avatar has none")
            torch.mm(w[rows, :1], r.ref_win.float().flatten(1), out=out[rows])
            out[rows] += w[rows, 1:] @ r.atlas.float().flatten(0, 1).flatten(1)
            i = j
        return out.view(S * n, -1, H, W)

    def _row_centres(self, boxes: Sequence[tuple[int, int, int, int]], n: int) -> torch.Tensor:
        """The decoder's pixel centres for streams' boxes of one size, n rows each: (h, w, 2) where they are one
        box, else (S * n, h, w, 2), one box a row."""
        if len(set(boxes)) == 1:
            return self._centres(boxes[0])
        h, w = boxes[0][2], boxes[0][3]
        origin = self.tensor(np.array([b[:2] for b in boxes], np.float32)).repeat_interleave(n, 0)
        return pixel_centres(h, w, origin, self.window_hw, origin)

    def draw_streams(
        self,
        refs: list[TorchReference],
        motions: np.ndarray,
        ref_motions: np.ndarray,
        box: tuple[int, int, int, int],
        cheaper: bool = False,
    ) -> np.ndarray:
        """`draw_streams_t` of one box from and to numpy (the engine's host-side compositing reads it)."""
        with torch.inference_mode():
            y = self.draw_streams_t(refs, self.tensor(motions), self.tensor(ref_motions), [box], cheaper)
            return y.float().cpu().numpy()

    def denoise(self, x, t, d, ctx, ref, emotion, intensity) -> np.ndarray:
        f = self.tensor
        with torch.inference_mode():
            v = self.denoiser(f(x), f(t), f(d), f(ctx), f(ref), f(emotion, torch.long), f(intensity))
        return v.float().cpu().numpy()


__all__ = ["TorchMotionBackend", "TorchReference", "load_checkpoints", "load_decoder"]
