"""The Wan engine's exported graphs (engines/wan/export.py) run by TensorRT or ONNX Runtime.

`serve --engine wan --checkpoint CKPT --wan-backend tensorrt --wan-export-dir DIR`: the transformer
forward and the VAE's steady-state frame run as engines built from DIR's ONNX graphs (or found in the
engine cache: keyed by the graph's hash, the batch profile, the GPU and the TensorRT flavour and
version), with `tensorrt` or `tensorrt_rtx`. Conditioning, the sampler and a stream's first VAE frames
stay torch, so the checkpoint is loaded as usual. `onnxruntime` runs the same graphs with ONNX Runtime
(CUDA where onnxruntime-gpu is installed, else CPU): what CI uses to check this wiring on a CPU, since
no TensorRT engine runs without a GPU it supports (TensorRT-RTX does not run on Hopper).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from avatarcast.engines.backends.tensorrt_runtime import gpu_info, open_engine, runtime_target
from avatarcast.engines.errors import EngineError
from avatarcast.engines.wan.export import MANIFEST, build_graph
from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder

log = logging.getLogger(__name__)

BACKENDS = ("torch", "tensorrt", "onnxruntime")
EXPORT_HINT = (
    "python -m avatarcast.engines.wan.export --checkpoint CKPT --out DIR --chunk-frames T [--build --module tensorrt]"
)


class ExportError(EngineError, RuntimeError):
    """The exported graphs are missing or do not fit this engine."""


def load_manifest(export_dir: str | Path) -> dict:
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise ExportError(f"no {MANIFEST} in {export_dir!s}: export the Wan graphs first ({EXPORT_HINT})")
    m = json.loads(path.read_text())
    for g in ("denoiser", "vae_step"):
        f = Path(export_dir) / m["graphs"][g]["path"]
        if not f.is_file():
            raise ExportError(
                f"{export_dir!s}: {f.name} is missing (listed in {MANIFEST}); export again ({EXPORT_HINT})"
            )
    return m


def check_fits(m: dict, engine) -> None:
    """The graphs are traced at one chunk shape: the serving engine must have it."""
    want = {
        "context_latent_frames": engine.context_latent_frames,
        "chunk_latent_frames": engine.chunk_latent_frames,
        "latent_hw": list(engine.latent_hw),
        "z_dim": engine.z_dim,
    }
    bad = {k: (m.get(k), v) for k, v in want.items() if m.get(k) != v}
    if bad:
        raise ExportError(
            "the exported graphs do not fit this engine: "
            + ", ".join(f"{k} exported {a}, serving {b}" for k, (a, b) in bad.items())
            + f"; export with the serving flags ({EXPORT_HINT})"
        )


class OrtGraph:
    """One exported graph in an ONNX Runtime session, fed and answering torch tensors."""

    def __init__(self, path: Path, device: torch.device) -> None:
        import onnxruntime as ort  # onnxruntime: only for the exported backends

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.types = {i.name: np.float16 if "float16" in i.type else np.float32 for i in self.session.get_inputs()}
        self.device = device
        self.max_batch = 1 << 30

    def run(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        arrays = {n: feeds[n].detach().float().cpu().numpy().astype(self.types[n]) for n in self.inputs}
        return [torch.from_numpy(np.asarray(o)).to(self.device) for o in self.session.run(None, arrays)]


class TrtGraph:
    """One exported graph as a TensorRT engine, built on first use and cached (export.build_graph)."""

    def __init__(
        self, name: str, path: Path, info: dict, cache_dir: Path, max_batch: int, module: str | None = None
    ) -> None:
        gpu_info()  # no GPU is the first thing to say on a machine without one, before any missing TensorRT
        target = runtime_target(module)  # one this TensorRT runs on, checked before building (TensorRT-RTX needs none)
        rec = build_graph(target, name, info, path, cache_dir, max_batch, "fp16", log.info)
        self.engine = open_engine(target, Path(rec["path"]), f"wan {name}")
        self.inputs = self.engine.inputs
        self.max_batch = self.engine.max_batch

    def run(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return self.engine.run_all(feeds)


class GraphDenoiser:
    """transformer(x, t, text, return_dict=False) through an exported graph, in slices of its largest batch.

    The graph is traced with `text_len` prompt tokens: shorter prompts are zero-padded to it, as the
    server pads every prompt (and as diffusers pads UMT5's)."""

    def __init__(self, graph, text_len: int = 512) -> None:
        self.graph, self.text_len = graph, text_len

    def __call__(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, return_dict: bool = False):
        if text.shape[1] > self.text_len:
            raise ExportError(f"{text.shape[1]} prompt tokens; the exported graph takes at most {self.text_len}")
        if text.shape[1] < self.text_len:
            text = torch.nn.functional.pad(text, (0, 0, 0, self.text_len - text.shape[1]))
        n = self.graph.max_batch
        parts = [
            self.graph.run({"x": x[i : i + n], "t": t[i : i + n], "text": text[i : i + n]})[0]
            for i in range(0, x.shape[0], n)
        ]
        return (torch.cat(parts).to(x.dtype),)


class GraphSteadyDecoder:
    """The VAE's steady frame through an exported graph: decoder input (B, C, 1, h, w) and the stream
    caches in, the 4 decoded frames out; the caches are updated in place (StreamingVaeDecoder's
    interface for a steady decoder, as vae_aot's)."""

    def __init__(self, graph) -> None:
        self.graph = graph

    def __call__(self, x: torch.Tensor, feats: list) -> torch.Tensor:
        idx = [i for i, f in enumerate(feats) if torch.is_tensor(f)]
        if len(idx) != len(self.graph.inputs) - 1:
            raise ExportError(
                f"the VAE frame graph takes {len(self.graph.inputs) - 1} caches, the stream has {len(idx)}"
            )
        outs = self.graph.run({"x": x, **{f"cache{j}": feats[i] for j, i in enumerate(idx)}})
        for i, t in zip(idx, outs[1:]):
            feats[i] = t.to(feats[i].dtype)
        return outs[0].to(x.dtype)


def use_exported(
    engine,
    export_dir: str | Path,
    backend: str,
    cache_dir: str | Path | None = None,
    vae_max_batch: int = 4,
    max_batch: int = 16,
    module: str | None = None,
) -> dict:
    """Serve `engine` (a WanEngine) through the exported graphs in `export_dir`; returns the manifest."""
    if backend not in BACKENDS[1:]:
        raise ValueError(f"backend must be tensorrt or onnxruntime, got {backend!r}")
    m = load_manifest(export_dir)
    check_fits(m, engine)
    root = Path(export_dir)
    graphs: dict[str, OrtGraph | TrtGraph] = {}
    for name, mb in (("denoiser", max_batch), ("vae_step", vae_max_batch)):
        info, path = m["graphs"][name], root / m["graphs"][name]["path"]
        if backend == "onnxruntime":
            graphs[name] = OrtGraph(path, engine.device)
        else:
            graphs[name] = TrtGraph(name, path, info, Path(cache_dir or root / "engines"), mb, module)
    engine.denoiser = GraphDenoiser(graphs["denoiser"], m["graphs"]["denoiser"]["shapes"]["text"][1])
    engine.vae_stream = StreamingVaeDecoder(
        engine.vae,
        max_batch=min(vae_max_batch, graphs["vae_step"].max_batch),
        frames_per_call=1,
        steady=GraphSteadyDecoder(graphs["vae_step"]),
    )
    log.info("wan engine: the transformer and the VAE's steady frame run on %s (%s)", backend, root)
    return m
