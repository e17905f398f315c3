"""The GPU backend: the torch modules from tiny.safetensors, batched into a few static shapes.

On CUDA the networks run in bf16 (autocast over bf16 weights; normalizations, the timestep
embeddings and the uint8 conversion stay in fp32), channels_last, and every call is padded up to
the next batch bucket (1, 2, 4, ... 256 by default) so that torch.compile (compile=True) and CUDA
graphs (cuda_graphs=True, the default on CUDA) only ever see that handful of shapes. A batch
larger than the largest bucket is run in pieces of the largest bucket.

On the CPU it runs the same modules in fp32 (channels_last, oneDNN) without compile or graphs,
so CI can test it against onnxruntime.

Besides the numpy protocol (encode/decode/denoise) there is a fast path on torch tensors that
stay on the device: encode_t, decode_t, denoise_t (realtime/bench/engine.py uses it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from avatarcast.engines.backends.base import BackendError
from avatarcast.engines.backends.host import available_cores, cpu_name
from avatarcast.engines.tiny.weights import LOWRES_FILE, TORCH_FILE, Manifest, load_lowres_module, load_torch_modules

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _dtype(torch, name):
    if name is None or isinstance(name, torch.dtype):
        return name
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "float": torch.float32,
    }
    try:
        return table[str(name).lower()]
    except KeyError:
        raise BackendError(f"unknown dtype {name!r}; use bf16, fp16 or fp32") from None


class _Runner:
    """One graph at one bucket size: eager/compiled call, or a captured CUDA graph."""

    def __init__(self, fn: Callable, example: Sequence, graphed: bool, pool=None, warm_iters: int = 3):
        import torch  # torch: the `train` extra; this module imports without it

        self.fn = fn
        self.graph = None
        self.static_in = [torch.zeros_like(e) for e in example]
        if not graphed:
            return
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(warm_iters):  # compiles / autotunes / picks cuDNN algorithms
                out = fn(*self.static_in)
        torch.cuda.current_stream().wait_stream(s)
        self.static_out = torch.empty_like(out)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.static_out.copy_(fn(*self.static_in))
        torch.cuda.synchronize()

    def __call__(self, args: Sequence, n: int):
        """Run on the first n rows of args (each padded here to the bucket size)."""
        if self.graph is None:
            if len(args[0]) == len(self.static_in[0]):
                return self.fn(*args)
            padded = []
            for buf, a in zip(self.static_in, args):
                buf[:n].copy_(a)
                padded.append(buf)
            return self.fn(*padded)[:n]
        for buf, a in zip(self.static_in, args):
            buf[:n].copy_(a, non_blocking=True)
        self.graph.replay()
        return self.static_out[:n]


class TorchBackend:
    """The tiny engine's three networks in torch, on CUDA (bf16, buckets, CUDA graphs) or CPU (fp32).

    Options: device (None = cuda if available else cpu), threads (CPU threads; default all cores),
    dtype (bf16 | fp16 | fp32; default bf16 on CUDA, fp32 on CPU), compile (torch.compile each
    graph, default False), compile_mode (default "max-autotune-no-cudagraphs"), cuda_graphs
    (default True on CUDA; not available on CPU), buckets (batch sizes the calls are padded to),
    channels_last (default True), verify (check tiny.safetensors' sha256, default True),
    cudnn_benchmark (default True on CUDA).
    """

    name = "torch"

    def __init__(
        self,
        manifest: Manifest,
        threads: int | None = None,
        device: str | None = None,
        dtype=None,
        compile: bool = False,
        compile_mode: str = "max-autotune-no-cudagraphs",
        cuda_graphs: bool | None = None,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        channels_last: bool = True,
        verify: bool = True,
        cudnn_benchmark: bool = True,
    ):
        import torch  # torch, as above

        self.torch = torch
        self.manifest = manifest
        self.cfg = manifest.config
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            why = (
                "this torch is a CPU-only build"
                if torch.version.cuda is None
                else "no CUDA GPU is visible (driver missing or CUDA_VISIBLE_DEVICES empty)"
            )
            raise BackendError(
                f"device='cuda' but {why} (torch {torch.__version__}); use --device cpu "
                f"or install a CUDA build of torch"
            )
        if device not in ("cpu", "cuda"):
            raise BackendError(f"the torch backend runs on 'cpu' or 'cuda', not {device!r}")
        self.device = device
        on_gpu = device == "cuda"
        self.dtype = _dtype(torch, dtype) or (torch.bfloat16 if on_gpu else torch.float32)
        if cuda_graphs is None:
            cuda_graphs = on_gpu
        if cuda_graphs and not on_gpu:
            raise BackendError("cuda_graphs=True needs device='cuda'")
        self.cuda_graphs = bool(cuda_graphs)
        self.compile = bool(compile)
        self.compile_mode = compile_mode
        self.buckets = tuple(sorted({int(b) for b in buckets}))
        if not self.buckets or self.buckets[0] < 1:
            raise BackendError(f"bad buckets {buckets!r}")
        self.threads = int(threads) if threads else available_cores()
        if not on_gpu:
            torch.set_num_threads(self.threads)
        elif cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        self.channels_last = channels_last and True

        manifest.file(TORCH_FILE, verify=verify)
        enc, dec, den = load_torch_modules(manifest, device=device)
        mf = torch.channels_last if channels_last else torch.contiguous_format
        self.modules = {}
        parts = [("encoder", enc), ("decoder", dec), ("denoiser", den)]
        if manifest.has_lowres:  # the degradation ladder's half-resolution decoder
            manifest.file(LOWRES_FILE, verify=verify)
            parts.append(("decoder_lowres", load_lowres_module(manifest, device=device)))
        for name, m in parts:
            m = m.to(dtype=self.dtype).to(memory_format=mf).eval().requires_grad_(False)
            self.modules[name] = m
        cfg = self.cfg
        self._mean = torch.tensor(cfg.latent_mean, dtype=torch.float32, device=device)[None, :, None, None]
        self._std = torch.tensor(cfg.latent_std, dtype=torch.float32, device=device)[None, :, None, None]
        fns: dict[str, Callable[..., Any]] = {
            "encoder": self._encode_fn,
            "decoder": self._decode_fn,
            "denoiser": self._denoise_fn,
        }
        if "decoder_lowres" in self.modules:
            fns["decoder_lowres"] = lambda z: self._decode_fn(z, "decoder_lowres")
        if self.compile:
            import torch._dynamo  # torch._dynamo: slow to import, only with compile

            torch._dynamo.config.cache_size_limit = max(
                torch._dynamo.config.cache_size_limit, 4 * len(self.buckets) + 8
            )
            fns = {k: torch.compile(f, mode=compile_mode, dynamic=False, fullgraph=False) for k, f in fns.items()}
        self._fns = fns
        self._runners: dict[tuple[str, int], _Runner] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._lock = threading.RLock()

    # -- the pure tensor functions that get compiled / captured --------------------------------
    def _autocast(self):
        torch = self.torch
        enabled = self.dtype != torch.float32
        # no cast cache: cached casts would live in a CUDA graph's private pool (torch docs, CUDA graphs)
        return torch.autocast(self.device, dtype=self.dtype, enabled=enabled, cache_enabled=False)

    def _encode_fn(self, frames):
        from avatarcast.engines.tiny.model import frames_to_tensor  # torch, as above

        torch = self.torch
        x = frames_to_tensor(frames, self.cfg).to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            z = self.modules["encoder"](x)
        return ((z.float() - self._mean) / self._std).contiguous()

    def _decode_fn(self, z, module: str = "decoder"):
        from avatarcast.engines.tiny.model import tensor_to_frames  # torch, as above

        torch = self.torch
        x = (z * self._std + self._mean).to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            y = self.modules[module](x)
        return tensor_to_frames(y.float(), self.cfg).contiguous()

    def _denoise_fn(self, x, t, d, ctx, ref, emotion, intensity):
        with self._autocast():
            v = self.modules["denoiser"](x, t, d, ctx, ref, emotion, intensity)
        return v.float().contiguous()

    # -- buckets -----------------------------------------------------------------------------
    def bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        return self.buckets[-1]

    def _examples(self, graph: str, b: int):
        torch, cfg, dev = self.torch, self.cfg, self.device
        C, T, K = cfg.latent_channels, cfg.chunk_frames, cfg.context_frames
        H, W = cfg.latent_hw
        z = lambda c: torch.zeros((b, c, H, W), device=dev)  # noqa: E731
        if graph == "encoder":
            return [torch.zeros((b, cfg.height, cfg.width, 4), dtype=torch.uint8, device=dev)]
        if graph in ("decoder", "decoder_lowres"):
            return [z(C)]
        v = torch.zeros(b, device=dev)
        return [z(T * C), v, v.clone(), z(K * C), z(C), torch.zeros(b, dtype=torch.long, device=dev), v.clone()]

    def _runner(self, graph: str, b: int) -> _Runner:
        r = self._runners.get((graph, b))
        if r is None:
            with self.torch.inference_mode():
                r = _Runner(self._fns[graph], self._examples(graph, b), self.cuda_graphs, self._pool)
            self._runners[(graph, b)] = r
        return r

    def _call(self, graph: str, args: list, out=None, copy: bool = True):
        torch = self.torch
        n = len(args[0])
        top = self.buckets[-1]
        with self._lock, torch.inference_mode():
            if not (self.cuda_graphs or self.compile):  # eager: any batch size, no padding
                y = self._fns[graph](*args)
                if out is not None:
                    out.copy_(y)
                    return out
                return y
            if n <= top:
                y = self._runner(graph, self.bucket(n))(args, n)
                if out is not None:
                    out.copy_(y)
                    return out
                return y.clone() if (copy and self.cuda_graphs) else y
            for i in range(0, n, top):
                part = [a[i : i + top] for a in args]
                m = len(part[0])
                y = self._runner(graph, self.bucket(m))(part, m)  # the remainder gets its own bucket
                if out is None:
                    out = torch.empty((n, *y.shape[1:]), dtype=y.dtype, device=y.device)
                out[i : i + len(part[0])].copy_(y)
            return out

    def warmup(self, batch_sizes: Sequence[int] = (1,), graphs: Sequence[str] = ("denoiser", "decoder")) -> list:
        """Compile / capture every graph at the buckets these batch sizes fall in; returns them."""
        done = []
        for g in graphs:
            if g not in self._fns:
                raise ValueError(f"unknown graph {g!r}; one of {tuple(self._fns)}")
            top = self.buckets[-1]
            sizes = {self.bucket(min(int(n), top)) for n in batch_sizes}
            sizes |= {self.bucket(int(n) % top) for n in batch_sizes if int(n) > top and int(n) % top}
            for b in sorted(sizes):
                with self._lock:
                    r = self._runner(g, b)
                    if not self.cuda_graphs:  # run once: compiles and picks algorithms
                        with self.torch.inference_mode():
                            r(self._examples(g, b), b)
                done.append((g, b))
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return done

    # -- tensor fast path (tensors already on self.device) -----------------------------------
    def encode_t(self, frames, out=None, copy: bool = True):
        return self._call("encoder", [frames], out, copy)

    @property
    def has_lowres(self) -> bool:
        return "decoder_lowres" in self._fns

    def decode_t(self, latents, out=None, copy: bool = True, lowres: bool = False):
        """Normalized latents (N, C, H, W) float32 on the device -> uint8 (N, 360, 640, 4) there.

        copy=False may return a view of a CUDA graph's static output: valid until the next call.
        lowres: the half-resolution decoder (same output size), where the weights ship one.
        """
        return self._call("decoder_lowres" if lowres and self.has_lowres else "decoder", [latents], out, copy)

    def denoise_t(self, x, t, d, ctx, ref, emotion, intensity, out=None, copy: bool = True):
        return self._call("denoiser", [x, t, d, ctx, ref, emotion, intensity], out, copy)

    # -- numpy protocol ----------------------------------------------------------------------
    def _to(self, a, dtype) -> Any:
        torch = self.torch
        a = np.ascontiguousarray(a, dtype=dtype)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
        return t.to(self.device, non_blocking=True) if self.device != "cpu" else t

    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        return self.encode_t(self._to(frames, np.uint8), copy=False).cpu().numpy()

    def decode(self, latents: np.ndarray, lowres: bool = False) -> np.ndarray:
        return self.decode_t(self._to(latents, np.float32), copy=False, lowres=lowres).cpu().numpy()

    def denoise(self, x, t, d, ctx, ref, emotion, intensity) -> np.ndarray:
        b = len(x)
        f32 = np.float32
        vec = lambda v, dt: self._to(np.array(np.broadcast_to(np.asarray(v, dtype=dt), (b,))), dt)  # noqa: E731
        args = (
            self._to(x, f32),
            vec(t, f32),
            vec(d, f32),
            self._to(ctx, f32),
            self._to(ref, f32),
            vec(emotion, np.int64),
            vec(intensity, f32),
        )
        return self.denoise_t(*args, copy=False).cpu().numpy()

    # -- info --------------------------------------------------------------------------------
    @property
    def device_name(self) -> str:
        if self.device == "cuda":
            return self.torch.cuda.get_device_name(0)
        return cpu_name()

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "device": self.device,
            "device_name": self.device_name,
            "threads": self.threads if self.device == "cpu" else None,
            "torch": self.torch.__version__,
            "dtype": str(self.dtype).replace("torch.", ""),
            "compile": self.compile,
            "compile_mode": self.compile_mode if self.compile else None,
            "cuda_graphs": self.cuda_graphs,
            "buckets": list(self.buckets),
            "captured": sorted(f"{g}@{b}" for g, b in self._runners),
        }
