"""What runs architecture 3's networks: a declared contract, and its onnxruntime backend (no torch).

The engine (engines/tiny/motion_engine.py) does everything around the networks in numpy: the box around the
avatar, the effects, the frames. A backend holds each avatar's encoded reference in its own form (device tensors
for torch, arrays for onnxruntime) and draws boxes of motions from it. The torch backend, for training's
evaluations and for serving an exported folder on torch (CPU or CUDA), is engines/tiny/motion_torch.py.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

from avatarcast.engines.backends.base import BackendError, Denoises
from avatarcast.engines.backends.host import available_cores
from avatarcast.engines.backends.onnxruntime_backend import denoise_feeds, load_session
from avatarcast.engines.tiny.motion_weights import GRAPHS, MANIFEST, MotionManifest, load_motion_manifest
from avatarcast.engines.tiny.weights import WeightsError
from avatarcast.engines.tiny.window import pixel_centres


class MotionBackend(Denoises, Protocol):
    """The motion decoder and denoiser. Arrays are numpy float32, batch first.

    prepare:  the avatar's canonical frame as a window (1, 4, pad_H, window_W) in [-1, 1], its atlas faces
              (1, K, 4, pad_H, window_W) or None -> the backend's handle on that avatar's encoded reference
    draw:     a handle, raw motions (n, D), the canonical frame's motion (D,), a box (row, column, height,
              width; multiples of 8) -> the box drawn, premultiplied (n, 4, height, width), about [-1, 1];
              with cheaper=True, by the cheaper folder's copy-only decoder (only where `cheaper_draw`)
    denoise:  the tiny engine's call (engines/backends/base.py), the motion chunk as a 1 x 1 image
    """

    name: str
    atlas: int  # atlas faces the decoder mixes; 0: none, and prepare takes None
    cheaper_draw: bool  # draw(..., cheaper=True) has a copy-only decoder to run (the ladder's cheaper rung)
    # None: the engine composes the frames in numpy on the host; a torch device ("cuda"): there
    # (engines/tiny/motion_compose.py), from the backend's draw_t / draw_streams_t (the torch backend's)
    compose_device: str | None
    # True: decode_chunks draws every stream of a chunk in one call over their common box, from the backend's
    # draw_streams (the torch backend's, on CUDA by default); False: one draw a stream
    batch_streams: bool
    # True: the backend draws from the avatar's layers (engines/tiny/cutout.py: the engine prepares them with
    # cutout.prepare and passes `layers`' handle on them as `ref`; prepare is not called); False: from `prepare`'s
    draws_layers: bool
    # True: a prepared avatar is plain numpy arrays, so another process can prepare it and hand it over
    # (EngineCapabilities.shared_prep, realtime/prep.py); False: tensors on the backend's device
    prepared_on_host: bool

    def prepare(self, ref_win: np.ndarray, atlas: np.ndarray | None) -> Any: ...

    def layers(self, avatar: Any) -> Any:
        """draws_layers: the backend's handle on an avatar's cutout.CutoutAvatar (the arrays, or them on its device)."""
        ...

    def draw(
        self,
        ref: Any,
        motions: np.ndarray,
        ref_motion: np.ndarray,
        box: tuple[int, int, int, int],
        cheaper: bool = False,
    ) -> np.ndarray: ...


class DeviceDraws(MotionBackend, Protocol):
    """A backend whose draws stay on its torch device (compose_device set; engines/tiny/motion_torch.py's decoder,
    engines/tiny/cutout_torch.py's cut-out draw): MotionEngine.decode_chunks_t composes the frames there.

    tensor:         host numbers as a tensor on the device, not waiting for its queue
    draw_t:         `draw` of device tensors -> (n, 4, h, w) on the device
    draw_streams_t: refs (S,), raw motions (S, n, D), canonical motions (S, D), one box a stream (all of one size) or
                    one for all -> (S, n, 4, h, w) on the device
    draw_streams:   draw_streams_t of one box, numpy in and out (batch_streams with the compose on the host)
    Both take `host`, the same motions on the host where the caller has them: a backend that plans on the host
    (the cut-out draw: each layer's window) reads them there instead of waiting for the device to copy them back.
    """

    def tensor(self, a: Any, dtype: Any = ...) -> Any: ...

    def draw_t(
        self,
        ref: Any,
        motions: Any,
        ref_motion: Any,
        box: tuple[int, int, int, int],
        cheaper: bool = False,
        host: np.ndarray | None = None,
    ) -> Any: ...

    def draw_streams_t(
        self,
        refs: list[Any],
        motions: Any,
        ref_motions: Any,
        boxes: Any,
        cheaper: bool = False,
        host: np.ndarray | None = None,
    ) -> Any: ...

    def draw_streams(
        self,
        refs: list[Any],
        motions: np.ndarray,
        ref_motions: np.ndarray,
        box: tuple[int, int, int, int],
        cheaper: bool = False,
    ) -> np.ndarray: ...


class LayerDeviceDraws(DeviceDraws, Protocol):
    """A DeviceDraws backend that draws from the avatars' layers (draws_layers; engines/tiny/cutout_torch.py): its
    canvases need not share a size, so one call draws every stream of a chunk, each in its own box.

    draw_boxes_t: refs (S,), raw motions (S, n, D) on the host, one box a stream (any sizes) -> S tensors
                  (n, 4, h, w) on the device; pool: a HostPool (engines/tiny/host_pool.py) the host's per-avatar
                  work may run in, or None
    """

    def draw_boxes_t(
        self, refs: list[Any], motions: np.ndarray, boxes: list[tuple[int, int, int, int]], pool: Any = None
    ) -> list[Any]: ...


# What a cheaper folder's decoder may read: what `prepare` holds but the reference features, which come from this
# folder's reference graph and mean nothing to another decoder (a copy-only one reads none).
_CHEAPER_INPUTS = frozenset({"motion", "ref_motion", "centres", "ref", "atlas"})


class OnnxMotionBackend:
    """The exported folder's three graphs on onnxruntime's CPU provider (threads: intra-op, default all cores), and
    the decoder of the folder its manifest names `cheaper_draw`, if any."""

    name = "onnxruntime"
    compose_device: str | None = None  # numpy on the host: the CPU serving path imports no torch
    batch_streams = False  # one draw a stream: a batch of streams costs the CPU what their draws do
    draws_layers = False
    prepared_on_host = True

    def __init__(self, manifest: MotionManifest, threads: int | None = None, verify: bool = True):
        self.manifest = manifest
        self.atlas = manifest.atlas
        self.threads = int(threads) if threads else available_cores()
        self.window_hw = (int(manifest.decoder_shape["pad_height"]), int(manifest.decoder_shape["window_width"]))
        self.sessions = {}
        for g in ("reference", "decoder", "denoiser"):
            self.sessions[g] = load_session(manifest.graph(g, verify=verify), self.threads, ["CPUExecutionProvider"])
        if manifest.cheaper_draw is not None:
            cheaper = cheaper_manifest(manifest)
            self.sessions["cheaper"] = load_session(
                cheaper.graph("decoder", verify=verify), self.threads, ["CPUExecutionProvider"]
            )
        # what each decoder graph reads: one exported without its generator (tools.export_motion --copy-only) has no
        # use for the reference's features, and onnxruntime refuses a feed the graph does not declare
        self._inputs: dict[str, frozenset[str]] = {
            g: frozenset(i.name for i in self.sessions[g].get_inputs())
            for g in ("decoder", "cheaper")
            if g in self.sessions
        }
        if not self._inputs.get("cheaper", frozenset()) <= _CHEAPER_INPUTS:
            raise WeightsError(
                f"{manifest.path}: the cheaper_draw folder's decoder reads "
                f"{sorted(self._inputs['cheaper'] - _CHEAPER_INPUTS)}: only a copy-only decoder can draw with another "
                "folder's reference"
            )
        self.cheaper_draw = "cheaper" in self.sessions
        self._lock = threading.Lock()  # one graph run at a time: the threads are the cores'

    def layers(self, avatar: Any) -> Any:
        raise BackendError("the decoder graphs draw from a reference frame (prepare), not an avatar's layers")

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
        self,
        ref: dict,
        motions: np.ndarray,
        ref_motion: np.ndarray,
        box: tuple[int, int, int, int],
        graph: str = "decoder",
    ) -> dict[str, np.ndarray]:
        """A decoder graph's inputs for a draw call (also what tools.motion_int8 calibrates on); graph: "decoder",
        or "cheaper" (the cheaper_draw folder's)."""
        y0, x0, h, w = box
        feeds = {k: v for k, v in ref.items() if k in self._inputs[graph]}
        feeds["motion"] = np.ascontiguousarray(motions, np.float32)
        feeds["ref_motion"] = np.ascontiguousarray(ref_motion, np.float32).reshape(1, -1)
        feeds["centres"] = np.ascontiguousarray(pixel_centres(h, w, self.window_hw, (y0, x0)))
        return feeds

    def draw(
        self,
        ref: dict,
        motions: np.ndarray,
        ref_motion: np.ndarray,
        box: tuple[int, int, int, int],
        cheaper: bool = False,
    ) -> np.ndarray:
        if cheaper and not self.cheaper_draw:
            raise BackendError(f"{self.manifest.path}: no cheaper_draw folder in its manifest")
        graph = "cheaper" if cheaper else "decoder"
        return self._run(graph, self.decoder_feeds(ref, motions, ref_motion, box, graph))[0]

    def denoise(self, x, t, d, ctx, ref, emotion, intensity) -> np.ndarray:
        return self._run("denoiser", denoise_feeds(x, t, d, ctx, ref, emotion, intensity))[0]


def cheaper_manifest(manifest: MotionManifest) -> MotionManifest:
    """The manifest of the folder `manifest` names `cheaper_draw`, checked to draw the same motions: the same
    denoiser graph, motion normalization, window and atlas faces.

    Raises:
        WeightsError: a folder that is not one, or that draws other motions or another window.
    """
    if manifest.cheaper_draw is None:
        raise WeightsError(f"{manifest.path / MANIFEST} names no cheaper_draw folder")
    cheaper = load_motion_manifest(manifest.path / manifest.cheaper_draw)
    den = GRAPHS["denoiser"]
    same = {
        "denoiser graph": manifest.files.get(den) == cheaper.files.get(den),
        "motion normalization": np.array_equal(manifest.mean, cheaper.mean)
        and np.array_equal(manifest.std, cheaper.std),
        "window": all(manifest.decoder_shape[k] == cheaper.decoder_shape[k] for k in ("pad_height", "window_width")),
        "atlas faces": manifest.atlas == cheaper.atlas,
    }
    if not all(same.values()):
        differ = ", ".join(k for k, v in same.items() if not v)
        raise WeightsError(f"{manifest.path}: its cheaper_draw folder {cheaper.path} has another {differ}")
    return cheaper


__all__ = ["DeviceDraws", "LayerDeviceDraws", "MotionBackend", "OnnxMotionBackend", "cheaper_manifest"]
