"""The default backend: the three exported ONNX graphs on onnxruntime (CPU, or CUDA if present).

One InferenceSession per graph, all graph optimizations on (ORT folds the fp16->fp32 weight
Casts of the exported graphs at load and runs the convolutions in its blocked NCHWc layout),
sequential execution, intra-op threads = `threads` (default: every core this process may use).

Tuning for a small shared CPU (measured on the 2-core dev machine, see the report of the
export/bench work): the three sessions share no thread pool, so a pool that just finished would
keep spinning on its cores while the next graph's pool starts; spinning is therefore off by default
when the threads take every core (`spinning=True` turns it back on; within the noise of a shared
2-core machine it made no difference to a whole chunk, and it burns cycles other processes want).
Frames are decoded in sub-batches of `decode_batch` (default 2): on the 2-core Xeon, 2 frames per
run cost ~10-20% less per frame than 1, and 4 or 8 cost more (their activations, 4 MB a frame at
192x320, no longer fit in the 2 MB L2 per core).
"""

from __future__ import annotations

import threading

import numpy as np

from avatarcast.engines.backends.base import BackendError
from avatarcast.engines.backends.host import available_cores, cpu_name
from avatarcast.engines.tiny.crop import crop_box, place
from avatarcast.engines.tiny.weights import Manifest


def denoise_feeds(x, t, d, ctx, ref, emotion, intensity) -> dict[str, np.ndarray]:
    """The denoiser graph's inputs (engines/backends/base.py's denoise call; architecture 3's too): contiguous
    float32, the per-stream scalars broadcast to the batch, the emotion as int64."""
    b, f32 = len(x), np.float32
    return {
        "x": np.ascontiguousarray(x, dtype=f32),
        "t": np.broadcast_to(np.asarray(t, dtype=f32), (b,)).copy(),
        "d": np.broadcast_to(np.asarray(d, dtype=f32), (b,)).copy(),
        "ctx": np.ascontiguousarray(ctx, dtype=f32),
        "ref": np.ascontiguousarray(ref, dtype=f32),
        "emotion": np.broadcast_to(np.asarray(emotion, dtype=np.int64), (b,)).copy(),
        "intensity": np.broadcast_to(np.asarray(intensity, dtype=f32), (b,)).copy(),
    }


def load_session(
    path, threads: int, providers: list, spinning: bool = False, arena: bool = True, log_severity: int = 3
):
    """One graph on onnxruntime, as every CPU engine here runs its graphs: all graph optimizations, one graph
    at a time on `threads` intra-op threads (inter-op parallelism only oversubscribes the cores the server
    shares with the ASR), threads that spin only when asked (`spinning`: a spinning pool burns cores that the
    other engine calls and Whisper need). A graph that does not load is a BackendError."""
    import onnxruntime as ort  # onnxruntime: heavy, loaded with the backend

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = bool(arena)
    so.log_severity_level = int(log_severity)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise BackendError(f"onnxruntime could not load {path}: {e}") from e


class OnnxRuntimeBackend:
    """encode/decode/denoise through onnxruntime; numpy in, numpy out.

    Options: threads (intra-op threads per session; default all cores), device (None/"cpu" or
    "cuda"), verify (check the ONNX files' sha256 against the manifest, default True), spinning
    (let idle pool threads spin; default: only when there are more cores than threads),
    decode_batch (frames per decoder run, default 2 on CPU, 64 on CUDA), arena (CPU memory arena,
    default True), providers (explicit onnxruntime provider list, overrides device),
    cuda_device_id (default 0).
    """

    name = "onnxruntime"

    def __init__(
        self,
        manifest: Manifest,
        threads: int | None = None,
        device: str | None = None,
        verify: bool = True,
        spinning: bool | None = None,
        decode_batch: int | None = None,
        arena: bool = True,
        providers: list | None = None,
        cuda_device_id: int = 0,
        log_severity: int = 3,
    ):
        import onnxruntime as ort  # onnxruntime: heavy, loaded with the backend

        self.manifest = manifest
        self.cfg = manifest.config
        self.ort_version = ort.__version__
        available = ort.get_available_providers()
        device = device or "cpu"
        if providers is None:
            if device == "cuda":
                if "CUDAExecutionProvider" not in available:
                    raise BackendError(
                        "device='cuda' needs onnxruntime's CUDAExecutionProvider, but this onnxruntime "
                        f"{ort.__version__} only has {', '.join(available)}: install onnxruntime-gpu (matching "
                        "your CUDA) or use --backend torch / --device cpu"
                    )
                providers = [("CUDAExecutionProvider", {"device_id": int(cuda_device_id)}), "CPUExecutionProvider"]
            elif device == "cpu":
                providers = ["CPUExecutionProvider"]
            else:
                raise BackendError(f"the onnxruntime backend runs on 'cpu' or 'cuda', not {device!r}")
        self.device = device
        cores = available_cores()
        self.threads = int(threads) if threads else cores
        on_gpu = device == "cuda"
        self.decode_batch = int(decode_batch) if decode_batch else (64 if on_gpu else 2)
        if spinning is None:
            spinning = self.threads < cores
        self.spinning = bool(spinning)

        self.sessions: dict = {}
        for g in manifest.onnx_files:  # with the ladder's half-resolution decoder where shipped
            path = manifest.graph_file(g, verify=verify)  # onnxruntime reads the weights from beside it
            self.sessions[g] = load_session(path, self.threads, providers, self.spinning, arena, log_severity)
        used = self.sessions["denoiser"].get_providers()
        if on_gpu and "CUDAExecutionProvider" not in used:
            raise BackendError(f"onnxruntime did not enable CUDAExecutionProvider (session providers: {used})")
        self.providers = used
        self._lock = threading.Lock()  # a session may be run from several threads, but serialize to keep cores free

    # -- info --------------------------------------------------------------------------------
    @property
    def device_name(self) -> str:
        if self.device == "cuda":
            try:
                import torch  # torch: only to name a CUDA device

                if torch.cuda.is_available():
                    return torch.cuda.get_device_name(0)
            except ImportError:
                pass
            return "CUDA GPU"
        return cpu_name()

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": self.device,
            "device_name": self.device_name,
            "threads": self.threads,
            "onnxruntime": self.ort_version,
            "providers": self.providers,
            "decode_batch": self.decode_batch,
            "spinning": self.spinning,
            "lowres": self.has_lowres,
        }

    # -- the three graphs ----------------------------------------------------------------------
    def _run(self, graph: str, feeds: dict) -> np.ndarray:
        with self._lock:
            return self.sessions[graph].run(None, feeds)[0]

    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim == 3:
            frames = frames[None]
        return self._run("encoder", {"frames": frames})

    @property
    def has_lowres(self) -> bool:
        return "decoder_lowres" in self.sessions

    def decode(self, latents: np.ndarray, lowres: bool = False) -> np.ndarray:
        """`lowres`: the half-resolution decoder (same output size), where the weights ship one.

        Each run decodes only the latent cells around the avatar (engines/tiny/crop.py) and places
        them in transparent frames.
        """
        graph = "decoder_lowres" if lowres and self.has_lowres else "decoder"
        z = np.ascontiguousarray(latents, dtype=np.float32)
        n, step = len(z), self.decode_batch * (2 if graph == "decoder_lowres" else 1)
        out = np.zeros((n, self.cfg.height, self.cfg.width, 4), np.uint8)
        for i in range(0, n, step):
            part = z[i : i + step]
            box = crop_box(part, self.cfg)
            if box.empty:
                continue  # nothing but background: transparent frames
            cells = np.ascontiguousarray(part[:, :, box.top : box.bottom, box.left : box.right])
            place(self._run(graph, {"latents": cells}), box, self.cfg, out[i : i + step])
        return out

    def denoise(self, x, t, d, ctx, ref, emotion, intensity) -> np.ndarray:
        return self._run("denoiser", denoise_feeds(x, t, d, ctx, ref, emotion, intensity))
