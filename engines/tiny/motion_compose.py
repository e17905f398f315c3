"""Architecture 3's frames composed on the torch device: the drawn boxes laid in the window, the effects' sprites over
them, RGBA out, cut to the frame; many streams at once.

MotionEngine._compose does this in numpy on the host, one stream at a time: on CUDA that was 75-79% of a chunk
(docs/training/motion.md), and it needed the drawn boxes copied to the host as float32. Here the frames stay on the
device until the engine copies them out as uint8, once (or never: the bench's gpu_resident loop). The arithmetic is
_compose's, operation for operation, in float32 (the sprites' sampling coordinates in float64, as numpy's), so the
frames are _compose's to the bit except where two effects overlap: numpy lays the effects on a canvas and the canvas
over the frame, this lays them over the frame one after the other (the same 'over', associated the other way), which
moves a few pixels by a level (tests/engines/test_motion_torch_folder.py measures it).

What stays on the host: which effects are on in each frame and where they land (EffectLayer.placements_many: numpy
over all of an avatar's frames at once, the same numbers as the numpy path's placements and sampling frame by frame,
so both lay the same pictures).

On CUDA the draws and composes run on a CUDA stream of their own (`queue`), and `launch` leaves a call's frames on
their way to the host: the engine's next call samples and plans on the host while the device draws this one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.engines.tiny.effects import EffectLayer, Placements, sample_coords
from avatarcast.engines.tiny.host_pool import HostPool, Job, run_here
from avatarcast.engines.tiny.pinned import PinnedFrames, to_device

Box = tuple[int, int, int, int]  # window (row, column, height, width)

# how the frames are composed: "torch" (ops over the float window) or "triton" (one kernel a go: each pixel read
# from its box or its effects' canvas and written once as uint8; engines/tiny/triton_kernels.compose_tiles)
KERNELS = ("torch", "triton")
MAX_FRAMES_TRITON = 2048  # frames the triton kernel composes in one go: effect canvases of ~2.8 MB each for those shown


@dataclass(frozen=True)
class DeviceSprites:
    """One avatar's effect sprites on the device: per particle slot (EffectLayer's), uint8 (sizes, offsets, h, w, 4)
    straight alpha (one tensor for all slots of a kind)."""

    layer: EffectLayer
    pics: tuple[torch.Tensor, ...]


class DeviceCompose:
    """Composes frames on `device`, at most `max_frames` window-sized float frames at a time (each ~2.8 MB, and a
    few copies of it while composing)."""

    def __init__(
        self, window: TinyConfig, device: torch.device | str, max_frames: int = 256, kernel: str | None = None
    ):
        from avatarcast.engines.tiny.cutout_triton import serves_on

        self.window = window
        self.device = torch.device(device)
        self.max_frames = int(max_frames)
        self.kernel = "torch"  # by default Triton's on CUDA where Triton is
        self._stream: torch.cuda.Stream | None = None  # `queue`'s, made on first use
        self.use_kernel(kernel or ("triton" if serves_on(self.device) else "torch"))

    def use_kernel(self, kernel: str) -> None:
        """Compose with `kernel`, one of KERNELS.

        Raises:
            BackendError: another name, or "triton" without Triton.
        """
        from avatarcast.engines.tiny.cutout_triton import checked

        self.kernel = checked(kernel, KERNELS, "the device compose")

    @property
    def pipelined(self) -> bool:
        """Whether `launch` leaves the frames on their way (CUDA), so the host can go on to the next call."""
        return self.device.type == "cuda"

    def queue(self) -> contextlib.AbstractContextManager:
        """The CUDA stream the draws and composes run on, current (after what the current stream has queued: the
        avatars' tensors, the denoiser's work), so a call's draw and the next call's sampling, on the current stream,
        overlap; elsewhere nothing changes. Every decode on the device goes through it, launched or not, so each is
        ordered with a launched call still running (they share the joined texels and the avatars' tensors)."""
        if not self.pipelined:
            return contextlib.nullcontext()
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        return torch.cuda.stream(self._stream)

    def launch(self, make: Callable[[], tuple[torch.Tensor, Any]]) -> PinnedFrames:
        """`make()`'s frames (and what its queued work reads, kept until done), made on `queue`'s stream and copied to
        page-locked memory there without a wait. The frames are handed out as views of that memory, as
        MotionEngine.decode_chunks hands its copy out."""
        with self.queue():
            start, done = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            frames, keep = make()
            host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
            host.copy_(frames, non_blocking=True)
            done.record()
        return PinnedFrames(host, (start, start, done), keep=(frames, keep), copy_out=False)

    def _put(self, vals, dtype: torch.dtype) -> torch.Tensor:
        """Host numbers on the device without waiting for its queue (a dozen waits an effect otherwise:
        engines/tiny/pinned.py)."""
        return to_device(vals, self.device, dtype)

    def sprites(self, layer: EffectLayer) -> DeviceSprites:
        """The avatar's sprites copied to the device once (about 5 MB of uint8 an avatar), each kind's once."""
        on_device: dict[int, torch.Tensor] = {}
        for c in layer.crops:
            if id(c) not in on_device:
                on_device[id(c)] = torch.from_numpy(c).to(self.device)
        return DeviceSprites(layer, tuple(on_device[id(c)] for c in layer.crops))

    def frames(
        self,
        drawn: Sequence[torch.Tensor],
        boxes: Sequence[Box],
        motions: np.ndarray,
        sprites: Sequence[DeviceSprites],
        out: torch.Tensor | None = None,
        pool: HostPool | None = None,
    ) -> torch.Tensor:
        """Stream i's drawn box `drawn[i]` (n, 4, h, w) at window box `boxes[i]`, its raw motions `motions[i]` (n, D)
        and its avatar's sprites -> uint8 RGBA frames (S, n, 360, 640, 4) on the device (into `out` if given). pool:
        where the avatars' effect placements run (`_placed`)."""
        S, n = motions.shape[:2]
        w = self.window
        if out is None:
            out = torch.zeros((S, n, w.height, w.width, 4), dtype=torch.uint8, device=self.device)
        # the triton kernel keeps no float window, only the effects' canvases: all streams in one go up to
        # MAX_FRAMES_TRITON frames (the effects laid once for all of them: the host's cost is per go)
        cap = MAX_FRAMES_TRITON if self.kernel == "triton" else self.max_frames
        per = max(1, cap // max(1, n))
        for i0 in range(0, S, per):
            i1 = min(S, i0 + per)
            placed = self._placed(motions[i0:i1], sprites[i0:i1], pool)
            if self.kernel == "triton":
                self._frames_triton(drawn[i0:i1], boxes[i0:i1], placed, out[i0:i1])
                continue
            y = self._window(drawn[i0:i1], boxes[i0:i1], n)
            self._effects(y, placed)
            rgba = _window_to_rgba(y[:, :, w.pad_top : w.pad_top + w.height])
            out[i0:i1, :, :, w.window_x0 : w.window_x0 + w.window_width] = rgba.view(i1 - i0, n, *rgba.shape[1:])
        return out

    def _window(self, drawn: Sequence[torch.Tensor], boxes: Sequence[Box], n: int) -> torch.Tensor:
        """The padded window (S * n, 4, pad_H, window_W), transparent (-1) but for each stream's box (cut where it
        reaches past the window: MotionEngine.bucket_box)."""
        w = self.window
        H, W = w.pad_height, w.window_width
        y = torch.full((len(drawn) * n, 4, H, W), -1.0, device=self.device)
        for k, (d, (by, bx, bh, bw)) in enumerate(zip(drawn, boxes)):
            bh, bw = min(bh, H - by), min(bw, W - bx)
            y[k * n : (k + 1) * n, :, by : by + bh, bx : bx + bw] = d[..., :bh, :bw].float().clamp(-1, 1)
        return y

    def _effects(self, y: torch.Tensor, placed: tuple[np.ndarray, dict]) -> None:
        """EffectLayer.lay on every frame of y (S * n, 4, H, W), in place, as `_placed` placed them: each effect in
        the renderer's order, all frames that show it at once."""
        shown, groups = placed
        if not len(shown):
            return
        rows = self._put(shown, torch.long)
        u = (y[rows] + 1.0) * 0.5
        self._lay_all(u, shown, groups)
        y[rows] = u * 2.0 - 1.0

    def _placed(
        self, motions: np.ndarray, sprites: Sequence[DeviceSprites], pool: HostPool | None = None
    ) -> tuple[np.ndarray, dict]:
        """The frames (rows of S * n) that show an effect, sorted, and the pictures laid, by effect (particle slot).
        The placements are worked out an avatar at a time over all its streams' frames
        (EffectLayer.placements_many: numpy arrays, not Python per frame), in `pool`'s workers side by side if given."""
        n = motions.shape[1]
        streams: dict[int, list[int]] = {}  # each avatar's (sprites') streams
        for k, sp in enumerate(sprites):
            streams.setdefault(id(sp), []).append(k)
        jobs = [
            Job(EffectLayer.placements_many, sprites[ks[0]].layer, _itself, (motions[ks].reshape(len(ks) * n, -1),))
            for ks in streams.values()
        ]
        got = run_here(jobs) if pool is None else pool.submit(jobs)()
        shown_parts: list[np.ndarray] = []  # frames with an effect on: numpy takes them through [0, 1] and back
        # one call per effect (a particle slot: one picture a frame), whatever the avatar: avatars' pictures differ in
        # size, and _lay pads them to the largest with transparent texels, which the sampling reads as it reads
        # outside a picture (0), so the frames are those of a call per picture size
        groups: dict[int, list[tuple[DeviceSprites, np.ndarray, Placements]]] = {}
        for ks, placements in zip(streams.values(), got):
            sp = sprites[ks[0]]
            rows_of = (np.asarray(ks)[:, None] * n + np.arange(n)).ravel()  # these motions' rows of y
            for pl in placements:
                shown_parts.append(rows_of[pl.on])
                if len(pl.frames):
                    groups.setdefault(pl.effect, []).append((sp, rows_of[pl.frames], pl))
        shown = np.unique(np.concatenate(shown_parts)) if shown_parts else np.zeros(0, np.int64)
        return shown, groups

    def _lay_all(self, u: torch.Tensor, shown: np.ndarray, groups: dict) -> None:
        """Every effect's pictures over u (len(shown), 4, H, W) in [0, 1], the renderer's order of effects."""
        for key in sorted(groups):
            self._lay(u, groups[key], np.searchsorted(shown, np.concatenate([f for _, f, _ in groups[key]])))

    def _frames_triton(
        self, drawn: Sequence[torch.Tensor], boxes: Sequence[Box], placed: tuple[np.ndarray, dict], out: torch.Tensor
    ) -> None:
        """`frames` for some streams in one kernel (engines/tiny/triton_kernels.compose_tiles), into `out`: the
        effects laid on transparent canvases first (numpy's compose lays them so, then the canvas over the frame),
        then every pixel of the window read once from its box or its canvas and written once as uint8. placed:
        `_placed`'s, for these streams."""
        from avatarcast.engines.tiny.triton_kernels import compose_tiles

        w = self.window
        H, W = w.pad_height, w.window_width
        S, n = out.shape[:2]
        flat = torch.cat([d.reshape(-1) for d in drawn]).float()
        rows = []
        at = 0
        for d, (by, bx, bh, bw) in zip(drawn, boxes):
            dh, dw = int(d.shape[-2]), int(d.shape[-1])
            cut = (min(bh, H - by, dh), min(bw, W - bx, dw))
            rows += [(at + j * 4 * dh * dw, dh, dw, by, bx, *cut) for j in range(n)]
            at += n * 4 * dh * dw
        shown, groups = placed
        canvases = torch.zeros((max(1, len(shown)), 4, H, W), device=self.device)
        if len(shown):
            self._lay_all(canvases, shown, groups)
        canvas_of = np.full(S * n, -1, np.int64)
        canvas_of[shown] = np.arange(len(shown))
        ints = self._put(np.concatenate([np.asarray(rows, np.int64).ravel(), canvas_of]), torch.long)
        TH, TW = 16, 64
        tiles_w = -(-W // TW)
        compose_tiles[(S * n, -(-w.height // TH) * tiles_w)](
            flat,
            ints[: 7 * S * n],
            canvases,
            ints[7 * S * n :],
            out.view(torch.int32),
            w.pad_top,
            H,
            W,
            w.height,
            w.width,
            w.window_x0,
            tiles_w,
            TH=TH,
            TW=TW,
        )

    def _lay(self, u: torch.Tensor, laid: list[tuple[DeviceSprites, np.ndarray, Placements]], at: np.ndarray) -> None:
        """One effect's pictures over frames u (F, 4, H, W) in [0, 1], in place (one picture a frame: rows `at` of
        u): the region each fills (padded to the largest; the pad left alone), sampled bilinearly as
        effects._bilinear does. `laid`: per avatar, its sprites, and the effect's placements on its frames."""
        dev, f64 = self.device, torch.float64
        e = laid[0][2].effect

        def cat(get) -> np.ndarray:
            return np.concatenate([get(sp.layer, pl) for sp, _, pl in laid])

        def each(get) -> np.ndarray:  # an avatar's number, once a placement
            return cat(lambda layer, pl: np.full(len(pl.frames), get(layer), np.float64))

        ys0, ys1 = cat(lambda _, pl: pl.y0), cat(lambda _, pl: pl.y1)
        xs0, xs1 = cat(lambda _, pl: pl.x0), cat(lambda _, pl: pl.x1)
        P = len(ys0)
        # every per-picture number in two copies to the device (integers, float64), not one copy a column: each
        # copy is a page-locked buffer and a launch, and a chunk of 200 streams made a thousand of them
        ints = self._put(
            np.stack(
                [ys0, xs0, ys1 - ys0, xs1 - xs0, at, cat(lambda _, pl: pl.level), cat(lambda _, pl: pl.phase)]
            ).astype(np.int64),
            torch.long,
        ).view(7, P, 1, 1)
        y0, x0, hh, ww, fr_of = ints[0], ints[1], ints[2], ints[3], ints[4]
        nums = self._put(
            np.stack(
                [
                    np.zeros(P),  # the canvas's first pixel: the whole window's
                    cat(lambda _, pl: pl.c),
                    cat(lambda _, pl: pl.s),
                    cat(lambda _, pl: pl.tx),
                    cat(lambda _, pl: pl.ty),
                    each(lambda layer: layer.anchors[e][0]),
                    each(lambda layer: layer.anchors[e][1]),
                    each(lambda layer: layer.boxes[e][0]),
                    each(lambda layer: layer.boxes[e][1]),
                ]
            ).astype(np.float64),
            f64,
        ).view(9, P, 1, 1)
        K = int(((ys1 - ys0) * (xs1 - xs0)).sum())  # pixels filled, known here: no count read back
        Rh, Rw = int((ys1 - ys0).max()), int((xs1 - xs0).max())
        r = torch.arange(Rh, device=dev).view(1, Rh, 1)
        c = torch.arange(Rw, device=dev).view(1, 1, Rw)
        rows, cols = y0 + r, x0 + c  # (P, Rh, 1), (P, 1, Rw): canvas pixels
        # the numpy path's sampling, with each picture's numbers as (P, 1, 1) columns
        zero = nums[0]
        sx, sy = sample_coords(
            cols.to(f64),
            rows.to(f64),
            nums[1],
            nums[2],
            (zero, zero),
            (nums[3], nums[4]),
            (nums[5], nums[6]),
            (nums[7], nums[8]),
        )
        # the pictures, premultiplied float32 as canvas() makes them, with a zero row and column first
        lev, pha = ints[5].view(P), ints[6].view(P)
        ends = np.cumsum([0] + [len(pl.frames) for _, _, pl in laid])
        picked = [sp.pics[e][lev[a:b], pha[a:b]] for (sp, _, _), a, b in zip(laid, ends[:-1], ends[1:])]
        Ph, Pw = max(x.shape[1] for x in picked), max(x.shape[2] for x in picked)
        pics = torch.cat(
            [
                x if x.shape[1:3] == (Ph, Pw) else F.pad(x, (0, 0, 0, Pw - x.shape[2], 0, Ph - x.shape[1]))
                for x in picked
            ]
        )
        pic = pics.float() / 255.0
        pic = torch.cat([pic[..., :3] * pic[..., 3:], pic[..., 3:]], -1).permute(0, 3, 1, 2)
        ph, pw = pic.shape[2], pic.shape[3]
        padded = torch.zeros((P, 4, ph + 1, pw + 1), device=dev)
        padded[:, :, 1:, 1:] = pic
        p = _bilinear(padded.flatten(2), sx, sy, ph, pw)  # (P, 4, Rh, Rw)
        # over the frames, where each region is (the pad of a smaller region is not the picture's)
        inside = _where(((r < hh) & (c < ww)).flatten(), K)  # (P * Rh * Rw,) -> the K filled ones, in order
        fr = fr_of.expand(P, Rh, Rw).flatten()[inside]
        rr, cc = rows.expand(P, Rh, Rw).flatten()[inside], cols.expand(P, Rh, Rw).flatten()[inside]
        top = p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])[inside]  # (K, 4)
        under = u[fr, :, rr, cc]  # (K, 4)
        u[fr, :, rr, cc] = top + (1.0 - top[:, 3:4]) * under


def _itself(x: Any) -> Any:
    return x


def _where(mask: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of a 1-d mask's `count` true values, in order (mask[idx] is x[mask]'s selection): a boolean
    index reads the count back from the device, a wait for its queue; the caller knows it."""
    try:
        return torch.nonzero_static(mask, size=count).view(-1)
    except (NotImplementedError, RuntimeError):  # a torch without it on this device: the same indices, with the wait
        return mask.nonzero().view(-1)


def _bilinear(flat: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """effects._bilinear for P pictures at once: flat (P, C, (h + 1) * (w + 1)), each padded with a zero row and
    column first; sx, sy (P, Rh, Rw) float64 -> (P, C, Rh, Rw) float32."""
    P, C = flat.shape[:2]
    xf, yf = torch.floor(sx), torch.floor(sy)
    fx, fy = (sx - xf).float(), (sy - yf).float()
    xa, ya = xf.long(), yf.long()

    def at(i: torch.Tensor, n: int) -> torch.Tensor:
        return torch.where((i >= 0) & (i < n), i + 1, 0)

    xi, xj, yi, yj = at(xa, w), at(xa + 1, w), at(ya, h), at(ya + 1, h)

    def read(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        idx = (yy * (w + 1) + xx).flatten(1)[:, None].expand(P, C, -1)
        return flat.gather(2, idx).view(P, C, *sx.shape[1:])

    fx, fy = fx[:, None], fy[:, None]
    return (
        read(yi, xi) * ((1 - fx) * (1 - fy))
        + read(yi, xj) * (fx * (1 - fy))
        + read(yj, xi) * ((1 - fx) * fy)
        + read(yj, xj) * (fx * fy)
    )


def _window_to_rgba(x: torch.Tensor) -> torch.Tensor:
    """window.window_to_rgba on the device: premultiplied (B, 4, h, w) in [-1, 1] -> uint8 (B, h, w, 4)."""
    x = ((x + 1) * 0.5).clamp(0, 1)
    a = x[:, 3:4]
    rgb = (x[:, :3] / a.clamp(min=1.0 / 255)).clamp(0, 1)
    out = torch.cat([rgb, a], 1) * 255.0 + 0.5
    return out.to(torch.uint8).permute(0, 2, 3, 1)


__all__ = ["DeviceCompose", "DeviceSprites"]
