"""Building TensorRT engines from ONNX graphs, once per GPU, into an engine cache on disk.

  * an optimization profile over the batch dimension of every input (min 1, opt, max);
  * the graph rewritten for TensorRT (tensorrt_graph.py: fp16 convolutions by default) and the network
    built strongly typed;
  * a timing cache file per GPU and TensorRT version (TensorRT only: TensorRT-RTX does no
    autotuning at build time and deprecates the timing cache; it keeps a runtime cache of its
    JIT-compiled kernels instead, also on disk: tensorrt_runtime.py);
  * an engine cache keyed by sha256(ONNX bytes) + profile + precision + GPU name + compute
    capability + TensorRT flavour and version (engine_cache_key).

TensorRT-RTX builds ahead of time without a GPU (for the RTX architectures); full TensorRT needs one.
The tiny engine's graphs (tensorrt_backend.py) and the Wan engine's (engines/wan/export.py) build here.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from avatarcast.engines.backends.base import BackendError
from avatarcast.engines.backends.tensorrt_graph import trt_graph
from avatarcast.engines.backends.tensorrt_runtime import (
    RTX_SUPPORTED_CC,
    TrtTarget,
    gpu_info,
    import_tensorrt,
    make_logger,
)

# --- keys and profiles ----------------------------------------------------------------------------


def engine_cache_key(
    onnx_sha256: str,
    profile: dict,
    gpu_name: str,
    compute_capability: Sequence[int],
    trt_version: str,
    flavor: str = "tensorrt",
    precision: str = "fp16",
    extra: dict | None = None,
) -> str:
    """sha256 over everything an engine depends on; any change gives a new engine file."""
    body = {
        "onnx": onnx_sha256,
        "profile": {k: [list(map(int, s)) for s in v] for k, v in sorted(profile.items())},
        "gpu": gpu_name,
        "cc": list(map(int, compute_capability)),
        "trt": f"{flavor}-{trt_version}",
        "precision": precision,
        "extra": extra or {},
        "format": 1,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def profile_over_batch(shapes: Mapping[str, Sequence[int]], opt: int, max_batch: int) -> dict:
    """{input: (min, opt, max) shapes}: batch 1, opt and max_batch before each input's shape."""
    return {n: ((1, *s), (opt, *s), (max_batch, *s)) for n, s in shapes.items()}


# --- building ---------------------------------------------------------------------------------


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s).strip("-").lower()


def build_target(module: str | None = None, verbose: bool = False) -> TrtTarget:
    """The TensorRT and GPU to build engines with. TensorRT-RTX builds ahead of time without a GPU
    (gpu name "none"); full TensorRT needs one."""
    trt, flavor = import_tensorrt(module)
    try:
        gpu = gpu_info()
    except BackendError:
        if flavor != "tensorrt_rtx":
            raise
        gpu = {"name": "none", "cc": (0, 0)}
    return TrtTarget(trt, flavor, str(trt.__version__), gpu, make_logger(trt, verbose))


def timing_cache_path(cache: Path, target: TrtTarget) -> Path:
    gpu = target.gpu
    return cache / f"timing-{target.flavor}-{target.version}-{_slug(gpu['name'])}-sm{gpu['cc'][0]}{gpu['cc'][1]}.cache"


def build_engine(
    target: TrtTarget,
    profile: dict,
    precision: str,
    *,
    onnx_bytes: bytes | None = None,
    onnx_path: Path | None = None,
    timing_cache: Path | None = None,
    workspace_gb: float = 4.0,
) -> bytes:
    """Serialized engine for one ONNX graph (raises BackendError with TensorRT's own errors).

    precision "as-exported" builds the graph unchanged from `onnx_path` (which may keep its
    weights in external data, as graphs over 2 GB must); fp16/fp32 rewrite the bytes first."""
    trt, flavor, version, gpu, logger = target
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
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
        raise BackendError(f"{flavor} {version} could not parse the ONNX graph: " + " | ".join(errs))
    config = builder.create_builder_config()
    try:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    except Exception:  # a limit TensorRT refuses leaves its default workspace, which still builds
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
        if tuple(gpu["cc"]) in RTX_SUPPORTED_CC:
            config.num_compute_capabilities = 1
            config.set_compute_capability(trt.ComputeCapability.CURRENT, 0)
    elif timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.exists() else b""
        config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BackendError(
            f"{flavor} {version} failed to build the engine: " + (" | ".join(logger.errors[-5:]) or "no error message")
        )
    if flavor != "tensorrt_rtx" and timing_cache is not None:
        tc = config.get_timing_cache()
        if tc is not None:
            timing_cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = timing_cache.with_suffix(".tmp")
            tmp.write_bytes(bytes(tc.serialize()))
            os.replace(tmp, timing_cache)
    return bytes(blob)


def build_cached(
    target: TrtTarget,
    name: str,
    cache: Path,
    onnx_sha256: str,
    profile: dict,
    precision: str,
    *,
    onnx_bytes: bytes | None = None,
    onnx_path: Path | None = None,
    extra: dict | None = None,
    force: bool = False,
    log=print,
    workspace_gb: float = 4.0,
) -> dict:
    """One engine from the engine cache, or built (atomically written) on a miss; returns its info.

    The file is <name>-<key[:20]>.engine with a .json sidecar listing the key's parts."""
    flavor, version, gpu = target.flavor, target.version, target.gpu
    key = engine_cache_key(onnx_sha256, profile, gpu["name"], gpu["cc"], version, flavor, precision, extra=extra)
    cache.mkdir(parents=True, exist_ok=True)
    eng = cache / f"{name}-{key[:20]}.engine"
    info = {
        "path": str(eng),
        "key": key,
        "onnx_sha256": onnx_sha256,
        "profile": {k: [list(s) for s in v] for k, v in profile.items()},
        "gpu": gpu["name"],
        "cc": list(gpu["cc"]),
        "trt": f"{flavor} {version}",
        "precision": precision,
    }
    if eng.exists() and not force:
        info.update(built=False, seconds=0.0, bytes=eng.stat().st_size)
        log(f"  {name}: cached {eng.name}")
    else:
        t0 = time.perf_counter()
        blob = build_engine(
            target,
            profile,
            precision,
            onnx_bytes=onnx_bytes,
            onnx_path=onnx_path,
            timing_cache=timing_cache_path(cache, target),
            workspace_gb=workspace_gb,
        )
        tmp = eng.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, eng)
        info.update(built=True, seconds=round(time.perf_counter() - t0, 1), bytes=len(blob))
        log(f"  {name}: built {eng.name} ({len(blob) / 1e6:.1f} MB) in {info['seconds']}s")
    eng.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    return info
