"""`avatarcast bench engine --engine wan`: the Wan2.2-TI2V-5B engine's speed on a GPU, at 360P.

    avatarcast bench engine --engine wan --random-weights --sessions 4,8,10,12 --steps 4 --json
    avatarcast bench engine --engine wan --checkpoint DIR --sessions 10 --steps 4
    avatarcast bench engine --engine wan --random-weights --save-checkpoint DIR   (for warm restarts)

--random-weights builds the real 5B transformer and Wan2.2 VAE shapes with random weights (speed
does not depend on the values; no checkpoint can be downloaded here). Measured, with CUDA events
and synchronisation:

  step_ms[B]            one transformer forward (one sampler step) at batch B, chunk shapes
  decode_ms[B]          the streaming VAE decode of one chunk for B streams (only new frames)
  streams[N]            the serving loop at N streams for --seconds: every iteration one batched
                        chunk (steps forwards + decode) for all N; fps, chunk p50/p95,
                        realtime (chunk p95 <= the chunk's play time), realtime_streams = floor(fps / 8)
  cue_to_first_frame_ms the engine's share of TTER without a cache hit: a cue changes one
                        stream's prompt, measured until its first new frame is decoded, idle GPU
                        (B=1) and with N streams in flight (the cue waits for the running batch)
  ready_s               process start -> engine loaded and graphs captured (a warm restart when
                        --checkpoint points at a saved checkpoint)
  scheduled[N][depth]   --scheduler: the server's own path: N sessions submit chunk jobs to the
                        server's EngineScheduler over the serving adapter (WanAvatarEngine: emotions,
                        RGBA 640x360 frames in host memory), each its next job as soon as its last
                        chunk arrives; depth 2: two calls in flight (pipelined), depth 1:
                        calls in turn; --depths picks them, 2 is what `serve --wan-pipeline 1`
                        runs. Chunk interval per stream p50/p95, fps, and the cue's time
                        (an emotion change submitted on an idle engine, until its frames are on the host)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

T_START = time.perf_counter()

# after T_START: the startup figures count every import
import asyncio  # noqa: E402

import numpy as np  # noqa: E402

from avatarcast.engines.wan.checkpoint import CheckpointInfo  # noqa: E402
from avatarcast.engines.wan.prompts import normalize_prompt  # noqa: E402
from avatarcast.engines.wan.shapes import TRANSFORMER_5B, VAE_22  # noqa: E402
from avatarcast.realtime.avatars import resolve_avatar  # noqa: E402
from avatarcast.realtime.bench.memory_peak import peak_report  # noqa: E402
from avatarcast.realtime.bench.scheduled import changing_emotions, sessions_through  # noqa: E402
from avatarcast.realtime.scheduler import ChunkJob, EngineScheduler  # noqa: E402
from avatarcast.templates import load_templates  # noqa: E402
from avatarcast.vocabulary import DEFAULT_AVATAR, FPS  # noqa: E402


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (k - lo), 2)


def build_random(layers: int | None = None, vae_dtype: str = "bf16"):
    """The 5B transformer (bf16) and the Wan2.2 VAE with random weights, made on the GPU."""
    import torch  # torch: the optional `wan` extra; --help answers without it
    from diffusers import AutoencoderKLWan, WanTransformer3DModel  # diffusers: the `wan` extra, as torch

    from avatarcast.engines.wan.engine import cast_model  # torch, as above

    cfg = dict(TRANSFORMER_5B, num_layers=layers or TRANSFORMER_5B["num_layers"])
    torch.manual_seed(0)
    with torch.device("cuda"):
        tr = cast_model(WanTransformer3DModel(**cfg), torch.bfloat16)
        vae = AutoencoderKLWan(**VAE_22).to(_dtype(vae_dtype))
    return tr.eval(), vae.eval()


def _dtype(name: str):
    import torch  # torch, as above

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _timed(fn, reps: int) -> list[float]:
    import torch  # torch, as above

    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def _pipelined(eng, states: list, seconds: float, chunk_s: float, to_host: bool) -> dict:
    """Two halves of the streams, each chunk's VAE decode overlapped with the other half's sampler
    steps on a second CUDA stream: the decode is memory-bound, the steps compute-bound."""
    import torch  # torch, as above

    half = max(1, len(states) // 2)
    groups = [states[:half], states[half:]] if len(states) > 1 else [states, states]
    for grp in groups:  # prime the VAE caches the ordinary way
        for _ in range(2):
            eng.decode_new(grp, eng.sample_chunks(grp), to_numpy=False)
    steps_s, vae_s = torch.cuda.Stream(), torch.cuda.Stream()
    steps_s.wait_stream(torch.cuda.current_stream())
    ready = [torch.cuda.Event(), torch.cuda.Event()]
    lat: list = [None, None]
    with torch.cuda.stream(steps_s):
        lat[0] = eng.sample_chunks(groups[0])
        ready[0].record()
    last: list[float | None] = [None, None]
    gaps: list[float] = []
    frames, g = 0, 0
    t_all = time.perf_counter()
    t_end = t_all + seconds
    while time.perf_counter() < t_end or len(gaps) < 6:
        other = 1 - g
        with torch.cuda.stream(steps_s):
            lat[other] = eng.sample_chunks(groups[other])
            ready[other].record()
        with torch.cuda.stream(vae_s):
            vae_s.wait_event(ready[g])
            out = eng.decode_new(groups[g], lat[g], to_numpy=False)
            done = torch.cuda.Event()
            done.record()
        done.synchronize()
        if to_host:
            out.cpu()
        now = time.perf_counter()
        if (prev := last[g]) is not None:
            gaps.append((now - prev) * 1000)  # one stream's chunk interval
        last[g] = now
        frames += out.shape[0] * out.shape[1]
        g = other
    torch.cuda.synchronize()
    wall = time.perf_counter() - t_all
    fps = frames / wall
    p95 = _pct(gaps, 95)
    return {
        "fps": round(fps, 1),
        "chunk_interval_ms_p50": _pct(gaps, 50),
        "chunk_interval_ms_p95": p95,
        "chunks": len(gaps),
        "groups": [len(x) for x in groups],
        "realtime_streams": int(fps // FPS),
        "realtime": bool(int(fps // FPS) >= len(states) and p95 <= chunk_s * 1000),
    }


def serving_engine(wan, batch: int):
    """The server's adapter (WanAvatarEngine) over `wan`, with random prompt embeddings (no text
    encoder here), and the default avatar: what `serve --wan-prompt-embeds random` would run."""
    from avatarcast.engines.wan.serving import WanAvatarEngine  # torch, as above

    templates = load_templates()
    rng = np.random.default_rng(0)
    dim = wan.transformer.config.text_dim
    embeds = {
        normalize_prompt(t.prompt): (rng.standard_normal((48, dim)) * 0.1).astype(np.float32)
        for t in templates.values()
    }
    engine = WanAvatarEngine(wan, templates, embeds, "random", "random", max_batch=batch)
    return engine, resolve_avatar(DEFAULT_AVATAR)[1]


def _scheduled(wan, n: int, seconds: float, batch: int, chunk_s: float, depths: tuple[int, ...]) -> dict:
    """N sessions through the server's scheduler and serving adapter (see the module docstring)."""
    import torch  # torch, as above

    av, avatar = serving_engine(wan, batch)
    emotions = changing_emotions(av)
    out: dict = {}

    async def go(depth: int) -> dict:
        av.pipeline_depth = depth
        torch.cuda.reset_peak_memory_stats()
        sch = EngineScheduler(av)
        await sch.start()
        got = await sessions_through(sch, av, [(avatar, emotions[i % 4]) for i in range(n)], seconds)
        # cue: an emotion change on an idle engine, submitted -> its frames on the host
        state = await sch.run_on_engine(av.start_stream, avatar, "idle", 1.0, 99)
        state = (await sch.submit(ChunkJob("cue", state, time.monotonic() + chunk_s, "idle", 1.0))).state
        cue = []
        for r in range(6):
            a = time.monotonic()
            # due now, as a reaction's first sampled chunk is when its cached one is missing: no batching wait
            state = (await sch.submit(ChunkJob("cue", state.copy(), a, emotions[r % 4], 1.0))).state
            cue.append((time.monotonic() - a) * 1000)
        await sch.close()
        return {
            **got,
            "cue_idle_ms": {"p50": _pct(cue[1:], 50), "max": round(max(cue[1:]), 1)},
            "memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }  # this run's peak

    for depth in depths:
        out[depth] = asyncio.run(go(depth))
        print(f"N={n} scheduler depth {depth}: {out[depth]}", file=sys.stderr, flush=True)
    return out


def run(args) -> dict:
    import torch  # torch, as above

    from avatarcast.engines.wan.engine import WanEngine  # torch, as above

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    sessions = [int(s) for s in str(args.sessions).split(",")]
    # --pipeline: each stream count runs as two half-size groups, so the batches are the halves
    counts = (
        [max(1, n // 2) for n in sessions]
        if args.pipeline
        else [min(n, args.batch) for n in sessions] + [n % args.batch for n in sessions if n % args.batch]
        if args.batch
        else sessions
    )
    batches = sorted(set([1] + counts + [int(b) for b in str(args.batches).split(",") if b]))
    if args.server_buckets:  # the graphs `serve --engine wan --wan-batch B` captures (a warm restart's work)
        from avatarcast.engines.wan.serving import wan_buckets  # torch, as above

        batches = sorted(set(batches) | set(wan_buckets(args.batch or 5, compiled=bool(args.compile))))
    compile_mode = args.compile_mode if args.compile else False
    kw = dict(
        device="cuda",
        dtype=torch.bfloat16,
        steps=args.steps,
        shift=5.0,
        chunk_latent_frames=args.chunk_frames,
        context_latent_frames=args.context_frames,
    )
    t0 = time.perf_counter()
    if args.checkpoint:
        eng = WanEngine.load(args.checkpoint, vae_dtype=_dtype(args.vae_dtype), **kw)
    else:
        tr, vae = build_random(args.layers, args.vae_dtype)
        eng = WanEngine(tr, vae, CheckpointInfo(None, None, None), **kw)  # type: ignore[arg-type]
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    if args.save_checkpoint:
        eng.transformer.save_pretrained(f"{args.save_checkpoint}/transformer")
        eng.vae.save_pretrained(f"{args.save_checkpoint}/vae")
    report: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "steps": args.steps,
        "chunk_latent_frames": args.chunk_frames,
        "context_latent_frames": args.context_frames,
        "chunk_video_frames": 4 * args.chunk_frames,
        "latent_grid": list(eng.latent_hw),
        "output": [eng.out_height, eng.out_width],
        "vae_dtype": args.vae_dtype,
        "vae_batch": args.vae_batch,
        "batch": args.batch or None,
        "transformer_dtype": "bf16",
        "layers": args.layers or 30,
        "cuda_graphs": not args.eager,
        "compile": compile_mode,
        "compile_vae": ("aot" if args.vae_aot else "jit") if args.compile_vae else False,
        "vae_channels_last": bool(args.vae_channels_last),
        "fp8": bool(args.fp8),
        "vae_frames_per_call": args.vae_frames_per_call or args.chunk_frames,
        "weights": "random" if not args.checkpoint else args.checkpoint,
        "load_s": round(load_s, 2),
    }
    gen = torch.Generator(device="cuda").manual_seed(0)
    ref = torch.randn(eng.z_dim, *eng.latent_hw, device="cuda", generator=gen)
    prompts = [torch.randn(512, 4096, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.1 for _ in range(4)]
    K, T = args.context_frames, args.chunk_frames
    probe = (
        torch.randn(2, eng.z_dim, K + T, *eng.latent_hw, device="cuda", dtype=torch.bfloat16, generator=gen),
        torch.full((2, (K + T) * eng.latent_hw[0] * eng.latent_hw[1] // 4), 500.0, device="cuda"),
        torch.stack(prompts[:2]),
    )
    with torch.no_grad():  # the eager bf16 transformer's answer, to compare the fast path with
        probe_ref = eng.transformer(*probe, return_dict=False)[0].float()
    t1 = time.perf_counter()
    eng.accelerate(
        cuda_graphs=not args.eager,
        compile=compile_mode,
        vae_compile=args.compile_vae,
        vae_channels_last=args.vae_channels_last,
        vae_batch=args.vae_batch,
        buckets=tuple(batches),
        warm_batches=tuple(batches),
        fp8=args.fp8,
        vae_frames_per_call=args.vae_frames_per_call,
        vae_aot_dir=args.vae_aot or None,
        vae_warmup=args.vae_warmup,
    )
    report["graph_capture_s"] = round(time.perf_counter() - t1, 2)
    report["warm_s"] = eng.warm_s  # fp8 conversion, VAE graphs, transformer graphs per bucket
    if eng.vae_stream.aot is not None:  # which packages this start compiled (cold) or loaded (warm)
        report["vae_aot"] = {"built": eng.vae_stream.aot.built, "loaded": eng.vae_stream.aot.loaded}
    torch.cuda.synchronize()
    report["ready_s"] = round(time.perf_counter() - T_START, 2)  # process start -> ready to serve
    report["memory_ready_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if args.vae_warmup == "background":  # timed runs need the compiled VAE: wait for it
        if not eng.vae_stream.compiled_ready.wait(timeout=1800):
            raise RuntimeError("the VAE's graphs did not compile in the background within 30 minutes")
        report["full_speed_s"] = round(time.perf_counter() - T_START, 2)  # process start -> compiled VAE
        report["vae_compiled_ready_s"] = eng.vae_stream.compiled_ready_s  # the background compile alone
    with torch.no_grad():
        got = eng.denoiser(*probe, return_dict=False)[0].float()
    diff = (got - probe_ref).abs()
    report["fast_path_err"] = {
        "max_rel": round(float(diff.max() / probe_ref.abs().max()), 5),
        "mean_rel": round(float(diff.mean() / probe_ref.abs().mean()), 5),
    }
    print(
        f"fast path vs eager bf16: {report['fast_path_err']}; ready in {report['ready_s']} s",
        file=sys.stderr,
        flush=True,
    )
    if args.ready_only:
        return report
    if args.scheduler:
        if args.memory_trace:  # where the scheduled runs' memory peak comes from (realtime/bench/memory_peak.py)
            torch.cuda.memory._record_memory_history(max_entries=2_000_000)
        report["scheduled"] = {
            n: _scheduled(
                eng,
                n,
                args.seconds,
                args.batch or 5,
                4 * args.chunk_frames / FPS,
                tuple(int(d) for d in str(args.depths).split(",")),
            )
            for n in sessions
        }
        report["memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if args.memory_trace:
            report["memory_peak"] = peak_report(torch.cuda.memory._snapshot())
            torch.cuda.memory._record_memory_history(enabled=None)
            print(report["memory_peak"], file=sys.stderr, flush=True)
        return report
    del probe, probe_ref, got, diff

    def streams(n: int):
        return [eng.start_stream(ref, prompts[i % len(prompts)], seed=i) for i in range(n)]

    # per-step transformer latency and streaming decode per chunk, by batch
    report["step_ms"], report["decode_ms"], report["decode_ms_per_frame"] = {}, {}, {}
    for B in batches:
        st = streams(B)
        lat = eng.sample_chunks(st)
        eng.decode_new(st, lat, to_numpy=False)  # primes the caches
        K, T = args.context_frames, args.chunk_frames
        x = torch.randn(B, eng.z_dim, K + T, *eng.latent_hw, device="cuda", dtype=torch.bfloat16)
        ts = torch.full((B, (K + T) * eng.latent_hw[0] * eng.latent_hw[1] // 4), 500.0, device="cuda")
        text = torch.stack([s.prompt_embeds for s in st])
        step = _timed(lambda x=x, ts=ts, text=text: eng.denoiser(x, ts, text, return_dict=False), args.reps)
        dec = _timed(lambda st=st, lat=lat: eng.decode_new(st, lat, to_numpy=False), max(3, args.reps // 2))
        report["step_ms"][B] = round(statistics.median(step), 2)
        report["decode_ms"][B] = round(statistics.median(dec), 2)
        report["decode_ms_per_frame"][B] = round(statistics.median(dec) / (B * 4 * T), 2)
        del st, lat
        torch.cuda.empty_cache()
        print(
            f"B={B}: step {report['step_ms'][B]} ms, decode {report['decode_ms'][B]} ms "
            f"({report['decode_ms_per_frame'][B]} ms/frame)",
            file=sys.stderr,
            flush=True,
        )

    chunk_s = 4 * args.chunk_frames / FPS
    report["streams"] = {}
    if args.pipeline:
        report["pipeline"] = True
        for n in sessions:
            report["streams"][n] = _pipelined(eng, streams(n), args.seconds, chunk_s, not args.keep_on_gpu)
            print(f"N={n} pipelined: {report['streams'][n]}", file=sys.stderr, flush=True)
            torch.cuda.empty_cache()
        sessions = [1]  # the cue figures below: an idle GPU only
    for n in [] if args.pipeline else sessions:
        st = streams(n)
        # --batch: the server's schedule, at most that many streams per engine call, calls in turn
        b = args.batch or n
        groups = [st[i : i + b] for i in range(0, n, b)]
        for g in groups:  # warm-up rounds as timed (host copies included)
            for _ in range(2):
                eng.decode_new(g, eng.sample_chunks(g), to_numpy=not args.keep_on_gpu)
        times: list[float] = []
        frames, t_end = 0, time.perf_counter() + args.seconds
        t_all = time.perf_counter()
        while time.perf_counter() < t_end or len(times) < 3:
            a = time.perf_counter()  # one round: every stream gets its next chunk
            for g in groups:
                out = eng.decode_new(g, eng.sample_chunks(g), to_numpy=not args.keep_on_gpu)
                frames += out.shape[0] * out.shape[1]
            if args.keep_on_gpu:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - a) * 1000)
        wall = time.perf_counter() - t_all
        fps = frames / wall
        p95 = _pct(times, 95)
        report["streams"][n] = {
            "fps": round(fps, 1),
            "chunk_ms_p50": _pct(times, 50),
            "chunk_ms_p95": p95,
            "groups": [len(g) for g in groups],
            "round_ms": [round(t, 1) for t in times],
            "chunks": len(times),
            "realtime_streams": int(fps // FPS),
            "realtime": bool(int(fps // FPS) >= n and p95 <= chunk_s * 1000),
        }
        print(f"N={n}: {report['streams'][n]}", file=sys.stderr, flush=True)
        del st, out
        torch.cuda.empty_cache()

    # cue -> first new frame (engine only; a cached reaction would start at once)
    cue = {}
    for n in [1] if args.batch else sorted(set([1] + sessions)):  # batched: an idle GPU only
        st = streams(n)
        eng.decode_new(st, eng.sample_chunks(st), to_numpy=False)
        lat_ms = []
        for r in range(args.reps):
            # with other streams in flight the cue lands at a random point of a running batch and
            # waits for the rest of it; then its own batch samples and decodes its first new frames
            # (with 1 new latent frame per chunk, the first 4 video frames are the whole chunk)
            torch.cuda.synchronize()
            a = time.perf_counter()
            eng.decode_new(st, eng.sample_chunks(st), to_numpy=False)
            torch.cuda.synchronize()
            busy_ms = (time.perf_counter() - a) * 1000
            wait_ms = busy_ms * (1 - np.random.default_rng(r).random()) if n > 1 else 0.0
            eng.set_prompt(st[0], prompts[(r + 1) % len(prompts)])
            a = time.perf_counter()
            eng.decode_new(st, eng.sample_chunks(st), to_numpy=True)
            own_ms = (time.perf_counter() - a) * 1000
            lat_ms.append(wait_ms + own_ms)
        cue[n] = {"p50": _pct(lat_ms, 50), "p95": _pct(lat_ms, 95)}
        print(f"cue N={n}: {cue[n]}", file=sys.stderr, flush=True)
    report["cue_to_first_frame_ms"] = cue
    report["memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report["vae_compiled_calls"] = getattr(eng.vae_stream, "compiled_calls", 0)
    if hasattr(eng.denoiser, "capture_s"):
        report["capture_s"] = eng.denoiser.capture_s
    return report


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="avatarcast bench engine --engine wan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--engine", default="wan")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--random-weights", action="store_true", help="the real 5B shapes, random values")
    src.add_argument("--checkpoint", default=None, help="a local diffusers-format Wan2.2-TI2V-5B dir")
    ap.add_argument("--sessions", default="1,4,8,10", help="comma list of stream counts to run")
    ap.add_argument("--batches", default="", help="extra batch sizes for step_ms/decode_ms")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--chunk-frames", type=int, default=1, help="new latent frames per chunk (4 video frames each)")
    ap.add_argument("--context-frames", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--vae-dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--vae-batch", type=int, default=4, help="streams decoded together by the VAE")
    ap.add_argument("--layers", type=int, default=None, help="fewer transformer layers (tests only)")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs")
    ap.add_argument("--compile", action="store_true", help="torch.compile the transformer inside the graphs")
    ap.add_argument(
        "--compile-mode",
        default="full",
        choices=("full", "regional"),
        help="--compile: the whole transformer, or its repeated blocks only (faster starts)",
    )
    ap.add_argument("--compile-vae", action="store_true", help="torch.compile the VAE decoder's steady-state frames")
    ap.add_argument(
        "--vae-warmup",
        default="start",
        choices=("start", "background"),
        help="background: ready before the VAE's graphs, which compile on a thread (serve "
        "--wan-vae-warmup); the report adds full_speed_s, when they serve",
    )
    ap.add_argument(
        "--vae-aot",
        default="",
        metavar="DIR",
        help="with --compile-vae: AOTInductor packages kept in DIR instead of torch.compile "
        "(a warm start loads them; engines/wan/vae_aot.py, not used by serve)",
    )
    ap.add_argument(
        "--cudnn-heuristics",
        type=int,
        default=1,
        choices=(0, 1),
        help="0: a stream's first (eager) VAE frames time cuDNN's algorithms too, as before",
    )
    ap.add_argument("--vae-channels-last", action="store_true", help="channels-last 3D VAE decoder")
    ap.add_argument(
        "--vae-frames-per-call",
        type=int,
        default=None,
        help="steady latent frames per VAE decoder call (default: a whole chunk)",
    )
    ap.add_argument("--fp8", action="store_true", help="fp8 linear layers in the transformer blocks (Hopper)")
    ap.add_argument(
        "--batch",
        type=int,
        default=0,
        help="most streams per engine call, calls in turn (the server's --wan-batch); 0: all at once",
    )
    ap.add_argument("--ready-only", action="store_true", help="stop once ready (warm-restart timing)")
    ap.add_argument(
        "--pipeline",
        action="store_true",
        help="two half-size groups: one's VAE decode overlaps the other's sampler steps",
    )
    ap.add_argument("--keep-on-gpu", action="store_true", help="do not copy frames to host memory")
    ap.add_argument(
        "--scheduler",
        action="store_true",
        help="sessions through the server's EngineScheduler and serving adapter (see scheduled[N])",
    )
    ap.add_argument(
        "--memory-trace",
        action="store_true",
        help="--scheduler: trace the allocator and report the largest blocks live at the peak",
    )
    ap.add_argument("--depths", default="2,1", help="--scheduler: pipeline depths to run (2: --wan-pipeline 1)")
    ap.add_argument(
        "--server-buckets",
        action="store_true",
        help="also capture the CUDA-graph buckets serve captures (avatarcast.engines.wan.serving.wan_buckets: "
        "1 and --batch compiled, else 1, 2, 3 and --batch), for its warm restart",
    )
    ap.add_argument("--save-checkpoint", default=None, help="save the (random) model here for warm restarts")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("-o", "--output", default=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch  # torch: after parsing, so --help works without the `wan` extra

    if not torch.cuda.is_available():
        print("avatarcast bench engine --engine wan: needs a CUDA GPU (the 5B model at 360P)", file=sys.stderr)
        return 2
    if not args.cudnn_heuristics:
        import avatarcast.engines.wan.vae_stream as vae_stream  # torch, as above

        @contextmanager
        def keep_benchmark(on: bool) -> Iterator[None]:  # cudnn.benchmark stays as it is
            yield

        vae_stream._cudnn_heuristics = keep_benchmark
    report = run(args)
    report["cudnn_heuristics"] = bool(args.cudnn_heuristics)
    text = json.dumps(report, indent=1, default=str)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    print(text if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
