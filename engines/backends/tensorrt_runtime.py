"""Running TensorRT engines: which TensorRT imports, whether it can run on this GPU, and one built engine
executed on torch CUDA tensors (device buffers, the current torch stream).

Works with NVIDIA TensorRT 10+ (`import tensorrt`, data-center and RTX GPUs) and TensorRT-RTX 1.0+
(`import tensorrt_rtx`, the same Python API under another name, GeForce/RTX GPUs only). A GPU
TensorRT cannot run on raises BackendError with the reason, e.g. TensorRT-RTX on an H100/H200
(compute capability 9.0, Hopper): the engine builds (ahead-of-time, for the RTX architectures)
but cannot be loaded for that GPU. TensorRT-RTX keeps its JIT-compiled kernels in a runtime cache
file next to each engine.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

from avatarcast.engines.backends.base import BackendError

TRT_MODULES = ("tensorrt", "tensorrt_rtx")
# TensorRT-RTX support matrix (1.0-1.5): Turing 7.5, Ampere 8.6, Ada 8.9, Blackwell 12.0/12.1.
# Not supported: 8.0 (A100), 8.7 (Orin), 9.0 (H100/H200 Hopper), 10.x/11.x (B200/Thor).
RTX_SUPPORTED_CC = frozenset({(7, 5), (8, 6), (8, 9), (12, 0), (12, 1)})
TRT_MIN_CC = (7, 5)  # TensorRT 10 dropped Volta and older
RTX_CUDA_GRAPHS = (1, 2)  # the TensorRT-RTX release that brought built-in CUDA graphs


class TrtTarget(NamedTuple):
    """What engines are built for and run with: the TensorRT module, its flavour and version, the GPU, a logger."""

    trt: Any
    flavor: str  # "tensorrt" | "tensorrt_rtx"
    version: str
    gpu: dict  # gpu_info(); {"name": "none", "cc": (0, 0)} for TensorRT-RTX's GPU-less builds
    logger: Any  # make_logger(trt)


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
        "the tensorrt backend needs NVIDIA TensorRT's Python bindings, but "
        + "; ".join(errors)
        + ". Install TensorRT (pip install tensorrt-cu13, or tensorrt-cu12 for CUDA 12) or TensorRT-RTX "
        "(pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings), or use --backend torch / onnxruntime"
    )


def gpu_info(device_index: int = 0) -> dict:
    """Name and compute capability of a CUDA GPU (through torch), or BackendError."""
    try:
        import torch  # torch: only on a GPU
    except ImportError as e:
        raise BackendError(
            f"the tensorrt backend runs its engines on torch CUDA tensors, but torch cannot be imported ({e})"
        ) from e
    if not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise BackendError(f"the tensorrt backend needs an NVIDIA GPU, but {why} (torch {torch.__version__})")
    p = torch.cuda.get_device_properties(device_index)
    return {
        "name": p.name,
        "cc": (int(p.major), int(p.minor)),
        "memory_gb": round(p.total_memory / 2**30, 1),
        "index": device_index,
    }


def unsupported_reason(flavor: str, trt_version: str, cc: tuple[int, int], gpu_name: str) -> str | None:
    """Why this TensorRT flavour cannot run engines on this GPU, or None if it can."""
    cc = (cc[0], cc[1])  # a list (from JSON) too
    if flavor == "tensorrt_rtx" and cc not in RTX_SUPPORTED_CC:
        arch = {
            (8, 0): "Ampere data-center (A100/A30)",
            (8, 7): "Ampere Orin",
            (9, 0): "Hopper (H100/H200)",
            (10, 0): "Blackwell data-center (B200)",
            (10, 3): "Blackwell Ultra (B300)",
            (11, 0): "Blackwell Thor",
        }.get(cc, "this architecture")
        ok = ", ".join(f"{a}.{b}" for a, b in sorted(RTX_SUPPORTED_CC))
        return (
            f"TensorRT-RTX {trt_version} does not support {gpu_name} (compute capability {cc[0]}.{cc[1]}, "
            f"{arch}): it runs on compute capabilities {ok} only (GeForce/RTX Turing, Ampere, Ada, Blackwell). "
            f"Engines build ahead of time but cannot be loaded on this GPU; install the `tensorrt` package "
            f"(full TensorRT) or use --backend torch"
        )
    if cc < TRT_MIN_CC:
        return (
            f"TensorRT {trt_version} needs compute capability {TRT_MIN_CC[0]}.{TRT_MIN_CC[1]} or newer; "
            f"{gpu_name} is {cc[0]}.{cc[1]}: use --backend torch"
        )
    return None


def require_runnable(target: TrtTarget) -> None:
    """BackendError with unsupported_reason's words unless this TensorRT can run engines on the target's GPU."""
    reason = unsupported_reason(target.flavor, target.version, target.gpu["cc"], target.gpu["name"])
    if reason:
        raise BackendError(reason)


def make_logger(trt, verbose: bool = False):
    """A TensorRT logger that keeps the errors (for BackendError messages) and prints them to stderr."""

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


def runtime_target(module: str | None = None, verbose: bool = False) -> TrtTarget:
    """The TensorRT and GPU to run engines with: BackendError unless both are present and TensorRT supports the GPU."""
    trt, flavor = import_tensorrt(module)
    target = TrtTarget(trt, flavor, str(trt.__version__), gpu_info(), make_logger(trt, verbose))
    require_runnable(target)
    return target


def _version(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


# --- running ----------------------------------------------------------------------------------


def _torch_dtypes(trt, torch) -> dict:
    # every I/O type TensorRT 10 and TensorRT-RTX 1.0 can give an engine's tensors
    return {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int64: torch.int64,
        trt.int32: torch.int32,
        trt.int8: torch.int8,
        trt.uint8: torch.uint8,
        trt.bool: torch.bool,
    }


class TrtEngine:
    """One deserialized engine + execution context, run on torch CUDA tensors."""

    def __init__(self, target: TrtTarget, blob: bytes, runtime_cache: Path | None, what: str, cuda_graph: bool = False):
        import torch  # torch, as above

        trt, flavor, version, logger = target.trt, target.flavor, target.version, target.logger
        self.torch, self.what, self.logger = torch, what, logger
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BackendError(
                f"{flavor} {version} could not load the {what} engine: "
                + (" | ".join(logger.errors[-3:]) or "no error message")
            )
        self.runtime_cache_path = runtime_cache
        self.runtime_cache = None
        if flavor == "tensorrt_rtx":
            cfg = self.engine.create_runtime_config()
            if runtime_cache is not None:  # JIT-compiled kernels persist in a file next to the engine
                self.runtime_cache = cfg.create_runtime_cache()
                if runtime_cache.exists():
                    try:
                        self.runtime_cache.deserialize(runtime_cache.read_bytes())
                    except Exception:  # a stale or torn cache only costs recompiling the kernels
                        pass
                cfg.set_runtime_cache(self.runtime_cache)
            if cuda_graph:
                if _version(version) < RTX_CUDA_GRAPHS:
                    raise BackendError(
                        f"cuda_graph needs TensorRT-RTX {'.'.join(map(str, RTX_CUDA_GRAPHS))} or newer, not {version}"
                    )
                cfg.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self.context = self.engine.create_execution_context(cfg)
        else:
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(
                f"{flavor} {version} could not create an execution context for the {what} "
                f"engine: " + (" | ".join(logger.errors[-3:]) or "no error message")
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        dtypes = _torch_dtypes(trt, torch)
        self.dtypes = {}
        for n in names:
            dt = self.engine.get_tensor_dtype(n)
            if dt not in dtypes:
                raise BackendError(f"{what}: unsupported TensorRT tensor type {dt} for {n}")
            self.dtypes[n] = dtypes[dt]
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.inputs[0], 0)[2][0])

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


def runtime_cache_path(engine_path: Path) -> Path:
    """Where TensorRT-RTX keeps an engine's JIT-compiled kernels: <engine stem>.runtime-cache beside it."""
    return engine_path.with_name(engine_path.stem + ".runtime-cache")


def open_engine(target: TrtTarget, engine_path: Path, what: str, cuda_graph: bool = False) -> TrtEngine:
    """A built engine file, loaded with its runtime cache."""
    return TrtEngine(target, engine_path.read_bytes(), runtime_cache_path(engine_path), what, cuda_graph=cuda_graph)
