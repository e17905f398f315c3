"""TensorRT backend: one engine per exported ONNX graph, built once per GPU and cached on disk.

Works with NVIDIA TensorRT (`import tensorrt`, data-center and RTX GPUs) and TensorRT-RTX
(`import tensorrt_rtx`, the same Python API under another name, GeForce/RTX GPUs only).

Build:
  * an optimization profile over the batch dimension of every input (min 1, opt, max);
  * precision "fp16" (default): the ONNX graph is rewritten so that every convolution runs in
    fp16 (its weights are fp16 in the file anyway; its input is cast to fp16 and its output back
    to fp32) and the network is built strongly typed, which TensorRT-RTX and TensorRT 11 require
    and TensorRT 10 supports. Normalizations, the timestep embeddings (sin/cos of t*1000, which
    fp16 cannot hold) and the uint8 conversion stay fp32. precision "fp32" keeps the graph as is
    (TF32 convolutions);
  * a timing cache file per GPU and TensorRT version (TensorRT only: TensorRT-RTX does no
    autotuning at build time and deprecates the timing cache; it keeps a runtime cache of its
    JIT-compiled kernels instead, also on disk);
  * an engine cache keyed by sha256(ONNX bytes) + profile + precision + GPU name + compute
    capability + TensorRT flavour and version (engine_cache_key).

Run: engines execute on torch CUDA tensors (device buffers, the current torch stream). A GPU
TensorRT cannot run on raises BackendError with the reason, e.g. TensorRT-RTX on an H100/H200
(compute capability 9.0, Hopper): the engine builds (ahead-of-time, for the RTX architectures)
but cannot be loaded for that GPU.

CLI (proves export + build on a GPU machine):
  python -m avatarcast.engines.backends.tensorrt_backend build --weights engines/tiny/weights --cache /tmp/trt
      [--max-batch 256] [--opt-batch 32] [--precision fp16] [--module tensorrt_rtx] [--run]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
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
from avatarcast.engines.tiny.config import TinyConfig
from avatarcast.engines.tiny.examples import example_inputs
from avatarcast.engines.tiny.weights import Manifest, load_manifest

TRT_MODULES = ("tensorrt", "tensorrt_rtx")
GRAPHS = ("encoder", "decoder", "denoiser")
# TensorRT-RTX support matrix (1.0-1.5): Turing 7.5, Ampere 8.6, Ada 8.9, Blackwell 12.0/12.1.
# Not supported: 8.0 (A100), 8.7 (Orin), 9.0 (H100/H200 Hopper), 10.x/11.x (B200/Thor).
RTX_SUPPORTED_CC = frozenset({(7, 5), (8, 6), (8, 9), (12, 0), (12, 1)})
TRT_MIN_CC = (7, 5)  # TensorRT 10 dropped Volta and older
GRAPH_REWRITE_VERSION = 1  # bump when trt_graph() changes: part of the engine cache key
ENCODER_MAX_BATCH = 16  # reference frames only: keep its profile (and workspace) small
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "avatarcast" / "tensorrt"


# --- importing and identifying ------------------------------------------------------------------

def import_tensorrt(module: str | None = None):
    """(module, flavour) for `tensorrt` or `tensorrt_rtx`; BackendError naming what failed."""
    names = [module] if module else list(TRT_MODULES)
    errors = []
    for n in names:
        if n not in TRT_MODULES:
            raise BackendError(f"unknown TensorRT module {n!r}; use one of {', '.join(TRT_MODULES)}")
        # the tensorrt-rtx-cu13-bindings wheel names its package tensorrt_rtx_bindings
        for mod_name in (n, "tensorrt_rtx_bindings") if n == "tensorrt_rtx" else (n,):
            try:
                return importlib.import_module(mod_name), n
            except Exception as e:  # ImportError, or OSError when a shared library is missing
                errors.append(f"`import {mod_name}` failed: {type(e).__name__}: {e}")
    raise BackendError(
        "the tensorrt backend needs NVIDIA TensorRT's Python bindings, but " + "; ".join(errors)
        + ". Install TensorRT (pip install tensorrt-cu13, or tensorrt-cu12 for CUDA 12) or TensorRT-RTX "
          "(pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings), or use --backend torch / onnxruntime")


def gpu_info(device_index: int = 0) -> dict:
    """Name and compute capability of a CUDA GPU (through torch), or BackendError."""
    try:
        import torch
    except ImportError as e:
        raise BackendError(f"the tensorrt backend runs its engines on torch CUDA tensors, but torch cannot be "
                           f"imported ({e})") from e
    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise BackendError(f"the tensorrt backend needs an NVIDIA GPU, but {why} (torch {torch.__version__})")
    p = torch.cuda.get_device_properties(device_index)
    return {"name": p.name, "cc": (int(p.major), int(p.minor)), "memory_gb": round(p.total_memory / 2**30, 1),
            "index": device_index}


def unsupported_reason(flavor: str, trt_version: str, cc: tuple[int, int], gpu_name: str) -> str | None:
    """Why this TensorRT flavour cannot run engines on this GPU, or None if it can."""
    cc = (cc[0], cc[1])  # a list (from JSON) too
    if flavor == "tensorrt_rtx" and cc not in RTX_SUPPORTED_CC:
        arch = {(8, 0): "Ampere data-center (A100/A30)", (8, 7): "Ampere Orin", (9, 0): "Hopper (H100/H200)",
                (10, 0): "Blackwell data-center (B200)", (10, 3): "Blackwell Ultra (B300)",
                (11, 0): "Blackwell Thor"}.get(cc, "this architecture")
        ok = ", ".join(f"{a}.{b}" for a, b in sorted(RTX_SUPPORTED_CC))
        return (f"TensorRT-RTX {trt_version} does not support {gpu_name} (compute capability {cc[0]}.{cc[1]}, {arch}): "
                f"it runs on compute capabilities {ok} only (GeForce/RTX Turing, Ampere, Ada, Blackwell). Engines build "
                f"ahead of time but cannot be loaded on this GPU; install the `tensorrt` package (full TensorRT) or use "
                f"--backend torch")
    if cc < TRT_MIN_CC:
        return (f"TensorRT {trt_version} needs compute capability {TRT_MIN_CC[0]}.{TRT_MIN_CC[1]} or newer; "
                f"{gpu_name} is {cc[0]}.{cc[1]}: use --backend torch")
    return None


def engine_cache_key(onnx_sha256: str, profile: dict, gpu_name: str, compute_capability: Sequence[int],
                     trt_version: str, flavor: str = "tensorrt", precision: str = "fp16", extra: dict | None = None) -> str:
    """sha256 over everything an engine depends on; any change gives a new engine file."""
    body = {
        "onnx": onnx_sha256,
        "profile": {k: [list(map(int, s)) for s in v] for k, v in sorted(profile.items())},
        "gpu": gpu_name, "cc": list(map(int, compute_capability)),
        "trt": f"{flavor}-{trt_version}", "precision": precision, "extra": extra or {},
        "format": 1,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def graph_shapes(cfg: TinyConfig, graph: str) -> dict[str, tuple[int, ...]]:
    """Input shapes of a graph without the batch dimension."""
    C, T, K = cfg.latent_channels, cfg.chunk_frames, cfg.context_frames
    H, W = cfg.latent_hw
    if graph == "encoder":
        return {"frames": (cfg.height, cfg.width, 4)}
    if graph in ("decoder", "decoder_lowres"):
        return {"latents": (C, H, W)}
    return {"x": (T * C, H, W), "t": (), "d": (), "ctx": (K * C, H, W), "ref": (C, H, W), "emotion": (),
            "intensity": ()}


def batch_profile(cfg: TinyConfig, graph: str, max_batch: int, opt_batch: int | None = None) -> dict:
    """{input: (min, opt, max) shapes} over the batch dimension."""
    if graph == "encoder":
        max_batch = min(max_batch, ENCODER_MAX_BATCH)
    max_batch = max(1, int(max_batch))
    opt = max(1, min(int(opt_batch or max(1, max_batch // 4)), max_batch))
    return {n: ((1, *s), (opt, *s), (max_batch, *s)) for n, s in graph_shapes(cfg, graph).items()}


# --- the fp16-convolution rewrite --------------------------------------------------------------

def uint8_io_outermost(model):
    """Move the uint8 Casts of the graph's I/O outside the layout Transposes next to them.

    The exported graphs read frames as uint8 -> Transpose -> Cast(float) and write them as
    Cast(uint8) -> Transpose; TensorRT takes uint8 only straight into or out of a Cast, so this
    makes it Cast -> Transpose and Transpose -> Cast (the same numbers: a transpose moves values).
    """
    from onnx import TensorProto

    g = model.graph
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}
    for inp in g.input:
        if inp.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        users = consumers.get(inp.name, [])
        if len(users) == 1 and users[0].op_type == "Transpose":
            tr = users[0]
            nxt = consumers.get(tr.output[0], [])
            if len(nxt) == 1 and nxt[0].op_type == "Cast":
                cast = nxt[0]
                mid, out = tr.output[0], cast.output[0]
                cast.input[0], cast.output[0] = inp.name, mid  # frames -> Cast -> mid
                tr.input[0], tr.output[0] = mid, out           # mid -> Transpose -> out
    for o in g.output:
        if o.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        tr = producer.get(o.name)
        if tr is not None and tr.op_type == "Transpose":
            cast = producer.get(tr.input[0])
            if cast is not None and cast.op_type == "Cast" and len(consumers.get(cast.output[0], [])) == 1:
                src, mid = cast.input[0], cast.output[0]
                tr.input[0], tr.output[0] = src, mid           # src -> Transpose -> mid
                cast.input[0], cast.output[0] = mid, o.name    # mid -> Cast -> frames
    # keep the node list topologically sorted
    order, avail = [], {i.name for i in g.input} | {i.name for i in g.initializer}
    pending = list(g.node)
    while pending:
        rest = []
        for n in pending:
            if all((not i) or i in avail for i in n.input):
                order.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError("graph is not a DAG")
        pending = rest
    del g.node[:]
    g.node.extend(order)
    return model


def trt_graph(onnx_bytes: bytes, precision: str) -> bytes:
    """The ONNX graph as TensorRT gets it: uint8 I/O next to Casts, and fp16 convolutions."""
    import onnx
    model = uint8_io_outermost(onnx.load_from_string(onnx_bytes))
    if precision == "fp16":
        model = fp16_conv_graph(model)
    elif precision != "fp32":
        raise BackendError(f"precision must be fp16 or fp32, not {precision!r}")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def fp16_conv_graph(model):
    """Rewrite an ONNX model so every Conv runs in fp16 (input cast in, output cast back to fp32).

    Weights stored as fp16 initializers + Cast (tools.export_tiny) are used directly; other
    float32 weights are converted. Everything else keeps its type, so the network stays correct
    under TensorRT's strong typing.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    taken = set(inits) | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    casts_to_h: dict[str, str] = {}
    new_inits = []

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    nodes = []
    for n in g.node:
        if n.op_type != "Conv":
            nodes.append(n)
            continue
        ins = []
        for j, name in enumerate(n.input):
            if not name:
                ins.append(name)
                continue
            src = producer.get(name)
            if (j > 0 and src is not None and src.op_type == "Cast" and src.input[0] in inits
                    and inits[src.input[0]].data_type == TensorProto.FLOAT16):
                ins.append(src.input[0])
            elif j > 0 and name in inits and inits[name].data_type == TensorProto.FLOAT:
                h = fresh(name + "__h")
                new_inits.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float16), h))
                ins.append(h)
            else:
                if name not in casts_to_h:
                    h = fresh(name + "__h")
                    nodes.append(helper.make_node("Cast", [name], [h], to=TensorProto.FLOAT16, name=h + "_cast"))
                    casts_to_h[name] = h
                ins.append(casts_to_h[name])
        y = n.output[0]
        yh = fresh(y + "__h")
        conv = helper.make_node("Conv", ins, [yh], name=(n.name or y) + "_fp16")
        conv.attribute.extend(n.attribute)
        nodes.append(conv)
        nodes.append(helper.make_node("Cast", [yh], [y], to=TensorProto.FLOAT, name=yh + "_cast"))
    g.initializer.extend(new_inits)
    # drop nodes whose outputs nothing uses any more (the weights' fp16 -> fp32 Casts)
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in nodes for i in n.input} | outputs
        keep = [n for n in nodes if any(o in used for o in n.output)]
        if len(keep) == len(nodes):
            break
        nodes = keep
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    live = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    onnx.checker.check_model(model)
    return model


# --- building ---------------------------------------------------------------------------------

def _make_logger(trt, verbose: bool = False):
    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
                print(f"[TensorRT] {msg}", file=sys.stderr)
            elif verbose:
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return _Logger()


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s).strip("-").lower()


def build_engine(trt, flavor: str, onnx_bytes: bytes | None, profile: dict, precision: str, logger,
                 timing_cache: Path | None = None, gpu: dict | None = None, workspace_gb: float = 4.0,
                 onnx_path: Path | None = None) -> bytes:
    """Serialized engine for one ONNX graph (raises BackendError with TensorRT's own errors).

    precision "as-exported" builds the graph unchanged from `onnx_path` (which may keep its
    weights in external data, as graphs over 2 GB must); fp16/fp32 rewrite the bytes first."""
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if precision == "as-exported" and onnx_path is not None:
        ok = parser.parse_from_file(str(onnx_path))
    else:
        if onnx_bytes is None and onnx_path is not None:
            onnx_bytes = onnx_path.read_bytes()
        assert onnx_bytes is not None, "build_engine takes onnx_bytes or onnx_path"
        ok = parser.parse(trt_graph(onnx_bytes, precision))
    if not ok:
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(f"{flavor} {trt.__version__} could not parse the ONNX graph: " + " | ".join(errs))
    config = builder.create_builder_config()
    try:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    except Exception:
        pass
    prof = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in profile:
            raise BackendError(f"the ONNX graph has an input {name!r} that the profile does not cover")
        mn, opt, mx = profile[name]
        prof.set_shape(name, tuple(mn), tuple(opt), tuple(mx))
    config.add_optimization_profile(prof)
    if flavor == "tensorrt_rtx":
        # Build for this GPU when TensorRT-RTX supports it; otherwise the default portable target
        # (the RTX architectures) -- the engine builds, and loading it reports the GPU as unsupported.
        if gpu is not None and tuple(gpu["cc"]) in RTX_SUPPORTED_CC and hasattr(trt, "ComputeCapability"):
            config.num_compute_capabilities = 1
            config.set_compute_capability(trt.ComputeCapability.CURRENT, 0)
    elif timing_cache is not None and hasattr(config, "create_timing_cache"):
        data = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BackendError(f"{flavor} {trt.__version__} failed to build the engine: "
                           + (" | ".join(logger.errors[-5:]) or "no error message"))
    if flavor != "tensorrt_rtx" and timing_cache is not None and hasattr(config, "get_timing_cache"):
        tc = config.get_timing_cache()
        if tc is not None:
            timing_cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = timing_cache.with_suffix(".tmp")
            tmp.write_bytes(bytes(tc.serialize()))
            os.replace(tmp, timing_cache)
    return bytes(blob)


def build_target(module: str | None = None, verbose: bool = False) -> tuple:
    """(trt module, flavour, version, gpu info, logger) for building engines. TensorRT-RTX builds
    ahead of time without a GPU (gpu name "none"); full TensorRT needs one."""
    trt, flavor = import_tensorrt(module)
    try:
        gpu = gpu_info()
    except BackendError:
        if flavor != "tensorrt_rtx":
            raise
        gpu = {"name": "none", "cc": (0, 0)}
    return trt, flavor, str(trt.__version__), gpu, _make_logger(trt, verbose)


def timing_cache_path(cache: Path, flavor: str, version: str, gpu: dict) -> Path:
    return cache / f"timing-{flavor}-{version}-{_slug(gpu['name'])}-sm{gpu['cc'][0]}{gpu['cc'][1]}.cache"


def build_cached(target: tuple, name: str, cache: Path, onnx_sha256: str, profile: dict, precision: str, *,
                 onnx_bytes: bytes | None = None, onnx_path: Path | None = None, extra: dict | None = None,
                 force: bool = False, log=print, workspace_gb: float = 4.0) -> dict:
    """One engine from the engine cache, or built (atomically written) on a miss; returns its info.

    The file is <name>-<key[:20]>.engine with a .json sidecar listing the key's parts."""
    trt, flavor, version, gpu, logger = target
    key = engine_cache_key(onnx_sha256, profile, gpu["name"], gpu["cc"], version, flavor, precision, extra=extra)
    eng = cache / f"{name}-{key[:20]}.engine"
    info = {"path": str(eng), "key": key, "onnx_sha256": onnx_sha256,
            "profile": {k: [list(s) for s in v] for k, v in profile.items()},
            "gpu": gpu["name"], "cc": list(gpu["cc"]), "trt": f"{flavor} {version}", "precision": precision}
    if eng.exists() and not force:
        info.update(built=False, seconds=0.0, bytes=eng.stat().st_size)
        log(f"  {name}: cached {eng.name}")
    else:
        t0 = time.perf_counter()
        blob = build_engine(trt, flavor, onnx_bytes, profile, precision, logger,
                            timing_cache=timing_cache_path(cache, flavor, version, gpu), gpu=gpu,
                            onnx_path=onnx_path, workspace_gb=workspace_gb)
        tmp = eng.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, eng)
        info.update(built=True, seconds=round(time.perf_counter() - t0, 1), bytes=len(blob))
        log(f"  {name}: built {eng.name} ({len(blob) / 1e6:.1f} MB) in {info['seconds']}s")
    eng.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def build_engines(weights_dir: str | Path | None, cache_dir: str | Path | None = None, max_batch: int = 256,
                  opt_batch: int | None = None, precision: str = "fp16", graphs: Sequence[str] = GRAPHS,
                  module: str | None = None, force: bool = False, verify: bool = True, verbose: bool = False,
                  log=print, manifest: Manifest | None = None) -> dict:
    """Build (or find in the cache) one engine per graph; returns {graph: info}.

    Works without a GPU only for TensorRT-RTX (its ahead-of-time build needs none).
    """
    target = build_target(module, verbose)
    manifest = manifest or load_manifest(weights_dir)
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for g in graphs:
        data = manifest.file(manifest.onnx_files[g], verify=verify).read_bytes()
        out[g] = build_cached(target, g, cache, hashlib.sha256(data).hexdigest(),
                              batch_profile(manifest.config, g, max_batch, opt_batch), precision, onnx_bytes=data,
                              extra={"rewrite": GRAPH_REWRITE_VERSION}, force=force, log=log)
    return out


# --- running ----------------------------------------------------------------------------------

def _torch_dtype(trt, torch, dt):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool}
    for name, td in (("int64", torch.int64), ("uint8", torch.uint8), ("bfloat16", torch.bfloat16)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = td
    try:
        return table[dt]
    except KeyError:
        raise BackendError(f"unsupported TensorRT tensor type {dt}") from None


class _Engine:
    """One deserialized engine + execution context, run on torch CUDA tensors."""

    def __init__(self, trt, flavor, torch, blob: bytes, logger, runtime_cache: Path | None, what: str,
                 cuda_graph: bool = False):
        self.trt, self.torch, self.what = trt, torch, what
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BackendError(f"{flavor} {trt.__version__} could not load the {what} engine: "
                               + (" | ".join(logger.errors[-3:]) or "no error message"))
        self.runtime_cache_path = runtime_cache
        self.runtime_cache = None
        if flavor == "tensorrt_rtx" and hasattr(self.engine, "create_runtime_config"):
            # TensorRT-RTX: JIT-compiled kernels persist in a runtime cache file next to the engine
            cfg = self.engine.create_runtime_config()
            if runtime_cache is not None and hasattr(cfg, "create_runtime_cache"):
                self.runtime_cache = cfg.create_runtime_cache()
                if runtime_cache.exists():
                    try:
                        self.runtime_cache.deserialize(runtime_cache.read_bytes())
                    except Exception:
                        pass
                cfg.set_runtime_cache(self.runtime_cache)
            if cuda_graph and hasattr(trt, "CudaGraphStrategy") and hasattr(cfg, "cuda_graph_strategy"):
                cfg.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self.context = self.engine.create_execution_context(cfg)
        else:
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"{flavor} {trt.__version__} could not create an execution context for the {what} "
                               f"engine: " + (" | ".join(logger.errors[-3:]) or "no error message"))
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: _torch_dtype(trt, torch, self.engine.get_tensor_dtype(n)) for n in names}
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.inputs[0], 0)[2][0])
        self.logger = logger

    def save_runtime_cache(self) -> None:
        if self.runtime_cache is not None and self.runtime_cache_path is not None:
            data = self.runtime_cache.serialize()
            tmp = self.runtime_cache_path.with_suffix(".tmp")
            tmp.write_bytes(bytes(data))
            os.replace(tmp, self.runtime_cache_path)

    def _bind_inputs(self, feeds: dict) -> list:
        """Set every input's shape and address; returns the (cast, contiguous) tensors, which the caller
        keeps alive until the execution is queued."""
        keep = []
        for name in self.inputs:
            t = feeds[name].to(self.dtypes[name]).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise BackendError(f"{self.what}: input {name} shape {tuple(t.shape)} is outside the engine's profile")
            self.context.set_tensor_address(name, t.data_ptr())
        return keep

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.torch.cuda.current_stream().cuda_stream):
            raise BackendError(f"{self.what}: TensorRT execution failed: " + " | ".join(self.logger.errors[-3:]))

    def __call__(self, feeds: dict, out=None):
        keep = self._bind_inputs(feeds)  # noqa: F841 (alive until queued)
        name = self.outputs[0]
        shape = tuple(self.context.get_tensor_shape(name))
        if out is None or tuple(out.shape) != shape or out.dtype != self.dtypes[name]:
            out = self.torch.empty(shape, dtype=self.dtypes[name], device="cuda")
        self.context.set_tensor_address(name, out.data_ptr())
        self._execute()
        return out

    def run_all(self, feeds: dict) -> list:
        """Every output (in the engine's order), for graphs with several (the Wan VAE frame and its caches)."""
        keep = self._bind_inputs(feeds)  # noqa: F841 (alive until queued)
        outs = []
        for name in self.outputs:
            o = self.torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, o.data_ptr())
            outs.append(o)
        self._execute()
        return outs


class TensorRTBackend:
    """encode/decode/denoise through TensorRT engines (and *_t on torch CUDA tensors).

    Options: cache_dir (engines, timing and runtime caches; default ~/.cache/avatarcast/tensorrt),
    max_batch (largest denoiser batch = streams per call, default 256), decode_max_batch (largest
    decoder batch in frames, default max_batch), opt_batch, precision (fp16 | fp32), module
    ("tensorrt" or "tensorrt_rtx"; default: whichever imports, tensorrt first), cuda_graph
    (TensorRT-RTX's built-in CUDA graphs, default False), verify (ONNX sha256 check).
    """

    name = "tensorrt"

    def __init__(self, manifest: Manifest, threads: int | None = None, device: str | None = None,
                 cache_dir: str | Path | None = None, max_batch: int = 256, decode_max_batch: int | None = None,
                 opt_batch: int | None = None, precision: str = "fp16", module: str | None = None,
                 cuda_graph: bool = False, verify: bool = True, verbose: bool = False, log=lambda *a: None):
        if device not in (None, "cuda"):
            raise BackendError("the tensorrt backend runs on an NVIDIA GPU only (device='cuda')")
        trt, flavor = import_tensorrt(module)
        gpu = gpu_info()
        reason = unsupported_reason(flavor, str(trt.__version__), gpu["cc"], gpu["name"])
        if reason:
            raise BackendError(reason)
        import torch
        self.torch, self.trt, self.flavor, self.gpu = torch, trt, flavor, gpu
        self.manifest, self.cfg = manifest, manifest.config
        self.device, self.threads, self.precision = "cuda", threads, precision
        self.cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE
        dmax = int(decode_max_batch or max_batch)
        self.engines: dict[str, _Engine] = {}
        self.build_info = {}
        logger = _make_logger(trt, verbose)
        graphs = [("encoder", ENCODER_MAX_BATCH), ("decoder", dmax), ("denoiser", int(max_batch))]
        if manifest.has_lowres:  # the degradation ladder's half-resolution decoder
            graphs.append(("decoder_lowres", dmax))
        for g, mb in graphs:
            info = build_engines(None, self.cache_dir, max_batch=mb, opt_batch=opt_batch, precision=precision,
                                 graphs=(g,), module=flavor, verify=verify, verbose=verbose, log=log,
                                 manifest=manifest)[g]
            self.build_info[g] = info
            p = Path(info["path"])
            self.engines[g] = _Engine(trt, flavor, torch, p.read_bytes(), logger,
                                      p.with_name(p.stem + ".runtime-cache"), g, cuda_graph=cuda_graph)
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
                pieces.append(eng(dict(zip(names, [a[i:i + eng.max_batch] for a in args]))))
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
        out[:, :, cfg.window_x0:cfg.window_x0 + cfg.window_width] = grid[:, cfg.pad_top:cfg.pad_top + cfg.height]
        return out

    def denoise_t(self, x, t, d, ctx, ref, emotion, intensity, out=None):
        return self._run("denoiser", ("x", "t", "d", "ctx", "ref", "emotion", "intensity"),
                         [x, t, d, ctx, ref, emotion, intensity], out)

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
        return self.denoise_t(self._to(x, np.float32), vec(t, np.float32), vec(d, np.float32),
                              self._to(ctx, np.float32), self._to(ref, np.float32), vec(emotion, np.int64),
                              vec(intensity, np.float32)).float().cpu().numpy()

    @property
    def device_name(self) -> str:
        return self.gpu["name"]

    def describe(self) -> dict:
        return {"backend": self.name, "device": "cuda", "device_name": self.gpu["name"],
                "compute_capability": "{:d}.{:d}".format(*self.gpu["cc"]), "tensorrt": f"{self.flavor} {self.trt.__version__}",
                "precision": self.precision, "engines": {g: Path(i["path"]).name for g, i in self.build_info.items()}}

    def close(self) -> None:
        for e in self.engines.values():
            try:
                e.save_runtime_cache()
            except Exception:
                pass


# --- CLI ----------------------------------------------------------------------------------------

def _check_run(info: dict, manifest: Manifest, module: str | None) -> dict:
    """Load each built engine and run it once at batch 2 against onnxruntime (GPU machines)."""
    trt, flavor = import_tensorrt(module)
    gpu = gpu_info()
    reason = unsupported_reason(flavor, str(trt.__version__), gpu["cc"], gpu["name"])
    import torch
    if reason:  # show what TensorRT itself says when asked to load the engine anyway
        res = {"runnable": False, "reason": reason}
        try:
            p = Path(info["denoiser"]["path"])
            eng = _Engine(trt, flavor, torch, p.read_bytes(), _make_logger(trt), None, "denoiser")
            feeds = {k: torch.from_numpy(v).cuda() for k, v in
                     example_inputs(manifest.config, 1)["denoiser"].items()}
            eng(feeds)
            torch.cuda.synchronize()
            res["load_attempt"] = "loaded and ran (unexpected for an unsupported GPU)"
        except Exception as e:
            res["load_attempt"] = f"{type(e).__name__}: {e}"
        return res

    from avatarcast.engines.backends.onnxruntime_backend import OnnxRuntimeBackend
    logger = _make_logger(trt)
    ref = OnnxRuntimeBackend(manifest, verify=False)
    ex = example_inputs(manifest.config, 2, seed=5)
    res = {"runnable": True}
    for g in info:
        p = Path(info[g]["path"])
        eng = _Engine(trt, flavor, torch, p.read_bytes(), logger, p.with_name(p.stem + ".runtime-cache"), g)
        feeds = {k: torch.from_numpy(v).cuda() for k, v in ex[g].items()}
        got = eng(feeds).float().cpu().numpy()
        want = ref.sessions[g].run(None, ex[g])[0].astype(np.float32)
        res[g] = {"max_abs_err": float(np.abs(got - want).max()), "ref_max": float(np.abs(want).max())}
        eng.save_runtime_cache()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m avatarcast.engines.backends.tensorrt_backend",
                                 description="Build (and cache) the tiny engine's TensorRT engines.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the engines (three, and the half-resolution decoder where shipped) into the cache")
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
        info = build_engines(None, args.cache, max_batch=args.max_batch, opt_batch=args.opt_batch,
                             precision=args.precision, graphs=graphs, module=args.module, force=args.force,
                             verbose=args.verbose, manifest=manifest,
                             log=(lambda *a: None) if args.json else print)
        result: dict[str, Any] = {"engines": info, "seconds": round(time.perf_counter() - t0, 1)}
        if args.run:
            result["run"] = _check_run(info, manifest, args.module)
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
