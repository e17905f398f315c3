"""Architecture 3 as a StreamEngine: generated motion, drawn by moving the avatar's own pixels.

Each stream's latent frame is its motion (engines/avatar_world/skeleton.py: keypoints, face and effect
fields, the effects' clock; MOTION_DIM numbers). The motion denoiser (engines/tiny/motion_denoiser.py) samples
it chunk by chunk with the same few-step sampler as architecture 2; the motion decoder (engines/tiny/motion.py)
draws each frame by moving the avatar's canonical frame part by part, so eyes, glasses and outlines are copied
rather than regenerated. Per avatar, the canonical frame is rendered and encoded once.

The server's default on onnxruntime (the CPU); `--engine auto` keeps architecture 2 on the GPU backends, where this one
draws a fifth of its frames (docs/bench/motion_gpu_fast_2026-12-06). It serves from a folder of exported graphs (the
shipped one, or `--weights DIR`) on onnxruntime (no torch) or, read back into torch networks, on torch on the CPU or
CUDA (the decode batched across streams there); or runs training's checkpoints on torch (the fidelity eval:
`tools.eval.fidelity --motion`). The networks sit behind engines/tiny/motion_backends.MotionBackend, and everything
around them here is numpy, per stream on the host (the box, the window, the effect sprites, RGBA out: `_compose`),
except where the backend composes on its device (compose_device: torch on CUDA): there engines/tiny/motion_compose.py
does the same to the bit, each stream's own box drawn in a batch of its size bucket, and the frames leave the device
once, as uint8 (`decode_chunks_t`).
A folder may name a copy-only folder as its cheaper draw (the shipped residual folder names the copy one): under
load the degradation ladder draws with that decoder instead, from the same prepared avatar (capabilities'
cheaper_decode "copy_draw"; the copy decoder reads the canonical frame and atlas faces the avatar already holds).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, cast

import numpy as np

from avatarcast.engines.avatar_world.skeleton import KEYPOINTS, MOTION_DIM, N_POINTS, motion_vector
from avatarcast.engines.backends.base import BackendError
from avatarcast.engines.contract import CheaperDecode, EngineCapabilities, PendingFrames, ReadyFrames
from avatarcast.engines.sampler import ShortcutFlowSampler
from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.engines.tiny.effects import EffectLayer
from avatarcast.engines.tiny.engine import (
    avatar_cache_key,
    clip_frames,
    emotion_index,
    sample_streams,
    set_emotion,
)
from avatarcast.engines.tiny.motion_backends import DeviceDraws, LayerDeviceDraws, MotionBackend, OnnxMotionBackend
from avatarcast.engines.tiny.motion_weights import (
    CUTOUT_DRAW,
    cutout_runs_on,
    frames_hash,
    load_motion_manifest,
    motion_folder,
)
from avatarcast.engines.tiny.window import frames_to_window, window_to_rgba
from avatarcast.vocabulary import EMOTIONS, FRAME_HEIGHT, FRAME_WIDTH

# How far past its keypoints, in head radii, the decoder draws an avatar: the renderer's avatars reach at most
# 1.04 head radii past them (hair, ears, hats, held things; 46 avatars x 6 emotions), and pixels past that are
# transparent in the full window's drawing too (tests/engines/test_motion.py).
BOX_MARGIN = 1.5
# Prepared avatars kept by default (least recently used out): each holds ~55 MB (its canonical frame and 11 atlas
# faces as float windows, their features, 17 MB of effect sprites), and `random-<seed>` offers endless avatars. The
# server passes its own bound (engine_loader: its avatar slots and those being prepared), so an operator's
# --max-avatars bounds this memory too; an evicted avatar is prepared again.
MAX_AVATARS = 24
# Box sizes a batched draw rounds each stream's box up to (bucket_box): a few sizes, so a few decoder calls a chunk,
# and at most 31 rows and columns drawn past a stream's own box (the decoder draws them transparent).
BOX_BUCKET = 32
# Streams a call on a CUDA device (the scheduler's batch, capabilities.max_batch): the engine bench's 200 and 400
# streams a call are 8,410 and 9,726 fps on an H100 (docs/bench/cutout_host_2026-12-07); 256 frames' worth of memory a
# stream is small beside the device's. Elsewhere the contract's default (8).
DEVICE_MAX_BATCH = 256
log = logging.getLogger(__name__)
_HEAD_CENTRE, _HEAD_UP = KEYPOINTS.index("head_centre"), KEYPOINTS.index("head_up")


@dataclass(frozen=True)
class MotionShapes:
    """The latent shapes (engines.contract.LatentShapes): one motion vector a frame, a 1x1 'image'."""

    chunk_frames: int
    context_frames: int
    latent_channels: int = MOTION_DIM
    height: int = FRAME_HEIGHT
    width: int = FRAME_WIDTH
    latent_hw: tuple[int, int] = (1, 1)


@dataclass
class MotionStream:
    """One stream: its avatar, its last K motions (normalized) as context, and what it is asked to show."""

    avatar_key: str
    ref: np.ndarray  # (D, 1, 1) the avatar's canonical motion, normalized
    ctx: np.ndarray  # (K*D, 1, 1) the last K motions, normalized
    emotion: int
    intensity: float
    rng: np.random.Generator
    frames_done: int = 0
    meta: dict = field(default_factory=dict)

    def copy(self) -> Self:
        new = copy.copy(self)
        new.rng = copy.deepcopy(self.rng)
        new.meta = dict(self.meta)
        return new


@dataclass(frozen=True)
class _Avatar:
    """What a stream of one avatar needs, computed once: its canonical frame and motion, encoded."""

    ref: Any  # the backend's handle on the encoded canonical frame (and atlas faces)
    effects: EffectLayer  # its effect sprites, laid over the decoded frames
    ref_motion: np.ndarray  # (D,) raw canonical motion
    ref_n: np.ndarray  # (D,) normalized canonical motion
    rest_n: np.ndarray  # (D,) normalized rest motion: where a stream starts
    sprites: Any = None  # its effect sprites on the device, where the frames are composed there (DeviceSprites)


def _file_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


class MotionEngine:
    """Generates 640x360 RGBA frames of an avatar showing an emotion: motion sampled, then drawn."""

    def __init__(
        self,
        backend: MotionBackend,
        mean: np.ndarray,
        std: np.ndarray,
        steps: int = 2,
        weights_hash: str = "",
        max_avatars: int = MAX_AVATARS,
    ) -> None:
        self.window = TinyConfig()  # the window and padding the decoder was trained on (architecture 2's)
        self.cfg = MotionShapes(self.window.chunk_frames, self.window.context_frames)
        self.backend = backend
        self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)
        self.sampler = ShortcutFlowSampler(steps=steps, min_shortcut=self.window.min_shortcut)
        self._weights_hash = weights_hash
        self._avatars: OrderedDict[str, _Avatar] = OrderedDict()  # least recently used first
        self.max_avatars = max(1, max_avatars)  # prepared avatars kept (~55 MB each)
        self._lock = threading.Lock()
        self._device_compose: Any = None  # DeviceCompose where the backend composes on its device (torch)
        self._host_workers: int | None = None  # see host_workers
        self._host_pool: Any = None  # a HostPool, started on first use
        if backend.compose_device is not None:
            from avatarcast.engines.tiny.motion_compose import DeviceCompose  # torch

            self._device_compose = DeviceCompose(self.window, backend.compose_device)

    @classmethod
    def load(cls, decoder: str | Path, denoiser: str | Path, steps: int = 2, device: str = "cpu") -> MotionEngine:
        """Training's EMA weights on torch: `motion_ema.pt` (tools.train_motion) and `motion_den.pt` or
        `motion_den_best.pt` (tools.train_motion_den)."""
        from avatarcast.engines.tiny.motion_torch import TorchMotionBackend, load_checkpoints  # torch

        dec_p, den_p = Path(decoder), Path(denoiser)
        dec, den, _, sd = load_checkpoints(dec_p, den_p)
        backend = TorchMotionBackend(dec, den, device)
        return cls(backend, sd["mean"].float().numpy(), sd["std"].float().numpy(), steps, _file_hash(dec_p, den_p))

    @classmethod
    def from_folder(
        cls,
        folder: str | Path | None = None,
        steps: int = 2,
        threads: int | None = None,
        draw: str = "copy",
        backend: str = "onnxruntime",
        device: str | None = None,
        max_avatars: int = MAX_AVATARS,
    ) -> MotionEngine:
        """An exported folder (tools.export_motion; None: the shipped one that draws as `draw` says) on onnxruntime
        (the CPU's serving path, no torch), or with backend="torch" its graphs' weights read into torch networks
        (engines/tiny/motion_graph_weights.py) on `device` (cpu, cuda; None: cuda where there is one). draw="cutout":
        the folder's denoiser, and the avatar's layers moved instead of its decoder: in numpy beside onnxruntime
        (engines/tiny/cutout.py), or on torch's device (engines/tiny/cutout_torch.py).

        Raises:
            WeightsError: no such folder, a damaged one, or (torch) a weight the networks cannot be filled from.
            BackendError: a backend other than onnxruntime or torch, or onnxruntime on a device other than the CPU
                (the cut-out draw too: motion_weights.cutout_runs_on).
        """
        man = load_motion_manifest(motion_folder(folder, draw))
        be: MotionBackend
        if draw == CUTOUT_DRAW and not cutout_runs_on(backend, device):
            raise BackendError(
                f"the cut-out draw runs on onnxruntime on the CPU or on torch, not {backend} on {device}"
            )
        if draw == CUTOUT_DRAW and backend == "onnxruntime":
            from avatarcast.engines.tiny.cutout import CutoutMotionBackend

            be = CutoutMotionBackend(man, threads=threads)
        elif backend == "onnxruntime":
            if device not in (None, "auto", "cpu"):
                raise BackendError(f"the motion engine runs on onnxruntime on the CPU only, not {device}")
            be = OnnxMotionBackend(man, threads=threads)
        elif backend == "torch":
            import torch  # only for this backend

            from avatarcast.engines.tiny.motion_torch import TorchMotionBackend

            if device in (None, "auto"):
                device = "cuda" if torch.cuda.is_available() else "cpu"
            if device == "cpu" and threads:
                torch.set_num_threads(int(threads))
            if draw == CUTOUT_DRAW:
                from avatarcast.engines.tiny.cutout_torch import TorchCutoutBackend

                be = TorchCutoutBackend.from_folder(man, device)
            else:
                be = TorchMotionBackend.from_folder(man, device)
        else:
            raise BackendError(f"the motion engine runs on onnxruntime or torch, not {backend!r}")
        # what the frames depend on: the folder's motions, the draw (the cut-out draw's come from the cut-out code, not
        # from the folder's decoder) and the effects: the latents cache and clip cache (keyed on this) must not hand one
        # draw's frames to another
        weights_hash = frames_hash(man.weights_hash, draw)
        return cls(be, man.mean, man.std, steps, weights_hash, max_avatars)

    # -- properties -----------------------------------------------------------------------
    @property
    def device_compose(self) -> Any:
        """The DeviceCompose (engines/tiny/motion_compose.py) where the backend composes on its device, else None."""
        return self._device_compose

    @property
    def emotions(self) -> tuple[str, ...]:
        return EMOTIONS

    @property
    def steps(self) -> int:
        return self.sampler.steps

    @steps.setter
    def steps(self, n: int) -> None:
        self.sampler.set_timesteps(n)

    @property
    def weights_hash(self) -> str:
        return self._weights_hash

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(
            frames_per_chunk=self.cfg.chunk_frames,
            shared_prep=self.backend.prepared_on_host,
            cheaper_decode=CheaperDecode.COPY_DRAW if self.backend.cheaper_draw else None,
            # the sampler is an MLP on 82 numbers a frame, the decoder draws the pixels: the denoiser is 10-12 ms of a
            # 450 ms two-stream batch (docs/training/motion.md), so 1 sampler step instead of 2 saves about 1% of a
            # chunk and the ladder's fewer_steps rung would only delay the one that helps
            fewer_steps_cheaper=False,
            # composed on a CUDA device, one call's draw runs there while the host plans the next (launch_chunks),
            # and a call's cost is mostly per call (the plan's round trip to the host workers, the compose's ops): the
            # scheduler batches many streams a call there (bench engine: 8,410 fps with 200 streams in one call)
            pipeline_depth=2 if self._device_batches else 1,
            max_batch=DEVICE_MAX_BATCH if self._device_batches else EngineCapabilities.max_batch,
        )

    @property
    def _device_batches(self) -> bool:
        """Whether a call's streams are drawn and composed together on a CUDA device (the torch backend there)."""
        dc = self._device_compose
        return dc is not None and dc.pipelined

    def prepared_avatar(self, avatar: Any) -> tuple[str, _Avatar]:
        """(key, the prepared avatar) for adopt_avatar() in another process (realtime/prep.py): plain arrays on the
        onnxruntime backend."""
        key = avatar_cache_key(avatar)
        return key, self._avatar(avatar, key)

    def release_avatar(self, avatar: Any) -> None:
        """Drop the prepared avatar (tens of MB: its atlas, sprites and reference features). The preparation process's
        copy of the engine calls it once the avatar is prepared and the live engine has adopted it: else it kept
        every avatar it prepared, up to max_avatars (measured: its RSS 115 -> 730 MB over 8 avatars)."""
        with self._lock:
            self._avatars.pop(avatar_cache_key(avatar), None)

    def adopt_avatar(self, key: str, prepared: _Avatar) -> None:
        """Keep an avatar another copy of this engine prepared (prepared_avatar()), as if prepared here."""
        self._keep(key, prepared)

    def _keep(self, key: str, prepared: _Avatar) -> None:
        """Hold a prepared avatar as the most recently used, the least recently used ones out past max_avatars."""
        with self._lock:
            self._avatars[key] = prepared
            self._avatars.move_to_end(key)
            while len(self._avatars) > self.max_avatars:
                self._avatars.popitem(last=False)

    @property
    def graphs_ready(self) -> None:
        return None

    def emotion_index(self, emotion: str | int) -> int:
        return emotion_index(EMOTIONS, emotion)

    # -- avatars and streams --------------------------------------------------------------
    def motion(self, avatar: Any, pose: Any) -> np.ndarray:
        """(D,) the raw motion of `render_frame(avatar, pose)`: what this engine's latent frame stands for (the
        fidelity eval's reconstruction draws it, as architecture 2's runs a frame through its encoder)."""
        w = self.window
        return motion_vector(avatar, pose, w.window_x0, w.window_width, w.pad_top, w.pad_height)

    def _avatar(self, avatar: Any, key: str | None = None) -> _Avatar:
        from avatarcast.engines.avatar_world import get_avatar  # PIL: kept off `avatarcast --help`
        from avatarcast.engines.avatar_world.reference import (
            atlas_frames,
            canonical_frame,
            canonical_pose,
            effect_sprites,
            rest_pose,
        )

        key = key or avatar_cache_key(avatar)
        with self._lock:
            got = self._avatars.get(key)
            if got is not None:
                self._avatars.move_to_end(key)
        if got is not None:
            return got
        av = get_avatar(avatar)
        ref_m = self.motion(av, canonical_pose())
        if self.backend.draws_layers:
            from avatarcast.engines.tiny.cutout import prepare as cut_layers

            ref = self.backend.layers(cut_layers(av, ref_m, self.window))
        else:
            ref_win = frames_to_window(canonical_frame(av)[None], self.window)
            atlas = frames_to_window(atlas_frames(av), self.window)[None] if self.backend.atlas else None
            ref = self.backend.prepare(ref_win, atlas)
        effects = EffectLayer.in_window(effect_sprites(av), self.window)
        got = _Avatar(
            ref,
            effects,
            ref_m.astype(np.float32),
            (ref_m - self.mean) / self.std,
            (self.motion(av, rest_pose()) - self.mean) / self.std,
            None if self._device_compose is None else self._device_compose.sprites(effects),
        )
        self._keep(key, got)
        return got

    def start_stream(
        self,
        avatar: Any,
        emotion: str | int = "idle",
        intensity: float = 1.0,
        seed: int = 0,
        ctx: np.ndarray | None = None,
    ) -> MotionStream:
        """A new stream at the avatar's rest pose, or continuing a given context (K*D, 1, 1)."""
        key = avatar_cache_key(avatar)
        a = self._avatar(avatar, key)
        K, D = self.cfg.context_frames, MOTION_DIM
        if ctx is None:
            ctx = np.tile(a.rest_n, K).reshape(K * D, 1, 1)
        return MotionStream(
            key,
            a.ref_n.reshape(D, 1, 1).astype(np.float32),
            np.asarray(ctx, np.float32).copy(),
            self.emotion_index(emotion),
            float(np.clip(intensity, 0.0, 1.0)),
            np.random.default_rng(seed),
        )

    def set_emotion(self, state: MotionStream, emotion: str | int, intensity: float | None = None) -> None:
        set_emotion(state, self.emotion_index(emotion), intensity)

    def sample_chunks(self, states: list[MotionStream], steps: int | None = None) -> np.ndarray:
        """One sampler run for all streams: normalized motions (B, T, D, 1, 1); advances the contexts."""
        shape = (MOTION_DIM, 1, 1)
        return sample_streams(
            self.backend.denoise,
            self.sampler,
            states,
            shape,
            self.cfg.chunk_frames,
            self.cfg.context_frames,
            steps,
            self.window.min_shortcut,
        )

    def draw(self, avatar: Any, motions: np.ndarray, batch: int = 8) -> np.ndarray:
        """Raw motion vectors (N, D) of one avatar -> RGBA uint8 frames (N, 360, 640, 4)."""
        a = self._avatar(avatar)
        parts = [self._draw(a, motions[i : i + batch]) for i in range(0, len(motions), batch)]
        return np.concatenate(parts) if parts else np.zeros((0, FRAME_HEIGHT, FRAME_WIDTH, 4), np.uint8)

    def decode_chunks(self, states: list[MotionStream], latents: np.ndarray, cheaper: bool = False) -> np.ndarray:
        """Normalized motions (B, T, D, 1, 1) -> frames (B, T, 360, 640, 4), each stream drawn from its avatar;
        `cheaper`: by the copy-only decoder of the folder the manifest names `cheaper_draw` (the residual draw's
        cheaper rung), from the same prepared avatar."""
        if cheaper and not self.backend.cheaper_draw:
            raise ValueError("this motion engine has no cheaper decode (its folder names no cheaper_draw)")
        if self._device_compose is not None:
            with self._device_compose.queue():  # after (and before) any launched call's draw: ordered with it
                return self._to_host(self._decode_t(states, latents, cheaper)[0])  # the one copy to the host
        B, T = latents.shape[:2]
        raw = latents.reshape(B, T, MOTION_DIM) * self.std + self.mean
        # start_stream prepared each avatar (again here if evicted)
        avatars = [self._avatar(json.loads(s.avatar_key), s.avatar_key) for s in states]
        if self.backend.batch_streams and B > 1:
            return self._draw_streams(avatars, raw.astype(np.float32), cheaper)
        return np.stack([self._draw(a, m, cheaper) for a, m in zip(avatars, raw)])

    @staticmethod
    def _to_host(frames: Any) -> np.ndarray:
        """Device frames -> numpy through page-locked memory (engines/tiny/pinned.py: `.cpu()` into fresh pageable
        memory was most of the host time left at 200 streams once the compose moved to the device)."""
        from avatarcast.engines.tiny.pinned import to_host  # torch

        return to_host(frames)

    def decode_chunks_t(self, states: list[MotionStream], latents: np.ndarray, cheaper: bool = False) -> Any:
        """`decode_chunks` left on the device (a backend with a compose_device): uint8 torch frames
        (B, T, 360, 640, 4) there, drawn and composed without a host copy (engines/tiny/motion_compose.py)."""
        if self._device_compose is None:
            raise BackendError(f"the {self.backend.name} motion backend composes its frames on the host")
        if cheaper and not self.backend.cheaper_draw:
            raise ValueError("this motion engine has no cheaper decode (its folder names no cheaper_draw)")
        return self._decode_t(states, latents, cheaper)[0]

    def _decode_t(self, states: list[MotionStream], latents: np.ndarray, cheaper: bool) -> tuple[Any, list[_Avatar]]:
        """`decode_chunks_t`, and the prepared avatars its queued work reads (kept until it is done: an avatar
        evicted meanwhile would free tensors the device still reads). The host's per-avatar work runs in the host
        pool where there is one; a pool that fails is closed and the call made again here (and every call after)."""
        from avatarcast.engines.tiny.host_pool import HostPoolError

        pool = self._pool()
        try:
            return self._decode_t_with(states, latents, cheaper, pool)
        except HostPoolError as exc:
            if pool is None:
                raise
            log.warning("motion engine: the host pool failed, planning in this process from now on: %s", exc)
            self._host_workers, self._host_pool = 0, None
            return self._decode_t_with(states, latents, cheaper, None)

    def _pool(self) -> Any:
        """The HostPool (engines/tiny/host_pool.py) of `host_workers` workers, started on first use; None for 0."""
        if self._host_pool is None and self.host_workers > 0:
            from avatarcast.engines.tiny.host_pool import HostPool

            self._host_pool = HostPool(self.host_workers)
            log.info("motion engine: %d host workers plan the chunks' avatars", self.host_workers)
        return self._host_pool

    @property
    def host_workers(self) -> int:
        """Worker processes the host's per-avatar work of a chunk runs in (the cut-out's plan, the effects'
        placements): by default, composing on CUDA, host_pool.default_workers() (the machine's cores less 4, at most
        8; 0 under 6 cores); elsewhere 0 (this process)."""
        if self._host_workers is None:
            if self._device_batches and self.backend.draws_layers:
                from avatarcast.engines.tiny.host_pool import default_workers

                self._host_workers = default_workers()
            else:
                self._host_workers = 0
        return self._host_workers

    def use_host_workers(self, n: int) -> None:
        """Plan with `n` host workers from the next call (0: in this process); the pool running is stopped."""
        if n < 0:
            raise ValueError(f"host workers: 0 or more, not {n}")
        if self._host_pool is not None:
            self._host_pool.close()
        self._host_workers, self._host_pool = int(n), None

    def _decode_t_with(
        self, states: list[MotionStream], latents: np.ndarray, cheaper: bool, pool: Any
    ) -> tuple[Any, list[_Avatar]]:
        import torch

        be = cast(DeviceDraws, self.backend)  # the backends with a compose_device
        B, T = latents.shape[:2]
        raw = (latents.reshape(B, T, MOTION_DIM) * self.std + self.mean).astype(np.float32)
        avatars = [self._avatar(json.loads(s.avatar_key), s.avatar_key) for s in states]
        sprites = [a.sprites for a in avatars]
        # the effects' placements first: in the host workers, they are placed while this process works out the boxes
        # and the layers are planned
        placing = self._device_compose.placing(raw, sprites, pool)
        with torch.inference_mode():
            drawn: list[Any]
            if be.batch_streams and B > 1 and be.draws_layers:
                # the layers' draw: every stream in one call, each in its own box grown to its bucket (canvases of
                # a few sizes: the box filter runs once a size)
                boxes = [self.bucket_box(b) for b in self.draw_boxes(raw)]
                drawn = cast(LayerDeviceDraws, be).draw_boxes_t([a.ref for a in avatars], raw, boxes, pool)
            elif be.batch_streams and B > 1:
                # each stream's own box, grown to its size bucket: one decoder call a bucket (the streams' common
                # box over many avatars is nearly the whole window)
                m = be.tensor(raw)
                rm = be.tensor(np.stack([a.ref_motion for a in avatars]))
                boxes = [self.bucket_box(self.draw_box(r)) for r in raw]
                keys = [s.avatar_key for s in states]
                drawn = [None] * B
                for size in sorted({b[2:] for b in boxes}):
                    # an avatar's streams side by side: the backend mixes their references in one call a run
                    idx = sorted((i for i, b in enumerate(boxes) if b[2:] == size), key=lambda i: (keys[i], i))
                    refs = [avatars[i].ref for i in idx]
                    at = be.tensor(np.array(idx), torch.long)  # m[idx] would copy the list with a wait
                    got = be.draw_streams_t(refs, m[at], rm[at], [boxes[i] for i in idx], cheaper, raw[idx])
                    for k, i in enumerate(idx):
                        drawn[i] = got[k]
            else:
                m = be.tensor(raw)
                rm = be.tensor(np.stack([a.ref_motion for a in avatars]))
                boxes = [self.draw_box(r) for r in raw]
                drawn = [be.draw_t(a.ref, m[i], rm[i], boxes[i], cheaper, raw[i]) for i, a in enumerate(avatars)]
            return self._device_compose.frames(drawn, boxes, raw, sprites, placing=placing), avatars

    def bucket_box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """`box` grown down and right to the next multiple of BOX_BUCKET pixels each way: streams of one bucket draw
        in one batched call. It keeps its first pixel, even where it then reaches past the window (the decoder
        draws nothing there; the compose cuts it): a box moved to another origin draws the avatar differently (the
        part-mask U-Net's strided levels fall elsewhere), by up to 255 levels on ~0.3% of values."""
        y0, x0, h, w = box
        return y0, x0, -(-h // BOX_BUCKET) * BOX_BUCKET, -(-w // BOX_BUCKET) * BOX_BUCKET

    def draw_box(self, motions: np.ndarray) -> tuple[int, int, int, int]:
        """The window box (row, column, height, width; multiples of 8) the decoder draws for raw motions (n, D):
        every frame's keypoints and BOX_MARGIN head radii around them. The rest of the window is transparent
        (the effects are laid over all of it after)."""
        H, W = self.window.pad_height, self.window.window_width
        kp = (np.asarray(motions, np.float64)[:, : 2 * N_POINTS].reshape(len(motions), N_POINTS, 2) + 1.0) * 0.5
        kp = kp * np.array([W, H])
        r = np.linalg.norm(kp[:, _HEAD_UP] - kp[:, _HEAD_CENTRE], axis=-1).max()
        pad = BOX_MARGIN * r + 8
        x0, x1 = kp[..., 0].min() - pad, kp[..., 0].max() + pad
        y0, y1 = kp[..., 1].min() - pad, kp[..., 1].max() + pad
        x0, y0 = max(0, int(x0) // 8 * 8), max(0, int(y0) // 8 * 8)
        x1, y1 = min(W, -(-int(np.ceil(x1)) // 8) * 8), min(H, -(-int(np.ceil(y1)) // 8) * 8)
        if x1 <= x0 or y1 <= y0:  # keypoints off the window: nothing of the avatar to draw
            return 0, 0, 8, 8
        return y0, x0, y1 - y0, x1 - x0

    def draw_boxes(self, motions: np.ndarray) -> list[tuple[int, int, int, int]]:
        """`draw_box` of each stream's raw motions (S, n, D) in one go over all of them (a call a stream was ~6 ms
        of a 200-stream chunk's host time): the same numbers, each operation `draw_box`'s over a stream's frames.
        Streams with a number that is not finite go through `draw_box` itself."""
        H, W = self.window.pad_height, self.window.window_width
        S, n = motions.shape[:2]
        kp = (np.asarray(motions, np.float64)[:, :, : 2 * N_POINTS].reshape(S, n, N_POINTS, 2) + 1.0) * 0.5
        kp = kp * np.array([W, H])
        r = np.linalg.norm(kp[:, :, _HEAD_UP] - kp[:, :, _HEAD_CENTRE], axis=-1).max(1)
        pad = BOX_MARGIN * r + 8
        x0, x1 = kp[..., 0].min((1, 2)) - pad, kp[..., 0].max((1, 2)) + pad
        y0, y1 = kp[..., 1].min((1, 2)) - pad, kp[..., 1].max((1, 2)) + pad
        ok = np.isfinite(np.stack([x0, x1, y0, y1])).all(0)
        x0, x1, y0, y1 = (np.where(ok, v, 0.0) for v in (x0, x1, y0, y1))
        # int(): toward zero, as draw_box's; then numpy's // on integers floors as Python's
        x0, y0 = (
            np.maximum(0, np.trunc(x0).astype(np.int64) // 8 * 8),
            np.maximum(0, np.trunc(y0).astype(np.int64) // 8 * 8),
        )
        x1 = np.minimum(W, -(-np.ceil(x1).astype(np.int64) // 8) * 8)
        y1 = np.minimum(H, -(-np.ceil(y1).astype(np.int64) // 8) * 8)
        out = []
        for i in range(S):
            if not ok[i]:
                out.append(self.draw_box(motions[i]))
            elif x1[i] <= x0[i] or y1[i] <= y0[i]:  # keypoints off the window: nothing of the avatar to draw
                out.append((0, 0, 8, 8))
            else:
                out.append((int(y0[i]), int(x0[i]), int(y1[i] - y0[i]), int(x1[i] - x0[i])))
        return out

    def _draw(self, a: _Avatar, motions: np.ndarray, cheaper: bool = False) -> np.ndarray:
        """Raw motions (n, D) of a prepared avatar -> RGBA uint8 frames (n, 360, 640, 4)."""
        m = np.ascontiguousarray(motions, np.float32)
        # only the box around the avatar: the CPU's time goes with the pixels drawn
        box = self.draw_box(m)
        return self._compose(a, m, box, self.backend.draw(a.ref, m, a.ref_motion, box, cheaper))

    def _draw_streams(self, avatars: list[_Avatar], raw: np.ndarray, cheaper: bool) -> np.ndarray:
        """Raw motions (B, T, D) of B streams -> frames (B, T, 360, 640, 4), drawn in one backend call over the
        streams' common box (a backend with batch_streams: torch on CUDA, where one call of B x T rows beats B
        calls). Pixels of the common box outside a stream's own box are the decoder's, transparent there too."""
        box = self.draw_box(raw.reshape(-1, MOTION_DIM))
        be = cast(DeviceDraws, self.backend)  # the backends that set batch_streams: torch's
        drawn = be.draw_streams([a.ref for a in avatars], raw, np.stack([a.ref_motion for a in avatars]), box, cheaper)
        return np.stack([self._compose(a, m, box, d) for a, m, d in zip(avatars, raw, drawn)])

    def _compose(self, a: _Avatar, m: np.ndarray, box: tuple[int, int, int, int], drawn: np.ndarray) -> np.ndarray:
        """The decoder's box (n, 4, h, w) of raw motions m (n, D) -> RGBA uint8 frames (n, 360, 640, 4): laid in the
        window, the avatar's effects over it, cut to the frame (host-side numpy, per stream)."""
        w = self.window
        by, bx, bh, bw = box
        y = np.full((len(m), 4, w.pad_height, w.window_width), -1.0, np.float32)
        y[:, :, by : by + bh, bx : bx + bw] = np.clip(drawn, -1, 1)
        a.effects.lay(y, m)
        out = np.zeros((len(m), w.height, w.width, 4), np.uint8)
        out[:, :, w.window_x0 : w.window_x0 + w.window_width] = window_to_rgba(
            y[:, :, w.pad_top : w.pad_top + w.height]
        )
        return out

    def launch_chunks(self, states: list[MotionStream], steps: int | None = None) -> PendingFrames:
        """One call's sampling here, then, where the frames are composed on a CUDA device, its draw and compose queued
        on the compose's own CUDA stream and the frames copied to page-locked memory without a wait: the host samples
        and plans the next call (the cut-out's plan, the effects' placements: most of a chunk's time at 200 streams)
        while the device draws this one (`capabilities.pipeline_depth` 2). Elsewhere the frames are made here."""
        latents = self.sample_chunks(states, steps)
        dc = self._device_compose
        if dc is None or not dc.pipelined:
            return ReadyFrames(list(self.decode_chunks(states, latents)))
        return dc.launch(lambda: self._decode_t(states, latents, False))

    def next_chunk(self, states: list[MotionStream]) -> list[np.ndarray]:
        return list(self.decode_chunks(states, self.sample_chunks(states)))

    def generate_clip(
        self,
        avatar: Any,
        emotion: str | int,
        n_frames: int,
        seed: int = 0,
        intensity: float = 1.0,
        warmup_chunks: int = 1,
    ) -> np.ndarray:
        """n_frames of one avatar in one emotion; the first chunks (leaving rest) are skipped."""
        return clip_frames(self, self.start_stream(avatar, emotion, intensity, seed), n_frames, warmup_chunks)
