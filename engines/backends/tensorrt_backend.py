"""TensorRT backend: the tiny engine's graphs as TensorRT engines, built once per GPU and run on torch CUDA tensors.

The graphs get TensorRT's rewrite (tensorrt_graph.py), build into the engine cache (tensorrt_build.py)
and run through tensorrt_runtime.py, which also says whether this TensorRT can run on this GPU.

CLI (proves export + build on a GPU machine):
  python -m avatarcast.engines.backends.tensorrt_backend build --weights engines/tiny/weights --cache /tmp/trt
      [--max-batch 256] [--opt-batch 32] [--precision fp16] [--module tensorrt_rtx] [--run]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avatarcast.engines.backends.base import BackendError
from avatarcast.engines.backends.onnxruntime_backend import OnnxRuntimeBackend
from avatarcast.engines.backends.tensorrt_build import build_cached, build_target, profile_over_batch
from avatarcast.engines.backends.tensorrt_graph import GRAPH_REWRITE_VERSION
from avatarcast.engines.backends.tensorrt_runtime import (
    TRT_MODULES,
    TrtEngine,
    TrtTarget,
    gpu_info,
    import_tensorrt,
    make_logger,
    open_engine,
    runtime_target,
    unsupported_reason,
)
from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.engines.tiny.examples import example_inputs
from avatarcast.engines.tiny.external_data import inline_graph
from avatarcast.engines.tiny.weights import Manifest, load_manifest

GRAPHS = ("encoder", "decoder", "denoiser")
ENCODER_MAX_BATCH = 16  # reference frames only: keep its profile (and workspace) small
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "avatarcast" / "tensorrt"


# --- the tiny engine's graphs, built -------------------------------------------------------------


def graph_shapes(cfg: TinyConfig, graph: str) -> dict[str, tuple[int, ...]]:
    """Input shapes of a graph without the batch dimension."""
    C, T, K = cfg.latent_channels, cfg.chunk_frames, cfg.context_frames
    H, W = cfg.latent_hw
    if graph == "encoder":
        return {"frames": (cfg.height, cfg.width, 4)}
    if graph in ("decoder", "decoder_lowres"):
        return {"latents": (C, H, W)}
    return {
        "x": (T * C, H, W),
        "t": (),
        "d": (),
        "ctx": (K * C, H, W),
        "ref": (C, H, W),
        "emotion": (),
        "intensity": (),
    }


def batch_profile(cfg: TinyConfig, graph: str, max_batch: int, opt_batch: int | None = None) -> dict:
    """{input: (min, opt, max) shapes} over the batch dimension."""
    if graph == "encoder":
        max_batch = min(max_batch, ENCODER_MAX_BATCH)
    max_batch = max(1, int(max_batch))
    opt = max(1, min(int(opt_batch or max(1, max_batch // 4)), max_batch))
    return profile_over_batch(graph_shapes(cfg, graph), opt, max_batch)


def build_graph(
    target: TrtTarget,
    manifest: Manifest,
    graph: str,
    cache: Path,
    max_batch: int,
    opt_batch: int | None = None,
    precision: str = "fp16",
    verify: bool = True,
    force: bool = False,
    log=print,
) -> dict:
    """One graph's engine from the engine cache, or built; returns build_cached's info."""
    # the self-contained graph (weights read back from the safetensors file): the bytes, and so the
    # engine cache key, of the graph as exported
    data = inline_graph(manifest.graph_file(graph, verify=verify))
    return build_cached(
        target,
        graph,
        cache,
        hashlib.sha256(data).hexdigest(),
        batch_profile(manifest.config, graph, max_batch, opt_batch),
        precision,
        onnx_bytes=data,
        extra={"rewrite": GRAPH_REWRITE_VERSION},
        force=force,
        log=log,
    )


def build_engines(
    weights_dir: str | Path | None,
    cache_dir: str | Path | None = None,
    max_batch: int = 256,
    opt_batch: int | None = None,
    precision: str = "fp16",
    graphs: Sequence[str] = GRAPHS,
    module: str | None = None,
    force: bool = False,
    verify: bool = True,
    verbose: bool = False,
    log=print,
    manifest: Manifest | None = None,
) -> dict:
    """Build (or find in the cache) one engine per graph; returns {graph: info}.

    Works without a GPU only for TensorRT-RTX (its ahead-of-time build needs none).
    """
    target = build_target(module, verbose)
    manifest = manifest or load_manifest(weights_dir)
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    return {
        g: build_graph(target, manifest, g, cache, max_batch, opt_batch, precision, verify, force, log) for g in graphs
    }


# --- the backend ---------------------------------------------------------------------------------


class TensorRTBackend:
    """encode/decode/denoise through TensorRT engines (and *_t on torch CUDA tensors).

    Options: cache_dir (engines, timing and runtime caches; default ~/.cache/avatarcast/tensorrt),
    max_batch (largest denoiser batch = streams per call, default 256), decode_max_batch (largest
    decoder batch in frames, default max_batch), opt_batch, precision (fp16 | fp32), module
    ("tensorrt" or "tensorrt_rtx"; default: whichever imports, tensorrt first), cuda_graph
    (TensorRT-RTX's built-in CUDA graphs, default False), verify (ONNX sha256 check).
    """

    name = "tensorrt"

    def __init__(
        self,
        manifest: Manifest,
        threads: int | None = None,
        device: str | None = None,
        cache_dir: str | Path | None = None,
        max_batch: int = 256,
        decode_max_batch: int | None = None,
        opt_batch: int | None = None,
        precision: str = "fp16",
        module: str | None = None,
        cuda_graph: bool = False,
        verify: bool = True,
        verbose: bool = False,
        log=lambda *a: None,
    ):
        if device not in (None, "cuda"):
            raise BackendError("the tensorrt backend runs on an NVIDIA GPU only (device='cuda')")
        target = runtime_target(module, verbose)
        import torch  # torch: CUDA buffers, only on a GPU

        self.torch, self.trt, self.flavor, self.gpu = torch, target.trt, target.flavor, target.gpu
        self.manifest, self.cfg = manifest, manifest.config
        self.device, self.threads, self.precision = "cuda", threads, precision
        self.cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE
        dmax = int(decode_max_batch or max_batch)
        self.engines: dict[str, TrtEngine] = {}
        self.build_info = {}
        graphs = [("encoder", ENCODER_MAX_BATCH), ("decoder", dmax), ("denoiser", int(max_batch))]
        if manifest.has_lowres:  # the degradation ladder's half-resolution decoder
            graphs.append(("decoder_lowres", dmax))
        for g, mb in graphs:
            info = build_graph(target, manifest, g, self.cache_dir, mb, opt_batch, precision, verify, log=log)
            self.build_info[g] = info
            self.engines[g] = open_engine(target, Path(info["path"]), g, cuda_graph=cuda_graph)
        self._lock = threading.RLock()

    # -- tensor fast path ------------------------------------------------------------------------
    def _run(self, graph: str, names: Sequence[str], args: Sequence, out=None):
        eng = self.engines[graph]
        n = len(args[0])
        with self._lock:
            if n <= eng.max_batch:
                return eng(dict(zip(names, args)), out)
            pieces = []
            for i in range(0, n, eng.max_batch):
                pieces.append(eng(dict(zip(names, [a[i : i + eng.max_batch] for a in args]))))
            y = self.torch.cat(pieces)
            if out is not None:
                out.copy_(y)
                return out
            return y

    def encode_t(self, frames, out=None):
        return self._run("encoder", ("frames",), [frames], out)

    @property
    def has_lowres(self) -> bool:
        return "decoder_lowres" in self.engines

    def decode_t(self, latents, out=None, lowres: bool = False):
        """The whole latent grid (the engines are built for it) -> frames (N, 360, 640, 4) on the GPU."""
        graph = "decoder_lowres" if lowres and self.has_lowres else "decoder"
        grid = self._run(graph, ("latents",), [latents])
        cfg = self.cfg
        if out is None:
            out = self.torch.zeros((len(grid), cfg.height, cfg.width, 4), dtype=self.torch.uint8, device=grid.device)
        out[:, :, cfg.window_x0 : cfg.window_x0 + cfg.window_width] = grid[:, cfg.pad_top : cfg.pad_top + cfg.height]
        return out

    def denoise_t(self, x, t, d, ctx, ref, emotion, intensity, out=None):
        return self._run(
            "denoiser",
            ("x", "t", "d", "ctx", "ref", "emotion", "intensity"),
            [x, t, d, ctx, ref, emotion, intensity],
            out,
        )

    def warmup(self, batch_sizes: Sequence[int] = (1,), graphs: Sequence[str] = ("denoiser", "decoder")) -> list:
        torch, cfg = self.torch, self.cfg
        C, T, K = cfg.latent_channels, cfg.chunk_frames, cfg.context_frames
        H, W = cfg.latent_hw
        done = []
        for b in batch_sizes:
            z = lambda c, b=b: torch.zeros((b, c, H, W), device="cuda")  # noqa: E731
            v = torch.zeros(b, device="cuda")
            if "denoiser" in graphs:
                self.denoise_t(z(T * C), v, v, z(K * C), z(C), torch.zeros(b, dtype=torch.long, device="cuda"), v)
                done.append(("denoiser", b))
            if "decoder" in graphs:
                self.decode_t(z(C))
                done.append(("decoder", b))
        torch.cuda.synchronize()
        for e in self.engines.values():
            e.save_runtime_cache()
        return done

    # -- numpy protocol ----------------------------------------------------------------------------
    def _to(self, a, dtype):
        a = np.ascontiguousarray(a, dtype=dtype)
        return self.torch.from_numpy(a if a.flags.writeable else a.copy()).to("cuda", non_blocking=True)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        return self.encode_t(self._to(frames, np.uint8)).float().cpu().numpy()

    def decode(self, latents: np.ndarray, lowres: bool = False) -> np.ndarray:
        return self.decode_t(self._to(latents, np.float32), lowres=lowres).cpu().numpy()

    def denoise(self, x, t, d, ctx, ref, emotion, intensity) -> np.ndarray:
        b = len(x)
        vec = lambda v, dt: self._to(np.array(np.broadcast_to(np.asarray(v, dtype=dt), (b,))), dt)  # noqa: E731
        return (
            self.denoise_t(
                self._to(x, np.float32),
                vec(t, np.float32),
                vec(d, np.float32),
                self._to(ctx, np.float32),
                self._to(ref, np.float32),
                vec(emotion, np.int64),
                vec(intensity, np.float32),
            )
            .float()
            .cpu()
            .numpy()
        )

    @property
    def device_name(self) -> str:
        return self.gpu["name"]

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": "cuda",
            "device_name": self.gpu["name"],
            "compute_capability": "{:d}.{:d}".format(*self.gpu["cc"]),
            "tensorrt": f"{self.flavor} {self.trt.__version__}",
            "precision": self.precision,
            "engines": {g: Path(i["path"]).name for g, i in self.build_info.items()},
        }

    def close(self) -> None:
        for e in self.engines.values():
            try:
                e.save_runtime_cache()
            except Exception:
                pass


# --- CLI ----------------------------------------------------------------------------------------


def check_engines(info: dict, manifest: Manifest, module: str | None) -> dict:
    """Load each built engine and run it once at batch 2 against onnxruntime (GPU machines)."""
    import torch  # torch, as above

    trt, flavor = import_tensorrt(module)
    target = TrtTarget(trt, flavor, str(trt.__version__), gpu_info(), make_logger(trt))
    reason = unsupported_reason(flavor, target.version, target.gpu["cc"], target.gpu["name"])
    if reason:  # show what TensorRT itself says when asked to load the engine anyway
        res = {"runnable": False, "reason": reason}
        try:
            eng = TrtEngine(target, Path(info["denoiser"]["path"]).read_bytes(), None, "denoiser")
            feeds = {k: torch.from_numpy(v).cuda() for k, v in example_inputs(manifest.config, 1)["denoiser"].items()}
            eng(feeds)
            torch.cuda.synchronize()
            res["load_attempt"] = "loaded and ran (unexpected for an unsupported GPU)"
        except Exception as e:
            res["load_attempt"] = f"{type(e).__name__}: {e}"
        return res

    ref = OnnxRuntimeBackend(manifest, verify=False)
    ex = example_inputs(manifest.config, 2, seed=5)
    res = {"runnable": True}
    for g in info:
        eng = open_engine(target, Path(info[g]["path"]), g)
        feeds = {k: torch.from_numpy(v).cuda() for k, v in ex[g].items()}
        got = eng(feeds).float().cpu().numpy()
        want = ref.sessions[g].run(None, ex[g])[0].astype(np.float32)
        res[g] = {"max_abs_err": float(np.abs(got - want).max()), "ref_max": float(np.abs(want).max())}
        eng.save_runtime_cache()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m avatarcast.engines.backends.tensorrt_backend",
        description="Build (and cache) the tiny engine's TensorRT engines.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser(
        "build", help="build the engines (three, and the half-resolution decoder where shipped) into the cache"
    )
    b.add_argument("--weights", default=None, help="weights folder (default: the shipped weights)")
    b.add_argument("--cache", default=None, help=f"engine cache folder (default {DEFAULT_CACHE})")
    b.add_argument("--max-batch", type=int, default=256)
    b.add_argument("--opt-batch", type=int, default=None)
    b.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    b.add_argument("--module", choices=TRT_MODULES, default=None)
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument("--run", action="store_true", help="then load each engine and compare with onnxruntime")
    b.add_argument("--verbose", action="store_true")
    b.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        manifest = load_manifest(args.weights)
        t0 = time.perf_counter()
        graphs = tuple(manifest.onnx_files)  # with the half-resolution decoder where shipped
        info = build_engines(
            None,
            args.cache,
            max_batch=args.max_batch,
            opt_batch=args.opt_batch,
            precision=args.precision,
            graphs=graphs,
            module=args.module,
            force=args.force,
            verbose=args.verbose,
            manifest=manifest,
            log=(lambda *a: None) if args.json else print,
        )
        result: dict[str, Any] = {"engines": info, "seconds": round(time.perf_counter() - t0, 1)}
        if args.run:
            result["run"] = check_engines(info, manifest, args.module)
    except BackendError as e:
        print(f"tensorrt_backend: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"built/cached {len(info)} engines in {result['seconds']}s")
        if "run" in result:
            print(json.dumps(result["run"], indent=1))
    return 0 if result.get("run", {}).get("runnable", True) else 3


if __name__ == "__main__":
    sys.exit(main())
