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
        self._banked: tuple[tuple[DeviceSprites, ...], torch.Tensor, dict] | None = None  # `_bank`'s, kept
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
        placing: list[Callable[[], tuple[np.ndarray, dict]]] | None = None,
    ) -> torch.Tensor:
        """Stream i's drawn box `drawn[i]` (n, 4, h, w) at window box `boxes[i]`, its raw motions `motions[i]` (n, D)
        and its avatar's sprites -> uint8 RGBA frames (S, n, 360, 640, 4) on the device (into `out` if given).
        placing: `placing(motions, sprites, pool)`, where the caller started it before (so a host pool's workers
        place while it draws); else the placements are worked out here."""
        S, n = motions.shape[:2]
        w = self.window
        if out is None:
            out = torch.zeros((S, n, w.height, w.width, 4), dtype=torch.uint8, device=self.device)
        per = self._streams_a_go(n)
        placing = self.placing(motions, sprites) if placing is None else placing
        for i0, placed_go in zip(range(0, S, per), placing):
            i1 = min(S, i0 + per)
            placed = placed_go()
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

    def _streams_a_go(self, n: int) -> int:
        """Streams of n frames `frames` composes in one go: the triton kernel keeps no float window, only the effects'
        canvases, so all streams up to MAX_FRAMES_TRITON frames (the effects laid once for all of them: the host's
        cost is per go); the torch ops up to max_frames."""
        return max(1, (MAX_FRAMES_TRITON if self.kernel == "triton" else self.max_frames) // max(1, n))

    def placing(
        self, motions: np.ndarray, sprites: Sequence[DeviceSprites], pool: HostPool | None = None
    ) -> list[Callable[[], tuple[np.ndarray, dict]]]:
        """`_placed` for each go of `frames`, started now (in `pool`'s workers where given): per go, the function
        that gives its result."""
        per = self._streams_a_go(motions.shape[1])
        return [self._placing(motions[i : i + per], sprites[i : i + per], pool) for i in range(0, len(motions), per)]

    def _placed(self, motions: np.ndarray, sprites: Sequence[DeviceSprites]) -> tuple[np.ndarray, dict]:
        """The frames (rows of S * n) that show an effect, sorted, and the pictures laid, by effect (particle slot).
        The placements are worked out an avatar at a time over all its streams' frames
        (EffectLayer.placements_many: numpy arrays, not Python per frame); `placing` sends them to a host pool."""
        return self._placing(motions, sprites, None)()

    def _placing(
        self, motions: np.ndarray, sprites: Sequence[DeviceSprites], pool: HostPool | None
    ) -> Callable[[], tuple[np.ndarray, dict]]:
        n = motions.shape[1]
        streams: dict[int, list[int]] = {}  # each avatar's (sprites') streams
        for k, sp in enumerate(sprites):
            streams.setdefault(id(sp), []).append(k)
        jobs = [
            Job(EffectLayer.placements_many, sprites[ks[0]].layer, _itself, (motions[ks].reshape(len(ks) * n, -1),))
            for ks in streams.values()
        ]
        if pool is None:
            done = run_here(jobs)
            return lambda: self._gather(motions, sprites, streams, done)
        pending = pool.submit(jobs)
        return lambda: self._gather(motions, sprites, streams, pending())

    def _gather(
        self, motions: np.ndarray, sprites: Sequence[DeviceSprites], streams: dict[int, list[int]], got: list
    ) -> tuple[np.ndarray, dict]:
        """`_placed`'s result from each avatar's placements (`got`, in `streams`' order)."""
        n = motions.shape[1]
        shown_parts: list[np.ndarray] = []  # frames with an effect on: numpy takes them through [0, 1] and back
        # by effect (a particle slot: one picture a frame), whatever the avatar: `_lay_all` lays the effects in the
        # renderer's order, each placement reading its own avatar's picture
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
        """Every effect's pictures over u (len(shown), 4, H, W) in [0, 1], in the renderer's order of effects: every
        pixel they fill, of every effect, sampled in one go from the joined pictures (`_bank`), bilinearly as
        effects._bilinear does, then laid 'over' one effect after the other (a frame shows one picture of an effect,
        so an effect's pixels do not meet). A go per effect was ~40 small ops each, most of the compose's host time
        on CUDA at 200 streams (docs/bench/cutout_triton_2026-12-07)."""
        laid = [x for key in sorted(groups) for x in groups[key]]  # (sprites, frames, placements), effect by effect
        if not laid:
            return
        dev, f64 = self.device, torch.float64
        bank, firsts = self._bank([sp for sp, _, _ in laid])

        def cat(get, dtype) -> np.ndarray:  # one number a placement, from each (avatar, effect)'s placements
            return np.concatenate(
                [np.broadcast_to(np.asarray(get(sp, pl), dtype), len(pl.frames)) for sp, _, pl in laid]
            )

        ys0, ys1 = cat(lambda _, pl: pl.y0, np.int64), cat(lambda _, pl: pl.y1, np.int64)
        xs0, xs1 = cat(lambda _, pl: pl.x0, np.int64), cat(lambda _, pl: pl.x1, np.int64)
        ph = cat(lambda sp, pl: sp.pics[pl.effect].shape[2], np.int64)  # (levels, variants, h, w, 4)
        pw = cat(lambda sp, pl: sp.pics[pl.effect].shape[3], np.int64)
        variants = cat(lambda sp, pl: sp.pics[pl.effect].shape[1], np.int64)
        pic = cat(lambda _, pl: pl.level, np.int64) * variants + cat(lambda _, pl: pl.phase, np.int64)
        base = cat(lambda sp, pl: firsts[(id(sp), pl.effect)], np.int64) + pic * (ph + 1) * (pw + 1)
        at = np.searchsorted(shown, np.concatenate([f for _, f, _ in laid]))
        areas = (ys1 - ys0) * (xs1 - xs0)
        K = int(areas.sum())  # pixels filled, known here: no count read back
        # every per-picture number in two copies to the device (integers, float64), not one copy a column: each
        # copy is a page-locked buffer and a launch
        ints = self._put(np.stack([ys0, xs0, xs1 - xs0, at, base, ph, pw, areas, np.cumsum(areas) - areas]), torch.long)

        def each(get) -> np.ndarray:  # an avatar's number for the effect, once a placement
            return cat(lambda sp, pl: get(sp.layer, pl.effect), np.float64)

        nums = self._put(
            np.stack(
                [
                    cat(lambda _, pl: pl.c, np.float64),
                    cat(lambda _, pl: pl.s, np.float64),
                    cat(lambda _, pl: pl.tx, np.float64),
                    cat(lambda _, pl: pl.ty, np.float64),
                    each(lambda layer, k: layer.anchors[k][0]),
                    each(lambda layer, k: layer.anchors[k][1]),
                    each(lambda layer, k: layer.boxes[k][0]),
                    each(lambda layer, k: layer.boxes[k][1]),
                ]
            ),
            f64,
        )
        # pixel k of the K: its placement, and its place in that placement's region, row after row
        P = len(areas)
        of = torch.repeat_interleave(torch.arange(P, device=dev), ints[7], output_size=K)
        j = torch.arange(K, device=dev) - ints[8][of]
        w_of = ints[2][of]
        rows, cols = ints[0][of] + torch.div(j, w_of, rounding_mode="floor"), ints[1][of] + j % w_of
        per = nums[:, of]  # (8, K)
        # the numpy path's sampling (its whole-window canvas's first pixel is (0, 0))
        sx, sy = sample_coords(
            cols.to(f64), rows.to(f64), per[0], per[1], (0.0, 0.0), (per[2], per[3]), (per[4], per[5]), (per[6], per[7])
        )
        top = _bilinear(bank, ints[4][of], sx, sy, ints[5][of], ints[6][of])  # (K, 4)
        fr = ints[3][of]
        # each effect's pixels: its groups' placements, their pixels in the K
        first_of = np.concatenate([[0], np.cumsum([len(pl.frames) for _, _, pl in laid])])
        k_at = np.concatenate([[0], np.cumsum(areas)])
        ends = [0] + [int(k_at[first_of[b]]) for _, b in _runs_of([pl.effect for _, _, pl in laid])]
        for k0, k1 in zip(ends[:-1], ends[1:]):  # effect after effect
            f, r, c, t = fr[k0:k1], rows[k0:k1], cols[k0:k1], top[k0:k1]
            u[f, :, r, c] = t + (1.0 - t[:, 3:4]) * u[f, :, r, c]

    def _bank(self, sprites: Sequence[DeviceSprites]) -> tuple[torch.Tensor, dict[tuple[int, int], int]]:
        """These avatars' effect pictures in one buffer (texels, 4) uint8, each bordered with a zero row and column
        first (the bilinear read's outside), and where each (id of the avatar's sprites, effect slot) starts: one
        gather reads any picture of any avatar. Kept while the avatars are the last call's (~17 MB an avatar)."""
        order = tuple(sorted({id(sp): sp for sp in sprites}.values(), key=id))
        kept = self._banked
        if kept is not None and len(kept[0]) == len(order) and all(a is b for a, b in zip(kept[0], order)):
            return kept[1], kept[2]
        parts, firsts, at = [], {}, 0
        for sp in order:
            start: dict[int, int] = {}  # slots of one kind share a tensor: bordered once
            for k, pics in enumerate(sp.pics):
                if id(pics) not in start:
                    start[id(pics)] = at
                    parts.append(F.pad(pics, (0, 0, 1, 0, 1, 0)).reshape(-1, 4))
                    at += len(parts[-1])
                firsts[(id(sp), k)] = start[id(pics)]
        bank = torch.cat(parts) if parts else torch.zeros((0, 4), dtype=torch.uint8, device=self.device)
        self._banked = (order, bank, firsts)
        return bank, firsts

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


def _itself(x: Any) -> Any:
    return x


def _runs_of(keys: list) -> list[tuple[int, int]]:
    """The (first, end) of each run of equal keys, in order."""
    out, a = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[a]:
            out.append((a, i))
            a = i
    return out


def _bilinear(
    bank: torch.Tensor, base: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, h: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """effects._bilinear for K pixels of pictures in `bank` ((texels, 4) uint8, straight alpha, each picture bordered
    with a zero row and column first; pixel k's picture at base[k], of h[k] x w[k]); sx, sy (K,) float64 -> (K, 4)
    float32, premultiplied as canvas() makes its pictures (each texel premultiplied before it is mixed)."""
    xf, yf = torch.floor(sx), torch.floor(sy)
    fx, fy = (sx - xf).float()[:, None], (sy - yf).float()[:, None]
    xa, ya = xf.long(), yf.long()

    def at(i: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return torch.where((i >= 0) & (i < n), i + 1, 0)

    xi, xj, yi, yj = at(xa, w), at(xa + 1, w), at(ya, h), at(ya + 1, h)

    def read(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        t = bank[base + yy * (w + 1) + xx].float() / 255.0
        return torch.cat([t[:, :3] * t[:, 3:], t[:, 3:]], 1)

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
