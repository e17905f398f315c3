"""Architecture 3's serving folder: three ONNX graphs and a manifest, written by `python -m tools.export_motion`.

Layout (no torch needed to read or serve it):
  motion.json      the decoder's shape, the denoiser's size, the motion normalization (mean, std per number of the
                   motion vector), each file's sha256, and where the weights came from
  reference.onnx   the avatar's canonical frame -> the decoder's reference features (once per avatar)
  decoder.onnx     motions, the reference (frame, features, atlas faces) and a box's pixel centres -> the box drawn
  denoiser.onnx    the motion denoiser (the tiny engine's denoise call, motion as a 1 x 1 image)
A folder may take a graph from another folder instead of holding a copy (`graphs_from` in motion.json: a graph's
name -> that folder, relative to this one; its sha256 is still this manifest's): the shipped residual decoder
serves beside the shipped denoiser without a second 8.8 MB copy of it. A folder may also name a cheaper one
(`cheaper_draw`: a folder, relative to this one, exported from the same denoiser and motion normalization, whose
decoder reads no reference features): its decoder draws this folder's chunks at the degradation ladder's
cheaper_decode rung. The shipped residual folder names the shipped copy-only one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avatarcast.engines.avatar_world.skeleton import MOTION_DIM
from avatarcast.engines.tiny.weights import MANIFEST as TINY_MANIFEST
from avatarcast.engines.tiny.weights import WeightsError, file_sha256
from avatarcast.vocabulary import EMOTIONS

MANIFEST = "motion.json"
GRAPHS = {"reference": "reference.onnx", "decoder": "decoder.onnx", "denoiser": "denoiser.onnx"}
# The folder that ships with the package: `--engine motion` (the CPU's default) serves it when no --weights is given:
# sharper frames than architecture 2 for more CPU a frame (README, "Which engine").
SHIPPED = Path(__file__).with_name("weights") / "motion"
# The shipped decoders, by how they draw (`--motion-draw`): "copy" moves the avatar's own drawing and draws nothing
# (its generator never drew: docs/training/motion.md); "residual" also runs a generator that draws a correction over
# it: a picture a detector tells from the renderer's far less often, for about 1.7x the CPU time a frame (README,
# "Which engine").
CUTOUT_DRAW = "cutout"  # the cut-out draw (engines/tiny/cutout.py): no decoder graph, the copy folder's denoiser
# Bump when a draw draws other frames from the same motions: they are in the engine's weights hash (`frames_hash`),
# which keys the latents cache and the clip cache (frames drawn by another version, or by another draw, are not
# reused). CUTOUT_VERSION: the cut-out draw's own pictures; EFFECTS_VERSION: the effects every draw lays over its
# frames (2: one picture a particle, placed by its own clock, engines/tiny/effects.py).
CUTOUT_VERSION = 4
EFFECTS_VERSION = 3


def frames_hash(folder_hash: str, draw: str) -> str:
    """The engine's weights hash for draw `draw` of a folder whose weights hash is `folder_hash`: its frames come
    from the folder's motions, that draw and the effects' pictures, so never the folder's own hash (the cut-out
    draw and the folder's decoder share a folder and must not share frames)."""
    version = CUTOUT_VERSION if draw == CUTOUT_DRAW else 0
    return hashlib.sha256(f"{folder_hash}:{draw}:{version}:{EFFECTS_VERSION}".encode()).hexdigest()[:16]


def cutout_runs_on(backend: str, device: str | None) -> bool:
    """Whether the cut-out draw serves on this backend and device: in numpy on the host beside onnxruntime's
    denoiser (the CPU: engines/tiny/cutout.py), or on torch, CPU or CUDA (engines/tiny/cutout_torch.py)."""
    return backend == "torch" or (backend == "onnxruntime" and device in (None, "auto", "cpu"))


def torch_on_cuda(device: str | None) -> bool:
    """Whether torch on this device setting runs on CUDA: "cuda[:k]", or "auto" where torch finds a GPU (torch is
    imported only for "auto": the backend that asks runs it anyway)."""
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return str(device).startswith("cuda")


def auto_draw(backend: str, device: str | None) -> str:
    """What `--motion-draw auto` draws on this backend and device: the cut-out draw in numpy on the CPU, and on torch
    on CUDA with Triton's kernels (an H100, one call: 2,885 fps at 200 streams against the copy decoder's 2,875;
    docs/bench/cutout_triton_2026-12-07); the copy decoder on torch elsewhere (torch's ops on CUDA: 449.5 fps against
    1,367, docs/bench/cutout_gpu_2026-12-07)."""
    if backend == "onnxruntime" and cutout_runs_on(backend, device):
        return CUTOUT_DRAW
    if backend == "torch" and torch_on_cuda(device):
        from avatarcast.engines.tiny.cutout_triton import serves_on

        if serves_on("cuda"):
            return CUTOUT_DRAW
    return "copy"


SHIPPED_DRAWS = {"copy": "motion", "residual": "motion_residual", CUTOUT_DRAW: "motion"}  # folders beside SHIPPED


def motion_folder(weights: str | Path | None = None, draw: str = "copy") -> Path:
    """The folder `--engine motion` serves: `weights` if given, else the shipped one that draws as `draw` says."""
    if weights:
        return Path(weights)
    if draw not in SHIPPED_DRAWS:
        raise WeightsError(f"no shipped motion decoder draws {draw!r}: one of {sorted(SHIPPED_DRAWS)}")
    shipped = SHIPPED.with_name(SHIPPED_DRAWS[draw])
    if (shipped / MANIFEST).exists():
        return shipped
    raise WeightsError(
        f"no architecture-3 weights in this install ({shipped} is missing): give --weights DIR, a folder written by "
        "`python -m tools.export_motion`"
    )


@dataclass
class MotionManifest:
    path: Path  # the folder
    decoder_shape: dict  # engines/tiny/motion.shape_to_dict
    denoiser_arch: dict  # engines/tiny/motion_denoiser.build_denoiser's
    mean: np.ndarray  # (MOTION_DIM,) float32
    std: np.ndarray
    files: dict[str, str]  # file name -> sha256
    source: dict  # what was exported: checkpoint names, hashes and steps
    graphs_from: dict[str, str] = field(default_factory=dict)  # graph name -> the folder holding it, relative
    cheaper_draw: str | None = None  # the folder, relative, whose decoder draws at the ladder's cheaper rung
    _verified: set = field(default_factory=set, repr=False, compare=False)

    @property
    def atlas(self) -> int:
        """Atlas faces the decoder mixes (0: the canonical face only)."""
        return int(self.decoder_shape.get("atlas", 0))

    @property
    def weights_hash(self) -> str:
        """One hash of the graphs and the normalization: keys the latents cache."""
        h = hashlib.sha256(json.dumps(self.files, sort_keys=True).encode())
        h.update(self.mean.tobytes() + self.std.tobytes())
        return h.hexdigest()[:16]

    def graph(self, name: str, verify: bool = True) -> Path:
        """A graph's file (here, or in the folder `graphs_from` names), checked against this manifest's sha256 (once
        per file version)."""
        p = self.path / self.graphs_from.get(name, ".") / GRAPHS[name]
        if not p.exists():
            raise WeightsError(f"{p} is missing: re-export the folder with `python -m tools.export_motion`")
        if verify:
            st = p.stat()
            seen = (p.name, st.st_size, st.st_mtime_ns)
            if seen not in self._verified:
                if file_sha256(p) != self.files.get(p.name):
                    raise WeightsError(f"{p} does not match the sha256 in {self.path / MANIFEST}: corrupt or stale")
                self._verified.add(seen)
        return p


def load_motion_manifest(folder: str | Path) -> MotionManifest:
    """The manifest of an exported folder. WeightsError for a folder that is not one, or not for these emotions."""
    d = Path(folder)
    mp = d / MANIFEST
    if not mp.exists():
        # the motion engine is the CPU's default, so a tiny folder given with --weights alone lands here
        hint = " it holds tiny engine weights: serve them with --engine tiny" if (d / TINY_MANIFEST).exists() else ""
        raise WeightsError(
            f"no {MANIFEST} in {d}: not a motion engine folder (write one with tools.export_motion);{hint}".rstrip(";")
        )
    try:
        m = json.loads(mp.read_text())
        man = MotionManifest(
            d,
            dict(m["decoder_shape"]),
            dict(m["denoiser_arch"]),
            np.asarray(m["mean"], np.float32),
            np.asarray(m["std"], np.float32),
            dict(m["files"]),
            dict(m.get("source", {})),
            {str(k): str(v) for k, v in m.get("graphs_from", {}).items()},
            None if m.get("cheaper_draw") is None else str(m["cheaper_draw"]),
        )
        emotions = tuple(m["emotions"])
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{mp} is not a valid motion manifest: {e}") from e
    if set(man.graphs_from) - set(GRAPHS):
        raise WeightsError(f"{mp}: graphs_from names graphs this code does not have: {sorted(man.graphs_from)}")
    if emotions != EMOTIONS:
        raise WeightsError(f"{mp}: exported for the emotions {list(emotions)}, the templates list {list(EMOTIONS)}")
    if man.mean.shape != (MOTION_DIM,) or man.std.shape != (MOTION_DIM,):
        raise WeightsError(f"{mp}: a motion normalization of {man.mean.shape}, this code's motion has {MOTION_DIM}")
    return man


def write_motion_manifest(
    folder: Path,
    decoder_shape: dict,
    denoiser_arch: dict,
    mean: np.ndarray,
    std: np.ndarray,
    source: dict,
    graphs_from: dict[str, str] | None = None,
    cheaper_draw: str | None = None,
) -> MotionManifest:
    """motion.json for the graphs in `folder` (or, for those `graphs_from` names, in that folder relative to it);
    `cheaper_draw`: the folder, relative to it, whose decoder the ladder's cheaper rung draws with."""
    shared = dict(graphs_from or {})
    body: dict = {
        "format": 1,
        "engine": "motion",
        "emotions": list(EMOTIONS),
        "decoder_shape": decoder_shape,
        "denoiser_arch": denoiser_arch,
        "mean": [float(v) for v in np.asarray(mean, np.float32)],
        "std": [float(v) for v in np.asarray(std, np.float32)],
        "files": {f: file_sha256(folder / shared.get(g, ".") / f) for g, f in GRAPHS.items()},
        "source": source,
    }
    if shared:
        body["graphs_from"] = shared
    if cheaper_draw is not None:
        body["cheaper_draw"] = cheaper_draw
    (folder / MANIFEST).write_text(json.dumps(body, indent=1) + "\n")
    return load_motion_manifest(folder)


__all__ = [
    "CUTOUT_DRAW",
    "GRAPHS",
    "MANIFEST",
    "SHIPPED_DRAWS",
    "MotionManifest",
    "auto_draw",
    "cutout_runs_on",
    "torch_on_cuda",
    "load_motion_manifest",
    "motion_folder",
    "write_motion_manifest",
]
