"""ONNX export of the Wan engine's two hot graphs and their TensorRT engine build.

  * `denoiser`: one transformer forward, (x, per-token timesteps, prompt embeddings) -> prediction,
    at the serving chunk shape (context + new latent frames), dynamic batch.
  * `vae_step`: one steady-state frame of the streaming VAE decoder (vae_stream.py): the new latent
    frame plus every causal-conv cache in, the 4 decoded frames plus the updated caches out, so a
    TensorRT engine can carry each stream's cache exactly like the torch path does.

Engines are built as the tiny engine's are (engines/backends/tensorrt_build.py): a batch
optimization profile, a timing cache (TensorRT) and an engine cache keyed by the ONNX hash, the
profile, the GPU and the TensorRT flavour and version; engines/wan/runtime.py builds on first use
through build_graph too. TensorRT-RTX builds ahead of time without a GPU (for the RTX
architectures), so the build is tested on a CPU machine too; running the engines needs a GPU that
flavour supports (not Hopper: see DESIGN.md).

  python -m avatarcast.engines.wan.export --checkpoint DIR --out DIR [--build --module tensorrt_rtx]
  python -m avatarcast.engines.wan.export --random-weights --layers 1 --out DIR --build   (5B widths, 1 layer)

DIR/export.json lists the graphs for serving them: `serve --engine wan --checkpoint CKPT
--wan-backend tensorrt --wan-export-dir DIR` (engines/wan/runtime.py; export with the serve
flags' --wan-chunk-latents as --chunk-frames).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from avatarcast.engines.backends.tensorrt_build import build_cached, build_target, profile_over_batch
from avatarcast.engines.backends.tensorrt_runtime import TrtTarget
from avatarcast.engines.wan.checkpoint import CheckpointInfo
from avatarcast.engines.wan.engine import WanEngine
from avatarcast.engines.wan.shapes import TRANSFORMER_5B, VAE_22
from avatarcast.engines.wan.vae_stream import StreamingVaeDecoder, VaeStreamCache

ONNX_OPSET = 18


class DenoiserGraph(nn.Module):
    """transformer(x, t, text) -> prediction, as a plain module for export."""

    def __init__(self, transformer) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.transformer(x, t, text, return_dict=False)[0]


class VaeStepGraph(nn.Module):
    """One steady-state streaming-decoder frame with its caches as explicit inputs and outputs."""

    def __init__(self, vae, layout: list[bool]) -> None:
        super().__init__()
        self.vae, self.layout = vae, layout  # layout[i]: cache entry i is a tensor (else stays None)

    def forward(self, x: torch.Tensor, *caches: torch.Tensor):
        it = iter(caches)
        feats = [next(it) if has else None for has in self.layout]
        frame = self.vae.decoder(x, feat_cache=feats, feat_idx=[0], first_chunk=False)
        return (frame, *[f for f, has in zip(feats, self.layout) if has])


def _export(
    module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], varargs: bool = False
) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # the torch.export-based exporter: it decomposes ops the TorchScript one lacks (aten::rms_norm)
    # traced at batch 2: torch.export specializes dimensions of size 1
    batch = torch.export.Dim("batch", min=1, max=256)
    dyn = ({0: batch}, tuple({0: batch} for _ in args[1:])) if varargs else tuple({0: batch} for _ in args)
    prog = torch.onnx.export(
        module,
        args,
        input_names=inputs,
        output_names=outputs,
        dynamic_shapes=dyn,
        opset_version=ONNX_OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    assert prog is not None  # the dynamo exporter returns its program
    prog.optimize()
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    external = weights > 1.8e9  # protobuf's 2 GB limit: big weights go to <name>.onnx.data
    prog.save(str(path), external_data=external)
    h = hashlib.sha256(path.read_bytes())
    data_file = Path(str(path) + ".data")
    if external and data_file.exists():
        with open(data_file, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    return {
        "path": str(path),
        "seconds": round(time.perf_counter() - t0, 2),
        "external_data": external,
        "bytes": path.stat().st_size + (data_file.stat().st_size if external and data_file.exists() else 0),
        "sha256": h.hexdigest(),
        "dtype": str(args[0].dtype).replace("torch.", ""),
        "shapes": {n: list(a.shape) for n, a in zip(inputs, args)},
    }


@torch.no_grad()
def export_denoiser(engine, path: Path, dtype: torch.dtype = torch.float32) -> dict:
    """The transformer at the engine's chunk shape (batch dynamic)."""
    K, T = engine.context_latent_frames, engine.chunk_latent_frames
    h, w = engine.latent_hw
    _, ph, pw = engine.transformer.config.patch_size
    x = torch.randn(2, engine.z_dim, K + T, h, w, dtype=dtype)
    t = torch.full((2, (K + T) * (h // ph) * (w // pw)), 500.0)  # timesteps stay float32
    text = (torch.randn(2, 512, engine.transformer.config.text_dim) * 0.1).to(dtype)
    mod = DenoiserGraph(engine.transformer.to("cpu", dtype)).eval()
    return _export(mod, (x, t, text), path, ["x", "t", "text"], ["pred"])


@torch.no_grad()
def export_vae_step(engine, path: Path, dtype: torch.dtype = torch.float32) -> dict:
    """The steady-state VAE frame: caches come from decoding two frames of a stream first."""
    vae = engine.vae.float().cpu()
    dec = StreamingVaeDecoder(vae)
    h, w = engine.latent_hw
    caches2 = [VaeStreamCache(), VaeStreamCache()]
    dec.decode(torch.randn(2, engine.z_dim, 2, h, w), caches2)
    assert caches2[0].feats is not None and caches2[1].feats is not None  # the decode filled them
    layout = [torch.is_tensor(f) for f in caches2[0].feats]
    caches = tuple(torch.cat([a, b]) for a, b in zip(caches2[0].feats, caches2[1].feats) if torch.is_tensor(a))
    x = vae.post_quant_conv(torch.randn(2, engine.z_dim, 1, h, w))
    if dtype != torch.float32:  # primed in float32 (CPU kernels), exported in dtype
        vae, x, caches = vae.to(dtype), x.to(dtype), tuple(c.to(dtype) for c in caches)
    names = [f"cache{i}" for i in range(len(caches))]
    info = _export(
        VaeStepGraph(vae, layout).eval(),
        (x, *caches),
        path,
        ["x", *names],
        ["frame", *[n + "_out" for n in names]],
        varargs=True,
    )
    info["layout"] = layout
    return info


MANIFEST = "export.json"  # what engines/wan/runtime.py reads: the graphs, their shapes and the cache layout


def export_all(engine, out: Path, dtype: torch.dtype = torch.float32) -> dict:
    """Both graphs into `out`, with the manifest that serving them needs (--wan-backend tensorrt|onnxruntime)."""
    exported = {
        "denoiser": export_denoiser(engine, out / "wan_denoiser.onnx", dtype),
        "vae_step": export_vae_step(engine, out / "wan_vae_step.onnx", dtype),
    }
    write_manifest(out, exported, engine)
    return exported


def write_manifest(out: Path, exported: dict[str, dict], engine, engines: dict | None = None) -> Path:
    """export.json: the graphs with paths relative to `out` (the directory can move) and the engine shape."""
    graphs = {k: dict(v, path=Path(v["path"]).name) for k, v in exported.items()}
    manifest = {
        "graphs": graphs,
        "context_latent_frames": engine.context_latent_frames,
        "chunk_latent_frames": engine.chunk_latent_frames,
        "latent_hw": list(engine.latent_hw),
        "z_dim": engine.z_dim,
        "engines": engines or {},
    }
    path = Path(out) / MANIFEST
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def batch_profile(info: dict, max_batch: int, opt_batch: int | None = None) -> dict:
    """{input: (min, opt, max) shapes} over the batch axis of an exported graph's inputs."""
    opt = opt_batch or max(1, min(max_batch, 8))
    return profile_over_batch({n: s[1:] for n, s in info["shapes"].items()}, opt, max_batch)


def build_graph(
    target: TrtTarget,
    name: str,
    info: dict,
    path: Path,
    cache_dir: Path,
    max_batch: int,
    precision: str = "fp16",
    log=print,
    workspace_gb: float = 4.0,
) -> dict:
    """One exported graph's TensorRT engine, from the engine cache or built; returns build_cached's info."""
    # graphs exported in fp16/bf16, or too big for one protobuf, are built as they are
    big = info.get("external_data") or info.get("dtype", "float32") != "float32"
    return build_cached(
        target,
        f"wan-{name}",
        cache_dir,
        info["sha256"],
        batch_profile(info, max_batch),
        "as-exported" if big else precision,
        onnx_path=path,
        extra={"graph": f"wan-{name}"},
        log=log,
        workspace_gb=workspace_gb,
    )


def build(
    exported: dict[str, dict],
    cache_dir: Path,
    max_batch: int,
    module: str | None = None,
    precision: str = "fp16",
    log=print,
    vae_max_batch: int = 4,
    workspace_gb: float = 4.0,
) -> dict:
    """Build (or find in the engine cache) one TensorRT engine per exported graph."""
    target = build_target(module)
    out = {}
    for name, info in exported.items():
        rec = build_graph(
            target,
            name,
            info,
            Path(info["path"]),
            cache_dir,
            vae_max_batch if name == "vae_step" else max_batch,
            precision,
            log,
            workspace_gb,
        )
        rec["profile"] = {k: v for k, v in rec["profile"].items() if k in ("x", "t", "text")}  # not every cache
        out[name] = rec
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m avatarcast.engines.wan.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint")
    src.add_argument("--random-weights", action="store_true", help="Wan2.2-TI2V-5B widths, random values")
    ap.add_argument("--layers", type=int, default=1, help="--random-weights: transformer layers")
    ap.add_argument("--out", required=True)
    ap.add_argument("--chunk-frames", type=int, default=2)
    ap.add_argument("--build", action="store_true")
    ap.add_argument("--module", default=None, help="tensorrt | tensorrt_rtx")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--vae-max-batch", type=int, default=4, help="the VAE frame engine's batch profile maximum")
    ap.add_argument("--workspace-gb", type=float, default=4.0)
    ap.add_argument(
        "--precision",
        default="fp16",
        choices=("fp16", "fp32"),
        help="for float32 exports: fp16 convolutions (fp16) or as is (fp32)",
    )
    ap.add_argument(
        "--dtype",
        default="fp32",
        choices=("fp32", "fp16", "bf16"),
        help="export weights and activations in this type (fp16/bf16 keep 5B-width graphs small)",
    )
    args = ap.parse_args(argv)
    if args.checkpoint:
        eng = WanEngine.load(args.checkpoint, chunk_latent_frames=args.chunk_frames)
    else:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel  # diffusers: heavy, only for random weights

        tr = WanTransformer3DModel(**dict(TRANSFORMER_5B, num_layers=args.layers))
        eng = WanEngine(
            tr,
            AutoencoderKLWan(**VAE_22),
            CheckpointInfo(None, None, None),  # type: ignore[arg-type]
            chunk_latent_frames=args.chunk_frames,
        )
    out = Path(args.out)
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    report = {"exported": export_all(eng, out, dt)}
    for k, v in report["exported"].items():
        print(f"  {k}: {v['path']} ({v['bytes'] / 1e6:.1f} MB) in {v['seconds']} s", file=sys.stderr)
    if args.build:
        report["engines"] = build(
            report["exported"],
            out / "engines",
            args.max_batch,
            args.module,
            args.precision,
            log=lambda m: print(m, file=sys.stderr),
            vae_max_batch=args.vae_max_batch,
            workspace_gb=args.workspace_gb,
        )
        write_manifest(out, report["exported"], eng, report["engines"])
    for v in report["exported"].values():
        v.pop("layout", None)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
