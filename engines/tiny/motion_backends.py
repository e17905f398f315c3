"""What runs architecture 3's networks: a declared contract, and its onnxruntime backend (no torch).

The engine (engines/tiny/motion_engine.py) does everything around the networks in numpy: the box around the
avatar, the effects, the frames. A backend holds each avatar's encoded reference in its own form (device tensors
for torch, arrays for onnxruntime) and draws boxes of motions from it. The torch backend, for training's
evaluations and GPUs, is engines/tiny/motion_torch.py.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

from avatarcast.engines.backends.base import BackendError, Denoises
from avatarcast.engines.backends.host import available_cores
from avatarcast.engines.backends.onnxruntime_backend import denoise_feeds, load_session
from avatarcast.engines.tiny.motion_weights import MotionManifest
from avatarcast.engines.tiny.window import pixel_centres


class MotionBackend(Denoises, Protocol):
    """The motion decoder and denoiser. Arrays are numpy float32, batch first.

    prepare:  the avatar's canonical frame as a window (1, 4, pad_H, window_W) in [-1, 1], its atlas faces
              (1, K, 4, pad_H, window_W) or None -> the backend's handle on that avatar's encoded reference
    draw:     a handle, raw motions (n, D), the canonical frame's motion (D,), a box (row, column, height,
              width; multiples of 8) -> the box drawn, premultiplied (n, 4, height, width), about [-1, 1]
    denoise:  the tiny engine's call (engines/backends/base.py), the motion chunk as a 1 x 1 image
    """

    name: str
    atlas: int  # atlas faces the decoder mixes; 0: none, and prepare takes None

    def prepare(self, ref_win: np.ndarray, atlas: np.ndarray | None) -> Any: ...

    def draw(
        self, ref: Any, motions: np.ndarray, ref_motion: np.ndarray, box: tuple[int, int, int, int]
    ) -> np.ndarray: ...


class OnnxMotionBackend:
    """The exported folder's three graphs on onnxruntime's CPU provider (threads: intra-op, default all cores)."""

    name = "onnxruntime"

    def __init__(self, manifest: MotionManifest, threads: int | None = None, verify: bool = True):
        self.manifest = manifest
        self.atlas = manifest.atlas
        self.threads = int(threads) if threads else available_cores()
        self.window_hw = (int(manifest.decoder_shape["pad_height"]), int(manifest.decoder_shape["window_width"]))
        self.sessions = {}
        for g in ("reference", "decoder", "denoiser"):
            self.sessions[g] = load_session(manifest.graph(g, verify=verify), self.threads, ["CPUExecutionProvider"])
        # what the decoder graph reads: one exported without its generator (tools.export_motion --copy-only) has no
        # use for the reference's features, and onnxruntime refuses a feed the graph does not declare
        self._decoder_inputs = frozenset(i.name for i in self.sessions["decoder"].get_inputs())
        self._lock = threading.Lock()  # one graph run at a time: the threads are the cores'

    def _run(self, graph: str, feeds: dict) -> list[np.ndarray]:
        with self._lock:
            return self.sessions[graph].run(None, feeds)

    def prepare(self, ref_win: np.ndarray, atlas: np.ndarray | None) -> dict[str, np.ndarray]:
        if (atlas is None) != (self.atlas == 0) or (atlas is not None and atlas.shape[1] != self.atlas):
            got = None if atlas is None else atlas.shape
            raise BackendError(f"this decoder mixes {self.atlas} atlas faces; got {got}")
        ref = np.ascontiguousarray(ref_win, np.float32)
        f2, f4, f8 = self._run("reference", {"ref": ref})
        held = {"ref": ref, "f2": f2, "f4": f4, "f8": f8}
        if atlas is not None:
            held["atlas"] = np.ascontiguousarray(atlas, np.float32)
        return held

    def decoder_feeds(
        self, ref: dict, motions: np.ndarray, ref_motion: np.ndarray, box: tuple[int, int, int, int]
    ) -> dict[str, np.ndarray]:
        """The decoder graph's inputs for a draw call (also what tools.motion_int8 calibrates on)."""
        y0, x0, h, w = box
        feeds = {k: v for k, v in ref.items() if k in self._decoder_inputs}
        feeds["motion"] = np.ascontiguousarray(motions, np.float32)
        feeds["ref_motion"] = np.ascontiguousarray(ref_motion, np.float32).reshape(1, -1)
        feeds["centres"] = np.ascontiguousarray(pixel_centres(h, w, self.window_hw, (y0, x0)))
        return feeds

    def draw(
        self, ref: dict, motions: np.ndarray, ref_motion: np.ndarray, box: tuple[int, int, int, int]
    ) -> np.ndarray:
        return self._run("decoder", self.decoder_feeds(ref, motions, ref_motion, box))[0]

    def denoise(self, x, t, d, ctx, ref, emotion, intensity) -> np.ndarray:
        return self._run("denoiser", denoise_feeds(x, t, d, ctx, ref, emotion, intensity))[0]


__all__ = ["MotionBackend", "OnnxMotionBackend"]
