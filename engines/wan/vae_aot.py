"""The VAE's steady-state decode compiled ahead of time (AOTInductor), so a warm restart loads it.

torch.compile caches inductor's output on disk, but every process start still re-traces the
decoder with dynamo (fake tensors, symbolic batch, guards) and reloads each graph: on an H100 the
compiled VAE was 79 s of a 105 s warm restart (docs/bench), against 1.2 s per transformer bucket
with regional compile. An AOTInductor package is a shared library: loading the tiny test VAE's
takes 0.01 s on the CPU.

Status: CPU-tested only. On the H100 device (torch 2.11+cu130) the packages build, but loading
one kills the process (a segfault in the package loader, with packaged weights too), so serve
does not use this path yet; `bench engine --engine wan --compile-vae --vae-aot DIR` and
`python -X faulthandler -m tools.gpu.wan_vae_aot_check DIR` reproduce it there.
Since serve decodes one stream per VAE call (--wan-vae-batch 1), the jit VAE is one static graph that
a warm start traces in 7-10 s on an H100, so the warm restart (42 s) no longer needs this path.

The steady call (every cache entry a tensor, `frames_per_call` latent frames; the decoder's
shape-changing first frames stay eager) is exported as a pure function
(x, *cache tensors) -> (frames, *new cache tensors). Two packages per shape: batch 1, and batches
2..max_batch with a dynamic batch (one dynamic package gave wrong frames at batch 1 on CPU). The
packages hold no weights: the decoder's own parameters are handed to them at load (shared, not
copied), so a package is keyed by shapes and versions only and costs no GPU memory of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from avatarcast.engines.errors import EngineError

log = logging.getLogger(__name__)


class AotUnavailable(EngineError, RuntimeError):
    """A package could not be exported, compiled or loaded (the caller falls back to torch.compile)."""


class SteadyDecode(torch.nn.Module):
    """decoder(x, feat_cache) with the cache's tensor entries as inputs and outputs (exportable)."""

    def __init__(self, decoder: torch.nn.Module, n_layers: int, idx: tuple[int, ...]) -> None:
        super().__init__()
        self.dec, self.n_layers, self.idx = decoder, n_layers, idx

    def forward(self, x: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats: list = [None] * self.n_layers
        for i, t in zip(self.idx, cache):
            feats[i] = t
        out = self.dec(x, feat_cache=feats, feat_idx=[0], first_chunk=False)
        return (out, *[feats[i] for i in self.idx])


class AotSteadyDecoder:
    """Runs steady decoder calls through AOTInductor packages in `cache_dir`, built on first use."""

    def __init__(
        self,
        decoder: torch.nn.Module,
        n_layers: int,
        cache_dir: str | Path,
        max_batch: int,
        memory_format: torch.memory_format = torch.contiguous_format,
        share_weights: bool = True,
    ) -> None:
        self.decoder, self.n_layers, self.max_batch = decoder, n_layers, max(1, int(max_batch))
        # False: each package carries its own copy of the weights (GPU memory per package; a fallback)
        self.share_weights = share_weights
        self.user_managed = True  # shared weights: the decoder's tensors themselves, not copies
        self.cache_dir = Path(cache_dir)
        self.memory_format = memory_format
        self._runners: dict[tuple, Callable[..., Any]] = {}
        self.built: list[str] = []  # package files compiled by this process (cold), for logs and tests
        self.loaded: list[str] = []  # package files loaded from disk (warm)

    def __call__(self, x: torch.Tensor, feats: list) -> torch.Tensor:
        """Decode x (B, C, frames_per_call, h, w) with the steady cache `feats`, updated in place."""
        idx = tuple(i for i, f in enumerate(feats) if torch.is_tensor(f))
        kind = "1" if x.shape[0] == 1 else "n"
        key = (kind, idx, tuple(x.shape[1:]), tuple(tuple(feats[i].shape[1:]) for i in idx), x.dtype)
        run = self._runners.get(key)
        if run is None:
            try:
                run = self._load_or_build(key, x, [feats[i] for i in idx])
            except Exception as e:  # export, inductor or the loader: feats are untouched
                raise AotUnavailable(f"{type(e).__name__}: {e}") from e
            self._runners[key] = run
        out = run(x, *[feats[i] for i in idx])
        for i, t in zip(idx, out[1:]):
            feats[i] = t
        return out[0]

    def _path(self, key: tuple, x: torch.Tensor) -> Path:
        import diffusers  # diffusers: heavy, kept off import; its version keys the cache

        dev = x.device
        arch = torch.cuda.get_device_capability(dev) if dev.type == "cuda" else "cpu"
        spec = {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "arch": str(arch),
            "kind": key[0],
            "idx": list(key[1]),
            "x": list(key[2]),
            "cache": [list(s) for s in key[3]],
            "dtype": str(key[4]),
            "max_batch": self.max_batch,
            "format": str(self.memory_format),
            "share_weights": self.share_weights,
            "decoder": self._architecture(),
        }
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"wan-vae-steady-{key[0]}-{digest}.pt2"

    def _architecture(self) -> list:
        """Parameter names, shapes, dtypes and strides: what the compiled kernels assume of the weights."""
        return [
            [k, list(p.shape), str(p.dtype), list(p.stride())]
            for k, p in self.decoder.state_dict(keep_vars=True).items()
        ]

    def _load_or_build(self, key: tuple, x: torch.Tensor, cache: list[torch.Tensor]):
        import torch._inductor  # torch._inductor: slow to import, only to compile

        path = self._path(key, x)
        t0 = time.perf_counter()
        built = not path.exists()
        if built:
            self._build(key, x, cache, path)
        (self.built if built else self.loaded).append(path.name)
        runner = torch._inductor.aoti_load_package(str(path))
        if self.share_weights:
            module = SteadyDecode(self.decoder, self.n_layers, key[1])
            consts: dict[str, torch.Tensor] = dict(module.named_parameters())
            consts.update(module.named_buffers())
            # the decoder's own tensors, not copies: the package holds no weights (module docstring)
            runner.load_constants(
                {k: consts[k] for k in runner.get_constant_fqns()},
                check_full_update=True,
                user_managed=self.user_managed,
            )
        log.info(
            "wan vae: %s AOTInductor package %s in %.1f s",
            "built" if built else "loaded",
            path.name,
            time.perf_counter() - t0,
        )
        return runner

    @torch.no_grad()
    def _build(self, key: tuple, x: torch.Tensor, cache: list[torch.Tensor], path: Path) -> None:
        import torch._inductor  # torch._inductor, as above

        module = SteadyDecode(self.decoder, self.n_layers, key[1])
        dynamic = None
        if key[0] == "n" and self.max_batch > 2:  # the example has a batch >= 2: 2..max_batch (2: static)
            b = torch.export.Dim("batch", min=2, max=self.max_batch)
            dynamic = ({0: b}, tuple({0: b} for _ in cache))
        ep = torch.export.export(module, (x, *cache), dynamic_shapes=dynamic, strict=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{os.getpid()}.{path.name}")  # the packager wants a .pt2 name
        try:
            torch._inductor.aoti_compile_and_package(
                ep,
                package_path=str(tmp),
                inductor_configs={"aot_inductor.package_constants_in_so": not self.share_weights},
            )
            os.replace(tmp, path)  # whole or absent: a crash mid-build never leaves a package to load
        finally:
            tmp.unlink(missing_ok=True)
