"""Backends of the `tiny` engine: the same three graphs on onnxruntime, torch or TensorRT.

    create_backend("onnxruntime", manifest, threads=2)          # CPU (default), or device="cuda"
    create_backend("torch", manifest, device="cuda", compile=True, cuda_graphs=True)
    create_backend("tensorrt", manifest, cache_dir="~/.cache/avatarcast/trt", max_batch=256)

Each returns an object with encode/decode/denoise on numpy arrays (avatarcast.engines.backends.base).
Anything that makes a backend unusable here (package not installed, no GPU, an unsupported
GPU) raises BackendError with the reason and what to do instead.
"""

from __future__ import annotations

from avatarcast.engines.backends.base import BackendError, TinyBackend
from avatarcast.engines.backends.host import available_cores, cpu_name

BACKENDS = ("onnxruntime", "torch", "tensorrt")
ALIASES = {
    "ort": "onnxruntime",
    "onnx": "onnxruntime",
    "pytorch": "torch",
    "trt": "tensorrt",
    "tensorrt-rtx": "tensorrt",
    "tensorrt_rtx": "tensorrt",
}
DEVICES = (None, "auto", "cpu", "cuda")

__all__ = ["BACKENDS", "BackendError", "TinyBackend", "available_cores", "cpu_name", "create_backend"]


def _missing(package: str, backend: str, install: str, err: Exception) -> BackendError:
    return BackendError(
        f"the {backend} backend needs the Python package {package!r}, which cannot be imported "
        f"here ({type(err).__name__}: {err}); install it with `{install}` or use another backend"
    )


def create_backend(name: str, manifest, threads: int | None = None, device: str | None = None, **opts) -> TinyBackend:
    """A backend serving the weights described by `manifest` (avatarcast.engines.tiny.weights.Manifest).

    name: onnxruntime | torch | tensorrt (aliases: ort, trt). threads: CPU threads for the CPU
    paths (None or 0 = all cores this process may use). device: None/"auto", "cpu" or "cuda".
    Other keyword options go to the backend (see each backend's class).
    """
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; choose auto, cpu or cuda")
    if threads is not None and threads < 0:
        raise BackendError(f"threads must be >= 0, got {threads}")
    device = None if device == "auto" else device
    threads = threads or None

    if key == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401  # onnxruntime: heavy, probed only for this backend
        except ImportError as e:
            raise _missing("onnxruntime", key, "pip install onnxruntime (or onnxruntime-gpu)", e) from e
        # each backend module loads only when chosen: ~20 ms off `avatarcast --help` (the CLI imports this package)
        from avatarcast.engines.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(manifest, threads=threads, device=device, **opts)

    if key == "torch":
        try:
            import torch  # noqa: F401  # torch: the `train` extra, probed
        except ImportError as e:
            raise _missing("torch", key, "pip install 'avatarcast[train]'", e) from e
        from avatarcast.engines.backends.torch_backend import TorchBackend  # as above

        return TorchBackend(manifest, threads=threads, device=device, **opts)

    from avatarcast.engines.backends.tensorrt_backend import TensorRTBackend  # as above

    if device == "cpu":
        raise BackendError("the tensorrt backend runs on an NVIDIA GPU only; use --backend onnxruntime on the CPU")
    return TensorRTBackend(manifest, threads=threads, device=device, **opts)
