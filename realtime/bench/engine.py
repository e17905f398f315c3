"""`avatarcast bench engine`: how many live avatar streams one engine instance sustains.

    avatarcast bench engine [--engine motion|tiny] --backend onnxruntime --sessions 2 --seconds 10 [--steps 2]
        [--threads N] [--device cpu|cuda] [--weights DIR] [--json]
    avatarcast bench engine --backend torch --device cuda --sessions 200 --seconds 20 [--compile] [--to-host]

--engine defaults to what `avatarcast serve` picks for the backend (motion on onnxruntime, tiny on torch and
tensorrt), so the figures are the served engine's.

It loads the engine, starts N streams (different avatars and emotions), runs a few warm-up chunks,
then for --seconds repeats what the server does every chunk: one batched sampler run for all N
streams (`steps` denoiser calls at batch N) followed by the decode of all their N x chunk_frames
frames. Each iteration is timed as one "chunk".

Reported (JSON with --json, else a short table):
  fps                 frames produced per second of wall time, all streams together
  chunk_latency_ms    p50/p95 of one batched chunk (denoise + decode), i.e. the delay a stream sees
                      between asking for its next 0.5 s and having it
  denoise_ms          p50 per chunk of the sampler run (all steps); decode_ms: p50 per chunk of the decode
  pipeline_depth      engine calls kept in flight, as the server's scheduler keeps them (capabilities'; the motion
                      engine composing on CUDA: 2, its draw on the device while the host plans the next call;
                      --opt pipeline=1: one at a time). With 2, launch_ms and wait_ms replace denoise_ms and decode_ms
  realtime_streams    floor(fps / 8): how many 8 fps streams this throughput covers, measured with
                      N = --sessions streams batched together. It is only a real-time claim at this N
                      when realtime is true as well: realtime_streams >= sessions and
                      chunk_latency_ms.p95 <= the chunk's duration (chunk_frames / 8 s). Throughput per
                      stream changes with N (batching), so measure at the N you will serve.
  host_cpu_busy_other share of the machine's CPU time used by other processes during the run
                      (a shared machine makes CPU numbers noisy; compare runs with a low value)

With --scheduler the sessions go through the server's scheduler instead (its batches of at most --max-batch streams,
the engine's calls in flight or --opt pipeline's; realtime/bench/scheduled.py): fps, each session's interval
between chunks (p50, p95) and the calls it took.

With the torch or tensorrt backend on CUDA the loop keeps everything on the GPU (noise, contexts,
latents and decoded frames; no host copies unless --to-host) and times with torch.cuda.synchronize.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

from avatarcast.engines.avatar_world import BUILTIN_AVATARS
from avatarcast.engines.backends import BackendError, available_cores, cpu_name
from avatarcast.engines.tiny.engine import TinyEngine
from avatarcast.realtime.settings import AUTO, AUTO_ENGINE_HELP, Settings, default_engine
from avatarcast.vocabulary import FPS


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()[1:]
        v = [int(x) for x in parts]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v[:8]) - idle, sum(v[:8])
    except (OSError, ValueError, IndexError):
        return None


class _CpuMonitor:
    def __enter__(self):
        self.j0, self.t0, self.w0 = _cpu_jiffies(), os.times(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.j1, self.t1, self.w1 = _cpu_jiffies(), os.times(), time.perf_counter()

    @property
    def other_busy(self) -> float | None:
        if not self.j0 or not self.j1:
            return None
        busy, total = self.j1[0] - self.j0[0], self.j1[1] - self.j0[1]
        if total <= 0:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        own = (self.t1.user - self.t0.user + self.t1.system - self.t0.system) * hz
        return round(max(0.0, (busy - own) / total), 3)


def _pct(xs, q) -> float:
    return round(float(np.percentile(np.asarray(xs, dtype=np.float64), q)), 2) if xs else float("nan")


def _stream_specs(n: int, emotions, seed: int):
    n_av, distinct = len(BUILTIN_AVATARS), min(n, 16)  # 16 avatars at most: references cost a render each
    specs = []
    for i in range(n):
        j = i % distinct
        specs.append((j if j < n_av else f"random-{j}", emotions[(1 + 3 * i) % len(emotions)], seed + i))
    return specs


def _has_gpu_fast_path(backend) -> bool:
    return getattr(backend, "device", None) == "cuda" and hasattr(backend, "denoise_t") and hasattr(backend, "decode_t")


def _loop_numpy(engine, states, seconds: float, warmup: int, min_chunks: int, cheaper: bool = False):
    """The server's loop on numpy arrays (any backend)."""
    B, T = len(states), engine.cfg.chunk_frames
    for _ in range(warmup):
        engine.decode_chunks(states, engine.sample_chunks(states), cheaper=cheaper)
    rows: list[tuple[float, float, float]] = []
    t_start = time.perf_counter()
    while True:
        # one stream changes emotion every chunk, as live streams do
        k = len(rows) % B
        engine.set_emotion(states[k], (states[k].emotion + 1) % len(engine.emotions))
        t0 = time.perf_counter()
        lat = engine.sample_chunks(states)
        t1 = time.perf_counter()
        frames = engine.decode_chunks(states, lat, cheaper=cheaper)
        t2 = time.perf_counter()
        assert frames.shape[:2] == (B, T)
        rows.append((t2 - t0, t1 - t0, t2 - t1))
        if time.perf_counter() - t_start >= seconds and len(rows) >= min_chunks:
            break
    return rows, time.perf_counter() - t_start


def _loop_launched(engine, states, seconds: float, warmup: int, min_chunks: int, depth: int):
    """The server's loop as its scheduler runs an engine with `capabilities.pipeline_depth` > 1: up to `depth` calls
    in flight (launch_chunks), the oldest's frames waited for once that many are; rows are (launch to frames, the
    launch's host time, the wait)."""
    from collections import deque

    B, T = len(states), engine.cfg.chunk_frames
    for _ in range(warmup):
        engine.launch_chunks(states).wait()
    rows: list[tuple[float, float, float]] = []
    flight: deque = deque()
    t_start = time.perf_counter()
    n = 0
    while True:
        k = n % B
        engine.set_emotion(states[k], (states[k].emotion + 1) % len(engine.emotions))
        t0 = time.perf_counter()
        flight.append((t0, engine.launch_chunks(states)))
        t1 = time.perf_counter()
        n += 1
        done = time.perf_counter() - t_start >= seconds and len(rows) + len(flight) >= min_chunks
        while flight and (len(flight) >= depth or done):
            ta, pending = flight.popleft()
            tw = time.perf_counter()
            frames = pending.wait()
            t2 = time.perf_counter()
            assert len(frames) == B and frames[0].shape[0] == T
            rows.append((t2 - ta, t1 - t0, t2 - tw))
        if done:
            break
    return rows, time.perf_counter() - t_start


def _loop_gpu(
    engine, states, seconds: float, warmup: int, min_chunks: int, to_host: bool, seed: int, cheaper: bool = False
):
    """The same loop with every tensor on the GPU (torch / tensorrt backends; the tiny engine, whose cheaper
    decode is its half-resolution decoder)."""
    import torch  # torch: only for the torch / tensorrt backends

    be, cfg = engine.backend, engine.cfg
    C, T, K = cfg.latent_channels, cfg.chunk_frames, cfg.context_frames
    H, W = cfg.latent_hw
    B = len(states)
    dev = "cuda"
    ref = torch.from_numpy(np.stack([s.ref for s in states])).to(dev)
    ctx = torch.from_numpy(np.stack([s.ctx for s in states])).to(dev)
    emo = torch.tensor([s.emotion for s in states], dtype=torch.long, device=dev)
    inten = torch.tensor([s.intensity for s in states], dtype=torch.float32, device=dev)
    sampler = engine.sampler
    dvec = torch.full((B,), sampler.model_step_size, device=dev)
    tvecs = [torch.full((B,), float(t), device=dev) for t in sampler.timesteps]
    gen = torch.Generator(device=dev).manual_seed(seed)
    frames = torch.empty((B * T, cfg.height, cfg.width, 4), dtype=torch.uint8, device=dev)
    host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True) if to_host else None
    kw = {"copy": False} if be.name == "torch" else {}
    n_emo = len(engine.emotions)

    def chunk(i: int):
        nonlocal ctx
        emo[i % B] = (emo[i % B] + 1) % n_emo
        x = torch.randn((B, T * C, H, W), generator=gen, device=dev)
        for tv, t in zip(tvecs, sampler.timesteps):
            v = be.denoise_t(x, tv, dvec, ctx, ref, emo, inten, **kw)
            x = sampler.step(v, t, x)
        ctx = x.view(B, T, C, H, W)[:, T - K :].reshape(B, K * C, H, W).contiguous()
        ev.record()
        be.decode_t(x.view(B * T, C, H, W), out=frames, lowres=cheaper)
        if host is not None:
            host.copy_(frames, non_blocking=True)

    rows: list[tuple[float, float, float]] = []
    with torch.inference_mode():
        ev = torch.cuda.Event(enable_timing=True)
        for i in range(warmup):
            chunk(i)
        torch.cuda.synchronize()
        t_start = time.perf_counter()
        while True:
            e0, e2 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            ev = torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            e0.record()
            chunk(len(rows))
            e2.record()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            den = e0.elapsed_time(ev) / 1000
            dec = ev.elapsed_time(e2) / 1000
            rows.append((t2 - t0, den, dec))
            if time.perf_counter() - t_start >= seconds and len(rows) >= min_chunks:
                break
    return rows, time.perf_counter() - t_start


def run_bench(
    engine_name: str,
    backend: str = "onnxruntime",
    sessions: int = 1,
    seconds: float = 10.0,
    steps: int = 2,
    threads: int | None = None,
    device: str | None = None,
    weights: str | None = None,
    warmup: int = 2,
    min_chunks: int = 3,
    to_host: bool = False,
    seed: int = 0,
    backend_options: dict | None = None,
    cheaper: bool = False,
    scheduler: bool = False,
    max_batch: int | None = None,
) -> dict:
    """Run the benchmark; returns the report (see the module docstring). cheaper: decode the engine's cheaper
    way (capabilities.cheaper_decode: the degradation ladder's cheaper_decode rung). scheduler: the sessions through
    the server's scheduler instead (realtime/bench/scheduled.py), at most max_batch a call (None: the engine's)."""
    if engine_name not in ("tiny", "motion"):
        raise ValueError(f"only the 'tiny' and 'motion' engines can be benchmarked here, not {engine_name!r}")
    if sessions < 1:
        raise ValueError("--sessions must be >= 1")
    t0 = time.perf_counter()
    engine: Any
    if engine_name == "motion":  # architecture 3 from an exported folder: onnxruntime (CPU) or torch (CPU, CUDA)
        from avatarcast.engines.tiny.motion_engine import MotionEngine

        if backend not in ("onnxruntime", "torch"):
            raise BackendError("--engine motion runs on onnxruntime (the CPU) or torch (--weights DIR: another folder)")
        # --opt draw=copy|residual: a shipped folder's decoder; by default the draw `avatarcast serve` runs
        draw = str((backend_options or {}).get("draw", "auto"))
        draw = Settings(engine="motion", backend=backend, device=device or "auto", motion_draw=draw).motion_folder_draw
        engine = MotionEngine.from_folder(
            weights or None, steps=steps, threads=threads, draw=draw, backend=backend, device=device
        )
        opts = backend_options or {}
        if "kernel" in opts:  # --opt kernel=eager|compiled|triton: how the torch cut-out draw lays its layers
            from avatarcast.engines.tiny.cutout_torch import TorchCutoutBackend

            if not isinstance(engine.backend, TorchCutoutBackend):
                raise BackendError("--opt kernel=...: the torch cut-out draw only (--opt draw=cutout --backend torch)")
            engine.backend.use_kernel(str(opts["kernel"]))
        if "compose" in opts:  # --opt compose=torch|triton: how the device composes the frames
            if engine.device_compose is None:
                raise BackendError("--opt compose=...: a backend that composes on its device (torch on CUDA)")
            engine.device_compose.use_kernel(str(opts["compose"]))
        if "host_workers" in opts:  # --opt host_workers=N: the host's per-avatar work in N processes (0: here)
            engine.use_host_workers(int(opts["host_workers"]))
        # --opt pipeline=1: one call at a time where the engine would keep more in flight (capabilities.pipeline_depth)
        depth = int(opts.get("pipeline", engine.capabilities.pipeline_depth))
        if depth < 1 or depth > engine.capabilities.pipeline_depth:
            raise BackendError(f"--opt pipeline: 1 to {engine.capabilities.pipeline_depth} here, not {depth}")
        host_workers = engine.host_workers
        version = "architecture 3"
    else:
        depth, host_workers = 1, 0
        engine = TinyEngine.load(
            weights, backend=backend, steps=steps, threads=threads, device=device, **(backend_options or {})
        )
        version = engine.manifest.data_version
    load_s = time.perf_counter() - t0
    cfg = engine.cfg
    be = engine.backend
    cheaper_decode = engine.capabilities.cheaper_decode
    if cheaper and cheaper_decode is None:
        raise BackendError(
            "--cheaper-decode: this engine has no cheaper decode (tiny: python -m tools.train_lowres writes a "
            "half-resolution decoder; motion: the residual draw's folder steps down to the copy draw)"
        )
    if scheduler:
        return _through_scheduler(engine, engine_name, sessions, seconds, seed, max_batch, depth, load_s)
    t0 = time.perf_counter()
    states = [engine.start_stream(a, e, 1.0, s) for a, e, s in _stream_specs(sessions, engine.emotions, seed)]
    streams_s = time.perf_counter() - t0
    gpu = _has_gpu_fast_path(be)
    if gpu and hasattr(be, "warmup"):
        be.warmup([sessions], graphs=("denoiser",))
        be.warmup([sessions * cfg.chunk_frames], graphs=("decoder_lowres" if cheaper else "decoder",))
    with _CpuMonitor() as mon:
        if gpu:
            rows, wall = _loop_gpu(engine, states, seconds, warmup, min_chunks, to_host, seed, cheaper)
        elif depth > 1 and not cheaper:
            rows, wall = _loop_launched(engine, states, seconds, warmup, min_chunks, depth)
        else:
            rows, wall = _loop_numpy(engine, states, seconds, warmup, min_chunks, cheaper)
    T = cfg.chunk_frames
    frames = len(rows) * sessions * T
    fps = frames / wall
    total = [r[0] * 1000 for r in rows]
    den = [r[1] * 1000 for r in rows]
    dec = [r[2] * 1000 for r in rows]
    chunk_s = T / FPS
    info = be.describe() if hasattr(be, "describe") else {"backend": getattr(be, "name", backend)}
    dev_kind, dev_name = _device(be, device)
    rt = int(math.floor(fps / FPS))
    report = {
        "engine": engine_name,
        "backend": getattr(be, "name", backend),
        "device": dev_name,
        "device_kind": dev_kind,
        "threads": getattr(be, "threads", threads) if dev_kind == "cpu" else None,
        "cpu_cores": available_cores(),
        "sessions": sessions,
        "steps": engine.steps,
        "resolution": f"{cfg.width}x{cfg.height}",
        "decoder": str(cheaper_decode) if cheaper else "full",  # half_resolution, copy_draw
        "chunk_frames": T,
        "chunk_seconds": chunk_s,
        "chunks": len(rows),
        "frames": frames,
        "seconds": round(wall, 3),
        "fps": round(fps, 2),
        "fps_per_session": round(fps / sessions, 2),
        "chunk_latency_ms": {"p50": _pct(total, 50), "p95": _pct(total, 95), "max": round(max(total), 2)},
        # calls in flight: with 2, a row's times are its launch's (the sampling, the host's plan, the device's work
        # queued) and its wait for the frames, not the denoise and the decode
        "pipeline_depth": depth,
        "host_workers": host_workers,  # the motion engine's (engines/tiny/host_pool.py); 0: its own process
        **(
            {"launch_ms": _pct(den, 50), "wait_ms": _pct(dec, 50)}
            if depth > 1
            else {
                "denoise_ms": _pct(den, 50),
                "decode_ms": _pct(dec, 50),
                "denoise_ms_per_step": round(_pct(den, 50) / max(1, engine.steps), 2),
                "decode_ms_per_frame": round(_pct(dec, 50) / (sessions * T), 3),
            }
        ),
        "realtime_streams": rt,
        "realtime": bool(rt >= sessions and _pct(total, 95) <= chunk_s * 1000),
        "realtime_streams_note": (
            f"floor(fps / {FPS}) measured with {sessions} streams batched; real time at this "
            f"N needs realtime_streams >= sessions and chunk_latency_ms.p95 <= "
            f"{chunk_s * 1000:.0f} ms"
        ),
        "gpu_resident": gpu,
        "to_host": bool(to_host) if gpu else True,
        "weights_hash": engine.weights_hash,
        "weights_version": version,
        "load_s": round(load_s, 2),
        "streams_start_s": round(streams_s, 2),
        "host_cpu_busy_other": mon.other_busy,
        "backend_info": info,
        "timestamp": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if hasattr(be, "close"):
        be.close()
    return report


def _device(be: Any, device: str | None) -> tuple[str, str]:
    """The backend's device kind (cpu, cuda) and its name for the report (the GPU's, or the CPU's model)."""
    kind = getattr(be, "device", device or "cpu")
    return kind, getattr(be, "device_name", None) or (cpu_name() if kind == "cpu" else kind)


def _through_scheduler(
    engine: Any,
    engine_name: str,
    sessions: int,
    seconds: float,
    seed: int,
    max_batch: int | None,
    depth: int,
    load_s: float,
) -> dict:
    """`sessions` sessions through the server's scheduler (realtime/bench/scheduled.py) for `seconds`, at most
    max_batch streams a call (None: the engine's) and `depth` calls in flight (--opt pipeline)."""
    import asyncio

    from avatarcast.realtime.bench.scheduled import sessions_through
    from avatarcast.realtime.scheduler import EngineScheduler

    starts = [(a, e) for a, e, _ in _stream_specs(sessions, engine.emotions, seed)]

    async def go() -> dict:
        sch = EngineScheduler(engine, max_batch=max_batch, pipeline_depth=depth)
        await sch.start()
        try:
            return await sessions_through(sch, engine, starts, seconds)
        finally:
            await sch.close()

    be = engine.backend
    return {
        "engine": engine_name,
        "through": "scheduler",
        "backend": be.name,
        "device": _device(be, None)[1],
        "steps": engine.steps,
        **asyncio.run(go()),
        "weights_hash": engine.weights_hash,
        "load_s": round(load_s, 2),
        "timestamp": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _table(r: dict) -> str:
    if r.get("through") == "scheduler":
        return (
            f"{r['engine']} engine on {r['backend']} ({r['device']}) through the server's scheduler\n"
            f"  sessions {r['sessions']}: {r['fps']:.1f} fps, a chunk every {r['chunk_interval_ms_p50']:.0f} ms "
            f"(p95 {r['chunk_interval_ms_p95']:.0f} ms); {r['batches']} calls of {r['mean_batch']} streams on average "
            f"(at most {r['max_batch']}, {r['pipeline_depth']} in flight)\n"
            f"  realtime       {r['realtime_streams']} streams of 8 fps "
            f"({'real time' if r['realtime'] else 'NOT real time'} for {r['sessions']} sessions)"
        )
    threads = f", {r['threads']} threads" if r["threads"] else ""
    lines = [
        f"{r['engine']} engine on {r['backend']} ({r['device']}{threads})",
        f"  sessions {r['sessions']}, steps {r['steps']}, {r['resolution']}, {r['chunk_frames']} frames/chunk, "
        f"{r['chunks']} chunks in {r['seconds']:.1f}s",
        f"  fps            {r['fps']:9.2f}   ({r['fps_per_session']:.2f} per session)",
        f"  chunk latency  p50 {r['chunk_latency_ms']['p50']:.1f} ms, p95 {r['chunk_latency_ms']['p95']:.1f} ms "
        f"(chunk = {r['chunk_seconds'] * 1000:.0f} ms of video)",
        *(
            [
                f"  pipelined      {r['pipeline_depth']} calls in flight: launch {r['launch_ms']:.1f} ms/chunk, "
                f"wait {r['wait_ms']:.1f} ms/chunk",
            ]
            if r.get("pipeline_depth", 1) > 1
            else [
                f"  denoise        {r['denoise_ms']:.1f} ms/chunk ({r['denoise_ms_per_step']:.1f} ms/step)",
                f"  decode         {r['decode_ms']:.1f} ms/chunk ({r['decode_ms_per_frame']:.2f} ms/frame)",
            ]
        ),
        f"  realtime       {r['realtime_streams']} streams of 8 fps at this batch "
        f"({'real time' if r['realtime'] else 'NOT real time'} for {r['sessions']} sessions)",
        f"  weights        {r['weights_hash']} ({r['weights_version']})",
    ]
    if r.get("host_cpu_busy_other") is not None and r["device_kind"] == "cpu":
        lines.append(
            f"  other load     {r['host_cpu_busy_other'] * 100:.0f}% of the machine's CPU was busy with other work"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="avatarcast bench engine", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--engine", default=AUTO, help=f"tiny | motion | wan (default {AUTO}; {AUTO_ENGINE_HELP})")
    ap.add_argument("--backend", default="onnxruntime", help="onnxruntime | torch | tensorrt")
    ap.add_argument("--sessions", type=int, default=1, help="streams generated together (one batch)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured time (after warm-up)")
    ap.add_argument("--steps", type=int, default=2, help="sampler steps per chunk")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    ap.add_argument("--weights", default=None, help="weights folder (default: the shipped weights)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed chunks first")
    ap.add_argument("--min-chunks", type=int, default=3, help="time at least this many chunks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--to-host", action="store_true", help="GPU: copy every decoded frame to host memory")
    ap.add_argument("--compile", action="store_true", help="torch backend: torch.compile the graphs")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="torch backend: no CUDA graphs")
    ap.add_argument("--dtype", default=None, help="torch backend: bf16 | fp16 | fp32")
    ap.add_argument("--trt-cache", default=None, help="tensorrt backend: engine cache folder")
    ap.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backend option, e.g. --opt spinning=true --opt decode_batch=1 (value parsed as JSON)",
    )
    ap.add_argument(
        "--cheaper-decode",
        "--lowres",  # its name while tiny's half-resolution decoder was the only cheaper decode
        dest="cheaper",
        action="store_true",
        help="decode the engine's cheaper way, as the degradation ladder's cheaper_decode rung does (tiny: the "
        "half-resolution decoder; motion's residual draw: the copy draw)",
    )
    ap.add_argument(
        "--scheduler",
        action="store_true",
        help="the sessions through the server's scheduler (its batching and pipelining; no sockets or ASR): each asks "
        "for its next chunk once it has the last",
    )
    ap.add_argument("--max-batch", type=int, default=None, help="--scheduler: streams a call (default: the engine's)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("-o", "--output", default=None, help="also write the JSON report to this file")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--engine=wan" for a in argv) or any(a == "--engine" and b == "wan" for a, b in zip(argv, argv[1:])):
        from avatarcast.realtime.bench.wan import main as wan_main  # starts the ready_s clock on import

        return wan_main(argv)
    args = build_parser().parse_args(argv)
    opts: dict = {}
    if args.backend == "torch":
        if args.compile:
            opts["compile"] = True
        if args.no_cuda_graphs:
            opts["cuda_graphs"] = False
        if args.dtype:
            opts["dtype"] = args.dtype
    elif args.backend in ("tensorrt", "trt"):
        if args.trt_cache:
            opts["cache_dir"] = args.trt_cache
        opts["max_batch"] = max(1, args.sessions)
        opts["decode_max_batch"] = max(1, args.sessions) * 4
    for kv in args.opt:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            print(f"avatarcast bench engine: error: --opt wants KEY=VALUE, got {kv!r}", file=sys.stderr)
            return 2
        try:
            opts[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            opts[key.strip().replace("-", "_")] = value
    try:
        r = run_bench(
            default_engine(args.backend, args.device or "auto") if args.engine == AUTO else args.engine,
            args.backend,
            args.sessions,
            args.seconds,
            args.steps,
            args.threads,
            None if args.device == "auto" else args.device,
            args.weights,
            args.warmup,
            args.min_chunks,
            args.to_host,
            args.seed,
            opts,
            cheaper=args.cheaper,
            scheduler=args.scheduler,
            max_batch=args.max_batch,
        )
    except (BackendError, TypeError, ValueError) as e:  # TypeError: an --opt the backend does not take
        print(f"avatarcast bench engine: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(r, indent=1)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    print(text if args.json else _table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
